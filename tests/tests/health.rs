//! Health checks end to end: real backends that stop answering, answer their HTTP check
//! with 503, or close their port are taken out within interval × fall + one interval,
//! traffic goes on over the others, and they come back within interval × rise + one
//! interval; with every backend down the LB resets new connections at once.
//!
//! Root, the `lb` binary and the eBPF object are required (a missing one fails); the
//! tests run one at a time (the lock in [`Bed`]).

use std::time::{Duration, Instant};

use lb_tests::admin::{self, ServiceInfo};
use lb_tests::backend_ctl;
use lb_tests::bed::{Bed, FAST_HEALTH, down_within, up_within};
use lb_tests::load::{self, ShortConns, ShortOpts};
use lb_tests::topology::{BACKEND_NAMES, Kind, VIP4};
use lb_tests::{Daemon, client};

/// The service name lb gives a `--vip` service.
const SERVICE: &str = "default";

fn all_named() -> Vec<(&'static str, u32)> {
    BACKEND_NAMES.iter().map(|n| (*n, 1)).collect()
}

/// Starts lb over all backends with the `health` check flags and waits until every
/// backend is up (5 s at most).
fn start(bed: &Bed, health: &[&str]) -> Daemon {
    let settle = Duration::from_secs(5);
    let mut extra = health.to_vec();
    extra.extend_from_slice(FAST_HEALTH);
    let d = bed.start(&bed.args(&all_named(), &extra));
    admin::wait_for(&d, SERVICE, "all up", settle, all_up(bed)).unwrap_or_else(|e| panic!("{e:#}"));
    d
}

/// A two-armed bed with lb running TCP checks, every backend up. (The daemon is
/// declared second, so it stops before the bed goes.)
fn tcp_checked() -> (Bed, Daemon) {
    let bed = Bed::new(Kind::TwoArmed);
    let d = start(&bed, &["--health", "tcp"]);
    (bed, d)
}

/// A two-armed bed with a health server answering 200 on every backend, and lb running
/// HTTP checks, every backend up.
fn http_checked() -> (Bed, Daemon) {
    let bed = Bed::new(Kind::TwoArmed);
    for name in BACKEND_NAMES {
        backend_ctl::start_health_server(&bed.topo, bed.backend(name), 200).unwrap();
    }
    let d = start(&bed, &["--health", "http:/health/instance"]);
    (bed, d)
}

/// Runs `fault` against `addr`; it must be down within the failover bound. Returns how
/// long it took.
fn goes_down(d: &Daemon, addr: &str, fault: impl FnOnce()) -> Duration {
    let since = Instant::now();
    fault();
    expect_state_within(d, addr, "down", since, down_within())
}

/// Runs `repair` on `addr`; it must be up within the recovery bound. Returns how long
/// it took.
fn comes_up(d: &Daemon, addr: &str, repair: impl FnOnce()) -> Duration {
    let since = Instant::now();
    repair();
    expect_state_within(d, addr, "up", since, up_within())
}

/// 60 connections through the VIP all succeed, and `name` gets some of them only if it
/// `is_up`.
fn spread_with(bed: &Bed, name: &str, is_up: bool) {
    let s = bed.topo.spread(false, 60).unwrap();
    assert_eq!(s.failures, 0, "{name} up: {is_up}: {s}");
    assert_eq!(s.count(name) > 0, is_up, "{name} up: {is_up}: {s}");
}

fn all_up(bed: &Bed) -> impl FnMut(&ServiceInfo) -> bool + '_ {
    move |s| {
        BACKEND_NAMES
            .iter()
            .all(|n| s.backend(&bed.addr(n)).is_some_and(|b| b.state == "up"))
    }
}

