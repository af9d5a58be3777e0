//! The control plane's decisions, tested on the model alone: every plan a test makes
//! runs through [`Maps`], which checks the write-order rule after each step.

use super::error::ControlError;
use super::model::{BackendIds, Model};
use super::plan::{Plan, Step};
use crate::config::{BackendConfig, Config, FlagSettings, ServiceConfig};
use crate::health::HealthCheck;
use crate::health::{CheckResult, FailReason};
use lb_common::maps::{BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UP, MAX_BACKENDS};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SERVICE: &str = "web";
const B1: &str = "198.18.1.11:80";
const B2: &str = "198.18.1.12:80";
const B3: &str = "198.18.1.13:80";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A configuration of one NAT service on 198.18.0.10:80 with TCP checks (rise 2, fall 2).
fn config(backends: &[&str]) -> Config {
    let flags = FlagSettings {
        ifaces: vec!["lb0".into()],
        name: Some(SERVICE.into()),
        vip: Some("198.18.0.10:80".into()),
        backends: backends.iter().map(|b| b.to_string()).collect(),
        snat_ips: vec!["198.18.0.1".into()],
        ..FlagSettings::default()
    };
    let cfg = Config::from_flags(&flags).unwrap();
    assert_eq!(cfg.services[0].health.check, HealthCheck::Tcp);
    assert_eq!(
        (cfg.services[0].health.rise, cfg.services[0].health.fall),
        (2, 2)
    );
    cfg
}

/// What the data path would hold after the plans so far: BACKENDS states and each
/// service's Maglev members.
#[derive(Default)]
struct Maps {
    backends: HashMap<u32, u8>,
    tables: HashMap<SocketAddr, Vec<u32>>,
}

impl Maps {
    /// Runs `plan`, checking after every step that each table names only backends that
    /// are UP: no new flow can pick a backend that is not.
    fn apply(&mut self, plan: &Plan) {
        for (i, step) in plan.steps.iter().enumerate() {
            match step {
                Step::SetBackend { id, state, .. } => {
                    self.backends.insert(*id, *state);
                }
                Step::ClearBackend { id } => {
                    self.backends.remove(id);
                }
                Step::InstallTable { vip, members, .. } => {
                    self.tables
                        .insert(*vip, members.iter().map(|m| m.id).collect());
                }
                Step::RemoveService { vip } => {
                    self.tables.remove(vip);
                }
                _ => {}
            }
            for (vip, ids) in &self.tables {
                for id in ids {
                    assert_eq!(
                        self.backends.get(id),
                        Some(&BACKEND_UP),
                        "after step {i} of {plan:#?}: the table of {vip} names backend {id}, which is not up"
                    );
                }
            }
        }
    }
}

/// A model, the maps its plans built, and a clock.
struct Bed {
    model: Model,
    maps: Maps,
    now: Instant,
}

impl Bed {
    fn new(backends: &[&str]) -> Bed {
        Bed::with(config(backends))
    }

    fn with(cfg: Config) -> Bed {
        let model = Model::new(cfg, Box::new(|_| unreachable!("--snat-ip is set"))).unwrap();
        let mut bed = Bed {
            model,
            maps: Maps::default(),
            now: Instant::now(),
        };
        bed.plan();
        bed
    }

    /// The plan of the decisions since the last call, run through [`Maps`].
    fn plan(&mut self) -> Plan {
        let plan = self.model.take_plan();
        self.maps.apply(&plan);
        plan
    }

    fn backend(&self, a: &str) -> &super::model::BackendState {
        self.model.services()[0]
            .backends
            .iter()
            .find(|b| b.addr == addr(a))
            .unwrap_or_else(|| panic!("no backend {a}"))
    }

    fn id(&self, a: &str) -> u32 {
        self.backend(a).id
    }

    fn state(&self, a: &str) -> &'static str {
        self.backend(a).state()
    }

    /// The ids the service's table names in the maps.
    fn table(&self) -> Vec<u32> {
        let mut ids = self.maps.tables[&addr("198.18.0.10:80")].clone();
        ids.sort();
        ids
    }

    fn ids(&self, addrs: &[&str]) -> Vec<u32> {
        let mut ids: Vec<u32> = addrs.iter().map(|a| self.id(a)).collect();
        ids.sort();
        ids
    }

    fn check(&mut self, a: &str, ok: bool) -> bool {
        let r = CheckResult {
            id: self.backend(a).check_id,
            result: if ok { Ok(()) } else { Err(FailReason::Refused) },
            latency: Duration::from_millis(1),
        };
        self.model.on_check(&r)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert!(
                self.model.take_plan().is_empty(),
                "a test left a plan unchecked"
            );
        }
    }
}

/// Where the first step matching `f` is in `plan`.
fn position(plan: &Plan, what: &str, f: impl Fn(&Step) -> bool) -> usize {
    plan.steps
        .iter()
        .position(f)
        .unwrap_or_else(|| panic!("no {what} in {plan:#?}"))
}

fn set_backend(plan: &Plan, id: u32, state: u8) -> usize {
    position(
        plan,
        &format!("backend {id} set to {state}"),
        |s| matches!(s, Step::SetBackend { id: i, state: st, .. } if *i == id && *st == state),
    )
}

