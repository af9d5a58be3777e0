//! What one packet costs the XDP program on each of its paths (issue 17), measured
//! with BPF_PROG_TEST_RUN once per bench run: the program as the daemon loads it, with a
//! `nat` service provisioned through the daemon's own map writers (`lb_tests::test_run`).
//!
//! Each run is of one frame (a repeat count would run the program again on the frame it
//! already rewrote, another path), followed by a run of `xdp_pass`, a program that
//! returns at once, on the same frame: the difference is the path's own work. The
//! figure is the median over blocks of [`BLOCK`] runs of the block's mean difference,
//! so a burst of the host's noise moves one block, not the figure. A new flow's SYN
//! needs a new tuple per run, so those runs each use a client port of their own; a SYN
//! answered with a cookie comes, as a flood's do, from a source address of its own too. Segments carry the options Linux sends (MSS, SACK
//! permitted, timestamps, window scale on a SYN; timestamps after it). The established
//! forward and reply paths are measured for IPv6 too (`_v6`). `short_connection` is the
//! mean over the nine segments of a short HTTP connection that the backend closes
//! (issue 17's "average over short connections", here per packet of the program alone),
//! with two of its steps the other paths do not show: the handshake's ACK
//! (`handshake_ack`, the flow leaves the half-open table) and the client's ACK of the
//! backend's FIN (`ack_of_fin`, a closing segment, which goes the general way).

use crate::figure::Figure;
use crate::systems::System;
use crate::workloads::Metric;
use lb_common::maps::{REPLIES_NO_VIP, names};
use lb_tests::packet::Packet;
use lb_tests::packet::flags::{ACK, FIN, PSH, SYN};
use lb_tests::test_run::{Action, CLIENT_PORT, Plan, TestRun, plan4, plan6, stay_on_this_cpu};
use std::net::Ipv4Addr;

/// The figures' workload name.
pub const WORKLOAD: &str = "xdp-path";
/// Runs per path (a quick run's).
const RUNS: (usize, usize) = (20_000, 2_000);
/// New flows per batch: the test bed's SNAT range holds 1,000 ports per backend, and
/// the tables are emptied at 40% (where a claim's 24 probes all fail once in 10⁹).
const BATCH: usize = 400;
/// Runs per block of the median ([`typical`]): a batch, so every block of new flows
/// starts from empty tables.
const BLOCK: usize = BATCH;

/// The `syn_cookie` path's spoofed sources: 198.18.128.0/17, and only there.
const FLOOD_SOURCES: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 128, 0), 17);

/// The paths measured: figure name, and what the runs must end in. A name ending in
/// `_v6` is its path for IPv6.
/// `reply_asking_services` is a reply while some VIP's port lies in the SNAT range,
/// so the fast path asks `SERVICES` before the reverse table (`REPLIES_NO_VIP` off).
const PATHS: [(&str, Action); 10] = [
    ("syn_new_flow", Action::Redirect),
    ("syn_cookie", Action::Tx),
    ("established_forward", Action::Redirect),
    ("reply", Action::Redirect),
    ("reply_asking_services", Action::Redirect),
    ("established_forward_v6", Action::Redirect),
    ("reply_v6", Action::Redirect),
    ("rst_no_backend", Action::Tx),
    ("not_for_a_vip", Action::Pass),
    ("short_connection", Action::Redirect),
];

/// The segments of a short connection ([`short_connections`]), in order: the side each
/// comes from and its TCP flags. An HTTP/1.0 exchange that the backend closes first, as
/// a web server does.
const SHORT: [(&str, Side, u8); 9] = [
    ("syn", Side::Client, SYN),
    ("syn_ack", Side::Backend, SYN | ACK),
    ("handshake_ack", Side::Client, ACK),
    ("request", Side::Client, PSH | ACK),
    ("response", Side::Backend, PSH | ACK),
    ("backend_fin", Side::Backend, FIN | ACK),
    ("ack_of_fin", Side::Client, ACK),
    ("client_fin", Side::Client, FIN | ACK),
    ("last_ack", Side::Backend, ACK),
];

