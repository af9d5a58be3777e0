//! Packet-level tests of the neighbour hand-off (`lb_common::handoff`) with
//! BPF_PROG_TEST_RUN: when the FIB lookup finds no neighbour entry for the next hop, the
//! program passes the rewritten frame with the host's hand-off mark and the egress
//! interface over its Ethernet addresses; the TC companion `lb_neigh` sends such a frame
//! through the kernel's neighbour resolution (`TC_ACT_REDIRECT`) and leaves every other
//! frame alone. Toward a client and toward a backend, IPv4 and IPv6, on a connected route
//! and through a gateway. (End to end, with the kernel resolving the neighbour and the
//! packet arriving, in `neighbour.rs`.)
//!
//! Needs root and BPF_PROG_TEST_RUN for XDP and TC; without either the tests fail, never
//! skip.

use std::net::IpAddr;

use lb_common::handoff;
use lb_tests::packet::{decode, flags::*};
use lb_tests::test_run::{
    Action, BACKEND_PORT, CLIENT_PORT, Plan, TestRun, VIP_PORT, counter, plan4, plan6,
};

/// `lb_neigh`'s verdicts: the frame sent through the neighbour resolution, or left to
/// the next TC program and the stack.
const TC_ACT_REDIRECT: i32 = 7;
const TC_ACT_UNSPEC: i32 = -1;

/// The interface index of `name` in the test run's namespace (the thread is in it).
fn ifindex(name: &str) -> u32 {
    lb_user::sys::ifindex(name).expect("interface index")
}

/// The interface a passed frame is handed off to, and the frame, which `lb_neigh` must
/// send on; the hand-off must be there.
fn handed_off(lb: &mut TestRun, out: &[u8]) -> (u32, lb_tests::packet::Packet) {
    let (h, _) = lb.handed_off(out);
    assert_eq!(
        lb.run_neigh(out),
        TC_ACT_REDIRECT,
        "lb_neigh sends the handed-off frame"
    );
    (h.ifindex, decode(out).expect("the handed-off frame"))
}

/// A client without a neighbour entry on `lb1` (the kit gives the plan's own one a
/// permanent entry).
fn unknown_client(p: &Plan) -> IpAddr {
    if p.vip.is_ipv4() {
        [198, 18, 1, 3].into()
    } else {
        "fd00:1::3".parse().expect("literal")
    }
}

#[test]
fn reply_to_a_client_without_neighbour_is_handed_off_out_of_the_clients_interface() {
    for base in [plan4(), plan6()] {
        let p = Plan {
            client: unknown_client(&base),
            ..base
        };
        let mut lb = TestRun::new();
        lb.two_backends_up(&p, 0);
        assert_eq!(lb.from_client(&p.syn().build()).0, Action::Redirect);
        let port = lb.snat_port(&p, CLIENT_PORT);
        let before = lb.counter(counter::PASS_NO_NEIGH_OUT);
        let (action, out) = lb.from_backend(&p.from_backend(0, port, SYN | ACK).build());
        assert_eq!(action, Action::Pass, "{}", p.vip);
        assert_eq!(lb.counter(counter::PASS_NO_NEIGH_OUT), before + 1);
        let (iface, frame) = handed_off(&mut lb, &out);
        assert_eq!(iface, ifindex("lb1"), "out of lb1, toward the client");
        assert_eq!(
            (frame.src, frame.sport, frame.dst, frame.dport),
            (p.vip, VIP_PORT, p.client, CLIENT_PORT),
            "rewritten back to VIP → client"
        );
    }
}

#[test]
fn forward_to_a_backend_without_neighbour_is_handed_off_out_of_the_routes_interface() {
    // (what, the backends' address, a route to add for them through a gateway)
    let gw4: IpAddr = [198, 18, 0, 99].into();
    let gw6: IpAddr = "fd00::99".parse().expect("literal");
    let cases = [
        (
            "IPv4 backend on the link",
            plan4(),
            IpAddr::from([198, 18, 0, 12]),
            None,
        ),
        (
            "IPv4 backend behind a gateway",
            plan4(),
            IpAddr::from([198, 18, 5, 5]),
            Some(gw4),
        ),
        (
            "IPv6 backend on the link",
            plan6(),
            "fd00::12".parse().expect("literal"),
            None,
        ),
        (
            "IPv6 backend behind a gateway",
            plan6(),
            "fd00:5::5".parse().expect("literal"),
            Some(gw6),
        ),
    ];
    for (what, base, backend, gateway) in cases {
        let p = base.with_backends_at(backend);
        let mut lb = TestRun::new();
        if let Some(gw) = gateway {
            lb.ns()
                .ip(&format!("route add {backend} via {gw} dev lb0"))
                .expect("route via the gateway");
        }
        lb.two_backends_up(&p, 0);
        let (action, out, bumped) = lb.run_counted(&p.syn().build());
        assert_eq!(
            (action, bumped),
            (Action::Pass, vec![counter::PASS_NO_NEIGH_IN]),
            "{what}"
        );
        let (iface, frame) = handed_off(&mut lb, &out);
        assert_eq!(iface, ifindex("lb0"), "{what}: out of lb0, the route's");
        assert_eq!(
            (frame.src, frame.dst, frame.dport),
            (p.snat, backend, BACKEND_PORT),
            "{what}: rewritten to SNAT → backend"
        );
    }
}

#[test]
fn lb_neigh_leaves_every_frame_without_the_hosts_mark_alone() {
    let p = plan4();
    let mut lb = TestRun::new();
    lb.two_backends_up(&p, 0);
    let mark = lb.handoff_mark();
    assert!(
        handoff::is_mark(mark),
        "the daemon's writers set a mark: {mark:#x}"
    );
    let plain = p.syn().build();
    assert_eq!(lb.run_neigh(&plain), TC_ACT_UNSPEC, "a frame as it came in");
    // Another mark, one bit off: only the host's exact mark counts.
    let other = handoff::Handoff {
        mark: mark ^ 0x0100,
        ifindex: ifindex("lb0"),
    };
    let mut forged = plain.clone();
    forged[..handoff::LEN].copy_from_slice(&other.encode());
    assert_eq!(lb.run_neigh(&forged), TC_ACT_UNSPEC, "another mark");
    let own = handoff::Handoff { mark, ..other };
    forged[..handoff::LEN].copy_from_slice(&own.encode());
    assert_eq!(lb.run_neigh(&forged), TC_ACT_REDIRECT, "the host's mark");
}

#[test]
fn the_daemon_keeps_a_pinned_mark_and_replaces_anything_else() {
    let p = plan4();
    let mut lb = TestRun::new();
    lb.two_backends_up(&p, 0);
    let first = lb.handoff_mark();
    // A daemon started over these maps keeps the mark: the programs still attached
    // mark their hand-offs with it until the new ones replace them.
    lb.program_globals_again();
    assert_eq!(lb.handoff_mark(), first, "kept across a second start");
    // A value no daemon writes (none yet, or not shaped as a mark) is replaced.
    for held in [0, first & !0x02] {
        lb.set_handoff_mark(held);
        lb.program_globals_again();
        let now = lb.handoff_mark();
        assert!(handoff::is_mark(now), "{held:#x} replaced by {now:#x}");
        assert_ne!(now, held);
    }
}