fn table(plan: &Plan) -> usize {
    position(plan, "table", |s| matches!(s, Step::InstallTable { .. }))
}

fn has_table(plan: &Plan) -> bool {
    plan.steps
        .iter()
        .any(|s| matches!(s, Step::InstallTable { .. }))
}

#[test]
fn start_writes_backends_up_before_the_first_table() {
    let mut bed = Bed::new(&[B1, B2]);
    assert_eq!(bed.table(), bed.ids(&[B1, B2]));
    assert_eq!((bed.state(B1), bed.state(B2)), ("up", "up"));
    let mut model = Model::new(config(&[B1]), Box::new(|_| unreachable!())).unwrap();
    let plan = model.take_plan();
    assert!(
        set_backend(&plan, 0, BACKEND_UP) < table(&plan),
        "{plan:#?}"
    );
    assert!(
        plan.steps.iter().any(|s| matches!(s,
            Step::StartChecker { check_id: 0, addr: a, first_delay, .. }
                if *a == addr(B1) && *first_delay < Duration::from_secs(5))),
        "{plan:#?}"
    );
    bed.plan();
}

#[test]
fn health_down_then_up() {
    let mut bed = Bed::new(&[B1, B2]);
    let b1 = bed.id(B1);
    // fall 2: the first failure changes nothing.
    assert!(!bed.check(B1, false));
    assert!(bed.plan().is_empty());
    assert!(bed.check(B1, false));
    let plan = bed.plan();
    assert!(
        table(&plan) < set_backend(&plan, b1, BACKEND_DOWN),
        "{plan:#?}"
    );
    assert_eq!(bed.state(B1), "down");
    assert_eq!(bed.table(), bed.ids(&[B2]));
    assert_eq!(
        bed.backend(B1).reason.as_deref(),
        Some("connection refused")
    );

    assert!(!bed.check(B1, true));
    assert!(bed.plan().is_empty());
    assert!(bed.check(B1, true));
    let plan = bed.plan();
    assert!(
        set_backend(&plan, b1, BACKEND_UP) < table(&plan),
        "{plan:#?}"
    );
    assert_eq!(bed.state(B1), "up");
    assert_eq!(bed.table(), bed.ids(&[B1, B2]));
}

#[test]
fn a_change_that_keeps_the_members_keeps_the_table() {
    let mut bed = Bed::new(&[B1, B2]);
    let b2 = bed.id(B2);
    bed.model.set_weight(SERVICE, addr(B2), 0).unwrap();
    assert!(has_table(&bed.plan()));
    // Out of the table already: going down writes the backend only.
    bed.check(B2, false);
    assert!(bed.check(B2, false));
    let plan = bed.plan();
    assert!(!has_table(&plan), "{plan:#?}");
    assert_eq!(plan.steps.len(), 1, "{plan:#?}");
    set_backend(&plan, b2, BACKEND_DOWN);
}

#[test]
fn drain_ends_when_the_flows_do() {
    let mut bed = Bed::new(&[B1, B2]);
    let b1 = bed.id(B1);
    let msg = bed.model.drain(SERVICE, addr(B1), bed.now).unwrap();
    assert!(
        msg.starts_with("draining 198.18.1.11:80 of web: no new flows"),
        "{msg}"
    );
    let plan = bed.plan();
    assert!(
        table(&plan) < set_backend(&plan, b1, BACKEND_DRAINING),
        "{plan:#?}"
    );
    assert_eq!(bed.state(B1), "draining");
    assert_eq!(bed.table(), bed.ids(&[B2]));
    assert!(bed.model.draining());

    let flows =
        |n: u64| move |s: &str, a: SocketAddr| if s == SERVICE && a == addr(B1) { n } else { 0 };
    assert!(!bed.model.advance_drains(bed.now, flows(3)));
    assert!(bed.plan().is_empty());
    assert!(bed.model.advance_drains(bed.now, flows(0)));
    let plan = bed.plan();
    set_backend(&plan, b1, BACKEND_DOWN);
    assert!(!has_table(&plan), "{plan:#?}");
    assert_eq!(bed.state(B1), "drained");
    assert!(!bed.model.draining());
    let again = bed.model.drain(SERVICE, addr(B1), bed.now).unwrap();
    assert_eq!(again, "198.18.1.11:80 of web is already drained");
    assert!(bed.plan().is_empty());
}

#[test]
fn drain_ends_at_its_deadline() {
    let mut bed = Bed::new(&[B1, B2]);
    bed.model.drain(SERVICE, addr(B1), bed.now).unwrap();
    bed.plan();
    let timeout = bed.model.config().drain_timeout;
    let busy = |_: &str, _: SocketAddr| 5;
    let almost = bed.now + timeout - Duration::from_millis(1);
    assert!(!bed.model.advance_drains(almost, busy));
    assert!(bed.model.advance_drains(bed.now + timeout, busy));
    bed.plan();
    assert_eq!(bed.state(B1), "drained");
}

