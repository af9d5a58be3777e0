//! The control plane: the services and backends the daemon runs, their health and
//! administrative state, and every change to them (health transitions, the admin API,
//! config reloads), each turned into the smallest ordered set of map writes that keeps
//! every packet seeing a consistent state.
//!
//! `model` decides (pure, unit-tested), producing a `plan`; [`Control`] executes plans
//! against the data path, the proxy, the health checkers and the routing table.

mod adoption;
mod dns;
pub mod error;
pub mod model;
pub mod plan;
mod reload;
pub mod task;
#[cfg(test)]
mod tests;

pub use error::ControlError;

use crate::announce::Announcer;
use crate::api::report::DnsReport;
use crate::config::{Config, FlagSettings};
use crate::dataplane::runtime::RuntimeRecord;
use crate::dataplane::{BackendSlot, Dataplane, ServiceSlot, source_address_for};
use crate::health::HealthCheck;
use crate::health::histogram::LatencyHistogram;
use crate::health::{self, CheckResult};
use crate::proxy::route;
use crate::proxy::server::{Proxy, ServiceCounters, ServiceRt};
use crate::proxy::table::ProxyTable;
use lb_common::maglev::build_table;
use model::Model;
use plan::{Plan, Step};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Active flows per (service name, backend address), counted in the flow table.
pub type ActiveFlows = HashMap<(String, SocketAddr), u64>;

/// What the health checks know of a service, for the report.
#[derive(Clone, Debug)]
pub struct ServiceHealth {
    pub name: String,
    /// The proxy's counters of a proxy service.
    pub proxy: Option<ServiceCounters>,
    /// The check's name; `None` when the service is not checked.
    pub check: Option<String>,
    pub backends: Vec<BackendHealth>,
    /// Its lookups in DNS, when backends come from there.
    pub dns: Option<DnsReport>,
}

/// A backend's check totals, carried from a daemon to its successor in an upgrade, so
/// the check counters the metrics export do not start again.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CheckTotals {
    pub service: String,
    pub addr: SocketAddr,
    pub passed: u64,
    pub failed: u64,
    pub latency: LatencyHistogram,
}

#[derive(Clone, Debug)]
pub struct BackendHealth {
    pub addr: SocketAddr,
    /// `up`, `down` or `initial`.
    pub status: &'static str,
    pub reason: Option<String>,
    pub checks_passed: u64,
    pub checks_failed: u64,
    pub latency: LatencyHistogram,
}

/// The model and what executes its plans.
pub struct Control {
    model: Model,
    dp: Dataplane,
    /// The accept path of proxy services.
    proxy: Arc<Proxy>,
    /// Proxy services' accept-path state, by service name.
    proxy_rts: HashMap<String, Arc<ServiceRt>>,
    /// Running health checkers by check id.
    checkers: HashMap<u64, JoinHandle<()>>,
    flags: FlagSettings,
    health_tx: UnboundedSender<CheckResult>,
    pid: u32,
    netns_inode: u64,
    record_path: Option<PathBuf>,
    /// Keeps the announce table's VIP routes, once the data path is attached.
    announcer: Option<Announcer>,
    /// The lookups of backends in DNS, by service name.
    dns: HashMap<String, DnsReport>,
}

