//! Packet-level tests of the `lb_xdp` program with BPF_PROG_TEST_RUN (the kit's
//! [`TestRun`]): tables of cases, each a description, an input frame from the kit's
//! builder, the provisioning (through lb-user's `Dataplane` writers), the one expected
//! action and, where the frame is rewritten, the expected output frame built
//! independently with the same builder and compared byte for byte.
//!
//! Needs root and a kernel with BPF_PROG_TEST_RUN for XDP: without either the tests fail
//! (never skip) and say what is missing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::thread::sleep;
use std::time::{Duration, Instant};

use lb_common::addr::ip_to_words;
use lb_common::maps::{
    FLOW_BACKEND_TIME_WAIT, FLOW_ESTABLISHED, FLOW_FIN_BACKEND, FLOW_FIN_CLIENT, FLOW_LAST_ACK,
    FLOW_REPLIED, FLOW_RST, NEXT_HOP_TTL_NS, REPLIES_NO_VIP, reply_hop_slot,
};
use lb_tests::packet::{Packet, decode, flags::*};
use lb_tests::test_run::{
    ACK_NO, Action, BACKEND_MACS, BACKEND_PORT, CLIENT_MAC, CLIENT_PORT, LB0_MAC, LB1_MAC, Plan,
    SEQ, SNAT_MIN, TestRun, Timeouts, VIP_PORT, counter, first_snat_port, key, plan4, plan6,
    rst_for, snat_candidates, stay_on_this_cpu,
};

/// A fresh program with `p`'s service: both backends up, every new flow to backend 0.
fn serving(p: &Plan) -> TestRun {
    let mut lb = TestRun::new();
    lb.two_backends_up(p, 0);
    lb
}

/// As [`serving`], with the client's connection from [`CLIENT_PORT`] already pinned to
/// backend 0 by its SYN.
fn with_flow(p: &Plan) -> TestRun {
    let mut lb = serving(p);
    assert_eq!(
        forward_to(&mut lb, p, &p.syn()),
        0,
        "the SYN goes to backend 0"
    );
    lb
}

/// What `input` from the client must become when forwarded to backend `i` through SNAT
/// port `snat_port`: MACs of the next hop, SNAT address and port, backend address and
/// port, TTL one less; everything else as it came.
fn to_backend(p: &Plan, input: &Packet, i: usize, snat_port: u16) -> Packet {
    Packet {
        eth_dst: BACKEND_MACS[i],
        eth_src: LB0_MAC,
        src: p.snat,
        dst: p.backends[i],
        sport: snat_port,
        dport: BACKEND_PORT,
        ttl: input.ttl - 1,
        ..input.clone()
    }
}

/// What a backend's reply `input` must become on its way back to the client.
fn to_client(p: &Plan, input: &Packet) -> Packet {
    Packet {
        eth_dst: CLIENT_MAC,
        eth_src: LB1_MAC,
        src: p.vip,
        dst: p.client,
        sport: p.vip_port,
        dport: CLIENT_PORT,
        ttl: input.ttl - 1,
        ..input.clone()
    }
}

/// The acknowledgment number a RST|ACK answering `s` carries: everything `s` occupies
/// in sequence space (its data, and SYN and FIN).
fn ack_of(s: &Packet) -> u32 {
    let syn_fin = u32::from(s.flags & SYN != 0) + u32::from(s.flags & FIN != 0);
    s.seq + s.payload.len() as u32 + syn_fin
}

// ---------------------------------------------------------------------------------------
// Forward path

/// A client → VIP frame that must be rewritten to backend 0.
struct RewriteCase {
    what: &'static str,
    plan: Plan,
    input: Packet,
}

#[test]
fn client_to_vip_is_rewritten_to_the_backend() {
    let (p4, p6) = (plan4(), plan6());
    let cases = [
        RewriteCase {
            what: "IPv4 SYN",
            plan: p4,
            input: p4.syn(),
        },
        RewriteCase {
            what: "IPv6 SYN, hop limit 2",
            plan: p6,
            input: Packet { ttl: 2, ..p6.syn() },
        },
        RewriteCase {
            what: "802.1Q-tagged IPv4 SYN",
            plan: p4,
            input: Packet {
                vlan: Some(42),
                ..p4.syn()
            },
        },
        RewriteCase {
            what: "IPv4 SYN with IP options",
            plan: p4,
            input: Packet {
                ip_options: vec![0x94, 0x04, 0, 0], // Router Alert
                ..p4.syn()
            },
        },
    ];
    for case in cases {
        let (what, p) = (case.what, &case.plan);
        let mut lb = serving(p);
        let input = case.input.build();
        let (action, out) = lb.from_client(&input);
        assert_eq!(action, Action::Redirect, "{what}: action");
        let k = p.client_key(CLIENT_PORT);
        let port = first_snat_port(&k);
        assert_eq!(
            out,
            to_backend(p, &case.input, 0, port).build(),
            "{what}: output frame"
        );
        let flow = lb
            .flow(k)
            .unwrap_or_else(|| panic!("{what}: no flow entry"));
        assert_eq!(
            (u32::from(flow.backend), u16::from_be(flow.snat_port)),
            (p.ids[0], port),
            "{what}: flow entry"
        );
        let r = lb
            .reverse(p.reverse_key(0, port))
            .unwrap_or_else(|| panic!("{what}: no reverse entry"));
        assert_eq!(
            (r.flow, r.backend, r.service_id),
            (k, p.ids[0] as u16, p.service),
            "{what}: reverse entry"
        );
        assert_eq!(lb.counter(counter::FWD_IN), 1, "{what}: FWD_IN");
        for (map, s) in [
            ("service", lb.service_stats(p)),
            ("backend", lb.backend_stats(p, 0)),
        ] {
            assert_eq!(
                (s.new_flows, s.packets_in, s.bytes_in),
                (1, 1, input.len() as u64),
                "{what}: {map} stats"
            );
        }
    }
}

#[test]
fn backend_reply_is_rewritten_back_to_the_client() {
    for p in [plan4(), plan6()] {
        let mut lb = serving(&p);
        assert_eq!(lb.from_client(&p.syn().build()).0, Action::Redirect);
        let port = lb.snat_port(&p, CLIENT_PORT);
        let reply = p.from_backend(0, port, SYN | ACK);
        let input = reply.build();
        let (action, out) = lb.from_backend(&input);
        assert_eq!(action, Action::Redirect, "{}", p.vip);
        assert_eq!(out, to_client(&p, &reply).build(), "{}", p.vip);
        assert_eq!(lb.counter(counter::FWD_OUT), 1);
        let s = lb.backend_stats(&p, 0);
        assert_eq!((s.packets_out, s.bytes_out), (1, input.len() as u64));

        // The backend's answer and then its FIN (before the client's) are recorded on
        // the flow.
        assert_eq!(
            lb.flow(p.client_key(CLIENT_PORT)).unwrap().flags,
            FLOW_REPLIED
        );
        let fin = p.from_backend(0, port, FIN | ACK).build();
        assert_eq!(lb.from_backend(&fin).0, Action::Redirect);
        let flow = lb.flow(p.client_key(CLIENT_PORT)).unwrap();
        assert_eq!(
            flow.flags,
            FLOW_REPLIED | FLOW_FIN_BACKEND | FLOW_BACKEND_TIME_WAIT
        );
    }
}