#[test]
fn enable_brings_a_drained_backend_back() {
    let mut bed = Bed::new(&[B1, B2]);
    let b1 = bed.id(B1);
    let msg = bed.model.enable(SERVICE, addr(B1)).unwrap();
    assert_eq!(msg, "198.18.1.11:80 of web is already in service (up)");
    assert!(bed.plan().is_empty());
    bed.model.drain(SERVICE, addr(B1), bed.now).unwrap();
    bed.model.advance_drains(bed.now, |_, _| 0);
    bed.plan();
    let msg = bed.model.enable(SERVICE, addr(B1)).unwrap();
    assert_eq!(msg, "198.18.1.11:80 of web is back in service (up)");
    let plan = bed.plan();
    assert!(
        set_backend(&plan, b1, BACKEND_UP) < table(&plan),
        "{plan:#?}"
    );
    assert_eq!(bed.table(), bed.ids(&[B1, B2]));
}

#[test]
fn an_added_backend_waits_for_rise_checks() {
    let mut bed = Bed::new(&[B1]);
    let b3 = BackendConfig {
        addr: addr(B3),
        weight: 2,
    };
    let msg = bed.model.add_backend(SERVICE, &b3).unwrap();
    assert_eq!(msg, "added 198.18.1.13:80 to web (weight 2, initial)");
    let plan = bed.plan();
    let id = bed.id(B3);
    assert_eq!(
        plan.steps,
        vec![
            Step::ResetBackendCounters { id },
            Step::StartChecker {
                check_id: bed.backend(B3).check_id,
                addr: addr(B3),
                spec: crate::health::HealthConfig::default(),
                first_delay: Duration::ZERO,
            },
            Step::SetBackend {
                id,
                service: 0,
                addr: addr(B3),
                snat_ip: "198.18.0.1".parse().unwrap(),
                state: BACKEND_DOWN,
            },
            Step::WarmNeighbours {
                ips: vec![addr(B3).ip()],
            },
        ]
    );
    assert!(!bed.check(B3, true));
    assert!(bed.check(B3, true));
    let plan = bed.plan();
    assert!(
        set_backend(&plan, id, BACKEND_UP) < table(&plan),
        "{plan:#?}"
    );
    assert_eq!(bed.table(), bed.ids(&[B1, B3]));

    let dup = bed.model.add_backend(SERVICE, &b3).unwrap_err();
    assert!(matches!(dup, ControlError::Conflict(_)), "{dup}");
    let none = bed.model.add_backend("nosuch", &b3).unwrap_err();
    assert_eq!(none.to_string(), "no service named \"nosuch\"");
    assert!(bed.plan().is_empty());
}

#[test]
fn remove_drains_then_clears() {
    let mut bed = Bed::new(&[B1, B2]);
    let (b1, check) = (bed.id(B1), bed.backend(B1).check_id);
    bed.model
        .remove_backend(SERVICE, addr(B1), false, bed.now)
        .unwrap();
    let plan = bed.plan();
    assert!(
        table(&plan) < set_backend(&plan, b1, BACKEND_DRAINING),
        "{plan:#?}"
    );
    assert!(bed.model.advance_drains(bed.now, |_, _| 0));
    let plan = bed.plan();
    assert_eq!(
        plan.steps,
        vec![
            Step::StopChecker { check_id: check },
            Step::ClearBackend { id: b1 }
        ]
    );
    assert_eq!(bed.model.services()[0].backends.len(), 1);
    let gone = bed.model.drain(SERVICE, addr(B1), bed.now).unwrap_err();
    assert_eq!(
        gone.to_string(),
        "service \"web\" has no backend 198.18.1.11:80"
    );

    // At once: out of the table first, then cleared.
    let b2 = bed.id(B2);
    let msg = bed
        .model
        .remove_backend(SERVICE, addr(B2), true, bed.now)
        .unwrap();
    assert_eq!(msg, "removed 198.18.1.12:80 from web");
    let plan = bed.plan();
    let clear = position(&plan, "clear", |s| *s == Step::ClearBackend { id: b2 });
    assert!(table(&plan) < clear, "{plan:#?}");
    assert!(bed.table().is_empty());

    // Fresh ids come first: a removed backend's id is not handed out again yet.
    bed.model
        .add_backend(
            SERVICE,
            &BackendConfig {
                addr: addr(B3),
                weight: 1,
            },
        )
        .unwrap();
    bed.plan();
    assert!(![b1, b2].contains(&bed.id(B3)));
}

#[test]
fn freed_ids_are_reused_oldest_first_once_fresh_ones_run_out() {
    let mut ids = BackendIds::default();
    for want in 0..MAX_BACKENDS {
        assert_eq!(ids.alloc(), Some(want));
    }
    assert_eq!(ids.alloc(), None);
    ids.free(7);
    ids.free(3);
    assert_eq!(ids.alloc(), Some(7));
    assert_eq!(ids.alloc(), Some(3));
    assert_eq!(ids.alloc(), None);
}

#[test]
fn weight_zero_leaves_the_table() {
    let mut bed = Bed::new(&[B1, B2]);
    let msg = bed.model.set_weight(SERVICE, addr(B1), 0).unwrap();
    assert_eq!(msg, "198.18.1.11:80 of web: weight 1 -> 0");
    let plan = bed.plan();
    assert_eq!(plan.steps.len(), 1, "only the table changes: {plan:#?}");
    assert_eq!(bed.table(), bed.ids(&[B2]));
    assert_eq!(bed.state(B1), "up");
    bed.model.set_weight(SERVICE, addr(B1), 0).unwrap();
    assert!(bed.plan().is_empty(), "same weight, same table");
    bed.model.set_weight(SERVICE, addr(B1), 3).unwrap();
    let plan = bed.plan();
    match &plan.steps[table(&plan)] {
        Step::InstallTable { members, .. } => {
            assert!(members.iter().any(|m| m.id == bed.id(B1) && m.weight == 3))
        }
        _ => unreachable!(),
    }
    let e = bed.model.set_weight(SERVICE, addr(B1), 70_000).unwrap_err();
    assert_eq!(
        (e.status(), e.to_string()),
        (400, "weight 70000 is above 65535".into())
    );
    assert!(bed.plan().is_empty());
}

