//! The control plane's model: services and backends with their administrative and
//! health state, and every decision about them (health transitions, the admin API's
//! operations, drains), each recorded as an ordered [`Plan`] of map writes and side
//! effects. Pure: no BPF, sockets or runtime, so decisions and their write order are
//! unit-tested (`tests`); `Control` executes the plans.

use super::error::ControlError;
use super::plan::{Plan, Step};
use crate::config::{
    AccessConfig, BackendConfig, Cidr, Config, Encap, Mode, ProxyConfig, ProxyVersion,
    ServiceConfig,
};
use crate::dataplane::DataplaneError;
use crate::dataplane::Forwarding;
use crate::dataplane::adopt::Adopted;
use crate::health::histogram::LatencyHistogram;
use crate::health::path::DsrPath;
use crate::health::{self, CheckResult, HealthCheck, HealthConfig, Tracker, Transition};
use crate::proxy::codec::header;
use lb_common::addr::ip_bytes;
use lb_common::hash::backend_key;
use lb_common::maglev::MaglevBackend;
use lb_common::maps::{self as m, MAX_BACKENDS};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// What an operator asked of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin {
    /// In service (if healthy).
    Active,
    /// No new flows; existing flows continue until `deadline`. `remove`: then removed.
    Draining { deadline: Instant, remove: bool },
    /// Out of service after a drain; flows cut.
    Drained,
}

/// What the health checks say of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
    /// Added while running; waits for `rise` passed checks.
    Initial,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Initial => "initial",
        }
    }
}

pub struct BackendState {
    pub id: u32,
    pub addr: SocketAddr,
    pub weight: u32,
    pub snat_ip: IpAddr,
    pub admin: Admin,
    pub health: Health,
    pub(super) tracker: Tracker,
    /// Identifies this backend's check results (ids are never reused).
    pub check_id: u64,
    /// The last check failure.
    pub reason: Option<String>,
    pub checks_passed: u64,
    pub checks_failed: u64,
    pub latency: LatencyHistogram,
    /// The state last written to the BACKENDS map.
    pub(super) written: Option<u8>,
    /// Whether the last table built had it, to see it come (back) in.
    pub(super) was_in_table: bool,
    /// When it came into the table, while its slow start lasts.
    pub(super) ramp_since: Option<Instant>,
    /// Found in DNS: lookups add, re-weight and remove it, reloads leave it alone.
    pub discovered: bool,
}

impl BackendState {
    /// The state name operators see (API, `lb stats`, metrics).
    pub fn state(&self) -> &'static str {
        match (self.admin, self.health) {
            (Admin::Draining { .. }, _) => "draining",
            (Admin::Drained, _) => "drained",
            (Admin::Active, h) => h.name(),
        }
    }

    /// The state the XDP program sees.
    pub fn map_state(&self) -> u8 {
        match (self.admin, self.health) {
            (Admin::Active, Health::Up) => m::BACKEND_UP,
            (Admin::Draining { .. }, Health::Up) => m::BACKEND_DRAINING,
            _ => m::BACKEND_DOWN,
        }
    }

    /// Whether new flows may be balanced to it.
    pub fn in_table(&self) -> bool {
        self.map_state() == m::BACKEND_UP && self.weight > 0
    }
}

pub struct ServiceState {
    pub id: u32,
    pub name: String,
    pub vip: SocketAddr,
    pub mode: Mode,
    pub encap: Option<Encap>,
    pub proxy: ProxyConfig,
    pub health: HealthConfig,
    /// See `ServiceConfig::slow_start`.
    pub slow_start: Duration,
    pub live_half: u32,
    /// The members the live table was built from (`None` before the first build), so
    /// changes that leave them as they were do not rewrite the table.
    pub(super) table_members: Option<Vec<MaglevBackend>>,
    pub backends: Vec<BackendState>,
    /// Its source allowlist, as configured.
    pub access: AccessConfig,
    /// The ranges in `ALLOW` and the access bits in its service entry, as last written.
    pub(super) allow_written: Vec<Cidr>,
    pub(super) access_written: Option<u8>,
    /// Someone follows one of its connections (`lb explain --watch`).
    pub(super) watched: bool,
}

/// The `lb_common::maps::ACCESS_*` bits of `a`.
pub fn access_bits(a: &AccessConfig) -> u8 {
    if a.allow.is_empty() {
        return 0;
    }
    m::ACCESS_LIST
        | if a.reset { m::ACCESS_RESET } else { 0 }
        | if a.cut_established {
            m::ACCESS_CUT_ESTABLISHED
        } else {
            0
        }
}