#[test]
fn xdp_tx_when_the_backend_is_behind_the_ingress_interface() {
    stay_on_this_cpu();
    let p = plan4();
    let mut lb = serving(&p);
    let s = Packet {
        eth_dst: LB0_MAC,
        ..p.syn()
    };
    let want = to_backend(&p, &s, 0, first_snat_port(&p.client_key(CLIENT_PORT))).build();
    // The first packet looks the next hop up; the second one uses the cached hop.
    for what in ["looked up", "cached"] {
        let (action, out) = lb.run(&s.build(), lb.lb0);
        assert_eq!(action, Action::Tx, "{what}");
        assert_eq!(out, want, "{what}");
    }
}

// ---------------------------------------------------------------------------------------
// Frames that are not ours, or not sane: never rewritten, one verdict each.

#[test]
fn frames_that_are_not_ours_or_malformed_are_never_rewritten() {
    let p = plan4();
    let good = p.syn().build();
    let (l3, l4) = (14, 34);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let arp = {
        let mut v = good[..12].to_vec();
        v.extend([0x08, 0x06]);
        v.extend([0u8; 28]);
        v
    };
    let ipv6_ext = {
        let mut v = plan6().syn().build();
        v[14 + 6] = 0; // next header: hop-by-hop options
        v
    };
    use Action::{Drop, Pass};
    // (what, frame, the action, the one counter it bumps). Frames whose ports cannot be
    // read (or whose IPv4 header cannot be trusted to say where they are) are not known
    // to be ours: passed. Ports of a service with an inconsistent header: dropped.
    let cases: Vec<(&str, Vec<u8>, Action, u32)> = vec![
        (
            "VIP address, other port",
            Packet {
                dport: 81,
                ..p.syn()
            }
            .build(),
            Pass,
            counter::PASS,
        ),
        (
            "other address",
            Packet {
                dst: [198, 18, 2, 99].into(),
                ..p.syn()
            }
            .build(),
            Pass,
            counter::PASS,
        ),
        (
            "UDP to the VIP",
            with(&|v| v[l3 + 9] = 17),
            Pass,
            counter::PASS,
        ),
        ("ARP", arp, Pass, counter::PASS),
        (
            "a SYN to the VIP in a frame for another host's MAC (flooded by a switch)",
            Packet {
                eth_dst: [0x02, 0, 0, 0, 0x99, 0x99],
                ..p.syn()
            }
            .build(),
            Pass,
            counter::PASS,
        ),
        (
            "IPv6 with an extension header",
            ipv6_ext,
            Pass,
            counter::PASS,
        ),
        (
            "Ethernet header only",
            good[..14].to_vec(),
            Pass,
            counter::PASS,
        ),
        (
            "VLAN tag cut off",
            with(&|v| {
                v.truncate(14);
                v[12..14].copy_from_slice(&[0x81, 0x00]);
            }),
            Pass,
            counter::PASS,
        ),
        (
            "IPv4 header cut off",
            good[..l3 + 12].to_vec(),
            Pass,
            counter::PASS,
        ),
        (
            "TCP ports cut off",
            good[..l4 + 2].to_vec(),
            Pass,
            counter::PASS,
        ),
        (
            "TCP header cut after the ports (total length beyond the frame)",
            good[..l4 + 8].to_vec(),
            Drop,
            counter::DROP_MALFORMED,
        ),
        ("ihl 4", with(&|v| v[l3] = 0x44), Pass, counter::PASS),
        ("ihl 0", with(&|v| v[l3] = 0x40), Pass, counter::PASS),
        (
            "doff 4",
            with(&|v| v[l4 + 12] = 0x40),
            Drop,
            counter::DROP_MALFORMED,
        ),
        (
            "doff 15 beyond the segment",
            with(&|v| v[l4 + 12] = 0xf0),
            Drop,
            counter::DROP_MALFORMED,
        ),
        (
            "total length beyond the frame",
            with(&|v| {
                let t = u16::from_be_bytes([v[l3 + 2], v[l3 + 3]]) + 1;
                v[l3 + 2..l3 + 4].copy_from_slice(&t.to_be_bytes());
            }),
            Drop,
            counter::DROP_MALFORMED,
        ),
        (
            "total length shorter than the headers",
            with(&|v| v[l3 + 2..l3 + 4].copy_from_slice(&30u16.to_be_bytes())),
            Drop,
            counter::DROP_MALFORMED,
        ),
        (
            "IPv4 version 5",
            with(&|v| v[l3] = 0x55),
            Pass,
            counter::PASS,
        ),
        (
            "first fragment (MF)",
            Packet {
                more_fragments: true,
                ..p.syn()
            }
            .build(),
            Pass,
            counter::PASS_FRAGMENT,
        ),
        (
            "later fragment",
            Packet {
                frag_offset: 0x10,
                ..p.syn()
            }
            .build(),
            Pass,
            counter::PASS_FRAGMENT,
        ),
        (
            "TTL 1",
            Packet { ttl: 1, ..p.syn() }.build(),
            Pass,
            counter::PASS,
        ),
    ];
    let mut lb = serving(&p);
    for (what, frame, action, bumped) in cases {
        let got = lb.run_counted(&frame);
        assert_eq!(
            got,
            (action, frame, vec![bumped]),
            "{what}: (action, output = input, counters)"
        );
    }
    assert_eq!(lb.counter(counter::FWD_IN), 0, "nothing forwarded");
}

/// As [`serving`], with the client's connection from [`CLIENT_PORT`] through its
/// handshake (SYN, the backend's SYN-ACK, the client's ACK) to backend 0: established,
/// in the flow table. Its SNAT port too.
fn established(p: &Plan) -> (TestRun, u16) {
    let mut lb = serving(p);
    assert_eq!(lb.from_client(&p.syn().build()).0, Action::Redirect);
    let port = lb.snat_port(p, CLIENT_PORT);
    let syn_ack = p.from_backend(0, port, SYN | ACK).build();
    assert_eq!(lb.from_backend(&syn_ack).0, Action::Redirect);
    let ack = p.from_client(CLIENT_PORT, ACK).build();
    assert_eq!(lb.from_client(&ack).0, Action::Redirect);
    assert!(lb.flow_table_entry(p.client_key(CLIENT_PORT)).is_some());
    (lb, port)
}

/// An established flow's segments (the fast path's) in frames for another MAC than
/// the receiving interface's are passed untouched: a MAC that differs in its first
/// byte, in its last, or is the LB's other interface's. The same segments to the
/// interface's own MAC are forwarded.
#[test]
fn established_segments_for_another_mac_are_passed_untouched() {
    for p in [plan4(), plan6()] {
        let (mut lb, port) = established(&p);
        let ack = p.from_client(CLIENT_PORT, ACK);
        let reply = p.from_backend(0, port, ACK);
        let forwarded = (lb.counter(counter::FWD_IN), lb.counter(counter::FWD_OUT));
        // (whose segment, it, the receiving interface's MAC, the other interface's).
        for (whose, s, own, other_iface) in [
            ("client's", &ack, LB1_MAC, LB0_MAC),
            ("backend's", &reply, LB0_MAC, LB1_MAC),
        ] {
            let mut first = own;
            first[0] ^= 0x04;
            let mut last = own;
            last[5] ^= 0x40;
            for (mac, what) in [
                (first, "first byte"),
                (last, "last byte"),
                (other_iface, "other interface"),
            ] {
                let frame = Packet {
                    eth_dst: mac,
                    ..s.clone()
                }
                .build();
                let got = if whose == "client's" {
                    lb.from_client(&frame)
                } else {
                    lb.from_backend(&frame)
                };
                assert_eq!(
                    got,
                    (Action::Pass, frame.clone()),
                    "{}: {whose} ACK, MAC off in its {what}",
                    p.vip
                );
            }
        }
        assert_eq!(
            (lb.counter(counter::FWD_IN), lb.counter(counter::FWD_OUT)),
            forwarded,
            "{}: nothing forwarded",
            p.vip
        );
        assert_eq!(lb.from_client(&ack.build()).0, Action::Redirect);
        assert_eq!(lb.from_backend(&reply.build()).0, Action::Redirect);
    }
}

