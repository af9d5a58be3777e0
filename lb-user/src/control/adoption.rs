//! Adopting what an earlier daemon left in the pinned maps (a restart, an upgrade, a
//! crash): a service keeps its slot and live Maglev half, a backend its id, state and
//! counters, when the configuration still has them (a service by VIP, a backend by
//! service and address, whatever their order in the file), so every flow entry keeps
//! naming the right backend. What the configuration no longer has is removed; what it
//! adds is programmed as at a first start. The first table written is then the same
//! table, so no flow moves unless the configuration moved it.

use super::CheckTotals;
use super::model::Model;
use super::plan::Step;
use crate::dataplane::adopt::AdoptedBackend;
use lb_common::maps::MODE_PROXY;
use std::net::SocketAddr;
use tracing::info;

impl Model {
    /// The slot and live half of the earlier daemon's service at `vip`, claimed.
    pub(super) fn claim_service(&mut self, vip: SocketAddr) -> Option<(u32, u32)> {
        let i = self.adopted.services.iter().position(|s| s.vip == vip)?;
        let s = self.adopted.services.remove(i);
        Some((s.id, s.live_half))
    }

    /// The earlier daemon's backend `addr` of service slot `service`, claimed.
    pub(super) fn claim_backend(
        &mut self,
        service: u32,
        addr: SocketAddr,
    ) -> Option<AdoptedBackend> {
        let i = self
            .adopted
            .backends
            .iter()
            .position(|b| b.service == service && b.addr == addr)?;
        Some(self.adopted.backends.remove(i))
    }

    /// Removes the earlier daemon's services that the configuration does not have, with
    /// their backends, before anything is added (their slots become free).
    pub(super) fn drop_unconfigured_services(&mut self) {
        let gone: Vec<_> = self
            .adopted
            .services
            .iter()
            .filter(|s| !self.cfg.services.iter().any(|c| c.vip == s.vip))
            .cloned()
            .collect();
        for s in gone {
            self.adopted.services.retain(|a| a.id != s.id);
            info!(vip = %s.vip, "removing a service of the earlier daemon that the configuration no longer has");
            if s.mode == MODE_PROXY {
                self.plan.push(Step::RemoveProxyVip { vip: s.vip });
                let still_local =
                    self.cfg.services.iter().any(|c| {
                        c.mode == crate::config::Mode::ProxyV2 && c.vip.ip() == s.vip.ip()
                    });
                if !still_local {
                    self.plan.push(Step::RemoveLocalRoute { ip: s.vip.ip() });
                }
            }
            self.plan.push(Step::RemoveService { vip: s.vip });
            self.clear_adopted_backends(|b| b.service == s.id);
        }
    }

    /// Empties the slots of the earlier daemon's backends that no configured backend
    /// claimed. Runs after the services' tables were written, which no longer name them.
    pub(super) fn drop_unclaimed_backends(&mut self) {
        self.clear_adopted_backends(|_| true);
    }

    fn clear_adopted_backends(&mut self, which: impl Fn(&AdoptedBackend) -> bool) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.adopted.backends)
            .into_iter()
            .partition(which);
        self.adopted.backends = kept;
        for b in gone {
            info!(backend = %b.addr, id = b.id, "removing a backend of the earlier daemon that the configuration no longer has");
            self.plan.push(Step::ClearBackend { id: b.id });
            self.ids.free(b.id);
        }
    }

    /// Adds a predecessor's check totals (an upgrade) to the backends they belong to.
    pub(super) fn carry_check_totals(&mut self, totals: &[CheckTotals]) {
        for t in totals {
            let backend = self
                .services
                .iter_mut()
                .filter(|s| s.name == t.service)
                .flat_map(|s| s.backends.iter_mut())
                .find(|b| b.addr == t.addr);
            if let Some(b) = backend {
                b.checks_passed += t.passed;
                b.checks_failed += t.failed;
                b.latency.merge(&t.latency);
            }
        }
    }
}
