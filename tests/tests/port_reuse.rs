//! Port reuse (issue 11): a client that reuses its ports fast (a narrow
//! `ip_local_port_range` and `tcp_tw_reuse`) opens new connections at full rate through
//! lb's nat VIP for a minute, and none of its SYNs has to be sent again. The client's
//! own count (`nstat` TcpExtTCPSynRetrans) is the measure; the same client straight to a
//! backend, without the LB, is the comparison that tells what the LB adds.
//!
//! Root, the `lb` binary, the eBPF object, wrk and nginx are required (a missing one
//! fails); the tests run one at a time (the lock in [`Bed`]).

use std::time::Duration;

use lb_tests::bed::Bed;
use lb_tests::receivers::{self, Nginx, NginxOpts};
use lb_tests::topology::{Kind, PORT, VIP4};
use lb_tests::{Daemon, Netns, cmd, must};

/// The client's ephemeral ports, as many as the bench's `conn-sustained` gives it: few
/// enough that each comes round every second or two at full rate. (With 1,024 the
/// client came back on each port so soon that its flows kept their SNAT ports, and the
/// fault this test found, a port left behind by a flow that moved, did not show.)
const CLIENT_PORTS: (u16, u16) = (40_000, 56_383);
/// The backends' nginx (python's http.server keeps an accept queue of 5, which a
/// connection rate like this overflows: SYNs the backend drops, not the LB).
const BACKEND_PORT: u16 = 8080;
/// The backends lb balances over.
const BACKENDS: [&str; 2] = ["b1", "b2"];
/// wrk's concurrent connections.
const CONNECTIONS: u32 = 30;
/// The measured run through the LB.
const RUN: Duration = Duration::from_secs(60);
/// The comparison run straight to a backend.
const DIRECT_RUN: Duration = Duration::from_secs(20);
/// How many times each run must at least come round the client's port range.
const MIN_CYCLES: u64 = 5;

/// The client's TCP counters that tell how its connections went.
#[derive(Clone, Copy, Debug, Default)]
struct TcpCounts {
    active_opens: u64,
    retrans_segs: u64,
    syn_retrans: u64,
}