// ---------------------------------------------------------------------------------------
// Backend selection

#[test]
fn existing_flow_keeps_its_backend_when_the_maglev_table_changes() {
    let p = plan4();
    let mut lb = with_flow(&p);
    lb.table_to(&p, 1);
    assert_eq!(
        forward_to(&mut lb, &p, &p.from_client(CLIENT_PORT, ACK)),
        0,
        "existing flow stays"
    );
    assert_eq!(
        forward_to(&mut lb, &p, &p.from_client(CLIENT_PORT + 1, SYN)),
        1,
        "new flow follows the new table"
    );
    assert_eq!(lb.service_stats(&p).new_flows, 2);
    assert_eq!(lb.counter(counter::FWD_IN), 3);
}

#[test]
fn flow_to_a_down_backend_is_rebalanced() {
    for p in [plan4(), plan6()] {
        let mut lb = with_flow(&p);
        lb.failed_over(&p, 0, 1);
        let ack = p.from_client(CLIENT_PORT, ACK);
        let (action, out) = lb.from_client(&ack.build());
        assert_eq!(action, Action::Redirect, "{}", p.vip);
        let port = lb.snat_port(&p, CLIENT_PORT);
        assert_eq!(out, to_backend(&p, &ack, 1, port).build(), "{}", p.vip);
        assert_eq!(
            u32::from(lb.flow(p.client_key(CLIENT_PORT)).unwrap().backend),
            p.ids[1]
        );
        assert_eq!(lb.backend_stats(&p, 1).new_flows, 1);
    }
}

#[test]
fn draining_backend_keeps_its_flows_but_takes_no_new_ones() {
    let p = plan4();
    let mut lb = with_flow(&p);
    lb.backend_draining(&p, 0);
    assert_eq!(forward_to(&mut lb, &p, &p.from_client(CLIENT_PORT, ACK)), 0);
    // A stale table still naming the draining backend does not give it new flows: the
    // client is told at once.
    let other = p.from_client(CLIENT_PORT + 1, SYN);
    let (action, out) = lb.from_client(&other.build());
    assert_eq!(action, Action::Tx);
    assert_eq!(out, rst_for(&other, 0, ack_of(&other), RST | ACK).build());
    assert_eq!(lb.counter(counter::DROP_NO_BACKEND), 1);
    assert_eq!(lb.service_stats(&p).new_flows, 1);
}

// ---------------------------------------------------------------------------------------
// No usable backend: the client is answered with a TCP RST (XDP_TX), never left waiting.

/// A segment to answer, and the sequence number, acknowledgment number and flags its
/// RST must carry.
struct RstCase {
    what: &'static str,
    input: Packet,
    /// Zero bytes appended after the IP packet (Ethernet minimum-size padding).
    pad: usize,
    seq: u32,
    ack: u32,
    flags: u8,
}

impl RstCase {
    /// A segment without ACK: answered with RST|ACK acknowledging it.
    fn unacked(what: &'static str, input: Packet) -> RstCase {
        RstCase {
            what,
            pad: 0,
            seq: 0,
            ack: ack_of(&input),
            flags: RST | ACK,
            input,
        }
    }

    /// A segment with ACK: answered with a bare RST at its acknowledgment number.
    fn acked(what: &'static str, input: Packet) -> RstCase {
        RstCase {
            what,
            pad: 0,
            seq: input.ack,
            ack: 0,
            flags: RST,
            input,
        }
    }
}

#[test]
fn no_backend_answers_the_client_with_a_rst() {
    let (p4, p6) = (plan4(), plan6());
    let plain = |p: Plan, f: u8| Packet {
        tcp_options: vec![],
        payload: vec![],
        ..p.from_client(CLIENT_PORT, f)
    };
    let tagged = |s: Packet| Packet {
        vlan: Some(42),
        ..s
    };
    let cases = vec![
        RstCase::unacked("IPv4 SYN", p4.syn()),
        RstCase::unacked("IPv4 SYN without options or data", plain(p4, SYN)),
        RstCase::unacked("IPv6 SYN", p6.syn()),
        RstCase::unacked("IPv6 SYN without options or data", plain(p6, SYN)),
        RstCase::unacked("802.1Q-tagged IPv4 SYN", tagged(p4.syn())),
        RstCase::unacked("802.1Q-tagged IPv6 SYN", tagged(plain(p6, SYN))),
        RstCase::unacked(
            "IPv4 SYN with IP options (answered without them)",
            Packet {
                ip_options: vec![0x94, 0x04, 0, 0],
                ..p4.syn()
            },
        ),
        RstCase {
            pad: 6,
            ..RstCase::unacked("IPv4 SYN padded to the Ethernet minimum", plain(p4, SYN))
        },
        // FIN counts in sequence space, as SYN does.
        RstCase::unacked(
            "IPv6 FIN with data, no ACK",
            Packet {
                tcp_options: vec![],
                ..p6.from_client(CLIENT_PORT, FIN | PSH)
            },
        ),
        RstCase::acked("IPv4 ACK with data", p4.from_client(CLIENT_PORT, ACK | PSH)),
        RstCase::acked("IPv6 ACK with data", p6.from_client(CLIENT_PORT, ACK | PSH)),
        RstCase::acked("802.1Q-tagged IPv4 FIN|ACK", tagged(plain(p4, FIN | ACK))),
    ];
    let n = cases.len() as u64;
    let mut lb = answers_with_rsts(cases);
    assert_eq!(lb.counter(counter::DROP_NO_BACKEND), n);
    assert_eq!(lb.counter(counter::FWD_IN), 0);
    assert_eq!(lb.service_stats(&p4).new_flows, 0);
    assert_eq!(lb.table_sizes(), (0, 0), "no flow or reverse NAT entry");
}

#[test]
fn rst_keeps_the_dscp_and_clears_the_ecn_bits() {
    // DSCP EF (46) with ECT(1): the RST keeps EF and is not ECN-capable.
    let ef_ect1 = 0xb9;
    let cases = [plan4(), plan6()].map(|p| {
        RstCase::unacked(
            "SYN with DSCP EF and ECT(1)",
            Packet {
                tos: ef_ect1,
                ..p.syn()
            },
        )
    });
    for case in &cases {
        assert_eq!(
            rst_for(&case.input, 0, 0, RST).tos,
            0xb8,
            "the expected RST"
        );
    }
    answers_with_rsts(cases.into());
}

