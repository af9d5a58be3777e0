//! Backends from DNS end to end, against dnsmasq in a backend's namespace: lb follows
//! the answer (an address that appears joins once its checks pass, one that vanishes
//! drains and goes) while connections run, none failing; a server that stops answering
//! leaves the last good set in place, counted; SRV records give each backend its port and
//! weight, lowest priority only.
//!
//! Root, dnsmasq, the `lb` binary and the eBPF object are required (a missing one
//! fails); the tests run one at a time (the lock in [`Bed`]).

use std::net::IpAddr;
use std::time::Duration;

use lb_tests::admin::{self, ServiceInfo};
use lb_tests::bed::{Bed, FAST_HEALTH};
use lb_tests::dns::{DnsServer, ResolvConf};
use lb_tests::load::{self, ShortConns, ShortOpts};
use lb_tests::topology::Kind;

/// The service name lb gives a `--vip` service.
const SERVICE: &str = "default";
const NAME: &str = "web.lb.test";

/// A two-armed bed, dnsmasq on b3's address serving `hosts` and `srv`, and the LB
/// namespace resolving through it.
fn with_dns(hosts: &[(&str, &str)], srv: &[&str]) -> (Bed, DnsServer, ResolvConf) {
    let bed = Bed::new(Kind::TwoArmed);
    let server = IpAddr::V4(bed.backend("b3").v4);
    let hosts = resolve_names(&bed, hosts);
    let dns = DnsServer::start(
        &bed.backend("b3").ns,
        server,
        bed.topo.dir.path(),
        &hosts,
        srv,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let resolv = ResolvConf::point(&bed.topo.lb, server).unwrap_or_else(|e| panic!("{e:#}"));
    (bed, dns, resolv)
}

/// `(backend, name)` pairs as hosts-file lines: `b1` is b1's IPv4 address, `b1/6` its
/// IPv6 one.
fn resolve_names<'a>(bed: &Bed, hosts: &[(&str, &'a str)]) -> Vec<(IpAddr, &'a str)> {
    hosts
        .iter()
        .map(|(b, name)| match b.strip_suffix("/6") {
            Some(b) => (IpAddr::V6(bed.backend(b).v6), *name),
            None => (IpAddr::V4(bed.backend(b).v4), *name),
        })
        .collect()
}

/// Starts lb on the IPv4 VIP with no configured backend, `extra` flags and fast TCP
/// checks.
fn start(bed: &Bed, extra: &[&str]) -> lb_tests::Daemon {
    let mut flags = extra.to_vec();
    flags.extend_from_slice(&["--health", "tcp"]);
    flags.extend_from_slice(FAST_HEALTH);
    bed.start(&bed.args(&[], &flags))
}

fn up(s: &ServiceInfo, addr: &str) -> bool {
    s.backend(addr).is_some_and(|b| b.state == "up")
}

