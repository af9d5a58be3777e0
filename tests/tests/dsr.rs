//! Direct server return and DNAT end to end: a real client, the LB daemon, and nginx
//! backends that log the address each request came from.
//!
//! DSR runs in the one-armed topology, where client, LB and backends share a segment:
//! the backends answer the client directly, and `lb decap` strips the encapsulation on
//! them (ipip, gue) or nothing is to strip (l2). DNAT runs two-armed, the backends'
//! default route through the LB, which rewrites their replies. For each: every request
//! of hundreds is logged with the client's own address, they spread by weight, and a
//! 100 MB download is sha256-exact. In DSR the LB's out-direction counters stay zero.
//!
//! Needs root, the built `lb` and its eBPF object, nginx and the test bed's tools: the
//! tests fail (never skip) without them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use lb_tests::bed::Bed;
use lb_tests::client::{self, Spread};
use lb_tests::daemon::Daemon;
use lb_tests::dsr_backend::{Decap, start_nginx};
use lb_tests::must;
use lb_tests::receivers::Nginx;
use lb_tests::topology::{Kind, Topology, VIP4, VIP6};

/// The service's port: the VIP's and, in DSR, the backends'.
const PORT: u16 = 8080;
/// Connections for the spread.
const CONNS: usize = 800;
/// Percentage points a backend's share may be off its weight's.
const TOLERANCE_PP: f64 = 10.0;
/// The backends in use and their weights.
const WEIGHTS: [(&str, u32); 2] = [("b1", 1), ("b2", 2)];

fn vip(v6: bool) -> IpAddr {
    if v6 { VIP6.into() } else { VIP4.into() }
}

fn url(v6: bool, path: &str) -> String {
    match vip(v6) {
        IpAddr::V4(a) => format!("http://{a}:{PORT}/{path}"),
        IpAddr::V6(a) => format!("http://[{a}]:{PORT}/{path}"),
    }
}

fn client_addr(topo: &Topology, v6: bool) -> String {
    if v6 {
        topo.client_v6.to_string()
    } else {
        topo.client_v4.to_string()
    }
}

