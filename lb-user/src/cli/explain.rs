//! `lb explain --vip IP:PORT --client IP:PORT`: where a client's connection to a VIP
//! goes and why, read from the running data path's own maps with the same functions the
//! XDP program uses (lb-common's flow hash and Maglev slot): the service, the hash and
//! slot, the backend the live table names, and the flow table's entry if the connection
//! already has one (which wins over the table: a flow keeps its backend).

use crate::api::report::{StatsError, open_map};
use crate::dataplane::ServiceSlot;
use crate::dataplane::runtime::{self, RuntimeRecord};
use aya::maps::{Array, HashMap, MapData};
use lb_common::flow::{closed, expired};
use lb_common::hash::flow_hash;
use lb_common::maglev::{self, NO_BACKEND};
use lb_common::maps::{FLOW_ESTABLISHED, FlowKey, FlowState, GlobalConfig, Service, VipKey, names};
use serde::Serialize;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Stats(#[from] StatsError),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("--client {client} and --vip {vip} are of different address families")]
    Families { client: SocketAddr, vip: SocketAddr },
    #[error("no service on {0}: lb does not balance it (services: {1})")]
    NoService(SocketAddr, String),
    #[error("reading {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
}

/// What happens to one connection.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub service: String,
    pub mode: String,
    pub vip: SocketAddr,
    pub client: SocketAddr,
    /// The flow hash of (client, VIP, TCP).
    pub hash: u32,
    /// Its slot in the service's Maglev table, of `ring_size`.
    pub slot: u32,
    pub ring_size: u32,
    /// What the live table names at that slot (`None`: no backend is up).
    pub table_backend: Option<String>,
    /// Where the connection's packets go: the flow's backend if it has a flow, else the
    /// table's ("IP:PORT"); `None` when nothing takes it (the LB answers a SYN with a RST).
    pub backend: Option<String>,
    /// Why, in a sentence.
    pub why: String,
    /// The flow table's entry, if the connection has one.
    pub flow: Option<FlowReport>,
    /// Every backend of the service: address, weight, state.
    pub backends: Vec<BackendLine>,
}

#[derive(Debug, Serialize)]
pub struct FlowReport {
    pub backend: Option<String>,
    pub established: bool,
    /// FIN both ways or a RST: a SYN from this port opens a new flow.
    pub closed: bool,
    /// Seconds since its last packet.
    pub idle_secs: f64,
    pub expired: bool,
    /// Its source port toward the backend (nat mode).
    pub snat_port: u16,
}

#[derive(Debug, Serialize)]
pub struct BackendLine {
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: String,
}