/// The steps of [`SHORT`] reported on their own: the two costs a short connection has
/// that the other paths do not show. The handshake's ACK copies the flow out of the
/// half-open table; a closing flow's segment goes the general way.
const SHOWN_APART: [&str; 2] = ["handshake_ack", "ack_of_fin"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Backend,
}

/// A figure per path, or one failed figure saying why none could be measured.
pub fn figures(quick: bool, notes: &mut Vec<String>) -> Vec<Figure> {
    let runs = if quick { RUNS.1 } else { RUNS.0 };
    // TestRun enters a network namespace of its own: on a thread of its own.
    let measured = std::thread::spawn(move || measure(runs))
        .join()
        .map_err(|_| "the measuring thread panicked".to_owned());
    let metric = |name: &'static str| Metric {
        name,
        unit: "ns",
        higher_is_better: false,
    };
    let figure = |name: &'static str, status: String, ns: Option<f64>| Figure {
        system: System::LbNat,
        workload: WORKLOAD.to_owned(),
        metric: metric(name),
        status,
        median: ns,
        min: ns,
        max: ns,
        repeats: usize::from(ns.is_some()),
        discarded: 0,
    };
    match measured {
        Ok(costs) => {
            notes.push(format!(
                "{WORKLOAD}: ns per packet of each path of lb_xdp (BPF_PROG_TEST_RUN: {runs} \
                 single runs, each less a run of xdp_pass on the same frame; the median of \
                 the means of blocks of {BLOCK}; on one CPU)"
            ));
            costs
                .into_iter()
                .map(|(name, ns)| figure(name, "ok".to_owned(), Some(ns)))
                .collect()
        }
        Err(e) => vec![figure(PATHS[0].0, format!("failed: {e}"), None)],
    }
}

/// Each path's cost in ns, less the empty program's.
fn measure(runs: usize) -> Vec<(&'static str, f64)> {
    stay_on_this_cpu();
    let mut lb = TestRun::new();
    // SYN cookies would answer a burst of new flows this fast; their path is not this.
    lb.set_syn_cookies("off");
    let p = plan4();
    lb.two_backends_up(&p, 0);
    let p6 = plan6();
    lb.two_backends_up(&p6, 0);
    let mut out = Vec::new();
    for (name, want) in PATHS {
        let ns = match name {
            "syn_new_flow" => new_flows(&mut lb, &p, runs, want),
            "syn_cookie" => cookies(&mut lb, &p, runs, want),
            "short_connection" => {
                let steps = short_connections(&mut lb, &p, runs, want);
                for (&(step, ..), &ns) in SHORT.iter().zip(&steps) {
                    if SHOWN_APART.contains(&step) {
                        out.push((step, ns.max(0.0)));
                    }
                }
                steps.iter().sum::<f64>() / steps.len() as f64
            }
            "reply_asking_services" => {
                let (frame, ingress) = frame_for(&mut lb, &p, "reply");
                let bits = lb.replies();
                lb.set_replies(bits & !REPLIES_NO_VIP);
                let ns = typical(runs, |_| timed(&mut lb, &frame, ingress, want));
                lb.set_replies(bits);
                ns
            }
            _ => {
                let (frame, ingress) = match name.strip_suffix("_v6") {
                    Some(path) => frame_for(&mut lb, &p6, path),
                    None => frame_for(&mut lb, &p, name),
                };
                typical(runs, |_| timed(&mut lb, &frame, ingress, want))
            }
        };
        out.push((name, ns.max(0.0)));
    }
    out
}

/// The cost of `runs` SYNs of new flows, in batches from empty tables. The frames are
/// built before the runs: building one between two runs cooled the caches of the next.
fn new_flows(lb: &mut TestRun, p: &Plan, runs: usize, want: Action) -> f64 {
    let frames: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| linux_syn(p.from_client(10_000 + i as u16, SYN)).build())
        .collect();
    let ingress = lb.lb1;
    lb.clear_flow_tables();
    typical(runs, |i| {
        if i > 0 && i % BATCH == 0 {
            lb.clear_flow_tables();
        }
        timed(lb, &frames[i % BATCH], ingress, want)
    })
}

