//! Several LB hosts behind ECMP (see `lb_tests::ecmp`): each runs lb in dsr mode with
//! `--announce-table` and BIRD with the shipped configuration; a router running BIRD
//! spreads the VIP's flows over every host that announces it.
//!
//! The router learns the VIP from every host within seconds; hundreds of connections
//! spread over all hosts and all succeed; a host that dies outright (lb and BIRD
//! SIGKILLed, its link down) during paced downloads costs none of them, and once the
//! router has withdrawn it every new connection succeeds; the host comes back and takes
//! its share without breaking a flow. A host announces only what it can serve: its
//! VIP is withdrawn while its health checks find no backend, kept across a restart,
//! and withdrawn by `lb down`.
//!
//! Needs root, the built `lb` and its eBPF object, BIRD 2 and the test bed's tools: the
//! tests fail (never skip) without them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lb_tests::ecmp::{self, Fabric, host_addr};
use lb_tests::{bpf_object, lb_bin, must};

/// Size and pace of the downloads that run through a host's loss and return: 8 MB at
/// 256 KB/s, about 32 s, longer than the whole sequence.
const BLOB: u64 = 8 << 20;
const RATE: u32 = 256 << 10;
const DOWNLOADS: usize = 8;
/// How long the router may take to learn or withdraw a host: BIRD's hold time is 3 s,
/// a new host's VIP waits for its first passed health check.
const CONVERGE: Duration = Duration::from_secs(15);

fn fabric(hosts: usize) -> Fabric {
    must(Fabric::build(
        &must(lb_bin()),
        &must(bpf_object()),
        hosts,
        3,
    ))
}

/// Every connection of `n` answered, spread over every backend.
fn all_succeed(f: &Fabric, n: usize, when: &str) {
    let spread = must(ecmp::spread(f, n));
    assert_eq!(
        spread.failures,
        0,
        "{when}: {} of {n} connections failed: {spread}\n{}",
        spread.failures,
        f.diagnostics()
    );
    assert_eq!(spread.counts.len(), 3, "{when}: {spread}");
}

#[test]
fn flows_spread_over_hosts_and_survive_the_loss_of_one() {
    let mut f = fabric(3);
    let sum = must(f.create_blob(BLOB));
    let start = Instant::now();
    for i in 0..3 {
        must(f.start_lb(i, &[]));
    }
    let ready = Instant::now();
    for i in 0..3 {
        must(f.start_bird(i));
    }
    must(f.wait_next_hops(&[0, 1, 2], CONVERGE));
    println!(
        "the router learned the VIP from 3 hosts {:?} after the last lb was ready ({:?} after the first started)",
        ready.elapsed(),
        start.elapsed()
    );

    let before = must(f.new_flows());
    all_succeed(&f, 300, "three hosts");
    let after = must(f.new_flows());
    let per_host: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    println!("new flows per host for 300 connections: {per_host:?}");
    assert!(
        per_host.iter().all(|n| *n > 0),
        "ECMP must spread connections over every host: {per_host:?}"
    );
    assert!(per_host.iter().sum::<u64>() >= 300, "{per_host:?}");

    let mut downloads = must(f.start_downloads(DOWNLOADS, RATE));
    std::thread::sleep(Duration::from_secs(2));
    // The host with the most downloads dies.
    let active = must(f.active_flows());
    let dead = (0..3).max_by_key(|i| active[*i]).unwrap();
    assert!(active[dead] > 0, "no host carries a download: {active:?}");
    println!("killing lb{} (active flows per host: {active:?})", dead + 1);
    must(f.kill_host(dead));
    let killed = Instant::now();
    let alive: Vec<usize> = (0..3).filter(|i| *i != dead).collect();
    must(f.wait_next_hops(&alive, CONVERGE));
    println!(
        "the router withdrew lb{} {:?} after it died",
        dead + 1,
        killed.elapsed()
    );
    all_succeed(&f, 200, "one host dead and withdrawn");

    must(f.revive_link(dead));
    must(f.start_host(dead, &[]));
    let back = Instant::now();
    must(f.wait_next_hops(&[0, 1, 2], CONVERGE));
    println!(
        "lb{} announced again {:?} after its restart",
        dead + 1,
        back.elapsed()
    );
    let running = downloads
        .iter_mut()
        .filter_map(|d| d.running().then_some(()))
        .count();
    assert!(
        running > 0,
        "the downloads ended before the host came back: its return is not tested"
    );
    let before = must(f.new_flows());
    all_succeed(&f, 300, "the host back");
    let after = must(f.new_flows());
    assert!(
        after[dead] > before[dead],
        "lb{} takes no new flows after its return: {before:?} -> {after:?}",
        dead + 1
    );

    for (i, d) in downloads.iter_mut().enumerate() {
        let status = must(d.wait(Duration::from_secs(120)));
        assert!(
            status.success(),
            "download {i} failed through the loss and return of lb{}: {}\n{}",
            dead + 1,
            d.output(),
            f.diagnostics()
        );
        assert_eq!(must(d.sha256()), sum, "download {i}");
    }
}