/// Explains the connection from `client` to `vip` with the daemon of this network
/// namespace.
pub fn explain(vip: SocketAddr, client: SocketAddr) -> Result<Explanation, ExplainError> {
    if vip.is_ipv4() != client.is_ipv4() {
        return Err(ExplainError::Families { client, vip });
    }
    let rec = RuntimeRecord::read(&runtime::record_path(runtime::netns_inode()?))?;
    let slot_of = rec.services.iter().find(|s| s.vip == vip).ok_or_else(|| {
        let all: Vec<String> = rec.services.iter().map(|s| s.vip.to_string()).collect();
        ExplainError::NoService(vip, all.join(", "))
    })?;
    let services = HashMap::<MapData, VipKey, Service>::try_from(open_map(&rec, names::SERVICES)?)
        .map_err(|e| ExplainError::Map(names::SERVICES, e))?;
    let svc = services
        .get(&VipKey::from_socket_addr(vip), 0)
        .map_err(|e| ExplainError::Map(names::SERVICES, e))?;
    let config = Array::<MapData, GlobalConfig>::try_from(open_map(&rec, names::CONFIG)?)
        .map_err(|e| ExplainError::Map(names::CONFIG, e))?
        .get(&0, 0)
        .map_err(|e| ExplainError::Map(names::CONFIG, e))?;
    let maglev_map = Array::<MapData, u32>::try_from(open_map(&rec, names::MAGLEV)?)
        .map_err(|e| ExplainError::Map(names::MAGLEV, e))?;
    let key = FlowKey::tcp(client, vip);
    let hash = flow_hash(&key);
    let slot = maglev::slot(hash, config.ring_size);
    let id = maglev_map
        .get(&svc.table_offset.wrapping_add(slot), 0)
        .map_err(|e| ExplainError::Map(names::MAGLEV, e))?;
    let addr_of = |id: u32| {
        slot_of
            .backends
            .iter()
            .find(|b| b.id == id)
            .map(|b| b.addr.to_string())
    };
    let table_backend = (id != NO_BACKEND).then(|| addr_of(id)).flatten();
    // An established flow is in FLOWS; one whose handshake is not complete is in
    // HALF_OPEN until it is (a daemon older than that table has none).
    let lookup = |name: &'static str| -> Result<Option<FlowState>, ExplainError> {
        let map = match open_map(&rec, name) {
            Ok(m) => m,
            Err(StatsError::Unrecorded(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let table = HashMap::<MapData, FlowKey, FlowState>::try_from(map)
            .map_err(|e| ExplainError::Map(name, e))?;
        Ok(table.get(&key, 0).ok())
    };
    let entry = match lookup(names::FLOWS)? {
        Some(fs) => Some(fs),
        None => lookup(names::HALF_OPEN)?,
    };
    let now = crate::sys::monotonic_ns();
    let flow = entry.map(|fs| FlowReport {
        backend: addr_of(u32::from(fs.backend)),
        established: fs.flags & FLOW_ESTABLISHED != 0,
        closed: closed(fs.flags),
        idle_secs: now.saturating_sub(fs.last_seen_ns) as f64 / 1e9,
        expired: expired(&fs, &config, now),
        snat_port: u16::from_be(fs.snat_port),
    });
    let (backend, why) = decide(slot_of, &table_backend, &flow);
    Ok(Explanation {
        service: slot_of.name.clone(),
        mode: slot_of.mode.clone(),
        vip,
        client,
        hash,
        slot,
        ring_size: config.ring_size,
        table_backend,
        backend,
        why,
        flow,
        backends: slot_of
            .backends
            .iter()
            .map(|b| BackendLine {
                addr: b.addr,
                weight: b.weight,
                state: b.state.clone(),
            })
            .collect(),
    })
}

/// Where the packets go, and why, by the program's rule: a live flow keeps its backend
/// while that backend is up or draining; a closed one only until a new SYN; otherwise
/// the table decides.
fn decide(
    svc: &ServiceSlot,
    table: &Option<String>,
    flow: &Option<FlowReport>,
) -> (Option<String>, String) {
    let serving = |addr: &Option<String>| {
        svc.backends.iter().any(|b| {
            Some(b.addr.to_string()) == *addr && (b.state == "up" || b.state == "draining")
        })
    };
    match (flow, table) {
        (Some(f), _) if !f.expired && !f.closed && serving(&f.backend) => {
            let b = f.backend.clone();
            let moved = f.backend != *table;
            let why = if moved {
                format!(
                    "the connection has a flow to {}: it keeps that backend (the Maglev table now names {})",
                    b.as_deref().unwrap_or("?"),
                    table.as_deref().unwrap_or("no backend")
                )
            } else {
                format!(
                    "the connection has a flow to {}, the backend the Maglev table names",
                    b.as_deref().unwrap_or("?")
                )
            };
            (b, why)
        }
        (_, Some(t)) => {
            let up = svc.backends.iter().filter(|b| b.state == "up").count();
            let flow = match flow {
                None => "no flow yet",
                Some(f) if f.expired => "its flow has expired",
                Some(f) if f.closed => "its flow is closed",
                Some(_) => "its flow's backend no longer serves",
            };
            (
                Some(t.clone()),
                format!(
                    "{flow}: a new connection goes where the Maglev table's slot names ({t}), among the {up} backends up, by weight"
                ),
            )
        }
        (_, None) => (
            None,
            "no backend of the service is up: the LB answers a SYN with a RST".to_string(),
        ),
    }
}

/// The explanation as an operator reads it.
pub fn render(e: &Explanation) -> String {
    let mut s = format!(
        "{} → {}: service {} ({})\n  flow hash {:#010x}, Maglev slot {} of {}: the table names {}\n",
        e.client,
        e.vip,
        e.service,
        e.mode,
        e.hash,
        e.slot,
        e.ring_size,
        e.table_backend.as_deref().unwrap_or("no backend")
    );
    match &e.flow {
        Some(f) => s.push_str(&format!(
            "  flow table: to {}, {}, idle {:.1} s{}{}\n",
            f.backend.as_deref().unwrap_or("?"),
            if f.closed {
                "closed"
            } else if f.established {
                "established"
            } else {
                "half-open"
            },
            f.idle_secs,
            if f.snat_port != 0 {
                format!(", SNAT port {}", f.snat_port)
            } else {
                String::new()
            },
            if f.expired {
                " (expired: the next packet starts over)"
            } else {
                ""
            }
        )),
        None => s.push_str("  flow table: no entry\n"),
    }
    s.push_str(&format!(
        "  backend: {}\n  why: {}\n  backends:",
        e.backend.as_deref().unwrap_or("none"),
        e.why
    ));
    for b in &e.backends {
        s.push_str(&format!(" {} (weight {}, {})", b.addr, b.weight, b.state));
    }
    s.push('\n');
    s
}
