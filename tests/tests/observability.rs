//! What the daemon shows: `/metrics` (valid for `promtool check metrics`, values that
//! match the traffic, SNAT ports by state, scraped by a real Prometheus server), `/health/instance` and
//! `/health/endtoend`, and `lb stats` with backend states and active flows.
//!
//! Root, the `lb` binary, the eBPF object, promtool and prometheus are required (a
//! missing one fails); the tests run one at a time (the lock in [`Bed`]).

use std::collections::BTreeMap;
use std::time::Duration;

use lb_tests::Daemon;
use lb_tests::admin;
use lb_tests::backend_ctl;
use lb_tests::bed::{Bed, FAST_HEALTH, down_within};
use lb_tests::must;
use lb_tests::prometheus::{self, PromServer, Sample};
use lb_tests::topology::{BACKEND_NAMES, Kind, LB_IF_B};

/// The service name lb gives a `--vip` service.
const SERVICE: &str = "default";
/// Connections the metrics tests make.
const CONNS: usize = 90;

fn start(bed: &Bed) -> Daemon {
    let mut extra = vec!["--health", "tcp"];
    extra.extend_from_slice(FAST_HEALTH);
    let all: Vec<(&str, u32)> = BACKEND_NAMES.iter().map(|n| (*n, 1)).collect();
    bed.start(&bed.args(&all, &extra))
}

/// `GET /metrics` from inside the LB namespace: checked by promtool, then parsed.
fn metrics(bed: &Bed, d: &Daemon) -> (String, Vec<Sample>) {
    let (code, body) = must(admin::get(&bed.topo.lb, "/metrics"));
    assert_eq!(code, 200, "/metrics: {body}\ndaemon log:\n{}", d.log());
    if let Err(e) = prometheus::promtool_check(&body) {
        panic!("{e:#}\nthe exposition:\n{body}");
    }
    let samples =
        prometheus::parse(&body).unwrap_or_else(|e| panic!("parsing /metrics: {e:#}\n{body}"));
    (body, samples)
}

fn value(samples: &[Sample], body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    prometheus::value(samples, name, labels).unwrap_or_else(|e| panic!("{e:#}\n/metrics:\n{body}"))
}

/// lb's default SNAT port range.
const SNAT_PORTS: (u16, u16) = (10000, 32767);

/// TCP sockets in TIME_WAIT in a backend's namespace whose peer port is a SNAT port,
/// from SNAT address `from` if given: the connections through lb that the backend's
/// kernel still holds.
fn snat_time_waits(ns: &lb_tests::Netns, from: Option<&str>) -> usize {
    let out = must(ns.exec("ss", &["-Htan", "state", "time-wait"]));
    out.lines()
        .filter_map(|l| {
            let (addr, port) = l.split_whitespace().last()?.rsplit_once(':')?;
            // A dual-stack listener shows IPv4 peers as [::ffff:A.B.C.D].
            let addr = addr.trim_matches(['[', ']']).trim_start_matches("::ffff:");
            Some((addr.to_string(), port.parse::<u16>().ok()?))
        })
        .filter(|(addr, p)| {
            (SNAT_PORTS.0..=SNAT_PORTS.1).contains(p) && from.is_none_or(|f| f == addr)
        })
        .count()
}

