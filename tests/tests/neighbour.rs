//! End to end: a packet whose next hop has no entry in the LB's neighbour table still
//! gets out. The XDP program hands it to its TC companion, which sends it through the
//! kernel's neighbour resolution. Replies toward a client the LB has never heard of (a
//! fresh address; the client knows the LB's MAC for good, so it never ARPs or solicits
//! and the LB cannot learn it that way), with the VIP local to the LB host (as the
//! README offers) and not; and a new connection toward a backend whose entry was
//! flushed. IPv4 and IPv6, nat mode, native XDP, two-armed topology.
//!
//! Each connection is one curl with a short connect timeout and no retry (see
//! [`BEFORE_SYN_RETRY`] and [`ONE_ND_RETRY`]).
//! Needs root, the `lb` binary and the eBPF object; never skips.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use lb_tests::admin;
use lb_tests::bed::Bed;
use lb_tests::netns::wait_until;
use lb_tests::topology::{LB_IF_A, LB_IF_B, VIP4, VIP6};
use lb_tests::{Daemon, Kind, Netns, must};

/// Toward a backend: below the client's first SYN retransmission (1 s), so a dropped
/// SYN (what lb did before the hand-off) fails the test.
const BEFORE_SYN_RETRY: &str = "0.9";
/// Toward a new client: one neighbour solicitation retry (1 s) more. In a fresh client
/// namespace the kernel sometimes ignores the LB's first solicitation (captured: it
/// arrives, no advertisement; the retry 1 s later is answered at once), which is the
/// client's doing, not lb's. With the VIP local, lb without the hand-off loses every
/// reply, so this limit still tells the two apart.
const ONE_ND_RETRY: &str = "2.5";

/// lb in nat mode over backend `b1` alone, for the family `v6`, with the VIP also on
/// the LB's client-side interface if `vip_local`, XDP attached in `mode` (`native`, or
/// `skb`: generic XDP passes the marked frame to TC by another path in the kernel).
fn lb_over_b1(bed: &Bed, v6: bool, vip_local: bool, mode: &str) -> Daemon {
    let topo = &bed.topo;
    if vip_local {
        let vip: IpAddr = if v6 { VIP6.into() } else { VIP4.into() };
        let plen = if v6 { 128 } else { 32 };
        must(topo.lb.ip(&format!("addr add {vip}/{plen} dev {LB_IF_A}")));
    }
    let b1 = topo.backend("b1");
    let backend = if v6 { b1.addr6() } else { b1.addr4() };
    let mut args = Vec::new();
    for iface in &topo.lb_ifaces {
        args.extend(["--iface".to_owned(), iface.clone()]);
    }
    args.extend([
        "--vip".to_owned(),
        topo.vip_arg(v6),
        "--backend".to_owned(),
        format!("{backend}@1"),
        "--mode".to_owned(),
        "nat".to_owned(),
        "--xdp-mode".to_owned(),
        mode.to_owned(),
        // No health check re-resolves the backend between a flush and the connection.
        "--health-interval".to_owned(),
        "60s".to_owned(),
    ]);
    bed.start(&args)
}

/// The client knows the LB's MAC permanently: it never sends the LB an ARP request or a
/// neighbour solicitation, from which the LB would learn the client's address.
fn client_never_asks_for_the_lb(bed: &Bed) {
    let topo = &bed.topo;
    let mac = mac_of(&topo.lb, LB_IF_A);
    for gw in [IpAddr::from(topo.lb_v4), IpAddr::from(topo.lb_v6)] {
        must(topo.client.neighbour(gw, mac, "eth0"));
    }
}

/// The MAC address of `iface` in `ns`.
fn mac_of(ns: &Netns, iface: &str) -> [u8; 6] {
    let line = must(ns.ip(&format!("-br link show dev {iface}")));
    let text = line
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no MAC in `ip -br link`: {line}"));
    let mut mac = [0u8; 6];
    for (byte, hex) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("MAC {text}: {e}"));
    }
    mac
}

/// A client address the LB has never seen (`n` tells tests apart), added to the
/// client's interface now.
fn fresh_client_address(bed: &Bed, v6: bool, n: u8) -> IpAddr {
    let (addr, plen): (IpAddr, u8) = if v6 {
        ([0xfd00, 0, 0, 0, 0, 0, 0, 0x50 + u16::from(n)].into(), 64)
    } else {
        ([198, 18, 0, 50 + n].into(), 24)
    };
    let nodad = if v6 { " nodad" } else { "" };
    must(
        bed.topo
            .client
            .ip(&format!("addr add {addr}/{plen} dev eth0{nodad}")),
    );
    addr
}

/// Waits until the client answers neighbour solicitations for `addr` (IPv6): the kernel
/// joins the address's solicited-node group in deferred work that waits for the RTNL
/// lock, which a busy machine can hold for seconds, and until then the client ignores
/// the LB's first solicitation and the test would measure the retry, not lb.
fn client_hears_solicitations_for(bed: &Bed, addr: IpAddr) {
    let IpAddr::V6(a) = addr else { return };
    let o = a.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    );
    let joined = wait_until(Duration::from_secs(10), || {
        let out = bed.topo.client.ip("-6 maddr show dev eth0")?;
        Ok(out
            .split_whitespace()
            .any(|w| w.parse::<Ipv6Addr>() == Ok(group)))
    });
    assert!(joined, "the client never joined {group} for {addr}");
}

/// Whether the LB's neighbour table on `iface` has an entry for `addr`.
fn lb_knows(bed: &Bed, iface: &str, addr: IpAddr) -> bool {
    let out = must(bed.topo.lb.ip(&format!("neigh show dev {iface}")));
    out.lines()
        .any(|l| l.split_whitespace().next() == Some(&addr.to_string()))
}

