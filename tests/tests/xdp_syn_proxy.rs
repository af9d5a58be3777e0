//! The SYN proxy segment by segment, through the `lb_xdp` program with
//! BPF_PROG_TEST_RUN (the kit's [`TestRun`]), `syn_cookies = "always"`: the cookie
//! SYN-ACK and the options it carries, the cookie ACK turned into the client's SYN toward
//! the backend, the backend's SYN-ACK turned into the client's window update, and the
//! translation of every later segment both ways (sequence and acknowledgment numbers,
//! SACK blocks, timestamps, windows), with checksums the decoder checks.
//!
//! Needs root and a kernel with BPF_PROG_TEST_RUN for XDP: without either the tests fail
//! (never skip) and say what is missing.

use lb_common::counters;
use lb_common::hash::flow_hash;
use lb_common::maps::FLOW_CLOSED;
use lb_common::snat_probe::{PROBES, Search};
use lb_common::syn_proxy::{ClientOptions, LB_WSCALE, TS_OPTION_BITS};
use lb_common::tcp::{
    OPT_MSS, OPT_SACK, OPT_SACK_OK, OPT_TIMESTAMPS as OPT_TS, OPT_WSCALE, TIMESTAMPS_LEN,
};
use lb_tests::packet::{Packet, decode, flags::*};
use lb_tests::test_run::{
    Action, CLIENT_PORT, Plan, SEQ, SNAT_MAX, SNAT_MIN, TestRun, plan4, plan6,
};

/// The backend's ISN and TSval clock in these tests.
const BACKEND_ISN: u32 = 0x5000_0000;
const BACKEND_TS: u32 = 50_000;

/// The options a test segment carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Opts {
    mss: Option<u16>,
    sack_ok: bool,
    ts: Option<(u32, u32)>,
    wscale: Option<u8>,
    sack: Vec<(u32, u32)>,
}

impl Opts {
    /// As Linux lays them out: MSS, SACK permitted + timestamps (or NOPs), NOP + window
    /// scale, then NOP, NOP + SACK blocks.
    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        if let Some(m) = self.mss {
            b.extend([OPT_MSS, 4]);
            b.extend(m.to_be_bytes());
        }
        if self.sack_ok {
            b.extend([OPT_SACK_OK, 2]);
        }
        if let Some((val, ecr)) = self.ts {
            if !self.sack_ok {
                b.extend([1, 1]);
            }
            b.extend([OPT_TS, TIMESTAMPS_LEN]);
            b.extend(val.to_be_bytes());
            b.extend(ecr.to_be_bytes());
        }
        if let Some(w) = self.wscale {
            b.extend([1, OPT_WSCALE, 3, w]);
        }
        if !self.sack.is_empty() {
            b.extend([1, 1, OPT_SACK, 2 + 8 * self.sack.len() as u8]);
            for (l, r) in &self.sack {
                b.extend(l.to_be_bytes());
                b.extend(r.to_be_bytes());
            }
        }
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    fn parse(b: &[u8]) -> Opts {
        let mut o = Opts::default();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                0 => break,
                1 => i += 1,
                kind => {
                    let len = b[i + 1] as usize;
                    let v = &b[i + 2..i + len];
                    let u32_at = |k: usize| u32::from_be_bytes(v[k..k + 4].try_into().unwrap());
                    match kind {
                        OPT_MSS => o.mss = Some(u16::from_be_bytes([v[0], v[1]])),
                        OPT_SACK_OK => o.sack_ok = true,
                        OPT_TS => o.ts = Some((u32_at(0), u32_at(4))),
                        OPT_WSCALE => o.wscale = Some(v[0]),
                        OPT_SACK => {
                            o.sack = (0..v.len() / 8)
                                .map(|k| (u32_at(8 * k), u32_at(8 * k + 4)))
                                .collect()
                        }
                        other => panic!("unexpected option {other}"),
                    }
                    i += len;
                }
            }
        }
        o
    }
}

fn with_opts(mut s: Packet, o: &Opts) -> Packet {
    s.tcp_options = o.bytes();
    s
}