#[test]
fn table_halves_alternate() {
    let mut bed = Bed::new(&[B1, B2]);
    let half = |plan: &Plan| match &plan.steps[table(plan)] {
        Step::InstallTable { half, .. } => *half,
        _ => unreachable!(),
    };
    bed.model.set_weight(SERVICE, addr(B1), 0).unwrap();
    let first = half(&bed.plan());
    bed.model.set_weight(SERVICE, addr(B1), 1).unwrap();
    assert_eq!(half(&bed.plan()), 1 - first);
}

fn service(name: &str, vip: &str, backends: &[(&str, u32)]) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        vip: addr(vip),
        backends: backends
            .iter()
            .map(|(a, w)| BackendConfig {
                addr: addr(a),
                weight: *w,
            })
            .collect(),
        ..config(&[B1]).services[0].clone()
    }
}

#[test]
fn reload_applies_the_difference() {
    let mut bed = Bed::new(&[B1, B2]);
    let b2 = bed.id(B2);
    let mut new = config(&[B1]);
    new.services[0] = service(SERVICE, "198.18.0.10:80", &[(B1, 2), (B3, 1)]);
    new.services
        .push(service("api", "198.18.0.20:443", &[("198.18.1.21:443", 1)]));
    new.idle_timeout = Duration::from_secs(60);
    let changes = bed.model.reload(new.clone(), "lb.toml", bed.now).unwrap();
    assert_eq!(
        changes,
        [
            "timeouts: idle 60s, closed 10s, half-open 5s",
            "service web: backend 198.18.1.11:80 weight 1 -> 2",
            "service web: added backend 198.18.1.13:80",
            "service web: removing backend 198.18.1.12:80 (draining)",
            "added service api (198.18.0.20:443)",
        ]
    );
    let plan = bed.plan();
    assert_eq!(
        plan.steps[0],
        Step::SetTimeouts {
            idle: Duration::from_secs(60),
            closed: Duration::from_secs(10),
            half_open: Duration::from_secs(5),
        }
    );
    set_backend(&plan, b2, BACKEND_DRAINING);
    assert_eq!(bed.state(B3), "initial");
    assert_eq!(bed.state(B2), "draining");
    assert_eq!(bed.table(), bed.ids(&[B1]));
    // A service added while running waits for its backends' checks, like a backend.
    assert!(bed.maps.tables[&addr("198.18.0.20:443")].is_empty());
    assert_eq!(bed.model.services()[1].backends[0].state(), "initial");
    assert_eq!(bed.model.config(), &new);

    // The same file again changes nothing.
    assert!(
        bed.model
            .reload(new.clone(), "lb.toml", bed.now)
            .unwrap()
            .is_empty()
    );
    assert!(bed.plan().is_empty());

    // A service dropped from the file is removed with its backends.
    let api_backend = bed.model.services()[1].backends[0].id;
    new.services.pop();
    let changes = bed.model.reload(new, "lb.toml", bed.now).unwrap();
    assert_eq!(changes, ["removed service api (198.18.0.20:443)"]);
    let plan = bed.plan();
    let removed = position(&plan, "service removal", |s| {
        *s == Step::RemoveService {
            vip: addr("198.18.0.20:443"),
        }
    });
    let cleared = position(&plan, "clear", |s| {
        *s == Step::ClearBackend { id: api_backend }
    });
    assert!(removed < cleared, "{plan:#?}");
    assert_eq!(bed.model.services().len(), 1);
}

#[test]
fn reload_that_needs_a_restart_applies_nothing() {
    let mut bed = Bed::new(&[B1, B2]);
    let mut new = config(&[B1]);
    new.ifaces = vec!["lb1".into()];
    new.max_flows *= 2;
    new.announce_table = Some(5);
    let e = bed.model.reload(new, "lb.toml", bed.now).unwrap_err();
    assert_eq!(
        e.to_string(),
        "lb.toml: changing iface, max_flows, announce_table needs a restart of lb; nothing was applied"
    );
    assert_eq!(e.status(), 400);
    assert!(bed.plan().is_empty());
    assert_eq!(bed.model.config(), &config(&[B1, B2]));
    assert_eq!(bed.model.services()[0].backends.len(), 2);
}

#[test]
fn a_backend_removed_by_reload_is_kept_if_it_comes_back() {
    let mut bed = Bed::new(&[B1, B2]);
    let b2 = bed.id(B2);
    bed.model.reload(config(&[B1]), "lb.toml", bed.now).unwrap();
    bed.plan();
    let changes = bed
        .model
        .reload(config(&[B1, B2]), "lb.toml", bed.now)
        .unwrap();
    assert_eq!(changes, ["service web: backend 198.18.1.12:80 kept"]);
    let plan = bed.plan();
    assert!(
        set_backend(&plan, b2, BACKEND_UP) < table(&plan),
        "{plan:#?}"
    );
    assert!(!bed.model.draining());
}

