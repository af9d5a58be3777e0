//! Backends found in DNS: one task per service with `backends_dns` looks its name up
//! with the host's resolver configuration (`/etc/resolv.conf` and `/etc/hosts`, read
//! again for every lookup) and hands each answer, or why there was none, to the control
//! plane ([`Control::on_lookup`](crate::control::Control::on_lookup)). The next lookup
//! comes when the answer's TTL runs out (bounded to 1 s-60 s), or every `dns_interval`.

use crate::config::ServiceConfig;
use crate::config::{BackendConfig, DNS_INTERVAL_BOUNDS, DnsBackends, DnsQuery, MAX_WEIGHT};
use crate::control::task::Handle;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::proto::rr::RData;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The wait after a failed lookup, unless `dns_interval` is set.
const RETRY: Duration = Duration::from_secs(5);

/// The running lookup tasks, by service name.
#[derive(Default)]
pub struct Discovery {
    tasks: HashMap<String, (DnsBackends, JoinHandle<()>)>,
}

impl Discovery {
    /// Starts lookups for the services with a DNS name that have none running, and stops
    /// (or restarts) those of services that are gone or whose name or interval changed.
    pub fn sync(&mut self, services: &[ServiceConfig], control: &Handle) {
        self.tasks.retain(|name, (dns, task)| {
            let same = services
                .iter()
                .any(|s| &s.name == name && s.dns.as_ref() == Some(dns));
            if !same {
                task.abort();
            }
            same
        });
        for s in services {
            let Some(dns) = &s.dns else { continue };
            if self.tasks.contains_key(&s.name) {
                continue;
            }
            let task = tokio::spawn(look_up(s.name.clone(), dns.clone(), control.clone()));
            self.tasks.insert(s.name.clone(), (dns.clone(), task));
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}

/// Looks `dns` up again and again for `service`, until the control plane has stopped.
async fn look_up(service: String, dns: DnsBackends, control: Handle) {
    let query = dns.query.to_string();
    loop {
        let answer = resolve(&dns.query).await;
        let wait = match (&answer, dns.interval) {
            (_, Some(every)) => every,
            (Ok((_, ttl)), None) => (*ttl).clamp(DNS_INTERVAL_BOUNDS.0, DNS_INTERVAL_BOUNDS.1),
            (Err(_), None) => RETRY,
        };
        let (service, query) = (service.clone(), query.clone());
        let answer = answer.map(|(found, _)| found);
        let told = control.call(move |c| c.on_lookup(&service, &query, answer));
        if told.await.is_none() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// The backends `q` names now, and how long the answer is valid.
async fn resolve(q: &DnsQuery) -> Result<(Vec<BackendConfig>, Duration), String> {
    let mut builder = TokioResolver::builder_tokio()
        .map_err(|e| format!("reading the resolver configuration: {e}"))?;
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // Every lookup asks: a cached answer would hide a change until its TTL ran out,
    // and the TTL already paces the lookups.
    opts.cache_size = 0;
    let resolver = builder
        .build()
        .map_err(|e| format!("starting the resolver: {e}"))?;
    let now = Instant::now();
    let mut found: Vec<BackendConfig> = Vec::new();
    let mut add = |addr: SocketAddr, weight: u32| {
        if !found.iter().any(|b| b.addr == addr) {
            found.push(BackendConfig { addr, weight });
        }
    };
    let valid = match q {
        DnsQuery::Host { name, port } => {
            let ips = resolver
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            for ip in ips.iter() {
                add(SocketAddr::new(ip, *port), 1);
            }
            ips.valid_until()
        }
        DnsQuery::Srv { name } => {
            let srv = resolver
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            let records: Vec<_> = (srv.answers().iter())
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            // Only the most preferred (lowest) priority serves, as RFC 2782 has it.
            let best = records.iter().map(|s| s.priority).min();
            let mut valid = srv.valid_until();
            for s in records.iter().filter(|s| Some(s.priority) == best) {
                let ips = resolver
                    .lookup_ip(s.target.clone())
                    .await
                    .map_err(|e| format!("{name}: target {}: {e}", s.target))?;
                valid = valid.min(ips.valid_until());
                // Weight 0 ("use only when nothing else") still gets a share: 1.
                let weight = u32::from(s.weight).clamp(1, MAX_WEIGHT);
                for ip in ips.iter() {
                    add(SocketAddr::new(ip, s.port), weight);
                }
            }
            valid
        }
    };
    if found.is_empty() {
        return Err(format!("{q}: no addresses in the answer"));
    }
    Ok((found, valid.saturating_duration_since(now)))
}
