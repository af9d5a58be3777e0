//! `lb stats`: the running daemon's report (from its admin API when on, else read from
//! its maps through its runtime record) as a table, as JSON, or as a live view
//! refreshed like `top`.

use crate::api::client;
use crate::api::report::{Counters, HealthReport, Report, ServiceReport, StatsError, collect_from};
use crate::dataplane::runtime::RuntimeRecord;
use lb_common::counters;
use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Collects a report from the daemon running in this network namespace.
pub fn collect() -> Result<Report, StatsError> {
    let rec = RuntimeRecord::read_current()?;
    // The daemon's own report adds what only it knows (health checks, proxied
    // connections); the maps alone still work with the admin API off.
    let socket = client::Target::Socket(crate::dataplane::runtime::admin_socket_path(
        rec.netns_inode,
    ));
    let tcp = rec
        .admin
        .map(|addr| client::Target::Tcp { addr, token: None });
    for target in std::iter::once(socket).chain(tcp) {
        if let Ok(r) = client::get_report(&target) {
            return Ok(r);
        }
    }
    collect_from(&rec)
}

fn interfaces(r: &Report) -> String {
    let ifaces: Vec<String> = r
        .interfaces
        .iter()
        .map(|a| format!("{} ({})", a.iface, a.mode))
        .collect();
    ifaces.join(", ")
}

/// Short health note for a table: the check and, unless it passes, why it fails.
fn health_note(h: &Option<HealthReport>) -> String {
    match h {
        None => String::new(),
        Some(h) => match (&h.reason, h.status.as_str()) {
            (Some(reason), status) if status != "up" => {
                format!("{} {status}: {reason}", h.check)
            }
            (_, status) => format!("{} {status}", h.check),
        },
    }
}

/// Width of the backend column: the longest address, at least `min`.
fn addr_width(r: &Report, min: usize) -> usize {
    r.services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.addr.len()))
        .fold(min, usize::max)
}

/// Human-readable table of a report.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lb pid {} on {}; flows {} of {}; half-open {} ({} expired)",
        r.pid,
        interfaces(r),
        r.flows,
        r.flow_capacity,
        r.half_open,
        r.half_open_expired
    );
    if let Some(table) = r.announce_table {
        let vips: Vec<String> = r.announced.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "announced in table {table}: {}",
            if vips.is_empty() {
                "none".to_string()
            } else {
                vips.join(", ")
            }
        );
    }
    let w = addr_width(r, 21);
    for s in &r.services {
        let _ = writeln!(out, "\nservice {} {} [{}]", s.name, s.vip, s.mode);
        if let Some(p) = &s.proxy {
            let _ = writeln!(out, "  {}", proxy_line(p));
        }
        if let Some(d) = &s.dns {
            let _ = writeln!(out, "  {}", dns_line(d));
        }
        let _ = writeln!(
            out,
            "  {:<w$} {:>6} {:>8} {:>8} {:>10} {:>12} {:>10} {:>12} {:>10}  health",
            "backend",
            "weight",
            "state",
            "active",
            "new flows",
            "pkts in",
            "bytes in",
            "pkts out",
            "bytes out"
        );
        let row = |out: &mut String,
                   name: &str,
                   weight: String,
                   state: &str,
                   active: u64,
                   c: &Counters,
                   health: String| {
            let _ = writeln!(
                out,
                "  {:<w$} {:>6} {:>8} {:>8} {:>10} {:>12} {:>10} {:>12} {:>10}  {}",
                name,
                weight,
                state,
                active,
                c.new_flows,
                c.packets_in,
                human_bytes(c.bytes_in),
                c.packets_out,
                human_bytes(c.bytes_out),
                health
            );
        };
        for b in &s.backends {
            row(
                &mut out,
                &b.addr,
                b.weight.to_string(),
                &b.state,
                b.active_flows,
                &b.counters,
                health_note(&b.health),
            );
        }
        row(
            &mut out,
            "total",
            String::new(),
            "",
            s.active_flows,
            &s.counters,
            String::new(),
        );
        snat_lines(&mut out, s);
    }
    // Trailing spaces of the empty health column are noise.
    let mut out: String = out
        .lines()
        .map(|l| l.trim_end())
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    let _ = writeln!(out, "\npackets");
    for (name, v) in &r.counters {
        let _ = writeln!(out, "  {name:<28} {v:>12}");
    }
    out
}

/// Per-second rate of a counter between two snapshots; `None` without a previous
/// snapshot or elapsed time. A counter that went down (a restarted daemon) counts as 0.
fn rate(prev: Option<u64>, cur: u64, secs: f64) -> Option<f64> {
    let prev = prev?;
    if secs > 0.0 {
        Some(cur.saturating_sub(prev) as f64 / secs)
    } else {
        None
    }
}