/// Backend slot ids. Fresh ids are handed out first and freed ones are reused oldest
/// first, so a flow entry still naming a removed backend's id is unlikely to meet a new
/// backend under that id before it expires.
#[derive(Default)]
pub(super) struct BackendIds {
    next_fresh: u32,
    freed: VecDeque<u32>,
}

impl BackendIds {
    pub(super) fn alloc(&mut self) -> Option<u32> {
        if self.next_fresh < MAX_BACKENDS {
            self.next_fresh += 1;
            Some(self.next_fresh - 1)
        } else {
            self.freed.pop_front()
        }
    }

    pub(super) fn free(&mut self, id: u32) {
        self.freed.push_back(id);
    }

    /// The allocator after an earlier daemon's ids `taken`: the ids between them are free.
    pub(super) fn taken(taken: &[u32]) -> BackendIds {
        let next_fresh = taken.iter().max().map_or(0, |m| m + 1);
        BackendIds {
            next_fresh,
            freed: (0..next_fresh).filter(|i| !taken.contains(i)).collect(),
        }
    }
}

/// The source address that reaches a backend: a routing lookup in the daemon
/// ([`crate::dataplane::source_address_for`]), a fixed address in tests.
pub type SnatSource = Box<dyn Fn(SocketAddr) -> std::io::Result<IpAddr> + Send>;

/// Services and backends, and the plan of the decisions taken since the last
/// [`Model::take_plan`].
pub struct Model {
    pub(super) cfg: Config,
    pub(super) services: Vec<ServiceState>,
    pub(super) ids: BackendIds,
    next_check_id: u64,
    /// Proxy VIP addresses with a local route, and how many services use each.
    local_routes: HashMap<IpAddr, usize>,
    snat_source: SnatSource,
    /// What an earlier daemon left that no service of the configuration has claimed yet
    /// (see `adoption`).
    pub(super) adopted: Adopted,
    pub(super) plan: Vec<Step>,
    /// When the running watch ends unless asked for again.
    watch_until: Option<Instant>,
}

/// How long a watch (`lb explain --watch`) lasts unless asked for again: a watcher that
/// went away without a word costs the data path nothing after it.
pub const WATCH_LEASE: Duration = Duration::from_secs(30);

impl Model {
    /// The model of `cfg`'s services; the plan programs them all. Backends start up, as
    /// in HAProxy: the first checks run within one interval.
    pub fn new(cfg: Config, snat_source: SnatSource) -> Result<Model, ControlError> {
        Model::adopting(cfg, snat_source, Adopted::default())
    }

    /// The model of `cfg`'s services over what an earlier daemon left in the maps: see
    /// `adoption`.
    pub fn adopting(
        cfg: Config,
        snat_source: SnatSource,
        adopted: Adopted,
    ) -> Result<Model, ControlError> {
        let taken: Vec<u32> = adopted.backends.iter().map(|b| b.id).collect();
        let mut model = Model {
            cfg: cfg.clone(),
            services: Vec::new(),
            ids: BackendIds::taken(&taken),
            next_check_id: 0,
            local_routes: HashMap::new(),
            snat_source,
            adopted,
            plan: Vec::new(),
            watch_until: None,
        };
        model.drop_unconfigured_services();
        for svc in &cfg.services {
            model.add_service(svc, true)?;
        }
        model.drop_unclaimed_backends();
        Ok(model)
    }