impl TcpCounts {
    /// `nstat`'s absolute values in `ns` (history left alone).
    fn read(ns: &Netns) -> TcpCounts {
        let out = must(ns.exec(
            "nstat",
            &[
                "-asz",
                "TcpActiveOpens",
                "TcpRetransSegs",
                "TcpExtTCPSynRetrans",
            ],
        ));
        let get = |name: &str| {
            out.lines()
                .find_map(|l| {
                    let mut f = l.split_whitespace();
                    (f.next() == Some(name)).then(|| f.next())?
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in nstat's output:\n{out}"))
        };
        TcpCounts {
            active_opens: get("TcpActiveOpens"),
            retrans_segs: get("TcpRetransSegs"),
            syn_retrans: get("TcpExtTCPSynRetrans"),
        }
    }

    fn since(&self, earlier: &TcpCounts) -> TcpCounts {
        TcpCounts {
            active_opens: self.active_opens - earlier.active_opens,
            retrans_segs: self.retrans_segs - earlier.retrans_segs,
            syn_retrans: self.syn_retrans - earlier.syn_retrans,
        }
    }
}

/// What wrk reported: requests completed and errors of any kind.
#[derive(Debug)]
struct Wrk {
    requests: u64,
    errors: u64,
    output: String,
}

/// Parses wrk's summary: `N requests in ...`, and the `Socket errors: connect A, read
/// B, write C, timeout D` and `Non-2xx or 3xx responses: E` lines when present.
fn parse_wrk(output: &str) -> Option<Wrk> {
    let requests = output.lines().find_map(|l| {
        let (n, rest) = l.trim().split_once(' ')?;
        rest.starts_with("requests in").then(|| n.parse().ok())?
    })?;
    let mut errors = 0;
    for line in output.lines().map(str::trim) {
        if let Some(list) = line.strip_prefix("Socket errors:") {
            for item in list.split(',') {
                errors += item.split_whitespace().nth(1)?.parse::<u64>().ok()?;
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>().ok()?;
        }
    }
    Some(Wrk {
        requests,
        errors,
        output: output.to_owned(),
    })
}

/// One run of new connections: `Connection: close` requests to `url` for `secs`
/// (`timeout` ends a wrk that hangs), with the client's counters over it.
fn run(client: &Netns, url: &str, secs: Duration) -> (Wrk, TcpCounts) {
    let before = TcpCounts::read(client);
    let limit = (secs.as_secs() + 30).to_string();
    let duration = format!("{}s", secs.as_secs());
    let connections = CONNECTIONS.to_string();
    let out = must(cmd::run(client.command("timeout").args([
        &limit,
        "wrk",
        "-t2",
        "-c",
        &connections,
        "-d",
        &duration,
        "--timeout",
        "5s",
        "-H",
        "Connection: close",
        url,
    ])));
    let counts = TcpCounts::read(client).since(&before);
    let wrk = parse_wrk(&out).unwrap_or_else(|| panic!("wrk printed no summary:\n{out}"));
    (wrk, counts)
}

/// nginx on `BACKEND_PORT` of each of [`BACKENDS`].
fn backends(bed: &Bed) -> Vec<Nginx> {
    let opts = NginxOpts {
        plain_port: Some(BACKEND_PORT),
        ..NginxOpts::default()
    };
    BACKENDS
        .iter()
        .map(|name| {
            let b = bed.backend(name);
            let dir = bed.topo.path(&format!("nginx-{name}"));
            must(receivers::start_nginx(&b.ns, &dir, name, &opts))
        })
        .collect()
}

/// lb in nat mode over [`BACKENDS`] on [`BACKEND_PORT`], the VIP on port 80.
fn start_lb(bed: &Bed) -> Daemon {
    let mut args = Vec::new();
    for iface in &bed.topo.lb_ifaces {
        args.extend(["--iface".to_owned(), iface.clone()]);
    }
    args.extend(["--vip".to_owned(), bed.topo.vip_arg(false)]);
    for name in BACKENDS {
        let b = bed.backend(name);
        args.extend(["--backend".to_owned(), format!("{}:{BACKEND_PORT}@1", b.v4)]);
    }
    args.extend(["--xdp-mode".to_owned(), "native".to_owned()]);
    bed.start(&args)
}

/// Where else a SYN or its SYN-ACK may have been lost, for a failure's message: the
/// backends' and the LB host's kernel drop counters (listen queue overflows, resets,
/// TIME_WAIT refusals) and the LB's veths' error and drop counters (a frame redirected
/// into a full peer ring), each line that is not zero.
fn losses_elsewhere(bed: &Bed) -> String {
    const KERNEL: [&str; 8] = [
        "Listen",
        "Drop",
        "Paws",
        "Challenge",
        "OutRsts",
        "Abort",
        "SynRetrans",
        "Syncookies",
    ];
    let mut out = Vec::new();
    let mut spaces = vec![("lb", &bed.topo.lb)];
    spaces.extend(BACKENDS.iter().map(|&b| (b, &bed.backend(b).ns)));
    for (name, ns) in spaces {
        let counters = ns
            .exec("nstat", &["-asz"])
            .unwrap_or_else(|e| format!("{e:#}"));
        out.extend(
            counters
                .lines()
                .filter(|l| KERNEL.iter().any(|k| l.contains(k)))
                .filter(|l| l.split_whitespace().nth(1).is_some_and(|v| v != "0"))
                .map(|l| {
                    format!(
                        "{name}: {}",
                        l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
                    )
                }),
        );
    }
    for dev in ["lb0", "lb1"] {
        let stats = bed
            .topo
            .lb
            .exec("ethtool", &["-S", dev])
            .unwrap_or_else(|e| format!("{e:#}"));
        out.extend(
            stats
                .lines()
                .filter(|l| l.contains("drop") || l.contains("err"))
                .filter(|l| !l.trim_end().ends_with(": 0"))
                .map(|l| format!("{dev}: {}", l.trim())),
        );
    }
    if out.is_empty() {
        "nothing counted".to_owned()
    } else {
        out.join("; ")
    }
}

/// Fails unless the run completed requests without errors and came round the client's
/// port range at least [`MIN_CYCLES`] times.
fn check_run(what: &str, wrk: &Wrk, counts: &TcpCounts) {
    let ports = u64::from(CLIENT_PORTS.1 - CLIENT_PORTS.0) + 1;
    assert!(
        counts.active_opens >= MIN_CYCLES * ports,
        "{what}: {} connections over {ports} client ports, fewer than {MIN_CYCLES} rounds; wrk:\n{}",
        counts.active_opens,
        wrk.output
    );
    assert!(
        wrk.requests > 0 && wrk.errors == 0,
        "{what}: {} requests, {} errors; wrk:\n{}",
        wrk.requests,
        wrk.errors,
        wrk.output
    );
}

/// wrk with `Connection: close` from a client with narrow ports and `tcp_tw_reuse`:
/// first 20 s straight to b1 (no SYN sent again: the bed loses none), then 60 s through
/// lb's VIP over b1 and b2, where no SYN may be sent again either.
#[test]
fn fast_port_reuse_causes_no_syn_retransmission() {
    let bed = Bed::new(Kind::TwoArmed);
    must(lb_tests::require_tools(&["wrk", "nginx", "timeout"]));
    let _nginx = backends(&bed);
    let client = &bed.topo.client;
    let (lo, hi) = CLIENT_PORTS;
    must(client.sysctl(&[
        &format!("net.ipv4.ip_local_port_range={lo} {hi}"),
        "net.ipv4.tcp_tw_reuse=1",
    ]));

    // Without the LB: the LB host's kernel routes the client straight to b1.
    let direct_url = format!("http://{}:{BACKEND_PORT}/", bed.backend("b1").v4);
    let (direct, direct_counts) = run(client, &direct_url, DIRECT_RUN);
    eprintln!(
        "direct to b1, {DIRECT_RUN:?}: {direct_counts:?}, {} requests",
        direct.requests
    );
    check_run("direct", &direct, &direct_counts);
    assert_eq!(
        direct_counts.syn_retrans, 0,
        "the client sent SYNs again straight to a backend: the bed, not the LB, loses them; {direct_counts:?}"
    );

    let d = start_lb(&bed);
    let vip_url = format!("http://{VIP4}:{PORT}/");
    let (through, counts) = run(client, &vip_url, RUN);
    let stats = d
        .stats_json()
        .map(|s| s.to_string())
        .unwrap_or_else(|e| format!("{e:#}"));
    let losses = losses_elsewhere(&bed);
    eprintln!(
        "through lb, {RUN:?}: {counts:?}, {} requests",
        through.requests
    );
    check_run("through lb", &through, &counts);
    assert_eq!(
        counts.syn_retrans, 0,
        "the client sent SYNs again through lb (none straight to a backend); {counts:?}\nlb stats: {stats}\nelsewhere: {losses}"
    );
    bed.stop(d);
}

#[test]
fn parses_wrk_summary() {
    let out = "Running 1m test @ http://198.18.100.1:80/\n  2 threads and 30 connections\n\
               \x20 123456 requests in 1.00m, 12.34MB read\n\
               \x20 Socket errors: connect 1, read 2, write 0, timeout 3\n\
               \x20 Non-2xx or 3xx responses: 4\nRequests/sec:   2057.60\n";
    let w = parse_wrk(out).unwrap();
    assert_eq!((w.requests, w.errors), (123_456, 10));
    let clean = "  99 requests in 10.00s, 1.00KB read\nRequests/sec: 9.90\n";
    assert_eq!(parse_wrk(clean).map(|w| w.errors), Some(0));
    assert!(parse_wrk("nothing").is_none());
}
