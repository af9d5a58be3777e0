//! Changing a running LB: adding, re-weighting, draining and removing backends through
//! `lb ctl` while a long-lived flow and a stream of short connections run; drain
//! timeouts; reloading the config file (SIGHUP, `lb ctl reload`), good and bad.
//!
//! Root, the `lb` binary and the eBPF object are required (a missing one fails); the
//! tests run one at a time (the lock in [`Bed`]).

use std::time::{Duration, Instant};

use lb_tests::admin::{self, ServiceInfo};
use lb_tests::bed::{Bed, FAST_HEALTH, up_within};
use lb_tests::load::{self, ShortConns, ShortOpts, SlowDownload};
use lb_tests::must;
use lb_tests::topology::{Kind, LB_IF_A, LB_IF_B};
use lb_tests::{Daemon, client};

/// The service name lb gives a `--vip` service.
const SERVICE: &str = "default";

/// The whole sequence of live changes under load: no established flow lost, no new
/// connection failed.
#[test]
fn add_weight_drain_remove_under_load() {
    let bed = Bed::new(Kind::TwoArmed);
    // A 10 MiB download at 256 KiB/s lasts 40 s: longer than all the changes below.
    let want = bed.topo.create_blob(10 << 20).unwrap();
    let mut extra = vec!["--health", "tcp", "--drain-timeout", "5s"];
    extra.extend_from_slice(FAST_HEALTH);
    let d = bed.start(&bed.args(&[("b1", 1), ("b2", 1)], &extra));
    let addr = |n: &str| bed.addr(n);

    let mut slow =
        SlowDownload::start(&bed.topo, false, "blob", 256 << 10, Duration::from_secs(90)).unwrap();
    let keep = must(slow.backend(&bed.topo, Duration::from_secs(5)));
    // The long flow's backend stays; the other one is drained and removed.
    let gone = if keep == "b1" { "b2" } else { "b1" };
    eprintln!("long flow on {keep}; {gone} will be drained and removed");

    let mut short = ShortConns::start(
        &bed.topo,
        false,
        ShortOpts {
            max_conns: 5_000,
            max_time: Duration::from_secs(120),
            pause: Duration::from_millis(20),
            ..ShortOpts::default()
        },
    )
    .unwrap();
    must(short.wait_for(20, Duration::from_secs(10)));

    // Add b3: not used before its checks pass, used after.
    let added_at = load::now();
    let add = Instant::now();
    must(admin::ctl(&d, &["add", SERVICE, &addr("b3")]));
    let up = must(admin::wait_state(
        &d,
        SERVICE,
        &addr("b3"),
        "up",
        up_within() + Duration::from_secs(2),
    ));
    let up_at = load::now();
    eprintln!("b3 added, up after {:?}", up - add);
    std::thread::sleep(Duration::from_secs(3));
    let conns = must(short.snapshot());
    let before_up = conns.between(added_at, up_at - 0.5);
    assert_eq!(
        before_up.count("b3"),
        0,
        "b3 got connections before it passed its checks: {before_up}"
    );
    let after_up = conns.since(up_at);
    assert!(
        after_up.count("b3") > 0,
        "b3 is up but got no connection: {after_up}"
    );

    // Re-weight b3 to 2: shares 1:1:2.
    must(admin::ctl(&d, &["weight", SERVICE, &addr("b3"), "2"]));
    let s = must(admin::service(&d, SERVICE));
    assert_eq!(
        s.backend(&addr("b3")).map(|b| b.weight),
        Some(2),
        "weight of b3 after `lb ctl weight`: {s:#?}"
    );
    let spread = bed.topo.spread(false, 800).unwrap();
    assert_eq!(spread.failures, 0, "after re-weighting: {spread}");
    must(spread.check_weights(&[(keep.as_str(), 1), (gone, 1), ("b3", 2)], 8.0));

    // Drain the other one: nothing new reaches it.
    must(admin::ctl(&d, &["drain", SERVICE, &addr(gone)]));
    let drained_at = load::now();
    let state = must(admin::state(&d, SERVICE, &addr(gone)));
    assert!(
        matches!(state.as_deref(), Some("draining" | "drained")),
        "{gone} after `lb ctl drain`: {state:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let spread = bed.topo.spread(false, 100).unwrap();
    assert_eq!(spread.failures, 0, "while {gone} drains: {spread}");
    assert_eq!(spread.count(gone), 0, "{gone} is draining: {spread}");

    // Remove it: gone within the drain timeout (it has no flow left by now).
    must(admin::ctl(&d, &["remove", SERVICE, &addr(gone)]));
    must(admin::wait_gone(
        &d,
        SERVICE,
        &addr(gone),
        Duration::from_secs(5) + Duration::from_secs(3),
    ));
    let removed_at = load::now();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        slow.running(),
        "the long-lived flow ended before the changes were done: the test proves nothing; curl said: {}",
        slow.output()
    );
    let conns = short.stop().unwrap();
    eprintln!("short connections: {conns}");
    assert!(
        conns.failures().is_empty(),
        "short connections failed during the changes: {conns}"
    );
    assert!(conns.len() >= 200, "too few short connections: {conns}");
    let after_drain = conns.since(drained_at);
    assert_eq!(
        after_drain.count(gone),
        0,
        "{gone} got new connections after its drain started: {after_drain}"
    );
    let after_remove = conns.since(removed_at);
    assert!(
        !after_remove.is_empty() && after_remove.count(gone) == 0,
        "after removing {gone}: {after_remove}"
    );

    // The long flow finishes intact.
    let status = slow.wait(Duration::from_secs(80)).unwrap();
    assert!(
        status.success(),
        "the long-lived flow on {keep} failed ({status}): {}\ndaemon log:\n{}",
        slow.output(),
        d.log()
    );
    assert_eq!(
        slow.sha256().unwrap(),
        want,
        "the long-lived flow's download is corrupt"
    );
    d.expect_log(&["drain started", &addr(gone)]);
    bed.stop(d);
}