#[test]
fn reload_sets_the_source_limit_alone() {
    let mut bed = Bed::new(&[B1, B2]);
    let mut new = config(&[B1, B2]);
    new.source_rate = 10;
    new.source_burst = 20;
    let changes = bed.model.reload(new.clone(), "lb.toml", bed.now).unwrap();
    assert_eq!(changes, ["source limit: 10 new flows a second, burst 20"]);
    assert_eq!(
        bed.plan().steps,
        [Step::SetSourceLimit {
            rate: 10,
            burst: 20
        }],
        "nothing but the global settings is written: flows and tables stay"
    );
    new.source_rate = 0;
    new.source_burst = 1;
    let changes = bed.model.reload(new, "lb.toml", bed.now).unwrap();
    assert_eq!(changes, ["source limit: off"]);
    assert_eq!(
        bed.plan().steps,
        [Step::SetSourceLimit { rate: 0, burst: 1 }]
    );
}

#[test]
fn reload_sets_the_syn_cookies_alone() {
    let mut bed = Bed::new(&[B1, B2]);
    let mut new = config(&[B1, B2]);
    new.syn_cookies = crate::config::SynCookies::Always;
    let changes = bed.model.reload(new.clone(), "lb.toml", bed.now).unwrap();
    assert_eq!(changes, ["SYN cookies: always"]);
    assert_eq!(
        bed.plan().steps,
        [Step::SetSynCookies {
            mode: crate::config::SynCookies::Always,
            rate: crate::config::DEFAULT_SYN_COOKIE_RATE
        }],
        "nothing but the global settings is written: flows and tables stay"
    );
}

// ---------------------------------------------------------------------------------------
// Adopting what an earlier daemon left (restart, upgrade, crash).

use crate::dataplane::adopt::{Adopted, AdoptedBackend, AdoptedService};
use lb_common::maps::MODE_NAT;

const VIP: &str = "198.18.0.10:80";

/// What a daemon running `config(backends)` left in the maps, read back.
fn left_by(backends: &[&str]) -> Adopted {
    let bed = Bed::new(backends);
    let svc = &bed.model.services()[0];
    Adopted {
        services: vec![AdoptedService {
            vip: addr(VIP),
            id: svc.id,
            live_half: svc.live_half,
            mode: MODE_NAT,
        }],
        backends: svc
            .backends
            .iter()
            .map(|b| AdoptedBackend {
                id: b.id,
                service: svc.id,
                addr: b.addr,
                snat_ip: b.snat_ip,
                state: b.map_state(),
            })
            .collect(),
    }
}

/// A bed over `adopted`, its maps holding what the earlier daemon wrote.
fn adopting(backends: &[&str], adopted: Adopted) -> (Bed, Plan) {
    adopting_config(config(backends), adopted)
}

fn adopting_config(cfg: Config, adopted: Adopted) -> (Bed, Plan) {
    let mut maps = Maps::default();
    for b in &adopted.backends {
        maps.backends.insert(b.id, b.state);
    }
    let model =
        Model::adopting(cfg, Box::new(|_| unreachable!("--snat-ip is set")), adopted).unwrap();
    let mut bed = Bed {
        model,
        maps,
        now: Instant::now(),
    };
    let plan = bed.plan();
    (bed, plan)
}

fn resets(plan: &Plan) -> usize {
    plan.steps
        .iter()
        .filter(|s| {
            matches!(
                s,
                Step::ResetServiceCounters { .. } | Step::ResetBackendCounters { .. }
            )
        })
        .count()
}

#[test]
fn adopting_keeps_ids_and_counters_across_a_reordered_config() {
    let before = left_by(&[B1, B2, B3]);
    let id_of = |a: &str| {
        before
            .backends
            .iter()
            .find(|b| b.addr == addr(a))
            .unwrap()
            .id
    };
    let (old1, old2, old3) = (id_of(B1), id_of(B2), id_of(B3));
    let live = before.services[0].live_half;
    let (bed, plan) = adopting(&[B3, B1, B2], before);
    assert_eq!((bed.id(B1), bed.id(B2), bed.id(B3)), (old1, old2, old3));
    assert_eq!(resets(&plan), 0, "counters must carry on: {plan:#?}");
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::SetBackend { .. })),
        "kept backends are not rewritten: {plan:#?}"
    );
    // One table, into the half that is not live, naming the same backends.
    let Step::InstallTable { half, .. } = &plan.steps[table(&plan)] else {
        unreachable!()
    };
    assert_eq!(*half, 1 - live);
    assert_eq!(bed.table(), {
        let mut v = vec![old1, old2, old3];
        v.sort();
        v
    });
    assert_eq!(
        (bed.state(B1), bed.state(B2), bed.state(B3)),
        ("up", "up", "up")
    );
}