/// After real traffic `/metrics` passes promtool, its counters equal what the client
/// did, and the health metrics follow a backend going down.
#[test]
fn metrics_pass_promtool_and_match_traffic() {
    let bed = Bed::new(Kind::TwoArmed);
    let d = start(&bed);
    let spread = bed.topo.spread(false, CONNS).unwrap();
    assert_eq!(spread.failures, 0, "{spread}");
    // Health checks run a couple of times.
    std::thread::sleep(Duration::from_secs(2));

    let (body, s) = metrics(&bed, &d);
    assert_eq!(value(&s, &body, "lb_up", &[]), 1.0);
    let svc = [("service", SERVICE)];
    assert_eq!(
        prometheus::sum(&s, "lb_backend_new_flows_total", &svc),
        CONNS as f64,
        "lb_backend_new_flows_total should add up to the {CONNS} connections made:\n{body}"
    );
    assert_eq!(
        value(&s, &body, "lb_service_new_flows_total", &svc),
        CONNS as f64
    );
    for name in BACKEND_NAMES {
        let addr = bed.addr(name);
        let b = [("service", SERVICE), ("backend", addr.as_str())];
        assert_eq!(
            value(&s, &body, "lb_backend_new_flows_total", &b),
            spread.count(name) as f64,
            "new flows of {name} ({addr}); client saw {spread}"
        );
        assert_eq!(value(&s, &body, "lb_backend_up", &b), 1.0, "{name}");
        // The backend's sample of `metric` with one more label.
        let of_backend =
            |metric, label| value(&s, &body, metric, &[("backend", addr.as_str()), label]);
        assert_eq!(
            of_backend("lb_backend_state", ("state", "up")),
            1.0,
            "{name}"
        );
        assert!(
            of_backend("lb_health_checks_total", ("result", "pass")) >= 1.0,
            "{name} passed no health check:\n{body}"
        );
        assert!(
            of_backend("lb_health_check_duration_seconds_bucket", ("le", "+Inf")) >= 1.0,
            "{name}: the check latency histogram is empty:\n{body}"
        );
    }
    // SNAT ports: none in use once the connections ended; in TIME_WAIT exactly the ports
    // whose connection the backend's own kernel holds in TIME_WAIT (it closed first or
    // at once with curl; where curl closed first the backend kept nothing). A close whose
    // last ACK the LB did not see holds its port until the closed timeout (10 s).
    let in_use = |s: &[Sample], body: &str| -> f64 {
        BACKEND_NAMES
            .iter()
            .map(|n| {
                let addr = bed.addr(n);
                value(
                    s,
                    body,
                    "lb_snat_ports",
                    &[("backend", addr.as_str()), ("state", "in_use")],
                )
            })
            .sum()
    };
    let (mut body, mut s) = (body, s);
    let _ = lb_tests::netns::wait_until(Duration::from_secs(12), || {
        (body, s) = metrics(&bed, &d);
        Ok(in_use(&s, &body) == 0.0)
    });
    for name in BACKEND_NAMES {
        let addr = bed.addr(name);
        let ports = |state| {
            let labels = [("backend", addr.as_str()), ("state", state)];
            value(&s, &body, "lb_snat_ports", &labels)
        };
        let (in_use, tw, free) = (ports("in_use"), ports("time_wait"), ports("free"));
        assert_eq!(
            in_use, 0.0,
            "{name}: SNAT ports in use after the connections ended"
        );
        assert_eq!(
            in_use + tw + free,
            f64::from(SNAT_PORTS.1 - SNAT_PORTS.0 + 1),
            "{name}: the default SNAT range, all told:\n{body}"
        );
        let held = snat_time_waits(&bed.backend(name).ns, None);
        assert_eq!(
            tw,
            held as f64,
            "{name}: lb_snat_ports in TIME_WAIT against the backend's own TIME_WAIT sockets \
             from SNAT ports ({} connections):\n{body}",
            spread.count(name)
        );
    }
    // Every connection made its flow entry (new flows counted CONNS above), and they are
    // still there (idle ones are evicted only when the table fills): at least CONNS
    // entries, at most the table's capacity.
    let capacity = value(&s, &body, "lb_flow_table_capacity", &[]);
    let entries = value(&s, &body, "lb_flow_table_entries", &[]);
    assert!(
        (CONNS as f64..=capacity).contains(&entries),
        "lb_flow_table_entries {entries}: want {CONNS}..={capacity}:\n{body}"
    );
    assert_eq!(
        value(
            &s,
            &body,
            "lb_dropped_packets_total",
            &[("reason", "no_backend")]
        ),
        0.0
    );

    // A backend down shows.
    let b2 = bed.backend("b2");
    let addr2 = bed.addr("b2");
    backend_ctl::stop_server(b2).unwrap();
    must(admin::wait_state(
        &d,
        SERVICE,
        &addr2,
        "down",
        down_within() + Duration::from_secs(2),
    ));
    let (body, s) = metrics(&bed, &d);
    for name in BACKEND_NAMES {
        let addr = bed.addr(name);
        let b = [("service", SERVICE), ("backend", addr.as_str())];
        let want = if name == "b2" { 0.0 } else { 1.0 };
        assert_eq!(
            value(&s, &body, "lb_backend_up", &b),
            want,
            "lb_backend_up of {name} with b2 down:\n{body}"
        );
    }
    let b = [("backend", addr2.as_str())];
    let state_of = |state: &str| {
        let mut labels = b.to_vec();
        labels.push(("state", state));
        value(&s, &body, "lb_backend_state", &labels)
    };
    assert_eq!(state_of("down"), 1.0, "lb_backend_state of b2:\n{body}");
    assert_eq!(state_of("up"), 0.0, "lb_backend_state of b2:\n{body}");
    assert!(
        value(
            &s,
            &body,
            "lb_health_checks_total",
            &[("backend", addr2.as_str()), ("result", "fail")]
        ) >= 2.0,
        "b2 went down after two failed checks:\n{body}"
    );
    bed.stop(d);
}

