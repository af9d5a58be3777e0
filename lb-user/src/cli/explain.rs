//! `lb explain --vip IP:PORT --client IP:PORT`: where a client's connection to a VIP
//! goes and why, read from the running data path's own maps with the same functions the
//! XDP program uses (lb-common's flow hash and Maglev slot): the service, the hash and
//! slot, the backend the live table names, the flow table's entry if the connection
//! already has one (which wins over the table: a flow keeps its backend), and what the
//! service's source allowlist and the per-source new-flow limit say of the client.

use crate::api::report::{StatsError, open_map};
use crate::dataplane::ServiceSlot;
use crate::dataplane::runtime::{self, RuntimeRecord};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData};
use lb_common::flow::{closed, expired};
use lb_common::hash::flow_hash;
use lb_common::maglev::{self, NO_BACKEND};
use lb_common::maps::{
    ACCESS_CUT_ESTABLISHED, ACCESS_LIST, ACCESS_RESET, ALLOW_ID_BITS, FLOW_ESTABLISHED, FlowKey,
    FlowState, GlobalConfig, Service, SourceKey, VipKey, allow_data, names,
};
use lb_common::source_limit::{Decision, admit, tokens};
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
    #[error("asking the daemon to report the connection's packets: {0}")]
    Watch(#[from] crate::api::client::ClientError),
    #[error("writing the report: {0}")]
    Io(#[from] std::io::Error),
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
    /// What the service's source allowlist says of the client.
    pub access: AccessReport,
    /// What the per-source new-flow limit says of the client now.
    pub source_limit: SourceLimitReport,
}

#[derive(Debug, Serialize)]
pub struct AccessReport {
    /// Whether the service has an allowlist (else everyone may connect).
    pub list: bool,
    /// Whether the client's address is in it (true without a list).
    pub allowed: bool,
    /// What a refused segment gets: "drop" or "reset".
    pub refused_with: &'static str,
    /// Whether a refused source's established flows are cut too.
    pub cuts_established: bool,
}

#[derive(Debug, Serialize)]
pub struct SourceLimitReport {
    /// New flows a second per source (IPv4 address, IPv6 /64); 0: no limit.
    pub rate: u32,
    pub burst: u32,
    /// Whether a SYN from the client would be admitted now.
    pub admits_now: bool,
    /// New flows the client's bucket holds now.
    pub tokens: u32,
}

#[derive(Debug, Serialize)]
pub struct FlowReport {
    pub backend: Option<String>,
    pub established: bool,
    /// FIN both ways or a RST: a SYN from this port opens a new flow.
    pub closed: bool,
    /// Seconds since its first packet; unknown (null) for a flow an upgrade carried
    /// over from a table that did not keep it.
    pub age_secs: Option<f64>,
    /// Seconds since its last packet.
    pub idle_secs: f64,
    /// Packets the LB took through the entry, both directions (close, not exact: see
    /// `lb_common::maps::FlowState::packets`).
    pub packets: u64,
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
    let entry = flow_entry(&rec, &key)?;
    let now = crate::sys::monotonic_ns();
    let flow = entry.map(|fs| FlowReport {
        backend: addr_of(u32::from(fs.backend)),
        established: fs.flags & FLOW_ESTABLISHED != 0,
        closed: closed(fs.flags),
        age_secs: (fs.first_seen_ns != 0)
            .then(|| now.saturating_sub(fs.first_seen_ns) as f64 / 1e9),
        idle_secs: now.saturating_sub(fs.last_seen_ns) as f64 / 1e9,
        packets: fs.packets,
        expired: expired(&fs, &config, now),
        snat_port: u16::from_be(fs.snat_port),
    });
    let access = access(&rec, &svc, client)?;
    let source_limit = source_limit(&rec, &config, client, now)?;
    let (backend, why) = match refusal(&access, &flow) {
        Some(why) => (None, why),
        None => decide(slot_of, &table_backend, &flow),
    };
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
        access,
        source_limit,
    })
}