/// Waits for `state` and fails unless it came within `bound` of `since`; returns the
/// time taken. Waits a few seconds past the bound so a slow transition is reported
/// with its real duration.
fn expect_state_within(
    d: &Daemon,
    addr: &str,
    state: &str,
    since: Instant,
    bound: Duration,
) -> Duration {
    let seen = admin::wait_state(d, SERVICE, addr, state, bound + Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let took = seen - since;
    assert!(
        took <= bound,
        "{addr} became {state} after {took:?}, more than the bound {bound:?}\ndaemon log:\n{}",
        d.log()
    );
    took
}

/// Every connection succeeds and none reaches `name`.
fn expect_clean(conns: &load::Conns, avoid: &str, what: &str) {
    assert!(
        conns.len() >= 10,
        "{what}: only {} connections recorded: {conns}",
        conns.len()
    );
    assert!(
        conns.failures().is_empty(),
        "{what}: connections failed: {conns}"
    );
    assert_eq!(
        conns.count(avoid),
        0,
        "{what}: {avoid} got connections: {conns}"
    );
}

/// A backend whose port drops every packet (nft) fails its TCP check by timeout: it is
/// down within the bound, connections started after that all succeed on the others;
/// once the port answers again it is up within the bound and gets traffic again.
#[test]
fn tcp_check_timeout_takes_backend_out_and_back() {
    let (bed, d) = tcp_checked();
    let b2 = bed.backend("b2");
    let addr = bed.addr("b2");

    let mut short = ShortConns::start(&bed.topo, false, ShortOpts::default()).unwrap();
    short
        .wait_for(10, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));

    let took_down = goes_down(&d, &addr, || backend_ctl::block_port(b2, 80).unwrap());
    let down_at = load::now();
    std::thread::sleep(Duration::from_secs(3));

    let unblock_at = load::now();
    let took_up = comes_up(&d, &addr, || backend_ctl::unblock(b2).unwrap());
    let up_at = load::now();
    std::thread::sleep(Duration::from_secs(3));
    let conns = short.stop().unwrap();
    eprintln!("b2 down after {took_down:?}, up again after {took_up:?}; load: {conns}");

    expect_clean(
        &conns.between(down_at, unblock_at),
        "b2",
        "while b2 was down",
    );
    let after = conns.since(up_at);
    assert!(
        after.failures().is_empty(),
        "after b2 came back, connections failed: {after}"
    );
    assert!(
        after.count("b2") > 0,
        "b2 got no connection after it came back: {after}"
    );
    d.expect_log(&["backend down", &addr, "timeout"]);
    d.expect_log(&["backend up", &addr]);
    bed.stop(d);
}

/// An HTTP check answered 503 takes the backend down with reason `status 503`; 200
/// brings it back.
#[test]
fn http_check_503_takes_backend_out_and_back() {
    // Every backend passes its HTTP check: still all up after a few checks.
    let (bed, d) = http_checked();
    std::thread::sleep(Duration::from_secs(3));
    admin::wait_for(&d, SERVICE, "all up", Duration::from_secs(1), all_up(&bed))
        .unwrap_or_else(|e| panic!("{e:#}"));

    let b1 = bed.backend("b1");
    let addr = bed.addr("b1");
    let set = |code| backend_ctl::set_health_status(&bed.topo, b1, code).unwrap();
    let took_down = goes_down(&d, &addr, || set(503));
    d.expect_log(&["backend down", &addr, "status 503"]);
    spread_with(&bed, "b1", false);

    let took_up = comes_up(&d, &addr, || set(200));
    eprintln!("b1 down after {took_down:?}, up after {took_up:?}");
    spread_with(&bed, "b1", true);
    d.expect_log(&["backend up", &addr]);
    bed.stop(d);
}

/// The port of the backends' HTTPS health servers.
const HTTPS_PORT: u16 = 8443;
/// The name in the backends' certificate.
const CERT_HOST: &str = "backend.lb.test";