/// Waits for a slow download to end, which a drain timeout does by cutting it: at most
/// `bound` after `since`. Returns when it ended.
fn expect_cut(slow: &mut SlowDownload, since: Instant, bound: Duration, d: &Daemon) -> Duration {
    let status = slow
        .wait(bound.saturating_sub(since.elapsed()) + Duration::from_millis(100))
        .unwrap_or_else(|e| {
            panic!(
                "the flow was not cut by the drain timeout within {bound:?}: {e:#}\ndaemon log:\n{}",
                d.log()
            )
        });
    let took = since.elapsed();
    assert!(
        !status.success(),
        "the flow completed instead of being cut (is the blob too small?)"
    );
    took
}

/// `--drain-timeout 3s`: a draining backend's flow keeps working until the timeout, then
/// it is cut and the backend is `drained` until enabled; `remove` drains the same way
/// and then the backend is gone.
#[test]
fn drain_timeout_cuts_flows_then_drained_or_removed() {
    let bed = Bed::new(Kind::TwoArmed);
    // 8 MiB at 256 KiB/s: 32 s, far beyond the 3 s drain timeout.
    bed.topo.create_blob(8 << 20).unwrap();
    let mut extra = vec!["--health", "tcp", "--drain-timeout", "3s"];
    extra.extend_from_slice(FAST_HEALTH);
    let d = bed.start(&bed.args(&[("b1", 1), ("b2", 1), ("b3", 1)], &extra));
    let timeout = Duration::from_secs(3);
    let cut_within = timeout + Duration::from_secs(3);

    // Drain.
    let (mut slow, x, xa) = bed.slow_flow();
    let drain = Instant::now();
    must(admin::ctl(&d, &["drain", SERVICE, &xa]));
    let bytes_at_drain = slow.bytes();
    assert_eq!(
        must(admin::state(&d, SERVICE, &xa)).as_deref(),
        Some("draining"),
        "{x} carries a flow: draining until the timeout"
    );
    let s = bed.topo.spread(false, 30).unwrap();
    assert_eq!(s.failures, 0, "while {x} drains: {s}");
    assert_eq!(s.count(&x), 0, "{x} is draining: {s}");
    std::thread::sleep(
        (drain + Duration::from_millis(2500)).saturating_duration_since(Instant::now()),
    );
    assert!(
        slow.running(),
        "the flow on draining {x} ended before the drain timeout: {}",
        slow.output()
    );
    assert!(
        slow.bytes() > bytes_at_drain + 256 * 1024,
        "the flow on draining {x} stalled: {} bytes at drain, {} now",
        bytes_at_drain,
        slow.bytes()
    );
    let took = expect_cut(&mut slow, drain, cut_within, &d);
    assert!(
        took >= Duration::from_millis(2500),
        "the flow was cut {took:?} after the drain started, before the 3 s timeout"
    );
    must(admin::wait_state(
        &d,
        SERVICE,
        &xa,
        "drained",
        Duration::from_secs(3),
    ));
    d.expect_log(&["drain started", &xa]);
    d.expect_log(&["drain finished", &xa]);
    let s = bed.topo.spread(false, 30).unwrap();
    assert_eq!(s.failures, 0, "with {x} drained: {s}");
    assert_eq!(s.count(&x), 0, "{x} is drained: {s}");

    // Enable: back in service.
    must(admin::ctl(&d, &["enable", SERVICE, &xa]));
    must(admin::wait_state(&d, SERVICE, &xa, "up", up_within()));
    let s = bed.topo.spread(false, 60).unwrap();
    assert_eq!(s.failures, 0, "after enabling {x}: {s}");
    assert!(s.count(&x) > 0, "{x} is enabled but got nothing: {s}");

    // Remove with a flow: draining, cut at the timeout, then gone.
    let (mut slow, y, ya) = bed.slow_flow();
    let remove = Instant::now();
    must(admin::ctl(&d, &["remove", SERVICE, &ya]));
    assert_eq!(
        must(admin::state(&d, SERVICE, &ya)).as_deref(),
        Some("draining"),
        "a removed backend with a flow drains first"
    );
    std::thread::sleep((remove + Duration::from_secs(2)).saturating_duration_since(Instant::now()));
    assert!(
        slow.running(),
        "the flow on removed {y} ended before the drain timeout: {}",
        slow.output()
    );
    let took = expect_cut(&mut slow, remove, cut_within, &d);
    assert!(
        took >= Duration::from_millis(2500),
        "the flow was cut {took:?} after remove, before the 3 s drain timeout"
    );
    must(admin::wait_gone(&d, SERVICE, &ya, Duration::from_secs(3)));
    let s = bed.topo.spread(false, 30).unwrap();
    assert_eq!(s.failures, 0, "after removing {y}: {s}");
    assert_eq!(s.count(&y), 0, "{y} was removed: {s}");
    assert!(
        d.log_lines_with(&["drain finished"]).len() >= 2,
        "two drains should have finished; log:\n{}",
        d.log()
    );
    bed.stop(d);
}

