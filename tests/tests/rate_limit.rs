//! End to end: the per-source new-flow limit (`--source-rate`, `--source-burst`) against
//! a real client in its namespace. A burst of parallel connections gets about the burst
//! through at once; the SYNs over it are dropped in XDP (counted in `lb stats` and
//! `/metrics`), and TCP's retransmission gets them through once tokens are back.
//!
//! Needs root, the `lb` binary and the eBPF object; a missing one fails, never skips.

use std::time::{Duration, Instant};

use lb_tests::bed::Bed;
use lb_tests::topology::{BACKEND_NAMES, Kind};
use lb_tests::{Daemon, admin, cmd, must, prometheus};

const RATE: u32 = 10;

/// `n` connections to the IPv4 VIP started at once from the client namespace, each
/// allowed `connect_timeout` seconds to connect; returns how many got an HTTP 200 and
/// how long the whole took.
fn parallel_connections(bed: &Bed, n: usize, connect_timeout: &str) -> (usize, Duration) {
    let url = bed.topo.vip_url(false, "");
    let mut c = bed.topo.client.command("curl");
    c.args(["-s", "-g", "--parallel", "--parallel-immediate"])
        .args(["--parallel-max", &n.to_string()])
        .args(["--connect-timeout", connect_timeout, "--max-time", "10"])
        .args(["-H", "Connection: close", "-w", "%{http_code}\\n"]);
    for _ in 0..n {
        c.args(["-o", "/dev/null", &url]);
    }
    let start = Instant::now();
    let out = must(cmd::output_any(&mut c));
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let codes: Vec<&str> = stdout.lines().collect();
    assert_eq!(codes.len(), n, "one status per connection: {stdout}");
    (codes.iter().filter(|c| **c == "200").count(), took)
}

/// `drop_source_rate_limited` as `lb stats --json` shows it.
fn rate_limited(d: &Daemon) -> u64 {
    let stats = must(d.stats_json());
    stats["counters"]["drop_source_rate_limited"]
        .as_u64()
        .unwrap_or_else(|| panic!("no counters.drop_source_rate_limited: {stats:#}"))
}

#[test]
fn a_burst_of_connections_from_one_source_is_held_to_its_rate() {
    let bed = Bed::new(Kind::TwoArmed);
    let all: Vec<(&str, u32)> = BACKEND_NAMES.iter().map(|n| (*n, 1)).collect();
    let rate = RATE.to_string();
    let d = bed.start(&bed.args(&all, &["--source-rate", &rate, "--source-burst", &rate]));
    assert_eq!(rate_limited(&d), 0);

    // 50 at once, each given half a second: less than TCP's first SYN retransmission
    // (1 s), so a dropped SYN is a failed connection. The burst gets through, plus what
    // the bucket refills while curl runs.
    let (ok, took) = parallel_connections(&bed, 50, "0.5");
    let refilled = (took.as_secs_f64() * f64::from(RATE)).ceil() as usize;
    assert!(
        (RATE as usize..=RATE as usize + refilled).contains(&ok),
        "{ok} of 50 connected in {took:?}; want the burst of {RATE} plus at most {refilled}; lb's counters: {}",
        must(d.stats_json())["counters"]
    );
    let dropped = rate_limited(&d);
    eprintln!("first burst: {ok} of 50 connected in {took:?}, {dropped} SYNs dropped");
    assert_eq!(
        dropped,
        (50 - ok) as u64,
        "each failed connection sent one SYN, dropped by the limit"
    );

    // Once the bucket is full again, 20 at once with time to retry: the burst connects
    // at once, the rest after TCP retransmits their SYNs (1 s later, tokens back).
    std::thread::sleep(Duration::from_millis(1100));
    let (ok, took) = parallel_connections(&bed, 20, "5");
    assert_eq!(
        ok, 20,
        "every connection gets through in the end ({took:?})"
    );
    assert!(
        took >= Duration::from_millis(900),
        "some waited for a SYN retransmission: {took:?}"
    );
    let dropped_now = rate_limited(&d);
    eprintln!("second burst: 20 of 20 connected in {took:?}, {dropped_now} SYNs dropped in all");
    assert!(
        dropped_now > dropped,
        "the second burst's SYNs over the limit were dropped too"
    );

    // /metrics shows the same count under its drop reason.
    let (code, body) = must(admin::get(&bed.topo.lb, "/metrics"));
    assert_eq!(code, 200, "{body}");
    let samples = must(prometheus::parse(&body));
    let metric = must(prometheus::value(
        &samples,
        "lb_dropped_packets_total",
        &[("reason", "source_rate_limited")],
    ));
    assert_eq!(metric, dropped_now as f64, "{body}");
    bed.stop(d);
}