/// Every backend's HTTPS health server, answering 200, with one self-signed certificate
/// for [`CERT_HOST`] (returned: its file is the CA to verify against).
fn https_servers(bed: &Bed) -> lb_tests::tls::Cert {
    let cert = lb_tests::tls::self_signed(bed.topo.dir.path(), "backend", CERT_HOST).unwrap();
    for name in BACKEND_NAMES {
        backend_ctl::start_https_health_server(
            &bed.topo,
            bed.backend(name),
            HTTPS_PORT,
            &cert,
            200,
        )
        .unwrap();
    }
    cert
}

/// A two-armed bed whose backends also run an HTTPS health server (a self-signed
/// certificate for [`CERT_HOST`]) answering 200, and lb checking `https:/health/instance`
/// on it with `extra` flags, every backend up.
fn https_checked(extra: &[&str]) -> (Bed, Daemon, lb_tests::tls::Cert) {
    let bed = Bed::new(Kind::TwoArmed);
    let cert = https_servers(&bed);
    let port = HTTPS_PORT.to_string();
    let mut flags = vec!["--health", "https:/health/instance", "--health-port", &port];
    flags.extend_from_slice(extra);
    let d = start(&bed, &flags);
    (bed, d, cert)
}

/// An https check (certificate not verified, as an NLB's): a backend whose HTTPS
/// `/health/instance` answers 503 is taken out, and comes back with 200.
#[test]
fn https_check_503_takes_backend_out_and_back() {
    let (bed, d, _cert) = https_checked(&[]);
    let b2 = bed.backend("b2");
    let addr = bed.addr("b2");
    let set = |code| backend_ctl::set_health_status(&bed.topo, b2, code).unwrap();
    let took_down = goes_down(&d, &addr, || set(503));
    d.expect_log(&["backend down", &addr, "status 503"]);
    spread_with(&bed, "b2", false);
    let took_up = comes_up(&d, &addr, || set(200));
    eprintln!("b2 down after {took_down:?}, up after {took_up:?}");
    spread_with(&bed, "b2", true);
    bed.stop(d);
}