fn proxy(p: &Plan) -> TestRun {
    let mut lb = TestRun::new();
    lb.two_backends_up(p, 0);
    lb.set_syn_cookies("always");
    lb
}

/// The client's SYN from `sport` with Linux's options (TSval 1000).
fn client_syn(p: &Plan, sport: u16) -> Packet {
    let mut s = p.from_client(sport, SYN);
    s.payload.clear();
    with_opts(
        s,
        &Opts {
            mss: Some(1460),
            sack_ok: true,
            ts: Some((1000, 0)),
            wscale: Some(7),
            ..Opts::default()
        },
    )
}

/// Sends the client's SYN from `sport`; checks the cookie SYN-ACK; returns it.
fn cookie_synack(lb: &mut TestRun, p: &Plan, sport: u16) -> Packet {
    let (action, out) = lb.from_client(&client_syn(p, sport).build());
    assert_eq!(
        action,
        Action::Tx,
        "the SYN-ACK goes back out of the client's side"
    );
    let a = decode(&out).expect("a well-formed SYN-ACK with valid checksums");
    assert_eq!(
        (a.src, a.dst, a.sport, a.dport),
        (p.vip, p.client, 80, sport)
    );
    assert_eq!(a.flags, SYN | ACK);
    assert_eq!(a.ack, SEQ + 1);
    assert_eq!(
        a.window, 0,
        "the client is held until the backend's leg is open"
    );
    assert!(a.payload.is_empty());
    let o = Opts::parse(&a.tcp_options);
    let lb_mss = if p.vip.is_ipv4() { 1460 } else { 1440 };
    assert_eq!(o.mss, Some(lb_mss));
    assert_eq!(o.wscale, Some(LB_WSCALE));
    assert!(o.sack_ok);
    let (tsval, tsecr) = o.ts.expect("timestamps");
    assert_eq!(tsecr, 1000);
    let carried = ClientOptions::decode(tsval);
    assert_eq!(
        (carried.wscale(), carried.sack, carried.mss(p.family())),
        (Some(7), true, if p.vip.is_ipv4() { 1460 } else { 1440 }),
        "the TSval's low {TS_OPTION_BITS} bits carry the client's options"
    );
    a
}

/// The client's segment from `sport` acknowledging `synack` (TSval `tsval`), no payload.
fn client_ack(p: &Plan, sport: u16, synack: &Packet, tsval: u32) -> Packet {
    let mut s = p.from_client(sport, ACK);
    s.seq = SEQ + 1;
    s.ack = synack.seq.wrapping_add(1);
    s.payload.clear();
    s.window = 502;
    let ecr = Opts::parse(&synack.tcp_options).ts.unwrap().0;
    with_opts(
        s,
        &Opts {
            ts: Some((tsval, ecr)),
            ..Opts::default()
        },
    )
}

trait Family {
    fn family(&self) -> u8;
}

impl Family for Plan {
    fn family(&self) -> u8 {
        if self.vip.is_ipv4() {
            lb_common::maps::FAMILY_V4
        } else {
            lb_common::maps::FAMILY_V6
        }
    }
}

