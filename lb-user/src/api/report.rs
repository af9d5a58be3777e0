//! The report of a running daemon: per-service and per-backend counters, states, active
//! flows, health and the global packet counters. One model, built from the maps a
//! runtime record names ([`collect_from`]) and completed by the daemon; the admin API,
//! `/metrics`, `lb ctl` and `lb stats` all read it.

use crate::control::{ActiveFlows, ServiceHealth};
use crate::dataplane::runtime::{RuntimeError, RuntimeRecord};
use crate::health::histogram::LatencyHistogram;
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use lb_common::counters::TABLE as COUNTER_TABLE;
use lb_common::flow::{PortHold, port_hold};
use lb_common::maps::{
    self as m, Backend, FlowKey, FlowState, GlobalConfig, TrafficCounters, names,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap as StdHashMap};

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("map {name} (id {id}) of the running daemon: {source}")]
    Map {
        name: String,
        id: u32,
        source: MapError,
    },
    #[error("the runtime record names no map {0}")]
    Unrecorded(&'static str),
    #[error("writing the table: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub new_flows: u64,
}

impl From<TrafficCounters> for Counters {
    fn from(c: TrafficCounters) -> Self {
        Counters {
            packets_in: c.packets_in,
            bytes_in: c.bytes_in,
            packets_out: c.packets_out,
            bytes_out: c.bytes_out,
            new_flows: c.new_flows,
        }
    }
}

/// Health-check view of one backend; filled in by the daemon (`collect` leaves it out).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HealthReport {
    /// What is checked: "tcp", "http:/path".
    pub check: String,
    /// "up", "down" or "initial".
    pub status: String,
    /// The last failure, e.g. "timeout", "connection refused", "status 503".
    pub reason: Option<String>,
    pub checks_passed: u64,
    pub checks_failed: u64,
    /// Round-trip times of the checks.
    pub latency: LatencyHistogram,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendReport {
    pub addr: String,
    pub weight: u32,
    /// The daemon's view: "up", "down", "initial", "draining" or "drained" (for an older
    /// daemon, the map's: "up", "down", "draining", "empty").
    pub state: String,
    /// Flows pinned to this backend that are neither closed (FIN both ways, or RST) nor
    /// idle past the idle timeout.
    #[serde(default)]
    pub active_flows: u64,
    #[serde(default)]
    pub health: Option<HealthReport>,
    pub counters: Counters,
    /// The SNAT ports toward this backend, per SNAT address (NAT services).
    #[serde(default)]
    pub snat: Vec<SnatPorts>,
}

/// How the SNAT ports of one backend's SNAT address are held, by the rule the XDP
/// program hands them out by (`lb_common::flow::port_hold`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnatPorts {
    /// The source address the LB uses toward the backend.
    pub addr: String,
    /// Held by open or half-open flows, or by a close the backend has not finished.
    pub in_use: u64,
    /// Held by the backend's TIME_WAIT: only a SYN it accepts there may take them.
    pub time_wait: u64,
    /// The rest of the SNAT port range.
    pub free: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceReport {
    pub name: String,
    pub vip: String,
    pub mode: String,
    /// Sum of the backends' `active_flows`.
    #[serde(default)]
    pub active_flows: u64,
    pub counters: Counters,
    pub backends: Vec<BackendReport>,
    /// Connections the daemon proxied (proxy-v2 services; filled in by the daemon).
    #[serde(default)]
    pub proxy: Option<crate::proxy::server::ServiceCounters>,
    /// The lookups of backends found in DNS (filled in by the daemon).
    #[serde(default)]
    pub dns: Option<DnsReport>,
}