/// With `--health-tls-verify` the certificate must chain to the CA file and carry the
/// name checked (the Host header's): the right name passes; a name the certificate does
/// not have fails every backend with a TLS error, though the servers answer 200.
#[test]
fn https_check_verifies_the_certificate_when_asked() {
    let bed = Bed::new(Kind::TwoArmed);
    let cert = https_servers(&bed);
    let (port, ca) = (
        HTTPS_PORT.to_string(),
        cert.cert.to_string_lossy().into_owned(),
    );
    let verified = |host: &str| -> Vec<String> {
        let mut v: Vec<String> = [
            "--health",
            "https:/health/instance",
            "--health-port",
            &port,
            "--health-tls-verify",
            "--health-tls-ca",
            &ca,
            "--health-host",
            host,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(FAST_HEALTH.iter().map(|s| s.to_string()));
        v
    };
    let good = verified(CERT_HOST);
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let d = bed.start(&bed.args(&all_named(), &good));
    admin::wait_for(&d, SERVICE, "all up", Duration::from_secs(5), all_up(&bed))
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The name is wrong now: every check fails its handshake.
    let addr = bed.addr("b1");
    let wrong = verified("other.lb.test");
    let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
    bed.stop(d);
    let d = bed.start(&bed.args(&all_named(), &wrong));
    // Backends start up; the checks begin once the daemon is ready.
    let since = Instant::now();
    expect_state_within(&d, &addr, "down", since, down_within());
    d.expect_log(&["backend down", &addr, "tls:"]);
    bed.stop(d);
}

/// Slow start: a backend that comes back up takes a share of new connections that grows
/// over the window (12 s here) instead of a full third at once.
#[test]
fn a_backend_back_up_takes_a_growing_share_over_its_slow_start() {
    let bed = Bed::new(Kind::TwoArmed);
    for name in BACKEND_NAMES {
        backend_ctl::start_health_server(&bed.topo, bed.backend(name), 200).unwrap();
    }
    let d = start(
        &bed,
        &["--health", "http:/health/instance", "--slow-start", "12s"],
    );
    let b1 = bed.backend("b1");
    let addr = bed.addr("b1");
    let set = |code| backend_ctl::set_health_status(&bed.topo, b1, code).unwrap();
    goes_down(&d, &addr, || set(503));
    comes_up(&d, &addr, || set(200));
    let back = load::now();
    let conns = ShortConns::start(
        &bed.topo,
        false,
        ShortOpts {
            pause: Duration::from_millis(5),
            max_time: Duration::from_secs(20),
            ..ShortOpts::default()
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(12));
    let all = conns.stop().unwrap();
    assert!(all.failures().is_empty(), "{all}");
    // Expected: about 8% in the first third of the window (the share grows from 0 to a
    // third of 1 / (1/3 + 2)), about 29% in the last.
    let early = all.between(back, back + 4.0);
    let late = all.between(back + 8.0, back + 12.0);
    let (e, l) = (early.share("b1"), late.share("b1"));
    eprintln!("b1's share: {e:.1}% in the first 4 s, {l:.1}% in the last 4 s");
    assert!(
        early.len() >= 60 && late.len() >= 60,
        "too few connections: {all}"
    );
    assert!(
        e < 0.5 * l && e < 20.0 && l > 15.0,
        "b1's share must grow: {e:.1}% early ({early}), {l:.1}% late ({late})"
    );
    bed.stop(d);
}

/// An HTTP check of a frozen server (SIGSTOP: the kernel still accepts the connection,
/// nothing answers) fails by timeout; thawed, it passes again.
#[test]
fn http_check_of_a_frozen_server_times_out() {
    let (bed, d) = http_checked();
    let addr = bed.addr("b3");
    let pause = |on| backend_ctl::pause_server(bed.backend("b3"), on).unwrap();
    let took_down = goes_down(&d, &addr, || pause(true));
    // Thaw before asserting anything else, so a failure leaves no frozen process.
    let repair = Instant::now();
    pause(false);
    d.expect_log(&["backend down", &addr, "timeout"]);
    let took_up = expect_state_within(&d, &addr, "up", repair, up_within());
    eprintln!("b3 down after {took_down:?}, up after {took_up:?}");
    spread_with(&bed, "b3", true);
    bed.stop(d);
}

/// A backend whose server is gone (port closed) fails its TCP check with `connection
/// refused`; restarted, it comes back.
#[test]
fn closed_port_is_connection_refused() {
    let (bed, d) = tcp_checked();
    let (b3, addr) = (bed.backend("b3"), bed.addr("b3"));
    let took_down = goes_down(&d, &addr, || backend_ctl::stop_server(b3).unwrap());
    d.expect_log(&["backend down", &addr, "connection refused"]);
    spread_with(&bed, "b3", false);

    let took_up = comes_up(&d, &addr, || {
        backend_ctl::start_server(&bed.topo, b3).unwrap()
    });
    eprintln!("b3 down after {took_down:?}, up after {took_up:?}");
    spread_with(&bed, "b3", true);
    bed.stop(d);
}

/// Connects once to the VIP from the client with python; returns the outcome
/// (`connected` or the exception's class name) and how long connect() took.
fn python_connect(bed: &Bed) -> (String, Duration) {
    const SCRIPT: &str = "import socket, sys, time\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n\
        s.settimeout(3)\n\
        t = time.monotonic()\n\
        try:\n    s.connect((sys.argv[1], int(sys.argv[2])))\n    r = 'connected'\n\
        except Exception as e:\n    r = type(e).__name__\n\
        print(r, '%.6f' % (time.monotonic() - t))\n";
    let out = bed
        .topo
        .client
        .exec("python3", &["-c", SCRIPT, &VIP4.to_string(), "80"])
        .unwrap();
    let (what, secs) = out.trim().split_once(' ').expect("two words");
    (
        what.to_owned(),
        Duration::from_secs_f64(secs.parse().expect("seconds")),
    )
}

fn drop_no_backend(d: &Daemon) -> u64 {
    let stats = d.stats_json().unwrap_or_else(|e| panic!("{e:#}"));
    stats["counters"]["drop_no_backend"]
        .as_u64()
        .unwrap_or_else(|| panic!("no counters.drop_no_backend in lb stats --json: {stats:#}"))
}

/// With every backend down, a new connection to the VIP is reset by the LB at once
/// (refused, not a timeout), counted as `drop_no_backend`; /health/endtoend answers 503
/// naming the service; one backend back and it answers 200 and traffic flows.
#[test]
fn all_backends_down_resets_new_connections() {
    let (bed, d) = tcp_checked();
    let (code, body) = admin::get(&bed.topo.lb, "/health/endtoend").unwrap();
    assert_eq!(code, 200, "/health/endtoend with all up: {body}");

    let fault = Instant::now();
    for name in BACKEND_NAMES {
        backend_ctl::stop_server(bed.backend(name)).unwrap();
    }
    admin::wait_for(
        &d,
        SERVICE,
        "all down",
        down_within() + Duration::from_secs(5),
        |s| s.backends.iter().all(|b| b.state == "down"),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let took = fault.elapsed();
    assert!(
        took <= down_within(),
        "all backends down only after {took:?} (bound {:?})",
        down_within()
    );

    let before = drop_no_backend(&d);
    const TRIES: u64 = 5;
    for _ in 0..TRIES {
        let (what, took) = python_connect(&bed);
        assert!(
            what == "ConnectionRefusedError" || what == "ConnectionResetError",
            "connect to the VIP with no backend: {what} after {took:?}, expected a reset at once\ndaemon log:\n{}",
            d.log()
        );
        assert!(
            took < Duration::from_millis(500),
            "connect to the VIP with no backend took {took:?} to fail ({what}): not at once"
        );
    }
    for _ in 0..TRIES {
        let out = lb_tests::cmd::output_any(bed.topo.client.command("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "--connect-timeout",
            "3",
            "-w",
            "%{time_total}",
            &bed.topo.vip_url(false, "name"),
        ]))
        .unwrap();
        let code = out.status.code();
        let secs: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(f64::NAN);
        assert!(
            matches!(code, Some(7) | Some(56)),
            "curl to the VIP with no backend exited {code:?} after {secs} s, expected 7 or 56 (reset)"
        );
        assert!(
            secs < 0.5,
            "curl to the VIP with no backend took {secs} s to fail"
        );
    }
    let after = drop_no_backend(&d);
    assert!(
        after >= before + 2 * TRIES,
        "drop_no_backend went from {before} to {after} over {} connection attempts",
        2 * TRIES
    );

    let (code, body) = admin::get(&bed.topo.lb, "/health/endtoend").unwrap();
    assert_eq!(
        code, 503,
        "/health/endtoend with every backend down: {body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/health/endtoend body is not JSON ({e}): {body}"));
    assert!(
        v["services_down"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s == SERVICE)),
        "/health/endtoend body should name service {SERVICE} in services_down: {body}"
    );
    let (code, body) = admin::get(&bed.topo.lb, "/health/instance").unwrap();
    assert_eq!(code, 200, "/health/instance while running: {body}");

    let b2 = bed.backend("b2");
    comes_up(&d, &bed.addr("b2"), || {
        backend_ctl::start_server(&bed.topo, b2).unwrap()
    });
    let (code, body) = admin::get(&bed.topo.lb, "/health/endtoend").unwrap();
    assert_eq!(code, 200, "/health/endtoend with b2 back up: {body}");
    let s = bed.topo.spread(false, 20).unwrap();
    assert_eq!(s.failures, 0, "with b2 back: {s}");
    assert_eq!(s.count("b2"), 20, "only b2 is up: {s}");
    let body = client::get(&bed.topo.client, &bed.topo.vip_url(false, "name")).unwrap();
    assert_eq!(body, "b2");
    bed.stop(d);
}
