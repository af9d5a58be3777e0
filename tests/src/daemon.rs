//! Starting, watching and stopping the `lb` daemon inside the LB namespace.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{Netns, wait_until};
use crate::{cleanup, cmd, sys};

/// How long a started daemon has to be ready: load and verify its programs, attach
/// them, and say `ready`.
pub const READY_WITHIN: Duration = Duration::from_secs(20);

/// How the daemon enters the LB namespace. Users do both; they differ in bpffs:
/// `ip netns exec` remounts /sys (no bpffs at /sys/fs/bpf), `nsenter --net` keeps the
/// host's mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    IpNetnsExec,
    Nsenter,
}

impl Launch {
    /// A command running `bin` inside `ns` this way.
    pub fn command(self, ns: &Netns, bin: &Path) -> Command {
        self.command_in(ns.name(), &ns.path(), bin)
    }

    fn command_in(self, ns_name: &str, ns_path: &Path, bin: &Path) -> Command {
        let mut c = match self {
            Launch::IpNetnsExec => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns_name]);
                c
            }
            Launch::Nsenter => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns_path.display()));
                c
            }
        };
        c.arg(bin);
        c
    }
}

/// XDP attach mode of an interface as `ip link show` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpState {
    None,
    /// Native (driver) mode: `xdp`.
    Native,
    /// Generic (skb) mode: `xdpgeneric`.
    Generic,
    /// Offload or several programs (`xdpoffload`, `xdpmulti`).
    Other,
}

/// Parses the XDP flag off the first line of `ip link show dev IF`
/// (`... mtu 1500 xdp qdisc ...`).
pub fn parse_xdp_state(ip_link_output: &str) -> XdpState {
    let first = ip_link_output.lines().next().unwrap_or_default();
    for word in first.split_whitespace() {
        match word {
            "xdp" => return XdpState::Native,
            "xdpgeneric" => return XdpState::Generic,
            "xdpoffload" | "xdpmulti" => return XdpState::Other,
            _ => {}
        }
    }
    XdpState::None
}

/// The XDP state of `iface` in `ns`.
pub fn xdp_state(ns: &Netns, iface: &str) -> Result<XdpState> {
    Ok(parse_xdp_state(
        &ns.ip(&format!("-d link show dev {iface}"))?,
    ))
}

/// Names of the TCX programs on `iface`'s ingress in `ns` (`tc filter show` does not
/// list TCX programs, and this bpftool does not either).
pub fn tc_ingress_programs(ns: &Netns, iface: &str) -> Result<Vec<String>> {
    use aya::programs::{SchedClassifier, TcAttachType};
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter()?;
            let (_, progs) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress)
                .with_context(|| format!("querying the TCX ingress programs of {iface}"))?;
            Ok(progs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_owned())
                .collect())
        })
        .join()
        .unwrap_or_else(|_| bail!("the TCX query thread panicked"))
    })
}

/// A running (or exited) `lb` daemon. Dropping it stops it (SIGTERM, then SIGKILL).
pub struct Daemon {
    child: Option<Child>,
    status: Option<ExitStatus>,
    pid: u32,
    ns_name: String,
    ns_path: PathBuf,
    launch: Launch,
    bin: PathBuf,
    ifaces: Vec<String>,
    log: PathBuf,
    cmdline: String,
    /// Another daemon took the data path over from this one (an upgrade): dropping this
    /// one must not take it down.
    superseded: bool,
}

impl Daemon {
    /// Starts `lb ARGS` in `ns` and waits until it is ready: its log says `ready` and
    /// every interface in `ifaces` has an XDP program (20 s at most). The log goes to
    /// `log`.
    pub fn start(
        ns: &Netns,
        bin: &Path,
        launch: Launch,
        args: &[String],
        ifaces: &[String],
        log: &Path,
    ) -> Result<Daemon> {
        Daemon::spawn(ns, launch, bin, args, ifaces, log)?.ready(ns)
    }

