//! The workloads: each one bounded run of a real client (wrk, iperf3) in the client
//! namespace, pinned to its CPU, with the CPU the LB spent meanwhile; or of the XDP
//! generator (`pps`); or both (`churn`).

use crate::bed::Bed;
use crate::churn::{self, CONCURRENCY as CHURN_CONCURRENCY, PORT_RANGE};
use crate::clients::{CLIENT_THREADS, TcpCounters, Wrk, iperf3, wrk};
use crate::cpu::{self, snap, spent};
use crate::flood;
use crate::napi;
use crate::pps;
use crate::systems::{Running, System};
use anyhow::{Context, Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    Conn,
    KeepAlive,
    Bulk1,
    Bulk4,
    Download,
    /// Small frames of 1, 1,000 or 100,000 flows (see `pps`).
    Pps1,
    Pps1k,
    Pps100k,
    /// New connections for long enough that ports come round again (see `churn`).
    ConnSustained,
    /// New connections without and during a SYN flood. Last: a flood may leave the
    /// system's state full for the rest of its session.
    SynFlood,
}

pub const ALL: [Workload; 10] = [
    Workload::Conn,
    Workload::KeepAlive,
    Workload::Bulk1,
    Workload::Bulk4,
    Workload::Download,
    Workload::Pps1,
    Workload::Pps1k,
    Workload::Pps100k,
    Workload::ConnSustained,
    Workload::SynFlood,
];

/// `conn-sustained`'s default warm-up and measured seconds (`--quick`: 1 and 2).
const SUSTAINED_SECS: (u32, u32) = (10, 30);
/// `synflood`'s default warm-up and seconds of each phase (`--quick`: 1 and 1): long
/// enough for the port holds and the cookie windows a flood sets off to settle.
const SYNFLOOD_SECS: (u32, u32) = (10, 30);
/// The other workloads' default warm-up (the same traffic, unmeasured: tables filled,
/// ports in use, caches warm) and measured seconds (`--quick`: none and 1).
pub const DEFAULT_SECS: (u32, u32) = (5, 30);
/// Concurrent connections of the wrk workloads (all threads together).
const CONN_CONCURRENCY: u32 = 30;
const KEEPALIVE_CONCURRENCY: u32 = 30;
const DOWNLOAD_CONCURRENCY: u32 = 3;

/// A figure's definition: name, unit, and whether more is better.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

