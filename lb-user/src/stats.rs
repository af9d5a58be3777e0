//! `lb stats`: reads the running daemon's per-CPU counters (found through its runtime
//! record) and prints them summed, as a table or as JSON.

use crate::runtime::{RuntimeError, RuntimeRecord};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use lb_common::maps::{self as m, Backend, FlowKey, FlowState, TrafficCounters, names};
use lb_common::stats::COUNTER_NAMES;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

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
}

#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
pub struct BackendReport {
    pub addr: String,
    pub weight: u32,
    pub state: &'static str,
    pub counters: Counters,
}

#[derive(Debug, Serialize)]
pub struct ServiceReport {
    pub name: String,
    pub vip: String,
    pub mode: String,
    pub counters: Counters,
    pub backends: Vec<BackendReport>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub pid: u32,
    pub interfaces: Vec<crate::dataplane::Attachment>,
    pub services: Vec<ServiceReport>,
    /// Entries in the flow table (live and not yet evicted idle ones), and its capacity.
    pub flows: u64,
    pub flow_capacity: u32,
    pub counters: BTreeMap<&'static str, u64>,
}

fn open(rec: &RuntimeRecord, name: &'static str) -> Result<Map, StatsError> {
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

/// Collects a report from the daemon running in this network namespace.
pub fn collect() -> Result<Report, StatsError> {
    let rec = RuntimeRecord::read_current()?;
    let svc_stats =
        PerCpuArray::<MapData, TrafficCounters>::try_from(open(&rec, names::SERVICE_STATS)?)
            .map_err(map_err(names::SERVICE_STATS, &rec))?;
    let be_stats =
        PerCpuArray::<MapData, TrafficCounters>::try_from(open(&rec, names::BACKEND_STATS)?)
            .map_err(map_err(names::BACKEND_STATS, &rec))?;
    let backends = Array::<MapData, Backend>::try_from(open(&rec, names::BACKENDS)?)
        .map_err(map_err(names::BACKENDS, &rec))?;
    let counters = PerCpuArray::<MapData, u64>::try_from(open(&rec, names::COUNTERS)?)
        .map_err(map_err(names::COUNTERS, &rec))?;
    let flows_map = open(&rec, names::FLOWS)?;
    let flow_capacity = match &flows_map {
        Map::LruHashMap(d) | Map::HashMap(d) => d.info().map(|i| i.max_entries()).unwrap_or(0),
        _ => 0,
    };
    let flows = HashMap::<MapData, FlowKey, FlowState>::try_from(flows_map)
        .map_err(map_err(names::FLOWS, &rec))?;

    let mut services = Vec::new();
    for s in &rec.services {
        let mut bes = Vec::new();
        for b in &s.backends {
            let state = match backends
                .get(&b.id, 0)
                .map_err(map_err(names::BACKENDS, &rec))?
                .state
            {
                m::BACKEND_UP => "up",
                m::BACKEND_DRAINING => "draining",
                m::BACKEND_DOWN => "down",
                _ => "empty",
            };
            let c = traffic(&be_stats, b.id).map_err(map_err(names::BACKEND_STATS, &rec))?;
            bes.push(BackendReport {
                addr: b.addr.to_string(),
                weight: b.weight,
                state,
                counters: c.into(),
            });
        }
        let c = traffic(&svc_stats, s.id).map_err(map_err(names::SERVICE_STATS, &rec))?;
        services.push(ServiceReport {
            name: s.name.clone(),
            vip: s.vip.to_string(),
            mode: s.mode.clone(),
            counters: c.into(),
            backends: bes,
        });
    }
    let mut totals = BTreeMap::new();
    for (i, name) in COUNTER_NAMES.iter().enumerate() {
        let v: u64 = counters
            .get(&(i as u32), 0)
            .map_err(map_err(names::COUNTERS, &rec))?
            .iter()
            .sum();
        totals.insert(*name, v);
    }
    let flows = flows.keys().filter(|k| k.is_ok()).count() as u64;
    Ok(Report {
        pid: rec.pid,
        interfaces: rec.attachments.clone(),
        services,
        flows,
        flow_capacity,
        counters: totals,
    })
}

/// Human-readable table of a report.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let ifaces: Vec<String> = r
        .interfaces
        .iter()
        .map(|a| format!("{} ({})", a.iface, a.mode))
        .collect();
    let _ = writeln!(
        out,
        "lb pid {} on {}; flows {} of {}",
        r.pid,
        ifaces.join(", "),
        r.flows,
        r.flow_capacity
    );
    for s in &r.services {
        let _ = writeln!(out, "\nservice {} {} [{}]", s.name, s.vip, s.mode);
        let _ = writeln!(
            out,
            "  {:<42} {:>6} {:>8} {:>10} {:>12} {:>10} {:>12} {:>10}",
            "backend",
            "weight",
            "state",
            "new flows",
            "pkts in",
            "bytes in",
            "pkts out",
            "bytes out"
        );
        let row = |out: &mut String, name: &str, w: String, st: &str, c: &Counters| {
            let _ = writeln!(
                out,
                "  {:<42} {:>6} {:>8} {:>10} {:>12} {:>10} {:>12} {:>10}",
                name,
                w,
                st,
                c.new_flows,
                c.packets_in,
                human_bytes(c.bytes_in),
                c.packets_out,
                human_bytes(c.bytes_out)
            );
        };
        for b in &s.backends {
            row(
                &mut out,
                &b.addr,
                b.weight.to_string(),
                b.state,
                &b.counters,
            );
        }
        row(&mut out, "total", String::new(), "", &s.counters);
    }
    let _ = writeln!(out, "\npackets");
    for (name, v) in &r.counters {
        let _ = writeln!(out, "  {name:<28} {v:>12}");
    }
    out
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}