/// Runs each case against services with no backend in their table: each must be
/// answered with exactly its RST, counted once as DROP_NO_BACKEND.
fn answers_with_rsts(cases: Vec<RstCase>) -> TestRun {
    let mut lb = TestRun::new();
    lb.no_backend_in_table(&plan4());
    lb.no_backend_in_table(&plan6());
    for case in cases {
        let what = case.what;
        let mut input = case.input.build();
        input.resize(input.len() + case.pad, 0);
        let (action, out, bumped) = lb.run_counted(&input);
        assert_eq!(action, Action::Tx, "{what}: action");
        assert_eq!(bumped, [counter::DROP_NO_BACKEND], "{what}: counters");
        let want = rst_for(&case.input, case.seq, case.ack, case.flags);
        assert_eq!(out, want.build(), "{what}: RST frame");
        // The decoder checks the checksums from scratch too.
        assert_eq!(decode(&out).expect(what), want, "{what}: decoded");
    }
    lb
}

/// Client segments with each of `flags` get `action`, bump only `bumped`, and leave the
/// program as they came.
fn left_untouched(lb: &mut TestRun, p: &Plan, flags: &[u8], action: Action, bumped: u32) {
    for f in flags {
        let input = p.from_client(CLIENT_PORT, *f).build();
        assert_eq!(
            lb.run_counted(&input),
            (action, input, vec![bumped]),
            "{} flags {f:#x}: (action, untouched output, counters)",
            p.vip
        );
    }
}

#[test]
fn a_rst_with_no_backend_is_dropped_not_answered() {
    let mut lb = TestRun::new();
    lb.no_backend_in_table(&plan4());
    lb.no_backend_in_table(&plan6());
    for p in [plan4(), plan6()] {
        // Never answered.
        left_untouched(
            &mut lb,
            &p,
            &[RST, RST | ACK],
            Action::Drop,
            counter::DROP_NO_BACKEND,
        );
    }
    assert_eq!(lb.counter(counter::DROP_NO_BACKEND), 4);
}

#[test]
fn down_backend_with_no_replacement_is_answered_with_a_rst() {
    for p in [plan4(), plan6()] {
        // An existing flow whose backend goes down, with nothing to move to: the next
        // segment of the connection is answered with a RST.
        let mut lb = with_flow(&p);
        lb.backend_down(&p, 0);
        let ack = p.from_client(CLIENT_PORT, ACK);
        let (action, out, bumped) = lb.run_counted(&ack.build());
        assert_eq!(action, Action::Tx, "{}: existing flow", p.vip);
        assert_eq!(bumped, [counter::DROP_NO_BACKEND], "{}", p.vip);
        assert_eq!(out, rst_for(&ack, ACK_NO, 0, RST).build(), "{}", p.vip);
        // A new connection whose Maglev slot names the down backend.
        let other = Packet {
            payload: vec![],
            ..p.from_client(CLIENT_PORT + 1, SYN)
        };
        let (action, out, bumped) = lb.run_counted(&other.build());
        assert_eq!(action, Action::Tx, "{}: new flow", p.vip);
        assert_eq!(bumped, [counter::DROP_NO_BACKEND], "{}", p.vip);
        assert_eq!(
            out,
            rst_for(&other, 0, SEQ + 1, RST | ACK).build(),
            "{}",
            p.vip
        );
        assert_eq!(lb.counter(counter::DROP_NO_BACKEND), 2);
        assert_eq!(lb.counter(counter::FWD_IN), 1);
        assert_eq!(lb.service_stats(&p).new_flows, 1);
    }
}

// ---------------------------------------------------------------------------------------
// SNAT ports

#[test]
fn snat_port_is_derived_from_the_flow_hash_and_kept_when_the_flow_is_recreated() {
    let p = plan4();
    let mut lb = serving(&p);
    let k = p.client_key(CLIENT_PORT);
    let (_, out) = lb.from_client(&p.syn().build());
    assert_eq!(decode(&out).unwrap().sport, first_snat_port(&k));
    // With (almost) no idle time allowed, the next packet finds the flow expired and
    // re-creates it: it reclaims its own reverse NAT entry, so the port does not change.
    // The program's clock moves on ticks (bpf_ktime_get_coarse_ns): wait for a few.
    lb.set_timeouts(Timeouts {
        idle: "1ms",
        closed: "10s",
        half_open: "5s",
    });
    sleep(Duration::from_millis(20));
    let (_, out) = lb.from_client(&p.from_client(CLIENT_PORT, ACK).build());
    assert_eq!(decode(&out).unwrap().sport, first_snat_port(&k));
    assert_eq!(lb.service_stats(&p).new_flows, 2);
}

#[test]
fn snat_port_held_by_a_live_flow_is_skipped_and_a_stale_one_is_taken_over() {
    let p = plan4();
    let mut lb = serving(&p);
    let first = first_snat_port(&p.client_key(CLIENT_PORT));
    // Another client's live flow holds the first candidate port.
    let other = key([198, 18, 1, 99].into(), p.vip, 999, VIP_PORT);
    lb.live_flow_holding(&p, 0, first, other);
    let (action, out) = lb.from_client(&p.syn().build());
    assert_eq!(action, Action::Redirect);
    let next = snat_candidates(&p.client_key(CLIENT_PORT), 2)[1];
    assert_eq!(
        decode(&out).unwrap().sport,
        next,
        "the flow's next candidate after the held one"
    );
    assert_eq!(
        lb.reverse(p.reverse_key(0, first)).unwrap().flow,
        other,
        "held entry untouched"
    );

    // Once that flow is gone, its entry is stale and a new flow may take the port.
    lb.flow_evicted(other);
    let k2 = p.client_key(CLIENT_PORT + 7);
    let second = first_snat_port(&k2);
    lb.stale_reverse_entry(&p, 0, second, other);
    let (_, out) = lb.from_client(&p.from_client(CLIENT_PORT + 7, SYN).build());
    assert_eq!(
        decode(&out).unwrap().sport,
        second,
        "stale entry taken over"
    );
    assert_eq!(lb.reverse(p.reverse_key(0, second)).unwrap().flow, k2);
}

// ---------------------------------------------------------------------------------------
// Next hop outcomes

#[test]
fn forward_without_neighbour_route_or_tx_port_drops() {
    let p = plan4();
    let no_route: IpAddr = [198, 19, 5, 5].into();
    // (what, the LB's interfaces, the backends' address, the counter of the drop)
    let cases = [
        (
            "backend without route",
            &["lb0", "lb1"][..],
            no_route,
            counter::DROP_NO_ROUTE,
        ),
        (
            "egress interface not given to the LB (no TX port)",
            &["lb1"],
            p.backends[0],
            counter::DROP_NO_TX_PORT,
        ),
    ];
    for (what, ifaces, backend, dropped) in cases {
        let plan = p.with_backends_at(backend);
        let mut lb = TestRun::with_ifaces(ifaces);
        lb.two_backends_up(&plan, 0);
        // Dropped after the rewrite began: the output frame goes nowhere, not compared.
        let (action, _, bumped) = lb.run_counted(&plan.syn().build());
        assert_eq!((action, bumped), (Action::Drop, vec![dropped]), "{what}");
    }
}