/// The cost of `runs` SYNs each answered with a SYN cookie, as in a flood: each from a
/// source address of its own (spoofed sources behind a router, one route and one
/// neighbour for all), so every answer looks up its next hop. No state is kept.
fn cookies(lb: &mut TestRun, p: &Plan, runs: usize, want: Action) -> f64 {
    lb.clear_flow_tables();
    lb.ns()
        .ip(&format!(
            "route add {}/{} via {} dev lb1",
            FLOOD_SOURCES.0, FLOOD_SOURCES.1, p.client
        ))
        .expect("a route to the flood's sources");
    lb.set_syn_cookies("always");
    let first = u32::from(FLOOD_SOURCES.0);
    // Built before the runs, as in `new_flows`.
    let frames: Vec<Vec<u8>> = (0..runs)
        .map(|i| {
            let source = Plan {
                client: Ipv4Addr::from(first + 1 + (i % 30_000) as u32).into(),
                ..*p
            };
            linux_syn(source.from_client(10_000 + (i % 50_000) as u16, SYN)).build()
        })
        .collect();
    let ingress = lb.lb1;
    let ns = typical(runs, |i| timed(lb, &frames[i], ingress, want));
    lb.set_syn_cookies("off");
    ns
}

/// The cost of each segment of [`SHORT`], over `runs` connections in batches of
/// [`BATCH`] from empty tables, all on backend 0: each step's median over the batches
/// of its batch mean. A step runs for the whole batch before the next, with its frames
/// built before it (the SYN-ACKs' destination ports are the ports the SYNs claimed), so
/// no step's runs follow a frame build or a map read. The sequence numbers are the
/// exchange's own, so the closing segments take the paths a real close takes.
fn short_connections(lb: &mut TestRun, p: &Plan, runs: usize, want: Action) -> Vec<f64> {
    const CLIENT_ISN: u32 = 1_000;
    const BACKEND_ISN: u32 = 50_000;
    let request = p.from_client(CLIENT_PORT, ACK).payload.len() as u32;
    let response = p.from_backend(0, CLIENT_PORT, ACK).payload.len() as u32;
    // Each step's sequence and acknowledgment numbers, in the order of `SHORT`.
    let (c, b) = (CLIENT_ISN + 1, BACKEND_ISN + 1);
    let numbers = [
        (CLIENT_ISN, 0),
        (BACKEND_ISN, c),
        (c, b),
        (c, b),
        (b, c + request),
        (b + response, c + request),
        (c + request, b + response + 1),
        (c + request, b + response + 1),
        (b + response + 1, c + request + 1),
    ];
    lb.table_to(p, 0);
    let mut per_step: Vec<Vec<f64>> = vec![Vec::new(); SHORT.len()];
    for _ in 0..runs.div_ceil(BATCH) {
        lb.clear_flow_tables();
        let mut ports = Vec::new();
        for (k, &(_, side, flags)) in SHORT.iter().enumerate() {
            let (seq, ack) = numbers[k];
            let frames: Vec<Vec<u8>> = (0..BATCH)
                .map(|i| {
                    let client_port = 10_000 + i as u16;
                    let mut s = match side {
                        Side::Client => p.from_client(client_port, flags),
                        Side::Backend => p.from_backend(0, ports[i], flags),
                    };
                    s = if flags & SYN != 0 {
                        linux_syn(s)
                    } else {
                        timestamped(s)
                    };
                    (s.seq, s.ack) = (seq, ack);
                    if flags & PSH == 0 {
                        s.payload.clear();
                    }
                    s.build()
                })
                .collect();
            let ingress = match side {
                Side::Client => lb.lb1,
                Side::Backend => lb.lb0,
            };
            let total: f64 = frames.iter().map(|f| timed(lb, f, ingress, want)).sum();
            per_step[k].push(total / BATCH as f64);
            if k == 0 {
                ports = (0..BATCH)
                    .map(|i| lb.snat_port(p, 10_000 + i as u16))
                    .collect();
            }
        }
    }
    per_step
        .iter_mut()
        .map(|means| {
            means.sort_by(f64::total_cmp);
            means[means.len() / 2]
        })
        .collect()
}