const fn m(name: &'static str, unit: &'static str, higher_is_better: bool) -> Metric {
    Metric {
        name,
        unit,
        higher_is_better,
    }
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Conn => "conn",
            Workload::KeepAlive => "keepalive",
            Workload::Bulk1 => "bulk1",
            Workload::Bulk4 => "bulk4",
            Workload::Download => "download",
            Workload::Pps1 => "pps-1",
            Workload::Pps1k => "pps-1k",
            Workload::Pps100k => "pps-100k",
            Workload::ConnSustained => "conn-sustained",
            Workload::SynFlood => "synflood",
        }
    }

    /// Seconds of unmeasured warm-up and of measuring (of each phase, for `synflood`)
    /// in one run: `secs` (`--secs`) sets the measured part when given.
    pub fn durations(self, secs: Option<u32>, quick: bool) -> (u32, u32) {
        let (warm, measured) = match self {
            Workload::ConnSustained if quick => (1, 2),
            Workload::ConnSustained => SUSTAINED_SECS,
            Workload::SynFlood if quick => (1, 1),
            Workload::SynFlood => SYNFLOOD_SECS,
            _ if quick => (0, 1),
            _ => DEFAULT_SECS,
        };
        (warm, secs.unwrap_or(measured))
    }

    pub fn describe(self) -> String {
        match self {
            Workload::Conn => format!(
                "new connections: wrk, {CLIENT_THREADS} threads, {CONN_CONCURRENCY} connections, `Connection: close` (a new TCP connection per request, checked against the client's TcpActiveOpens), GET /small (128 B); {}",
                napi::placement_note()
            ),
            Workload::KeepAlive => format!(
                "kept-alive requests: wrk, {CLIENT_THREADS} threads, {KEEPALIVE_CONCURRENCY} connections, GET /small (128 B); {}",
                napi::placement_note()
            ),
            Workload::Bulk1 => format!(
                "bulk, 1 stream: iperf3 -P 1 through the VIP to b1; {}",
                napi::placement_note()
            ),
            Workload::Bulk4 => format!(
                "bulk, 4 streams: iperf3 -P 4 through the VIP to b1; {}",
                napi::placement_note()
            ),
            Workload::Download => format!(
                "HTTP download: wrk, {CLIENT_THREADS} threads, {DOWNLOAD_CONCURRENCY} kept-alive connections, GET /big (64 MiB); the bulk figure every system has, PROXY ones included; {}",
                napi::placement_note()
            ),
            Workload::Pps1 | Workload::Pps1k | Workload::Pps100k => format!(
                "packet rate, {} concurrent flows: 64-byte TCP frames from a user-space generator (an AF_PACKET socket on the client's veth that bypasses its qdisc, sendmmsg in calls of 256, on the client's CPU; the XDP live-frames generator of earlier runs is refused by this kernel), counted and dropped by an XDP sink on the switch's end of the LB's backend-side veth; `rate` = frames that came out, `offered` = frames sent (those dropped at the LB's full veth ring too). The frames reach the LB's veth as socket buffers, which it copies into XDP buffers on the LB's CPU before any system's program runs (the live-frames generator's were XDP frames, not copied), so rates are not comparable with runs before 2026-12-08 and the ratio to xdp-bare is pulled toward 1; `xdp_ns_per_packet` times the program alone",
                self.pps_flows().unwrap_or(0)
            ),
            Workload::ConnSustained => format!(
                "sustained new connections: wrk, {CLIENT_THREADS} threads, {CHURN_CONCURRENCY} connections, `Connection: close`, GET /small, for {} s after {} s of warm-up (`--quick`: 2 after 1), the client's ports narrowed to {}-{} (with `tcp_tw_reuse 1`) so they come round again every few seconds, and with them lb's flows and SNAT ports; `syn_retrans` and `retrans_segs` are the client's TcpExtTCPSynRetrans and TcpRetransSegs over the run (nstat's counters), `snat_exhausted` lb's `drop_snat_ports_exhausted` (0 for systems without one), `unanswered` = connections opened that completed no request (a SYN lost for good, a reset, a wrk error, or one of the up to {} still open when wrk stops); {}",
                SUSTAINED_SECS.1,
                SUSTAINED_SECS.0,
                PORT_RANGE.0,
                PORT_RANGE.1,
                CHURN_CONCURRENCY,
                churn::placement_note()
            ),
            Workload::SynFlood => format!(
                "new connections during a SYN flood: as conn-sustained (ports not narrowed), {} s of warm-up, {} s without a flood (`rate_base`), then {} s during one (`rate_flood`; `--quick`: 1 s each); `ratio` = rate_flood / rate_base. The flood: spoofed SYNs to the HTTP VIP from {} addresses of {}/{} (a new 5-tuple each), from the packet-rate workloads' generator (an AF_PACKET socket on the client's veth that bypasses its qdisc) on the client's CPU (which it shares with wrk), paced to {} Mpps in bursts of 4,096 SYNs, each sent at the generator's full speed in sendmmsg calls of 256 (bursts at `syn_burst`, faster than the LB takes SYNs, which its 256-frame veth ring cannot absorb; see bench/src/flood.rs), for the phase and 2 s more at most; `syn_offered` = what it sent per second (below {} where it could not keep up), `syn_in` = what of it the client's veth put in the LB's receive ring per second (the rest found the ring full and was dropped: the LB took no more), `syn_burst` = the rate within the generator's bursts. The client's eth0 has a queue (pfifo) in both phases, as a host's NIC has, so the client's own packets wait for room in the LB's ring instead of being dropped (bench/src/churn.rs). Answers to the spoofed sources are blackholed in the LB namespace. `unanswered_flood` = `unanswered` of conn-sustained, during the flood; `lb_cpu_busy` and `client_cpu_busy` are the LB's and the client's CPU during the flood, `_base` without it (the client's CPU also runs the generator); {}",
                SYNFLOOD_SECS.0,
                SYNFLOOD_SECS.1,
                SYNFLOOD_SECS.1,
                flood::FLOWS / 64_000,
                flood::SOURCES.0,
                flood::SOURCES.1,
                flood::RATE / 1e6,
                flood::RATE / 1e6,
                churn::placement_note()
            ),
        }
    }

    /// How many flows a packet-rate workload cycles through; `None` for the others.
    pub fn pps_flows(self) -> Option<u32> {
        match self {
            Workload::Pps1 => Some(1),
            Workload::Pps1k => Some(1_000),
            Workload::Pps100k => Some(100_000),
            _ => None,
        }
    }

    /// The figures the workload yields; the first one decides outliers.
    pub fn metrics(self) -> &'static [Metric] {
        const CONN: &[Metric] = &[
            m("rate", "conn/s", true),
            m("p50", "ms", false),
            m("p99", "ms", false),
            m("cpu", "CPU-s/1k conn", false),
            m("lb_proc_cpu", "CPU-s/1k conn", false),
            m("softirq", "CPU-s/1k conn", false),
        ];
        const KEEPALIVE: &[Metric] = &[
            m("rate", "req/s", true),
            m("p99", "ms", false),
            m("cpu", "CPU-s/1k req", false),
        ];
        const BULK: &[Metric] = &[m("throughput", "Gbit/s", true), m("cpu", "CPU-s/GB", false)];
        const PPS: &[Metric] = &[
            m("rate", "Mpps", true),
            m("offered", "Mpps", true),
            m("lb_cpu_busy", "%", false),
            m("client_cpu_busy", "%", false),
        ];
        const SUSTAINED: &[Metric] = &[
            m("rate", "conn/s", true),
            m("p99", "ms", false),
            m("unanswered", "conn", false),
            m("syn_retrans", "SYNs", false),
            m("retrans_segs", "segments", false),
            m("snat_exhausted", "SYNs", false),
            m("lb_cpu_busy", "%", false),
            m("napi_cpu", "% of a CPU", false),
            m("client_cpu_busy", "%", false),
        ];
        const SYNFLOOD: &[Metric] = &[
            m("ratio", "x", true),
            m("rate_base", "conn/s", true),
            m("rate_flood", "conn/s", true),
            m("unanswered_flood", "conn", false),
            m("syn_retrans_flood", "SYNs", false),
            m("snat_exhausted_flood", "SYNs", false),
            m("syn_offered", "Mpps", true),
            m("syn_in", "Mpps", true),
            m("syn_burst", "Mpps", true),
            m("lb_cpu_busy", "%", false),
            m("lb_cpu_busy_base", "%", false),
            m("client_cpu_busy", "%", false),
            m("client_cpu_busy_base", "%", false),
        ];
        match self {
            Workload::Conn => CONN,
            Workload::KeepAlive => KEEPALIVE,
            Workload::Bulk1 | Workload::Bulk4 | Workload::Download => BULK,
            Workload::Pps1 | Workload::Pps1k | Workload::Pps100k => PPS,
            Workload::ConnSustained => SUSTAINED,
            Workload::SynFlood => SYNFLOOD,
        }
    }

    /// Why the workload cannot run on `system`, if it cannot.
    pub fn not_applicable(self, system: System) -> Option<&'static str> {
        let pps = self.pps_flows().is_some();
        match self {
            _ if system == System::XdpBare && !pps => {
                Some("n/a: the bare XDP program only forwards the packet-rate workloads' frames")
            }
            _ if pps && system == System::NoLb => Some(
                "n/a: the generator's frames are for a VIP, and without a load balancer there is none",
            ),
            _ if pps && !matches!(system, System::LbNat | System::XdpBare | System::NftDnat) => {
                Some(
                    "n/a: a proxy only sees connections, and the generator's frames belong to none",
                )
            }
            Workload::ConnSustained
                if !matches!(
                    system,
                    System::LbNat | System::NftFullnat | System::NftDnat | System::NoLb
                ) =>
            {
                Some(
                    "n/a: the sustained run compares lb's nat mode with the kernel's NAT and no LB; the proxies' new connections are the `conn` figures",
                )
            }
            Workload::SynFlood if system == System::NoLb => {
                Some("n/a: without a load balancer there is no VIP to flood")
            }
            Workload::SynFlood
                if matches!(
                    system,
                    System::HaproxyPp2
                        | System::Nginx
                        | System::NginxPp
                        | System::NftDnat
                        | System::LbDnat
                        | System::LbDsr
                ) =>
            {
                Some(
                    "n/a: the flood runs against lb and its like-for-like peers (nftables full NAT, HAProxy)",
                )
            }
            Workload::Bulk1 | Workload::Bulk4 if system.sends_proxy_v2() => Some(
                "n/a: iperf3 cannot read a PROXY header (see the download workload for this system's bulk cost)",
            ),
            _ => None,
        }
    }
}