/// Rates of a service's or backend's counters.
struct Rates {
    new_flows: Option<f64>,
    bytes_in: Option<f64>,
    bytes_out: Option<f64>,
    packets: Option<f64>,
}

fn rates(prev: Option<&Counters>, cur: &Counters, secs: f64) -> Rates {
    Rates {
        new_flows: rate(prev.map(|p| p.new_flows), cur.new_flows, secs),
        bytes_in: rate(prev.map(|p| p.bytes_in), cur.bytes_in, secs),
        bytes_out: rate(prev.map(|p| p.bytes_out), cur.bytes_out, secs),
        packets: rate(
            prev.map(|p| p.packets_in + p.packets_out),
            cur.packets_in + cur.packets_out,
            secs,
        ),
    }
}

fn fmt_count_rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

fn fmt_byte_rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(v) => human_rate(v),
    }
}

/// Time of day, UTC, HH:MM:SS.
fn clock(t: SystemTime) -> String {
    let s = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

/// One frame of the live view (without the clear-screen sequence): `cur` with rates over
/// `elapsed` since `prev`. Without `prev` (first frame), from another daemon (pid
/// changed), or with zero elapsed time, rates show as "-".
pub fn render_live(prev: Option<&Report>, cur: &Report, elapsed: Duration) -> String {
    render_live_at(prev, cur, elapsed, SystemTime::now())
}

fn render_live_at(
    prev: Option<&Report>,
    cur: &Report,
    elapsed: Duration,
    now: SystemTime,
) -> String {
    let prev = prev.filter(|p| p.pid == cur.pid);
    let secs = elapsed.as_secs_f64();
    let mut out = String::new();
    let occupancy = if cur.flow_capacity > 0 {
        format!(
            " ({:.1}%)",
            cur.flows as f64 * 100.0 / cur.flow_capacity as f64
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "lb pid {} on {}   {}   flows {} of {}{}   half-open {} ({} expired)",
        cur.pid,
        interfaces(cur),
        clock(now),
        cur.flows,
        cur.flow_capacity,
        occupancy,
        cur.half_open,
        cur.half_open_expired
    );
    let w = addr_width(cur, 21);
    let header = format!(
        "  {:<w$} {:>9} {:>6} {:>9} {:>9} {:>10} {:>10} {:>9} {:>10}  {}",
        "backend",
        "state",
        "weight",
        "new/s",
        "active",
        "in B/s",
        "out B/s",
        "pkts/s",
        "new flows",
        "health"
    );
    for s in &cur.services {
        let ps = prev.and_then(|p| p.services.iter().find(|x| x.name == s.name));
        let _ = writeln!(out, "\nservice {} {} [{}]", s.name, s.vip, s.mode);
        if let Some(p) = &s.proxy {
            let _ = writeln!(out, "  {}", proxy_line(p));
        }
        if let Some(d) = &s.dns {
            let _ = writeln!(out, "  {}", dns_line(d));
        }
        let _ = writeln!(out, "{}", header.trim_end());
        let row = |out: &mut String,
                   name: &str,
                   state: &str,
                   weight: String,
                   active: u64,
                   c: &Counters,
                   rt: Rates,
                   health: String| {
            let line = format!(
                "  {:<w$} {:>9} {:>6} {:>9} {:>9} {:>10} {:>10} {:>9} {:>10}  {}",
                name,
                state,
                weight,
                fmt_count_rate(rt.new_flows),
                active,
                fmt_byte_rate(rt.bytes_in),
                fmt_byte_rate(rt.bytes_out),
                fmt_count_rate(rt.packets),
                c.new_flows,
                health
            );
            let _ = writeln!(out, "{}", line.trim_end());
        };
        for b in &s.backends {
            let pb = ps.and_then(|p| p.backends.iter().find(|x| x.addr == b.addr));
            row(
                &mut out,
                &b.addr,
                &b.state,
                b.weight.to_string(),
                b.active_flows,
                &b.counters,
                rates(pb.map(|p| &p.counters), &b.counters, secs),
                health_note(&b.health),
            );
        }
        row(
            &mut out,
            "total",
            "",
            String::new(),
            s.active_flows,
            &s.counters,
            rates(ps.map(|p| &p.counters), &s.counters, secs),
            String::new(),
        );
        snat_lines(&mut out, s);
    }
    let counter_rate = |name: &str, v: u64| {
        fmt_count_rate(rate(
            prev.and_then(|p| p.counters.get(name).copied()),
            v,
            secs,
        ))
    };
    let get = |name: &str| cur.counters.get(name).copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "\npackets/s: forwarded in {}  out {}  passed {}",
        counter_rate("forwarded_in", get("forwarded_in")),
        counter_rate("forwarded_out", get("forwarded_out")),
        counter_rate("passed", get("passed")),
    );
    let drops: Vec<(&String, &str, &u64)> = cur
        .counters
        .iter()
        .filter(|(_, v)| **v > 0)
        .filter_map(|(n, v)| Some((n, counters::by_name(n)?.drop_reason()?, v)))
        .collect();
    if drops.is_empty() {
        let _ = writeln!(out, "drops: none");
    } else {
        let _ = writeln!(out, "drops {:>24} {:>12} {:>9}", "", "total", "/s");
        for (name, reason, v) in drops {
            let _ = writeln!(
                out,
                "  {:<28} {:>12} {:>9}",
                reason,
                v,
                counter_rate(name, *v)
            );
        }
    }
    out
}

/// The live view: every `interval` (at least 100ms) collects a report and redraws the
/// terminal with [`render_live`], until the process is interrupted. Fails if the first
/// collection fails; later failures (the daemon restarting) are shown and retried.
pub fn live(interval: Duration, out: &mut impl Write) -> Result<(), StatsError> {
    let interval = interval.max(Duration::from_millis(100));
    let mut prev: Option<(Report, Instant)> = None;
    let mut first = true;
    loop {
        let started = Instant::now();
        let frame = match collect() {
            Ok(cur) => {
                let frame = match &prev {
                    Some((p, at)) => render_live(Some(p), &cur, started.duration_since(*at)),
                    None => render_live(None, &cur, Duration::ZERO),
                };
                prev = Some((cur, started));
                frame
            }
            Err(e) if first => return Err(e),
            Err(e) => {
                prev = None;
                format!(
                    "lb stats: {e}\nretrying every {:.1}s; Ctrl-C to quit\n",
                    interval.as_secs_f64()
                )
            }
        };
        first = false;
        write!(out, "\x1b[H\x1b[2J{frame}")?;
        out.flush()?;
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// One line on a service's lookups of backends in DNS.
fn dns_line(d: &crate::api::report::DnsReport) -> String {
    let mut line = format!(
        "dns {}: {} backends, {} lookups, {} failed",
        d.query,
        d.backends.len(),
        d.lookups,
        d.failures
    );
    if let Some(e) = &d.last_error {
        line += &format!(" (last: {e})");
    }
    line
}

/// A line per backend with SNAT ports: how they are held (see `SnatPorts`).
fn snat_lines(out: &mut String, s: &ServiceReport) {
    for b in &s.backends {
        for p in &b.snat {
            let _ = writeln!(
                out,
                "  snat {} -> {}: ports {} in use, {} in the backend's TIME_WAIT, {} free",
                p.addr, b.addr, p.in_use, p.time_wait, p.free
            );
        }
    }
}

/// One line on the connections a proxy service's daemon side handled.
fn proxy_line(p: &crate::proxy::server::ServiceCounters) -> String {
    let (bytes_in, bytes_out) = p
        .backends
        .values()
        .fold((0, 0), |(i, o), b| (i + b.bytes_in, o + b.bytes_out));
    let mut line = format!(
        "proxied: {} connections accepted, {} active, {} in / {} out (ended connections)",
        p.connections,
        p.active,
        human_bytes(bytes_in),
        human_bytes(bytes_out)
    );
    if !p.errors.is_empty() {
        let errors: Vec<String> = p.errors.iter().map(|(r, n)| format!("{r} {n}")).collect();
        line.push_str(&format!("; errors: {}", errors.join(", ")));
    }
    line
}

fn human_bytes(b: u64) -> String {
    human_rate(b as f64)
}

/// Bytes (per second) in the largest unit that keeps the figure at least 1: one
/// decimal, or whole bytes (fractional bytes of a rate are rounded).
fn human_rate(mut v: f64) -> String {
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::report::tests::sample;

    #[test]
    fn table_shows_state_active_flows_and_health() {
        let t = render(&sample(1));
        assert!(
            t.starts_with("lb pid 42 on eth0 (native); flows 9 of 1000; half-open 3 (0 expired)\n"),
            "{t}"
        );
        let row = t.lines().find(|l| l.contains("198.18.1.12:80")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cols[..4], ["198.18.1.12:80", "1", "down", "0"], "{row}");
        assert!(row.ends_with("http:/health down: status 503"), "{row}");
        let row = t.lines().find(|l| l.contains("198.18.1.11:80")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            &cols[..5],
            ["198.18.1.11:80", "2", "up", "7", "10"],
            "{row}"
        );
        let total = t
            .lines()
            .find(|l| l.trim_start().starts_with("total"))
            .unwrap();
        assert_eq!(total.split_whitespace().nth(1), Some("7"), "{total}");
        assert!(t.contains("drop_no_backend"), "{t}");
        assert!(
            t.contains(
                "\n  snat 198.18.1.1 -> 198.18.1.12:80: ports 0 in use, 0 in the backend's \
                 TIME_WAIT, 22768 free\n"
            ),
            "{t}"
        );
        assert!(t.lines().all(|l| l == l.trim_end()), "{t:?}");
    }

    fn cols_of<'a>(frame: &'a str, first: &str) -> Vec<&'a str> {
        frame
            .lines()
            .find(|l| l.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no row {first} in\n{frame}"))
            .split_whitespace()
            .collect()
    }

    #[test]
    fn live_frame_computes_rates_from_the_previous_snapshot() {
        let prev = sample(1);
        let cur = sample(3);
        // Over 2s: new flows 10 → 30, bytes in 4096 → 12288, out 2048 → 6144,
        // packets (in+out) 100 → 300.
        let at = UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 3600 + 120 + 5);
        let f = render_live_at(Some(&prev), &cur, Duration::from_secs(2), at);
        assert!(
            f.starts_with(
                "lb pid 42 on eth0 (native)   01:02:05 UTC   flows 9 of 1000 (0.9%)   half-open 3 (0 expired)\n"
            ),
            "{f}"
        );
        assert!(f.contains("\nservice web 198.18.100.1:80 [nat]\n"), "{f}");
        assert_eq!(
            cols_of(&f, "198.18.1.11:80"),
            [
                "198.18.1.11:80",
                "up",
                "2",
                "10.0",
                "7",
                "4.0KiB",
                "2.0KiB",
                "100",
                "30",
                "http:/health",
                "up"
            ]
        );
        assert_eq!(
            cols_of(&f, "198.18.1.12:80"),
            [
                "198.18.1.12:80",
                "down",
                "1",
                "0.0",
                "0",
                "0B",
                "0B",
                "0.0",
                "0",
                "http:/health",
                "down:",
                "status",
                "503"
            ]
        );
        assert_eq!(
            cols_of(&f, "total"),
            ["total", "10.0", "7", "4.0KiB", "2.0KiB", "100", "30"]
        );
        // forwarded in 100 → 300, out 90 → 270, no_backend 3 → 9 over 2s.
        assert!(
            f.contains("packets/s: forwarded in 100  out 90.0  passed 0.0\n"),
            "{f}"
        );
        assert_eq!(cols_of(&f, "no_backend"), ["no_backend", "9", "3.0"]);
        assert!(
            !f.lines().any(|l| l.trim_start().starts_with("snat_")),
            "zero drop counters are left out: {f}"
        );
        assert!(
            f.contains(
                "\n  snat 198.18.1.1 -> 198.18.1.11:80: ports 7 in use, 2 in the backend's \
                 TIME_WAIT, 22759 free\n"
            ),
            "{f}"
        );
    }

    #[test]
    fn live_frame_without_rates_shows_dashes() {
        let cur = sample(2);
        for (prev, elapsed) in [
            (None, Duration::from_secs(1)),
            (Some(sample(1)), Duration::ZERO),
        ] {
            let f = render_live(prev.as_ref(), &cur, elapsed);
            let row = cols_of(&f, "198.18.1.11:80");
            assert_eq!(
                &row[..9],
                ["198.18.1.11:80", "up", "2", "-", "7", "-", "-", "-", "20"],
                "{f}"
            );
            assert!(
                f.contains("packets/s: forwarded in -  out -  passed -"),
                "{f}"
            );
            assert_eq!(cols_of(&f, "no_backend"), ["no_backend", "6", "-"]);
        }
    }

    #[test]
    fn live_frame_ignores_a_snapshot_of_another_daemon_and_counter_resets() {
        let mut prev = sample(5);
        prev.pid = 7;
        let f = render_live(Some(&prev), &sample(1), Duration::from_secs(1));
        assert_eq!(cols_of(&f, "198.18.1.11:80")[3], "-", "{f}");
        // Same pid but lower counters (should not happen): rates are 0, not huge.
        let prev = sample(5);
        let f = render_live(Some(&prev), &sample(1), Duration::from_secs(1));
        assert_eq!(cols_of(&f, "198.18.1.11:80")[3], "0.0", "{f}");
        // A backend added since the previous snapshot has no rates yet.
        let mut cur = sample(1);
        cur.services[0].backends[1].addr = "198.18.1.13:80".into();
        let f = render_live(Some(&sample(1)), &cur, Duration::from_secs(1));
        assert_eq!(cols_of(&f, "198.18.1.13:80")[3], "-", "{f}");
        assert_eq!(cols_of(&f, "198.18.1.11:80")[3], "0.0", "{f}");
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_rate(0.4), "0B");
        assert_eq!(human_rate(3.0 * 1024.0 * 1024.0), "3.0MiB");
    }
}