/// One HTTP GET of `/name` through the VIP from the client address `from`, connected
/// within `connect_timeout` seconds; curl does not retry. Returns the body.
fn first_get(bed: &Bed, d: &Daemon, v6: bool, from: IpAddr, connect_timeout: &str) -> String {
    let url = bed.topo.vip_url(v6, "name");
    let from = from.to_string();
    bed.topo
        .client
        .exec(
            "curl",
            &[
                "-sSgf",
                "--interface",
                &from,
                "--connect-timeout",
                connect_timeout,
                "--max-time",
                "3",
                &url,
            ],
        )
        .unwrap_or_else(|e| {
            panic!(
                "first connection from {from} to {url} failed: {e:#}\nlb stats: {:#}\nlb log:\n{}",
                d.stats_json().unwrap_or_default(),
                d.log()
            )
        })
        .trim()
        .to_owned()
}

/// The global counter `name` from `lb stats --json`.
fn counter(d: &Daemon, name: &str) -> u64 {
    let stats = must(d.stats_json());
    stats["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats:#}"))
}

/// A client address the LB has no neighbour entry for connects at its first SYN: the
/// SYN-ACK is handed to TC and leaves once the kernel has resolved the client.
fn new_client_connects(v6: bool, vip_local: bool, mode: &str) {
    let bed = Bed::new(Kind::TwoArmed);
    client_never_asks_for_the_lb(&bed);
    let d = lb_over_b1(&bed, v6, vip_local, mode);
    // One connection from the client's own address first: lb works at all.
    let own = if v6 {
        bed.topo.client_v6.into()
    } else {
        bed.topo.client_v4.into()
    };
    client_hears_solicitations_for(&bed, own);
    assert_eq!(first_get(&bed, &d, v6, own, ONE_ND_RETRY), "b1");

    let from = fresh_client_address(&bed, v6, 0);
    client_hears_solicitations_for(&bed, from);
    must(bed.topo.lb.ip(&format!("neigh flush dev {LB_IF_A}")));
    assert!(
        !lb_knows(&bed, LB_IF_A, from),
        "the LB knows {from} already"
    );
    let before = counter(&d, "passed_no_neighbour_out");
    assert_eq!(first_get(&bed, &d, v6, from, ONE_ND_RETRY), "b1");
    assert!(
        counter(&d, "passed_no_neighbour_out") > before,
        "the reply did not take the neighbour hand-off"
    );
    assert!(lb_knows(&bed, LB_IF_A, from), "the kernel resolved {from}");
    // The instance check counts the TC links with the XDP ones.
    let (code, body) = must(admin::get(&bed.topo.lb, "/health/instance"));
    assert_eq!(code, 200, "/health/instance: {body}");
    // Once resolved, XDP sends the client's replies itself again.
    let handed = counter(&d, "passed_no_neighbour_out");
    assert_eq!(first_get(&bed, &d, v6, from, ONE_ND_RETRY), "b1");
    assert_eq!(counter(&d, "passed_no_neighbour_out"), handed);
    bed.stop(d);
}

#[test]
fn new_client_with_the_vip_local_v4() {
    new_client_connects(false, true, "native");
}

#[test]
fn new_client_with_the_vip_local_v6() {
    new_client_connects(true, true, "native");
}

#[test]
fn new_client_with_the_vip_not_local_v4() {
    new_client_connects(false, false, "native");
}

#[test]
fn new_client_with_the_vip_not_local_v6() {
    new_client_connects(true, false, "native");
}

/// A backend whose neighbour entry the LB lost takes the next new connection at its
/// first SYN: the SYN is handed to TC, which resolves the backend.
fn backend_without_neighbour_takes_the_first_syn(v6: bool, mode: &str) {
    let bed = Bed::new(Kind::TwoArmed);
    // The VIP not local: only the path toward the backend is under test.
    let d = lb_over_b1(&bed, v6, false, mode);
    let b1 = bed.topo.backend("b1");
    let b1_ip: IpAddr = if v6 { b1.v6.into() } else { b1.v4.into() };
    let client: IpAddr = if v6 {
        bed.topo.client_v6.into()
    } else {
        bed.topo.client_v4.into()
    };
    must(bed.topo.lb.ip(&format!("neigh flush dev {LB_IF_B}")));
    assert!(!lb_knows(&bed, LB_IF_B, b1_ip), "the LB knows b1 still");
    // The first connection through the VIP: nothing was handed off before it.
    assert_eq!(first_get(&bed, &d, v6, client, BEFORE_SYN_RETRY), "b1");
    assert!(
        counter(&d, "passed_no_neighbour_in") >= 1,
        "the SYN did not take the neighbour hand-off"
    );
    assert!(lb_knows(&bed, LB_IF_B, b1_ip), "the kernel resolved b1");
    assert_eq!(counter(&d, "drop_no_neighbour"), 0);
    bed.stop(d);
}

#[test]
fn backend_without_neighbour_v4() {
    backend_without_neighbour_takes_the_first_syn(false, "native");
}

#[test]
fn backend_without_neighbour_v6() {
    backend_without_neighbour_takes_the_first_syn(true, "native");
}

#[test]
fn new_client_with_the_vip_local_v4_generic_xdp() {
    new_client_connects(false, true, "skb");
}

#[test]
fn backend_without_neighbour_v6_generic_xdp() {
    backend_without_neighbour_takes_the_first_syn(true, "skb");
}