fn whole_exchange(p: &Plan) {
    let mut lb = proxy(p);
    let synack = cookie_synack(&mut lb, p, CLIENT_PORT);
    let cookie = synack.seq;
    let lb_tsval = Opts::parse(&synack.tcp_options).ts.unwrap().0;
    assert_eq!(lb.counter(counters::SYN_COOKIE_SENT), 1);
    assert!(
        lb.flow(p.client_key(CLIENT_PORT)).is_none(),
        "a cookie keeps no state"
    );

    // A forged ACK (wrong cookie) from another port is dropped.
    let mut forged = client_ack(p, CLIENT_PORT + 1, &synack, 1001);
    forged.ack = cookie.wrapping_add(2);
    assert_eq!(lb.from_client(&forged.build()).0, Action::Drop);
    assert_eq!(lb.counter(counters::DROP_SYN_COOKIE_INVALID), 1);

    // The cookie ACK becomes the client's SYN toward the backend.
    let (action, out) = lb.from_client(&client_ack(p, CLIENT_PORT, &synack, 1001).build());
    assert_eq!(action, Action::Redirect);
    let syn = decode(&out).expect("a well-formed SYN");
    assert_eq!((syn.dst, syn.dport), (p.backends[0], 8080));
    assert_eq!(syn.src, p.snat);
    assert_eq!((syn.flags, syn.seq, syn.ack), (SYN, SEQ, 0));
    assert_eq!(
        syn.window,
        502 << 7,
        "the client's window in bytes (unscaled in a SYN)"
    );
    let o = Opts::parse(&syn.tcp_options);
    assert_eq!(
        (o.mss, o.sack_ok, o.ts, o.wscale),
        (
            Some(if p.vip.is_ipv4() { 1460 } else { 1440 }),
            true,
            Some((1001, 0)),
            Some(7)
        ),
        "the client's own options"
    );
    assert_eq!(lb.counter(counters::SYN_COOKIE_VALID), 1);
    let snat_port = syn.sport;

    // The backend's SYN-ACK becomes the client's window update.
    let mut sa = p.from_backend(0, snat_port, SYN | ACK);
    sa.seq = BACKEND_ISN;
    sa.ack = SEQ + 1;
    sa.window = 65535;
    sa.payload.clear();
    let sa = with_opts(
        sa,
        &Opts {
            mss: Some(1460),
            sack_ok: true,
            ts: Some((BACKEND_TS, 1001)),
            wscale: Some(9),
            ..Opts::default()
        },
    );
    let (action, out) = lb.from_backend(&sa.build());
    assert_eq!(action, Action::Redirect);
    let up = decode(&out).expect("a well-formed window update");
    assert_eq!(
        (up.src, up.dst, up.sport, up.dport),
        (p.vip, p.client, 80, CLIENT_PORT)
    );
    assert_eq!(
        (up.flags, up.seq, up.ack),
        (ACK, cookie.wrapping_add(1), SEQ + 1)
    );
    assert_eq!(
        up.window,
        65535 >> LB_WSCALE,
        "the SYN-ACK's bytes at the client's scale"
    );
    assert_eq!(
        Opts::parse(&up.tcp_options).ts,
        Some((lb_tsval, 1001)),
        "the backend's clock starts where the client's view of it is"
    );

    // Client data with a SACK block: acknowledgment, SACK and TSecr into the backend's
    // spaces.
    let mut data = p.from_client(CLIENT_PORT, ACK | PSH);
    data.seq = SEQ + 1;
    data.ack = cookie.wrapping_add(1);
    let data = with_opts(
        data,
        &Opts {
            ts: Some((1002, lb_tsval)),
            sack: vec![(cookie.wrapping_add(100), cookie.wrapping_add(200))],
            ..Opts::default()
        },
    );
    let (action, out) = lb.from_client(&data.build());
    assert_eq!(action, Action::Redirect);
    let d = decode(&out).expect("well-formed client data");
    assert_eq!((d.seq, d.ack), (SEQ + 1, BACKEND_ISN + 1));
    assert_eq!(d.payload, data.payload);
    let o = Opts::parse(&d.tcp_options);
    assert_eq!(o.ts, Some((1002, BACKEND_TS)));
    assert_eq!(o.sack, vec![(BACKEND_ISN + 100, BACKEND_ISN + 200)]);

    // Backend data: sequence number, TSval and window into the client's view.
    let mut reply = p.from_backend(0, snat_port, ACK | PSH);
    reply.seq = BACKEND_ISN + 1;
    reply.ack = SEQ + 1 + data.payload.len() as u32;
    reply.window = 100;
    let reply = with_opts(
        reply,
        &Opts {
            ts: Some((BACKEND_TS + 10, 1002)),
            ..Opts::default()
        },
    );
    let (action, out) = lb.from_backend(&reply.build());
    assert_eq!(action, Action::Redirect);
    let r = decode(&out).expect("well-formed backend data");
    assert_eq!((r.seq, r.ack), (cookie.wrapping_add(1), reply.ack));
    assert_eq!(r.window, 100 << 9 >> LB_WSCALE);
    assert_eq!(Opts::parse(&r.tcp_options).ts, Some((lb_tsval + 10, 1002)));
    assert_eq!(r.payload, reply.payload);

    // A repeated SYN-ACK is acknowledged to the backend by the LB itself.
    let (action, out) = lb.from_backend(&sa.build());
    assert_eq!(action, Action::Tx);
    let a = decode(&out).expect("a well-formed ACK");
    assert_eq!(
        (a.src, a.dst, a.sport, a.dport),
        (p.snat, p.backends[0], snat_port, 8080)
    );
    assert_eq!((a.flags, a.seq, a.ack), (ACK, SEQ + 1, BACKEND_ISN + 1));
    assert_eq!(Opts::parse(&a.tcp_options).ts, Some((1001, BACKEND_TS)));
    assert_eq!(lb.counter(counters::SYN_PROXY_BACKEND_ACK), 1);
}