    /// Starts `lb ARGS` (the binary `bin`, through `launch`) in `ns` without waiting (see
    /// [`Daemon::ready`]).
    pub fn spawn(
        ns: &Netns,
        launch: Launch,
        bin: &Path,
        args: &[String],
        ifaces: &[String],
        log: &Path,
    ) -> Result<Daemon> {
        let mut c = launch.command(ns, bin);
        c.args(args);
        let cmdline = cmd::display(&c);
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .env("RUST_BACKTRACE", "1")
            .spawn()
            .with_context(|| format!("cannot start `{cmdline}`"))?;
        let pid = child.id();
        cleanup::add_pid(pid);
        Ok(Daemon {
            child: Some(child),
            status: None,
            pid,
            ns_name: ns.name().to_owned(),
            ns_path: ns.path(),
            launch,
            bin: bin.to_owned(),
            ifaces: ifaces.to_vec(),
            log: log.to_owned(),
            cmdline,
            superseded: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The daemon's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<cannot read log: {e}>"))
    }

    fn context(&self) -> String {
        format!("`{}`; its log:\n{}", self.cmdline, self.log())
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait)
        {
            self.status = Some(status);
            cleanup::remove_pid(self.pid);
        }
        self.status
    }

    /// Waits until lb is ready: its log says `ready` and every interface has an XDP
    /// program ([`READY_WITHIN`] at most); hands the daemon back.
    pub fn ready(mut self, ns: &Netns) -> Result<Daemon> {
        self.wait_ready(ns, READY_WITHIN)?;
        Ok(self)
    }

    /// Waits until the log says `ready` and every interface has an XDP program.
    pub fn wait_ready(&mut self, ns: &Netns, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit() {
                bail!(
                    "lb exited ({status}) before it was ready: {}",
                    self.context()
                );
            }
            if says_ready(&self.log()) {
                let mut all = true;
                for iface in &self.ifaces {
                    if xdp_state(ns, iface)? == XdpState::None {
                        all = false;
                    }
                }
                if all {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let links = ns.ip("-d link show").unwrap_or_default();
                bail!(
                    "lb not ready within {timeout:?} (log says `ready` and xdp on {:?}); links:\n{links}\n{}",
                    self.ifaces,
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits up to `timeout` for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if !wait_until(timeout, || Ok(self.poll_exit().is_some())) {
            bail!("lb still running after {timeout:?}: {}", self.context());
        }
        Ok(self.status.expect("polled"))
    }

    /// Runs `lb ARGS` (e.g. `stats --json`) in the daemon's namespace, the same way the
    /// daemon was started, and returns its stdout.
    pub fn run_cli(&self, args: &[&str]) -> Result<String> {
        let mut c = self
            .launch
            .command_in(&self.ns_name, &self.ns_path, &self.bin);
        c.args(args);
        cmd::run(&mut c).with_context(|| format!("daemon log:\n{}", self.log()))
    }

    /// A command running `lb ARGS` in the daemon's namespace, the same way the daemon
    /// was started (e.g. `lb ctl ...`, which reaches the admin API on the namespace's
    /// loopback).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = self
            .launch
            .command_in(&self.ns_name, &self.ns_path, &self.bin);
        c.args(args);
        c
    }

    /// Runs `lb ARGS` in the daemon's namespace and returns its output whatever the
    /// exit status (for checking error exits).
    pub fn run_cli_any(&self, args: &[&str]) -> Result<std::process::Output> {
        cmd::output_any(&mut self.cli_command(args))
    }

    /// Whether the daemon process still runs.
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the daemon, by its PID.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if let Some(status) = self.poll_exit() {
            bail!("lb had already exited ({status}): {}", self.context());
        }
        sys::kill(self.pid, signal).with_context(|| format!("sending signal {signal} to lb"))
    }

    /// Lines of the daemon's log that contain every one of `words` (case-insensitive,
    /// colour codes removed).
    pub fn log_lines_with(&self, words: &[&str]) -> Vec<String> {
        log_lines_with(&self.log(), words)
    }

    /// Fails the test unless some line of the log contains every one of `words`.
    pub fn expect_log(&self, words: &[&str]) {
        assert!(
            !self.log_lines_with(words).is_empty(),
            "the daemon log has no line with all of {words:?}; log:\n{}",
            self.log()
        );
    }

    /// `lb stats --json`, parsed.
    pub fn stats_json(&self) -> Result<serde_json::Value> {
        let out = self.run_cli(&["stats", "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("`lb stats --json` printed:\n{out}"))
    }

    /// Stops the daemon with SIGTERM and checks it exits 0 within 10 s, then takes lb
    /// out with `lb down` (the daemon leaves the data path running on purpose) and
    /// checks no XDP program is left on its interfaces.
    pub fn stop(mut self, ns: &Netns) -> Result<()> {
        if let Some(status) = self.poll_exit() {
            bail!("lb had already exited ({status}): {}", self.context());
        }
        sys::kill(self.pid, libc::SIGTERM).context("sending SIGTERM to lb")?;
        let status = self.wait_exit(Duration::from_secs(10))?;
        if !status.success() {
            bail!(
                "lb exited with {status} after SIGTERM, expected 0: {}",
                self.context()
            );
        }
        self.down()?;
        // Links go with their pins at once; under `ip netns exec` they go with the
        // daemon's private bpffs, which the kernel releases a moment after it exits.
        let mut left = Vec::new();
        let gone = wait_until(Duration::from_secs(5), || {
            left.clear();
            for iface in &self.ifaces {
                let state = xdp_state(ns, iface)?;
                if state != XdpState::None {
                    left.push(format!("{iface}: {state:?}"));
                }
            }
            Ok(left.is_empty())
        });
        if !gone {
            bail!(
                "after `lb down`, XDP programs are left: {left:?}\n{}",
                self.context()
            );
        }
        Ok(())
    }

    /// Kills the daemon with SIGKILL (no cleanup runs: the data path stays) and reaps it.
    pub fn kill_hard(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.poll_exit() {
            bail!("lb had already exited ({status}): {}", self.context());
        }
        sys::kill(self.pid, libc::SIGKILL).context("sending SIGKILL to lb")?;
        self.wait_exit(Duration::from_secs(10))
    }

    /// Marks the daemon as taken over by another (an upgrade): dropping it then leaves
    /// the data path to its successor.
    pub fn superseded(&mut self) {
        self.superseded = true;
    }

    /// `lb down` in the daemon's namespace, launched the same way: removes what the
    /// daemon left (data path, pins, records). Must exit 0.
    pub fn down(&self) -> Result<String> {
        let out = self.run_cli_any(&["down"])?;
        if !out.status.success() {
            bail!(
                "`lb down` failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        crate::cleanup::yield_to_handler();
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.status.is_none() && matches!(child.try_wait(), Ok(None)) {
            let _ = sys::kill(self.pid, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = sys::kill(self.pid, libc::SIGKILL);
            }
        }
        let _ = child.wait();
        cleanup::remove_pid(self.pid);
        // The data path outlives the daemon: take it out, so no pins stay on the host.
        if !self.superseded {
            let _ = self.run_cli_any(&["down"]);
        }
    }
}

/// Whether the daemon's log has the word `ready` (not as part of "already").
pub fn says_ready(log: &str) -> bool {
    log.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| word == "ready")
}

/// Lines of `log` that contain every one of `words`, compared case-insensitively after
/// removing ANSI colour sequences.
pub fn log_lines_with(log: &str, words: &[&str]) -> Vec<String> {
    let words: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
    log.lines()
        .map(strip_ansi)
        .filter(|line| {
            let lower = line.to_lowercase();
            words.iter().all(|w| lower.contains(w.as_str()))
        })
        .collect()
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Per-backend `new_flows` from `lb stats --json`, keyed by the `addr` string.
pub fn backend_new_flows(stats: &serde_json::Value) -> Result<Vec<(String, u64)>> {
    let services = stats["services"]
        .as_array()
        .with_context(|| format!("no `services` array in {stats}"))?;
    let mut out = Vec::new();
    for svc in services {
        let backends = svc["backends"]
            .as_array()
            .with_context(|| format!("no `backends` array in {svc}"))?;
        for b in backends {
            let addr = b["addr"]
                .as_str()
                .with_context(|| format!("no `addr` in {b}"))?;
            let n = b["counters"]["new_flows"]
                .as_u64()
                .with_context(|| format!("no `counters.new_flows` in {b}"))?;
            out.push((addr.to_owned(), n));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xdp_flags() {
        let native = "5: lb0@if4: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 xdp qdisc noqueue state UP\n    prog/xdp id 42";
        let generic = "5: lb0@if4: <BROADCAST,UP> mtu 1500 xdpgeneric qdisc noqueue state UP";
        let none = "5: lb0@if4: <BROADCAST,UP> mtu 1500 qdisc noqueue state UP\n    link/ether";
        assert_eq!(parse_xdp_state(native), XdpState::Native);
        assert_eq!(parse_xdp_state(generic), XdpState::Generic);
        assert_eq!(parse_xdp_state(none), XdpState::None);
    }

    #[test]
    fn ready_is_a_word() {
        assert!(says_ready(
            "2026-11-21T07:00:00Z  INFO lb: ready services=1"
        ));
        assert!(!says_ready(
            "lb: error: the config file already defines services"
        ));
    }

    #[test]
    fn finds_log_lines() {
        let log = "\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m lb: backend down service=\"web\" backend=198.18.1.11:80 reason=\"status 503\"\nINFO lb: backend up backend=198.18.1.11:80\n";
        let hits = log_lines_with(log, &["Backend Down", "198.18.1.11:80", "status 503"]);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert!(
            hits[0].starts_with("2026  WARN lb: backend down"),
            "{hits:?}"
        );
        assert!(log_lines_with(log, &["backend down", "timeout"]).is_empty());
    }

    #[test]
    fn reads_backend_flows() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"services":[{"name":"web4","vip":"198.18.100.1:80","counters":{},
                "backends":[{"addr":"198.18.1.11:80","weight":1,"state":"up",
                "counters":{"packets_in":1,"bytes_in":2,"packets_out":3,"bytes_out":4,"new_flows":7}}]}],
                "counters":{}}"#,
        )
        .unwrap();
        assert_eq!(
            backend_new_flows(&v).unwrap(),
            vec![("198.18.1.11:80".to_owned(), 7)]
        );
    }
}
