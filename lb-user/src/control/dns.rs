//! Backends found in DNS: each answer of a service's lookup (from `daemon::discovery`)
//! as a model decision. Addresses that appear are added like backends added through the
//! admin API (health-checked from `initial`, slow-started), ones that vanish drain like
//! removed backends, changed SRV weights re-weight. A failed lookup changes nothing.

use super::model::Model;
use super::{Control, ControlError};
use crate::api::report::DnsReport;
use crate::config::{BackendConfig, check_backend};
use std::time::Instant;
use tracing::{info, warn};

impl Model {
    /// Brings service `service`'s backends found in DNS to `found`, the latest answer;
    /// addresses that cannot serve the VIP (another family, another port in dsr mode)
    /// are left out, each named in the changes.
    pub fn discovered(
        &mut self,
        service: &str,
        found: &[BackendConfig],
        now: Instant,
    ) -> Result<Vec<String>, ControlError> {
        let si = self.service_index(service)?;
        let (vip, mode) = (self.services[si].vip, self.services[si].mode);
        let mut changes = Vec::new();
        let mut usable = Vec::new();
        for b in found {
            match check_backend(vip, mode, b) {
                Ok(()) => usable.push(b.clone()),
                Err(r) => changes.push(format!("service {service}: left out {}: {r}", b.addr)),
            }
        }
        changes.extend(self.reconcile_backends(si, &usable, true, now)?);
        Ok(changes)
    }
}

impl Control {
    /// Takes one lookup of `service`'s DNS name (`query`): the backends it gave, or why
    /// it failed (the last good set stays). The model hears of an answer only when it
    /// differs from the last, so backends an operator changed through the API stay as
    /// they are until DNS changes.
    pub fn on_lookup(
        &mut self,
        service: &str,
        query: &str,
        answer: Result<Vec<BackendConfig>, String>,
    ) {
        let status = self.dns.entry(service.to_string()).or_default();
        if status.query != query {
            *status = DnsReport {
                query: query.to_string(),
                ..DnsReport::default()
            };
        }
        status.lookups += 1;
        let found = match answer {
            Err(e) => {
                status.failures += 1;
                warn!(service, query, cause = %e, "DNS lookup failed; the backends it found last stay");
                status.last_error = Some(e);
                return;
            }
            Ok(found) => found,
        };
        let mut names: Vec<String> = found
            .iter()
            .map(|b| format!("{}@{}", b.addr, b.weight))
            .collect();
        names.sort();
        if status.lookups > 1 && names == status.backends {
            return;
        }
        status.backends = names;
        let r = self
            .model
            .discovered(service, &found, Instant::now())
            .map(|changes| {
                info!(service, query, backends = found.len(), changes = %changes.join("; "), "DNS answer applied");
            });
        if let Err(e) = self.commit(r, true) {
            warn!(service, query, cause = %e, "applying a DNS answer");
        }
    }
}
