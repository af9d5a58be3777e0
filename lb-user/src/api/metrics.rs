//! `GET /metrics`: a [`Report`] in the Prometheus text exposition format 0.0.4.
//!
//! Conventions: every family has `# HELP` and `# TYPE` and its samples follow at once;
//! names start with `lb_`, counters end in `_total`, units are bytes and seconds. Labels:
//! `service` (the service's name), `backend` (its `IP:PORT`), `direction` (`in` is client
//! → backend, `out` backend → client).

use crate::api::report::{
    BackendReport, Counters, DnsReport, HealthReport, Report, ServiceReport, SnatPorts,
};
use crate::proxy::server::{BackendCounters, ServiceCounters};
use lb_common::counters;
use std::fmt::Write as _;

/// Content type of the exposition format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The states `lb_backend_state` is one-hot over.
pub const BACKEND_STATES: [&str; 5] = ["up", "down", "initial", "draining", "drained"];

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes HELP text: backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the format spells it.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Builds the exposition text one family at a time.
struct Writer {
    out: String,
}

impl Writer {
    /// A whole family: HELP and TYPE, then one sample per row, in order.
    fn family<'a, V: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels<'a>, V)>,
    ) {
        self.header(name, kind, help);
        for (labels, value) in rows {
            self.sample(name, &labels, value);
        }
    }

    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label_value(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// The labels of one sample, in the order they are written.
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Reads one counter of a `T`.
type Read<T> = fn(&T) -> u64;

/// Reads one counter of a [`Counters`].
type Field = Read<Counters>;

/// The `direction` label's values with the packet and byte counters they read.
const PACKETS: [(&str, Field); 2] = [("in", |c| c.packets_in), ("out", |c| c.packets_out)];
const BYTES: [(&str, Field); 2] = [("in", |c| c.bytes_in), ("out", |c| c.bytes_out)];
/// The same for the bytes of proxied connections.
const PROXY_BYTES: [(&str, Read<BackendCounters>); 2] =
    [("in", |b| b.bytes_in), ("out", |b| b.bytes_out)];
/// The `state` label's values of the SNAT port gauge with what they read.
const SNAT_STATES: [(&str, Read<SnatPorts>); 3] = [
    ("in_use", |p| p.in_use),
    ("time_wait", |p| p.time_wait),
    ("free", |p| p.free),
];
/// The `result` label's values with the health check counters they read.
const RESULTS: [(&str, Read<HealthReport>); 2] =
    [("pass", |h| h.checks_passed), ("fail", |h| h.checks_failed)];

const LOOKUPS: [(&str, Read<DnsReport>); 2] =
    [("ok", |d| d.lookups - d.failures), ("fail", |d| d.failures)];

/// Splits every row in one per key, the key's name added as `label` and its reader
/// applied to the row, in `keys` order.
fn split<'a, T: Copy + 'a, K: Fn(T) -> V + Copy + 'a, V>(
    rows: impl Iterator<Item = (Labels<'a>, T)> + 'a,
    label: &'static str,
    keys: &'a [(&'a str, K)],
) -> impl Iterator<Item = (Labels<'a>, V)> + 'a {
    rows.flat_map(move |(labels, row)| {
        keys.iter().map(move |&(name, read)| {
            let mut labels = labels.clone();
            labels.push((label, name));
            (labels, read(row))
        })
    })
}

/// The families that services and backends both have, named and explained per scope.
struct Traffic {
    packets: &'static str,
    bytes: &'static str,
    new_flows: &'static str,
    active_flows: &'static str,
    /// "for a service", "for a backend": completes the HELP of packets and bytes.
    forwarded_for: &'static str,
    new_flows_help: &'static str,
    active_flows_help: &'static str,
}

const SERVICE_TRAFFIC: Traffic = Traffic {
    packets: "lb_service_packets_total",
    bytes: "lb_service_bytes_total",
    new_flows: "lb_service_new_flows_total",
    active_flows: "lb_service_active_flows",
    forwarded_for: "for a service",
    new_flows_help: "New flows (connections) balanced for a service.",
    active_flows_help: "Flows of a service that are neither closed nor idle past the idle timeout.",
};

const BACKEND_TRAFFIC: Traffic = Traffic {
    packets: "lb_backend_packets_total",
    bytes: "lb_backend_bytes_total",
    new_flows: "lb_backend_new_flows_total",
    active_flows: "lb_backend_active_flows",
    forwarded_for: "for a backend",
    new_flows_help: "New flows (connections) balanced to a backend.",
    active_flows_help: "Flows pinned to a backend that are neither closed nor idle past the idle timeout.",
};

/// Writes the [`Traffic`] families of services or backends: packets and bytes by
/// direction, new flows, active flows. `read` gives a row's counters and active flows.
fn traffic<'a, T: Copy + 'a, I: Iterator<Item = (Labels<'a>, T)> + 'a>(
    w: &mut Writer,
    t: &Traffic,
    rows: impl Fn() -> I,
    read: impl Fn(T) -> (&'a Counters, u64) + Copy + 'a,
) {
    let counters = || rows().map(|(l, row)| (l, read(row).0));
    for (name, what, fields) in [(t.packets, "Packets", &PACKETS), (t.bytes, "Bytes", &BYTES)] {
        let help = format!(
            "{what} forwarded {}, by direction (in: client to backend, out: backend to client).",
            t.forwarded_for
        );
        w.family(
            name,
            "counter",
            &help,
            split(counters(), "direction", fields),
        );
    }
    let new_flows = counters().map(|(l, c)| (l, c.new_flows));
    w.family(t.new_flows, "counter", t.new_flows_help, new_flows);
    let active = rows().map(|(l, row)| (l, read(row).1));
    w.family(t.active_flows, "gauge", t.active_flows_help, active);
}

/// Renders the report as Prometheus text (format 0.0.4).
pub fn render(r: &Report) -> String {
    let mut w = Writer { out: String::new() };

    w.family(
        "lb_up",
        "gauge",
        "Whether the lb daemon is running (1).",
        [(vec![], 1)],
    );
    w.family(
        "lb_info",
        "gauge",
        "Version of the lb daemon (always 1).",
        [(vec![("version", env!("CARGO_PKG_VERSION"))], 1)],
    );

    let services = || {
        r.services
            .iter()
            .map(|s| (vec![("service", s.name.as_str())], s))
    };
    traffic(&mut w, &SERVICE_TRAFFIC, services, |s| {
        (&s.counters, s.active_flows)
    });
    let backends = || {
        r.services.iter().flat_map(|s| {
            s.backends.iter().map(move |b| {
                let labels = vec![("service", s.name.as_str()), ("backend", b.addr.as_str())];
                (labels, b)
            })
        })
    };
    traffic(&mut w, &BACKEND_TRAFFIC, backends, |b| {
        (&b.counters, b.active_flows)
    });
    w.family(
        "lb_backend_up",
        "gauge",
        "Whether a backend is up (takes new flows if its weight is above 0): 1, else 0.",
        backends().map(|(l, b)| (l, u8::from(b.state == "up"))),
    );
    let one_hot = BACKEND_STATES.map(|s| (s, move |b: &BackendReport| u8::from(b.state == s)));
    w.family(
        "lb_backend_state",
        "gauge",
        "State of a backend, one-hot over up, down, initial, draining and drained.",
        split(backends(), "state", &one_hot),
    );
    w.family(
        "lb_backend_weight",
        "gauge",
        "Configured weight of a backend (its share of the Maglev table while up).",
        backends().map(|(l, b)| (l, b.weight)),
    );
    let snat: Vec<(Labels<'_>, &SnatPorts)> = backends()
        .flat_map(|(l, b)| {
            b.snat.iter().map(move |p| {
                let mut l = l.clone();
                l.push(("snat_addr", p.addr.as_str()));
                (l, p)
            })
        })
        .collect();
    if !snat.is_empty() {
        w.family(
            "lb_snat_ports",
            "gauge",
            "SNAT ports of a backend's SNAT address, by state: in_use (open or half-open flows, or a close the backend has not finished), time_wait (the backend holds the old connection in TIME_WAIT: only a SYN it accepts there may take the port), free.",
            split(snat.iter().cloned(), "state", &SNAT_STATES),
        );
    }

    // Health checks, for backends that have one.
    let checked: Vec<(Labels<'_>, &HealthReport)> = backends()
        .filter_map(|(l, b)| b.health.as_ref().map(|h| (l, h)))
        .collect();
    if !checked.is_empty() {
        w.family(
            "lb_health_checks_total",
            "counter",
            "Health checks of a backend, by result (pass or fail).",
            split(checked.iter().cloned(), "result", &RESULTS),
        );
        w.header(
            "lb_health_check_duration_seconds",
            "histogram",
            "Round-trip time of a backend's health checks.",
        );
        for (base, h) in &checked {
            for (le, n) in h.latency.cumulative() {
                let le = float(le);
                let mut labels = base.clone();
                labels.push(("le", le.as_str()));
                w.sample("lb_health_check_duration_seconds_bucket", &labels, n);
            }
            let sum = float(h.latency.sum_seconds);
            w.sample("lb_health_check_duration_seconds_sum", base, sum);
            w.sample(
                "lb_health_check_duration_seconds_count",
                base,
                h.latency.count,
            );
        }
    }

    // Lookups of backends in DNS, for services that have one.
    let looked_up: Vec<(Labels<'_>, &DnsReport)> = (r.services.iter())
        .filter_map(|s| {
            s.dns
                .as_ref()
                .map(|d| (vec![("service", s.name.as_str())], d))
        })
        .collect();
    if !looked_up.is_empty() {
        w.family(
            "lb_dns_lookups_total",
            "counter",
            "Lookups of a service's backends in DNS, by result (ok, or fail: the last good set was kept).",
            split(looked_up.iter().cloned(), "result", &LOOKUPS),
        );
        w.family(
            "lb_dns_backends",
            "gauge",
            "Backends in a service's last good DNS answer.",
            looked_up.iter().map(|(l, d)| (l.clone(), d.backends.len())),
        );
    }

    // What happened to packets.
    let drop_reason = |name: &str| counters::by_name(name).and_then(|c| c.drop_reason());
    w.family(
        "lb_packets_total",
        "counter",
        "Packets the XDP program forwarded or passed to the kernel, by outcome.",
        r.counters
            .iter()
            .filter(|(n, _)| drop_reason(n).is_none())
            .map(|(name, v)| (vec![("outcome", name.as_str())], v)),
    );
    w.family(
        "lb_dropped_packets_total",
        "counter",
        "Packets the XDP program dropped (or answered with a RST), by reason.",
        r.counters
            .iter()
            .filter_map(|(name, v)| drop_reason(name).map(|reason| (vec![("reason", reason)], v))),
    );

    w.family(
        "lb_flow_table_entries",
        "gauge",
        "Entries in the flow table, including idle ones not evicted yet.",
        [(vec![], r.flows)],
    );
    w.family(
        "lb_flow_table_capacity",
        "gauge",
        "Capacity of the flow table (--max-flows).",
        [(vec![], r.flow_capacity)],
    );
    w.family(
        "lb_half_open_flows",
        "gauge",
        "Entries in the half-open flow table (the client has not yet acknowledged the backend's SYN-ACK), including expired ones not evicted yet.",
        [(vec![], r.half_open)],
    );
    w.family(
        "lb_half_open_expired_flows",
        "gauge",
        "Half-open flows past --half-open-timeout and not evicted yet: handshakes nobody completed; their SNAT ports are free.",
        [(vec![], r.half_open_expired)],
    );
    announced(&mut w, r);
    proxy(&mut w, r);
    w.out
}

/// With `--announce-table`: 1 for each VIP whose route a routing daemon can announce, 0
/// for a VIP lb withdrew (no backend up).
fn announced(w: &mut Writer, r: &Report) {
    if r.announce_table.is_none() {
        return;
    }
    let mut vips: Vec<std::net::IpAddr> = r
        .services
        .iter()
        .filter_map(|s| s.vip.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip())
        .collect();
    vips.sort();
    vips.dedup();
    let names: Vec<String> = vips.iter().map(ToString::to_string).collect();
    w.family(
        "lb_vip_announced",
        "gauge",
        "1 while the VIP's route is in the announce table (a backend is up), for the routing daemon to announce; 0 while withdrawn.",
        vips.iter()
            .zip(&names)
            .map(|(v, n)| (vec![("vip", n.as_str())], u8::from(r.announced.contains(v)))),
    );
}

/// The families of connections the daemon proxies (proxy-v2 services); left out when no
/// service proxies.
fn proxy(w: &mut Writer, r: &Report) {
    let proxied: Vec<(&ServiceReport, &ServiceCounters)> = r
        .services
        .iter()
        .filter_map(|s| s.proxy.as_ref().map(|p| (s, p)))
        .collect();
    if proxied.is_empty() {
        return;
    }
    let addrs: Vec<Vec<String>> = proxied
        .iter()
        .map(|(_, p)| p.backends.keys().map(|a| a.to_string()).collect())
        .collect();
    let backends = || {
        proxied.iter().zip(&addrs).flat_map(|((s, p), addrs)| {
            p.backends.values().zip(addrs).map(move |(b, addr)| {
                let labels = vec![("service", s.name.as_str()), ("backend", addr.as_str())];
                (labels, b)
            })
        })
    };
    let services = || {
        proxied
            .iter()
            .map(|&(s, p)| (vec![("service", s.name.as_str())], p))
    };
    w.family(
        "lb_proxy_connections_total",
        "counter",
        "Connections proxied to a backend (after its PROXY header was written).",
        backends().map(|(l, b)| (l, b.connections)),
    );
    w.family(
        "lb_proxy_active_connections",
        "gauge",
        "Connections being proxied to a backend now.",
        backends().map(|(l, b)| (l, b.active)),
    );
    w.family(
        "lb_proxy_bytes_total",
        "counter",
        "Bytes of ended proxied connections, by direction (in: client to backend, out: backend to client).",
        split(backends(), "direction", &PROXY_BYTES),
    );
    w.family(
        "lb_proxy_accepted_connections_total",
        "counter",
        "Client connections accepted for a proxy service.",
        services().map(|(l, p)| (l, p.connections)),
    );
    w.family(
        "lb_proxy_errors_total",
        "counter",
        "Proxied connections that failed or were refused, by reason.",
        services().flat_map(|(l, p)| {
            p.errors.iter().map(move |(reason, v)| {
                let mut labels = l.clone();
                labels.push(("reason", reason.as_str()));
                (labels, v)
            })
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::report::tests::sample;
    use crate::dataplane::Attachment;
    use std::collections::{BTreeMap, HashSet};

    fn tiny() -> Report {
        let mut counters = BTreeMap::new();
        counters.insert("forwarded_in".to_string(), 5);
        counters.insert("drop_no_backend".to_string(), 2);
        Report {
            pid: 1,
            interfaces: vec![Attachment {
                iface: "eth0".into(),
                ifindex: 2,
                mode: "skb".into(),
            }],
            services: vec![ServiceReport {
                name: "web".into(),
                vip: "198.18.100.1:80".into(),
                mode: "nat".into(),
                active_flows: 3,
                counters: Counters {
                    packets_in: 10,
                    bytes_in: 1000,
                    packets_out: 8,
                    bytes_out: 4000,
                    new_flows: 4,
                },
                backends: vec![BackendReport {
                    addr: "[fd00::1]:80".into(),
                    weight: 2,
                    state: "draining".into(),
                    active_flows: 3,
                    health: None,
                    counters: Counters {
                        packets_in: 10,
                        bytes_in: 1000,
                        packets_out: 8,
                        bytes_out: 4000,
                        new_flows: 4,
                    },
                    snat: vec![SnatPorts {
                        addr: "fd00::9".into(),
                        in_use: 3,
                        time_wait: 1,
                        free: 96,
                    }],
                }],
                proxy: None,
                dns: Some(DnsReport {
                    query: "web.lb.test:80".into(),
                    lookups: 7,
                    failures: 2,
                    last_error: Some("web.lb.test: no records found".into()),
                    backends: vec!["[fd00::1]:80@2".into()],
                }),
            }],
            flows: 6,
            flow_capacity: 1024,
            half_open: 2,
            half_open_expired: 1,
            counters,
            announce_table: None,
            announced: Vec::new(),
        }
    }

    #[test]
    fn exact_output_of_a_small_report() {
        let expected = format!(
            r#"# HELP lb_up Whether the lb daemon is running (1).
# TYPE lb_up gauge
lb_up 1
# HELP lb_info Version of the lb daemon (always 1).
# TYPE lb_info gauge
lb_info{{version="{version}"}} 1
# HELP lb_service_packets_total Packets forwarded for a service, by direction (in: client to backend, out: backend to client).
# TYPE lb_service_packets_total counter
lb_service_packets_total{{service="web",direction="in"}} 10
lb_service_packets_total{{service="web",direction="out"}} 8
# HELP lb_service_bytes_total Bytes forwarded for a service, by direction (in: client to backend, out: backend to client).
# TYPE lb_service_bytes_total counter
lb_service_bytes_total{{service="web",direction="in"}} 1000
lb_service_bytes_total{{service="web",direction="out"}} 4000
# HELP lb_service_new_flows_total New flows (connections) balanced for a service.
# TYPE lb_service_new_flows_total counter
lb_service_new_flows_total{{service="web"}} 4
# HELP lb_service_active_flows Flows of a service that are neither closed nor idle past the idle timeout.
# TYPE lb_service_active_flows gauge
lb_service_active_flows{{service="web"}} 3
# HELP lb_backend_packets_total Packets forwarded for a backend, by direction (in: client to backend, out: backend to client).
# TYPE lb_backend_packets_total counter
lb_backend_packets_total{{service="web",backend="[fd00::1]:80",direction="in"}} 10
lb_backend_packets_total{{service="web",backend="[fd00::1]:80",direction="out"}} 8
# HELP lb_backend_bytes_total Bytes forwarded for a backend, by direction (in: client to backend, out: backend to client).
# TYPE lb_backend_bytes_total counter
lb_backend_bytes_total{{service="web",backend="[fd00::1]:80",direction="in"}} 1000
lb_backend_bytes_total{{service="web",backend="[fd00::1]:80",direction="out"}} 4000
# HELP lb_backend_new_flows_total New flows (connections) balanced to a backend.
# TYPE lb_backend_new_flows_total counter
lb_backend_new_flows_total{{service="web",backend="[fd00::1]:80"}} 4
# HELP lb_backend_active_flows Flows pinned to a backend that are neither closed nor idle past the idle timeout.
# TYPE lb_backend_active_flows gauge
lb_backend_active_flows{{service="web",backend="[fd00::1]:80"}} 3
# HELP lb_backend_up Whether a backend is up (takes new flows if its weight is above 0): 1, else 0.
# TYPE lb_backend_up gauge
lb_backend_up{{service="web",backend="[fd00::1]:80"}} 0
# HELP lb_backend_state State of a backend, one-hot over up, down, initial, draining and drained.
# TYPE lb_backend_state gauge
lb_backend_state{{service="web",backend="[fd00::1]:80",state="up"}} 0
lb_backend_state{{service="web",backend="[fd00::1]:80",state="down"}} 0
lb_backend_state{{service="web",backend="[fd00::1]:80",state="initial"}} 0
lb_backend_state{{service="web",backend="[fd00::1]:80",state="draining"}} 1
lb_backend_state{{service="web",backend="[fd00::1]:80",state="drained"}} 0
# HELP lb_backend_weight Configured weight of a backend (its share of the Maglev table while up).
# TYPE lb_backend_weight gauge
lb_backend_weight{{service="web",backend="[fd00::1]:80"}} 2
# HELP lb_snat_ports SNAT ports of a backend's SNAT address, by state: in_use (open or half-open flows, or a close the backend has not finished), time_wait (the backend holds the old connection in TIME_WAIT: only a SYN it accepts there may take the port), free.
# TYPE lb_snat_ports gauge
lb_snat_ports{{service="web",backend="[fd00::1]:80",snat_addr="fd00::9",state="in_use"}} 3
lb_snat_ports{{service="web",backend="[fd00::1]:80",snat_addr="fd00::9",state="time_wait"}} 1
lb_snat_ports{{service="web",backend="[fd00::1]:80",snat_addr="fd00::9",state="free"}} 96
# HELP lb_dns_lookups_total Lookups of a service's backends in DNS, by result (ok, or fail: the last good set was kept).
# TYPE lb_dns_lookups_total counter
lb_dns_lookups_total{{service="web",result="ok"}} 5
lb_dns_lookups_total{{service="web",result="fail"}} 2
# HELP lb_dns_backends Backends in a service's last good DNS answer.
# TYPE lb_dns_backends gauge
lb_dns_backends{{service="web"}} 1
# HELP lb_packets_total Packets the XDP program forwarded or passed to the kernel, by outcome.
# TYPE lb_packets_total counter
lb_packets_total{{outcome="forwarded_in"}} 5
# HELP lb_dropped_packets_total Packets the XDP program dropped (or answered with a RST), by reason.
# TYPE lb_dropped_packets_total counter
lb_dropped_packets_total{{reason="no_backend"}} 2
# HELP lb_flow_table_entries Entries in the flow table, including idle ones not evicted yet.
# TYPE lb_flow_table_entries gauge
lb_flow_table_entries 6
# HELP lb_flow_table_capacity Capacity of the flow table (--max-flows).
# TYPE lb_flow_table_capacity gauge
lb_flow_table_capacity 1024
# HELP lb_half_open_flows Entries in the half-open flow table (the client has not yet acknowledged the backend's SYN-ACK), including expired ones not evicted yet.
# TYPE lb_half_open_flows gauge
lb_half_open_flows 2
# HELP lb_half_open_expired_flows Half-open flows past --half-open-timeout and not evicted yet: handshakes nobody completed; their SNAT ports are free.
# TYPE lb_half_open_expired_flows gauge
lb_half_open_expired_flows 1
"#,
            version = env!("CARGO_PKG_VERSION")
        );
        assert_eq!(render(&tiny()), expected);
    }

    #[test]
    fn announced_vips_are_1_and_withdrawn_ones_0() {
        let mut r = tiny();
        assert!(
            !render(&r).contains("lb_vip_announced"),
            "no announce table"
        );
        r.announce_table = Some(100);
        let vip: std::net::SocketAddr = r.services[0].vip.parse().unwrap();
        let line = format!("lb_vip_announced{{vip=\"{}\"}}", vip.ip());
        assert!(
            render(&r).contains(&format!("{line} 0\n")),
            "{}",
            render(&r)
        );
        r.announced = vec![vip.ip()];
        assert!(
            render(&r).contains(&format!("{line} 1\n")),
            "{}",
            render(&r)
        );
    }

    #[test]
    fn health_histogram_is_cumulative_with_sum_and_count() {
        let out = render(&sample(1));
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains(r#"backend="198.18.1.11:80""#))
            .filter(|l| l.starts_with("lb_health"))
            .collect();
        let expected = [
            r#"lb_health_checks_total{service="web",backend="198.18.1.11:80",result="pass"} 5"#,
            r#"lb_health_checks_total{service="web",backend="198.18.1.11:80",result="fail"} 0"#,
            r#"lb_health_check_duration_seconds_bucket{service="web",backend="198.18.1.11:80",le="0.0005"} 1"#,
            r#"lb_health_check_duration_seconds_bucket{service="web",backend="198.18.1.11:80",le="0.001"} 1"#,
            r#"lb_health_check_duration_seconds_bucket{service="web",backend="198.18.1.11:80",le="0.0025"} 2"#,
            r#"lb_health_check_duration_seconds_bucket{service="web",backend="198.18.1.11:80",le="0.005"} 2"#,
            r#"lb_health_check_duration_seconds_bucket{service="web",backend="198.18.1.11:80",le="0.01"} 2"#,
            r#"lb_health_check_duration_seconds_bucket{service="web",backend="198.18.1.11:80",le="0.025"} 2"#,
            r#"lb_health_check_duration_seconds_bucket{service="web",backend="198.18.1.11:80",le="0.05"} 2"#,
            r#"lb_health_check_duration_seconds_bucket{service="web",backend="198.18.1.11:80",le="0.1"} 2"#,
            r#"lb_health_check_duration_seconds_bucket{service="web",backend="198.18.1.11:80",le="0.25"} 2"#,
            r#"lb_health_check_duration_seconds_bucket{service="web",backend="198.18.1.11:80",le="0.5"} 2"#,
            r#"lb_health_check_duration_seconds_bucket{service="web",backend="198.18.1.11:80",le="1"} 2"#,
            r#"lb_health_check_duration_seconds_bucket{service="web",backend="198.18.1.11:80",le="2.5"} 2"#,
            r#"lb_health_check_duration_seconds_bucket{service="web",backend="198.18.1.11:80",le="+Inf"} 2"#,
            r#"lb_health_check_duration_seconds_count{service="web",backend="198.18.1.11:80"} 2"#,
        ];
        let sum_prefix =
            r#"lb_health_check_duration_seconds_sum{service="web",backend="198.18.1.11:80"} "#;
        let (sums, lines): (Vec<&str>, Vec<&str>) =
            lines.into_iter().partition(|l| l.starts_with(sum_prefix));
        assert_eq!(lines, expected, "{out}");
        let sum: f64 = sums[0][sum_prefix.len()..].parse().unwrap();
        assert!((sum - 0.0024).abs() < 1e-12, "{}", sums[0]);
        assert!(out.contains(
            r#"lb_health_checks_total{service="web",backend="198.18.1.12:80",result="fail"} 3"#
        ));
        assert!(out.contains(r#"lb_backend_up{service="web",backend="198.18.1.11:80"} 1"#));
        assert!(out.contains(r#"lb_backend_up{service="web",backend="198.18.1.12:80"} 0"#));
        assert!(out.contains(
            r#"lb_backend_state{service="web",backend="198.18.1.12:80",state="down"} 1"#
        ));
    }

    #[test]
    fn no_health_families_without_health_checks() {
        let out = render(&tiny());
        assert!(!out.contains("lb_health"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("x\ny"), r"x\ny");
        assert_eq!(escape_label_value("plain é"), "plain é");
        let mut r = tiny();
        r.services[0].name = "we\"b\\\n".into();
        let out = render(&r);
        assert!(
            out.contains(r#"lb_service_new_flows_total{service="we\"b\\\n"} 4"#),
            "{out}"
        );
        assert!(
            out.lines().all(|l| !l.is_empty()),
            "a raw newline split a line"
        );
    }

    /// The metric family a sample line belongs to.
    fn family_of<'a>(name: &'a str, histograms: &HashSet<String>) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && histograms.contains(base)
            {
                return base;
            }
        }
        name
    }

    #[test]
    fn every_family_has_help_and_type_and_is_contiguous() {
        let out = render(&sample(1));
        let mut helped = HashSet::new();
        let mut typed = HashSet::new();
        let mut histograms = HashSet::new();
        let mut done: HashSet<String> = HashSet::new();
        let mut current = String::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(name.starts_with("lb_"), "{line}");
                assert!(helped.insert(name.clone()), "second HELP: {line}");
                assert!(!done.contains(&name), "{name} split");
                if !current.is_empty() {
                    done.insert(std::mem::replace(&mut current, name));
                } else {
                    current = name;
                }
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let (name, kind) = (it.next().unwrap(), it.next().unwrap());
                assert_eq!(name, current, "TYPE right after HELP: {line}");
                assert!(typed.insert(name.to_string()), "second TYPE: {line}");
                match kind {
                    "counter" => assert!(name.ends_with("_total"), "{line}"),
                    "gauge" => assert!(!name.ends_with("_total"), "{line}"),
                    "histogram" => {
                        histograms.insert(name.to_string());
                    }
                    _ => panic!("unexpected type: {line}"),
                }
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let fam = family_of(name, &histograms);
                assert_eq!(fam, current, "sample outside its family: {line}");
                assert!(typed.contains(fam), "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        for f in [
            "lb_up",
            "lb_info",
            "lb_service_packets_total",
            "lb_service_bytes_total",
            "lb_service_new_flows_total",
            "lb_service_active_flows",
            "lb_backend_packets_total",
            "lb_backend_bytes_total",
            "lb_backend_new_flows_total",
            "lb_backend_active_flows",
            "lb_backend_up",
            "lb_backend_state",
            "lb_backend_weight",
            "lb_health_checks_total",
            "lb_health_check_duration_seconds",
            "lb_packets_total",
            "lb_dropped_packets_total",
            "lb_flow_table_entries",
            "lb_flow_table_capacity",
        ] {
            assert!(
                helped.contains(f) && typed.contains(f),
                "missing family {f}"
            );
        }
        // Every counter name is exported once, as an outcome or a drop reason.
        let r = sample(1);
        for name in r.counters.keys() {
            let line = match name.strip_prefix("drop_") {
                Some(reason) => format!("lb_dropped_packets_total{{reason=\"{reason}\"}} "),
                None => format!("lb_packets_total{{outcome=\"{name}\"}} "),
            };
            assert_eq!(out.matches(&line).count(), 1, "{line}");
        }
    }

    /// `promtool check metrics` (Debian package `prometheus`, installed by `cargo xtask
    /// setup`) accepts the output, lint included. Fails when promtool is missing.
    #[test]
    fn promtool_accepts_the_output() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut r = sample(1);
        // Two services, one with an IPv6 backend and a name that needs escaping.
        let mut other = tiny().services.remove(0);
        other.name = "api \"v2\"".into();
        r.services.push(other);
        let text = render(&r);
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "running promtool: {e}; install it with `apt-get install prometheus` \
                     (`cargo xtask setup` does)"
                )
            });
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}\nstdout: {}\nstderr: {}\ninput:\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
