//! The control plane: the services and backends the daemon runs, their health and
//! administrative state, and every change to them (health transitions, the admin API,
//! config reloads), each turned into the smallest set of map writes that keeps every
//! packet seeing a consistent state.
//!
//! Ordering rule for map writes: a backend that becomes usable is written before the
//! Maglev table that names it; a backend that stops being usable is written after the
//! table that no longer names it. So a new flow never picks a backend that is not up.

use crate::api::report::{self as stats, HealthReport, Report};
use crate::config::{
    BackendConfig, Config, ConfigError, FlagSettings, Mode, ProxyConfig, ProxyVersion,
    ServiceConfig,
};
use crate::dataplane::runtime::RuntimeRecord;
use crate::dataplane::{BackendSlot, Dataplane, DataplaneError, ServiceSlot, source_address_for};
use crate::health::histogram::LatencyHistogram;
use crate::health::{self, CheckResult, HealthCheck, HealthConfig, Tracker, Transition};
use crate::proxy::codec::header;
use crate::proxy::route;
use crate::proxy::server::{Proxy, ServiceRt};
use crate::proxy::table::ProxyTable;
use lb_common::addr::ip_bytes;
use lb_common::hash::backend_key;
use lb_common::maglev::{MaglevBackend, build_table};
use lb_common::maps::{self as m, MAX_BACKENDS};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

/// An error of a control operation, with the HTTP status the admin API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no service named {0:?}")]
    NoService(String),
    #[error("service {service:?} has no backend {addr}")]
    NoBackend { service: String, addr: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    NeedsRestart(String),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Stats(#[from] stats::StatsError),
    #[error("routing a proxy VIP to this host: {0}")]
    Route(String),
}

impl ControlError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ControlError::NoService(_) | ControlError::NoBackend { .. } => 404,
            ControlError::Invalid(_) | ControlError::Config(_) | ControlError::NeedsRestart(_) => {
                400
            }
            ControlError::Conflict(_) => 409,
            ControlError::Dataplane(_) | ControlError::Stats(_) | ControlError::Route(_) => 500,
        }
    }
}

/// What an operator asked of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admin {
    /// In service (if healthy).
    Active,
    /// No new flows; existing flows continue until `deadline`. `remove`: then removed.
    Draining { deadline: Instant, remove: bool },
    /// Out of service after a drain; flows cut.
    Drained,
}

/// What the health checks say of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Up,
    Down,
    /// Added while running; waits for `rise` passed checks.
    Initial,
}

struct BackendState {
    id: u32,
    addr: SocketAddr,
    weight: u32,
    snat_ip: IpAddr,
    admin: Admin,
    health: Health,
    tracker: Tracker,
    /// Identifies this backend's check results (ids are never reused).
    check_id: u64,
    checker: Option<JoinHandle<()>>,
    reason: Option<String>,
    checks_passed: u64,
    checks_failed: u64,
    latency: LatencyHistogram,
    /// The state last written to the BACKENDS map.
    written: Option<u8>,
}

impl BackendState {
    /// The state name operators see (API, `lb stats`, metrics).
    fn state(&self) -> &'static str {
        match (self.admin, self.health) {
            (Admin::Draining { .. }, _) => "draining",
            (Admin::Drained, _) => "drained",
            (Admin::Active, Health::Up) => "up",
            (Admin::Active, Health::Down) => "down",
            (Admin::Active, Health::Initial) => "initial",
        }
    }

    /// The state the XDP program sees.
    fn map_state(&self) -> u8 {
        match (self.admin, self.health) {
            (Admin::Active, Health::Up) => m::BACKEND_UP,
            (Admin::Draining { .. }, Health::Up) => m::BACKEND_DRAINING,
            _ => m::BACKEND_DOWN,
        }
    }

    /// Whether new flows may be balanced to it.
    fn in_table(&self) -> bool {
        self.map_state() == m::BACKEND_UP && self.weight > 0
    }
}

impl Drop for BackendState {
    fn drop(&mut self) {
        if let Some(c) = self.checker.take() {
            c.abort();
        }
    }
}

struct ServiceState {
    id: u32,
    name: String,
    vip: SocketAddr,
    mode: Mode,
    proxy: ProxyConfig,
    health: HealthConfig,
    live_half: u32,
    /// The members the live table was built from (`None` before the first build), so
    /// changes that leave them as they were do not rewrite the table.
    table_members: Option<Vec<MaglevBackend>>,
    backends: Vec<BackendState>,
}