/// One run's figures, in [`Workload::metrics`] order.
#[derive(Clone, Debug)]
pub struct Sample {
    pub values: Vec<f64>,
    /// Why the run does not count, if something disturbed it.
    pub disturbed: Option<String>,
    /// `lb_xdp`'s mean ns per packet over the run, by the kernel's run-time statistics
    /// (`runtime`): set by the caller for `lb-nat`.
    pub xdp_ns: Option<f64>,
}

/// Runs `workload` once against `running`: `warm` seconds unmeasured (the workloads
/// that have a warm-up), then `secs` measured.
pub fn run(
    workload: Workload,
    bed: &mut Bed,
    running: &mut Running,
    (warm, secs): (u32, u32),
) -> Result<Sample> {
    match workload {
        Workload::ConnSustained => {
            let p = churn::sustained(bed, running, warm, secs)?;
            return Ok(Sample {
                values: vec![
                    p.rate(),
                    p.wrk.p99_ms,
                    p.failed() as f64,
                    p.tcp.syn_retrans as f64,
                    p.tcp.retrans_segs as f64,
                    p.snat_exhausted as f64,
                    p.lb_busy * 100.0,
                    p.napi_busy * 100.0,
                    p.client_busy * 100.0,
                ],
                disturbed: p.disturbed,
                xdp_ns: None,
            });
        }
        Workload::SynFlood => {
            let r = churn::synflood(bed, running, warm, secs)?;
            let (base, flood) = (&r.base, &r.flood);
            return Ok(Sample {
                values: vec![
                    flood.rate() / base.rate(),
                    base.rate(),
                    flood.rate(),
                    flood.failed() as f64,
                    flood.tcp.syn_retrans as f64,
                    flood.snat_exhausted as f64,
                    r.sent.rate() / 1e6,
                    flood.flood_in as f64 / r.sent.secs.max(1e-6) / 1e6,
                    r.sent.burst_rate() / 1e6,
                    flood.lb_busy * 100.0,
                    base.lb_busy * 100.0,
                    flood.client_busy * 100.0,
                    base.client_busy * 100.0,
                ],
                disturbed: base.disturbed.clone().or(flood.disturbed.clone()),
                xdp_ns: None,
            });
        }
        _ => {}
    }
    if let Some(flows) = workload.pps_flows() {
        if warm > 0 {
            pps::run(bed, running, flows, warm).context("the warm-up")?;
        }
        // No process of the LB's: only whether something else competed matters.
        let ours = bed.net_inodes();
        let a = snap(&[], &ours)?;
        let r = pps::run(bed, running, flows, secs)?;
        let (_, _, disturbed) = spent(&a, &snap(&[], &ours)?);
        return Ok(Sample {
            values: vec![
                r.delivered / 1e6,
                r.offered / 1e6,
                r.lb_cpu * 100.0,
                r.client_cpu * 100.0,
            ],
            disturbed,
            xdp_ns: None,
        });
    }
    // The LB's receive processing (its XDP program, or the kernel's for the others) on
    // the LB's CPU, not in the softirq of whichever CPU sent the packet.
    let pass = napi::pass_links(bed, running)?;
    let rx = napi::LbRx::start(bed, pass)?;
    let (http, iperf) = running.targets(bed);
    let drive = |secs: u32| match workload {
        Workload::Conn => wrk(bed, &http, "/small", CONN_CONCURRENCY, secs, true),
        Workload::KeepAlive => wrk(bed, &http, "/small", KEEPALIVE_CONCURRENCY, secs, false),
        Workload::Download => wrk(bed, &http, "/big", DOWNLOAD_CONCURRENCY, secs, false),
        Workload::Bulk1 => iperf3(bed, iperf, 1, secs).map(bulk_as_wrk),
        Workload::Bulk4 => iperf3(bed, iperf, 4, secs).map(bulk_as_wrk),
        Workload::Pps1
        | Workload::Pps1k
        | Workload::Pps100k
        | Workload::ConnSustained
        | Workload::SynFlood => unreachable!("measured above"),
    };
    if warm > 0 {
        drive(warm).context("the warm-up")?;
    }
    let pids = running.lb_pids();
    let ours = bed.net_inodes();
    let opens0 = TcpCounters::read(&bed.topo.client)?.active_opens;
    let napi0 = rx.ticks();
    let a = snap(&pids, &ours)?;
    let result = drive(secs);
    let b = snap(&pids, &ours)?;
    let napi_secs = rx.ticks().saturating_sub(napi0) as f64 / cpu::ticks_per_sec();
    drop(rx);
    let opens = TcpCounters::read(&bed.topo.client)?
        .active_opens
        .saturating_sub(opens0);
    running.check()?;
    bed.check_servers()?;
    let r = result?;
    let (lb_cpu, softirq, mut disturbed) = spent(&a, &b);
    // The NAPI threads' time is not softirq time in /proc/stat; it is the same work.
    let softirq = softirq + napi_secs;
    let cpu = lb_cpu + softirq;
    let wall = b.at.duration_since(a.at).as_secs_f64();
    if r.requests == 0 && r.bytes == 0 {
        bail!("no traffic went through in {wall:.1} s");
    }
    if r.errors * 100 > r.requests.max(1) {
        bail!(
            "{} of {} requests failed (connect, read, write, timeout or non-2xx)",
            r.errors,
            r.requests
        );
    }
    let values = match workload {
        Workload::Conn => {
            // wrk must really open a connection per request.
            if (opens as f64) < 0.95 * r.requests as f64 {
                bail!(
                    "wrk opened {opens} connections for {} requests: it does not reconnect per request",
                    r.requests
                );
            }
            let k = r.requests as f64 / 1000.0;
            vec![
                r.requests as f64 / r.secs,
                r.p50_ms,
                r.p99_ms,
                cpu / k,
                lb_cpu / k,
                softirq / k,
            ]
        }
        Workload::KeepAlive => {
            if opens > 4 * KEEPALIVE_CONCURRENCY as u64 {
                disturbed = Some(format!(
                    "{opens} connections opened for {KEEPALIVE_CONCURRENCY} kept-alive ones"
                ));
            }
            vec![
                r.requests as f64 / r.secs,
                r.p99_ms,
                cpu / (r.requests as f64 / 1000.0),
            ]
        }
        Workload::Pps1
        | Workload::Pps1k
        | Workload::Pps100k
        | Workload::ConnSustained
        | Workload::SynFlood => unreachable!("measured above"),
        Workload::Bulk1 | Workload::Bulk4 | Workload::Download => {
            let gb = r.bytes as f64 / 1e9;
            vec![r.bytes as f64 * 8.0 / r.secs / 1e9, cpu / gb]
        }
    };
    Ok(Sample {
        values,
        disturbed,
        xdp_ns: None,
    })
}

fn bulk_as_wrk((bytes, secs): (u64, f64)) -> Wrk {
    Wrk {
        requests: 0,
        bytes,
        secs,
        errors: 0,
        p50_ms: 0.0,
        p99_ms: 0.0,
    }
}