/// What the lookups of a service's backends in DNS gave.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsReport {
    /// What is looked up: `NAME:PORT` or `srv:NAME`.
    pub query: String,
    pub lookups: u64,
    /// Lookups that failed (no answer, no records): the last good set was kept.
    pub failures: u64,
    pub last_error: Option<String>,
    /// Backends of the last good answer, `IP:PORT@WEIGHT`.
    pub backends: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub pid: u32,
    pub interfaces: Vec<crate::dataplane::Attachment>,
    pub services: Vec<ServiceReport>,
    /// Entries in the flow table (live and not yet evicted idle ones), and its capacity.
    pub flows: u64,
    pub flow_capacity: u32,
    /// Entries in the half-open flow table (flows whose handshake is not complete).
    #[serde(default)]
    pub half_open: u64,
    /// Of those, the ones past the half-open timeout, not evicted yet: handshakes nobody
    /// completed (a SYN flood's leftovers); their SNAT ports are free again.
    #[serde(default)]
    pub half_open_expired: u64,
    /// The global packet counters by name (`lb_common::counters::TABLE`).
    pub counters: BTreeMap<String, u64>,
    /// `--announce-table`, and the VIPs whose route is in it (see `announce`).
    #[serde(default)]
    pub announce_table: Option<u32>,
    #[serde(default)]
    pub announced: Vec<std::net::IpAddr>,
}

/// Opens the running daemon's map `name` by the id its runtime record gives.
pub fn open_map(rec: &RuntimeRecord, name: &'static str) -> Result<Map, StatsError> {
    let id = *rec.maps.get(name).ok_or(StatsError::Unrecorded(name))?;
    let err = |source| StatsError::Map {
        name: name.to_string(),
        id,
        source,
    };
    let data = MapData::from_id(id).map_err(err)?;
    Map::from_map_data(data).map_err(err)
}

fn map_err<'a>(name: &'static str, rec: &'a RuntimeRecord) -> impl Fn(MapError) -> StatsError + 'a {
    move |source| StatsError::Map {
        name: name.to_string(),
        id: rec.maps.get(name).copied().unwrap_or(0),
        source,
    }
}

fn traffic(
    a: &PerCpuArray<MapData, TrafficCounters>,
    index: u32,
) -> Result<TrafficCounters, MapError> {
    let mut sum = TrafficCounters::default();
    for c in a.get(&index, 0)?.iter() {
        sum.add(c);
    }
    Ok(sum)
}

/// Active flows per backend id, over flow table entries.
fn active_per_backend(
    entries: impl IntoIterator<Item = FlowState>,
    cfg: &GlobalConfig,
    now: u64,
) -> StdHashMap<u32, u64> {
    let mut active = StdHashMap::new();
    for fs in entries {
        if lb_common::flow::active(&fs, cfg, now) {
            *active.entry(u32::from(fs.backend)).or_insert(0) += 1;
        }
    }
    active
}

/// Per backend id and SNAT address index (`FlowState::snat_idx`): how many SNAT ports
/// its flows hold in use and in TIME_WAIT. A port is counted once, by the strongest hold
/// of the entries naming it (an entry left by a flow that moved may still name it).
fn snat_holds(
    entries: impl IntoIterator<Item = FlowState>,
    cfg: &GlobalConfig,
    now: u64,
) -> StdHashMap<(u32, u8), (u64, u64)> {
    let mut ports: StdHashMap<(u32, u8, u16), PortHold> = StdHashMap::new();
    for fs in entries {
        let hold = port_hold(&fs, cfg, now);
        if hold == PortHold::Free {
            continue;
        }
        let e = ports
            .entry((u32::from(fs.backend), fs.snat_idx, fs.snat_port))
            .or_insert(hold);
        if hold == PortHold::InUse {
            *e = hold;
        }
    }
    let mut held = StdHashMap::new();
    for ((backend, idx, _), hold) in ports {
        let (in_use, time_wait) = held.entry((backend, idx)).or_insert((0, 0));
        match hold {
            PortHold::InUse => *in_use += 1,
            _ => *time_wait += 1,
        }
    }
    held
}

