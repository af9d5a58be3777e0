//! Packet-level tests of the neighbour hand-off (`lb_common::handoff`) with
//! BPF_PROG_TEST_RUN: when the FIB lookup finds no neighbour entry for the next hop, the
//! program passes the rewritten frame with a `Handoff` in its metadata area, which the
//! test run returns in front of the frame. Toward a client and toward a backend, IPv4 and
//! IPv6, on a connected route and through a gateway. (End to end, with the TC program
//! sending such packets, in `neighbour.rs`.)
//!
//! Needs root and BPF_PROG_TEST_RUN for XDP; without either the tests fail, never skip.

use std::net::IpAddr;

use lb_common::handoff::{self, FAMILY_INET, FAMILY_INET6, Handoff};
use lb_tests::packet::{decode, flags::*};
use lb_tests::test_run::{
    Action, BACKEND_PORT, CLIENT_PORT, Plan, TestRun, VIP_PORT, counter, plan4, plan6,
};

/// The next hop a hand-off names.
fn next_hop(h: &Handoff) -> IpAddr {
    let bytes: Vec<u8> = h.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
    if h.family == FAMILY_INET {
        IpAddr::from(<[u8; 4]>::try_from(&bytes[..4]).expect("4 bytes"))
    } else {
        IpAddr::from(<[u8; 16]>::try_from(&bytes[..]).expect("16 bytes"))
    }
}

/// The interface index of `name` in the test run's namespace (the thread is in it).
fn ifindex(name: &str) -> u32 {
    lb_user::sys::ifindex(name).expect("interface index")
}

/// Splits a passed frame into its hand-off and the frame itself; the hand-off must be
/// there.
fn handed_off(out: &[u8]) -> (Handoff, lb_tests::packet::Packet) {
    let h = Handoff::decode(out).unwrap_or_else(|| panic!("no hand-off in front of {out:?}"));
    let frame = decode(&out[handoff::LEN..]).expect("the frame after the hand-off");
    (h, frame)
}

/// `p`'s family as a hand-off states it.
fn family(p: &Plan) -> u32 {
    if p.vip.is_ipv4() {
        FAMILY_INET
    } else {
        FAMILY_INET6
    }
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
fn reply_to_a_client_without_neighbour_is_handed_off_with_the_client_as_next_hop() {
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
        let (h, frame) = handed_off(&out);
        assert_eq!(
            (h.ifindex, h.family, next_hop(&h)),
            (ifindex("lb1"), family(&p), p.client),
            "out of lb1, to the client itself"
        );
        assert_eq!(
            (frame.src, frame.sport, frame.dst, frame.dport),
            (p.vip, VIP_PORT, p.client, CLIENT_PORT),
            "rewritten back to VIP → client"
        );
    }
}

#[test]
fn forward_to_a_backend_without_neighbour_is_handed_off_with_the_next_hop() {
    // (what, the backends' address, a route to add for them, the expected next hop)
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
        let (h, frame) = handed_off(&out);
        assert_eq!(
            (h.ifindex, h.family, next_hop(&h)),
            (ifindex("lb0"), family(&p), gateway.unwrap_or(backend)),
            "{what}: out of lb0 to the next hop"
        );
        assert_eq!(
            (frame.src, frame.dst, frame.dport),
            (p.snat, backend, BACKEND_PORT),
            "{what}: rewritten to SNAT → backend"
        );
    }
}