#[test]
fn next_hop_is_reused_for_its_ttl_then_follows_a_neighbour_change() {
    stay_on_this_cpu();
    let p = plan4();
    let mut lb = with_flow(&p);

    // The backend's MAC changes (its host was replaced): the flow's packets keep the
    // cached next hop until it expires, then the FIB lookup finds the new neighbour.
    let moved = [0x02, 0, 0, 0, 0, 0x99];
    lb.ns().neighbour(p.backends[0], moved, "lb0").unwrap();
    let ack = p.from_client(CLIENT_PORT, ACK).build();
    let (action, out) = lb.from_client(&ack);
    assert_eq!(action, Action::Redirect);
    assert_eq!(
        decode(&out).unwrap().eth_dst,
        BACKEND_MACS[0],
        "cached next hop"
    );
    sleep(Duration::from_nanos(NEXT_HOP_TTL_NS) + Duration::from_millis(100));
    let (action, out) = lb.from_client(&ack);
    assert_eq!(action, Action::Redirect);
    assert_eq!(
        decode(&out).unwrap().eth_dst,
        moved,
        "looked up again after its TTL"
    );
    assert_eq!(lb.counter(counter::FWD_IN), 3);
}

#[test]
fn a_reused_backend_id_never_gets_the_old_backends_cached_next_hop() {
    stay_on_this_cpu();
    let p = plan4();
    let mut lb = with_flow(&p);
    // Backend 0's id now stands for the other backend's address: the flow's next packet
    // goes to the new address and its own MAC at once.
    lb.backend_id_reused(&p, 0, p.backends[1]);
    let ack = p.from_client(CLIENT_PORT, ACK);
    let (action, out) = lb.from_client(&ack.build());
    assert_eq!(action, Action::Redirect);
    let port = lb.snat_port(&p, CLIENT_PORT);
    assert_eq!(out, to_backend(&p, &ack, 1, port).build());
}

#[test]
fn a_packet_longer_than_the_cached_next_hop_has_seen_is_looked_up_again() {
    stay_on_this_cpu();
    let p = plan4();
    let mut lb = serving(&p);
    // A locked MTU: forwarding uses a route's MTU only then (or with ip_forward_use_pmtu).
    for b in p.backends {
        lb.ns()
            .ip(&format!("route add {b}/32 dev lb0 mtu lock 600"))
            .unwrap();
    }
    let small = p.syn().build();
    assert_eq!(lb.from_client(&small).0, Action::Redirect, "within the MTU");
    // Longer than the route's MTU: the cache has only seen a short packet, so the FIB
    // lookup runs and reports it.
    let long = Packet {
        payload: vec![b'x'; 1000],
        ..p.from_client(CLIENT_PORT, ACK)
    }
    .build();
    let (action, _, bumped) = lb.run_counted(&long);
    assert_eq!(
        (action, bumped),
        (Action::Drop, vec![counter::DROP_FRAG_NEEDED]),
        "too long for the route (dropped: the output frame goes nowhere)"
    );
    assert_eq!(
        lb.from_client(&small).0,
        Action::Redirect,
        "short ones still go"
    );
    assert_eq!(lb.counter(counter::FWD_IN), 2);
}

#[test]
fn a_reply_next_hop_is_reused_for_its_ttl_then_follows_a_neighbour_change() {
    stay_on_this_cpu();
    let p = plan4();
    let mut lb = with_flow(&p);
    let port = lb.snat_port(&p, CLIENT_PORT);
    let first = p.from_backend(0, port, SYN | ACK).build();
    let (action, out) = lb.from_backend(&first);
    assert_eq!(action, Action::Redirect);
    assert_eq!(decode(&out).unwrap().eth_dst, CLIENT_MAC, "looked up");

    // The client's MAC changes: the flow's replies keep the cached next hop until it
    // expires, then the FIB lookup finds the new neighbour.
    let moved = [0x02, 0, 0, 0, 0, 0x98];
    lb.ns().neighbour(p.client, moved, "lb1").unwrap();
    let ack = p.from_backend(0, port, ACK).build();
    let (action, out) = lb.from_backend(&ack);
    assert_eq!(action, Action::Redirect);
    assert_eq!(decode(&out).unwrap().eth_dst, CLIENT_MAC, "cached next hop");
    sleep(Duration::from_nanos(NEXT_HOP_TTL_NS) + Duration::from_millis(100));
    let (action, out) = lb.from_backend(&ack);
    assert_eq!(action, Action::Redirect);
    assert_eq!(
        decode(&out).unwrap().eth_dst,
        moved,
        "looked up again after its TTL"
    );
    assert_eq!(lb.counter(counter::FWD_OUT), 3);
}

/// A client address of `p`'s family, on a subnet of `lb1` (`extra` is added for IPv4,
/// whose client subnet is too small to hold one), whose replies' next hops share a
/// `REPLY_HOPS` slot with `p.client`'s.
fn colliding_client(lb: &TestRun, p: &Plan) -> IpAddr {
    let (vip, _) = ip_to_words(p.vip);
    let slot = |c: IpAddr| reply_hop_slot(&vip, &ip_to_words(c).0);
    let want = slot(p.client);
    let candidates: Box<dyn Iterator<Item = IpAddr>> = match p.client {
        IpAddr::V4(_) => {
            lb.ns().ip("addr add 198.18.64.1/18 dev lb1").unwrap();
            Box::new((2..16_000u32).map(|i| {
                IpAddr::from(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + i))
            }))
        }
        IpAddr::V6(c) => {
            Box::new((3..65_000u128).map(move |i| IpAddr::from(Ipv6Addr::from(u128::from(c) + i))))
        }
    };
    candidates
        .filter(|&c| c != p.client)
        .find(|&c| slot(c) == want)
        .expect("a client address in the same slot")
}

#[test]
fn clients_whose_reply_hops_share_a_cache_slot_each_get_their_own_next_hop() {
    stay_on_this_cpu();
    for p in [plan4(), plan6()] {
        let mut lb = with_flow(&p);
        let q = Plan {
            client: colliding_client(&lb, &p),
            ..p
        };
        let other_mac = [0x02, 0, 0, 0, 0, 0x97];
        lb.ns().neighbour(q.client, other_mac, "lb1").unwrap();
        assert_eq!(
            forward_to(&mut lb, &q, &q.syn()),
            0,
            "{}: the other client's SYN",
            q.client
        );
        // Each reply evicts the other client's cached hop: a miss, then a lookup.
        for round in 0..3 {
            for (plan, mac) in [(&p, CLIENT_MAC), (&q, other_mac)] {
                let port = lb.snat_port(plan, CLIENT_PORT);
                let (action, out) = lb.from_backend(&plan.from_backend(0, port, SYN | ACK).build());
                assert_eq!(
                    action,
                    Action::Redirect,
                    "round {round}: reply to {}",
                    plan.client
                );
                let got = decode(&out).unwrap();
                assert_eq!(
                    (got.dst, got.eth_dst),
                    (plan.client, mac),
                    "round {round}: reply to {}",
                    plan.client
                );
            }
        }
        assert_eq!(lb.counter(counter::FWD_OUT), 6, "{}", p.client);
    }
}

