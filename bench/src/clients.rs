//! The clients the workloads run in the client namespace, pinned to its CPU: wrk (with
//! a Lua script that prints its result as JSON) and iperf3, each bounded in time, and
//! the client's TCP counters that say how its connections went.

use crate::bed::{Bed, CLIENT_CPU, Proc, pinned};
use anyhow::{Context, Result, bail};
use lb_tests::Netns;
use std::net::SocketAddr;
use std::time::Duration;

/// wrk's threads, one per backend (all on the client's CPU): without a load balancer
/// each thread talks to its own backend.
pub const CLIENT_THREADS: u32 = 3;

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
pub struct Wrk {
    pub requests: u64,
    pub bytes: u64,
    pub secs: f64,
    /// Connect, read, write, timeout and non-2xx errors.
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub fn parse_wrk(out: &str) -> Result<Wrk> {
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
pub fn parse_iperf3(out: &str) -> Result<(u64, f64)> {
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

/// The client namespace's TCP counters that tell how its connections went (what
/// `nstat` shows as TcpActiveOpens, TcpRetransSegs and TcpExtTCPSynRetrans).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TcpCounters {
    /// Connections opened.
    pub active_opens: u64,
    /// Segments sent again, SYNs included.
    pub retrans_segs: u64,
    /// SYNs sent again: a connection whose SYN or SYN-ACK got lost on the way.
    pub syn_retrans: u64,
}

impl TcpCounters {
    pub fn read(ns: &Netns) -> Result<TcpCounters> {
        let snmp = ns.exec("cat", &["/proc/net/snmp"])?;
        let netstat = ns.exec("cat", &["/proc/net/netstat"])?;
        let get = |text: &str, group: &str, name: &str| {
            snmp_value(text, group, name)
                .with_context(|| format!("no {group} {name} in {}", ns.name()))
        };
        Ok(TcpCounters {
            active_opens: get(&snmp, "Tcp:", "ActiveOpens")?,
            retrans_segs: get(&snmp, "Tcp:", "RetransSegs")?,
            syn_retrans: get(&netstat, "TcpExt:", "TCPSynRetrans")?,
        })
    }

    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &TcpCounters) -> TcpCounters {
        TcpCounters {
            active_opens: self.active_opens.saturating_sub(earlier.active_opens),
            retrans_segs: self.retrans_segs.saturating_sub(earlier.retrans_segs),
            syn_retrans: self.syn_retrans.saturating_sub(earlier.syn_retrans),
        }
    }
}

/// A counter of /proc/net/snmp or /proc/net/netstat: a line of names then a line of
/// values, both starting with `group` (`Tcp:`, `TcpExt:`).
fn snmp_value(text: &str, group: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(group));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// wrk's own `resolve` opens a test connection, blocking, before the run and gives up
/// if it fails: during a SYN flood that is a run that never starts, or hangs. The
/// targets are addresses, so the lookup alone does.
const WRK_RESOLVE: &str =
    "function wrk.resolve(host, service)\n  wrk.addrs = wrk.lookup(host, service)\nend\n";

/// The Lua script: no test connection, thread i connects to `to[i]` (wrk's
/// `thread.addr`), `Connection: close` if asked, and the result line at the end.
fn wrk_script(to: &[SocketAddr], close: bool) -> String {
    let mut s = String::from(WRK_RESOLVE);
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

pub fn wrk(
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

pub fn iperf3(bed: &Bed, to: SocketAddr, streams: u32, secs: u32) -> Result<(u64, f64)> {
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
pub fn bounded(bed: &Bed, what: &str, cmd: std::process::Command, secs: u32) -> Result<String> {
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
        assert!(s.starts_with(WRK_RESOLVE), "{s}");
        assert!(
            s.contains("\nwrk.headers[\"Connection\"] = \"close\"\n"),
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
    fn parses_snmp_counters() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens RetransSegs\nTcp: 1 200 120000 -1 4242 7 9\n";
        assert_eq!(snmp_value(snmp, "Tcp:", "ActiveOpens"), Some(4242));
        assert_eq!(snmp_value(snmp, "Tcp:", "RetransSegs"), Some(9));
        assert_eq!(snmp_value(snmp, "Tcp:", "Forwarding"), None);
        let netstat =
            "TcpExt: SyncookiesSent TCPSynRetrans\nTcpExt: 0 17\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(snmp_value(netstat, "TcpExt:", "TCPSynRetrans"), Some(17));
        let a = TcpCounters {
            active_opens: 5,
            retrans_segs: 3,
            syn_retrans: 1,
        };
        let b = TcpCounters {
            active_opens: 9,
            retrans_segs: 3,
            syn_retrans: 4,
        };
        assert_eq!(
            b.since(&a),
            TcpCounters {
                active_opens: 4,
                retrans_segs: 0,
                syn_retrans: 3
            }
        );
    }
}
