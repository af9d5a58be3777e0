//! End-to-end tests of lb with real traffic: namespaces, veths, python HTTP backends,
//! curl, and the `lb` daemon attached in native XDP mode. Need root, the `lb` binary
//! (`$LB_BIN` or target/release/lb) and the eBPF object (`$LB_EBPF_OBJECT` or
//! target/bpf/...). A missing one is a failure, never a skip.
//!
//! The tests run one at a time (a global lock): they share two CPUs, and daemons
//! started through `nsenter` share the host's bpffs.

use std::collections::BTreeMap;
use std::time::Duration;

use lb_tests::bed::Bed;
use lb_tests::daemon::{XdpState, backend_new_flows, xdp_state};
use lb_tests::topology::{BACKEND_NAMES, Kind, LB_IF_A};
use lb_tests::{Daemon, Launch, Topology, client};

/// Connections per distribution test.
const CONNS: usize = 800;
/// Allowed distance of a backend's share from its weight's share, percentage points.
/// With 300 samples one standard deviation is at most 2.9 points.
const TOLERANCE_PP: f64 = 8.0;

/// lb running over a fresh topology. The daemon is the first field, so it stops before
/// the topology goes.
struct Running {
    daemon: Daemon,
    bed: Bed,
}

/// Builds a `kind` topology and starts lb over it with the arguments `args` makes.
fn running(kind: Kind, launch: Launch, args: impl FnOnce(&Topology) -> Vec<String>) -> Running {
    let bed = Bed::new(kind);
    let daemon = bed.start_via(launch, &args(&bed.topo));
    Running { daemon, bed }
}

/// lb over `kind` for one service of the family `v6` over the three backends, weights 1.
fn running_plain(kind: Kind, launch: Launch, v6: bool) -> Running {
    running(kind, launch, |t| cli_args(t, v6, &[1, 1, 1]))
}

impl Running {
    fn topo(&self) -> &Topology {
        &self.bed.topo
    }

    /// `CONNS` connections spread near `weights`, and `lb stats` counts what the client
    /// saw; returns the per-backend counts.
    fn spread_matches_stats(&self, v6: bool, weights: &[u32]) -> BTreeMap<String, usize> {
        let seen = check_spread(self.topo(), &self.daemon, v6, weights);
        check_stats_match(self.topo(), &self.daemon, &seen);
        seen
    }