/// The connection's flow entry: an established flow is in FLOWS; one whose handshake is
/// not complete is in HALF_OPEN until it is (a daemon older than that table has none).
fn flow_entry(rec: &RuntimeRecord, key: &FlowKey) -> Result<Option<FlowState>, ExplainError> {
    for name in [names::FLOWS, names::HALF_OPEN] {
        let map = match open_map(rec, name) {
            Ok(m) => m,
            Err(StatsError::Unrecorded(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let table = HashMap::<MapData, FlowKey, FlowState>::try_from(map)
            .map_err(|e| ExplainError::Map(name, e))?;
        if let Ok(fs) = table.get(key, 0) {
            return Ok(Some(fs));
        }
    }
    Ok(None)
}

/// The service's allowlist verdict on `client` (the `ALLOW` lookup the program makes).
fn access(
    rec: &RuntimeRecord,
    svc: &Service,
    client: SocketAddr,
) -> Result<AccessReport, ExplainError> {
    let list = svc.access & ACCESS_LIST != 0;
    let allowed = !list || {
        let trie = LpmTrie::<MapData, [u8; 20], u8>::try_from(open_map(rec, names::ALLOW)?)
            .map_err(|e| ExplainError::Map(names::ALLOW, e))?;
        let (bits, data) = match client.ip() {
            std::net::IpAddr::V4(a) => (32, allow_data(svc.id, &a.octets())),
            std::net::IpAddr::V6(a) => (128, allow_data(svc.id, &a.octets())),
        };
        trie.get(&Key::new(ALLOW_ID_BITS + bits, data), 0).is_ok()
    };
    Ok(AccessReport {
        list,
        allowed,
        refused_with: if svc.access & ACCESS_RESET != 0 {
            "reset"
        } else {
            "drop"
        },
        cuts_established: svc.access & ACCESS_CUT_ESTABLISHED != 0,
    })
}

/// The client's new-flow bucket (the program's `source_limit`), read, not taken from.
fn source_limit(
    rec: &RuntimeRecord,
    config: &GlobalConfig,
    client: SocketAddr,
    now: u64,
) -> Result<SourceLimitReport, ExplainError> {
    let (rate, burst) = (config.source_rate, config.source_burst);
    if rate == 0 {
        return Ok(SourceLimitReport {
            rate,
            burst,
            admits_now: true,
            tokens: 0,
        });
    }
    let buckets =
        HashMap::<MapData, SourceKey, u64>::try_from(open_map(rec, names::SOURCE_BUCKETS)?)
            .map_err(|e| ExplainError::Map(names::SOURCE_BUCKETS, e))?;
    let (words, family) = lb_common::addr::ip_to_words(client.ip());
    let next = buckets.get(&SourceKey::of(&words, family), 0).ok();
    Ok(SourceLimitReport {
        rate,
        burst,
        admits_now: matches!(admit(next, now, rate, burst), Decision::Admit { .. }),
        tokens: tokens(next, now, rate, burst),
    })
}

/// Why the program refuses the connection's packets, if it does: a source outside the
/// allowlist opens no flow, and keeps none with `deny_established`.
fn refusal(a: &AccessReport, flow: &Option<FlowReport>) -> Option<String> {
    if a.allowed {
        return None;
    }
    let answer = match a.refused_with {
        "reset" => "answered with a RST",
        _ => "dropped",
    };
    let live = flow.as_ref().is_some_and(|f| !f.expired && !f.closed);
    if a.cuts_established {
        return Some(format!(
            "the client is not in the service's allowlist, which cuts established flows: every segment is {answer}"
        ));
    }
    (!live).then(|| {
        format!("the client is not in the service's allowlist: a new connection is {answer}")
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
            "  flow table: to {}, {}, {}idle {:.1} s, {} packets{}{}\n",
            f.backend.as_deref().unwrap_or("?"),
            if f.closed {
                "closed"
            } else if f.established {
                "established"
            } else {
                "half-open"
            },
            f.age_secs.map_or_else(
                || "age unknown, ".to_string(),
                |a| format!("age {a:.1} s, ")
            ),
            f.idle_secs,
            f.packets,
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
    let a = &e.access;
    s.push_str(&match (a.list, a.allowed) {
        (false, _) => "  allowlist: none (everyone may connect)\n".to_string(),
        (true, true) => "  allowlist: the client is in it\n".to_string(),
        (true, false) => format!(
            "  allowlist: the client is not in it (refused: {}{})\n",
            a.refused_with,
            if a.cuts_established {
                ", established flows too"
            } else {
                ""
            }
        ),
    });
    let l = &e.source_limit;
    s.push_str(&match l.rate {
        0 => "  source limit: none\n".to_string(),
        r => format!(
            "  source limit: {r} new flows/s, burst {}: the client's bucket holds {} now ({})\n",
            l.burst,
            l.tokens,
            if l.admits_now {
                "a SYN is admitted"
            } else {
                "a SYN is dropped"
            }
        ),
    });
    s
}

/// How often `watch` renews the daemon's watch (its lease is `WATCH_LEASE`).
const RENEW: std::time::Duration = std::time::Duration::from_secs(10);

/// One reported packet, as `watch` prints it.
#[derive(Debug, Serialize)]
pub struct WatchLine {
    /// Seconds since the watch began.
    pub t: f64,
    /// TCP flags: `S`, `A`, `F`, `R`, `P`.
    pub flags: String,
    pub seq: u32,
    pub ack: u32,
    /// The frame's bytes.
    pub len: u32,
    /// The flow entry's backend and state when the line was printed.
    pub flow_backend: Option<String>,
    pub flow_state: Option<&'static str>,
}

/// What `lb explain --watch` follows, and how.
pub struct Watch {
    pub vip: SocketAddr,
    pub client: SocketAddr,
    /// Report one packet in `every`.
    pub every: u32,
    /// The daemon's admin socket.
    pub socket: std::path::PathBuf,
    /// Stop after this long; `None`: when `stop` says so.
    pub duration: Option<std::time::Duration>,
    /// One JSON object per packet instead of a line.
    pub json: bool,
}

/// Follows the packets of `w.client` → `w.vip` as the data path sees them, until `stop`
/// says so or `w.duration` has passed, printing a line (or a JSON object) for each: asks
/// the daemon, over its admin socket, to report them, renews that every [`RENEW`], and
/// says stop at the end. Returns how many it printed.
pub fn watch(
    w: Watch,
    stop: &std::sync::atomic::AtomicBool,
    out: &mut dyn std::io::Write,
) -> Result<u64, ExplainError> {
    let Watch {
        vip,
        client,
        every,
        socket,
        duration,
        json,
    } = w;
    use crate::api::client::{Target, send};
    use crate::api::request::Command;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    let rec = RuntimeRecord::read(&runtime::record_path(runtime::netns_inode()?))?;
    let mut ring = aya::maps::RingBuf::try_from(open_map(&rec, names::WATCH_EVENTS)?)
        .map_err(|e| ExplainError::Map(names::WATCH_EVENTS, e))?;
    // What an earlier watch left unread is not this one's.
    while ring.next().is_some() {}
    let target = Target::Socket(socket);
    let ask = Command::Watch { vip, client, every };
    send(&target, &ask)?;
    let key = FlowKey::tcp(client, vip);
    let start = Instant::now();
    let start_ns = crate::sys::monotonic_ns();
    let mut renewed = start;
    let mut lines = 0;
    let result = loop {
        if stop.load(Ordering::Relaxed) || duration.is_some_and(|d| start.elapsed() >= d) {
            break Ok(lines);
        }
        if renewed.elapsed() >= RENEW {
            if let Err(e) = send(&target, &ask) {
                break Err(e.into());
            }
            renewed = Instant::now();
        }
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            events.extend(lb_common::maps::WatchEvent::from_bytes(&item));
        }
        if events.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let entry = flow_entry(&rec, &key)?;
        let (flow_backend, flow_state) = match &entry {
            Some(fs) => (
                (rec.services.iter())
                    .flat_map(|s| &s.backends)
                    .find(|b| b.id == u32::from(fs.backend))
                    .map(|b| b.addr.to_string()),
                Some(if closed(fs.flags) {
                    "closed"
                } else if fs.flags & FLOW_ESTABLISHED != 0 {
                    "established"
                } else {
                    "half-open"
                }),
            ),
            None => (None, None),
        };
        for e in events {
            let line = WatchLine {
                t: e.ns.saturating_sub(start_ns) as f64 / 1e9,
                flags: tcp_flags(e.tcp_flags),
                seq: e.seq,
                ack: e.ack,
                len: e.len,
                flow_backend: flow_backend.clone(),
                flow_state,
            };
            if json {
                writeln!(out, "{}", serde_json::to_string(&line).unwrap_or_default())?;
            } else {
                writeln!(
                    out,
                    "{:>9.3}s {client} → {vip} [{}] seq {} ack {} len {}  flow: {}",
                    line.t,
                    line.flags,
                    line.seq,
                    line.ack,
                    line.len,
                    match (&line.flow_backend, line.flow_state) {
                        (Some(b), Some(s)) => format!("{s}, to {b}"),
                        _ => "none".to_string(),
                    }
                )?;
            }
            out.flush()?;
            lines += 1;
        }
    };
    // Tell the daemon to stop comparing packets; its lease ends it anyway.
    let _ = send(&target, &Command::Unwatch);
    result
}

/// TCP flags as letters, in header order (`FSRPAU`).
fn tcp_flags(f: u8) -> String {
    [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, 'A'),
        (0x20, 'U'),
    ]
    .iter()
    .filter(|(bit, _)| f & bit != 0)
    .map(|(_, c)| *c)
    .collect()
}
