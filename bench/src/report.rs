//! The bench's output: one JSON object per figure (`.jsonl`), a Markdown report with
//! every figure, the lb/peer ratios and the targets (`.md`), and a chart of the
//! main ratios (`.png`).

use crate::bed::BackendCpu;
use crate::figure::{Figure, num};
use crate::systems::System;
use crate::workloads::{Metric, Workload};
use crate::{failover, maglev, path_cost};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// What the report says about the run itself.
pub struct Meta {
    pub date: String,
    pub host: String,
    pub kernel: String,
    pub cpu: String,
    pub command: String,
    pub secs: u32,
    pub repeats: usize,
    pub elapsed_secs: f64,
    /// Systems as selected, with their state (`ok`, `not built yet ...`).
    pub systems: Vec<(System, String)>,
    pub workloads: Vec<Workload>,
    /// Where the backends' servers ran.
    pub backend_cpu: BackendCpu,
    /// `--filter-flood`: the SYN flood was dropped by lb's security group, so
    /// `synflood` measured the machine's bound, not lb's answer to a flood.
    pub flood_filtered: bool,
    pub notes: Vec<String>,
}

/// Writes one line per figure (`"kind": "figure"`), then one per lb/peer ratio
/// (`"kind": "ratio"`).
pub fn write_jsonl(path: &Path, figures: &[Figure]) -> Result<()> {
    let mut out = String::new();
    for f in figures {
        let v = serde_json::json!({
            "kind": "figure",
            "system": f.system.name(),
            "workload": f.workload,
            "metric": f.metric.name,
            "median": f.median,
            "min": f.min,
            "max": f.max,
            "unit": f.metric.unit,
            "repeats": f.repeats,
            "discarded": f.discarded,
            "higher_is_better": f.metric.higher_is_better,
            "status": f.status,
        });
        out.push_str(&v.to_string());
        out.push('\n');
    }
    let systems: Vec<System> = figures.iter().fold(Vec::new(), |mut v, f| {
        if !v.contains(&f.system) {
            v.push(f.system);
        }
        v
    });
    for lb in systems.iter().filter(|s| s.is_lb()) {
        for peer in systems.iter().filter(|s| !s.is_lb()) {
            for f in figures.iter().filter(|f| f.system == *lb) {
                if let Some(r) = ratio(figures, *lb, *peer, &f.workload, f.metric.name) {
                    let v = serde_json::json!({
                        "kind": "ratio",
                        "system": lb.name(),
                        "peer": peer.name(),
                        "workload": f.workload,
                        "metric": f.metric.name,
                        "ratio": r,
                        "higher_is_better": f.metric.higher_is_better,
                    });
                    out.push_str(&v.to_string());
                    out.push('\n');
                }
            }
        }
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

fn find<'a>(figures: &'a [Figure], s: System, w: &str, m: &str) -> Option<&'a Figure> {
    figures
        .iter()
        .find(|f| f.system == s && f.workload == w && f.metric.name == m)
}

fn value(figures: &[Figure], s: System, w: &str, m: &str) -> Option<f64> {
    find(figures, s, w, m)
        .filter(|f| f.ok())
        .and_then(|f| f.median)
}

/// lb/peer for a figure, when both were measured.
pub fn ratio(figures: &[Figure], lb: System, peer: System, w: &str, m: &str) -> Option<f64> {
    let (a, b) = (value(figures, lb, w, m)?, value(figures, peer, w, m)?);
    (b != 0.0).then(|| a / b)
}

/// Short form of a figure's status for a table cell.
fn cell(f: Option<&Figure>) -> String {
    match f {
        None => "–".into(),
        Some(f) if f.ok() => {
            let (m, lo, hi) = (
                f.median.unwrap_or(0.0),
                f.min.unwrap_or(0.0),
                f.max.unwrap_or(0.0),
            );
            format!("{} ({}–{})", num(m), num(lo), num(hi))
        }
        Some(f) if f.status.starts_with("not built") => "not built yet".into(),
        Some(f) if f.status.starts_with("n/a") => "n/a".into(),
        Some(f) if f.status.starts_with("todo") => "TODO".into(),
        Some(_) => "failed".into(),
    }
}