    /// The steps decided since the last call, in order.
    pub fn take_plan(&mut self) -> Plan {
        Plan {
            steps: std::mem::take(&mut self.plan),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn services(&self) -> &[ServiceState] {
        &self.services
    }

    /// Addresses with a local route for a proxy VIP.
    pub fn local_routes(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.local_routes.keys().copied()
    }

    /// Forgets what was written after step `failed` of a plan failed (the steps after
    /// it did not run): the next change rewrites every backend and table.
    pub fn write_failed(&mut self, failed: &Step) {
        for s in &mut self.services {
            if let Step::InstallTable { service, half, .. } = failed
                && s.id == *service
            {
                s.live_half = 1 - half.min(&1);
            }
            s.table_members = None;
            for b in &mut s.backends {
                b.written = None;
            }
        }
    }

    pub(super) fn service_index(&self, name: &str) -> Result<usize, ControlError> {
        self.services
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| ControlError::NoService(name.to_string()))
    }

    fn backend_index(&self, si: usize, addr: SocketAddr) -> Result<usize, ControlError> {
        let svc = &self.services[si];
        svc.backends
            .iter()
            .position(|b| b.addr == addr)
            .ok_or_else(|| ControlError::NoBackend {
                service: svc.name.clone(),
                addr: addr.to_string(),
            })
    }

    pub(super) fn add_service(
        &mut self,
        cfg: &ServiceConfig,
        at_start: bool,
    ) -> Result<(), ControlError> {
        let (id, live_half) = match self.claim_service(cfg.vip) {
            Some(kept) => kept,
            None => {
                let used: Vec<u32> = self
                    .services
                    .iter()
                    .map(|s| s.id)
                    .chain(self.adopted.services.iter().map(|s| s.id))
                    .collect();
                let id = (0..self.cfg.max_services)
                    .find(|i| !used.contains(i))
                    .ok_or_else(|| {
                        ControlError::Conflict(format!(
                            "no room for service {}: --max-services is {}",
                            cfg.name, self.cfg.max_services
                        ))
                    })?;
                self.plan.push(Step::ResetServiceCounters { id });
                (id, 1)
            }
        };
        self.services.push(ServiceState {
            id,
            name: cfg.name.clone(),
            vip: cfg.vip,
            mode: cfg.mode,
            encap: cfg.encap,
            proxy: cfg.proxy.clone(),
            health: cfg.health.clone(),
            slow_start: cfg.slow_start,
            live_half,
            table_members: None,
            backends: Vec::new(),
            access: cfg.access.clone(),
            allow_written: Vec::new(),
            access_written: None,
            watched: false,
        });
        let si = self.services.len() - 1;
        if cfg.mode == Mode::ProxyV2 {
            self.add_proxy_service(cfg);
        }
        let mut added = Vec::new();
        for b in &cfg.backends {
            self.insert_backend(si, b, at_start)?;
            added.push(b.addr.ip());
        }
        if cfg.dns.is_some() {
            // An earlier daemon's backends of this service that the configuration does
            // not name were found in DNS: kept until the first lookup says otherwise.
            let found: Vec<SocketAddr> = (self.adopted.backends.iter())
                .filter(|b| b.service == id)
                .map(|b| b.addr)
                .collect();
            for addr in found {
                self.insert_backend(si, &BackendConfig { addr, weight: 1 }, at_start)?;
                if let Some(b) = self.services[si].backends.last_mut() {
                    b.discovered = true;
                }
                added.push(addr.ip());
            }
        }
        self.plan.push(Step::WarmNeighbours { ips: added });
        self.sync(si);
        info!(service = %cfg.name, vip = %cfg.vip, backends = cfg.backends.len(), health = %cfg.health.check, "service programmed");
        Ok(())
    }

    /// Makes the kernel deliver a proxy service's VIP to the daemon: the accept path
    /// learns the service, sk_lookup the VIP, the routing table that the VIP is local.
    fn add_proxy_service(&mut self, cfg: &ServiceConfig) {
        self.plan.push(Step::RegisterProxy {
            name: cfg.name.clone(),
            vip: cfg.vip,
            proxy: cfg.proxy.clone(),
        });
        self.plan.push(Step::SetProxyVip { vip: cfg.vip });
        let users = self.local_routes.entry(cfg.vip.ip()).or_default();
        if *users == 0 {
            self.plan.push(Step::AddLocalRoute { ip: cfg.vip.ip() });
        }
        *users += 1;
    }

    fn remove_proxy_service(&mut self, name: &str, vip: SocketAddr) {
        self.plan.push(Step::RemoveProxyVip { vip });
        if let Some(users) = self.local_routes.get_mut(&vip.ip()) {
            *users -= 1;
            if *users == 0 {
                self.local_routes.remove(&vip.ip());
                self.plan.push(Step::RemoveLocalRoute { ip: vip.ip() });
            }
        }
        self.plan.push(Step::UnregisterProxy {
            name: name.to_string(),
            vip,
        });
    }

    pub(super) fn remove_service(&mut self, si: usize) {
        let svc = self.services.remove(si);
        if svc.mode == Mode::ProxyV2 {
            self.remove_proxy_service(&svc.name, svc.vip);
        }
        self.plan.push(Step::RemoveService { vip: svc.vip });
        if !svc.allow_written.is_empty() {
            self.plan.push(Step::AllowRemove {
                service: svc.id,
                ranges: svc.allow_written.clone(),
            });
        }
        for b in &svc.backends {
            self.plan.push(Step::StopChecker {
                check_id: b.check_id,
            });
            self.plan.push(Step::ClearBackend { id: b.id });
            self.ids.free(b.id);
        }
        info!(service = %svc.name, vip = %svc.vip, "service removed");
    }

    /// Adds a backend to the model and writes its slot (DOWN); the caller syncs the
    /// table.
    pub(super) fn insert_backend(
        &mut self,
        si: usize,
        b: &BackendConfig,
        at_start: bool,
    ) -> Result<(), ControlError> {
        let snat_ip = match self
            .cfg
            .snat_ips
            .iter()
            .find(|ip| ip.is_ipv4() == b.addr.is_ipv4())
        {
            Some(ip) => *ip,
            None => (self.snat_source)(b.addr).map_err(|source| DataplaneError::NoSnatSource {
                backend: b.addr,
                source,
            })?,
        };
        let svc = &self.services[si];
        let checked = svc.health.check != HealthCheck::None;
        let kept = self.claim_backend(svc.id, b.addr);
        let id = match &kept {
            Some(k) => k.id,
            None => {
                let id = self.ids.alloc().ok_or_else(|| {
                    ControlError::Conflict(format!(
                        "no room for backend {}: {MAX_BACKENDS} backends in use",
                        b.addr
                    ))
                })?;
                self.plan.push(Step::ResetBackendCounters { id });
                id
            }
        };
        let svc = &self.services[si];
        let health = match &kept {
            // Frozen while no daemon ran: the checks take over from there.
            Some(k) if checked && k.state == m::BACKEND_DOWN => Health::Down,
            _ if at_start || !checked => Health::Up,
            _ => Health::Initial,
        };
        let check_id = self.next_check_id;
        self.next_check_id += 1;
        let state = BackendState {
            id,
            addr: b.addr,
            weight: b.weight,
            snat_ip,
            admin: Admin::Active,
            health,
            tracker: Tracker::new(health == Health::Up, svc.health.rise, svc.health.fall),
            check_id,
            reason: None,
            checks_passed: 0,
            checks_failed: 0,
            latency: LatencyHistogram::default(),
            written: match &kept {
                // Rewritten by the next sync only if it changes.
                Some(k) if k.snat_ip == snat_ip => Some(k.state),
                Some(_) => None,
                None => Some(m::BACKEND_DOWN),
            },
            was_in_table: false,
            ramp_since: None,
            discovered: false,
        };
        // A backend of the configuration at start is not slow-started (as HAProxy).
        let state = BackendState {
            was_in_table: at_start && state.in_table(),
            ..state
        };
        let first_delay = if at_start {
            health::spread_delay(&ip_port_bytes(b.addr), svc.health.interval)
        } else {
            Duration::ZERO
        };
        if let Some(spec) = check_spec(svc, &svc.health) {
            self.plan.push(Step::StartChecker {
                check_id,
                addr: b.addr,
                spec,
                first_delay,
            });
        }
        if kept.is_none() {
            self.plan.push(Step::SetBackend {
                id,
                service: svc.id,
                addr: b.addr,
                snat_ip,
                state: m::BACKEND_DOWN,
            });
        }
        self.services[si].backends.push(state);
        Ok(())
    }

    /// Plans the writes that bring service `si`'s backends and table to the model,
    /// in the order of the rule in [`super::plan`].
    pub(super) fn sync(&mut self, si: usize) {
        self.sync_at(si, Instant::now());
    }

    /// [`Model::sync`] with slow starts counted at `now`.
    fn sync_at(&mut self, si: usize, now: Instant) {
        let svc = &mut self.services[si];
        let access = access_bits(&svc.access) | if svc.watched { m::ACCESS_WATCH } else { 0 };
        let forwarding = Forwarding {
            access,
            ..Forwarding::of(svc.mode, svc.encap)
        };
        // New ranges before the bits that make the program read them (see `plan`).
        let added: Vec<Cidr> = (svc.access.allow.iter())
            .filter(|r| !svc.allow_written.contains(r))
            .copied()
            .collect();
        if !added.is_empty() {
            self.plan.push(Step::AllowAdd {
                service: svc.id,
                ranges: added,
            });
        }
        let mut later = Vec::new();
        for b in &mut svc.backends {
            let want = b.map_state();
            if b.written == Some(want) {
                continue;
            }
            b.written = Some(want);
            let step = Step::SetBackend {
                id: b.id,
                service: svc.id,
                addr: b.addr,
                snat_ip: b.snat_ip,
                state: want,
            };
            if want == m::BACKEND_UP {
                self.plan.push(step);
            } else {
                later.push(step);
            }
        }
        for b in &mut svc.backends {
            let in_table = b.in_table();
            if in_table && !b.was_in_table && !svc.slow_start.is_zero() {
                b.ramp_since = Some(now);
            } else if !in_table {
                b.ramp_since = None;
            }
            b.was_in_table = in_table;
        }
        let members: Vec<MaglevBackend> = svc
            .backends
            .iter()
            .filter(|b| b.in_table())
            .map(|b| MaglevBackend {
                key: backend_key(&ip_bytes(&b.addr.ip()), b.addr.port()),
                weight: table_weight(b.weight, svc.slow_start, b.ramp_since, now),
                id: b.id,
            })
            .collect();
        if svc.mode == Mode::ProxyV2 {
            let targets = svc
                .backends
                .iter()
                .filter(|b| b.in_table())
                .map(|b| (b.id, b.addr))
                .collect();
            self.plan.push(Step::ProxyTable {
                service: svc.name.clone(),
                members: members.clone(),
                targets,
            });
        }
        if svc.table_members.as_ref() != Some(&members) {
            let half = 1 - svc.live_half.min(1);
            svc.live_half = half;
            svc.table_members = Some(members.clone());
            self.plan.push(Step::InstallTable {
                service: svc.id,
                vip: svc.vip,
                half,
                forwarding,
                members: members.clone(),
            });
            svc.access_written = Some(access);
        } else if svc.access_written != Some(access) {
            self.plan.push(Step::SetAccess {
                vip: svc.vip,
                access,
            });
            svc.access_written = Some(access);
        }
        self.plan.extend(later);
        let removed: Vec<Cidr> = (svc.allow_written.iter())
            .filter(|r| !svc.access.allow.contains(r))
            .copied()
            .collect();
        if !removed.is_empty() {
            self.plan.push(Step::AllowRemove {
                service: svc.id,
                ranges: removed,
            });
        }
        svc.allow_written = svc.access.allow.clone();
        if members.is_empty() {
            warn!(service = %svc.name, "no backend is up: new connections are reset");
        }
    }

    /// Removes backend `bi` of service `si` from the model and the maps.
    fn drop_backend(&mut self, si: usize, bi: usize) {
        let b = self.services[si].backends.remove(bi);
        self.plan.push(Step::StopChecker {
            check_id: b.check_id,
        });
        self.sync(si);
        let svc = &self.services[si];
        if svc.mode == Mode::ProxyV2 {
            self.plan.push(Step::ProxyCut {
                service: svc.name.clone(),
                addr: b.addr,
            });
        }
        self.plan.push(Step::ClearBackend { id: b.id });
        self.ids.free(b.id);
        info!(service = %svc.name, backend = %b.addr, "backend removed");
    }

    /// Applies one health check result; `true` if the backend changed state.
    pub fn on_check(&mut self, r: &CheckResult) -> bool {
        let Some((si, bi)) = self.find_check(r.id) else {
            return false; // a result of a backend removed meanwhile
        };
        let svc = &mut self.services[si];
        let name = &svc.name;
        let b = &mut svc.backends[bi];
        b.latency.observe(r.latency);
        let ok = r.result.is_ok();
        if ok {
            b.checks_passed += 1;
        } else {
            b.checks_failed += 1;
        }
        if let Err(e) = &r.result {
            b.reason = Some(e.to_string());
        }
        match b.tracker.record(ok) {
            Some(Transition::Down) => {
                b.health = Health::Down;
                warn!(service = %name, backend = %b.addr, reason = %b.reason.as_deref().unwrap_or("?"), "backend down");
            }
            Some(Transition::Up) => {
                let was = b.state();
                b.health = Health::Up;
                info!(service = %name, backend = %b.addr, was, "backend up");
            }
            None => return false,
        }
        self.sync(si);
        true
    }

    fn find_check(&self, check_id: u64) -> Option<(usize, usize)> {
        self.services.iter().enumerate().find_map(|(si, s)| {
            s.backends
                .iter()
                .position(|b| b.check_id == check_id)
                .map(|bi| (si, bi))
        })
    }

    /// Adds a backend to a running service. With a health check it gets new flows once
    /// `rise` checks have passed.
    pub fn add_backend(
        &mut self,
        service: &str,
        b: &BackendConfig,
    ) -> Result<String, ControlError> {
        let si = self.service_index(service)?;
        let svc = &self.services[si];
        crate::config::check_backend(svc.vip, svc.mode, b)
            .map_err(|r| ControlError::Invalid(format!("backend {:?}: {r}", b.addr.to_string())))?;
        if svc.backends.iter().any(|o| o.addr == b.addr) {
            return Err(ControlError::Conflict(format!(
                "service {service} already has backend {}",
                b.addr
            )));
        }
        if svc.backends.len() + 1 >= self.cfg.ring_size as usize {
            return Err(ControlError::Conflict(format!(
                "service {service} would have more backends than the Maglev ring ({}) allows",
                self.cfg.ring_size
            )));
        }
        self.insert_backend(si, b, false)?;
        self.plan.push(Step::WarmNeighbours {
            ips: vec![b.addr.ip()],
        });
        self.sync(si);
        let state = self.services[si]
            .backends
            .last()
            .map(|b| b.state())
            .unwrap_or("up");
        info!(service, backend = %b.addr, weight = b.weight, state, "backend added");
        Ok(format!(
            "added {} to {service} (weight {}, {state})",
            b.addr, b.weight
        ))
    }

    /// Removes a backend: drains it first unless `now`.
    pub fn remove_backend(
        &mut self,
        service: &str,
        addr: SocketAddr,
        now: bool,
        at: Instant,
    ) -> Result<String, ControlError> {
        let si = self.service_index(service)?;
        let bi = self.backend_index(si, addr)?;
        if now {
            self.drop_backend(si, bi);
            return Ok(format!("removed {addr} from {service}"));
        }
        self.start_drain(si, bi, true, at);
        Ok(format!(
            "draining {addr} of {service}; it is removed when its flows end or after {:?}",
            self.cfg.drain_timeout
        ))
    }

    pub fn set_weight(
        &mut self,
        service: &str,
        addr: SocketAddr,
        weight: u32,
    ) -> Result<String, ControlError> {
        if weight > crate::config::MAX_WEIGHT {
            return Err(ControlError::Invalid(format!(
                "weight {weight} is above {}",
                crate::config::MAX_WEIGHT
            )));
        }
        let si = self.service_index(service)?;
        let bi = self.backend_index(si, addr)?;
        let b = &mut self.services[si].backends[bi];
        let old = b.weight;
        b.weight = weight;
        self.sync(si);
        info!(service, backend = %addr, old, weight, "backend re-weighted");
        Ok(format!("{addr} of {service}: weight {old} -> {weight}"))
    }

    pub fn drain(
        &mut self,
        service: &str,
        addr: SocketAddr,
        at: Instant,
    ) -> Result<String, ControlError> {
        let si = self.service_index(service)?;
        let bi = self.backend_index(si, addr)?;
        match self.services[si].backends[bi].admin {
            Admin::Draining { .. } => Ok(format!("{addr} of {service} is already draining")),
            Admin::Drained => Ok(format!("{addr} of {service} is already drained")),
            Admin::Active => {
                self.start_drain(si, bi, false, at);
                Ok(format!(
                    "draining {addr} of {service}: no new flows; its flows are cut after {:?}",
                    self.cfg.drain_timeout
                ))
            }
        }
    }

    pub(super) fn start_drain(&mut self, si: usize, bi: usize, remove: bool, at: Instant) {
        let timeout = self.cfg.drain_timeout;
        let b = &mut self.services[si].backends[bi];
        let remove = remove || matches!(b.admin, Admin::Draining { remove: true, .. });
        if b.admin == Admin::Drained && remove {
            // Already out of service with no flows: nothing to wait for.
            return self.drop_backend(si, bi);
        }
        b.admin = Admin::Draining {
            deadline: at + timeout,
            remove,
        };
        let addr = b.addr;
        self.sync(si);
        info!(service = %self.services[si].name, backend = %addr, timeout = ?timeout, remove, "drain started");
    }

    pub fn enable(&mut self, service: &str, addr: SocketAddr) -> Result<String, ControlError> {
        let si = self.service_index(service)?;
        let bi = self.backend_index(si, addr)?;
        let b = &mut self.services[si].backends[bi];
        if b.admin == Admin::Active {
            return Ok(format!(
                "{addr} of {service} is already in service ({})",
                b.state()
            ));
        }
        b.admin = Admin::Active;
        let state = b.state();
        self.sync(si);
        info!(service, backend = %addr, state, "backend enabled");
        Ok(format!("{addr} of {service} is back in service ({state})"))
    }

    /// Whether a drain is running.
    pub fn draining(&self) -> bool {
        self.services.iter().any(|s| {
            s.backends
                .iter()
                .any(|b| matches!(b.admin, Admin::Draining { .. }))
        })
    }

    /// Ends the drains whose backends have no flow left (`flows(service, backend)`) or
    /// whose deadline is past `now`; `true` if one ended.
    pub fn advance_drains(
        &mut self,
        now: Instant,
        flows: impl Fn(&str, SocketAddr) -> u64,
    ) -> bool {
        let mut done = Vec::new();
        for (si, s) in self.services.iter().enumerate() {
            for b in &s.backends {
                let Admin::Draining { deadline, remove } = b.admin else {
                    continue;
                };
                let flows = flows(&s.name, b.addr);
                if flows == 0 {
                    done.push((si, b.addr, remove, "no flows left", 0));
                } else if now >= deadline {
                    done.push((si, b.addr, remove, "timeout", flows));
                }
            }
        }
        let ended = !done.is_empty();
        for (si, addr, remove, reason, cut) in done {
            let Some(bi) = self.services[si]
                .backends
                .iter()
                .position(|b| b.addr == addr && matches!(b.admin, Admin::Draining { .. }))
            else {
                continue;
            };
            let name = self.services[si].name.clone();
            info!(service = %name, backend = %addr, reason, flows_cut = cut, "drain finished");
            if remove {
                self.drop_backend(si, bi);
            } else {
                self.services[si].backends[bi].admin = Admin::Drained;
                self.sync(si);
                if self.services[si].mode == Mode::ProxyV2 {
                    self.plan.push(Step::ProxyCut {
                        service: name,
                        addr,
                    });
                }
            }
        }
        ended
    }

    /// Reports the packets of `client` → `vip` (one in `every`) for [`WATCH_LEASE`] from
    /// `now`: the tuple is written before the service's bit that makes the program
    /// compare its packets with it. One watch at a time: this one replaces any other.
    pub fn watch(
        &mut self,
        vip: SocketAddr,
        client: SocketAddr,
        every: u32,
        now: Instant,
    ) -> Result<String, ControlError> {
        let si = (self.services.iter().position(|s| s.vip == vip))
            .ok_or_else(|| ControlError::NoService(vip.to_string()))?;
        self.plan.push(Step::SetWatch {
            spec: Some((client, vip, every)),
        });
        self.mark_watched(Some(si));
        if self.watch_until.is_none() {
            info!(%client, %vip, every, "reporting a connection's packets (lb explain --watch)");
        }
        self.watch_until = Some(now + WATCH_LEASE);
        Ok(format!(
            "reporting the packets of {client} → {vip} for {WATCH_LEASE:?}"
        ))
    }

    /// Stops the watch: the service's bit first, then the tuple.
    pub fn unwatch(&mut self) -> String {
        if self.watch_until.is_some() {
            info!("watch ended: no connection's packets are reported");
        }
        self.mark_watched(None);
        self.plan.push(Step::SetWatch { spec: None });
        self.watch_until = None;
        "no connection is watched".to_string()
    }

    /// Ends the watch whose lease ran out by `now`; `true` if one did.
    pub fn expire_watch(&mut self, now: Instant) -> bool {
        if self.watch_until.is_some_and(|t| t <= now) {
            self.unwatch();
            return true;
        }
        false
    }

    fn mark_watched(&mut self, which: Option<usize>) {
        for si in 0..self.services.len() {
            let on = Some(si) == which;
            if self.services[si].watched != on {
                self.services[si].watched = on;
                self.sync(si);
            }
        }
    }

    /// Every service's allowlist ranges, by service slot: what `ALLOW` should hold.
    pub fn allow_entries(&self) -> Vec<(u32, Cidr)> {
        (self.services.iter())
            .flat_map(|s| s.access.allow.iter().map(move |r| (s.id, *r)))
            .collect()
    }

    /// Names of services with no backend that takes new flows.
    pub fn services_down(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|s| !s.backends.iter().any(|b| b.in_table()))
            .map(|s| s.name.clone())
            .collect()
    }