#[test]
fn adopting_removes_what_the_config_dropped_and_adds_what_it_gained() {
    let mut before = left_by(&[B1, B2]);
    // A second service of the earlier daemon, gone from the configuration.
    before.services.push(AdoptedService {
        vip: addr("198.18.0.20:443"),
        id: 7,
        live_half: 0,
        mode: MODE_NAT,
    });
    before.backends.push(AdoptedBackend {
        id: 9,
        service: 7,
        addr: addr("198.18.1.99:443"),
        snat_ip: "198.18.0.1".parse().unwrap(),
        state: BACKEND_UP,
    });
    let id_of = |a: &str| {
        before
            .backends
            .iter()
            .find(|b| b.addr == addr(a))
            .unwrap()
            .id
    };
    let (old1, old2) = (id_of(B1), id_of(B2));
    let (bed, plan) = adopting(&[B2, B3], before);
    let gone_service = position(
        &plan,
        "remove the dropped service",
        |s| matches!(s, Step::RemoveService { vip } if *vip == addr("198.18.0.20:443")),
    );
    let gone_backend = position(&plan, "clear its backend", |s| {
        matches!(s, Step::ClearBackend { id: 9 })
    });
    assert!(gone_service < gone_backend, "{plan:#?}");
    // B1 is no longer configured: cleared after the table that drops it.
    let cleared = position(
        &plan,
        "clear B1",
        |s| matches!(s, Step::ClearBackend { id } if *id == old1),
    );
    assert!(table(&plan) < cleared, "{plan:#?}");
    assert_eq!(bed.id(B2), old2);
    let new = bed.id(B3);
    assert!(![old1, old2, 9].contains(&new), "B3 got a taken id {new}");
    // Only the new backend starts from zero.
    assert_eq!(resets(&plan), 1, "{plan:#?}");
    assert!(
        plan.steps
            .iter()
            .any(|s| matches!(s, Step::ResetBackendCounters { id } if *id == new))
    );
    assert_eq!(bed.table(), {
        let mut v = vec![old2, new];
        v.sort();
        v
    });
}

#[test]
fn an_adopted_down_backend_stays_down_until_its_checks_pass() {
    let mut before = left_by(&[B1, B2]);
    before.backends[0].state = BACKEND_DOWN;
    let down = before.backends[0].addr.to_string();
    let (mut bed, _) = adopting(&[B1, B2], before);
    assert_eq!(bed.state(&down), "down");
    assert_eq!(bed.table(), vec![bed.id(if down == B1 { B2 } else { B1 })]);
    bed.check(&down, true);
    assert!(bed.check(&down, true));
    bed.plan();
    assert_eq!(bed.state(&down), "up");
    assert_eq!(bed.table(), bed.ids(&[B1, B2]));
}

#[test]
fn backend_ids_after_adoption_fill_the_gaps_after_fresh_ones() {
    let mut ids = BackendIds::taken(&[0, 2, 5]);
    assert_eq!(ids.alloc(), Some(6));
    ids.free(6);
    let mut fresh = Vec::new();
    for _ in 0..(MAX_BACKENDS - 6 - 1) {
        fresh.push(ids.alloc().unwrap());
    }
    // Fresh ids run out, then the gaps of the adoption, then the freed ones.
    assert_eq!(ids.alloc(), Some(1));
    assert_eq!(ids.alloc(), Some(3));
    assert_eq!(ids.alloc(), Some(4));
    assert_eq!(ids.alloc(), Some(6));
    assert_eq!(ids.alloc(), None);
}

#[test]
fn an_upgrade_carries_the_check_totals_to_the_same_backends() {
    let mut bed = Bed::new(&[B1, B2]);
    assert!(!bed.check(B1, true));
    let mut latency = crate::health::histogram::LatencyHistogram::default();
    latency.observe(Duration::from_millis(2));
    let totals = |service: &str, addr_: &str| super::CheckTotals {
        service: service.to_string(),
        addr: addr(addr_),
        passed: 40,
        failed: 3,
        latency: latency.clone(),
    };
    bed.model
        .carry_check_totals(&[totals(SERVICE, B1), totals("elsewhere", B2)]);
    let b1 = bed.backend(B1);
    assert_eq!((b1.checks_passed, b1.checks_failed), (41, 3));
    assert_eq!(b1.latency.count, 2);
    // Totals of a service this daemon does not run go nowhere.
    let b2 = bed.backend(B2);
    assert_eq!((b2.checks_passed, b2.checks_failed), (0, 0));
    assert!(bed.plan().is_empty(), "carrying totals writes nothing");
}

/// A VIP is announced once a backend has passed a check here (a fresh daemon's
/// backends start up, untested), or at once if an earlier daemon announced it; it is
/// withdrawn when no backend is up.
#[test]
fn a_vip_is_servable_once_a_checked_backend_is_up() {
    let vip: std::net::IpAddr = "198.18.0.10".parse().unwrap();
    let none = |_: std::net::IpAddr| false;
    let all = |_: std::net::IpAddr| true;
    let mut bed = Bed::new(&[B1, B2]);
    assert!(
        bed.model.servable_vips(none).is_empty(),
        "no check passed yet"
    );
    assert_eq!(bed.model.servable_vips(all), [vip].into());
    bed.check(B1, true);
    bed.plan();
    assert_eq!(bed.model.servable_vips(none), [vip].into());
    for _ in 0..2 {
        bed.check(B1, false);
        bed.check(B2, false);
    }
    bed.plan();
    assert_eq!((bed.state(B1), bed.state(B2)), ("down", "down"));
    assert!(bed.model.servable_vips(none).is_empty());
    assert!(bed.model.servable_vips(all).is_empty(), "no backend up");
    for _ in 0..2 {
        bed.check(B2, true);
    }
    bed.plan();
    assert_eq!(bed.model.servable_vips(none), [vip].into());
}