/// The (workload, metric) rows in table order.
fn rows(figures: &[Figure], meta: &Meta) -> Vec<(String, Metric)> {
    let mut rows: Vec<(String, Metric)> = Vec::new();
    for f in figures {
        if !rows
            .iter()
            .any(|(w, m)| *w == f.workload && m.name == f.metric.name)
            && (meta.workloads.iter().any(|w| w.name() == f.workload))
        {
            rows.push((f.workload.clone(), f.metric));
        }
    }
    rows
}

/// Metrics that explain a run rather than rate a system: in the figures, not the ratios.
const DIAGNOSTICS: &[&str] = &[
    "offered",
    "lb_cpu_busy",
    "client_cpu_busy",
    "lb_cpu_busy_base",
    "client_cpu_busy_base",
    "napi_cpu",
    "syn_offered",
    "syn_in",
    "syn_burst",
];

/// The issues' targets: (what, lb system, peer, workload, metric, bound, at least?). The
/// bound is on lb / peer, or on lb's own figure without a peer.
type Target = (
    &'static str,
    System,
    Option<System>,
    &'static str,
    &'static str,
    f64,
    bool,
);
const TARGETS: &[Target] = &[
    (
        "long flows kept when an LB host dies behind ECMP, dsr (%)",
        System::LbDsr,
        None,
        "failover",
        "flows_kept",
        100.0,
        true,
    ),
    (
        "router withdraws a dead LB host within the BGP hold time + 1 s, dsr (s)",
        System::LbDsr,
        None,
        "failover",
        "withdraw",
        4.0,
        false,
    ),
    (
        "new conn/s, nat vs no LB",
        System::LbNat,
        Some(System::NoLb),
        "conn",
        "rate",
        0.95,
        true,
    ),
    (
        "new conn/s, nat vs nftables DNAT",
        System::LbNat,
        Some(System::NftDnat),
        "conn",
        "rate",
        1.15,
        true,
    ),
    (
        "new conn/s, nat vs HAProxy",
        System::LbNat,
        Some(System::Haproxy),
        "conn",
        "rate",
        2.5,
        true,
    ),
    (
        "new conn/s, dnat vs nftables DNAT",
        System::LbDnat,
        Some(System::NftDnat),
        "conn",
        "rate",
        1.15,
        true,
    ),
    (
        "CPU per GB, dnat vs nftables DNAT",
        System::LbDnat,
        Some(System::NftDnat),
        "download",
        "cpu",
        1.0,
        false,
    ),
    (
        "new conn/s, dsr vs no LB",
        System::LbDsr,
        Some(System::NoLb),
        "conn",
        "rate",
        0.95,
        true,
    ),
    (
        "CPU per GB, dsr vs nat (the LB host carries only the inbound half)",
        System::LbDsr,
        Some(System::LbNat),
        "download",
        "cpu",
        0.5,
        false,
    ),
    (
        "kept-alive req/s, nat vs no LB",
        System::LbNat,
        Some(System::NoLb),
        "keepalive",
        "rate",
        0.97,
        true,
    ),
    (
        "new conn/s, proxy-v2 vs HAProxy send-proxy-v2",
        System::LbProxyV2,
        Some(System::HaproxyPp2),
        "conn",
        "rate",
        1.5,
        true,
    ),
    (
        "CPU per GB, proxy-v2 vs HAProxy send-proxy-v2",
        System::LbProxyV2,
        Some(System::HaproxyPp2),
        "download",
        "cpu",
        0.5,
        false,
    ),
    (
        "new conn/s, proxy-v2 sockmap vs HAProxy send-proxy-v2",
        System::LbProxyV2Sockmap,
        Some(System::HaproxyPp2),
        "conn",
        "rate",
        1.5,
        true,
    ),
    (
        "CPU per GB, proxy-v2 sockmap vs HAProxy send-proxy-v2",
        System::LbProxyV2Sockmap,
        Some(System::HaproxyPp2),
        "download",
        "cpu",
        0.5,
        false,
    ),
    (
        "XDP packet rate, 1 flow, nat vs bare XDP redirect",
        System::LbNat,
        Some(System::XdpBare),
        "pps-1",
        "rate",
        0.85,
        true,
    ),
    (
        "XDP packet rate, 1,000 flows, nat vs bare XDP redirect",
        System::LbNat,
        Some(System::XdpBare),
        "pps-1k",
        "rate",
        0.85,
        true,
    ),
    (
        "XDP packet rate, 100,000 flows, nat vs bare XDP redirect",
        System::LbNat,
        Some(System::XdpBare),
        "pps-100k",
        "rate",
        0.85,
        true,
    ),
    (
        "ns per packet in lb_xdp, established forward (xdp-path)",
        System::LbNat,
        None,
        path_cost::WORKLOAD,
        "established_forward",
        100.0,
        false,
    ),
    (
        "ns per packet in lb_xdp, a short connection's segments on average (xdp-path)",
        System::LbNat,
        None,
        path_cost::WORKLOAD,
        "short_connection",
        400.0,
        false,
    ),
    (
        "ns per packet in lb_xdp under traffic, download (established flows)",
        System::LbNat,
        None,
        "download",
        "xdp_ns_per_packet",
        100.0,
        false,
    ),
    (
        "ns per packet in lb_xdp under traffic, conn (short connections)",
        System::LbNat,
        None,
        "conn",
        "xdp_ns_per_packet",
        400.0,
        false,
    ),
    (
        "sustained new conn/s (ports reused), nat vs nftables full NAT",
        System::LbNat,
        Some(System::NftFullnat),
        "conn-sustained",
        "rate",
        1.15,
        true,
    ),
    (
        "new conn/s during a SYN flood, nat, as a share of its own without",
        System::LbNat,
        None,
        "synflood",
        "ratio",
        0.8,
        true,
    ),
];