#[test]
fn a_host_announces_only_what_it_can_serve() {
    let mut f = fabric(2);
    for i in 0..2 {
        must(f.start_host(i, &[]));
    }
    must(f.wait_next_hops(&[0, 1], CONVERGE));

    // lb2's checks fail (its own traffic to the backends is dropped; forwarding, in
    // XDP, is not): it withdraws the VIP, lb1 keeps it.
    let rules = f.path("block-backends.nft");
    must(
        std::fs::write(
            &rules,
            "table inet lbtest {\n chain out {\n  type filter hook output priority 0;\n  \
             ip daddr { 198.18.1.21, 198.18.1.22, 198.18.1.23 } drop\n }\n}\n",
        )
        .map_err(Into::into),
    );
    must(f.hosts[1].ns.exec("nft", &["-f", &rules.to_string_lossy()]));
    must(f.wait_next_hops(&[0], CONVERGE));
    assert_eq!(must(f.announced(1)).trim(), "", "lb2's announce table");
    // What lb reports (`lb stats`, and `lb_vip_announced` in /metrics) follows.
    let reported = |i: usize| {
        let s = must(f.hosts[i].lb.as_ref().expect("lb runs").stats_json());
        assert_eq!(s["announce_table"], 100, "{s}");
        s["announced"].clone()
    };
    assert_eq!(reported(0), serde_json::json!([ecmp::VIP.to_string()]));
    assert_eq!(reported(1), serde_json::json!([]));
    all_succeed(&f, 100, "lb2 withdrawn");
    must(f.hosts[1].ns.exec("nft", &["delete table inet lbtest"]));
    must(f.wait_next_hops(&[0, 1], CONVERGE));

    // A restart keeps the route: the router never loses lb2, sampled every 50 ms
    // from before the stop until well past BIRD's hold time after the new start.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, router) = (done.clone(), f.router.name().to_owned());
        std::thread::spawn(move || {
            let mut fewest = usize::MAX;
            while !done.load(Ordering::Relaxed) {
                let out =
                    lb_tests::cmd::ip(&format!("-n {router} -j -4 route show {}/32", ecmp::VIP))
                        .unwrap_or_default();
                fewest = fewest.min(ecmp::parse_next_hops(&out).len());
                std::thread::sleep(Duration::from_millis(50));
            }
            fewest
        })
    };
    let restarted = f.restart_lb(1, &[]);
    std::thread::sleep(Duration::from_secs(5));
    done.store(true, Ordering::Relaxed);
    let fewest = sampler.join().expect("the sampler panicked");
    must(restarted);
    assert_eq!(
        fewest,
        2,
        "the router lost lb2 while lb restarted\n{}",
        f.diagnostics()
    );

    // `lb down` withdraws.
    let out = must(f.hosts[1].lb.as_ref().expect("lb2 runs").down());
    assert!(
        out.contains(&format!("withdrew VIP {}", ecmp::VIP)),
        "lb down said: {out}"
    );
    must(f.wait_next_hops(&[0], CONVERGE));
    assert_eq!(must(f.announced(1)).trim(), "");
    assert!(must(f.next_hops()).contains(&host_addr(0)));
}

/// The shipped routing daemon configurations are valid as shipped: BIRD parses both
/// (`bird -p`), FRR's vtysh accepts its file (`--dryrun`). The BIRD ones also run in the
/// tests above, with their `define` lines set.
#[test]
fn the_shipped_routing_configs_parse() {
    let dist = lb_tests::workspace_root().join("dist");
    for f in ["bird/lb-host.conf", "bird/router.conf"] {
        let path = dist.join(f);
        must(lb_tests::cmd::run(
            std::process::Command::new("bird")
                .arg("-p")
                .arg("-c")
                .arg(&path),
        ));
    }
    let frr = dist.join("frr/frr.conf");
    let out = must(lb_tests::cmd::output_any(
        std::process::Command::new("vtysh")
            .arg("--dryrun")
            .arg("-f")
            .arg(&frr),
    ));
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "vtysh --dryrun -f {}: {}\n{}{}",
        frr.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
