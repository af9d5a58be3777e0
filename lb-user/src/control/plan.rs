//! A plan: the ordered map writes and side effects one control decision needs. The
//! model (`model`) produces plans without touching anything; `Control` executes them
//! in order against the data path, the proxy and the health checkers.
//!
//! Ordering rule the model keeps: a backend that becomes usable is written (UP) before
//! the Maglev table that names it; one that stops being usable is written after the
//! table that no longer names it. So a new flow never picks a backend that is not up.
//! Likewise a service's allowlist ranges are written before the flag that makes the
//! program read them, and removed after, so no source the old and new lists both hold
//! is ever refused.

use crate::config::{Cidr, ProxyConfig, SynCookies};
use crate::dataplane::Forwarding;
use crate::health::HealthConfig;
use lb_common::maglev::MaglevBackend;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    // Map writes, executed by `Dataplane`.
    /// Writes backend slot `id`: where it is, which SNAT address reaches it, its
    /// `lb_common::maps::BACKEND_*` state.
    SetBackend {
        id: u32,
        service: u32,
        addr: SocketAddr,
        snat_ip: IpAddr,
        state: u8,
    },
    /// Builds the Maglev table of `members` into table half `half` of service slot
    /// `service`, then points the VIP at it (one SERVICES update).
    InstallTable {
        service: u32,
        vip: SocketAddr,
        half: u32,
        forwarding: Forwarding,
        members: Vec<MaglevBackend>,
    },
    /// Adds `ranges` to service slot `service`'s allowlist.
    AllowAdd {
        service: u32,
        ranges: Vec<Cidr>,
    },
    /// Takes `ranges` out of service slot `service`'s allowlist.
    AllowRemove {
        service: u32,
        ranges: Vec<Cidr>,
    },
    /// Writes the connection (client, VIP, one packet in how many) whose packets the
    /// program reports, or none.
    SetWatch {
        spec: Option<(SocketAddr, SocketAddr, u32)>,
    },
    /// Rewrites the `lb_common::maps::ACCESS_*` bits of the VIP's service entry.
    SetAccess {
        vip: SocketAddr,
        access: u8,
    },
    /// Empties backend slot `id`.
    ClearBackend {
        id: u32,
    },
    /// Zeroes the counters of a service slot about to be used.
    ResetServiceCounters {
        id: u32,
    },
    /// Zeroes the counters of a backend slot about to be used.
    ResetBackendCounters {
        id: u32,
    },
    /// Removes the VIP from SERVICES.
    RemoveService {
        vip: SocketAddr,
    },
    /// Steers connections to a proxy VIP to the daemon's listener.
    SetProxyVip {
        vip: SocketAddr,
    },
    RemoveProxyVip {
        vip: SocketAddr,
    },
    /// Writes the flow timeouts (the running configuration's).
    SetTimeouts {
        idle: Duration,
        closed: Duration,
        half_open: Duration,
    },
    /// Writes the per-source new-flow limit (the running configuration's; rate 0: off).
    SetSourceLimit {
        rate: u32,
        burst: u32,
    },
    /// Writes when SYN cookies answer (the running configuration's).
    SetSynCookies {
        mode: SynCookies,
        rate: u32,
    },
    /// Writes whether a DNAT service exists (the running configuration's): its replies
    /// come back to any port, so the program looks them up outside the SNAT range too.
    SetDnatReplies {
        on: bool,
    },

    // Side effects.
    /// Starts (or restarts) the checker whose results carry `check_id`.
    StartChecker {
        check_id: u64,
        addr: SocketAddr,
        spec: HealthConfig,
        first_delay: Duration,
    },
    StopChecker {
        check_id: u64,
    },
    /// The proxy's accept path learns a proxy service.
    RegisterProxy {
        name: String,
        vip: SocketAddr,
        proxy: ProxyConfig,
    },
    /// The accept path forgets it and cuts its connections.
    UnregisterProxy {
        name: String,
        vip: SocketAddr,
    },
    /// The proxy's table for a service: the same members as its Maglev table.
    ProxyTable {
        service: String,
        members: Vec<MaglevBackend>,
        targets: Vec<(u32, SocketAddr)>,
    },
    /// Cuts the proxied connections of a backend.
    ProxyCut {
        service: String,
        addr: SocketAddr,
    },
    ProxyTimeouts {
        connect: Duration,
        idle: Duration,
    },
    /// The routing table delivers a proxy VIP locally (first service on it).
    AddLocalRoute {
        ip: IpAddr,
    },
    /// No service uses the VIP address any more.
    RemoveLocalRoute {
        ip: IpAddr,
    },
    /// Resolves the neighbour entries of new backends.
    WarmNeighbours {
        ips: Vec<IpAddr>,
    },
}

/// The steps of one decision, in the order they must run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}
