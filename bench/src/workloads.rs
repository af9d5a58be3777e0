//! The workloads: each one bounded run of a real client (wrk, iperf3) in the client
//! namespace, pinned to its CPU, with the CPU the LB spent meanwhile.

use crate::bed::{Bed, CLIENT_CPU, Proc, pinned};
use crate::cpu::{self, Stat};
use crate::pps;
use crate::systems::{Running, System};
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
}

pub const ALL: [Workload; 8] = [
    Workload::Conn,
    Workload::KeepAlive,
    Workload::Bulk1,
    Workload::Bulk4,
    Workload::Download,
    Workload::Pps1,
    Workload::Pps1k,
    Workload::Pps100k,
];

/// wrk's threads, one per backend (all on the client's CPU): without a load balancer
/// each thread talks to its own backend.
pub const CLIENT_THREADS: u32 = 3;
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
        }
    }

    pub fn describe(self) -> String {
        match self {
            Workload::Conn => format!(
                "new connections: wrk, {CLIENT_THREADS} threads, {CONN_CONCURRENCY} connections, `Connection: close` (a new TCP connection per request, checked against the client's TcpActiveOpens), GET /small (128 B)"
            ),
            Workload::KeepAlive => format!(
                "kept-alive requests: wrk, {CLIENT_THREADS} threads, {KEEPALIVE_CONCURRENCY} connections, GET /small (128 B)"
            ),
            Workload::Bulk1 => "bulk, 1 stream: iperf3 -P 1 through the VIP to b1".into(),
            Workload::Bulk4 => "bulk, 4 streams: iperf3 -P 4 through the VIP to b1".into(),
            Workload::Download => format!(
                "HTTP download: wrk, {CLIENT_THREADS} threads, {DOWNLOAD_CONCURRENCY} kept-alive connections, GET /big (64 MiB); the bulk figure every system has, PROXY ones included"
            ),
            Workload::Pps1 | Workload::Pps1k | Workload::Pps100k => format!(
                "packet rate, {} concurrent flows: 64-byte TCP frames from an XDP generator (BPF_PROG_TEST_RUN live frames, XDP_TX on the client's veth, on the client's CPU), counted and dropped by an XDP sink on the switch's end of the LB's backend-side veth; `rate` = frames that came out, `offered` = frames sent",
                self.pps_flows().unwrap_or(0)
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
        match self {
            Workload::Conn => CONN,
            Workload::KeepAlive => KEEPALIVE,
            Workload::Bulk1 | Workload::Bulk4 | Workload::Download => BULK,
            Workload::Pps1 | Workload::Pps1k | Workload::Pps100k => PPS,
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
}

/// Writes wrk's result as one JSON line when the run ends (wrk's own summary rounds).
const WRK_DONE: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"bytes":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"#;

/// wrk's result.
#[derive(Debug, PartialEq)]
struct Wrk {
    requests: u64,
    bytes: u64,
    secs: f64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
}

fn parse_wrk(out: &str) -> Result<Wrk> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .with_context(|| format!("wrk printed no result line:\n{out}"))?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok(Wrk {
        requests: n("requests") as u64,
        bytes: n("bytes") as u64,
        secs: n("duration_us") / 1e6,
        errors: ["connect", "read", "write", "status", "timeout"]
            .iter()
            .map(|k| n(k) as u64)
            .sum(),
        p50_ms: n("p50_us") / 1e3,
        p99_ms: n("p99_us") / 1e3,
    })
}

/// iperf3's result: bytes received and seconds.
fn parse_iperf3(out: &str) -> Result<(u64, f64)> {
    let v: serde_json::Value =
        serde_json::from_str(out).with_context(|| format!("iperf3 printed no JSON:\n{out}"))?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let s = &v["end"]["sum_received"];
    let bytes = s["bytes"]
        .as_f64()
        .with_context(|| format!("no end.sum_received.bytes in iperf3's output:\n{out}"))?;
    let secs = s["seconds"].as_f64().unwrap_or(0.0);
    if secs <= 0.0 {
        bail!("iperf3 reports {secs} s:\n{out}");
    }
    Ok((bytes as u64, secs))
}

/// The client namespace's TcpActiveOpens (connections it opened).
fn active_opens(bed: &Bed) -> Result<u64> {
    let snmp = bed.topo.client.exec("cat", &["/proc/net/snmp"])?;
    parse_active_opens(&snmp).context("no Tcp: ActiveOpens in /proc/net/snmp")
}

fn parse_active_opens(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let i = names.split_whitespace().position(|n| n == "ActiveOpens")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// CPU counters at one instant.
struct Snap {
    stat: Stat,
    lb_ticks: u64,
    foreign_ticks: u64,
    at: Instant,
}

fn snap(pids: &[u32], ours: &[u64]) -> Result<Snap> {
    Ok(Snap {
        stat: Stat::read()?,
        lb_ticks: pids.iter().map(|p| cpu::process_ticks(*p)).sum(),
        foreign_ticks: cpu::foreign_ticks(ours),
        at: Instant::now(),
    })
}

/// Share of all CPU time that processes other than the bench's may take during a run
/// before it counts as disturbed.
const MAX_FOREIGN: f64 = 0.05;

/// CPU spent between two snapshots: (LB processes, softirq) in seconds, and whether
/// the hypervisor stole a noticeable share or other processes competed.
fn spent(a: &Snap, b: &Snap) -> (f64, f64, Option<String>) {
    let hz = cpu::ticks_per_sec();
    let d = b.stat.since(&a.stat);
    let steal = d.steal as f64 / d.total().max(1) as f64;
    let foreign = b.foreign_ticks.saturating_sub(a.foreign_ticks) as f64 / d.total().max(1) as f64;
    let disturbed = if steal > 0.02 {
        Some(format!("{:.0}% of CPU time stolen", steal * 100.0))
    } else if foreign > MAX_FOREIGN {
        Some(format!(
            "other processes took {:.0}% of CPU time during the run",
            foreign * 100.0
        ))
    } else {
        None
    };
    (
        b.lb_ticks.saturating_sub(a.lb_ticks) as f64 / hz,
        d.softirq as f64 / hz,
        disturbed,
    )
}

/// Runs `workload` once for `secs` against `running`.
pub fn run(workload: Workload, bed: &mut Bed, running: &mut Running, secs: u32) -> Result<Sample> {
    if let Some(flows) = workload.pps_flows() {
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
        });
    }
    let (http, iperf) = running.targets(bed);
    let pids = running.lb_pids();
    let ours = bed.net_inodes();
    let opens0 = active_opens(bed)?;
    let a = snap(&pids, &ours)?;
    let result = match workload {
        Workload::Conn => wrk(bed, &http, "/small", CONN_CONCURRENCY, secs, true),
        Workload::KeepAlive => wrk(bed, &http, "/small", KEEPALIVE_CONCURRENCY, secs, false),
        Workload::Download => wrk(bed, &http, "/big", DOWNLOAD_CONCURRENCY, secs, false),
        Workload::Bulk1 => iperf3(bed, iperf, 1, secs).map(bulk_as_wrk),
        Workload::Bulk4 => iperf3(bed, iperf, 4, secs).map(bulk_as_wrk),
        Workload::Pps1 | Workload::Pps1k | Workload::Pps100k => unreachable!("measured above"),
    };
    let b = snap(&pids, &ours)?;
    let opens = active_opens(bed)?.saturating_sub(opens0);
    running.check()?;
    bed.check_servers()?;
    let r = result?;
    let (lb_cpu, softirq, mut disturbed) = spent(&a, &b);
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
        Workload::Pps1 | Workload::Pps1k | Workload::Pps100k => unreachable!("measured above"),
        Workload::Bulk1 | Workload::Bulk4 | Workload::Download => {
            let gb = r.bytes as f64 / 1e9;
            vec![r.bytes as f64 * 8.0 / r.secs / 1e9, cpu / gb]
        }
    };
    Ok(Sample { values, disturbed })
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

/// The Lua script: thread i connects to `to[i]` (wrk's `thread.addr`), `Connection:
/// close` if asked, and the result line at the end.
fn wrk_script(to: &[SocketAddr], close: bool) -> String {
    let mut s = String::new();
    if close {
        s.push_str("wrk.headers[\"Connection\"] = \"close\"\n");
    }
    let list: Vec<String> = to
        .iter()
        .map(|a| format!("{{\"{}\", \"{}\"}}", a.ip(), a.port()))
        .collect();
    s.push_str(&format!(
        "local targets = {{{}}}\nlocal n = 0\n\
         setup = function(thread)\n  n = n + 1\n  local t = targets[(n - 1) % #targets + 1]\n\
         \x20 thread.addr = wrk.lookup(t[1], t[2])[1]\nend\n",
        list.join(", ")
    ));
    s.push_str(WRK_DONE);
    s
}

fn wrk(
    bed: &Bed,
    to: &[SocketAddr],
    path: &str,
    conns: u32,
    secs: u32,
    close: bool,
) -> Result<Wrk> {
    let script = bed.path("wrk.lua");
    std::fs::write(&script, wrk_script(to, close))?;
    let mut c = pinned(&bed.topo.client, CLIENT_CPU, "wrk");
    c.args([
        &format!("-t{CLIENT_THREADS}"),
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--timeout",
        "5s",
        "-s",
    ])
    .arg(&script)
    .arg(format!("http://{}{path}", to[0]));
    let out = bounded(bed, "wrk", c, secs)?;
    parse_wrk(&out)
}

fn iperf3(bed: &Bed, to: SocketAddr, streams: u32, secs: u32) -> Result<(u64, f64)> {
    let mut c = pinned(&bed.topo.client, CLIENT_CPU, "iperf3");
    c.args([
        "-c",
        &to.ip().to_string(),
        "-p",
        &to.port().to_string(),
        "-t",
        &secs.to_string(),
        "-P",
        &streams.to_string(),
        "-J",
        "--connect-timeout",
        "3000",
    ]);
    let out = bounded(bed, "iperf3", c, secs)?;
    parse_iperf3(&out)
}

/// Runs a load generator for its `secs` (plus 20 s of grace, then it is killed) and
/// returns its output; a non-zero exit is an error.
fn bounded(bed: &Bed, what: &str, cmd: std::process::Command, secs: u32) -> Result<String> {
    let log = bed.path(&format!("{what}.out"));
    let mut p = Proc::spawn(what, cmd, &log)?;
    let status = p.wait(Duration::from_secs(secs as u64 + 20))?;
    let out = p.output();
    if !status.success() {
        bail!("{what} exited with {status}:\n{out}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_result_line() {
        let out = "Running 1s test @ http://x\nWRKJSON {\"requests\":1000,\"bytes\":256000,\"duration_us\":2000000,\"connect\":0,\"read\":2,\"write\":0,\"status\":1,\"timeout\":0,\"p50_us\":1500,\"p99_us\":9000}\n";
        let w = parse_wrk(out).unwrap();
        assert_eq!(w.requests, 1000);
        assert_eq!(w.errors, 3);
        assert_eq!(w.secs, 2.0);
        assert_eq!(w.p50_ms, 1.5);
        assert_eq!(w.p99_ms, 9.0);
        assert!(parse_wrk("Running 1s test\n").is_err());
    }

    #[test]
    fn parses_iperf3_json() {
        let out = r#"{"start":{},"end":{"sum_received":{"bytes":1250000000,"seconds":1.0}}}"#;
        assert_eq!(parse_iperf3(out).unwrap(), (1_250_000_000, 1.0));
        let err = parse_iperf3(r#"{"error":"unable to connect to server"}"#).unwrap_err();
        assert!(err.to_string().contains("unable to connect"), "{err}");
    }

    #[test]
    fn wrk_threads_get_their_own_target() {
        let to: Vec<SocketAddr> = ["198.18.1.11:8080", "198.18.1.12:8080"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let s = wrk_script(&to, true);
        assert!(
            s.starts_with("wrk.headers[\"Connection\"] = \"close\""),
            "{s}"
        );
        assert!(
            s.contains(r#"local targets = {{"198.18.1.11", "8080"}, {"198.18.1.12", "8080"}}"#),
            "{s}"
        );
        assert!(s.contains("thread.addr = wrk.lookup(t[1], t[2])[1]"), "{s}");
        assert!(!wrk_script(&to, false).contains("Connection"));
    }

    #[test]
    fn parses_active_opens() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens\nTcp: 1 200 120000 -1 4242 7\n";
        assert_eq!(parse_active_opens(snmp), Some(4242));
    }
}