/// Backend slot ids. Fresh ids are handed out first and freed ones are reused oldest
/// first, so a flow entry still naming a removed backend's id is unlikely to meet a new
/// backend under that id before it expires.
struct BackendIds {
    next_fresh: u32,
    freed: VecDeque<u32>,
}

impl BackendIds {
    fn alloc(&mut self) -> Option<u32> {
        if self.next_fresh < MAX_BACKENDS {
            self.next_fresh += 1;
            Some(self.next_fresh - 1)
        } else {
            self.freed.pop_front()
        }
    }
}

pub struct Control {
    dp: Dataplane,
    /// The accept path of proxy services.
    proxy: Arc<Proxy>,
    /// Proxy services' accept-path state, by service name.
    proxy_rts: HashMap<String, Arc<ServiceRt>>,
    /// Proxy VIP addresses with a local route, and how many services use each.
    local_routes: HashMap<IpAddr, usize>,
    flags: FlagSettings,
    cfg: Config,
    services: Vec<ServiceState>,
    ids: BackendIds,
    health_tx: UnboundedSender<CheckResult>,
    next_check_id: u64,
    pid: u32,
    netns_inode: u64,
    record_path: Option<PathBuf>,
}

impl Control {
    /// Programs every service of `cfg` into the (not yet attached) data path. Backends
    /// start up, as in HAProxy: the first checks run within one interval.
    pub fn new(
        dp: Dataplane,
        cfg: Config,
        flags: FlagSettings,
        health_tx: UnboundedSender<CheckResult>,
        proxy: Arc<Proxy>,
    ) -> Result<Control, ControlError> {
        let mut c = Control {
            dp,
            proxy,
            proxy_rts: HashMap::new(),
            local_routes: HashMap::new(),
            flags,
            cfg: cfg.clone(),
            services: Vec::new(),
            ids: BackendIds {
                next_fresh: 0,
                freed: VecDeque::new(),
            },
            health_tx,
            next_check_id: 0,
            pid: std::process::id(),
            netns_inode: crate::dataplane::runtime::netns_inode()
                .map_err(|e| ControlError::Invalid(e.to_string()))?,
            record_path: None,
        };
        for svc in &cfg.services {
            c.add_service(svc, true)?;
        }
        Ok(c)
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dp
    }

    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dp
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Every backend address, for neighbour warm-up.
    pub fn backend_ips(&self) -> Vec<IpAddr> {
        self.services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.addr.ip()))
            .collect()
    }

    fn service_index(&self, name: &str) -> Result<usize, ControlError> {
        self.services
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| ControlError::NoService(name.to_string()))
    }

    fn backend_index(&self, si: usize, addr: &str) -> Result<usize, ControlError> {
        let svc = &self.services[si];
        let parsed = crate::config::parse_socket_addr(addr)
            .map_err(|r| ControlError::Invalid(format!("backend {addr:?}: {r}")))?;
        svc.backends
            .iter()
            .position(|b| b.addr == parsed)
            .ok_or_else(|| ControlError::NoBackend {
                service: svc.name.clone(),
                addr: parsed.to_string(),
            })
    }

    fn add_service(&mut self, cfg: &ServiceConfig, at_start: bool) -> Result<(), ControlError> {
        let used: Vec<u32> = self.services.iter().map(|s| s.id).collect();
        let id = (0..self.cfg.max_services)
            .find(|i| !used.contains(i))
            .ok_or_else(|| {
                ControlError::Conflict(format!(
                    "no room for service {}: --max-services is {}",
                    cfg.name, self.cfg.max_services
                ))
            })?;
        self.dp.reset_counters(true, id)?;
        self.services.push(ServiceState {
            id,
            name: cfg.name.clone(),
            vip: cfg.vip,
            mode: cfg.mode,
            proxy: cfg.proxy.clone(),
            health: cfg.health.clone(),
            live_half: 1,
            table_members: None,
            backends: Vec::new(),
        });
        let si = self.services.len() - 1;
        if cfg.mode == Mode::ProxyV2 {
            self.add_proxy_service(cfg)?;
        }
        let mut added = Vec::new();
        for b in &cfg.backends {
            self.insert_backend(si, b, at_start)?;
            added.push(b.addr.ip());
        }
        crate::dataplane::neigh::warm(&added);
        self.sync(si)?;
        info!(service = %cfg.name, vip = %cfg.vip, backends = cfg.backends.len(), health = %cfg.health.check, "service programmed");
        Ok(())
    }

    /// Makes the kernel deliver a proxy service's VIP to the daemon: the accept path
    /// learns the service, sk_lookup the VIP, the routing table that the VIP is local.
    fn add_proxy_service(&mut self, cfg: &ServiceConfig) -> Result<(), ControlError> {
        let rt = Arc::new(ServiceRt::new(cfg.name.clone(), cfg.vip, cfg.proxy.clone()));
        self.proxy.register(rt.clone());
        self.proxy_rts.insert(cfg.name.clone(), rt);
        self.dp.set_proxy_vip(cfg.vip)?;
        let users = self.local_routes.entry(cfg.vip.ip()).or_default();
        if *users == 0 {
            route::add_local(cfg.vip.ip()).map_err(|e| ControlError::Route(e.to_string()))?;
        }
        *users += 1;
        Ok(())
    }

    fn remove_proxy_service(&mut self, name: &str, vip: SocketAddr) -> Result<(), ControlError> {
        self.dp.remove_proxy_vip(vip)?;
        if let Some(users) = self.local_routes.get_mut(&vip.ip()) {
            *users -= 1;
            if *users == 0 {
                self.local_routes.remove(&vip.ip());
                if let Err(e) = route::remove_local(vip.ip()) {
                    warn!(vip = %vip.ip(), cause = %e, "removing the VIP's local route");
                }
            }
        }
        self.proxy.unregister(vip);
        if let Some(rt) = self.proxy_rts.remove(name) {
            for addr in rt.counters().backends.keys() {
                rt.cut(*addr);
            }
        }
        Ok(())
    }

    fn remove_service(&mut self, si: usize) -> Result<(), ControlError> {
        let svc = self.services.remove(si);
        if svc.mode == Mode::ProxyV2 {
            self.remove_proxy_service(&svc.name, svc.vip)?;
        }
        self.dp.remove_service(svc.vip)?;
        for b in &svc.backends {
            self.dp.clear_backend(b.id)?;
            self.ids.freed.push_back(b.id);
        }
        info!(service = %svc.name, vip = %svc.vip, "service removed");
        Ok(())
    }

    /// Adds a backend to the model and writes its slot; the caller syncs the table.
    fn insert_backend(
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
            None => source_address_for(b.addr).map_err(|source| DataplaneError::NoSnatSource {
                backend: b.addr,
                source,
            })?,
        };
        let id = self.ids.alloc().ok_or_else(|| {
            ControlError::Conflict(format!(
                "no room for backend {}: {MAX_BACKENDS} backends in use",
                b.addr
            ))
        })?;
        self.dp.reset_counters(false, id)?;
        let svc = &self.services[si];
        let checked = svc.health.check != HealthCheck::None;
        let health = if at_start || !checked {
            Health::Up
        } else {
            Health::Initial
        };
        let check_id = self.next_check_id;
        self.next_check_id += 1;
        let mut state = BackendState {
            id,
            addr: b.addr,
            weight: b.weight,
            snat_ip,
            admin: Admin::Active,
            health,
            tracker: Tracker::new(health == Health::Up, svc.health.rise, svc.health.fall),
            check_id,
            checker: None,
            reason: None,
            checks_passed: 0,
            checks_failed: 0,
            latency: LatencyHistogram::default(),
            written: None,
        };
        let first_delay = if at_start {
            health::spread_delay(&ip_port_bytes(b.addr), svc.health.interval)
        } else {
            Duration::ZERO
        };
        state.checker = self.spawn_checker(&svc.health, preamble(svc), &state, first_delay);
        self.dp
            .set_backend(id, svc.id, b.addr, snat_ip, m::BACKEND_DOWN)?;
        state.written = Some(m::BACKEND_DOWN);
        self.services[si].backends.push(state);
        Ok(())
    }

    fn spawn_checker(
        &self,
        h: &HealthConfig,
        preamble: Option<Vec<u8>>,
        b: &BackendState,
        first_delay: Duration,
    ) -> Option<JoinHandle<()>> {
        let spec = check_spec(h, preamble)?;
        Some(health::spawn_checker(
            b.check_id,
            b.addr,
            spec,
            first_delay,
            self.health_tx.clone(),
        ))
    }

    /// Writes service `si`'s backends and table so the maps match the model.
    fn sync(&mut self, si: usize) -> Result<(), ControlError> {
        let svc = &self.services[si];
        let (sid, vip, live) = (svc.id, svc.vip, svc.live_half);
        let mode = match svc.mode {
            Mode::Nat => m::MODE_NAT,
            Mode::ProxyV2 => m::MODE_PROXY,
        };
        let mut later = Vec::new();
        let mut now = Vec::new();
        for (bi, b) in svc.backends.iter().enumerate() {
            let want = b.map_state();
            if b.written == Some(want) {
                continue;
            }
            if want == m::BACKEND_UP {
                now.push(bi);
            } else {
                later.push(bi);
            }
        }
        for bi in now {
            self.write_backend(si, bi)?;
        }
        let members: Vec<MaglevBackend> = self.services[si]
            .backends
            .iter()
            .filter(|b| b.in_table())
            .map(|b| MaglevBackend {
                key: backend_key(&ip_bytes(&b.addr.ip()), b.addr.port()),
                weight: b.weight,
                id: b.id,
            })
            .collect();
        if let Some(rt) = self.proxy_rts.get(&self.services[si].name) {
            let targets = self.services[si]
                .backends
                .iter()
                .filter(|b| b.in_table())
                .map(|b| (b.id, b.addr))
                .collect();
            rt.set_table(ProxyTable::new(
                build_table(&members, self.cfg.ring_size),
                targets,
            ));
        }
        if self.services[si].table_members.as_ref() != Some(&members) {
            let half = self.dp.install_table(sid, vip, live, mode, &members)?;
            self.services[si].live_half = half;
            self.services[si].table_members = Some(members.clone());
        }
        for bi in later {
            self.write_backend(si, bi)?;
        }
        if members.is_empty() {
            warn!(service = %self.services[si].name, "no backend is up: new connections are reset");
        }
        Ok(())
    }

    fn write_backend(&mut self, si: usize, bi: usize) -> Result<(), ControlError> {
        let sid = self.services[si].id;
        let b = &mut self.services[si].backends[bi];
        let want = b.map_state();
        self.dp.set_backend(b.id, sid, b.addr, b.snat_ip, want)?;
        b.written = Some(want);
        Ok(())
    }

    /// Removes backend `bi` of service `si` from the model and the maps.
    fn drop_backend(&mut self, si: usize, bi: usize) -> Result<(), ControlError> {
        let b = self.services[si].backends.remove(bi);
        self.sync(si)?;
        if let Some(rt) = self.proxy_rts.get(&self.services[si].name) {
            rt.cut(b.addr);
        }
        self.dp.clear_backend(b.id)?;
        self.ids.freed.push_back(b.id);
        info!(service = %self.services[si].name, backend = %b.addr, "backend removed");
        Ok(())
    }

    /// Applies one health check result.
    pub fn on_check(&mut self, r: CheckResult) -> Result<(), ControlError> {
        let Some((si, bi)) = self.find_check(r.id) else {
            return Ok(()); // a result of a backend removed meanwhile
        };
        let name = self.services[si].name.clone();
        let b = &mut self.services[si].backends[bi];
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
            None => return Ok(()),
        }
        self.sync(si)?;
        self.write_record();
        Ok(())
    }

    fn find_check(&self, check_id: u64) -> Option<(usize, usize)> {
        self.services.iter().enumerate().find_map(|(si, s)| {
            s.backends
                .iter()
                .position(|b| b.check_id == check_id)
                .map(|bi| (si, bi))
        })
    }

    /// Adds a backend to a running service (admin API). With a health check it gets new
    /// flows once `rise` checks have passed.
    pub fn add_backend(&mut self, service: &str, backend: &str) -> Result<String, ControlError> {
        let si = self.service_index(service)?;
        let b = crate::config::parse_backend(backend)
            .map_err(|r| ControlError::Invalid(format!("backend {backend:?}: {r}")))?;
        let svc = &self.services[si];
        crate::config::check_backend(svc.vip, svc.mode, &b)
            .map_err(|r| ControlError::Invalid(format!("backend {backend:?}: {r}")))?;
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
        self.insert_backend(si, &b, false)?;
        crate::dataplane::neigh::warm(&[b.addr.ip()]);
        self.sync(si)?;
        let state = self.services[si]
            .backends
            .last()
            .map(|b| b.state())
            .unwrap_or("up");
        info!(service, backend = %b.addr, weight = b.weight, state, "backend added");
        self.write_record();
        Ok(format!(
            "added {} to {service} (weight {}, {state})",
            b.addr, b.weight
        ))
    }

    /// Removes a backend: drains it first unless `now`.
    pub fn remove_backend(
        &mut self,
        service: &str,
        backend: &str,
        now: bool,
    ) -> Result<String, ControlError> {
        let si = self.service_index(service)?;
        let bi = self.backend_index(si, backend)?;
        let addr = self.services[si].backends[bi].addr;
        if now {
            self.drop_backend(si, bi)?;
            self.write_record();
            return Ok(format!("removed {addr} from {service}"));
        }
        self.start_drain(si, bi, true)?;
        Ok(format!(
            "draining {addr} of {service}; it is removed when its flows end or after {:?}",
            self.cfg.drain_timeout
        ))
    }

    pub fn set_weight(
        &mut self,
        service: &str,
        backend: &str,
        weight: u32,
    ) -> Result<String, ControlError> {
        if weight > crate::config::MAX_WEIGHT {
            return Err(ControlError::Invalid(format!(
                "weight {weight} is above {}",
                crate::config::MAX_WEIGHT
            )));
        }
        let si = self.service_index(service)?;
        let bi = self.backend_index(si, backend)?;
        let b = &mut self.services[si].backends[bi];
        let old = b.weight;
        b.weight = weight;
        let addr = b.addr;
        self.sync(si)?;
        info!(service, backend = %addr, old, weight, "backend re-weighted");
        self.write_record();
        Ok(format!("{addr} of {service}: weight {old} -> {weight}"))
    }

    pub fn drain(&mut self, service: &str, backend: &str) -> Result<String, ControlError> {
        let si = self.service_index(service)?;
        let bi = self.backend_index(si, backend)?;
        let addr = self.services[si].backends[bi].addr;
        match self.services[si].backends[bi].admin {
            Admin::Draining { .. } => Ok(format!("{addr} of {service} is already draining")),
            Admin::Drained => Ok(format!("{addr} of {service} is already drained")),
            Admin::Active => {
                self.start_drain(si, bi, false)?;
                Ok(format!(
                    "draining {addr} of {service}: no new flows; its flows are cut after {:?}",
                    self.cfg.drain_timeout
                ))
            }
        }
    }

    fn start_drain(&mut self, si: usize, bi: usize, remove: bool) -> Result<(), ControlError> {
        let timeout = self.cfg.drain_timeout;
        let b = &mut self.services[si].backends[bi];
        let remove = remove || matches!(b.admin, Admin::Draining { remove: true, .. });
        if b.admin == Admin::Drained && remove {
            // Already out of service with no flows: nothing to wait for.
            return self.drop_backend(si, bi);
        }
        b.admin = Admin::Draining {
            deadline: Instant::now() + timeout,
            remove,
        };
        let addr = b.addr;
        self.sync(si)?;
        info!(service = %self.services[si].name, backend = %addr, timeout = ?timeout, remove, "drain started");
        self.write_record();
        Ok(())
    }

    pub fn enable(&mut self, service: &str, backend: &str) -> Result<String, ControlError> {
        let si = self.service_index(service)?;
        let bi = self.backend_index(si, backend)?;
        let b = &mut self.services[si].backends[bi];
        let addr = b.addr;
        if b.admin == Admin::Active {
            return Ok(format!(
                "{addr} of {service} is already in service ({})",
                b.state()
            ));
        }
        b.admin = Admin::Active;
        let state = b.state();
        self.sync(si)?;
        info!(service, backend = %addr, state, "backend enabled");
        self.write_record();
        Ok(format!("{addr} of {service} is back in service ({state})"))
    }

    /// While a drain runs, the record to count active flows with (the scan of the flow
    /// table runs outside the lock, then [`Control::advance_drains`] gets its report).
    pub fn drains_pending(&self) -> Option<RuntimeRecord> {
        self.services
            .iter()
            .any(|s| {
                s.backends
                    .iter()
                    .any(|b| matches!(b.admin, Admin::Draining { .. }))
            })
            .then(|| self.record())
    }

    /// Ends drains whose backends have no flow left in `report` or whose time is up.
    pub fn advance_drains(&mut self, report: &Report) -> Result<(), ControlError> {
        let now = Instant::now();
        let mut done = Vec::new();
        for (si, s) in self.services.iter().enumerate() {
            for b in &s.backends {
                let Admin::Draining { deadline, remove } = b.admin else {
                    continue;
                };
                let flows = match self.proxy_rts.get(&s.name) {
                    Some(rt) => rt.active(b.addr),
                    None => active_flows(report, &s.name, b.addr),
                };
                if flows == 0 {
                    done.push((si, b.addr, remove, "no flows left", 0));
                } else if now >= deadline {
                    done.push((si, b.addr, remove, "timeout", flows));
                }
            }
        }
        if done.is_empty() {
            return Ok(());
        }
        for (si, addr, remove, reason, cut) in done {
            let name = self.services[si].name.clone();
            // The backend may have been enabled or removed while the report was built.
            let Some(bi) = self.services[si]
                .backends
                .iter()
                .position(|b| b.addr == addr && matches!(b.admin, Admin::Draining { .. }))
            else {
                continue;
            };
            info!(service = %name, backend = %addr, reason, flows_cut = cut, "drain finished");
            if remove {
                self.drop_backend(si, bi)?;
            } else {
                self.services[si].backends[bi].admin = Admin::Drained;
                self.sync(si)?;
                if let Some(rt) = self.proxy_rts.get(&name) {
                    rt.cut(addr);
                }
            }
        }
        self.write_record();
        Ok(())
    }

    /// Re-reads the configuration (same flags, the file again) and applies the
    /// difference. A bad file or a change that needs a restart changes nothing.
    pub fn reload(&mut self) -> Result<Vec<String>, ControlError> {
        match self.reload_inner() {
            Ok(changes) => {
                info!(changes = changes.len(), detail = %changes.join("; "), "config applied");
                Ok(changes)
            }
            Err(e) => {
                warn!(error = %e, "config rejected; the running configuration is unchanged");
                Err(e)
            }
        }
    }

    fn reload_inner(&mut self) -> Result<Vec<String>, ControlError> {
        if self.flags.config.is_none() {
            return Err(ControlError::Invalid(
                "lb was started without --config: there is no file to reload".into(),
            ));
        }
        let new = Config::from_flags(&self.flags)?;
        let old = &self.cfg;
        let fixed: [(&str, bool); 11] = [
            ("iface", new.ifaces != old.ifaces),
            ("xdp_mode", new.xdp_mode != old.xdp_mode),
            ("max_flows", new.max_flows != old.max_flows),
            ("ring_size", new.ring_size != old.ring_size),
            ("max_services", new.max_services != old.max_services),
            ("pin_dir", new.pin_dir != old.pin_dir),
            ("snat_ip", new.snat_ips != old.snat_ips),
            ("snat_ports", new.snat_ports != old.snat_ports),
            ("admin", new.admin != old.admin),
            ("splice", new.splice != old.splice),
            ("max_conns", new.max_conns != old.max_conns),
        ];
        let needs: Vec<&str> = fixed.iter().filter(|(_, c)| *c).map(|(n, _)| *n).collect();
        if !needs.is_empty() {
            return Err(ControlError::NeedsRestart(format!(
                "{}: changing {} needs a restart of lb; nothing was applied",
                self.flags
                    .config
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                needs.join(", ")
            )));
        }
        let total: usize = new.services.iter().map(|s| s.backends.len()).sum::<usize>()
            + self
                .services
                .iter()
                .flat_map(|s| &s.backends)
                .filter(|b| matches!(b.admin, Admin::Draining { remove: true, .. }))
                .count();
        if total > MAX_BACKENDS as usize {
            return Err(ControlError::Conflict(format!(
                "the new configuration needs {total} backend slots (including ones still draining); at most {MAX_BACKENDS}"
            )));
        }

        let mut changes = Vec::new();
        if new.idle_timeout != old.idle_timeout || new.closed_timeout != old.closed_timeout {
            self.dp.set_timeouts(&new)?;
            changes.push(format!(
                "timeouts: idle {:?}, closed {:?}",
                new.idle_timeout, new.closed_timeout
            ));
        }
        if new.idle_timeout != old.idle_timeout || new.connect_timeout != old.connect_timeout {
            self.proxy
                .update_timeouts(new.connect_timeout, new.idle_timeout);
        }
        if new.drain_timeout != old.drain_timeout {
            changes.push(format!("drain timeout {:?}", new.drain_timeout));
        }
        let drain_timeout = new.drain_timeout;
        self.cfg = Config {
            services: self.cfg.services.clone(),
            ..new.clone()
        };
        self.cfg.drain_timeout = drain_timeout;

        // Services gone, or whose VIP or mode changed, are removed first.
        let mut si = 0;
        while si < self.services.len() {
            let s = &self.services[si];
            match new.services.iter().find(|n| n.name == s.name) {
                Some(n) if n.vip == s.vip && n.mode == s.mode && n.proxy == s.proxy => si += 1,
                _ => {
                    changes.push(format!("removed service {} ({})", s.name, s.vip));
                    self.remove_service(si)?;
                }
            }
        }
        for n in &new.services {
            let Some(si) = self.services.iter().position(|s| s.name == n.name) else {
                self.add_service(n, false)?;
                changes.push(format!("added service {} ({})", n.name, n.vip));
                continue;
            };
            changes.extend(self.reconcile_service(si, n)?);
        }
        self.cfg.services = new.services.clone();
        self.write_record();
        Ok(changes)
    }

    /// Brings a running service to its new configuration: health settings, backends
    /// added, removed (drained) and re-weighted.
    fn reconcile_service(
        &mut self,
        si: usize,
        n: &ServiceConfig,
    ) -> Result<Vec<String>, ControlError> {
        let mut changes = Vec::new();
        let name = n.name.clone();
        if self.services[si].health != n.health {
            self.services[si].health = n.health.clone();
            let h = n.health.clone();
            for bi in 0..self.services[si].backends.len() {
                let b = &self.services[si].backends[bi];
                let up = b.health == Health::Up || h.check == HealthCheck::None;
                let checker =
                    self.spawn_checker(&h, preamble(&self.services[si]), b, Duration::ZERO);
                let b = &mut self.services[si].backends[bi];
                if let Some(old) = b.checker.take() {
                    old.abort();
                }
                b.checker = checker;
                b.tracker = Tracker::new(up, h.rise, h.fall);
                if h.check == HealthCheck::None {
                    b.health = Health::Up;
                }
            }
            changes.push(format!("service {name}: health check {}", h.check));
        }
        for bc in &n.backends {
            match self.services[si]
                .backends
                .iter()
                .position(|b| b.addr == bc.addr)
            {
                None => {
                    self.insert_backend(si, bc, false)?;
                    crate::dataplane::neigh::warm(&[bc.addr.ip()]);
                    changes.push(format!("service {name}: added backend {}", bc.addr));
                }
                Some(bi) => {
                    let b = &mut self.services[si].backends[bi];
                    if b.weight != bc.weight {
                        changes.push(format!(
                            "service {name}: backend {} weight {} -> {}",
                            bc.addr, b.weight, bc.weight
                        ));
                        b.weight = bc.weight;
                    }
                    if let Admin::Draining { remove: true, .. } = b.admin {
                        b.admin = Admin::Active;
                        changes.push(format!("service {name}: backend {} kept", bc.addr));
                    }
                }
            }
        }
        self.sync(si)?;
        let gone: Vec<SocketAddr> = self.services[si]
            .backends
            .iter()
            .filter(|b| !n.backends.iter().any(|c| c.addr == b.addr))
            .filter(|b| !matches!(b.admin, Admin::Draining { remove: true, .. }))
            .map(|b| b.addr)
            .collect();
        for addr in gone {
            if let Some(bi) = self.services[si]
                .backends
                .iter()
                .position(|b| b.addr == addr)
            {
                self.start_drain(si, bi, true)?;
                changes.push(format!(
                    "service {name}: removing backend {addr} (draining)"
                ));
            }
        }
        Ok(changes)
    }

    /// Names of services with no backend that takes new flows.
    pub fn services_down(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|s| !s.backends.iter().any(|b| b.in_table()))
            .map(|s| s.name.clone())
            .collect()
    }

    /// The runtime record: what `lb stats` in another process reads.
    pub fn record(&self) -> RuntimeRecord {
        RuntimeRecord {
            pid: self.pid,
            netns_inode: self.netns_inode,
            maps: self.dp.map_ids(),
            attachments: self.dp.attachments.clone(),
            admin: self.cfg.admin,
            services: self
                .services
                .iter()
                .map(|s| ServiceSlot {
                    id: s.id,
                    name: s.name.clone(),
                    vip: s.vip,
                    mode: s.mode.name().into(),
                    live_half: s.live_half,
                    backends: s
                        .backends
                        .iter()
                        .map(|b| BackendSlot {
                            id: b.id,
                            addr: b.addr,
                            weight: b.weight,
                            snat_ip: b.snat_ip,
                            state: b.state().into(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Writes the runtime record; failures are logged (the data path is unaffected).
    pub fn write_record(&mut self) {
        match self.record().write() {
            Ok(p) => self.record_path = Some(p),
            Err(e) => warn!(cause = %e, "writing the runtime record"),
        }
    }

    pub fn record_path(&self) -> Option<&PathBuf> {
        self.record_path.as_ref()
    }

    /// Adds what the health checks know to a report built from [`Control::record`]
    /// (by [`stats::collect_from`], outside the lock: it scans the flow table).
    pub fn add_health(&self, report: &mut Report) {
        for rs in &mut report.services {
            if let Some(rt) = self.proxy_rts.get(&rs.name) {
                rs.proxy = Some(rt.counters());
            }
            let Some(s) = self.services.iter().find(|s| s.name == rs.name) else {
                continue;
            };
            if s.health.check == HealthCheck::None {
                continue;
            }
            for rb in &mut rs.backends {
                let Some(b) = s.backends.iter().find(|b| b.addr.to_string() == rb.addr) else {
                    continue;
                };
                rb.health = Some(HealthReport {
                    check: s.health.check.to_string(),
                    status: match b.health {
                        Health::Up => "up",
                        Health::Down => "down",
                        Health::Initial => "initial",
                    }
                    .into(),
                    reason: b.reason.clone(),
                    checks_passed: b.checks_passed,
                    checks_failed: b.checks_failed,
                    latency: b.latency.clone(),
                });
            }
        }
    }

    /// Stops the checks, detaches, and removes the pins and the runtime record.
    pub fn shutdown(&mut self) {
        self.services.clear(); // aborts the checkers
        for ip in std::mem::take(&mut self.local_routes).into_keys() {
            if let Err(e) = route::remove_local(ip) {
                warn!(vip = %ip, cause = %e, "removing the VIP's local route");
            }
        }
        self.dp.shutdown();
        if let Some(p) = self.record_path.take() {
            if let Err(e) = std::fs::remove_file(&p) {
                warn!(path = %p.display(), cause = %e, "removing runtime record");
            }
        }
    }
}

/// Active flows of a backend in a report.
fn active_flows(r: &Report, service: &str, addr: SocketAddr) -> u64 {
    let a = addr.to_string();
    r.services
        .iter()
        .filter(|s| s.name == service)
        .flat_map(|s| &s.backends)
        .filter(|b| b.addr == a)
        .map(|b| b.active_flows)
        .sum()
}

/// What a health check sends first: a proxy service's backends expect a PROXY header
/// (LOCAL in v2: "this is the proxy's own connection"; UNKNOWN in v1).
fn preamble(svc: &ServiceState) -> Option<Vec<u8>> {
    match (svc.mode, svc.proxy.version) {
        (Mode::Nat, _) => None,
        (Mode::ProxyV2, ProxyVersion::V2) => Some(header::encode_v2_local()),
        (Mode::ProxyV2, ProxyVersion::V1) => Some(header::encode_v1_unknown().as_bytes().to_vec()),
    }
}

/// The check a checker runs: the service's with its preamble; `None` for no check.
fn check_spec(h: &HealthConfig, preamble: Option<Vec<u8>>) -> Option<HealthConfig> {
    h.is_checked().then(|| HealthConfig {
        preamble,
        ..h.clone()
    })
}

fn ip_port_bytes(a: SocketAddr) -> Vec<u8> {
    let mut v = ip_bytes(&a.ip()).to_vec();
    v.extend_from_slice(&a.port().to_be_bytes());
    v
}

/// Per-service list for the API, from a report.
pub fn services_json(r: &Report) -> serde_json::Value {
    serde_json::json!({ "services": r.services })
}