#[test]
fn a_proxied_flow_is_translated_segment_by_segment_v4() {
    whole_exchange(&plan4());
}

#[test]
fn a_proxied_flow_is_translated_segment_by_segment_v6() {
    whole_exchange(&plan6());
}

/// The client's ACK was lost: its zero-window probe (sequence number = its ISN)
/// acknowledging the cookie opens the flow instead.
#[test]
fn a_zero_window_probe_opens_the_flow_of_a_lost_cookie_ack() {
    let p = plan4();
    let mut lb = proxy(&p);
    let synack = cookie_synack(&mut lb, &p, CLIENT_PORT);
    let mut probe = client_ack(&p, CLIENT_PORT, &synack, 1300);
    probe.seq = SEQ;
    let (action, out) = lb.from_client(&probe.build());
    assert_eq!(action, Action::Redirect);
    let syn = decode(&out).expect("a well-formed SYN");
    assert_eq!((syn.flags, syn.seq), (SYN, SEQ));
    assert_eq!(lb.counter(counters::SYN_COOKIE_VALID), 1);
    assert_eq!(lb.counter(counters::DROP_SYN_COOKIE_INVALID), 0);
}

/// The backend still holds an older connection on the SNAT port the cookie's flow got
/// and answers the client's SYN with that one's ACK: the LB resets the old connection
/// (a RST to the backend, `seq` = that ACK's acknowledgment), and the client's next
/// segment brings the SYN again on the same port.
#[test]
fn a_backends_stale_ack_to_the_proxied_syn_is_reset_and_the_syn_sent_again() {
    for p in [plan4(), plan6()] {
        let mut lb = proxy(&p);
        let synack = cookie_synack(&mut lb, &p, CLIENT_PORT);
        let (action, out) = lb.from_client(&client_ack(&p, CLIENT_PORT, &synack, 1001).build());
        assert_eq!(action, Action::Redirect);
        let syn = decode(&out).expect("a well-formed SYN");
        let mut stale = p.from_backend(0, syn.sport, ACK);
        stale.seq = BACKEND_ISN;
        stale.ack = 0x7000_0000; // the old connection's, not the client's ISN + 1
        stale.payload.clear();
        let (action, out) = lb.from_backend(&stale.build());
        assert_eq!(action, Action::Tx, "answered to the backend");
        let rst = decode(&out).expect("a well-formed RST");
        assert_eq!(
            (rst.src, rst.sport, rst.dst, rst.dport),
            (stale.dst, stale.dport, stale.src, stale.sport)
        );
        assert_eq!((rst.flags, rst.seq), (RST, stale.ack));
        assert_eq!(lb.counter(counters::DROP_STALE_BACKEND_ANSWER), 1);

        let probe = client_ack(&p, CLIENT_PORT, &synack, 1300);
        let (action, out) = lb.from_client(&probe.build());
        assert_eq!(action, Action::Redirect);
        let again = decode(&out).expect("a well-formed SYN");
        assert_eq!(
            (again.flags, again.seq, again.sport),
            (SYN, SEQ, syn.sport),
            "the SYN again, on the same port"
        );
    }
}