/// One sample of `/metrics` by name and labels, e.g.
/// `lb_dns_lookups_total{service="default",result="fail"}`.
fn metric(bed: &Bed, sample: &str) -> Option<f64> {
    let (code, body) = admin::get(&bed.topo.lb, "/metrics").ok()?;
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// The backend set follows the DNS answer while short connections run: b3 added joins
/// once its checks pass, b1 removed drains and goes, and with the server gone the last
/// set stays and the failed lookups are counted. No connection fails throughout.
#[test]
fn backends_follow_the_answer_without_failing_a_connection() {
    let (bed, mut dns, _resolv) = with_dns(&[("b1", NAME), ("b2", NAME), ("b1/6", NAME)], &[]);
    let (a1, a2, a3) = (bed.addr("b1"), bed.addr("b2"), bed.addr("b3"));
    let query = format!("{NAME}:80");
    let d = start(&bed, &["--backend-dns", &query]);
    admin::wait_for(&d, SERVICE, "b1 and b2 up", Duration::from_secs(10), |s| {
        up(s, &a1) && up(s, &a2) && s.backends.len() == 2
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    // The AAAA record was looked up too, and left out: the VIP is IPv4.
    d.expect_log(&["left out", "[fd00:1::11]:80", "address family"]);

    let conns = ShortConns::start(
        &bed.topo,
        false,
        ShortOpts {
            pause: Duration::from_millis(10),
            max_time: Duration::from_secs(60),
            ..ShortOpts::default()
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    dns.set_hosts(&resolve_names(
        &bed,
        &[("b1", NAME), ("b2", NAME), ("b3", NAME)],
    ))
    .unwrap();
    admin::wait_state(&d, SERVICE, &a3, "up", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let b3_up = load::now();
    std::thread::sleep(Duration::from_secs(2));

    dns.set_hosts(&resolve_names(&bed, &[("b2", NAME), ("b3", NAME)]))
        .unwrap();
    admin::wait_gone(&d, SERVICE, &a1, Duration::from_secs(15)).unwrap_or_else(|e| panic!("{e:#}"));
    let b1_gone = load::now();
    d.expect_log(&["removing backend", &a1, "draining"]);
    std::thread::sleep(Duration::from_secs(2));

    dns.stop().unwrap();
    let failed = lb_tests::netns::wait_until(Duration::from_secs(15), || {
        Ok(metric(
            &bed,
            r#"lb_dns_lookups_total{service="default",result="fail"}"#,
        )
        .is_some_and(|n| n >= 2.0))
    });
    assert!(failed, "no failed lookup counted; log:\n{}", d.log());
    d.expect_log(&["DNS lookup failed", "last stay"]);
    let s = admin::service(&d, SERVICE).unwrap();
    assert!(
        up(&s, &a2) && up(&s, &a3) && s.backends.len() == 2,
        "the last good set must stay: {s:#?}"
    );
    assert_eq!(
        metric(&bed, r#"lb_dns_backends{service="default"}"#),
        Some(2.0)
    );
    let no_dns = load::now();
    std::thread::sleep(Duration::from_secs(2));

    let all = conns.stop().unwrap();
    assert!(all.failures().is_empty(), "connections failed: {all}");
    let after_add = all.since(b3_up);
    assert!(
        after_add.count("b3") > 0,
        "b3 got nothing once up: {after_add}"
    );
    let after_remove = all.since(b1_gone);
    assert_eq!(
        after_remove.count("b1"),
        0,
        "b1 got new connections: {after_remove}"
    );
    let without_server = all.since(no_dns);
    assert!(
        without_server.len() >= 20
            && without_server.count("b2") > 0
            && without_server.count("b3") > 0,
        "with the DNS server gone, b2 and b3 serve on: {without_server}"
    );
    bed.stop(d);
}

/// SRV records: each target's address on the record's port with the record's weight;
/// a record of a higher (less preferred) priority is not used.
#[test]
fn srv_records_give_each_backend_its_port_and_weight() {
    let srv = "_http._tcp.lb.test";
    let (bed, _dns, _resolv) = with_dns(
        &[
            ("b1", "b1.lb.test"),
            ("b2", "b2.lb.test"),
            ("b3", "b3.lb.test"),
        ],
        &[
            &format!("{srv},b1.lb.test,80,0,1"),
            &format!("{srv},b2.lb.test,80,0,3"),
            &format!("{srv},b3.lb.test,80,1,5"),
        ],
    );
    let (a1, a2, a3) = (bed.addr("b1"), bed.addr("b2"), bed.addr("b3"));
    let query = format!("srv:{srv}");
    let d = start(&bed, &["--backend-dns", &query, "--dns-interval", "2s"]);
    let s = admin::wait_for(&d, SERVICE, "b1 and b2 up", Duration::from_secs(10), |s| {
        up(s, &a1) && up(s, &a2)
    })
    .map(|_| admin::service(&d, SERVICE).unwrap())
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(s.backend(&a1).map(|b| b.weight), Some(1), "{s:#?}");
    assert_eq!(s.backend(&a2).map(|b| b.weight), Some(3), "{s:#?}");
    assert!(s.backend(&a3).is_none(), "priority 1 is a fallback: {s:#?}");
    let spread = bed.topo.spread(false, 200).unwrap();
    assert_eq!(spread.failures, 0, "{spread}");
    assert!(
        spread.count("b2") > 2 * spread.count("b1") && spread.count("b1") > 0,
        "weights 1 and 3: {spread}"
    );
    assert_eq!(spread.count("b3"), 0, "{spread}");
    bed.stop(d);
}