pub fn markdown(meta: &Meta, figures: &[Figure]) -> String {
    let mut s = String::new();
    let w = &mut s;
    let systems: Vec<System> = meta.systems.iter().map(|(s, _)| *s).collect();
    writeln!(w, "# lb benchmark, {} on `{}`\n", meta.date, meta.host).unwrap();
    writeln!(
        w,
        "- command: `{}`\n- machine: {}, kernel {}, {} CPUs\n- {} s measured per run, after {} s of the same traffic unmeasured (`--quick`: none; `conn-sustained` and `synflood` as their descriptions say), {} repeats per figure (median, with min–max), systems interleaved round by round; whole run {:.0} s",
        meta.command,
        meta.cpu,
        meta.kernel,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        meta.secs,
        crate::workloads::DEFAULT_SECS.0,
        meta.repeats,
        meta.elapsed_secs
    )
    .unwrap();
    writeln!(
        w,
        "- pinning: the client's load generators (wrk with 3 threads, iperf3) run on CPU 0 and the load balancers' processes (HAProxy, nginx, lb's daemon) on CPU 1 (taskset), so a user-space proxy does not compete with the client for a core; {}. Kernel paths (lb's XDP program, nftables, plain forwarding) run where the LB's veths receive: in every connection workload (`conn`, `keepalive`, `download`, `bulk1`, `bulk4`, `conn-sustained`, `synflood`) both of the LB's veths receive in NAPI kernel threads pinned to CPU 1, with `bench_pass` on both for systems without an XDP program of their own (a veth has a NAPI only with one), so every system's receive processing runs on the LB's CPU, not in the softirq of the CPU that sent the packet. In the packet-rate workloads the generator runs on CPU 0 and the LB's client-side veth receives in a NAPI kernel thread pinned to CPU 1. The SYN flood's generator runs on CPU 0 beside wrk.\n\
         - equal terms: one topology for every system (client, LB host, switch, 3 backends in network namespaces, veths), an XDP program on each of the LB's veth peers (`xdp_pass` on the client's end; on the switch's end the packet-rate sink, which passes all other traffic) and tx checksumming off on the client's and backends' veths (see TOOLCHAIN.md) whichever system runs.\n\
         - CPU = CPU time of the LB's processes + machine-wide softirq time (from /proc/stat; this kernel samples softirq time on ticks, CONFIG_IRQ_TIME_ACCOUNTING is off) + the LB's NAPI threads' time (`softirq` includes them: the same work in a thread), per 1000 connections or requests, or per GB. Softirq includes the client's and backends' own network processing, so compare against no-lb, which has only that.\n\
         - disturbed runs (machine busy before the run, stolen time, or a result more than 25% off the median of its repeats) are thrown away and run again.",
        meta.backend_cpu.describe()
    )
    .unwrap();
    writeln!(
        w,
        "- settings: lb at its default timeouts; HAProxy `nbthread 1`, nginx stream `worker_processes 1` (one core of two is theirs); nftables and conntrack at their defaults (nft-fullnat masquerades to the LB's backend-side address); client namespace `ip_local_port_range 1024 65000`, `tcp_tw_reuse 1`; LB namespace `ip_local_port_range 32768 65000` (above lb's SNAT ports), `tcp_tw_reuse 1`, `somaxconn` and `tcp_max_syn_backlog` 8192, as on the backends."
    )
    .unwrap();
    for n in &meta.notes {
        writeln!(w, "- {n}").unwrap();
    }

    writeln!(w, "\n## Systems\n").unwrap();
    for (sys, state) in &meta.systems {
        let state = if state != "ok" {
            format!(" — **{state}**")
        } else if let Some(why) = all_failed(figures, *sys) {
            format!(" — **{why}**")
        } else {
            String::new()
        };
        writeln!(w, "- `{}`: {}{state}", sys.name(), sys.describe()).unwrap();
    }
    writeln!(w, "\n## Workloads\n").unwrap();
    for wl in &meta.workloads {
        writeln!(w, "- `{}`: {}", wl.name(), wl.describe()).unwrap();
    }

    writeln!(w, "\n## Figures: median (min–max)\n").unwrap();
    table_head(w, "unit", &systems);
    let rows = rows(figures, meta);
    for (wl, m) in &rows {
        write!(w, "| {wl} | {} | {} |", m.name, m.unit).unwrap();
        for sys in &systems {
            write!(w, " {} |", cell(find(figures, *sys, wl, m.name))).unwrap();
        }
        writeln!(w).unwrap();
    }

    for lb in systems.iter().filter(|s| s.is_lb()) {
        let peers: Vec<System> = systems.iter().copied().filter(|s| !s.is_lb()).collect();
        writeln!(w, "\n## Ratios {} / peer\n", lb.name()).unwrap();
        let state = meta
            .systems
            .iter()
            .find(|(s, _)| s == lb)
            .map(|(_, st)| st.as_str())
            .unwrap_or("");
        if state != "ok" {
            writeln!(w, "{}: {state}.", lb.name()).unwrap();
            continue;
        }
        if let Some(why) = all_failed(figures, *lb) {
            writeln!(w, "{}: no figures, {why}", lb.name()).unwrap();
            continue;
        }
        writeln!(
            w,
            "Above 1 is better for lb where more is better (rates, throughput), below 1 where less is (latency, CPU).\n"
        )
        .unwrap();
        table_head(w, "better", &peers);
        for (wl, m) in &rows {
            let ratios: Vec<Option<f64>> = peers
                .iter()
                .map(|p| ratio(figures, *lb, *p, wl, m.name))
                .collect();
            // Rows this lb system has no ratio in, and the packet-rate runs' diagnostics
            // (what was offered, how busy each CPU was), which are no figure of merit.
            if ratios.iter().all(Option::is_none) || DIAGNOSTICS.contains(&m.name) {
                continue;
            }
            let better = if m.higher_is_better {
                "higher"
            } else {
                "lower"
            };
            write!(w, "| {wl} | {} | {better} |", m.name).unwrap();
            for r in ratios {
                let r = r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "–".into());
                write!(w, " {r} |").unwrap();
            }
            writeln!(w).unwrap();
        }
    }

    writeln!(w, "\n## Targets (issues 5, 11, 13, 14 and 17)\n").unwrap();
    writeln!(w, "| target | value | goal | met |\n|---|---|---|---|").unwrap();
    for (what, lb, peer, wl, m, bound, at_least) in TARGETS {
        let goal = format!("{} {bound}", if *at_least { "≥" } else { "≤" });
        let measured = match peer {
            Some(peer) => ratio(figures, *lb, *peer, wl, m),
            None => value(figures, *lb, wl, m),
        };
        let (v, met) = match measured {
            Some(r) => (
                // Ratios to two places; ns, % and the like, whose goals are large, whole.
                if *bound >= 10.0 {
                    format!("{r:.0}")
                } else {
                    format!("{r:.2}")
                },
                if (*at_least && r >= *bound) || (!*at_least && r <= *bound) {
                    "yes"
                } else {
                    "**no**"
                },
            ),
            None if meta.systems.iter().any(|(s, st)| s == lb && st != "ok") => {
                ("not built yet".into(), "–")
            }
            None => ("not measured".into(), "–"),
        };
        if meta.flood_filtered && *wl == "synflood" {
            writeln!(
                w,
                "| {what} | {v} with `--filter-flood`: the machine's bound, not lb's figure | {goal} | – |"
            )
            .unwrap();
            continue;
        }
        writeln!(w, "| {what} | {v} | {goal} | {met} |").unwrap();
    }
    // Extra CPU per 1000 connections over the ceiling: lb's at most a third of nft's.
    let extra = |s: System| {
        Some(value(figures, s, "conn", "cpu")? - value(figures, System::NoLb, "conn", "cpu")?)
    };
    match (extra(System::LbNat), extra(System::NftDnat)) {
        (Some(l), Some(n)) if n > 0.0 => {
            let r = l / n;
            writeln!(
                w,
                "| extra CPU per 1k conn over no LB, nat vs nftables ({} vs {} CPU-s) | {r:.2} | ≤ 0.33 | {} |",
                num(l),
                num(n),
                if r <= 1.0 / 3.0 { "yes" } else { "**no**" }
            )
            .unwrap();
        }
        _ => writeln!(
            w,
            "| extra CPU per 1k conn over no LB, nat vs nftables | not measured | ≤ 0.33 | – |"
        )
        .unwrap(),
    }

    let other = figures
        .iter()
        .filter(|f| f.ok() && !meta.workloads.iter().any(|w| w.name() == f.workload))
        .filter(|f| f.workload != maglev::WORKLOAD && f.workload != failover::WORKLOAD);
    if list(w, "Cost series", other, |f| {
        format!("{} {}", num(f.median.unwrap_or(0.0)), f.metric.unit)
    }) {
        writeln!(
            w,
            "\n  memory_per_flow: the flow table's and the reverse NAT table's kernel memory per entry (bpftool's `bytes_memlock` / `max_entries`; a NAT flow takes one entry in each)."
        )
        .unwrap();
    }
    w.push_str(&maglev::markdown(figures));
    w.push_str(&failover::markdown(figures));
    let todos = figures.iter().filter(|f| f.status.starts_with("todo"));
    list(w, "TODO (not measured yet)", todos, |f| {
        f.status.trim_start_matches("todo: ").to_owned()
    });
    let failed: Vec<&Figure> = figures
        .iter()
        .filter(|f| f.status.starts_with("failed"))
        .collect();
    if !failed.is_empty() {
        writeln!(w, "\n## Failures\n").unwrap();
        // One line per system and reason, with the workloads it hit.
        let mut seen: Vec<(System, String, Vec<String>)> = Vec::new();
        for f in failed {
            let why = one_line(&f.status);
            match seen
                .iter_mut()
                .find(|(s, w, _)| *s == f.system && *w == why)
            {
                Some((_, _, wls)) if !wls.contains(&f.workload) => wls.push(f.workload.clone()),
                Some(_) => {}
                None => seen.push((f.system, why, vec![f.workload.clone()])),
            }
        }
        for (sys, why, wls) in seen {
            writeln!(w, "- `{}` ({}): {why}", sys.name(), wls.join(", ")).unwrap();
        }
    }
    s
}