/// The frame of path `name` and the interface it arrives on, with the state it needs
/// (an established flow for the forward and reply paths; an empty table for the RST).
fn frame_for(lb: &mut TestRun, p: &Plan, name: &str) -> (Vec<u8>, u32) {
    lb.clear_flow_tables();
    match name {
        "established_forward" | "reply" => {
            lb.table_to(p, 0);
            lb.from_client(&linux_syn(p.syn()).build());
            let port = lb.snat_port(p, CLIENT_PORT);
            lb.from_backend(&linux_syn(p.from_backend(0, port, SYN | ACK)).build());
            lb.from_client(&timestamped(p.from_client(CLIENT_PORT, ACK)).build());
            if name == "reply" {
                (
                    timestamped(p.from_backend(0, port, PSH | ACK)).build(),
                    lb.lb0,
                )
            } else {
                (
                    timestamped(p.from_client(CLIENT_PORT, PSH | ACK)).build(),
                    lb.lb1,
                )
            }
        }
        "rst_no_backend" => {
            lb.no_backend_in_table(p);
            (linux_syn(p.syn()).build(), lb.lb1)
        }
        _ => {
            // A TCP segment to the LB host's own address, not a VIP: passed on.
            let mut s = p.from_client(CLIENT_PORT, ACK);
            s.dst = [198, 18, 1, 1].into();
            (s.build(), lb.lb1)
        }
    }
}

/// `s` with the options Linux puts on a SYN: MSS, SACK permitted, timestamps, window
/// scale (the paths are measured on segments as a Linux peer sends them).
fn linux_syn(mut s: Packet) -> Packet {
    s.tcp_options = vec![
        2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 1, 0, 0, 0, 0, 0, 0, 1, 3, 3, 7,
    ];
    s
}

/// `s` with the timestamps option Linux puts on every segment after the SYN.
fn timestamped(mut s: Packet) -> Packet {
    s.tcp_options = vec![1, 1, 8, 10, 0, 1, 0, 2, 0, 0, 0, 1];
    s
}

/// One timed run of `frame`, which must end in `want`. The counters that say which path
/// a run took are read only once it has missed, around a run of the frame again: read
/// around every run, their reading (a copy of every CPU's slots) left each measured run
/// with colder caches than the empty program's it is measured against.
fn timed(lb: &mut TestRun, frame: &[u8], ingress: u32, want: Action) -> f64 {
    let (action, _, took) = lb.run_program(names::PROG_LB, frame, ingress);
    let (.., empty) = lb.run_program(names::PROG_PASS, frame, ingress);
    if action != want {
        let before = lb.counters();
        let (again, ..) = lb.run_program(names::PROG_LB, frame, ingress);
        let after = lb.counters();
        let why: Vec<&str> = (0..after.len())
            .filter(|&i| after[i] != before[i])
            .map(|i| lb_common::counters::TABLE[i].name)
            .collect();
        panic!("{action:?}, not {want:?}: not the path meant (run again: {again:?}, {why:?})");
    }
    took.as_nanos() as f64 - empty.as_nanos() as f64
}

/// The median over blocks of [`BLOCK`] runs of each block's mean, in ns.
fn typical(runs: usize, mut run: impl FnMut(usize) -> f64) -> f64 {
    let mut blocks: Vec<f64> = (0..runs.div_ceil(BLOCK))
        .map(|b| {
            let block = b * BLOCK..((b + 1) * BLOCK).min(runs);
            let n = block.len() as f64;
            block.map(&mut run).sum::<f64>() / n
        })
        .collect();
    blocks.sort_by(f64::total_cmp);
    blocks[blocks.len() / 2]
}