/// A client reuses its port while the VIP's SYNs are answered by cookie: its old flow
/// is closed but still in the table, and the cookie SYN-ACK left no state, so the ACK
/// that follows must open a new flow (the client's SYN toward the backend), not pass
/// as a stray segment of the old one.
#[test]
fn a_cookie_ack_on_a_closed_flows_port_opens_a_new_flow() {
    for p in [plan4(), plan6()] {
        let mut lb = TestRun::new();
        lb.two_backends_up(&p, 0);
        let (action, out) = lb.from_client(&p.syn().build());
        assert_eq!(action, Action::Redirect);
        let port = decode(&out).unwrap().sport;
        for (client, flags) in [
            (false, SYN | ACK),
            (true, ACK),
            (false, FIN | ACK),
            (true, FIN | ACK),
        ] {
            let s = if client {
                p.from_client(CLIENT_PORT, flags)
            } else {
                p.from_backend(0, port, flags)
            };
            let (action, _) = if client {
                lb.from_client(&s.build())
            } else {
                lb.from_backend(&s.build())
            };
            assert_eq!(action, Action::Redirect, "the old connection's {flags:#x}");
        }
        assert!(
            lb.flow(p.client_key(CLIENT_PORT))
                .is_some_and(|f| f.flags & FLOW_CLOSED == FLOW_CLOSED)
        );

        lb.set_syn_cookies("always");
        let synack = cookie_synack(&mut lb, &p, CLIENT_PORT);
        let (action, out) = lb.from_client(&client_ack(&p, CLIENT_PORT, &synack, 1001).build());
        assert_eq!(action, Action::Redirect);
        let syn = decode(&out).expect("a well-formed SYN");
        assert_eq!((syn.flags, syn.seq, syn.dst), (SYN, SEQ, p.backends[0]));
        assert_eq!(lb.counter(counters::SYN_COOKIE_VALID), 1);
        let f = lb.flow(p.client_key(CLIENT_PORT)).unwrap();
        assert_eq!(f.flags & FLOW_CLOSED, 0, "a new flow, opening");
        assert_ne!(f.proxy, 0);
    }
}

/// A client without timestamps: the cookie cannot carry its options, so the backend
/// gets the safe ones (the smallest MSS class, no scaling, no SACK).
#[test]
fn a_client_without_timestamps_gets_the_safe_options() {
    let p = plan4();
    let mut lb = proxy(&p);
    let mut s = p.from_client(CLIENT_PORT, SYN);
    s.payload.clear();
    let s = with_opts(
        s,
        &Opts {
            mss: Some(1460),
            sack_ok: true,
            wscale: Some(7),
            ..Opts::default()
        },
    );
    let (action, out) = lb.from_client(&s.build());
    assert_eq!(action, Action::Tx);
    let synack = decode(&out).unwrap();
    let o = Opts::parse(&synack.tcp_options);
    assert_eq!(
        (o.mss, o.sack_ok, o.ts, o.wscale),
        (Some(1460), false, None, None),
        "only what a cookie can bring back is offered"
    );
    let mut ack = p.from_client(CLIENT_PORT, ACK);
    ack.seq = SEQ + 1;
    ack.ack = synack.seq.wrapping_add(1);
    ack.payload.clear();
    ack.tcp_options.clear();
    let (action, out) = lb.from_client(&ack.build());
    assert_eq!(action, Action::Redirect);
    let syn = decode(&out).unwrap();
    let o = Opts::parse(&syn.tcp_options);
    assert_eq!(
        (o.mss, o.sack_ok, o.ts, o.wscale),
        (Some(536), false, None, None)
    );
}