/// The reload test's config file: service `web` over `backends` (TOML strings), fast
/// checks, a 3 s drain timeout, on `ifaces`.
fn config(bed: &Bed, ifaces: &[&str], backends: &[String]) -> String {
    let ifaces = ifaces
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let backends = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "iface = [{ifaces}]\nxdp_mode = \"native\"\ndrain_timeout = \"3s\"\n\n\
         [[service]]\nname = \"web\"\nvip = \"{vip}\"\nbackends = [{backends}]\n\n\
         [service.health]\ncheck = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n\
         healthy_threshold = 2\nunhealthy_threshold = 2\n",
        vip = bed.topo.vip_arg(false),
    )
}

/// Backends of `web` as (addr, weight, state), sorted.
fn backends_of(s: &ServiceInfo) -> Vec<(String, u64, String)> {
    let mut v: Vec<_> = s
        .backends
        .iter()
        .map(|b| (b.addr.clone(), b.weight, b.state.clone()))
        .collect();
    v.sort();
    v
}

/// SIGHUP applies an edited config (a backend added, one re-weighted, one removed);
/// `lb ctl reload` of a bad file (syntax, a bad backend address, a changed iface)
/// exits 1 naming the problem, and the daemon keeps its state and its traffic.
#[test]
fn reload_good_and_bad_config() {
    let bed = Bed::new(Kind::TwoArmed);
    let ifaces = [LB_IF_A, LB_IF_B];
    let path = bed.topo.path("lb.toml");
    let a = |n: &str| bed.addr(n);
    std::fs::write(&path, config(&bed, &ifaces, &[a("b1"), a("b2")])).unwrap();
    let mut d = bed.start(&["--config".to_owned(), path.display().to_string()]);
    let s = must(admin::service(&d, "web"));
    assert_eq!(
        backends_of(&s),
        vec![(a("b1"), 1, "up".to_owned()), (a("b2"), 1, "up".to_owned())],
        "at start"
    );
    let spread = bed.topo.spread(false, 30).unwrap();
    assert_eq!(spread.failures, 0, "at start: {spread}");

    // Good edit + SIGHUP: b1 weight 2, b3 added, b2 removed.
    std::fs::write(
        &path,
        config(&bed, &ifaces, &[format!("{}@2", a("b1")), a("b3")]),
    )
    .unwrap();
    d.signal(libc::SIGHUP).unwrap();
    let want = vec![(a("b1"), 2, "up".to_owned()), (a("b3"), 1, "up".to_owned())];
    must(admin::wait_for(
        &d,
        "web",
        "reloaded",
        Duration::from_secs(3) + up_within() + Duration::from_secs(2),
        |s| backends_of(s) == want,
    ));
    d.expect_log(&["config applied"]);
    let spread = bed.topo.spread(false, 800).unwrap();
    assert_eq!(spread.failures, 0, "after the reload: {spread}");
    must(spread.check_weights(&[("b1", 2), ("b3", 1)], 8.0));

    // Bad files: `lb ctl reload` fails naming the problem; nothing changes.
    let good = config(&bed, &ifaces, &[format!("{}@2", a("b1")), a("b3")]);
    let bad_syntax = good.replace(
        &format!("backends = [\"{}@2\"", a("b1")),
        &format!("backends = [\"{}@2\" \"", a("b1")),
    );
    assert_ne!(bad_syntax, good);
    let bad_backend = config(
        &bed,
        &ifaces,
        &[format!("{}@2", a("b1")), "198.18.1.13:http".to_owned()],
    );
    let bad_iface = config(&bed, &[LB_IF_A], &[format!("{}@2", a("b1")), a("b3")]);
    let cases: [(&str, &str, &[&str]); 3] = [
        ("a syntax error", &bad_syntax, &["lb.toml", "line"]),
        ("a bad backend address", &bad_backend, &["198.18.1.13:http"]),
        ("a changed iface", &bad_iface, &["iface"]),
    ];
    for (what, text, words) in cases {
        std::fs::write(&path, text).unwrap();
        let out = must(admin::ctl_any(&d, &["reload"]));
        assert_eq!(out.code, Some(1), "reload of a file with {what}: {out}");
        assert!(
            out.stderr.contains("lb ctl: error:") && words.iter().any(|w| out.stderr.contains(w)),
            "reload of a file with {what}: the error should name the problem (one of {words:?}): {out}"
        );
        assert!(d.is_running(), "the daemon died on a file with {what}");
        let s = must(admin::service(&d, "web"));
        assert_eq!(
            backends_of(&s),
            want,
            "the running state changed after a rejected file with {what}"
        );
        let spread = bed.topo.spread(false, 30).unwrap();
        assert_eq!(
            spread.failures, 0,
            "after a rejected file with {what}: {spread}"
        );
        assert!(
            spread.counts.keys().all(|k| k == "b1" || k == "b3"),
            "after a rejected file with {what}, only b1 and b3 serve: {spread}"
        );
    }
    d.expect_log(&["config rejected"]);
    let body = client::get(&bed.topo.client, &bed.topo.vip_url(false, "name")).unwrap();
    assert!(body == "b1" || body == "b3", "{body}");
    bed.stop(d);
}

