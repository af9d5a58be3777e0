//! A configuration reload as a model decision: what changed between the running
//! configuration and a new one, planned as backend and service additions, removals
//! (drained), re-weights and setting changes. A change that needs a restart is
//! refused before anything is planned.

use super::error::ControlError;
use super::model::{Admin, Health, Model, check_spec};
use super::plan::Step;
use crate::config::{BackendConfig, Config, ServiceConfig, SynCookies};
use crate::health::HealthCheck;
use crate::health::Tracker;
use lb_common::maps::MAX_BACKENDS;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

impl Model {
    /// Moves to `new` (read from `file`). A change that needs a restart, or more backends
    /// than the slots hold, is refused with nothing planned.
    pub fn reload(
        &mut self,
        new: Config,
        file: &str,
        now: Instant,
    ) -> Result<Vec<String>, ControlError> {
        let old = &self.cfg;
        let fixed: [(&str, bool); 15] = [
            ("iface", new.ifaces != old.ifaces),
            ("xdp_mode", new.xdp_mode != old.xdp_mode),
            ("max_flows", new.max_flows != old.max_flows),
            ("ring_size", new.ring_size != old.ring_size),
            ("max_services", new.max_services != old.max_services),
            ("state_dir", new.state_dir != old.state_dir),
            ("snat_ip", new.snat_ips != old.snat_ips),
            ("snat_ports", new.snat_ports != old.snat_ports),
            ("admin", new.admin != old.admin),
            ("admin_socket", new.admin_socket != old.admin_socket),
            ("admin_group", new.admin_group != old.admin_group),
            ("admin_token_file", new.admin_token != old.admin_token),
            ("splice", new.splice != old.splice),
            ("max_conns", new.max_conns != old.max_conns),
            ("announce_table", new.announce_table != old.announce_table),
        ];
        let needs: Vec<&str> = fixed.iter().filter(|(_, c)| *c).map(|(n, _)| *n).collect();
        if !needs.is_empty() {
            return Err(ControlError::NeedsRestart(format!(
                "{file}: changing {} needs a restart of lb; nothing was applied",
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
        if new.idle_timeout != old.idle_timeout
            || new.closed_timeout != old.closed_timeout
            || new.half_open_timeout != old.half_open_timeout
        {
            self.plan.push(Step::SetTimeouts {
                idle: new.idle_timeout,
                closed: new.closed_timeout,
                half_open: new.half_open_timeout,
            });
            changes.push(format!(
                "timeouts: idle {:?}, closed {:?}, half-open {:?}",
                new.idle_timeout, new.closed_timeout, new.half_open_timeout
            ));
        }
        if new.source_rate != old.source_rate || new.source_burst != old.source_burst {
            self.plan.push(Step::SetSourceLimit {
                rate: new.source_rate,
                burst: new.source_burst,
            });
            changes.push(match new.source_rate {
                0 => "source limit: off".to_string(),
                r => format!(
                    "source limit: {r} new flows a second, burst {}",
                    new.source_burst
                ),
            });
        }
        if new.has_dnat() != old.has_dnat() {
            // Before the services change: a new DNAT service's first replies must find
            // the program looking for them.
            self.plan.push(Step::SetDnatReplies { on: new.has_dnat() });
        }
        if new.syn_cookies != old.syn_cookies || new.syn_cookie_rate != old.syn_cookie_rate {
            self.plan.push(Step::SetSynCookies {
                mode: new.syn_cookies,
                rate: new.syn_cookie_rate,
            });
            changes.push(match new.syn_cookies {
                SynCookies::Off => "SYN cookies: off".to_string(),
                SynCookies::Always => "SYN cookies: always".to_string(),
                SynCookies::Auto => format!(
                    "SYN cookies: above {} SYNs a second per VIP",
                    new.syn_cookie_rate
                ),
            });
        }
        if new.idle_timeout != old.idle_timeout || new.connect_timeout != old.connect_timeout {
            self.plan.push(Step::ProxyTimeouts {
                connect: new.connect_timeout,
                idle: new.idle_timeout,
            });
        }
        if new.drain_timeout != old.drain_timeout {
            changes.push(format!("drain timeout {:?}", new.drain_timeout));
        }
        if new.shutdown_timeout != old.shutdown_timeout {
            changes.push(format!("shutdown timeout {:?}", new.shutdown_timeout));
        }
        self.cfg = Config {
            services: self.cfg.services.clone(),
            ..new.clone()
        };

        // Services gone, or whose VIP or mode changed, are removed first.
        let mut si = 0;
        while si < self.services.len() {
            let s = &self.services[si];
            match new.services.iter().find(|n| n.name == s.name) {
                Some(n)
                    if n.vip == s.vip
                        && n.mode == s.mode
                        && n.encap == s.encap
                        && n.proxy == s.proxy =>
                {
                    si += 1
                }
                _ => {
                    changes.push(format!("removed service {} ({})", s.name, s.vip));
                    self.remove_service(si);
                }
            }
        }
        for n in &new.services {
            let Some(si) = self.services.iter().position(|s| s.name == n.name) else {
                self.add_service(n, false)?;
                changes.push(format!("added service {} ({})", n.name, n.vip));
                continue;
            };
            changes.extend(self.reconcile_service(si, n, now)?);
        }
        self.cfg.services = new.services;
        Ok(changes)
    }

    /// Brings a running service to its new configuration: health settings, backends
    /// added, removed (drained) and re-weighted.
    fn reconcile_service(
        &mut self,
        si: usize,
        n: &ServiceConfig,
        now: Instant,
    ) -> Result<Vec<String>, ControlError> {
        let mut changes = Vec::new();
        let name = n.name.clone();
        if self.services[si].access != n.access {
            self.services[si].access = n.access.clone();
            let list: Vec<String> = n.access.allow.iter().map(|r| r.to_string()).collect();
            changes.push(match list.is_empty() {
                true => format!("service {name}: allowlist off (everyone may connect)"),
                false => format!("service {name}: allowlist {}", list.join(", ")),
            });
        }
        if self.services[si].slow_start != n.slow_start {
            self.services[si].slow_start = n.slow_start;
            changes.push(format!("service {name}: slow start {:?}", n.slow_start));
        }
        if self.services[si].health != n.health {
            self.services[si].health = n.health.clone();
            let h = n.health.clone();
            let spec = check_spec(&self.services[si], &h);
            for b in &mut self.services[si].backends {
                let up = b.health == Health::Up || h.check == HealthCheck::None;
                self.plan.push(Step::StopChecker {
                    check_id: b.check_id,
                });
                if let Some(spec) = &spec {
                    self.plan.push(Step::StartChecker {
                        check_id: b.check_id,
                        addr: b.addr,
                        spec: spec.clone(),
                        first_delay: Duration::ZERO,
                    });
                }
                b.tracker = Tracker::new(up, h.rise, h.fall);
                if h.check == HealthCheck::None {
                    b.health = Health::Up;
                }
            }
            changes.push(format!("service {name}: health check {}", h.check));
        }
        changes.extend(self.reconcile_backends(si, &n.backends, false, now)?);
        if n.dns.is_none() {
            // No more lookups: what they found goes.
            changes.extend(self.reconcile_backends(si, &[], true, now)?);
        }
        Ok(changes)
    }

    /// Brings service `si`'s configured (`discovered` false) or DNS-found backends to
    /// `wanted`: new ones added (health-checked from `initial`), weights changed, ones
    /// no longer wanted drained and removed. A configured backend takes over a found one
    /// at the same address; a found one never touches a configured one.
    pub(super) fn reconcile_backends(
        &mut self,
        si: usize,
        wanted: &[BackendConfig],
        discovered: bool,
        now: Instant,
    ) -> Result<Vec<String>, ControlError> {
        let mut changes = Vec::new();
        let name = self.services[si].name.clone();
        for bc in wanted {
            let Some(bi) = (self.services[si].backends.iter()).position(|b| b.addr == bc.addr)
            else {
                if let Err(e) = self.insert_backend(si, bc, false) {
                    if !discovered {
                        return Err(e);
                    }
                    changes.push(format!(
                        "service {name}: cannot add backend {}: {e}",
                        bc.addr
                    ));
                    continue;
                }
                if let Some(b) = self.services[si].backends.last_mut() {
                    b.discovered = discovered;
                }
                self.plan.push(Step::WarmNeighbours {
                    ips: vec![bc.addr.ip()],
                });
                changes.push(format!("service {name}: added backend {}", bc.addr));
                continue;
            };
            let b = &mut self.services[si].backends[bi];
            if discovered && !b.discovered {
                continue;
            }
            b.discovered = discovered;
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
        self.sync(si);
        let gone: Vec<SocketAddr> = (self.services[si].backends.iter())
            .filter(|b| b.discovered == discovered)
            .filter(|b| !wanted.iter().any(|c| c.addr == b.addr))
            .filter(|b| !matches!(b.admin, Admin::Draining { remove: true, .. }))
            .map(|b| b.addr)
            .collect();
        for addr in gone {
            if let Some(bi) = (self.services[si].backends.iter()).position(|b| b.addr == addr) {
                self.start_drain(si, bi, true, now);
                changes.push(format!(
                    "service {name}: removing backend {addr} (draining)"
                ));
            }
        }
        Ok(changes)
    }
}