    /// Stops lb with SIGTERM; it must exit cleanly.
    fn stop(self) {
        self.daemon
            .stop(&self.bed.topo.lb)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// `--iface ... --vip ... --backend ...` for one service over the topology's backends.
fn cli_args(topo: &Topology, v6: bool, weights: &[u32]) -> Vec<String> {
    let mut args = Vec::new();
    for iface in &topo.lb_ifaces {
        args.extend(["--iface".to_owned(), iface.clone()]);
    }
    args.extend(["--vip".to_owned(), topo.vip_arg(v6)]);
    for b in topo.backend_args(v6, weights) {
        args.extend(["--backend".to_owned(), b]);
    }
    args.extend(["--xdp-mode".to_owned(), "native".to_owned()]);
    args
}

fn weights_named(weights: &[u32]) -> Vec<(&'static str, u32)> {
    BACKEND_NAMES
        .iter()
        .copied()
        .zip(weights.iter().copied())
        .collect()
}

/// Sends `CONNS` connections to the VIP and checks they all succeed and spread near the
/// weights; returns the per-backend counts.
fn check_spread(
    topo: &Topology,
    daemon: &Daemon,
    v6: bool,
    weights: &[u32],
) -> BTreeMap<String, usize> {
    let spread = topo
        .spread(v6, CONNS)
        .unwrap_or_else(|e| panic!("running curl: {e:#}"));
    assert_eq!(
        spread.failures,
        0,
        "{} of {CONNS} connections to {} failed: {spread}\nlb log:\n{}",
        spread.failures,
        topo.vip_url(v6, "name"),
        daemon.log()
    );
    if let Err(e) = spread.check_weights(&weights_named(weights), TOLERANCE_PP) {
        panic!("{e:#}");
    }
    spread.counts
}

/// `lb stats --json` per-backend `new_flows`, folded by backend name, must equal what
/// the client saw.
fn check_stats_match(topo: &Topology, daemon: &Daemon, seen: &BTreeMap<String, usize>) {
    let stats = daemon
        .stats_json()
        .unwrap_or_else(|e| panic!("lb stats --json: {e:#}"));
    let mut flows: BTreeMap<String, u64> = BTreeMap::new();
    for (addr, n) in backend_new_flows(&stats).unwrap_or_else(|e| panic!("{e:#}")) {
        let b = topo
            .backend_by_addr(&addr)
            .unwrap_or_else(|| panic!("lb stats lists unknown backend {addr}: {stats:#}"));
        *flows.entry(b.name.clone()).or_default() += n;
    }
    for name in BACKEND_NAMES {
        let client = seen.get(name).copied().unwrap_or(0) as u64;
        let lb = flows.get(name).copied().unwrap_or(0);
        assert_eq!(
            lb, client,
            "backend {name}: lb stats new_flows={lb}, client saw {client} responses\nstats: {stats:#}"
        );
    }
}

fn add(total: &mut BTreeMap<String, usize>, more: BTreeMap<String, usize>) {
    for (k, v) in more {
        *total.entry(k).or_default() += v;
    }
}

#[test]
fn one_armed_v4() {
    let r = running_plain(Kind::OneArmed, Launch::IpNetnsExec, false);
    r.spread_matches_stats(false, &[1, 1, 1]);
    r.stop();
}

#[test]
fn one_armed_v6() {
    let r = running_plain(Kind::OneArmed, Launch::Nsenter, true);
    r.spread_matches_stats(true, &[1, 1, 1]);
    r.stop();
}

#[test]
fn two_armed_v4_weighted() {
    let r = running(Kind::TwoArmed, Launch::Nsenter, |t| {
        let mut args = cli_args(t, false, &[1, 2, 1]);
        args.extend(["--name".to_owned(), "web4".to_owned()]);
        args
    });
    r.spread_matches_stats(false, &[1, 2, 1]);
    let table = r
        .daemon
        .run_cli(&["stats"])
        .unwrap_or_else(|e| panic!("lb stats: {e:#}"));
    assert!(
        table.contains("198.18.1.12"),
        "`lb stats` table does not list backend 198.18.1.12:\n{table}"
    );
    r.stop();
}

/// IPv6 through the two-armed LB, with both families configured from one config file;
/// a few IPv4 connections check the second service too.
#[test]
fn two_armed_v6_config_file() {
    let r = running(Kind::TwoArmed, Launch::IpNetnsExec, |topo| {
        let quote = |v: Vec<String>| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let config = format!(
            "iface = [{ifaces}]\nxdp_mode = \"native\"\n\n\
             [[service]]\nname = \"web4\"\nvip = \"{vip4}\"\nbackends = [{b4}]\n\n\
             [[service]]\nname = \"web6\"\nvip = \"{vip6}\"\nbackends = [{b6}]\n",
            ifaces = quote(topo.lb_ifaces.clone()),
            vip4 = topo.vip_arg(false),
            vip6 = topo.vip_arg(true),
            b4 = quote(topo.backend_args(false, &[1, 1, 1])),
            b6 = quote(topo.backend_args(true, &[1, 1, 1])),
        );
        let path = topo.path("lb.toml");
        std::fs::write(&path, &config).unwrap();
        vec!["--config".to_owned(), path.to_string_lossy().into_owned()]
    });
    let topo = r.topo();
    let mut seen = check_spread(topo, &r.daemon, true, &[1, 1, 1]);
    let csum = topo.tcp_csum_errors().unwrap();
    assert!(csum.is_empty(), "TCP checksum errors over IPv6: {csum:?}");
    let v4 = topo.spread(false, 30).unwrap();
    assert_eq!(
        v4.failures,
        0,
        "IPv4 service from the same config: {v4}\nlb log:\n{}",
        r.daemon.log()
    );
    add(&mut seen, v4.counts);
    check_stats_match(topo, &r.daemon, &seen);
    r.stop();
}

/// 100 MB through the VIP arrive byte-exact.
#[test]
fn two_armed_v4_bulk_100mb() {
    let r = running_plain(Kind::TwoArmed, Launch::Nsenter, false);
    let topo = r.topo();
    let want = topo.create_blob(100 << 20).unwrap();
    let got = topo
        .download(&topo.vip_url(false, "blob"), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}\nlb log:\n{}", r.daemon.log()));
    assert_eq!(
        got, want,
        "sha256 of the 100 MB blob downloaded through the VIP differs"
    );
    let csum = topo.tcp_csum_errors().unwrap();
    assert!(
        csum.is_empty(),
        "TCP checksum errors after the transfer: {csum:?}"
    );
    r.stop();
}

/// Traffic to the LB host that is not for a VIP (its own address, another port) is
/// passed to the kernel and still works while lb runs.
#[test]
fn non_vip_traffic_to_lb_host_passes() {
    let mut url = String::new();
    let r = running(Kind::TwoArmed, Launch::IpNetnsExec, |t| {
        url = t.start_lb_local_server(8080).unwrap();
        cli_args(t, false, &[1, 1, 1])
    });
    let client = &r.topo().client;
    for _ in 0..5 {
        let body = client::get(client, &url)
            .unwrap_or_else(|e| panic!("{url} while lb runs: {e:#}\nlb log:\n{}", r.daemon.log()));
        assert_eq!(body, "lb");
    }
    // And the VIP still works next to it.
    let s = r.topo().spread(false, 20).unwrap();
    assert_eq!(s.failures, 0, "{s}");
    let Running { daemon, bed } = r;
    daemon
        .stop(&bed.topo.lb)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(client::get(&bed.topo.client, &url).unwrap(), "lb");
}

/// The program sits on both LB interfaces in native mode (`xdp`, not `xdpgeneric`)
/// and is gone after SIGTERM.
#[test]
fn native_mode_attach_and_detach() {
    let r = running_plain(Kind::TwoArmed, Launch::Nsenter, false);
    let xdp_on_all = |want: XdpState, topo: &Topology| {
        for iface in &topo.lb_ifaces {
            let shown = topo.lb.ip(&format!("-d link show dev {iface}")).unwrap();
            assert_eq!(
                xdp_state(&topo.lb, iface).unwrap(),
                want,
                "{iface}:\n{shown}"
            );
        }
    };
    xdp_on_all(XdpState::Native, r.topo());
    let Running { daemon, bed } = r;
    daemon
        .stop(&bed.topo.lb)
        .unwrap_or_else(|e| panic!("{e:#}"));
    xdp_on_all(XdpState::None, &bed.topo);
}

/// The daemon works started through `ip netns exec` (which remounts /sys, so no bpffs)
/// and through `nsenter --net` (host mounts), one after the other on the same links.
#[test]
fn both_launch_methods_in_turn() {
    let bed = Bed::new(Kind::TwoArmed);
    let topo = &bed.topo;
    for launch in [Launch::IpNetnsExec, Launch::Nsenter, Launch::IpNetnsExec] {
        let daemon = bed.start_via(launch, &cli_args(topo, false, &[1, 1, 1]));
        let s = topo.spread(false, 30).unwrap();
        assert_eq!(s.failures, 0, "{launch:?}: {s}\nlb log:\n{}", daemon.log());
        assert_eq!(s.counts.len(), 3, "{launch:?}: 30 connections hit {s}");
        let stats = daemon
            .stats_json()
            .unwrap_or_else(|e| panic!("{launch:?}: lb stats --json: {e:#}"));
        assert!(stats["services"].is_array(), "{stats}");
        daemon
            .stop(&topo.lb)
            .unwrap_or_else(|e| panic!("{launch:?}: {e:#}"));
    }
}

/// Bad flags and config values exit 2 with a message naming the flag or field, and
/// leave no XDP program behind.
#[test]
fn bad_flags_exit_2() {
    let bed = Bed::new(Kind::OneArmed);
    let topo = &bed.topo;
    let good_vip = topo.vip_arg(false);
    let good_backend = format!("{}", topo.backends[0].addr4());
    let bad_config = topo.path("bad.toml");
    std::fs::write(
        &bad_config,
        format!(
            "iface = [\"{LB_IF_A}\"]\nxdp_mode = \"turbo\"\n[[service]]\nname = \"web4\"\n\
             vip = \"{good_vip}\"\nbackends = [\"{good_backend}\"]\n"
        ),
    )
    .unwrap();
    let bad_config = bad_config.to_string_lossy().into_owned();
    let (vip, backend) = (good_vip.as_str(), good_backend.as_str());
    // (VIP, backend, more flags, words one of which the error must contain)
    let flag_cases: [(&str, &str, &[&str], &[&str]); 5] = [
        ("198.18.100.1", backend, &[], &["vip", "198.18.100.1"]),
        (vip, "198.18.1.11:80@zero", &[], &["backend", "zero"]),
        (vip, "not-an-address", &[], &["backend", "not-an-address"]),
        (
            vip,
            backend,
            &["--xdp-mode", "turbo"],
            &["xdp-mode", "xdp_mode", "turbo"],
        ),
        (vip, backend, &["--no-such-flag"], &["no-such-flag"]),
    ];
    let mut cases: Vec<(Vec<&str>, &[&str])> = flag_cases
        .iter()
        .map(|&(vip, backend, more, words)| {
            let mut args = vec!["--iface", LB_IF_A, "--vip", vip, "--backend", backend];
            args.extend(more);
            (args, words)
        })
        .collect();
    cases.push((vec!["--config", &bad_config], &["xdp_mode", "turbo"]));
    for (i, (args, words)) in cases.iter().enumerate() {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let launch = if i % 2 == 0 {
            Launch::IpNetnsExec
        } else {
            Launch::Nsenter
        };
        let mut daemon = topo
            .spawn_lb(&bed.lb, launch, &args, &format!("bad-{i}.log"))
            .unwrap();
        let status = daemon
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("lb {args:?}: {e:#}"));
        let log = daemon.log();
        assert_eq!(
            status.code(),
            Some(2),
            "lb {args:?} should exit 2; log:\n{log}"
        );
        let lower = log.to_lowercase();
        assert!(
            words.iter().any(|w| lower.contains(&w.to_lowercase())),
            "lb {args:?}: error should name one of {words:?}; it said:\n{log}"
        );
        assert_eq!(
            xdp_state(&topo.lb, LB_IF_A).unwrap(),
            XdpState::None,
            "lb {args:?} left an XDP program on {LB_IF_A}"
        );
    }
}
