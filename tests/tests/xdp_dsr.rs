//! Packet-level tests of the `lb_xdp` program's direct server return and DNAT paths with
//! BPF_PROG_TEST_RUN (the kit's [`TestRun`]): the encapsulations byte for byte against
//! the kit's own builder (`lb_tests::encap`), the flow table without replies, the
//! ICMP answer to a packet too big for the path once encapsulated, and DNAT both ways.
//!
//! Needs root and a kernel with BPF_PROG_TEST_RUN for XDP: without either the tests fail
//! (never skip) and say what is missing.

use lb_common::encap::{
    DEFAULT_GUE_PORT, ENCAP_GUE, ENCAP_IPIP, ENCAP_L2, flow_label, gue_source_port,
};
use lb_common::hash::flow_hash;
use lb_common::maps::{FLOW_ESTABLISHED, FlowKey};
use lb_tests::encap::Outer;
use lb_tests::packet::{Packet, flags::*, inet_checksum};
use lb_tests::test_run::{
    Action, BACKEND_MACS, BACKEND_PORT, CLIENT_MAC, CLIENT_PORT, LB0_MAC, LB1_MAC, Plan, TestRun,
    VIP_PORT, counter, plan4, plan6,
};

/// The outer headers toward backend `i` for the client's connection from `sport`.
fn outer(p: &Plan, kind: u8, gue_port: u16, i: usize, sport: u16) -> Outer {
    let hash = flow_hash(&p.client_key(sport));
    Outer {
        kind,
        eth_dst: BACKEND_MACS[i],
        eth_src: LB0_MAC,
        src: p.snat,
        dst: p.backends[i],
        udp_ports: (gue_source_port(hash), gue_port),
        flow_label: flow_label(hash),
    }
}

#[test]
fn dsr_sends_the_client_packet_unchanged_inside_the_encapsulation() {
    for p in [plan4(), plan6()] {
        for (kind, port) in [
            (ENCAP_IPIP, 0),
            (ENCAP_GUE, DEFAULT_GUE_PORT),
            (ENCAP_GUE, 7001),
        ] {
            let what = format!("{} encap {kind} port {port}", p.vip);
            let mut lb = TestRun::new();
            lb.dsr_service(&p, kind, port, 0);
            let syn = p.syn().build();
            let (action, out) = lb.from_client(&syn);
            assert_eq!(action, Action::Redirect, "{what}: action");
            let want = outer(&p, kind, port, 0, CLIENT_PORT).wrap(&syn);
            assert_eq!(out, want, "{what}: output frame");
            let k = p.client_key(CLIENT_PORT);
            let half = lb
                .half_open(k)
                .unwrap_or_else(|| panic!("{what}: no half-open flow"));
            assert_eq!(u32::from(half.backend), p.ids[0], "{what}: backend");
            assert_eq!(half.snat_port, 0, "{what}: a DSR flow owns no SNAT port");

            // The client's ACK is all the LB sees of the handshake: it establishes the flow.
            let ack = p.from_client(CLIENT_PORT, ACK).build();
            let (action, out) = lb.from_client(&ack);
            assert_eq!(action, Action::Redirect, "{what}: ACK action");
            assert_eq!(
                out,
                outer(&p, kind, port, 0, CLIENT_PORT).wrap(&ack),
                "{what}: ACK"
            );
            let flow = lb.flow(k).unwrap_or_else(|| panic!("{what}: no flow"));
            assert_ne!(flow.flags & FLOW_ESTABLISHED, 0, "{what}: established");
            assert_eq!(lb.counter(counter::FWD_IN), 2, "{what}: forwarded in");
            assert_eq!(lb.counter(counter::FWD_OUT), 0, "{what}: nothing goes out");
            let s = lb.backend_stats(&p, 0);
            assert_eq!(
                (s.new_flows, s.packets_in, s.packets_out),
                (1, 2, 0),
                "{what}: backend stats"
            );
        }
    }
}