/// A SYN cookie's SYN-ACK finds its next hop like a reply, but does not cache it: under
/// a flood every spoofed source would take a slot from a real flow's replies. Shown with
/// a cookie answer to a client whose slot is the established client's: the established
/// client's replies keep their cached hop (seen through a neighbour change, which only
/// a new FIB lookup would pick up).
#[test]
fn a_syn_cookie_answer_leaves_the_reply_next_hops_cached_for_flows() {
    stay_on_this_cpu();
    for p in [plan4(), plan6()] {
        let mut lb = with_flow(&p);
        let port = lb.snat_port(&p, CLIENT_PORT);
        let reply = p.from_backend(0, port, SYN | ACK).build();
        let (action, out) = lb.from_backend(&reply);
        assert_eq!(action, Action::Redirect);
        assert_eq!(
            decode(&out).unwrap().eth_dst,
            CLIENT_MAC,
            "{}: looked up",
            p.client
        );

        let q = Plan {
            client: colliding_client(&lb, &p),
            ..p
        };
        let other_mac = [0x02, 0, 0, 0, 0, 0x97];
        lb.ns().neighbour(q.client, other_mac, "lb1").unwrap();
        lb.set_syn_cookies("always");
        let (action, out) = lb.from_client(&q.syn().build());
        assert_eq!(action, Action::Tx, "{}: answered with a cookie", q.client);
        let answer = decode(&out).unwrap();
        assert_eq!(
            (answer.dst, answer.flags, answer.eth_dst),
            (q.client, SYN | ACK, other_mac),
            "{}: the cookie SYN-ACK goes to its own next hop",
            q.client
        );

        let moved = [0x02, 0, 0, 0, 0, 0x98];
        lb.ns().neighbour(p.client, moved, "lb1").unwrap();
        let (action, out) = lb.from_backend(&p.from_backend(0, port, ACK).build());
        assert_eq!(action, Action::Redirect);
        assert_eq!(
            decode(&out).unwrap().eth_dst,
            CLIENT_MAC,
            "{}: the flow's reply still has its cached next hop",
            p.client
        );
    }
}

#[test]
fn reply_to_a_client_without_neighbour_is_passed_rewritten() {
    let p = Plan {
        client: [198, 18, 1, 3].into(),
        ..plan4()
    };
    let mut lb = with_flow(&p);
    let port = lb.snat_port(&p, CLIENT_PORT);
    let reply = p.from_backend(0, port, SYN | ACK);
    let (action, out) = lb.from_backend(&reply.build());
    assert_eq!(action, Action::Pass);
    assert_eq!(lb.counter(counter::PASS_NO_NEIGH_OUT), 1);
    // Rewritten toward the client (addresses, ports, TTL), and left for the kernel to
    // resolve the client's neighbour: the hand-off is over the MACs (`xdp_neigh.rs`).
    let (_, rest) = lb.handed_off(&out);
    assert_eq!(
        rest,
        to_client(&p, &reply).build()[lb_common::handoff::LEN..]
    );
}

// ---------------------------------------------------------------------------------------
// Flow expiry: idle flows and closed (FIN both ways, or RST) flows are forgotten, so the
// next packet of the 5-tuple is balanced afresh. Each test pins a flow on backend 0, then
// points the table at backend 1: a packet that still reaches backend 0 used the flow
// entry, one that reaches backend 1 made a new flow.

const MS: Duration = Duration::from_millis(1);

/// Runs a client → VIP segment that must be forwarded; returns the backend it went to.
/// The established fast path takes a segment to a port of the SNAT range for a reply,
/// without asking `SERVICES`, only while no VIP has such a port (`REPLIES_NO_VIP`): a
/// service on one turns that off before it goes in, so its established segments still
/// reach its backend, and removing it turns it back on.
#[test]
fn a_vip_on_a_snat_range_port_keeps_its_established_segments() {
    let p = plan4();
    let mut lb = serving(&p);
    assert_eq!(
        lb.replies(),
        REPLIES_NO_VIP,
        "port 80 is below the SNAT range"
    );
    let q = Plan {
        vip: [198, 18, 2, 9].into(),
        vip_port: SNAT_MIN + 7,
        service: 3,
        ids: [6, 7],
        ..p
    };
    lb.two_backends_up(&q, 0);
    assert_eq!(lb.replies(), 0, "{} is in the SNAT range", q.vip_addr());

    assert_eq!(forward_to(&mut lb, &q, &q.syn()), 0);
    reply(&mut lb, &q, CLIENT_PORT, SYN | ACK);
    assert_eq!(forward_to(&mut lb, &q, &q.from_client(CLIENT_PORT, ACK)), 0);
    assert_ne!(
        lb.flow(q.client_key(CLIENT_PORT)).unwrap().flags & FLOW_ESTABLISHED,
        0
    );
    // Segments the fast path takes, both ways.
    let port = lb.snat_port(&q, CLIENT_PORT);
    for _ in 0..2 {
        let data = q.from_client(CLIENT_PORT, ACK | PSH);
        let (action, out) = lb.from_client(&data.build());
        assert_eq!(action, Action::Redirect, "{}'s data segment", q.vip_addr());
        assert_eq!(out, to_backend(&q, &data, 0, port).build());
        reply(&mut lb, &q, CLIENT_PORT, ACK);
    }

    lb.remove_service(&q);
    assert_eq!(
        lb.replies(),
        REPLIES_NO_VIP,
        "no VIP in the SNAT range again"
    );
    let data = q.from_client(CLIENT_PORT, ACK | PSH);
    assert_eq!(
        lb.from_client(&data.build()).0,
        Action::Pass,
        "{} is no VIP any more",
        q.vip_addr()
    );
}

fn forward_to(lb: &mut TestRun, p: &Plan, s: &Packet) -> usize {
    let (action, out) = lb.from_client(&s.build());
    assert_eq!(action, Action::Redirect, "client port {}: action", s.sport);
    let dst = decode(&out).unwrap().dst;
    p.backend_index(dst)
        .unwrap_or_else(|| panic!("client port {}: sent to {dst}", s.sport))
}

/// Runs backend 0's reply to the client's flow from `sport`; it must be rewritten toward
/// the client.
fn reply(lb: &mut TestRun, p: &Plan, sport: u16, f: u8) {
    let port = lb.snat_port(p, sport);
    let r = p.from_backend(0, port, f);
    let (action, out) = lb.from_backend(&r.build());
    assert_eq!(action, Action::Redirect, "reply to port {port}: action");
    let got = decode(&out).unwrap();
    assert_eq!((got.src, got.dst), (p.vip, p.client), "reply rewritten");
}

/// [`serving`] the IPv4 plan, with the idle and closed timeouts given.
fn serving4_with_timeouts(idle: &'static str, closed: &'static str) -> (Plan, TestRun) {
    let p = plan4();
    let mut lb = serving(&p);
    lb.set_timeouts(Timeouts {
        idle,
        closed,
        half_open: "5s",
    });
    (p, lb)
}

/// CLOCK_MONOTONIC_COARSE (ns) and its resolution, one tick.
fn coarse_clock() -> (u64, u64) {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut tick = now;
    // SAFETY: both are valid out-parameters.
    let ok = unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) == 0
            && libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut tick) == 0
    };
    assert!(ok, "clock_gettime(CLOCK_MONOTONIC_COARSE)");
    let ns = |t: libc::timespec| t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
    (ns(now), ns(tick))
}