/// With two SNAT addresses (both on the LB's backend-side interface), connections go out
/// from both (the backends' logs show requests from each), all succeed, and each
/// address's ports in TIME_WAIT are exactly the backends' TIME_WAIT sockets from that
/// address.
#[test]
fn connections_spread_over_two_snat_addresses() {
    const SECOND: &str = "198.18.1.5";
    let bed = Bed::new(Kind::TwoArmed);
    must(bed.topo.lb.exec(
        "ip",
        &["addr", "add", &format!("{SECOND}/24"), "dev", LB_IF_B],
    ));
    let all: Vec<(&str, u32)> = BACKEND_NAMES.iter().map(|n| (*n, 1)).collect();
    let d = bed.start(&bed.args(&all, &["--snat-ip", "198.18.1.1", "--snat-ip", SECOND]));
    let spread = bed.topo.spread(false, CONNS).unwrap();
    assert_eq!(spread.failures, 0, "{spread}\ndaemon log:\n{}", d.log());
    // curl returns before its kernel has exchanged the last FINs and ACKs: wait until
    // no port is in use any more (5 s at most), then compare.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (body, s) = loop {
        let (body, s) = metrics(&bed, &d);
        let in_use = prometheus::sum(&s, "lb_snat_ports", &[("state", "in_use")]);
        if in_use == 0.0 || std::time::Instant::now() >= deadline {
            break (body, s);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut held = BTreeMap::new();
    for name in BACKEND_NAMES {
        let addr = bed.addr(name);
        for snat in ["198.18.1.1", SECOND] {
            let ports = |state| {
                let labels = [
                    ("backend", addr.as_str()),
                    ("snat_addr", snat),
                    ("state", state),
                ];
                value(&s, &body, "lb_snat_ports", &labels)
            };
            let tw = ports("time_wait");
            assert_eq!(ports("in_use"), 0.0, "{name} from {snat}:\n{body}");
            assert_eq!(
                tw,
                snat_time_waits(&bed.backend(name).ns, Some(snat)) as f64,
                "{name}: ports of {snat} in TIME_WAIT against the backend's sockets:\n{body}"
            );
            *held.entry(snat).or_insert(0.0) += tw;
        }
    }
    // Connections went out from both addresses: the backends' servers logged requests
    // from each. (Whether their ports are still held depends on which side closed
    // first, a race between curl and the server: {held:?} is only reported.)
    for snat in ["198.18.1.1", SECOND] {
        let requests: usize = (bed.topo.backends.iter())
            .map(|b| {
                let log = std::fs::read_to_string(b.server_log()).unwrap_or_default();
                (log.lines())
                    .filter(|l| l.contains("GET /name") && l.contains(&format!("{snat} ")))
                    .count()
            })
            .sum();
        assert!(
            requests > 0,
            "no request from SNAT address {snat}; TIME_WAIT ports {held:?}\n{body}"
        );
    }
    bed.stop(d);
}

/// A real Prometheus server in the LB namespace scrapes the daemon every second; its
/// query API returns the daemon's values.
#[test]
fn prometheus_server_scrapes_the_daemon() {
    let bed = Bed::new(Kind::TwoArmed);
    let d = start(&bed);
    let spread = bed.topo.spread(false, 30).unwrap();
    assert_eq!(spread.failures, 0, "{spread}");
    let ns = &bed.topo.lb;
    let mut prom = must(PromServer::start(
        ns,
        bed.topo.dir.path(),
        9090,
        &[admin::ADMIN],
    ));
    let wait = Duration::from_secs(30);
    must(prom.wait_query(ns, "up{job=\"lb\"}", wait, |r| {
        r.len() == 1 && r[0].1 == 1.0
    }));
    must(prom.wait_query(ns, "lb_up", wait, |r| r.len() == 1 && r[0].1 == 1.0));
    let flows = must(prom.wait_query(
        ns,
        "sum(lb_backend_new_flows_total{service=\"default\"})",
        wait,
        |r| r.len() == 1 && r[0].1 == 30.0,
    ));
    eprintln!("prometheus: sum of new flows = {flows:?}");
    let up = must(prom.wait_query(ns, "lb_backend_up", wait, |r| {
        r.len() == BACKEND_NAMES.len() && r.iter().all(|(_, v)| *v == 1.0)
    }));
    let mut seen: Vec<String> = up
        .iter()
        .map(|(l, _)| l.get("backend").cloned().unwrap_or_default())
        .collect();
    seen.sort();
    let mut want: Vec<String> = BACKEND_NAMES.iter().map(|n| bed.addr(n)).collect();
    want.sort();
    assert_eq!(
        seen, want,
        "backends in lb_backend_up as Prometheus stored it"
    );
    must(prom.stop());
    bed.stop(d);
}

fn json(body: &str, what: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{what} is not JSON ({e}): {body}"))
}

/// `/health/instance` is 200 while the daemon runs and gone after it stops;
/// `/health/endtoend` is 200 with every backend up.
#[test]
fn health_endpoints() {
    let bed = Bed::new(Kind::TwoArmed);
    let d = start(&bed);
    let (code, body) = must(admin::get(&bed.topo.lb, "/health/instance"));
    assert_eq!(code, 200, "/health/instance: {body}");
    assert_eq!(json(&body, "/health/instance")["status"], "ok", "{body}");
    let (code, body) = must(admin::get(&bed.topo.lb, "/health/endtoend"));
    assert_eq!(code, 200, "/health/endtoend with all up: {body}");
    assert_eq!(json(&body, "/health/endtoend")["status"], "ok", "{body}");
    let (code, body) = must(admin::get(&bed.topo.lb, "/no/such/path"));
    assert_eq!(code, 404, "an unknown path: {body}");
    bed.stop(d);
    assert!(
        admin::get(&bed.topo.lb, "/health/instance").is_err(),
        "the admin API still answers after the daemon stopped"
    );
}

/// The `lb stats --once` table lists backend `addr` with the state `state`.
fn table_shows(table: &str, addr: &str, state: &str) {
    let line = table
        .lines()
        .find(|l| l.contains(addr))
        .unwrap_or_else(|| panic!("`lb stats --once` does not list {addr}:\n{table}"));
    assert!(
        line.split_whitespace().any(|w| w == state),
        "`lb stats --once` shows no state `{state}` for {addr}: {line:?}\n{table}"
    );
}

/// `lb stats --once` prints every backend with its state and the active flows; `lb stats
/// --json` and `lb ctl list --json` count the long-lived flow as active on its backend.
#[test]
fn stats_show_state_and_active_flows() {
    let bed = Bed::new(Kind::TwoArmed);
    bed.topo.create_blob(4 << 20).unwrap();
    let d = start(&bed);
    let (mut slow, x, xa) = bed.slow_flow();

    let table = must(d.run_cli(&["stats", "--once"]));
    assert!(
        table.to_lowercase().contains("active"),
        "`lb stats --once` has no active flows column:\n{table}"
    );
    for name in BACKEND_NAMES {
        table_shows(&table, &bed.addr(name), "up");
    }

    let stats = must(d.stats_json());
    let mut active: BTreeMap<String, u64> = BTreeMap::new();
    let mut states: BTreeMap<String, String> = BTreeMap::new();
    for svc in stats["services"].as_array().expect("services") {
        for b in svc["backends"].as_array().expect("backends") {
            let addr = b["addr"].as_str().expect("addr").to_owned();
            let n = b["active_flows"]
                .as_u64()
                .or_else(|| b["counters"]["active_flows"].as_u64())
                .unwrap_or_else(|| {
                    panic!("no active_flows for {addr} in lb stats --json: {stats:#}")
                });
            active.insert(addr.clone(), n);
            states.insert(addr, b["state"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert!(
        active.get(&xa).is_some_and(|n| *n >= 1),
        "lb stats --json: the download's backend {xa} should have an active flow: {active:?}"
    );
    for name in BACKEND_NAMES {
        assert_eq!(
            states.get(&bed.addr(name)).map(String::as_str),
            Some("up"),
            "lb stats --json state of {name}: {states:?}"
        );
    }
    let listed = must(admin::service(&d, SERVICE));
    assert!(
        listed
            .backend(&xa)
            .and_then(|b| b.active_flows)
            .is_some_and(|n| n >= 1),
        "lb ctl list --json: {xa} should have an active flow: {listed:#?}"
    );
    let plain = must(admin::ctl(&d, &["list"])).stdout;
    for name in BACKEND_NAMES {
        assert!(
            plain.contains(&bed.addr(name)),
            "`lb ctl list` does not show {name}:\n{plain}"
        );
    }
    assert!(
        slow.running(),
        "the download ended early: {}",
        slow.output()
    );

    // A backend down (not the one carrying the flow) shows as down in both.
    let other = BACKEND_NAMES
        .iter()
        .copied()
        .find(|n| *n != x)
        .expect("three backends");
    let oa = bed.addr(other);
    backend_ctl::stop_server(bed.backend(other)).unwrap();
    must(admin::wait_state(
        &d,
        SERVICE,
        &oa,
        "down",
        down_within() + Duration::from_secs(2),
    ));
    table_shows(&must(d.run_cli(&["stats", "--once"])), &oa, "down");
    let stats = must(d.stats_json());
    let state = stats["services"][0]["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["addr"] == oa.as_str()))
        .map(|b| b["state"].clone());
    assert_eq!(
        state,
        Some(serde_json::Value::from("down")),
        "lb stats --json state of {oa}: {stats:#}"
    );
    bed.stop(d);
}