#[test]
fn dsr_l2_changes_only_the_mac_addresses() {
    for p in [plan4(), plan6()] {
        for vlan in [None, Some(42)] {
            let mut lb = TestRun::new();
            lb.dsr_service(&p, ENCAP_L2, 0, 1);
            let syn = Packet { vlan, ..p.syn() };
            let (action, out) = lb.from_client(&syn.build());
            assert_eq!(action, Action::Redirect, "{} {vlan:?}", p.vip);
            let want = Packet {
                eth_dst: BACKEND_MACS[1],
                eth_src: LB0_MAC,
                ..syn.clone()
            };
            assert_eq!(
                out,
                want.build(),
                "{} {vlan:?}: only the MACs change",
                p.vip
            );
        }
    }
}

#[test]
fn a_vlan_tagged_packet_keeps_its_tag_in_front_of_the_outer_header() {
    let p = plan4();
    let mut lb = TestRun::new();
    lb.dsr_service(&p, ENCAP_IPIP, 0, 0);
    let syn = Packet {
        vlan: Some(42),
        ..p.syn()
    };
    let (action, out) = lb.from_client(&syn.build());
    assert_eq!(action, Action::Redirect);
    let untagged = p.syn().build();
    let mut want = outer(&p, ENCAP_IPIP, 0, 0, CLIENT_PORT).wrap(&untagged);
    want.splice(12..12, [0x81, 0x00, 0, 42]);
    assert_eq!(out, want);
}

/// A flow the table does not know (evicted, or crossing another LB host before) goes to
/// the backend Maglev picks, SYN or not, and is picked up as established.
#[test]
fn a_segment_of_an_unknown_flow_goes_where_maglev_says() {
    for p in [plan4(), plan6()] {
        let mut lb = TestRun::new();
        lb.dsr_service(&p, ENCAP_IPIP, 0, 1);
        let data = p.from_client(CLIENT_PORT, ACK | PSH).build();
        let (action, out) = lb.from_client(&data);
        assert_eq!(action, Action::Redirect, "{}", p.vip);
        assert_eq!(out, outer(&p, ENCAP_IPIP, 0, 1, CLIENT_PORT).wrap(&data));
        let flow = lb.flow(p.client_key(CLIENT_PORT)).expect("flow picked up");
        assert_eq!(u32::from(flow.backend), p.ids[1]);
        assert_ne!(flow.flags & FLOW_ESTABLISHED, 0);

        // The table changes; the known flow stays where it is, a new one follows it.
        lb.table_to_dsr(&p, ENCAP_IPIP, 0, 0);
        let (_, out) = lb.from_client(&data);
        assert_eq!(out, outer(&p, ENCAP_IPIP, 0, 1, CLIENT_PORT).wrap(&data));
        let other = p.from_client(CLIENT_PORT + 1, ACK).build();
        let (_, out) = lb.from_client(&other);
        assert_eq!(
            out,
            outer(&p, ENCAP_IPIP, 0, 0, CLIENT_PORT + 1).wrap(&other)
        );
    }
}

#[test]
fn a_client_fin_closes_a_dsr_flow() {
    let p = plan4();
    let mut lb = TestRun::new();
    lb.dsr_service(&p, ENCAP_GUE, DEFAULT_GUE_PORT, 0);
    lb.from_client(&p.syn().build());
    lb.from_client(&p.from_client(CLIENT_PORT, ACK).build());
    lb.from_client(&p.from_client(CLIENT_PORT, FIN | ACK).build());
    let flow = lb.flow(p.client_key(CLIENT_PORT)).expect("flow");
    assert!(
        lb_common::flow::closed(flow.flags),
        "flags {:#x}: closed",
        flow.flags
    );
}