/// The program reads a SYN's options in one go when they are laid out as Linux sends
/// them, and searches them one by one otherwise: the cookie SYN-ACK offers the same and
/// its TSval carries the same client options either way.
#[test]
fn a_syns_options_are_read_the_same_in_any_order() {
    let ts = [8, 10, 0, 0, 0x03, 0xe8, 0, 0, 0, 0]; // TSval 1000, TSecr 0
    let layouts: [(&str, Vec<u8>); 4] = [
        (
            "Linux's",
            [&[2, 4, 0x05, 0xb4, 4, 2][..], &ts, &[1, 3, 3, 7]].concat(),
        ),
        (
            "MSS, NOP, window scale, SACK permitted, timestamps (BSD's)",
            [&[2, 4, 0x05, 0xb4, 1, 3, 3, 7, 4, 2][..], &ts].concat(),
        ),
        (
            "window scale first, timestamps last",
            [&[1, 3, 3, 7, 2, 4, 0x05, 0xb4, 1, 1, 4, 2, 1, 1][..], &ts].concat(),
        ),
        (
            "Linux's but the window scale before the timestamps",
            [&[2, 4, 0x05, 0xb4, 4, 2, 1, 3, 3, 7][..], &ts].concat(),
        ),
    ];
    for p in [plan4(), plan6()] {
        let mut lb = proxy(&p);
        for (i, (what, options)) in layouts.iter().enumerate() {
            assert_eq!(options.len() % 4, 0, "{what}: whole words");
            let mut s = p.from_client(CLIENT_PORT + i as u16, SYN);
            s.payload.clear();
            s.tcp_options = options.clone();
            let (action, out) = lb.from_client(&s.build());
            assert_eq!(action, Action::Tx, "{what}: answered with a cookie");
            let a = decode(&out).expect("a well-formed SYN-ACK");
            let o = Opts::parse(&a.tcp_options);
            let lb_mss = if p.vip.is_ipv4() { 1460 } else { 1440 };
            assert_eq!(
                (o.mss, o.wscale, o.sack_ok),
                (Some(lb_mss), Some(LB_WSCALE), true),
                "{what}: what the SYN-ACK offers"
            );
            let (tsval, tsecr) = o.ts.unwrap_or_else(|| panic!("{what}: timestamps"));
            assert_eq!(tsecr, 1000, "{what}: the client's TSval echoed");
            let carried = ClientOptions::decode(tsval);
            assert_eq!(
                (carried.wscale(), carried.sack, carried.mss(p.family())),
                (Some(7), true, lb_mss),
                "{what}: the client's options carried in the TSval"
            );
        }
        assert_eq!(lb.counter(counters::SYN_COOKIE_SENT), layouts.len() as u64);
    }
}