/// The SNAT ports of backend `b` (id `id`) on each of its SNAT addresses: its own, then
/// the family's others from `pool` (`SNAT_ADDRS`); none for a backend without a SNAT
/// address.
fn snat_ports(
    id: u32,
    b: &Backend,
    pool: &[[u32; 4]],
    holds: &StdHashMap<(u32, u8), (u64, u64)>,
    cfg: &GlobalConfig,
) -> Vec<SnatPorts> {
    let Some(own) = lb_common::addr::words_to_ip(b.snat_addr, b.family) else {
        return Vec::new();
    };
    if own.is_unspecified() || cfg.snat_port_max < cfg.snat_port_min {
        return Vec::new();
    }
    let range = u64::from(cfg.snat_port_max - cfg.snat_port_min) + 1;
    let base = m::snat_addrs_base(b.family) as usize;
    let count = cfg.snat_addr_count(b.family) as usize;
    let others = (1..count)
        .filter_map(|i| pool.get(base + i))
        .filter_map(|w| lb_common::addr::words_to_ip(*w, b.family));
    std::iter::once(own)
        .chain(others)
        .enumerate()
        .map(|(idx, addr)| {
            let (in_use, time_wait) = holds.get(&(id, idx as u8)).copied().unwrap_or((0, 0));
            SnatPorts {
                addr: addr.to_string(),
                in_use,
                time_wait,
                free: range.saturating_sub(in_use + time_wait),
            }
        })
        .collect()
}

/// Name of a `BACKEND_*` state of the backend map.
fn map_state(state: u8) -> &'static str {
    match state {
        m::BACKEND_UP => "up",
        m::BACKEND_DRAINING => "draining",
        m::BACKEND_DOWN => "down",
        _ => "empty",
    }
}

impl Report {
    /// Adds what the health checks and the proxy know (from the daemon's control plane)
    /// to a report built by [`collect_from`].
    pub fn add_health(&mut self, health: &[ServiceHealth]) {
        for rs in &mut self.services {
            let Some(s) = health.iter().find(|s| s.name == rs.name) else {
                continue;
            };
            if let Some(p) = &s.proxy {
                rs.proxy = Some(p.clone());
            }
            rs.dns = s.dns.clone();
            let Some(check) = &s.check else {
                continue;
            };
            for rb in &mut rs.backends {
                let Some(b) = s.backends.iter().find(|b| b.addr.to_string() == rb.addr) else {
                    continue;
                };
                rb.health = Some(HealthReport {
                    check: check.clone(),
                    status: b.status.into(),
                    reason: b.reason.clone(),
                    checks_passed: b.checks_passed,
                    checks_failed: b.checks_failed,
                    latency: b.latency.clone(),
                });
            }
        }
    }

    /// Active flows per (service, backend), for ending drains.
    pub fn active_flows(&self) -> ActiveFlows {
        let mut flows = ActiveFlows::new();
        for s in &self.services {
            for b in &s.backends {
                if let Ok(addr) = b.addr.parse() {
                    *flows.entry((s.name.clone(), addr)).or_default() += b.active_flows;
                }
            }
        }
        flows
    }
}