/// The client's packet once encapsulated is over the backend side's MTU (1500): the
/// client is told the MTU left, in an ICMP message quoting its packet, sent back where
/// it came from; nothing goes to the backend.
#[test]
fn a_packet_too_big_once_encapsulated_is_answered_with_the_mtu_left() {
    for p in [plan4(), plan6()] {
        for (kind, overhead) in [(ENCAP_IPIP, 20), (ENCAP_GUE, 32)] {
            let overhead = if p.vip.is_ipv4() {
                overhead
            } else {
                overhead + 20
            };
            let mut lb = TestRun::new();
            lb.dsr_service(&p, kind, DEFAULT_GUE_PORT, 0);
            let mut big = p.from_client(CLIENT_PORT, ACK);
            let headers = big.build().len() - 14 - big.payload.len();
            big.payload = vec![0x5a; 1500 - headers];
            let frame = big.build();
            assert_eq!(frame.len(), 1514);
            let (action, out, bumped) = lb.run_counted(&frame);
            let what = format!("{} encap {kind}", p.vip);
            assert_eq!(
                action,
                Action::Tx,
                "{what}: answered where it came from ({bumped:?})"
            );
            assert_eq!(bumped, vec![counter::DROP_TOO_BIG], "{what}: counters");
            assert_eq!(&out[..6], &CLIENT_MAC, "{what}: to the client's MAC");
            assert_eq!(&out[6..12], &LB1_MAC, "{what}: from the LB's");
            let ip = &out[14..];
            let mtu = 1500 - overhead;
            if p.vip.is_ipv4() {
                assert_eq!(ip.len(), 20 + 8 + 28, "{what}: length");
                assert_eq!(inet_checksum(&ip[..20]), 0, "{what}: IP checksum");
                assert_eq!(
                    (ip[9], &ip[12..16], &ip[16..20]),
                    (1, &frame[30..34], &frame[26..30])
                );
                let icmp = &ip[20..];
                assert_eq!((icmp[0], icmp[1]), (3, 4), "{what}: fragmentation needed");
                assert_eq!(
                    u16::from_be_bytes([icmp[6], icmp[7]]),
                    mtu as u16,
                    "{what}: MTU"
                );
                assert_eq!(&icmp[8..], &frame[14..14 + 28], "{what}: quote");
                assert_eq!(inet_checksum(icmp), 0, "{what}: ICMP checksum");
            } else {
                assert_eq!(ip.len(), 40 + 8 + 48, "{what}: length");
                assert_eq!(
                    (ip[6], &ip[8..24], &ip[24..40]),
                    (58, &frame[38..54], &frame[22..38])
                );
                let icmp = &ip[40..];
                assert_eq!((icmp[0], icmp[1]), (2, 0), "{what}: packet too big");
                assert_eq!(
                    u32::from_be_bytes(icmp[4..8].try_into().unwrap()),
                    mtu,
                    "{what}"
                );
                assert_eq!(&icmp[8..], &frame[14..14 + 48], "{what}: quote");
                let mut sum = Vec::new();
                sum.extend(&ip[8..40]);
                sum.extend((icmp.len() as u32).to_be_bytes());
                sum.extend([0, 0, 0, 58]);
                sum.extend(icmp);
                assert_eq!(inet_checksum(&sum), 0, "{what}: ICMPv6 checksum");
            }
            // One byte less fits.
            big.payload.truncate(big.payload.len() - overhead as usize);
            let (action, _) = lb.from_client(&big.build());
            assert_eq!(action, Action::Redirect, "{what}: a packet that fits");
        }
    }
}

/// DNAT: only the destination changes on the way in; the backend's reply, to the
/// client's own address and port, gets the VIP back as its source on the way out.
#[test]
fn dnat_rewrites_the_destination_and_the_reply_source() {
    for p in [plan4(), plan6()] {
        let mut lb = TestRun::new();
        lb.dnat_service(&p, 0);
        let syn = p.syn();
        let (action, out) = lb.from_client(&syn.build());
        assert_eq!(action, Action::Redirect, "{}", p.vip);
        let want = Packet {
            eth_dst: BACKEND_MACS[0],
            eth_src: LB0_MAC,
            dst: p.backends[0],
            dport: BACKEND_PORT,
            ttl: syn.ttl - 1,
            ..syn.clone()
        };
        assert_eq!(out, want.build(), "{}: to the backend, source kept", p.vip);
        let k = p.client_key(CLIENT_PORT);
        let r = lb
            .reverse(reply_key(&p, 0))
            .expect("reverse entry of the backend's replies");
        assert_eq!((r.flow, r.backend), (k, p.ids[0] as u16));

        let reply = Packet {
            eth_dst: LB0_MAC,
            eth_src: BACKEND_MACS[0],
            src: p.backends[0],
            dst: p.client,
            sport: BACKEND_PORT,
            dport: CLIENT_PORT,
            ..p.from_client(CLIENT_PORT, SYN | ACK)
        };
        let (action, out) = lb.from_backend(&reply.build());
        assert_eq!(action, Action::Redirect, "{}: reply", p.vip);
        let back = Packet {
            eth_dst: CLIENT_MAC,
            eth_src: LB1_MAC,
            src: p.vip,
            sport: VIP_PORT,
            ttl: reply.ttl - 1,
            ..reply.clone()
        };
        assert_eq!(out, back.build(), "{}: reply to the client", p.vip);
        assert_eq!(lb.counter(counter::FWD_OUT), 1);
    }
}