    /// The VIPs lb can serve: those of services with a backend that takes new flows and
    /// has passed a check since this daemon started (or is not checked). `inherited`
    /// VIPs, announced by an earlier daemon, need only the backend up.
    pub fn servable_vips(&self, inherited: impl Fn(IpAddr) -> bool) -> BTreeSet<IpAddr> {
        self.services
            .iter()
            .filter(|s| {
                let vip = s.vip.ip();
                s.backends.iter().any(|b| {
                    b.in_table()
                        && (s.health.check == HealthCheck::None
                            || b.checks_passed > 0
                            || inherited(vip))
                })
            })
            .map(|s| s.vip.ip())
            .collect()
    }

    /// Advances the slow starts: the tables of services with a backend ramping up are
    /// rebuilt with its grown share; a ramp whose time is up ends. `true` if any ran.
    pub fn advance_slow_start(&mut self, now: Instant) -> bool {
        let mut any = false;
        for si in 0..self.services.len() {
            let svc = &mut self.services[si];
            let mut ramping = false;
            for b in &mut svc.backends {
                if let Some(t0) = b.ramp_since {
                    ramping = true;
                    if now.saturating_duration_since(t0) >= svc.slow_start {
                        b.ramp_since = None;
                    }
                }
            }
            if ramping {
                any = true;
                self.sync_at(si, now);
            }
        }
        any
    }