/// A table's header: workload, metric, `third`, then a column per system.
fn table_head(w: &mut String, third: &str, systems: &[System]) {
    write!(w, "| workload | metric | {third} |").unwrap();
    for s in systems {
        write!(w, " {} |", s.name()).unwrap();
    }
    write!(w, "\n|---|---|---|").unwrap();
    for _ in systems {
        write!(w, "---|").unwrap();
    }
    writeln!(w).unwrap();
}

/// A section with a line per figure (`- workload / metric (system): detail`) if there
/// is any figure; returns whether there was.
fn list<'a>(
    w: &mut String,
    heading: &str,
    figures: impl IntoIterator<Item = &'a Figure>,
    detail: impl Fn(&Figure) -> String,
) -> bool {
    let mut any = false;
    for f in figures {
        if !any {
            writeln!(w, "\n## {heading}\n").unwrap();
            any = true;
        }
        writeln!(
            w,
            "- `{}` / `{}` ({}): {}",
            f.workload,
            f.metric.name,
            f.system.name(),
            detail(f)
        )
        .unwrap();
    }
    any
}

/// `text` on one line, whitespace runs collapsed.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Why `system` has no figure at all, if every one of its figures failed.
fn all_failed(figures: &[Figure], system: System) -> Option<String> {
    let of: Vec<&Figure> = figures.iter().filter(|f| f.system == system).collect();
    if of.is_empty() || of.iter().any(|f| !f.status.starts_with("failed")) {
        return None;
    }
    Some(one_line(&of[0].status))
}

