//! A named network namespace that deletes itself on drop, after killing the processes
//! started in it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{cleanup, cmd, sys};

/// Prefix of every namespace the test bed creates: `lbt<pid>-<n>-<role>`.
const PREFIX: &str = "lbt";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace created with `ip netns add`, deleted on drop.
pub struct Netns {
    name: String,
    children: Mutex<Vec<Child>>,
}

impl Netns {
    /// Creates a namespace with a unique name (pid + counter + `role`) and brings its
    /// loopback up.
    pub fn new(role: &str) -> Result<Netns> {
        remove_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{role}", std::process::id());
        cmd::run(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("creating namespace {name}"))?;
        cleanup::add_namespace(&name);
        let ns = Netns {
            name,
            children: Mutex::new(Vec::new()),
        };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, for `nsenter --net=` and `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS...` (ARGS split on whitespace).
    pub fn ip(&self, args: &str) -> Result<String> {
        cmd::run(
            Command::new("ip")
                .args(["-n", &self.name])
                .args(args.split_whitespace()),
        )
    }

    /// Moves the calling thread into the namespace: sockets it opens and programs it
    /// loads live there. Only this thread moves; tests that do this own their thread.
    pub fn enter(&self) -> Result<()> {
        sys::enter_netns(&self.path()).with_context(|| format!("entering namespace {}", self.name))
    }

    /// A veth pair `name` ↔ `peer`, both up, `name` with the fixed MAC `mac` (so frames
    /// built in advance can address it).
    pub fn veth(&self, name: &str, mac: [u8; 6], peer: &str) -> Result<()> {
        self.ip_batch(&format!(
            "link add {name} address {} type veth peer name {peer}\n\
             link set {name} up\n\
             link set {peer} up\n",
            mac_str(mac)
        ))
        .map(drop)
    }

    /// A permanent neighbour entry: `ip` is at `mac` on `dev`, never resolved again.
    pub fn neighbour(&self, ip: IpAddr, mac: [u8; 6], dev: &str) -> Result<()> {
        self.ip(&format!(
            "neigh replace {ip} lladdr {} dev {dev} nud permanent",
            mac_str(mac)
        ))
        .map(drop)
    }

    /// Runs `ip -n NAME -batch -` with one `ip` command per line of `script`.
    pub fn ip_batch(&self, script: &str) -> Result<String> {
        cmd::run_with_stdin(
            Command::new("ip").args(["-n", &self.name, "-batch", "-"]),
            script,
        )
        .with_context(|| format!("configuring namespace {}", self.name))
    }

    /// A command that runs `program args...` inside the namespace via `ip netns exec`.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args...` inside the namespace and returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        cmd::run(self.command(program).args(args))
    }

    /// Sets sysctls (`key=value`) inside the namespace.
    pub fn sysctl(&self, settings: &[&str]) -> Result<()> {
        let mut args = vec!["-q", "-w"];
        args.extend_from_slice(settings);
        self.exec("sysctl", &args).map(drop)
    }

    /// The namespace's network counters (`nstat -asz`: absolute values, zeros included,
    /// the history file left alone), by name (`TcpExtSyncookiesSent`, ...).
    pub fn nstat(&self) -> Result<BTreeMap<String, u64>> {
        let out = self.exec("nstat", &["-asz"])?;
        Ok(parse_nstat(&out))
    }

    /// Starts `cmd` (built with [`Netns::command`]) in the background; it is killed by
    /// PID when the namespace is dropped. Returns its PID.
    pub fn spawn(&self, mut cmd: Command) -> Result<u32> {
        let line = cmd::display(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start `{line}`"))?;
        let pid = child.id();
        cleanup::add_pid(pid);
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        Ok(pid)
    }

    /// Whether the background process `pid` started with [`Netns::spawn`] still runs.
    pub fn running(&self, pid: u32) -> bool {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children
            .iter_mut()
            .find(|c| c.id() == pid)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        crate::cleanup::yield_to_handler();
        let children = std::mem::take(self.children.get_mut().unwrap_or_else(|e| e.into_inner()));
        for mut child in children {
            let pid = child.id();
            if matches!(child.try_wait(), Ok(None)) {
                let _ = sys::kill(pid, libc::SIGKILL);
            }
            let _ = child.wait();
            cleanup::remove_pid(pid);
        }
        if let Err(e) = cmd::run(Command::new("ip").args(["netns", "delete", &self.name])) {
            eprintln!("warning: cannot delete namespace {}: {e:#}", self.name);
        }
        cleanup::remove_namespace(&self.name);
    }
}

/// Deletes namespaces left by earlier runs whose process is gone (a SIGKILLed test run
/// cannot clean up after itself). Runs once per process.
fn remove_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !sys::alive(pid) {
                let _ = Command::new("ip")
                    .args(["netns", "delete", &name])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    });
}

/// Polls `check` every 50 ms until it returns `Ok(true)` or `timeout` passes; returns
/// whether it succeeded. Errors from `check` count as "not yet".
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if matches!(check(), Ok(true)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `NAME VALUE RATE` lines of `nstat` as a map; the `#kernel` header and anything else
/// that is not a counter are skipped.
fn parse_nstat(out: &str) -> BTreeMap<String, u64> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, value) = (f.next()?, f.next()?.parse().ok()?);
            Some((name.to_owned(), value))
        })
        .collect()
}

/// `aa:bb:cc:dd:ee:ff`, as `ip` takes a link-layer address.
pub fn mac_str(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nstat() {
        let out = "#kernel\nIpInReceives                    12                 0.0\nTcpExtSyncookiesSent            4711               0.0\nTcpExtSyncookiesRecv            0                  0.0\n";
        let m = parse_nstat(out);
        assert_eq!(m.len(), 3);
        assert_eq!(m["TcpExtSyncookiesSent"], 4711);
        assert_eq!(m["TcpExtSyncookiesRecv"], 0);
    }
}