impl Control {
    /// Programs every service of `cfg` into the (not yet attached) data path.
    pub fn new(
        dp: Dataplane,
        cfg: Config,
        flags: FlagSettings,
        health_tx: UnboundedSender<CheckResult>,
        proxy: Arc<Proxy>,
    ) -> Result<Control, ControlError> {
        let model = match dp.adopted()? {
            Some(adopted) => {
                info!(
                    services = adopted.services.len(),
                    backends = adopted.backends.len(),
                    "adopting the services and backends an earlier daemon left; backends keep the health state they had when it stopped (frozen while no daemon ran) until their checks say otherwise"
                );
                Model::adopting(cfg, Box::new(source_address_for), adopted)?
            }
            None => Model::new(cfg, Box::new(source_address_for))?,
        };
        let mut c = Control {
            model,
            dp,
            proxy,
            proxy_rts: HashMap::new(),
            checkers: HashMap::new(),
            flags,
            health_tx,
            pid: std::process::id(),
            netns_inode: crate::dataplane::runtime::netns_inode()
                .map_err(|e| ControlError::Invalid(e.to_string()))?,
            record_path: None,
            announcer: None,
            dns: HashMap::new(),
        };
        let plan = c.model.take_plan();
        c.apply(plan)?;
        // What an earlier daemon allowed that no service allows now.
        let gone = c.dp.retain_allow(&c.model.allow_entries())?;
        if gone > 0 {
            info!(
                ranges = gone,
                "removed allowlist ranges an earlier daemon left"
            );
        }
        Ok(c)
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dp
    }

    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dp
    }

    /// Where the program is attached, as `iface:mode`.
    pub fn attached(&self) -> Vec<String> {
        self.dp
            .attachments
            .iter()
            .map(|a| format!("{}:{}", a.iface, a.mode))
            .collect()
    }

    pub fn config(&self) -> &Config {
        self.model.config()
    }

    /// Every backend address, for neighbour warm-up.
    pub fn backend_ips(&self) -> Vec<std::net::IpAddr> {
        self.model.backend_ips()
    }

    /// Names of services with no backend that takes new flows.
    pub fn services_down(&self) -> Vec<String> {
        self.model.services_down()
    }

    /// Executes the plan of the decision that returned `r`, even when it failed (what
    /// was planned before the error stands); then, if `r` is a change (`changed`),
    /// writes the runtime record.
    fn commit<T>(&mut self, r: Result<T, ControlError>, changed: bool) -> Result<T, ControlError> {
        let plan = self.model.take_plan();
        let applied = self.apply(plan);
        let moved = self.announce();
        if (changed && r.is_ok()) || moved {
            self.write_record();
        }
        let v = r?;
        applied?;
        Ok(v)
    }

    /// With `--announce-table`, starts keeping a route there for each VIP lb can serve
    /// (call once the data path is attached and no predecessor runs).
    pub fn start_announcing(&mut self) -> Result<(), ControlError> {
        let Some(table) = self.model.config().announce_table else {
            return Ok(());
        };
        let a = Announcer::start(table)?;
        self.announcer = Some(a);
        self.announce();
        self.write_record();
        Ok(())
    }

    /// Brings the announce table in line with the VIPs that can be served now; returns
    /// whether what is announced changed.
    fn announce(&mut self) -> bool {
        let Some(a) = &mut self.announcer else {
            return false;
        };
        let before = a.announced().clone();
        let wanted = self.model.servable_vips(|vip| a.inherited(vip));
        // Failures are logged by `sync` and retried at the next change or refresh.
        let _ = a.sync(&wanted);
        *a.announced() != before
    }

    /// Reads the announce table again and repairs it (a route removed by hand comes
    /// back); the daemon calls this periodically.
    pub fn refresh_announcements(&mut self) {
        if let Some(a) = &mut self.announcer
            && let Err(e) = a.refresh()
        {
            warn!(cause = %e, "reading the announce table");
            return;
        }
        if self.announce() {
            self.write_record();
        }
    }

    /// The VIPs whose route is in the announce table (empty without one).
    pub fn announced(&self) -> Vec<std::net::IpAddr> {
        self.announcer
            .as_ref()
            .map(|a| a.announced().iter().copied().collect())
            .unwrap_or_default()
    }

    /// Runs `plan`'s steps in order; stops at the first that fails.
    fn apply(&mut self, plan: Plan) -> Result<(), ControlError> {
        for step in plan.steps {
            if let Err(e) = self.run(&step) {
                self.model.write_failed(&step);
                return Err(e);
            }
        }
        Ok(())
    }

    fn run(&mut self, step: &Step) -> Result<(), ControlError> {
        match step {
            Step::SetBackend {
                id,
                service,
                addr,
                snat_ip,
                state,
            } => self
                .dp
                .set_backend(*id, *service, *addr, *snat_ip, *state)?,
            Step::InstallTable {
                service,
                vip,
                half,
                forwarding,
                members,
            } => {
                self.dp
                    .install_table(*service, *vip, 1 - half.min(&1), *forwarding, members)?;
            }
            Step::AllowAdd { service, ranges } => self.dp.allow(*service, ranges, true)?,
            Step::AllowRemove { service, ranges } => self.dp.allow(*service, ranges, false)?,
            Step::SetAccess { vip, access } => self.dp.set_access(*vip, *access)?,
            Step::SetWatch { spec } => self.dp.set_watch(*spec)?,
            Step::ClearBackend { id } => self.dp.clear_backend(*id)?,
            Step::ResetServiceCounters { id } => self.dp.reset_counters(true, *id)?,
            Step::ResetBackendCounters { id } => self.dp.reset_counters(false, *id)?,
            Step::RemoveService { vip } => self.dp.remove_service(*vip)?,
            Step::SetProxyVip { vip } => self.dp.set_proxy_vip(*vip)?,
            Step::RemoveProxyVip { vip } => self.dp.remove_proxy_vip(*vip)?,
            Step::SetDnatReplies { on } => self.dp.set_dnat_replies(*on)?,
            Step::SetTimeouts { .. } | Step::SetSourceLimit { .. } | Step::SetSynCookies { .. } => {
                self.dp.set_globals(self.model.config())?
            }
            Step::StartChecker {
                check_id,
                addr,
                spec,
                first_delay,
            } => {
                let h = health::spawn_checker(
                    *check_id,
                    *addr,
                    spec.clone(),
                    *first_delay,
                    self.health_tx.clone(),
                );
                if let Some(old) = self.checkers.insert(*check_id, h) {
                    old.abort();
                }
            }
            Step::StopChecker { check_id } => {
                if let Some(h) = self.checkers.remove(check_id) {
                    h.abort();
                }
            }
            Step::RegisterProxy { name, vip, proxy } => {
                let rt = Arc::new(ServiceRt::new(name.clone(), *vip, proxy.clone()));
                self.proxy.register(rt.clone());
                self.proxy_rts.insert(name.clone(), rt);
            }
            Step::UnregisterProxy { name, vip } => {
                self.proxy.unregister(*vip);
                if let Some(rt) = self.proxy_rts.remove(name) {
                    for addr in rt.counters().backends.keys() {
                        rt.cut(*addr);
                    }
                }
            }
            Step::ProxyTable {
                service,
                members,
                targets,
            } => {
                if let Some(rt) = self.proxy_rts.get(service) {
                    rt.set_table(ProxyTable::new(
                        build_table(members, self.model.config().ring_size),
                        targets.iter().copied().collect(),
                    ));
                }
            }
            Step::ProxyCut { service, addr } => {
                if let Some(rt) = self.proxy_rts.get(service) {
                    rt.cut(*addr);
                }
            }
            Step::ProxyTimeouts { connect, idle } => self.proxy.update_timeouts(*connect, *idle),
            Step::AddLocalRoute { ip } => {
                route::add_local(*ip).map_err(|e| ControlError::Route(e.to_string()))?
            }
            Step::RemoveLocalRoute { ip } => {
                if let Err(e) = route::remove_local(*ip) {
                    warn!(vip = %ip, cause = %e, "removing the VIP's local route");
                }
            }
            Step::WarmNeighbours { ips } => crate::dataplane::neigh::warm(ips),
        }
        Ok(())
    }

    /// Applies one health check result.
    pub fn on_check(&mut self, r: CheckResult) -> Result<(), ControlError> {
        let changed = self.model.on_check(&r);
        self.commit(Ok(()), changed)
    }

    /// Takes an operator's decision on the model (`Model::add_backend`, `remove_backend`,
    /// `set_weight`, `drain`, `enable`; `now` is the time drains count from) and
    /// executes its plan.
    pub fn decide<T>(
        &mut self,
        decision: impl FnOnce(&mut Model, Instant) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        let r = decision(&mut self.model, Instant::now());
        self.commit(r, true)
    }

    /// Ends a watch nobody renewed (the daemon calls this every second).
    pub fn expire_watch(&mut self) -> Result<(), ControlError> {
        let ended = self.model.expire_watch(Instant::now());
        self.commit(Ok(()), ended)
    }

    /// Grows the shares of slow-starting backends (the daemon calls this every second).
    pub fn advance_slow_start(&mut self) -> Result<(), ControlError> {
        let ran = self.model.advance_slow_start(Instant::now());
        self.commit(Ok(()), ran)
    }

    /// While a drain runs, the record to count active flows with (the scan of the flow
    /// table runs outside the lock, then [`Control::advance_drains`] gets the counts).
    pub fn drains_pending(&self) -> Option<RuntimeRecord> {
        self.model.draining().then(|| self.record())
    }

    /// Ends drains whose backends have no flow left (`flows` for NAT services; the
    /// proxy's own count for proxy services) or whose time is up.
    pub fn advance_drains(&mut self, flows: &ActiveFlows) -> Result<(), ControlError> {
        let rts = &self.proxy_rts;
        let ended =
            self.model
                .advance_drains(Instant::now(), |service, addr| match rts.get(service) {
                    Some(rt) => rt.active(addr),
                    None => flows
                        .get(&(service.to_string(), addr))
                        .copied()
                        .unwrap_or(0),
                });
        self.commit(Ok(()), ended)
    }

    /// Re-reads the configuration (same flags, the file again) and applies the
    /// difference. A bad file or a change that needs a restart changes nothing.
    pub fn reload(&mut self) -> Result<Vec<String>, ControlError> {
        let r = self.reload_file();
        let r = self.commit(r, true);
        match &r {
            Ok(changes) => {
                info!(changes = changes.len(), detail = %changes.join("; "), "config applied")
            }
            Err(e) => {
                warn!(error = %e, "config rejected; the running configuration is unchanged")
            }
        }
        r
    }

    fn reload_file(&mut self) -> Result<Vec<String>, ControlError> {
        let Some(path) = &self.flags.config else {
            return Err(ControlError::Invalid(
                "lb was started without --config: there is no file to reload".into(),
            ));
        };
        let file = path.display().to_string();
        let new = Config::from_flags(&self.flags)?;
        self.model.reload(new, &file, Instant::now())
    }

    /// The runtime record: what `lb stats` in another process reads.
    pub fn record(&self) -> RuntimeRecord {
        RuntimeRecord {
            pid: self.pid,
            netns_inode: self.netns_inode,
            maps: self.dp.map_ids(),
            attachments: self.dp.attachments.clone(),
            admin: self.model.config().admin,
            state_dir: Some(self.dp.state().root().to_path_buf()),
            announce_table: self.announcer.as_ref().map(Announcer::table),
            announced: self.announced(),
            services: self
                .model
                .services()
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

    /// What the health checks (and the proxy) know of each service, to complete a report
    /// built from [`Control::record`].
    pub fn health(&self) -> Vec<ServiceHealth> {
        self.model
            .services()
            .iter()
            .map(|s| ServiceHealth {
                name: s.name.clone(),
                proxy: self.proxy_rts.get(&s.name).map(|rt| rt.counters()),
                check: (s.health.check != HealthCheck::None).then(|| s.health.check.to_string()),
                backends: s
                    .backends
                    .iter()
                    .map(|b| BackendHealth {
                        addr: b.addr,
                        status: b.health.name(),
                        reason: b.reason.clone(),
                        checks_passed: b.checks_passed,
                        checks_failed: b.checks_failed,
                        latency: b.latency.clone(),
                    })
                    .collect(),
                // Only while the configuration still looks the service up.
                dns: (self.dns.get(&s.name))
                    .filter(|_| {
                        (self.model.config().services.iter())
                            .any(|c| c.name == s.name && c.dns.is_some())
                    })
                    .cloned(),
            })
            .collect()
    }

    /// Every backend's check totals, for a successor.
    pub fn check_totals(&self) -> Vec<CheckTotals> {
        self.model
            .services()
            .iter()
            .flat_map(|s| {
                s.backends.iter().map(|b| CheckTotals {
                    service: s.name.clone(),
                    addr: b.addr,
                    passed: b.checks_passed,
                    failed: b.checks_failed,
                    latency: b.latency.clone(),
                })
            })
            .collect()
    }

    /// Adds a predecessor's check totals to the same backends here.
    pub fn carry_check_totals(&mut self, totals: &[CheckTotals]) {
        self.model.carry_check_totals(totals);
    }

    fn stop_checkers(&mut self) {
        for (_, h) in self.checkers.drain() {
            h.abort();
        }
    }

    /// Stops the checks and removes the runtime record (unless a successor has written
    /// its own). The data path stays as it is: programs, links, maps and the proxy VIPs'
    /// local routes outlive the daemon (`lb down` removes them).
    pub fn leave(&mut self) {
        self.stop_checkers();
        if let Some(p) = self.record_path.take() {
            let ours = RuntimeRecord::read(&p).is_ok_and(|r| r.pid == self.pid);
            if ours && let Err(e) = std::fs::remove_file(&p) {
                warn!(path = %p.display(), cause = %e, "removing runtime record");
            }
        }
    }
}

impl Drop for Control {
    /// A control plane dropped without [`Control::shutdown`] (a failed start) stops its
    /// checkers too: a dropped task handle does not.
    fn drop(&mut self) {
        self.stop_checkers();
    }
}