/// The program keeps the coarse clock per CPU and reads it again only in a new tick:
/// a flow's stamp is the coarse clock of its packet, at most a tick behind, on the
/// general path (the SYN, the backend's SYN-ACK) and on the established fast path (the
/// client's ACKs once the flow is in the flow table), and it moves on with the clock.
#[test]
fn flows_are_stamped_with_the_coarse_clock_as_it_moves_on() {
    stay_on_this_cpu();
    let p = plan4();
    let mut lb = serving(&p);
    let key = p.client_key(CLIENT_PORT);
    let mut stamps = Vec::new();
    let mut stamped = |lb: &mut TestRun, what: &str, frame: &[u8], from_client: bool| {
        let (before, tick) = coarse_clock();
        let (action, _) = if from_client {
            lb.from_client(frame)
        } else {
            lb.from_backend(frame)
        };
        let (after, _) = coarse_clock();
        assert_eq!(action, Action::Redirect, "{what}");
        let stamp = lb.flow(key).unwrap().last_seen_ns;
        assert!(
            stamp + tick >= before && stamp <= after,
            "{what}: stamped {stamp}, clock {before}..{after} (tick {tick} ns)"
        );
        stamps.push(stamp);
        sleep(Duration::from_nanos(3 * tick));
    };
    stamped(&mut lb, "SYN", &p.syn().build(), true);
    let port = lb.snat_port(&p, CLIENT_PORT);
    let syn_ack = p.from_backend(0, port, SYN | ACK).build();
    stamped(&mut lb, "SYN-ACK", &syn_ack, false);
    let ack = p.from_client(CLIENT_PORT, ACK).build();
    for _ in 0..6 {
        stamped(&mut lb, "ACK", &ack, true);
    }
    assert!(
        lb.flow_table_entry(key).is_some(),
        "the ACKs went the fast path's way: the flow is established"
    );
    assert!(
        stamps.windows(2).all(|w| w[1] > w[0]),
        "each packet three ticks after the last gets a later stamp: {stamps:?}"
    );
}

/// Within a tick the time comes from this CPU's slot, not the clock: a marker written
/// into the slot (its tick kept) stamps the next packet's flow. A try whose packet comes
/// in the next tick reads the clock again (a stamp no older than the last); one of a
/// few dozen tries stays within its tick.
#[test]
fn within_a_tick_the_time_comes_from_this_cpus_slot() {
    stay_on_this_cpu();
    let p = plan4();
    let (mut lb, _) = established(&p);
    let key = p.client_key(CLIENT_PORT);
    let ack = p.from_client(CLIENT_PORT, ACK).build();
    for _ in 0..50 {
        assert_eq!(lb.from_client(&ack).0, Action::Redirect);
        let stamp = lb.flow(key).unwrap().last_seen_ns;
        let mut slots = lb.clock_slots();
        let cpu = slots
            .iter()
            .position(|c| c.ns == stamp)
            .expect("this CPU's slot holds the packet's time");
        let marker = stamp - 1_000_000_007;
        slots[cpu].ns = marker;
        lb.set_clock_slots(slots);
        assert_eq!(lb.from_client(&ack).0, Action::Redirect);
        let got = lb.flow(key).unwrap().last_seen_ns;
        if got == marker {
            return;
        }
        assert!(
            got >= stamp,
            "a new tick reads the clock again: {got} after {stamp}"
        );
    }
    panic!("in 50 tries no packet took its time from the slot");
}

#[test]
fn idle_flow_expires_and_is_rebalanced() {
    let idle = 200 * MS;
    let (p, mut lb) = serving4_with_timeouts("200ms", "1h");
    let start = Instant::now();
    assert_eq!(forward_to(&mut lb, &p, &p.syn()), 0);
    lb.table_to(&p, 1);
    let ack = p.from_client(CLIENT_PORT, ACK);
    assert_eq!(forward_to(&mut lb, &p, &ack), 0, "within the idle timeout");
    assert!(
        start.elapsed() < idle,
        "test too slow to check the live flow"
    );
    assert_eq!(lb.service_stats(&p).new_flows, 1);

    sleep(idle + 100 * MS);
    assert_eq!(forward_to(&mut lb, &p, &ack), 1, "idle past the timeout");
    assert_eq!(
        u32::from(lb.flow(p.client_key(CLIENT_PORT)).unwrap().backend),
        p.ids[1]
    );
    assert_eq!(lb.service_stats(&p).new_flows, 2);
    assert_eq!(lb.backend_stats(&p, 1).new_flows, 1);
    // The new flow is live again: the next packet stays on backend 1.
    assert_eq!(forward_to(&mut lb, &p, &ack), 1);
    assert_eq!(lb.service_stats(&p).new_flows, 2);
}

#[test]
fn closed_flow_expires_after_the_closed_timeout_but_a_half_closed_one_does_not() {
    let closed = 200 * MS;
    let (p, mut lb) = serving4_with_timeouts("1h", "200ms");
    // (what, client port, flags the flow must end with, whether it expires); every
    // flow was answered by the backend, and acknowledged by the client but the one it
    // resets at once.
    const OPEN: u8 = FLOW_REPLIED | FLOW_ESTABLISHED;
    let cases: [(&str, u16, u8, bool); 5] = [
        (
            "FIN from both sides",
            1001,
            OPEN | FLOW_FIN_CLIENT | FLOW_FIN_BACKEND | FLOW_LAST_ACK,
            true,
        ),
        ("RST from the client", 1002, FLOW_REPLIED | FLOW_RST, true),
        ("RST from the backend", 1003, OPEN | FLOW_RST, true),
        (
            "FIN from the client only",
            1004,
            OPEN | FLOW_FIN_CLIENT,
            false,
        ),
        (
            "FIN from the backend only",
            1005,
            OPEN | FLOW_FIN_BACKEND | FLOW_BACKEND_TIME_WAIT,
            false,
        ),
    ];
    let start = Instant::now();
    for (what, sport, _, _) in cases {
        let syn = p.from_client(sport, SYN);
        assert_eq!(forward_to(&mut lb, &p, &syn), 0, "{what}: SYN");
        reply(&mut lb, &p, sport, SYN | ACK);
        if sport != 1002 {
            assert_eq!(forward_to(&mut lb, &p, &p.from_client(sport, ACK)), 0);
        }
    }
    lb.table_to(&p, 1);
    // FIN from both sides, then the client's last ACK.
    assert_eq!(forward_to(&mut lb, &p, &p.from_client(1001, FIN | ACK)), 0);
    reply(&mut lb, &p, 1001, FIN | ACK);
    assert_eq!(forward_to(&mut lb, &p, &p.from_client(1001, ACK)), 0);
    // RSTs.
    assert_eq!(forward_to(&mut lb, &p, &p.from_client(1002, RST)), 0);
    reply(&mut lb, &p, 1003, RST | ACK);
    // Half closes.
    assert_eq!(forward_to(&mut lb, &p, &p.from_client(1004, FIN | ACK)), 0);
    reply(&mut lb, &p, 1005, FIN | ACK);
    for (what, sport, f, _) in cases {
        let fs = lb.flow(p.client_key(sport)).unwrap();
        assert_eq!(
            (u32::from(fs.backend), fs.flags),
            (p.ids[0], f),
            "{what}: flow entry"
        );
    }
    // Within the closed timeout even a closed flow is kept.
    assert_eq!(forward_to(&mut lb, &p, &p.from_client(1001, ACK)), 0);
    assert!(
        start.elapsed() < closed,
        "test too slow to check live flows"
    );
    assert_eq!(lb.service_stats(&p).new_flows, 5);

    sleep(closed + 100 * MS);
    let mut new_flows = 5;
    for (what, sport, _, expires) in cases {
        let want = usize::from(expires);
        let syn = p.from_client(sport, SYN);
        assert_eq!(forward_to(&mut lb, &p, &syn), want, "{what}: after it");
        new_flows += want as u64;
        assert_eq!(
            lb.service_stats(&p).new_flows,
            new_flows,
            "{what}: new flows"
        );
    }
    assert_eq!(lb.backend_stats(&p, 1).new_flows, 3);
}

