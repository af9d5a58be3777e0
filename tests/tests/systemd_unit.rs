//! The shipped systemd unit (dist/lb.service): systemd accepts it, lb runs with exactly
//! the capabilities it grants (nothing more is needed, so nothing more is given), and lb
//! speaks the unit's `Type=notify` protocol: READY=1 only once the programs are attached,
//! STOPPING=1 on SIGTERM. Runs as root with real traffic, like e2e.rs.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lb_tests::bed::Bed;
use lb_tests::daemon::{XdpState, xdp_state};
use lb_tests::{Daemon, Kind, Launch};

/// The unit file in the repository.
fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("dist")
        .join("lb.service")
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_path())
        .unwrap_or_else(|e| panic!("{}: {e}", unit_path().display()))
}

/// The values of `key=` lines of the unit.
fn unit_values(key: &str) -> Vec<String> {
    unit_text()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn systemd_accepts_the_unit() {
    let env = Bed::new(Kind::TwoArmed);
    // The unit names /usr/local/bin/lb; point it at the binary under test.
    let text = unit_text().replace("/usr/local/bin/lb", &env.lb.display().to_string());
    let unit = env.topo.path("lb.service");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", &unit.display().to_string()])
        .output()
        .expect("systemd-analyze (systemd) must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("lb.service"),
        "systemd-analyze complains about the unit: {stderr}"
    );
    assert_eq!(unit_values("Type"), ["notify"]);
    assert_eq!(unit_values("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert!(
        unit_values("LimitNOFILE")
            .first()
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n >= 6 * 65536),
        "LimitNOFILE must cover --max-conns' default (6 descriptors per connection)"
    );
}

/// The unit's bounding set as setpriv's `--bounding-set` argument.
fn bounding_set() -> String {
    let caps = unit_values("CapabilityBoundingSet");
    assert_eq!(caps.len(), 1, "one CapabilityBoundingSet line");
    assert_eq!(
        unit_values("AmbientCapabilities"),
        caps,
        "the ambient set is the bounding set"
    );
    let mut arg = String::from("-all");
    for cap in caps[0].split_whitespace() {
        let name = cap
            .strip_prefix("CAP_")
            .unwrap_or_else(|| panic!("{cap}: not CAP_*"))
            .to_lowercase();
        arg.push_str(&format!(",+{name}"));
    }
    arg
}

/// What systemd would have received so far.
fn notifications(sock: &UnixDatagram) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

#[test]
fn lb_runs_with_the_units_capabilities_and_notifies_readiness_once_attached() {
    let env = Bed::new(Kind::TwoArmed);
    let notify = env.topo.path("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_nonblocking(true).unwrap();
    // As systemd starts it: only the unit's capabilities, NOTIFY_SOCKET set. nsenter keeps
    // the host's bpffs, where the unit's lb pins its state.
    let mut args: Vec<String> = vec![
        format!("NOTIFY_SOCKET={}", notify.display()),
        "setpriv".into(),
        "--bounding-set".into(),
        bounding_set(),
        "--".into(),
        env.lb.display().to_string(),
    ];
    args.extend(env.args(&[("b1", 1), ("b2", 1), ("b3", 1)], &["--health", "tcp"]));
    let mut d = Daemon::spawn(
        &env.topo.lb,
        Launch::Nsenter,
        Path::new("/usr/bin/env"),
        &args,
        &env.topo.lb_ifaces,
        &env.topo.path("lb-caps.log"),
    )
    .unwrap();
    let mut ready_seen_attached = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while ready_seen_attached.is_none() && std::time::Instant::now() < deadline {
        for n in notifications(&sock) {
            if n.lines().any(|l| l == "READY=1") {
                // Checked at once: READY=1 must not come before the programs are attached.
                let states: Vec<XdpState> = env
                    .topo
                    .lb_ifaces
                    .iter()
                    .map(|i| xdp_state(&env.topo.lb, i).unwrap())
                    .collect();
                ready_seen_attached = Some(states.iter().all(|s| *s != XdpState::None));
            }
            got.push(n);
        }
        assert!(d.is_running(), "lb exited:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        ready_seen_attached,
        Some(true),
        "READY=1 before XDP was attached, or never (got {got:?}); log:\n{}",
        d.log()
    );
    // nsenter, env and setpriv exec one another: the daemon keeps the spawned pid.
    let mainpid = format!("MAINPID={}", d.pid());
    assert!(
        got.iter().any(|n| n.lines().any(|l| l == mainpid)),
        "no {mainpid} in {got:?}"
    );
    d.wait_ready(&env.topo.lb, Duration::from_secs(10)).unwrap();
    let spread = env.topo.spread(false, 30).unwrap();
    assert_eq!(spread.failures, 0, "{spread}\nlog:\n{}", d.log());
    assert!(
        !d.log().to_lowercase().contains("permission denied"),
        "{}",
        d.log()
    );

    d.signal(libc::SIGTERM).unwrap();
    let status = d.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}: {}", d.log());
    let after = notifications(&sock);
    assert!(
        after.iter().any(|n| n.lines().any(|l| l == "STOPPING=1")),
        "no STOPPING=1 on SIGTERM: {after:?}"
    );
    let out = Launch::Nsenter
        .command(&env.topo.lb, &env.lb)
        .arg("down")
        .output()
        .unwrap();
    assert!(out.status.success(), "lb down: {out:?}");
    for iface in &env.topo.lb_ifaces {
        assert_eq!(xdp_state(&env.topo.lb, iface).unwrap(), XdpState::None);
    }
}