/// Collects a report from the maps a runtime record names (the daemon passes its own).
/// Walks the whole flow table once, to count active flows.
pub fn collect_from(rec: &RuntimeRecord) -> Result<Report, StatsError> {
    let svc_stats =
        PerCpuArray::<MapData, TrafficCounters>::try_from(open_map(rec, names::SERVICE_STATS)?)
            .map_err(map_err(names::SERVICE_STATS, rec))?;
    let be_stats =
        PerCpuArray::<MapData, TrafficCounters>::try_from(open_map(rec, names::BACKEND_STATS)?)
            .map_err(map_err(names::BACKEND_STATS, rec))?;
    let backends = Array::<MapData, Backend>::try_from(open_map(rec, names::BACKENDS)?)
        .map_err(map_err(names::BACKENDS, rec))?;
    let counters = PerCpuArray::<MapData, u64>::try_from(open_map(rec, names::COUNTERS)?)
        .map_err(map_err(names::COUNTERS, rec))?;
    let config = Array::<MapData, GlobalConfig>::try_from(open_map(rec, names::CONFIG)?)
        .map_err(map_err(names::CONFIG, rec))?
        .get(&0, 0)
        .map_err(map_err(names::CONFIG, rec))?;
    let flows_map = open_map(rec, names::FLOWS)?;
    let flow_capacity = match &flows_map {
        Map::LruHashMap(d) | Map::HashMap(d) => d.info().map(|i| i.max_entries()).unwrap_or(0),
        _ => 0,
    };
    let flows_map = HashMap::<MapData, FlowKey, FlowState>::try_from(flows_map)
        .map_err(map_err(names::FLOWS, rec))?;

    // One pass over the flow table. Entries that vanish between listing a key and
    // reading it (evicted or expired meanwhile) are skipped.
    let now = crate::sys::monotonic_ns();
    let mut entries: Vec<FlowState> = flows_map
        .iter()
        .filter_map(|e| e.ok())
        .map(|(_, fs)| fs)
        .collect();
    let flows = entries.len() as u64;
    // Half-open flows (absent in a daemon older than their table). An entry marked
    // established was copied to the flow table when its handshake completed and is only
    // waiting to be evicted.
    let half_open_before = entries.len();
    match open_map(rec, names::HALF_OPEN) {
        Ok(map) => {
            let half_open = HashMap::<MapData, FlowKey, FlowState>::try_from(map)
                .map_err(map_err(names::HALF_OPEN, rec))?;
            entries.extend(
                half_open
                    .iter()
                    .filter_map(|e| e.ok())
                    .map(|(_, fs)| fs)
                    .filter(|fs| fs.flags & m::FLOW_ESTABLISHED == 0),
            );
        }
        Err(StatsError::Unrecorded(_)) => {}
        Err(e) => return Err(e),
    }
    let half_open = (entries.len() - half_open_before) as u64;
    let half_open_expired = entries[half_open_before..]
        .iter()
        .filter(|fs| lb_common::flow::expired(fs, &config, now))
        .count() as u64;
    let active = active_per_backend(entries.iter().copied(), &config, now);
    let holds = snat_holds(entries, &config, now);
    // The SNAT address pool (absent in a daemon older than it: each backend's own only).
    let pool: Vec<[u32; 4]> = match open_map(rec, names::SNAT_ADDRS) {
        Ok(map) => {
            let a = Array::<MapData, [u32; 4]>::try_from(map)
                .map_err(map_err(names::SNAT_ADDRS, rec))?;
            a.iter().filter_map(|v| v.ok()).collect()
        }
        Err(StatsError::Unrecorded(_)) => Vec::new(),
        Err(e) => return Err(e),
    };

    let mut services = Vec::new();
    for s in &rec.services {
        let mut bes = Vec::new();
        for b in &s.backends {
            let mb = backends
                .get(&b.id, 0)
                .map_err(map_err(names::BACKENDS, rec))?;
            let state = if b.state.is_empty() {
                map_state(mb.state).to_string()
            } else {
                b.state.clone()
            };
            let c = traffic(&be_stats, b.id).map_err(map_err(names::BACKEND_STATS, rec))?;
            bes.push(BackendReport {
                addr: b.addr.to_string(),
                weight: b.weight,
                state,
                active_flows: active.get(&b.id).copied().unwrap_or(0),
                health: None,
                counters: c.into(),
                snat: if s.mode == crate::config::Mode::Nat.name() {
                    snat_ports(b.id, &mb, &pool, &holds, &config)
                } else {
                    Vec::new()
                },
            });
        }
        let c = traffic(&svc_stats, s.id).map_err(map_err(names::SERVICE_STATS, rec))?;
        services.push(ServiceReport {
            name: s.name.clone(),
            vip: s.vip.to_string(),
            mode: s.mode.clone(),
            active_flows: bes.iter().map(|b| b.active_flows).sum(),
            counters: c.into(),
            backends: bes,
            proxy: None,
            dns: None,
        });
    }
    let mut totals = BTreeMap::new();
    for c in &COUNTER_TABLE {
        let v: u64 = counters
            .get(&c.index, 0)
            .map_err(map_err(names::COUNTERS, rec))?
            .iter()
            .sum();
        totals.insert(c.name.to_string(), v);
    }
    Ok(Report {
        pid: rec.pid,
        interfaces: rec.attachments.clone(),
        services,
        flows,
        flow_capacity,
        half_open,
        half_open_expired,
        counters: totals,
        announce_table: rec.announce_table,
        announced: rec.announced.clone(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dataplane::Attachment;
    use std::time::Duration;

    fn counters(new_flows: u64, bytes_in: u64, bytes_out: u64, packets: u64) -> Counters {
        Counters {
            packets_in: packets,
            bytes_in,
            packets_out: packets,
            bytes_out,
            new_flows,
        }
    }

    /// A report with one service of two backends, the second one down with a failing
    /// HTTP check; `scale` multiplies every counter.
    pub(crate) fn sample(scale: u64) -> Report {
        let mut latency = LatencyHistogram::default();
        latency.observe(Duration::from_micros(400));
        latency.observe(Duration::from_millis(2));
        let mut counters_map = BTreeMap::new();
        for c in &COUNTER_TABLE {
            counters_map.insert(c.name.to_string(), 0);
        }
        counters_map.insert("forwarded_in".into(), 100 * scale);
        counters_map.insert("forwarded_out".into(), 90 * scale);
        counters_map.insert("drop_no_backend".into(), 3 * scale);
        Report {
            pid: 42,
            interfaces: vec![Attachment {
                iface: "eth0".into(),
                ifindex: 2,
                mode: "native".into(),
            }],
            services: vec![ServiceReport {
                name: "web".into(),
                vip: "198.18.100.1:80".into(),
                mode: "nat".into(),
                active_flows: 7,
                counters: counters(10 * scale, 4096 * scale, 2048 * scale, 50 * scale),
                backends: vec![
                    BackendReport {
                        addr: "198.18.1.11:80".into(),
                        weight: 2,
                        state: "up".into(),
                        active_flows: 7,
                        health: Some(HealthReport {
                            check: "http:/health".into(),
                            status: "up".into(),
                            reason: None,
                            checks_passed: 5,
                            checks_failed: 0,
                            latency: latency.clone(),
                        }),
                        counters: counters(10 * scale, 4096 * scale, 2048 * scale, 50 * scale),
                        snat: vec![SnatPorts {
                            addr: "198.18.1.1".into(),
                            in_use: 7,
                            time_wait: 2,
                            free: 22_759,
                        }],
                    },
                    BackendReport {
                        addr: "198.18.1.12:80".into(),
                        weight: 1,
                        state: "down".into(),
                        active_flows: 0,
                        health: Some(HealthReport {
                            check: "http:/health".into(),
                            status: "down".into(),
                            reason: Some("status 503".into()),
                            checks_passed: 1,
                            checks_failed: 3,
                            latency,
                        }),
                        counters: Counters::default(),
                        snat: vec![SnatPorts {
                            addr: "198.18.1.1".into(),
                            in_use: 0,
                            time_wait: 0,
                            free: 22_768,
                        }],
                    },
                ],
                proxy: None,
                dns: None,
            }],
            flows: 9,
            flow_capacity: 1000,
            half_open: 3,
            half_open_expired: 0,
            counters: counters_map,
            announce_table: None,
            announced: Vec::new(),
        }
    }

    fn flow(backend: u16, last_seen_ns: u64, flags: u8) -> FlowState {
        FlowState {
            last_seen_ns,
            backend,
            flags,
            ..Default::default()
        }
    }

    #[test]
    fn active_flows_follow_the_xdp_expiry_rule_and_skip_closed_ones() {
        let cfg = GlobalConfig {
            idle_timeout_ns: 1_000,
            closed_timeout_ns: 100,
            half_open_timeout_ns: 0,
            ..Default::default()
        };
        let now = 10_000;
        let entries = [
            flow(1, 9_500, 0),                   // active
            flow(1, 9_000, 0),                   // exactly at the idle timeout: active
            flow(1, 8_999, 0),                   // idle too long
            flow(1, 10_050, 0),                  // seen after `now` was read: active
            flow(2, 9_990, m::FLOW_FIN_CLIENT),  // half closed: active
            flow(2, 9_990, m::FLOW_CLOSED),      // closed both ways
            flow(2, 9_990, m::FLOW_RST),         // reset
            flow(3, 9_990, m::FLOW_FIN_BACKEND), // half closed: active
        ];
        let active = active_per_backend(entries, &cfg, now);
        assert_eq!(active.get(&1), Some(&3));
        assert_eq!(active.get(&2), Some(&1));
        assert_eq!(active.get(&3), Some(&1));
        assert_eq!(active.len(), 3);
    }

    #[test]
    fn snat_ports_count_each_port_once_by_its_strongest_hold_per_address() {
        let cfg = GlobalConfig {
            idle_timeout_ns: 1_000,
            closed_timeout_ns: 100,
            ..Default::default()
        };
        let now = 10_000;
        let on = |backend: u16, idx: u8, port: u16, last_seen_ns: u64, flags: u8| FlowState {
            snat_port: port.to_be(),
            snat_idx: idx,
            ..flow(backend, last_seen_ns, flags)
        };
        let open = m::FLOW_REPLIED | m::FLOW_ESTABLISHED;
        let tw = open | m::FLOW_CLOSED | m::FLOW_BACKEND_TIME_WAIT;
        let holds = snat_holds(
            [
                on(1, 0, 100, 9_900, open),                                     // in use
                on(1, 0, 101, 9_900, tw),                                       // TIME_WAIT
                on(1, 0, 101, 9_950, open), // the same port, in use again
                on(1, 0, 102, 9_900, tw),   // TIME_WAIT
                on(1, 0, 103, 9_900, open | m::FLOW_RST), // reset: free
                on(1, 0, 104, 8_000, open), // idle past the timeout: free
                on(1, 1, 100, 9_900, open), // the same port on the 2nd address
                on(2, 0, 100, 9_900, m::FLOW_CLOSED | open), // the backend's LAST_ACK: in use
                on(2, 0, 101, 9_900, m::FLOW_CLOSED | open | m::FLOW_LAST_ACK), // free
            ],
            &cfg,
            now,
        );
        assert_eq!(holds.get(&(1, 0)), Some(&(2, 1)));
        assert_eq!(holds.get(&(1, 1)), Some(&(1, 0)));
        assert_eq!(holds.get(&(2, 0)), Some(&(1, 0)));
        let ip = |a: [u8; 4]| [u32::from_ne_bytes(a), 0, 0, 0];
        let cfg = GlobalConfig {
            snat_port_min: 10_000,
            snat_port_max: 10_099,
            snat_addrs: [2, 0],
            ..cfg
        };
        let pool = [ip([198, 18, 1, 1]), ip([198, 18, 1, 2])];
        let b = Backend {
            snat_addr: ip([198, 18, 1, 1]),
            family: m::FAMILY_V4,
            ..Default::default()
        };
        let ports = |addr: &str, in_use, time_wait| SnatPorts {
            addr: addr.into(),
            in_use,
            time_wait,
            free: 100 - in_use - time_wait,
        };
        assert_eq!(
            snat_ports(1, &b, &pool, &holds, &cfg),
            [ports("198.18.1.1", 2, 1), ports("198.18.1.2", 1, 0)]
        );
        let none = Backend {
            family: m::FAMILY_V4,
            ..Default::default()
        };
        assert!(
            snat_ports(1, &none, &pool, &holds, &cfg).is_empty(),
            "no SNAT address"
        );
    }

    #[test]
    fn json_keeps_the_fields_tests_read_and_has_the_new_ones() {
        let mut r = sample(1);
        r.services[0].backends[1].health = None;
        let v = serde_json::to_value(&r).unwrap();
        let b = &v["services"][0]["backends"][0];
        assert_eq!(b["addr"], "198.18.1.11:80");
        assert_eq!(b["counters"]["new_flows"], 10);
        assert_eq!(b["state"], "up");
        assert_eq!(b["active_flows"], 7);
        assert_eq!(b["health"]["check"], "http:/health");
        assert_eq!(b["health"]["latency"]["count"], 2);
        assert!(v["services"][0]["backends"][1]["health"].is_null());
        assert_eq!(v["services"][0]["active_flows"], 7);
        assert_eq!(v["counters"]["drop_no_backend"], 3);
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(
            back.services[0].backends[0].counters,
            r.services[0].backends[0].counters
        );
    }
}