/// Under `auto`, a source that passed a cookie is trusted (`syn_proxy::TRUST_NS`): while
/// the VIP is over its SYN rate, that source's SYNs open flows as they would without the
/// pressure (counted as `syn_trusted`) and other sources' get cookies. While the VIP's
/// SNAT ports run short (the walk's tries find none, the sweep one) the trusted source
/// still opens flows and only strangers get cookies; once they run out (the sweep finds
/// none), the trusted source's SYNs get cookies too.
#[test]
fn a_source_that_passed_a_cookie_opens_flows_without_one_until_ports_run_out() {
    for (p, strangers, stranger) in [
        (plan4(), "198.18.128.0/17", "198.18.128.1"),
        (plan6(), "fd00:99::/64", "fd00:99::1"),
    ] {
        let mut lb = proxy(&p);
        lb.ns()
            .ip(&format!("route add {strangers} via {} dev lb1", p.client))
            .expect("a route to the other sources");
        let other = Plan {
            client: stranger.parse().unwrap(),
            ..p
        };
        let synack = cookie_synack(&mut lb, &p, CLIENT_PORT);
        let (action, _) = lb.from_client(&client_ack(&p, CLIENT_PORT, &synack, 1001).build());
        assert_eq!(action, Action::Redirect, "the cookie passed");

        lb.set_syn_cookies("auto");
        lb.set_syn_cookie_rate(1);
        let (action, _) = lb.from_client(&client_syn(&other, CLIENT_PORT).build());
        assert_eq!(action, Action::Redirect, "under the rate: a flow");
        // Over the rate from here on (for this rate window and the next: a test that
        // meets a window's end still is).
        let (action, out) = lb.from_client(&client_syn(&other, CLIENT_PORT + 1).build());
        assert_eq!(action, Action::Tx, "any other source gets a cookie");
        assert_eq!(decode(&out).unwrap().flags, SYN | ACK);
        assert_eq!(lb.counter(counters::SYN_COOKIE_SENT), 2);

        let (action, out) = lb.from_client(&client_syn(&p, CLIENT_PORT + 1).build());
        assert_eq!(
            action,
            Action::Redirect,
            "the trusted source's SYN opens its flow"
        );
        let syn = decode(&out).expect("a well-formed SYN");
        assert_eq!((syn.flags, syn.seq, syn.dst), (SYN, SEQ, p.backends[0]));
        assert_eq!(lb.counter(counters::SYN_TRUSTED), 1);
        assert_eq!(lb.counter(counters::SYN_COOKIE_SENT), 2);
        let f = lb.flow(p.client_key(CLIENT_PORT + 1)).expect("its flow");
        assert_eq!(f.proxy, 0, "not proxied: no translation");

        // Every port taken but one the next flow's walk does not try: its tries fail,
        // its sweep finds that one.
        let range = u32::from(SNAT_MAX - SNAT_MIN) + 1;
        let mut search = Search::new(flow_hash(&p.client_key(CLIENT_PORT + 2)), 0, range, None);
        let walk: Vec<u32> = (0..PROBES).map(|i| search.offset(i)).collect();
        let spare = (0..range).find(|o| !walk.contains(o)).unwrap();
        let spare = SNAT_MIN + spare as u16;
        for (port, c) in (SNAT_MIN..=SNAT_MAX).zip(30_000..) {
            if port != spare {
                lb.live_flow_holding(&p, 0, port, p.client_key(c));
            }
        }
        let (action, _) = lb.from_client(&client_syn(&p, CLIENT_PORT + 2).build());
        assert_eq!(
            action,
            Action::Redirect,
            "the sweep finds the last port for the trusted source"
        );
        let f = lb.flow(p.client_key(CLIENT_PORT + 2)).expect("its flow");
        assert_eq!(u16::from_be(f.snat_port), spare);
        let (action, out) = lb.from_client(&client_syn(&other, CLIENT_PORT + 2).build());
        assert_eq!(
            action,
            Action::Tx,
            "while ports run short a stranger gets a cookie"
        );
        assert_eq!(decode(&out).unwrap().flags, SYN | ACK);
        assert_eq!(lb.counter(counters::SYN_COOKIE_SENT), 3);
        // A port comes back: the trusted source, not a stranger, gets it.
        let freed = if spare == SNAT_MIN {
            SNAT_MIN + 1
        } else {
            SNAT_MIN
        };
        lb.flow_evicted(p.client_key(30_000 + (freed - SNAT_MIN)));
        let (action, _) = lb.from_client(&client_syn(&p, CLIENT_PORT + 3).build());
        assert_eq!(
            action,
            Action::Redirect,
            "while ports run short the trusted source still opens flows"
        );
        let f = lb.flow(p.client_key(CLIENT_PORT + 3)).expect("its flow");
        assert_eq!(u16::from_be(f.snat_port), freed);

        let (action, _) = lb.from_client(&client_syn(&p, CLIENT_PORT + 4).build());
        assert_eq!(action, Action::Drop, "no port left");
        assert_eq!(lb.counter(counters::DROP_SNAT_EXHAUSTED), 1);
        let (action, out) = lb.from_client(&client_syn(&p, CLIENT_PORT + 5).build());
        assert_eq!(
            action,
            Action::Tx,
            "once ports run out the trusted source gets a cookie too"
        );
        assert_eq!(decode(&out).unwrap().flags, SYN | ACK);
        assert_eq!(lb.counter(counters::SYN_COOKIE_SENT), 4);
    }
}