/// The key of backend `i`'s replies to the client's connection.
fn reply_key(p: &Plan, i: usize) -> FlowKey {
    lb_tests::test_run::key(p.backends[i], p.client, BACKEND_PORT, CLIENT_PORT)
}

/// An ICMP error from the client about its connection from `sport` (it quotes what the
/// VIP sent it): IPv4 "fragmentation needed" or ICMPv6 "packet too big", MTU 1400.
fn icmp_about(p: &Plan, sport: u16, icmp_type: u8) -> Vec<u8> {
    let quoted = Packet::tcp(p.vip, VIP_PORT, p.client, sport, ACK).build();
    let v4 = p.vip.is_ipv4();
    let quote = &quoted[14..14 + if v4 { 28 } else { 48 }];
    let mut icmp = vec![icmp_type, if v4 { 4 } else { 0 }, 0, 0, 0, 0, 0x05, 0x78];
    icmp.extend(quote);
    let c = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend(LB1_MAC);
    f.extend(CLIENT_MAC);
    match (p.client, p.vip) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            f.extend([0x08, 0x00, 0x45, 0]);
            f.extend(((20 + icmp.len()) as u16).to_be_bytes());
            f.extend([0, 0, 0, 0, 64, 1, 0, 0]);
            f.extend(s.octets());
            f.extend(d.octets());
            let c = lb_tests::packet::ipv4_checksum(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            f.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend((icmp.len() as u16).to_be_bytes());
            f.extend([58, 64]);
            f.extend(s.octets());
            f.extend(d.octets());
        }
        _ => unreachable!("one family per plan"),
    }
    f.extend(icmp);
    f
}

#[test]
fn an_icmp_error_about_a_dsr_flow_goes_to_the_backend_that_owns_it() {
    for p in [plan4(), plan6()] {
        let error = if p.vip.is_ipv4() { 3 } else { 2 };
        let mut lb = TestRun::new();
        lb.dsr_service(&p, ENCAP_GUE, DEFAULT_GUE_PORT, 1);
        lb.from_client(&p.syn().build());
        // The table moves; the flow stays on backend 1, and so do its ICMP errors.
        lb.table_to_dsr(&p, ENCAP_GUE, DEFAULT_GUE_PORT, 0);
        let icmp = icmp_about(&p, CLIENT_PORT, error);
        let (action, out, bumped) = lb.run_counted(&icmp);
        assert_eq!(action, Action::Redirect, "{}", p.vip);
        assert_eq!(bumped, vec![counter::FWD_ICMP], "{}", p.vip);
        let gue = DEFAULT_GUE_PORT;
        assert_eq!(out, outer(&p, ENCAP_GUE, gue, 1, CLIENT_PORT).wrap(&icmp));
        // No flow: where Maglev sends the flow's packets.
        let icmp = icmp_about(&p, CLIENT_PORT + 7, error);
        let (_, out) = lb.from_client(&icmp);
        assert_eq!(
            out,
            outer(&p, ENCAP_GUE, gue, 0, CLIENT_PORT + 7).wrap(&icmp)
        );
        // Not an error (an echo request), or about no VIP: the kernel's.
        let echo = icmp_about(&p, CLIENT_PORT, if p.vip.is_ipv4() { 8 } else { 128 });
        assert_eq!(lb.from_client(&echo).0, Action::Pass, "{}: echo", p.vip);
        let other = Plan {
            vip: p.backends[0],
            ..p
        };
        let stray = icmp_about(&other, CLIENT_PORT, error);
        assert_eq!(
            lb.from_client(&stray).0,
            Action::Pass,
            "{}: not a VIP",
            p.vip
        );
    }
}