/// The daemon's arguments: the VIP and the backends on `PORT`, then `extra`.
fn args(topo: &Topology, v6: bool, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    for iface in &topo.lb_ifaces {
        a.extend(["--iface".into(), iface.clone()]);
    }
    let v = match vip(v6) {
        IpAddr::V4(a) => format!("{a}:{PORT}"),
        IpAddr::V6(a) => format!("[{a}]:{PORT}"),
    };
    a.extend(["--vip".into(), v]);
    for (name, w) in WEIGHTS {
        let b = topo.backend(name);
        let addr = if v6 {
            format!("[{}]:{PORT}", b.v6)
        } else {
            format!("{}:{PORT}", b.v4)
        };
        a.extend(["--backend".into(), format!("{addr}@{w}")]);
    }
    a.extend([
        "--xdp-mode".into(),
        "native".into(),
        "--health-interval".into(),
        "1s".into(),
    ]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// The checks every mode shares: the spread by weight, every request logged with the
/// client's address, and a 100 MB download sha256-exact.
fn serves_the_client_itself(topo: &Topology, daemon: &Daemon, nginx: &[Nginx], v6: bool) {
    let spread: Spread = must(client::spread(&topo.client, &url(v6, "name"), CONNS));
    assert_eq!(
        spread.failures,
        0,
        "{} of {CONNS} connections failed: {spread}\nlb log:\n{}",
        spread.failures,
        daemon.log()
    );
    if let Err(e) = spread.check_weights(&WEIGHTS, TOLERANCE_PP) {
        panic!("{e:#}");
    }
    let client = client_addr(topo, v6);
    let mut logged = BTreeMap::new();
    for (n, (name, _)) in nginx.iter().zip(WEIGHTS) {
        let entries = must(n.entries());
        for e in &entries {
            assert_eq!(
                e.remote_addr, client,
                "{name} logged another address: {e:?}"
            );
        }
        let names = entries.iter().filter(|e| e.uri == "/name").count();
        logged.insert(name.to_string(), names);
    }
    assert_eq!(
        logged, spread.counts,
        "what the backends logged and what the client got"
    );

    let sum = must(topo.create_blob(100 << 20));
    let got = must(topo.download(&url(v6, "blob"), Duration::from_secs(60)));
    assert_eq!(got, sum, "the 100 MB download");
}

fn global_counter(daemon: &Daemon, name: &str) -> u64 {
    let stats = must(daemon.stats_json());
    stats["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// The backends of `WEIGHTS` as DSR backends: `lb decap` with both VIPs and `extra`,
/// and nginx on `PORT`.
fn dsr_backends(bed: &Bed, extra: &[&str]) -> (Vec<Decap>, Vec<Nginx>) {
    let topo = &bed.topo;
    let vips = [VIP4.to_string(), VIP6.to_string()];
    let mut decaps = Vec::new();
    let mut nginx = Vec::new();
    for (name, _) in WEIGHTS {
        let b = topo.backend(name);
        let mut a = vec!["--vip", &vips[0], "--vip", &vips[1]];
        a.extend(extra);
        let log = topo.path(&format!("decap-{name}.log"));
        decaps.push(must(Decap::start(&b.ns, &bed.lb, &a, &vips[0], &log)));
        nginx.push(must(start_nginx(b, PORT)));
    }
    (decaps, nginx)
}

/// POSTs `size` bytes from the client to the VIP's `/upload`; curl's `code size_upload`.
fn upload(topo: &Topology, size: usize) -> String {
    let body = topo.path("upload");
    must(std::fs::write(&body, vec![0x5au8; size]).map_err(Into::into));
    let out = must(topo.client.exec(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-H",
            "Expect:",
            "--max-time",
            "60",
            "-w",
            "%{http_code} %{size_upload}",
            "--data-binary",
            &format!("@{}", body.display()),
            &url(false, "upload"),
        ],
    ));
    out.trim().to_string()
}

/// A counter of the line `lb decap` prints when it stops (`name=value ...`).
fn decap_count(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.starts_with("decapsulated="))
        .unwrap_or_else(|| panic!("no counters line:\n{log}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// A DSR service over `encap` for one family: the whole check, then the LB and
/// `lb decap` stop and leave nothing behind.
fn dsr(encap: &str, v6: bool) {
    let bed = Bed::new(Kind::OneArmed);
    let topo = &bed.topo;
    let vips = [VIP4.to_string(), VIP6.to_string()];
    // Only the LB's address may send encapsulated packets.
    let from = [format!("{}/32", topo.lb_v4), format!("{}/128", topo.lb_v6)];
    let mut extra = vec!["--encap", encap];
    if encap != "l2" {
        extra.extend(["--from", &from[0], "--from", &from[1]]);
    }
    let (decaps, nginx) = dsr_backends(&bed, &extra);
    let daemon = bed.start(&args(topo, v6, &["--mode", "dsr", "--encap", encap]));
    serves_the_client_itself(topo, &daemon, &nginx, v6);
    assert_eq!(
        global_counter(&daemon, "forwarded_out"),
        0,
        "DSR: the replies must not cross the LB"
    );
    assert!(global_counter(&daemon, "forwarded_in") > CONNS as u64);
    bed.stop(daemon);
    for (d, (name, _)) in decaps.into_iter().zip(WEIGHTS) {
        let (status, log) = must(d.stop());
        assert!(status.success(), "lb decap on {name}: {status}\n{log}");
        let lo = must(
            topo.backend(name)
                .ns
                .exec("ip", &["-o", "addr", "show", "dev", "lo"]),
        );
        assert!(
            !lo.contains(&vips[0]) && !lo.contains(&vips[1]),
            "{name}: lb decap left a VIP on lo:\n{lo}"
        );
    }
}

#[test]
fn dsr_ipip_v4() {
    dsr("ipip", false);
}

#[test]
fn dsr_ipip_v6() {
    dsr("ipip", true);
}

#[test]
fn dsr_gue_v4() {
    dsr("gue", false);
}

#[test]
fn dsr_gue_v6() {
    dsr("gue", true);
}

#[test]
fn dsr_l2_v4() {
    dsr("l2", false);
}

#[test]
fn dsr_l2_v6() {
    dsr("l2", true);
}

/// DNAT: the backends' default route is the LB (two-armed), which turns their replies'
/// source back into the VIP.
fn dnat(v6: bool) {
    let bed = Bed::new(Kind::TwoArmed);
    let topo = &bed.topo;
    let nginx: Vec<Nginx> = WEIGHTS
        .iter()
        .map(|(name, _)| must(start_nginx(topo.backend(name), PORT)))
        .collect();
    let daemon = bed.start(&args(topo, v6, &["--mode", "dnat"]));
    serves_the_client_itself(topo, &daemon, &nginx, v6);
    assert!(global_counter(&daemon, "forwarded_out") > CONNS as u64);
    bed.stop(daemon);
}

#[test]
fn dnat_v4() {
    dnat(false);
}

#[test]
fn dnat_v6() {
    dnat(true);
}

/// A client's full-size segments do not fit the LB's segment once encapsulated (1500 +
/// 20 or 32 bytes): the LB answers with the MTU left, the client's path MTU discovery
/// shrinks its segments, and a 20 MB upload arrives whole.
#[test]
fn an_upload_over_the_path_mtu_once_encapsulated_still_arrives() {
    let bed = Bed::new(Kind::OneArmed);
    let topo = &bed.topo;
    let (decaps, _nginx) = dsr_backends(&bed, &["--encap", "gue"]);
    let daemon = bed.start(&args(topo, false, &["--mode", "dsr", "--encap", "gue"]));
    assert_eq!(
        upload(topo, 20 << 20),
        format!("200 {}", 20 << 20),
        "the upload"
    );
    assert!(
        global_counter(&daemon, "drop_too_big") > 0,
        "the client's full-size segments were answered with the MTU left"
    );
    bed.stop(daemon);
    drop(decaps);
}

/// A DSR backend is checked through the service's own path: one whose `lb decap` stops
/// (its program detached, its VIP off `lo`) fails its check although its server still
/// answers on its own address, and new connections go to the others.
#[test]
fn a_backend_without_its_decapsulation_fails_its_check_and_gets_no_new_flows() {
    let bed = Bed::new(Kind::OneArmed);
    let topo = &bed.topo;
    let (mut decaps, _nginx) = dsr_backends(&bed, &["--encap", "gue"]);
    let daemon = bed.start(&args(topo, false, &["--mode", "dsr", "--encap", "gue"]));
    let both = must(client::spread(&topo.client, &url(false, "name"), 60));
    assert!(
        both.count("b1") > 0 && both.count("b2") > 0,
        "both backends serve at first: {both}"
    );

    let (status, log) = must(decaps.remove(0).stop());
    assert!(status.success(), "lb decap on b1: {status}\n{log}");
    // Its server still answers on its own address: only the path is gone.
    let b1 = topo.backend("b1");
    let direct = must(client::get(
        &topo.lb,
        &format!("http://{}:{PORT}/name", b1.v4),
    ));
    assert_eq!(direct.trim(), "b1");
    let down = lb_tests::netns::wait_until(Duration::from_secs(15), || {
        let stats = daemon.stats_json()?;
        let state = stats["services"][0]["backends"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["addr"] == format!("{}:{PORT}", b1.v4)))
            .map(|b| b["state"].as_str().unwrap_or_default().to_string());
        Ok(state.as_deref() == Some("down"))
    });
    assert!(
        down,
        "b1 is not down 15 s after its decapsulation stopped; lb log:\n{}",
        daemon.log()
    );
    let after = must(client::spread(&topo.client, &url(false, "name"), 100));
    assert_eq!(after.failures, 0, "{after}");
    assert_eq!(after.count("b1"), 0, "b1 gets no new flows: {after}");
    bed.stop(daemon);
}

/// `lb decap` takes only encapsulated packets for its VIPs from its LBs: a GUE packet
/// for another address, or from a host outside `--from`, passes untouched (and the
/// kernel, which has no GUE, drops it). Bad flags change nothing.
#[test]
fn lb_decap_takes_only_its_vips_from_its_lbs() {
    let bed = Bed::new(Kind::OneArmed);
    let topo = &bed.topo;
    let b1 = topo.backend("b1");
    let vip = VIP4.to_string();
    let from = format!("{}/32", topo.lb_v4);

    for (bad, flag) in [
        (vec!["--vip", "nope"], "--vip"),
        (vec!["--vip", &vip, "--encap", "vxlan"], "--encap"),
        (vec!["--vip", &vip, "--gue-port", "7000"], "--gue-port"),
        (
            vec!["--vip", &vip, "--encap", "gue", "--from", "198.18.1.1/40"],
            "--from",
        ),
        (vec!["--vip", &vip, "--clamp-mss", "100"], "--clamp-mss"),
    ] {
        let out = must(lb_tests::cmd::output_any(
            b1.ns
                .command(&bed.lb.to_string_lossy())
                .args(["decap", "--iface", "eth0"])
                .args(&bad),
        ));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains(flag), "{bad:?}: the error names {flag}: {err}");
    }
    let link = must(b1.ns.exec("ip", &["link", "show", "eth0"]));
    assert!(
        !link.contains("xdp"),
        "a bad flag attached nothing:\n{link}"
    );
    let lo = must(b1.ns.exec("ip", &["-o", "addr", "show", "dev", "lo"]));
    assert!(!lo.contains(&vip), "a bad flag added no VIP:\n{lo}");

    let log = topo.path("decap-b1.log");
    let args = ["--vip", &vip, "--encap", "gue", "--from", &from];
    let decap = must(Decap::start(&b1.ns, &bed.lb, &args, &vip, &log));
    let gue_to = |ns: &lb_tests::Netns, inner_dst: IpAddr| {
        let inner = lb_tests::packet::Packet::tcp(
            topo.client_v4.into(),
            40000,
            inner_dst,
            PORT,
            lb_tests::packet::flags::SYN,
        )
        .build();
        let mut payload = lb_common::encap::gue_header(lb_common::encap::IPPROTO_IPIP).to_vec();
        payload.extend(&inner[14..]);
        let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
        must(ns.exec(
            "python3",
            &[
                "-c",
                "import socket,sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], 6080))",
                &hex,
                &b1.v4.to_string(),
            ],
        ));
    };
    // Both senders know b1's MAC beforehand: nothing waits on ARP.
    let link = must(b1.ns.exec("ip", &["-j", "link", "show", "eth0"]));
    let link: serde_json::Value = must(serde_json::from_str(&link).map_err(Into::into));
    let mac = link[0]["address"].as_str().expect("b1's MAC").to_string();
    for (ns, dev) in [(&topo.lb, "lb0"), (&topo.client, "eth0")] {
        let b1_addr = b1.v4.to_string();
        let neigh = ["neigh", "replace", &b1_addr, "lladdr", &mac, "dev", dev];
        must(ns.exec("ip", &neigh));
    }
    gue_to(&topo.lb, VIP4.into());
    gue_to(&topo.lb, "198.18.100.99".parse().unwrap());
    // The client's may be sent more than once: each must be refused.
    for _ in 0..3 {
        gue_to(&topo.client, VIP4.into());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, out) = must(decap.stop());
    assert!(status.success(), "{status}\n{out}");
    let count = |name: &str| decap_count(&out, name);
    let line = &out;
    assert_eq!(
        count("decapsulated"),
        1,
        "only the LB's packet for the VIP: {line}"
    );
    assert_eq!(count("not_vip"), 1, "{line}");
    assert!(
        count("not_from_lb") >= 1,
        "the client's packets were refused: {line}"
    );
    let link = must(b1.ns.exec("ip", &["link", "show", "eth0"]));
    assert!(
        !link.contains("xdp"),
        "lb decap detached its program:\n{link}"
    );
    let arp = must(
        b1.ns
            .exec("sysctl", &["-n", "net.ipv4.conf.all.arp_ignore"]),
    );
    assert_eq!(arp.trim(), "0", "arp_ignore restored");
}

/// `lb decap --clamp-mss`: the VIP's SYN-ACKs announce at most that MSS, so the client's
/// segments fit once encapsulated and the LB never has to answer "too big".
#[test]
fn a_clamped_mss_keeps_client_segments_within_the_path() {
    let bed = Bed::new(Kind::OneArmed);
    let topo = &bed.topo;
    let (decaps, _nginx) = dsr_backends(&bed, &["--encap", "gue", "--clamp-mss", "1400"]);
    let daemon = bed.start(&args(topo, false, &["--mode", "dsr", "--encap", "gue"]));
    let spread = must(client::spread(&topo.client, &url(false, "name"), 20));
    assert_eq!(spread.failures, 0, "{spread}");
    assert_eq!(
        upload(topo, 5 << 20),
        format!("200 {}", 5 << 20),
        "the upload"
    );
    assert_eq!(
        global_counter(&daemon, "drop_too_big"),
        0,
        "segments of at most 1400 bytes fit the encapsulation"
    );
    bed.stop(daemon);
    let mut clamped = 0;
    for d in decaps {
        let (status, log) = must(d.stop());
        assert!(status.success(), "{status}\n{log}");
        clamped += decap_count(&log, "mss_clamped");
    }
    assert!(
        clamped >= 21,
        "every SYN-ACK of the VIP was clamped ({clamped})"
    );
}
