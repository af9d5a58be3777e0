//! The test bed itself, without lb: the topologies build, the backends answer over
//! IPv4 and IPv6, and everything is gone after drop. Needs root.

use lb_tests::client;
use lb_tests::topology::{Kind, Topology, XdpPeers};

fn namespaces_of(topo: &Topology) -> Vec<String> {
    let mut v: Vec<String> = [&topo.client, &topo.lb, &topo.switch]
        .iter()
        .map(|ns| ns.name().to_owned())
        .collect();
    v.extend(topo.backends.iter().map(|b| b.ns.name().to_owned()));
    v
}

fn assert_gone(names: &[String]) {
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    for n in names {
        assert!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(n)),
            "namespace {n} still exists after drop"
        );
    }
}

/// The client reaches every backend directly (two-armed: routed by the LB
/// namespace's kernel), over both families.
fn check_direct(topo: &Topology) {
    for b in &topo.backends {
        for url in [
            format!("http://{}/name", b.addr4()),
            format!("http://{}/name", b.addr6()),
        ] {
            let body =
                client::get(&topo.client, &url).unwrap_or_else(|e| panic!("client → {url}: {e:#}"));
            assert_eq!(body, b.name, "{url}");
        }
    }
}

/// Builds `kind` (without `xdp_pass` on the peers), checks every direct path, drops it
/// and checks its namespaces are gone.
fn builds_routes_and_cleans_up(kind: Kind) {
    let topo =
        Topology::build(kind, XdpPeers::Skip).unwrap_or_else(|e| panic!("build {kind:?}: {e:#}"));
    check_direct(&topo);
    let names = namespaces_of(&topo);
    drop(topo);
    assert_gone(&names);
}

#[test]
fn two_armed_builds_routes_and_cleans_up() {
    builds_routes_and_cleans_up(Kind::TwoArmed);
}

#[test]
fn one_armed_builds_and_cleans_up() {
    builds_routes_and_cleans_up(Kind::OneArmed);
}

/// With `xdp_pass` on the LB's veth peers (what the e2e tests use), traffic still flows
/// and the peers show a native-mode program.
#[test]
fn xdp_pass_on_peers() {
    let topo = Topology::new(Kind::TwoArmed).expect("build two-armed with xdp_pass");
    assert!(topo.has_xdp_peers());
    for (ns, iface) in [(&topo.client, "eth0"), (&topo.switch, "up0")] {
        let state = lb_tests::daemon::xdp_state(ns, iface).unwrap();
        assert_eq!(state, lb_tests::daemon::XdpState::Native, "{iface}");
    }
    check_direct(&topo);
}