/// `lb ctl` errors: what the API refuses exits 1 with `lb ctl: error: ...`, bad usage
/// exits 2, and neither changes anything.
#[test]
fn ctl_errors() {
    let bed = Bed::new(Kind::TwoArmed);
    let mut extra = vec!["--health", "tcp"];
    extra.extend_from_slice(FAST_HEALTH);
    let d = bed.start(&bed.args(&[("b1", 1), ("b2", 1)], &extra));
    let before = must(admin::service(&d, SERVICE));
    let b1 = bed.addr("b1");
    let b3 = bed.addr("b3");
    let refused: [(&[&str], &str); 5] = [
        (&["drain", "nosuch", &b1], "nosuch"),
        (&["drain", SERVICE, &b3], &b3),
        (&["add", SERVICE, &b1], &b1),
        (&["add", SERVICE, "198.18.1.14:http"], "198.18.1.14:http"),
        (&["reload"], "config"),
    ];
    for (args, word) in refused {
        let out = must(admin::ctl_any(&d, args));
        assert_eq!(out.code, Some(1), "{out}");
        assert!(
            out.stderr.contains("lb ctl: error:") && out.stderr.contains(word),
            "the error should say `lb ctl: error:` and name {word:?}: {out}"
        );
    }
    let usage: [&[&str]; 3] = [
        &["weight", SERVICE, &b1, "heavy"],
        &["add", SERVICE],
        &["no-such-command"],
    ];
    for args in usage {
        let out = must(admin::ctl_any(&d, args));
        assert_eq!(out.code, Some(2), "bad usage: {out}");
    }
    let after = must(admin::service(&d, SERVICE));
    assert_eq!(
        backends_of(&before),
        backends_of(&after),
        "refused commands changed the service"
    );
    bed.stop(d);
}
