//! `--pin-dir`: the flow tables live in a bpf filesystem, so a daemon killed without
//! cleaning up (SIGKILL) is succeeded by one that keeps every flow; a clean shutdown
//! removes the pins; a bad pin directory is a flag error that attaches nothing.
//! Runs as root with real traffic, like e2e.rs; a missing prerequisite is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lb_tests::bed::Bed;
use lb_tests::daemon::{XdpState, xdp_state};
use lb_tests::{Daemon, Kind, Launch, Topology};

const PINS: [&str; 3] = ["flows_v3", "half_open_v2", "reverse_nat_v1"];

/// The lock, the prerequisites and a two-armed topology.
fn env() -> Bed {
    Bed::new(Kind::TwoArmed)
}

/// A pin directory on the host's bpffs, unique to this test, removed on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> PinDir {
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/lbtest-{}-{tag}",
            std::process::id()
        )))
    }
    fn pins_present(&self) -> Vec<bool> {
        PINS.iter().map(|p| self.0.join(p).exists()).collect()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn args(topo: &Topology, pin_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    for iface in &topo.lb_ifaces {
        a.extend(["--iface".into(), iface.clone()]);
    }
    a.extend(["--vip".into(), topo.vip_arg(false)]);
    for b in topo.backend_args(false, &[1, 1, 1]) {
        a.extend(["--backend".into(), b]);
    }
    a.extend(["--pin-dir".into(), pin_dir.display().to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Starts lb with `args`; it must exit 2 at once, attach nothing, and log what `says`
/// accepts.
fn refused(env: &Bed, args: &[String], log: &str, says: impl Fn(&str) -> bool) {
    let mut d = env
        .topo
        .spawn_lb(&env.lb, Launch::Nsenter, args, log)
        .unwrap();
    let status = d.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(2), "log:\n{}", d.log());
    assert!(says(&d.log()), "{}", d.log());
    for iface in &env.topo.lb_ifaces {
        assert_eq!(xdp_state(&env.topo.lb, iface).unwrap(), XdpState::None);
    }
}

/// SIGKILL: the daemon gets no chance to clean up.
fn kill_hard(mut d: Daemon) {
    let status = Command::new("kill")
        .args(["-9", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    d.wait_exit(Duration::from_secs(10)).unwrap();
}

fn flows(daemon: &Daemon) -> u64 {
    let stats = daemon
        .stats_json()
        .unwrap_or_else(|e| panic!("lb stats: {e:#}"));
    stats["flows"]
        .as_u64()
        .unwrap_or_else(|| panic!("no flows in {stats:#}"))
}

fn all_connect(env: &Bed, daemon: &Daemon, n: usize) {
    let spread = env
        .topo
        .spread(false, n)
        .unwrap_or_else(|e| panic!("curl: {e:#}"));
    assert_eq!(spread.failures, 0, "{spread}\nlb log:\n{}", daemon.log());
}

#[test]
fn flows_survive_a_killed_daemon_and_clean_shutdown_removes_pins() {
    let env = env();
    let pins = PinDir::new("kill");
    let a = args(&env.topo, &pins.0, &[]);

    let first = env.start_via(Launch::Nsenter, &a);
    all_connect(&env, &first, 40);
    let before = flows(&first);
    eprintln!("flows after 40 connections: {before}");
    assert!(
        before >= 40,
        "flow table has {before} entries after 40 connections"
    );
    assert_eq!(
        pins.pins_present(),
        [true, true, true],
        "pins under {:?}",
        pins.0
    );

    // SIGKILL: no cleanup runs, the pins stay (the XDP link dies with the process).
    kill_hard(first);
    assert_eq!(
        pins.pins_present(),
        [true, true, true],
        "pins lost with the daemon"
    );

    let second = env.start_via(Launch::Nsenter, &a);
    assert!(
        second.log().contains("reusing pinned flow table"),
        "second daemon did not say it reused the pins:\n{}",
        second.log()
    );
    let after = flows(&second);
    assert!(
        after >= before,
        "restarted daemon sees {after} flows, the killed one had {before}"
    );
    all_connect(&env, &second, 20);
    second
        .stop(&env.topo.lb)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        pins.pins_present(),
        [false, false, false],
        "clean shutdown left pins"
    );
}

#[test]
fn reused_pins_of_another_size_are_refused_and_nothing_is_attached() {
    let env = env();
    let pins = PinDir::new("size");
    let small = args(&env.topo, &pins.0, &["--max-flows", "4096"]);
    kill_hard(env.start_via(Launch::Nsenter, &small));

    let args = args(&env.topo, &pins.0, &["--max-flows", "8192"]);
    refused(&env, &args, "lb-size2.log", |log| {
        log.contains("flows_v3 has 4096 entries but --max-flows 8192 sizes it at 8192")
    });
}

#[test]
fn pin_dir_outside_bpffs_is_a_flag_error() {
    let env = env();
    let args = args(&env.topo, Path::new("/tmp/lb-not-bpffs"), &[]);
    refused(&env, &args, "lb-badpin.log", |log| {
        log.contains("--pin-dir /tmp/lb-not-bpffs: not on a bpf filesystem")
    });
}

#[test]
fn under_ip_netns_exec_a_bpffs_is_mounted_with_a_warning() {
    let env = env();
    // `ip netns exec` gives lb a fresh /sys without a bpffs; lb mounts one in its own
    // mount namespace, so nothing appears on the host's bpffs.
    let pins = PinDir::new("netns-exec");
    let d = env.start_via(Launch::IpNetnsExec, &args(&env.topo, &pins.0, &[]));
    assert!(
        d.log().contains("lb mounted one"),
        "no bpffs warning:\n{}",
        d.log()
    );
    all_connect(&env, &d, 20);
    assert_eq!(pins.pins_present(), [false, false, false]);
    d.stop(&env.topo.lb).unwrap_or_else(|e| panic!("{e:#}"));
}