/// The chart's groups: (label, workload, metric).
const SPEED: &[(&str, &str, &str)] = &[
    ("new conn/s", "conn", "rate"),
    ("kept-alive req/s", "keepalive", "rate"),
    ("bulk 1 stream", "bulk1", "throughput"),
    ("bulk 4 streams", "bulk4", "throughput"),
    ("download", "download", "throughput"),
    ("pps 1k flows", "pps-1k", "rate"),
];
const COST: &[(&str, &str, &str)] = &[
    ("CPU/1k conn", "conn", "cpu"),
    ("CPU/1k req", "keepalive", "cpu"),
    ("CPU/GB bulk 4", "bulk4", "cpu"),
    ("CPU/GB download", "download", "cpu"),
];

/// Font the chart's text uses (Debian's fonts-dejavu-core).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Grouped bars of lb-nat / peer: speed (higher is better) and CPU cost (lower is).
/// Draws the chart at `path`; false, with nothing written, when lb-nat has no ratio to
/// any peer in it (a run of other systems, or of lb-nat alone): an empty chart says
/// nothing.
pub fn chart(path: &Path, meta: &Meta, figures: &[Figure]) -> Result<bool> {
    use plotters::prelude::*;
    static FONT_SET: std::sync::Once = std::sync::Once::new();
    let mut font_err = None;
    FONT_SET.call_once(|| {
        match std::fs::read(FONT) {
            Ok(bytes) => {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_err() {
                    font_err = Some(format!("{FONT} is not a usable font"));
                }
            }
            Err(e) => font_err = Some(format!("reading {FONT}: {e}")),
        };
    });
    if let Some(e) = font_err {
        anyhow::bail!("{e} (install fonts-dejavu-core)");
    }
    let lb = System::LbNat;
    let peers: Vec<System> = meta
        .systems
        .iter()
        .filter(|(s, st)| !s.is_lb() && st == "ok")
        .map(|(s, _)| *s)
        .collect();
    let any_bar = SPEED.iter().chain(COST).any(|(_, wl, m)| {
        peers
            .iter()
            .any(|p| ratio(figures, lb, *p, wl, m).is_some())
    });
    if !any_bar {
        return Ok(false);
    }
    let colors = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    let root = BitMapBackend::new(path, (1400, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (title, body) = root.split_vertically(50);
    title
        .draw(&Text::new(
            format!(
                "lb-nat / peer, {} on {} ({} s x {} repeats, medians)",
                meta.date, meta.host, meta.secs, meta.repeats
            ),
            (20, 15),
            ("sans-serif", 22).into_font(),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (left, right) = body.split_horizontally(780);
    for (area, groups, caption) in [
        (&left, SPEED, "speed (higher is better for lb)"),
        (&right, COST, "CPU cost (lower is better for lb)"),
    ] {
        let mut top: f64 = 1.2;
        for (_, wl, m) in groups {
            for p in &peers {
                if let Some(r) = ratio(figures, lb, *p, wl, m) {
                    top = top.max(r * 1.35);
                }
            }
        }
        let n = groups.len();
        let labels: Vec<&str> = groups.iter().map(|g| g.0).collect();
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                    labels[i as usize].to_string()
                } else {
                    String::new()
                }
            })
            .x_label_style(("sans-serif", 14))
            .y_desc("ratio")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let width = 0.8 / peers.len().max(1) as f64;
        for (pi, p) in peers.iter().enumerate() {
            let color = colors[pi % colors.len()];
            let bars: Vec<Rectangle<(f64, f64)>> = groups
                .iter()
                .enumerate()
                .filter_map(|(gi, (_, wl, m))| {
                    let r = ratio(figures, lb, *p, wl, m)?;
                    let x0 = gi as f64 - 0.4 + pi as f64 * width;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.9, r)],
                        color.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(p.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .draw_series(LineSeries::new(
                [(-0.5, 1.0), (n as f64 - 0.5, 1.0)],
                BLACK.stroke_width(1),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(true)
}