    /// Every backend address, for neighbour warm-up.
    pub fn backend_ips(&self) -> Vec<IpAddr> {
        self.services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.addr.ip()))
            .collect()
    }
}

/// The health check engine's spec for a service's settings; `None` for no check.
/// What a health check sends first: a proxy service's backends expect a PROXY header
/// (LOCAL in v2: "this is the proxy's own connection"; UNKNOWN in v1).
pub(super) fn preamble(svc: &ServiceState) -> Option<Vec<u8>> {
    match (svc.mode, svc.proxy.version) {
        (Mode::Nat | Mode::Dsr | Mode::Dnat, _) => None,
        (Mode::ProxyV2, ProxyVersion::V2) => Some(header::encode_v2_local()),
        (Mode::ProxyV2, ProxyVersion::V1) => Some(header::encode_v1_unknown().as_bytes().to_vec()),
    }
}

/// The check a checker runs: the service's with its preamble; `None` for no check.
pub(super) fn check_spec(svc: &ServiceState, h: &HealthConfig) -> Option<HealthConfig> {
    h.is_checked().then(|| HealthConfig {
        preamble: preamble(svc),
        path: dsr_path(svc),
        ..h.clone()
    })
}

/// A DSR service's path, which its checks prove (`health::path`).
fn dsr_path(svc: &ServiceState) -> Option<DsrPath> {
    let encap = svc.encap.filter(|_| svc.mode == Mode::Dsr)?;
    Some(DsrPath {
        vip: svc.vip.ip(),
        encap: encap.kind.wire(),
        gue_port: encap.gue_port,
    })
}

fn ip_port_bytes(a: SocketAddr) -> Vec<u8> {
    let mut v = ip_bytes(&a.ip()).to_vec();
    v.extend_from_slice(&a.port().to_be_bytes());
    v
}

/// Table weight steps per unit of weight in a slow-starting service: a ramping backend
/// of weight 1 grows in twentieths of its share.
pub(super) const RAMP_STEPS: u32 = 20;

/// A backend's weight in its service's Maglev table. With slow start, every weight is
/// scaled by [`RAMP_STEPS`] so a ramping backend can take a fraction of its share: the
/// fraction of `slow_start` elapsed since `ramp_since` (at least one step).
pub(super) fn table_weight(
    weight: u32,
    slow_start: Duration,
    ramp_since: Option<Instant>,
    now: Instant,
) -> u32 {
    if slow_start.is_zero() {
        return weight;
    }
    let full = weight.saturating_mul(RAMP_STEPS);
    match ramp_since {
        Some(t0) => {
            let f = now.saturating_duration_since(t0).as_secs_f64() / slow_start.as_secs_f64();
            if f >= 1.0 {
                full
            } else {
                ((f64::from(full) * f).ceil() as u32).clamp(1, full.max(1))
            }
        }
        None => full,
    }
}
