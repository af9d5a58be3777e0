//! The per-source new-flow limit (`--source-rate`, `--source-burst`) of the `lb_xdp`
//! program under BPF_PROG_TEST_RUN (the kit's [`TestRun`]): a SYN that would open a
//! flow takes a token from its source's bucket (IPv4 address, IPv6 /64) or is dropped
//! and counted before any flow state exists; packets of existing flows never touch it.
//!
//! Needs root and a kernel with BPF_PROG_TEST_RUN for XDP: without either the tests fail
//! (never skip) and say what is missing.

use std::net::IpAddr;
use std::thread::sleep;
use std::time::Duration;

use lb_tests::packet::flags::{ACK, PSH, SYN};
use lb_tests::test_run::{Action, CLIENT_PORT, Plan, TestRun, counter, plan4, plan6};

/// A program serving `p` (every new flow to backend 0) with the source limit given.
fn limited(p: &Plan, rate: u32, burst: u32) -> TestRun {
    let mut lb = TestRun::new();
    lb.two_backends_up(p, 0);
    lb.set_source_limit(Some(rate), Some(burst));
    lb
}

/// The plan's service seen from another client address.
fn from(p: &Plan, client: &str) -> Plan {
    Plan {
        client: client.parse::<IpAddr>().expect("literal"),
        ..*p
    }
}

/// Sends a SYN from `p`'s client port `sport`; returns the action and the counters it
/// bumped, after checking that a dropped SYN left no flow entry and a forwarded one did.
fn syn(lb: &mut TestRun, p: &Plan, sport: u16) -> (Action, Vec<u32>) {
    let (action, _, bumped) = lb.run_counted(&p.from_client(sport, SYN).build());
    let has_flow = lb.flow(p.client_key(sport)).is_some();
    assert_eq!(
        has_flow,
        action == Action::Redirect,
        "{} port {sport}: a flow entry exactly when forwarded ({action:?})",
        p.client
    );
    (action, bumped)
}

fn forwarded(lb: &mut TestRun, p: &Plan, sport: u16) {
    syn_ends(lb, p, sport, Action::Redirect, counter::FWD_IN);
}

fn limited_out(lb: &mut TestRun, p: &Plan, sport: u16) {
    syn_ends(
        lb,
        p,
        sport,
        Action::Drop,
        counter::DROP_SOURCE_RATE_LIMITED,
    );
}

fn syn_ends(lb: &mut TestRun, p: &Plan, sport: u16, action: Action, bumped: u32) {
    let what = format!("SYN from {} port {sport}", p.client);
    assert_eq!(syn(lb, p, sport), (action, vec![bumped]), "{what}");
}

#[test]
fn a_source_gets_its_burst_then_its_rate_and_existing_flows_pass() {
    let p = plan4();
    let mut lb = limited(&p, 1, 3);
    for port in 1000..1003 {
        forwarded(&mut lb, &p, port);
    }
    limited_out(&mut lb, &p, 1003);
    limited_out(&mut lb, &p, 1004);
    assert_eq!(lb.counter(counter::DROP_SOURCE_RATE_LIMITED), 2);

    // Another source has its own bucket.
    let other = from(&p, "198.18.1.3");
    forwarded(&mut lb, &other, 1003);

    // Packets of the limited source's existing flows never touch its bucket: data, and
    // a retransmitted SYN of a flow already open.
    for (sport, f) in [(1000, ACK), (1001, ACK | PSH), (1002, SYN)] {
        let (action, _, bumped) = lb.run_counted(&p.from_client(sport, f).build());
        assert_eq!(
            (action, bumped),
            (Action::Redirect, vec![counter::FWD_IN]),
            "port {sport} flags {f:#x}"
        );
    }

    // Just over one refill interval (1 s at rate 1): one more new flow, not two.
    sleep(Duration::from_millis(1100));
    forwarded(&mut lb, &p, 1003);
    limited_out(&mut lb, &p, 1004);
}

#[test]
fn ipv6_sources_share_a_bucket_per_64() {
    let p = plan6();
    let mut lb = limited(&p, 1, 2);
    forwarded(&mut lb, &p, CLIENT_PORT);
    let same_64 = from(&p, "fd00:1::3");
    forwarded(&mut lb, &same_64, CLIENT_PORT);
    limited_out(&mut lb, &from(&p, "fd00:1::ffff:1"), CLIENT_PORT);
    limited_out(&mut lb, &p, CLIENT_PORT + 1);
    let other_64 = from(&p, "fd00:1:0:1::2");
    forwarded(&mut lb, &other_64, CLIENT_PORT);
    forwarded(&mut lb, &other_64, CLIENT_PORT + 1);
    limited_out(&mut lb, &other_64, CLIENT_PORT + 2);
}

#[test]
fn no_limit_by_default_and_a_reload_turns_it_on_and_off_keeping_flows() {
    let p = plan4();
    let mut lb = TestRun::new();
    lb.two_backends_up(&p, 0);
    for port in 2000..2020 {
        forwarded(&mut lb, &p, port);
    }
    lb.set_source_limit(Some(1), Some(1));
    forwarded(&mut lb, &p, 2020);
    limited_out(&mut lb, &p, 2021);
    // The flows opened before the limit are all still there and forwarded.
    for port in 2000..2021 {
        let (action, _) = lb.from_client(&p.from_client(port, ACK).build());
        assert_eq!(action, Action::Redirect, "port {port}");
    }
    // Rate 0 is no limit, as is leaving the keys out.
    lb.set_source_limit(Some(0), None);
    for port in 2021..2031 {
        forwarded(&mut lb, &p, port);
    }
    lb.set_source_limit(Some(1), Some(1));
    limited_out(&mut lb, &p, 2031);
    lb.set_source_limit(None, None);
    forwarded(&mut lb, &p, 2031);
    assert_eq!(
        lb.table_sizes().0,
        32,
        "every forwarded SYN's flow, no other"
    );
}