/// The weights of the last table install in `plan`, by backend id.
fn table_weights(plan: &Plan) -> HashMap<u32, u32> {
    plan.steps
        .iter()
        .rev()
        .find_map(|s| match s {
            Step::InstallTable { members, .. } => {
                Some(members.iter().map(|m| (m.id, m.weight)).collect())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no table in {plan:#?}"))
}

/// Slow start: backends of the configuration start at full weight; one that comes back
/// up takes a share growing from one step to its weight over the window, then stays.
#[test]
fn a_backend_back_up_grows_to_its_weight_over_the_slow_start() {
    use super::model::RAMP_STEPS;
    let mut cfg = config(&[B1, B2]);
    cfg.services[0].slow_start = Duration::from_secs(10);
    let mut bed = Bed::with(cfg);
    let (b1, b2) = (bed.id(B1), bed.id(B2));
    for _ in 0..2 {
        bed.check(B2, false);
    }
    let plan = bed.plan();
    assert_eq!(table_weights(&plan), [(b1, RAMP_STEPS)].into());
    for _ in 0..2 {
        bed.check(B2, true);
    }
    let back = Instant::now();
    let plan = bed.plan();
    let w = table_weights(&plan);
    assert_eq!(w[&b1], RAMP_STEPS);
    assert!((1..=2).contains(&w[&b2]), "just back: {w:?}");
    assert!(bed.model.advance_slow_start(back + Duration::from_secs(5)));
    let w = table_weights(&bed.plan());
    assert!((9..=12).contains(&w[&b2]), "halfway: {w:?}");
    assert!(bed.model.advance_slow_start(back + Duration::from_secs(11)));
    let w = table_weights(&bed.plan());
    assert_eq!(w[&b2], RAMP_STEPS, "done: {w:?}");
    assert!(
        !bed.model.advance_slow_start(back + Duration::from_secs(12)),
        "no ramp left"
    );
    assert!(bed.plan().is_empty());
}

#[test]
fn without_slow_start_weights_are_as_configured() {
    use super::model::table_weight;
    let now = Instant::now();
    assert_eq!(table_weight(3, Duration::ZERO, Some(now), now), 3);
    let s = Duration::from_secs(10);
    assert_eq!(table_weight(2, s, None, now), 40);
    assert_eq!(table_weight(2, s, Some(now), now), 1);
    assert_eq!(
        table_weight(2, s, Some(now), now + Duration::from_secs(5)),
        20
    );
    assert_eq!(
        table_weight(2, s, Some(now), now + Duration::from_secs(60)),
        40
    );
}

/// `config(backends)` with backends also looked up in DNS.
fn config_with_dns(backends: &[&str]) -> Config {
    let mut cfg = config(backends);
    cfg.services[0].dns = Some(crate::config::DnsBackends {
        query: crate::config::DnsQuery::Host {
            name: "web.lb.test".into(),
            port: 80,
        },
        interval: None,
    });
    cfg
}

fn found(backends: &[(&str, u32)]) -> Vec<BackendConfig> {
    backends
        .iter()
        .map(|(a, w)| BackendConfig {
            addr: addr(a),
            weight: *w,
        })
        .collect()
}

/// Addresses a lookup finds join like added backends (checked from `initial`); ones a
/// later lookup no longer has drain and go; a configured backend is never touched.
#[test]
fn backends_found_in_dns_join_checked_and_vanished_ones_drain() {
    let mut bed = Bed::with(config_with_dns(&[B1]));
    let now = bed.now;
    let changes = (bed.model)
        .discovered(SERVICE, &found(&[(B2, 1), (B3, 1), (B1, 5)]), now)
        .unwrap();
    assert_eq!(
        changes,
        [
            "service web: added backend 198.18.1.12:80",
            "service web: added backend 198.18.1.13:80",
        ]
    );
    bed.plan();
    assert_eq!((bed.state(B2), bed.state(B3)), ("initial", "initial"));
    assert_eq!(bed.backend(B1).weight, 1, "the configured weight stays");
    assert!(!bed.backend(B1).discovered);
    for _ in 0..2 {
        bed.check(B2, true);
        bed.check(B3, true);
    }
    bed.plan();
    assert_eq!(bed.table(), bed.ids(&[B1, B2, B3]));

    // B3 vanishes, B2's weight changes: B3 drains, then goes once its flows end.
    let b3 = bed.id(B3);
    let changes = (bed.model)
        .discovered(SERVICE, &found(&[(B2, 3)]), now)
        .unwrap();
    assert_eq!(
        changes,
        [
            "service web: backend 198.18.1.12:80 weight 1 -> 3",
            "service web: removing backend 198.18.1.13:80 (draining)",
        ]
    );
    let plan = bed.plan();
    set_backend(&plan, b3, BACKEND_DRAINING);
    assert_eq!(bed.table(), bed.ids(&[B1, B2]));
    assert!(bed.model.advance_drains(now, |_, _| 0));
    bed.plan();
    assert!(
        bed.model.services()[0]
            .backends
            .iter()
            .all(|b| b.addr != addr(B3))
    );

    // A reload of the same file leaves what DNS found; one without the name drains it.
    let same = bed
        .model
        .reload(config_with_dns(&[B1]), "lb.toml", now)
        .unwrap();
    assert!(same.is_empty(), "{same:?}");
    assert!(bed.plan().is_empty());
    let changes = bed.model.reload(config(&[B1]), "lb.toml", now).unwrap();
    assert_eq!(
        changes,
        ["service web: removing backend 198.18.1.12:80 (draining)"]
    );
    bed.plan();
    assert_eq!(bed.state(B2), "draining");
}

/// An address that cannot serve the VIP (here another family) is left out, named.
#[test]
fn a_found_address_of_another_family_is_left_out() {
    let mut bed = Bed::with(config_with_dns(&[B1]));
    let now = bed.now;
    let changes = (bed.model)
        .discovered(SERVICE, &found(&[("[fd00::12]:80", 1), (B2, 1)]), now)
        .unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(
        changes[0].starts_with("service web: left out [fd00::12]:80: address family differs"),
        "{changes:?}"
    );
    assert_eq!(changes[1], "service web: added backend 198.18.1.12:80");
    bed.plan();
}

/// After a restart, the earlier daemon's backends of a service looked up in DNS are
/// kept with their ids and states until the first answer, not removed as unconfigured.
#[test]
fn adopting_keeps_the_backends_dns_found() {
    let before = left_by(&[B1, B2]);
    let b2 = before.backends[1].id;
    let (bed, plan) = adopting_config(config_with_dns(&[B1]), before);
    assert!(
        !plan.steps.contains(&Step::ClearBackend { id: b2 }),
        "{plan:#?}"
    );
    assert_eq!((bed.id(B2), bed.state(B2)), (b2, "up"));
    assert!(bed.backend(B2).discovered);
}

fn ranges(list: &[&str]) -> Vec<crate::config::Cidr> {
    list.iter().map(|r| r.parse().unwrap()).collect()
}

fn with_allow(list: &[&str]) -> Config {
    let mut cfg = config(&[B1, B2]);
    cfg.services[0].access = crate::config::AccessConfig {
        allow: ranges(list),
        reset: false,
        cut_established: false,
    };
    cfg
}

/// Allowlist ranges are written before the service entry's bits that make the program
/// read them, and removed after; a reload that only changes the list rewrites the bits
/// alone (the table stays).
#[test]
fn allowlist_ranges_are_written_before_the_bits_and_removed_after() {
    use lb_common::maps::{ACCESS_LIST, ACCESS_RESET};
    let model = Model::new(
        with_allow(&["198.18.0.0/24"]),
        Box::new(|_| unreachable!("--snat-ip is set")),
    )
    .unwrap();
    let mut bed = Bed {
        model,
        maps: Maps::default(),
        now: Instant::now(),
    };
    let plan = bed.plan();
    let added = position(
        &plan,
        "allow add",
        |s| matches!(s, Step::AllowAdd { ranges: r, .. } if *r == ranges(&["198.18.0.0/24"])),
    );
    let installed = position(
        &plan,
        "table",
        |s| matches!(s, Step::InstallTable { forwarding, .. } if forwarding.access == ACCESS_LIST),
    );
    assert!(added < installed, "{plan:#?}");

    // Widened and set to reset: the new range first, then the bits; the table stays.
    let mut wider = with_allow(&["198.18.0.0/24", "198.18.5.0/24"]);
    wider.services[0].access.reset = true;
    let changes = bed.model.reload(wider, "lb.toml", bed.now).unwrap();
    assert_eq!(
        changes,
        ["service web: allowlist 198.18.0.0/24, 198.18.5.0/24"]
    );
    let plan = bed.plan();
    assert_eq!(
        plan.steps,
        [
            Step::AllowAdd {
                service: 0,
                ranges: ranges(&["198.18.5.0/24"])
            },
            Step::SetAccess {
                vip: addr("198.18.0.10:80"),
                access: ACCESS_LIST | ACCESS_RESET
            },
        ]
    );

    // Narrowed: the bits stay, the range goes. Then off: the bits first, the ranges after.
    bed.model
        .reload(with_allow(&["198.18.5.0/24"]), "lb.toml", bed.now)
        .unwrap();
    let plan = bed.plan();
    assert_eq!(
        plan.steps,
        [
            Step::SetAccess {
                vip: addr("198.18.0.10:80"),
                access: ACCESS_LIST
            },
            Step::AllowRemove {
                service: 0,
                ranges: ranges(&["198.18.0.0/24"])
            },
        ]
    );
    let changes = bed
        .model
        .reload(config(&[B1, B2]), "lb.toml", bed.now)
        .unwrap();
    assert_eq!(
        changes,
        ["service web: allowlist off (everyone may connect)"]
    );
    let plan = bed.plan();
    assert_eq!(
        plan.steps,
        [
            Step::SetAccess {
                vip: addr("198.18.0.10:80"),
                access: 0
            },
            Step::AllowRemove {
                service: 0,
                ranges: ranges(&["198.18.5.0/24"])
            },
        ]
    );
    assert!(bed.model.allow_entries().is_empty());
}