#[test]
fn traffic_in_either_direction_keeps_a_flow_past_the_idle_timeout() {
    let idle = 300 * MS;
    let step = 100 * MS;
    let (p, mut lb) = serving4_with_timeouts("300ms", "1h");
    let k = p.client_key(CLIENT_PORT);
    assert_eq!(forward_to(&mut lb, &p, &p.syn()), 0);
    lb.table_to(&p, 1);
    let ack = p.from_client(CLIENT_PORT, ACK);
    let mut last = Instant::now();
    let mut check_gap = |what: &str| {
        let gap = last.elapsed();
        assert!(gap < idle, "{what}: {gap:?} between packets, test stalled");
        last = Instant::now();
    };

    // Client packets only, for three idle timeouts.
    let start = Instant::now();
    while start.elapsed() < 3 * idle {
        sleep(step);
        check_gap("client packets");
        assert_eq!(forward_to(&mut lb, &p, &ack), 0, "client packets keep it");
    }
    // Backend replies only, for three idle timeouts: each one refreshes the flow.
    let start = Instant::now();
    while start.elapsed() < 3 * idle {
        sleep(step);
        check_gap("backend replies");
        let before = lb.flow(k).unwrap().last_seen_ns;
        reply(&mut lb, &p, CLIENT_PORT, ACK);
        let after = lb.flow(k).unwrap().last_seen_ns;
        assert!(
            after > before,
            "reply refreshes last_seen ({before} → {after})"
        );
    }
    sleep(step);
    check_gap("last client packet");
    assert_eq!(forward_to(&mut lb, &p, &ack), 0, "replies kept the flow");
    assert_eq!(lb.service_stats(&p).new_flows, 1);

    // And the timeout was live all along: silence past it moves the flow.
    sleep(idle + step);
    assert_eq!(forward_to(&mut lb, &p, &ack), 1);
    assert_eq!(lb.service_stats(&p).new_flows, 2);
}

#[test]
fn proxy_service_packets_go_to_the_stack_untouched_and_are_counted() {
    let mut lb = TestRun::new();
    for p in [plan4(), plan6()] {
        lb.proxy_service(&p);
        // To the local stack.
        let all = [SYN, ACK, FIN | ACK, RST];
        left_untouched(&mut lb, &p, &all, Action::Pass, counter::PASS_PROXY);
        assert_eq!(
            lb.service_stats(&p).packets_in,
            4,
            "{}: service packets",
            p.vip
        );
        assert!(lb.flow(p.client_key(CLIENT_PORT)).is_none(), "no NAT flow");
    }
    assert_eq!(lb.counter(counter::PASS_PROXY), 8);
}

// Log records of rare events

/// Collects the program's log records (read with aya-log, as the daemon does); it is also
/// the process's `log` logger, so the program is loaded with every level enabled.
struct Records(std::sync::Mutex<Vec<(log::Level, String, String)>>);

impl log::Log for Records {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        // Only the program's records: other code of the process may log too.
        if r.target().starts_with("lb_ebpf") {
            let rec = (r.level(), r.target().to_string(), r.args().to_string());
            self.0.lock().unwrap().push(rec);
        }
    }

    fn flush(&self) {}
}

#[test]
fn a_rare_drop_writes_one_log_record_a_second_and_a_forwarded_packet_none() {
    let records: &'static Records = Box::leak(Box::new(Records(Default::default())));
    log::set_logger(records).expect("the only logger of this test binary");
    log::set_max_level(log::LevelFilter::Trace);
    let take = |logger: &mut aya_log::EbpfLogger<&Records>| {
        logger.flush();
        std::mem::take(&mut *records.0.lock().unwrap())
    };

    let p = plan4();
    let mut lb = serving(&p);
    let mut logger =
        aya_log::EbpfLogger::init_with_logger(lb.ebpf_mut(), records).expect("log map");
    let (action, _) = lb.from_client(&p.syn().build());
    assert_eq!(action, Action::Redirect);
    assert_eq!(take(&mut logger), [], "forwarded: nothing logged");

    let plan = p.with_backends_at([198, 19, 5, 5].into());
    let mut lb = serving(&plan);
    let mut logger =
        aya_log::EbpfLogger::init_with_logger(lb.ebpf_mut(), records).expect("log map");
    // One CPU: the limit of one record a second is per CPU.
    stay_on_this_cpu();
    let (action, _) = lb.from_client(&plan.syn().build());
    assert_eq!(action, Action::Drop);
    assert_eq!(
        take(&mut logger),
        [(
            log::Level::Warn,
            "lb_ebpf::events".to_string(),
            "packet dropped: no route toward the next hop".to_string()
        )]
    );

    // The failure lasts: every packet is still dropped and counted, but within the second
    // no further record is written (a line per packet would flood the daemon's log).
    let before = lb.counter(counter::DROP_NO_ROUTE);
    for sport in 1..=20 {
        let (action, _) = lb.from_client(&plan.from_client(CLIENT_PORT + sport, SYN).build());
        assert_eq!(action, Action::Drop);
    }
    assert_eq!(lb.counter(counter::DROP_NO_ROUTE), before + 20);
    assert_eq!(take(&mut logger), [], "at most one record a second");
}

/// A service's allowlist, as the program applies it: a listed source's SYN opens its
/// flow as usual; an unlisted one's is dropped (counted as denied) or, with
/// `ACCESS_RESET`, answered with a RST, and leaves no flow behind. Both families.
#[test]
fn an_unlisted_source_is_refused_before_any_state() {
    use lb_common::maps::{ACCESS_LIST, ACCESS_RESET};
    for p in [plan4(), plan6()] {
        let (listed, other): (&str, IpAddr) = if p.vip.is_ipv4() {
            ("198.18.1.0/24", [198, 18, 3, 7].into())
        } else {
            ("fd00:1::/64", "fd00:3::7".parse().unwrap())
        };
        let mut lb = serving(&p);
        lb.allow(&p, &[listed], ACCESS_LIST);
        assert_eq!(forward_to(&mut lb, &p, &p.syn()), 0, "{listed} is listed");

        let stranger = Packet {
            src: other,
            ..p.syn()
        };
        let (action, _, bumped) = lb.run_counted(&stranger.build());
        assert_eq!(action, Action::Drop, "{other}");
        assert_eq!(bumped, [counter::DROP_DENIED], "{other}");
        let k = key(other, p.vip, CLIENT_PORT, VIP_PORT);
        assert!(lb.flow(k).is_none() && lb.half_open(k).is_none(), "{other}");

        lb.allow(&p, &[listed], ACCESS_LIST | ACCESS_RESET);
        let (action, out, bumped) = lb.run_counted(&stranger.build());
        assert_eq!(action, Action::Tx, "{other}: answered");
        assert_eq!(bumped, [counter::DROP_DENIED], "{other}");
        let rst = decode(&out).expect("a RST");
        assert_eq!((rst.dst, rst.flags & RST), (other, RST), "{rst:?}");
        assert!(lb.flow(k).is_none() && lb.half_open(k).is_none(), "{other}");
    }
}
