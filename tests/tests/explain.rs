//! `lb explain`: for connections from fixed client ports, the backend it predicts is the
//! one that answers them, and afterwards it reports their flow entries, which keep their
//! backend when the Maglev table changes. Needs root, the built `lb` and its eBPF object.

use std::collections::BTreeMap;

use lb_tests::bed::{Bed, FAST_HEALTH};
use lb_tests::topology::{BACKEND_NAMES, Kind, PORT, VIP4};
use lb_tests::{Daemon, must};

/// Client source ports to predict and then use.
const PORTS: std::ops::Range<u16> = 41_000..41_024;

fn explain(d: &Daemon, client: &str) -> serde_json::Value {
    let out = d
        .run_cli(&[
            "explain",
            "--vip",
            &format!("{VIP4}:{PORT}"),
            "--client",
            client,
            "--json",
        ])
        .unwrap_or_else(|e| panic!("{e:#}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `GET /name` from the client's `port`: the backend's name.
fn served_from(bed: &Bed, port: u16) -> String {
    bed.topo
        .client
        .exec(
            "curl",
            &[
                "-s",
                "--max-time",
                "5",
                "--local-port",
                &port.to_string(),
                &format!("http://{VIP4}:{PORT}/name"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
        .trim()
        .to_string()
}

#[test]
fn explain_predicts_the_backend_and_reports_the_flow() {
    let bed = Bed::new(Kind::TwoArmed);
    let all: Vec<(&str, u32)> = BACKEND_NAMES.iter().map(|n| (*n, 1)).collect();
    let d = bed.start(&bed.args(&all, FAST_HEALTH));
    let name_of: BTreeMap<String, String> = BACKEND_NAMES
        .iter()
        .map(|n| (bed.addr(n), n.to_string()))
        .collect();
    let client = bed.topo.client_v4;

    let mut predicted = BTreeMap::new();
    for port in PORTS {
        let e = explain(&d, &format!("{client}:{port}"));
        assert!(e["flow"].is_null(), "no flow before the connection: {e}");
        let backend = e["backend"]
            .as_str()
            .unwrap_or_else(|| panic!("no backend: {e}"));
        assert_eq!(e["table_backend"], e["backend"], "{e}");
        predicted.insert(port, name_of[backend].clone());
    }
    let distinct: std::collections::BTreeSet<&String> = predicted.values().collect();
    assert!(
        distinct.len() > 1,
        "24 ports all map to one backend: {predicted:?}"
    );
    for port in PORTS {
        assert_eq!(
            served_from(&bed, port),
            predicted[&port],
            "client port {port}"
        );
    }

    // A connection that stays open (a slow download from a fixed port): its flow is
    // reported; once its backend is drained the table names another, and the flow still
    // says where its packets go.
    must(bed.topo.create_blob(1 << 20));
    let port = 42_000;
    let mut slow = bed.topo.client.command("curl");
    slow.args([
        "-s",
        "-o",
        "/dev/null",
        "--limit-rate",
        "8k",
        "--max-time",
        "60",
        "--local-port",
        &port.to_string(),
        &format!("http://{VIP4}:{PORT}/blob"),
    ]);
    must(bed.topo.client.spawn(slow));
    let client_port = format!("{client}:{port}");
    let mut e = explain(&d, &client_port);
    for _ in 0..50 {
        if e["flow"]["established"] == true {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        e = explain(&d, &client_port);
    }
    assert_eq!(e["flow"]["established"], true, "{e}");
    assert_eq!(e["flow"]["backend"], e["backend"], "{e}");
    // Its age and packet count move on with the download: at least the handshake and
    // the request before, more packets and as many more seconds two seconds later.
    let (age, packets) = age_and_packets(&e);
    assert!(packets >= 3, "handshake and request at least: {e}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let e = explain(&d, &client_port);
    let (age_later, packets_later) = age_and_packets(&e);
    assert!(
        (1.5..3.5).contains(&(age_later - age)),
        "age {age} s, then {age_later} s two seconds later: {e}"
    );
    assert!(packets_later > packets, "{packets} packets, then {e}");
    let idle = e["flow"]["idle_secs"].as_f64().unwrap_or(f64::NAN);
    assert!(
        idle <= age_later,
        "idle {idle} s of an age of {age_later} s: {e}"
    );
    let serving = e["backend"].as_str().unwrap_or_default().to_string();
    d.run_cli(&["ctl", "drain", "default", &serving])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let e = explain(&d, &client_port);
    assert_ne!(e["table_backend"].as_str(), Some(serving.as_str()), "{e}");
    assert_eq!(
        e["backend"].as_str(),
        Some(serving.as_str()),
        "the flow keeps it: {e}"
    );
    assert!(
        e["why"]
            .as_str()
            .unwrap_or_default()
            .contains("keeps that backend"),
        "{e}"
    );

    // A connection whose handshake never completes (the client drops the SYN-ACKs to
    // this port): its half-open flow is reported.
    let port = 42_001;
    let rules = bed.topo.path("no-synack.nft");
    must(
        std::fs::write(
            &rules,
            format!(
                "table inet explaintest {{\n chain in {{\n  type filter hook input priority 0;\n  \
                 tcp dport {port} tcp flags & (syn | ack) == syn | ack drop\n }}\n}}\n"
            ),
        )
        .map_err(Into::into),
    );
    must(
        bed.topo
            .client
            .exec("nft", &["-f", &rules.to_string_lossy()]),
    );
    let mut stuck = bed.topo.client.command("curl");
    stuck.args([
        "-s",
        "--max-time",
        "8",
        "--local-port",
        &port.to_string(),
        &format!("http://{VIP4}:{PORT}/name"),
    ]);
    must(bed.topo.client.spawn(stuck));
    let client_port = format!("{client}:{port}");
    let mut e = explain(&d, &client_port);
    for _ in 0..50 {
        if !e["flow"].is_null() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        e = explain(&d, &client_port);
    }
    assert_eq!(e["flow"]["established"], false, "a half-open flow: {e}");
    assert_eq!(e["flow"]["backend"], e["backend"], "{e}");
    let (_, packets) = age_and_packets(&e);
    assert!(packets >= 1, "its SYN at least: {e}");
    bed.stop(d);
}

/// The flow entry's age in seconds and packet count, as `lb explain --json` gives them.
fn age_and_packets(e: &serde_json::Value) -> (f64, u64) {
    let age = e["flow"]["age_secs"]
        .as_f64()
        .unwrap_or_else(|| panic!("no age: {e}"));
    let packets = e["flow"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no packet count: {e}"));
    (age, packets)
}

/// `lb explain --watch` reports the packets of the one connection it names, as the data
/// path sees them: the client's SYN, its ACKs and its FIN, with the flow's backend; a
/// connection from another port is not reported; at the end the watch is off.
#[test]
fn watch_follows_the_packets_of_one_connection() {
    let bed = Bed::new(Kind::TwoArmed);
    let all: Vec<(&str, u32)> = BACKEND_NAMES.iter().map(|n| (*n, 1)).collect();
    let d = bed.start(&bed.args(&all, FAST_HEALTH));
    let port = 41_500;
    let client = format!("{}:{port}", bed.topo.client_v4);
    let vip = format!("{VIP4}:{PORT}");
    let cmd = d.cli_command(&[
        "explain", "--vip", &vip, "--client", &client, "--json", "--watch", "--for", "6s",
    ]);
    let out_file = bed.topo.path("watch.out");
    let mut watcher = lb_tests::bg::Bg::spawn(cmd, &out_file).unwrap();
    // The explanation comes first; the watch is on once it is printed.
    assert!(
        lb_tests::netns::wait_until(std::time::Duration::from_secs(5), || {
            Ok(watcher.output().lines().next().is_some())
        }),
        "{}",
        watcher.output()
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let other = served_from(&bed, port + 1);
    let served = served_from(&bed, port);
    assert!(!served.is_empty() && !other.is_empty());
    let status = watcher.wait(std::time::Duration::from_secs(15)).unwrap();
    let text = watcher.output();
    assert!(status.success(), "{text}");
    let mut lines = text.lines();
    let first: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(first["client"], client.as_str(), "{text}");
    let events: Vec<serde_json::Value> = lines
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let flags: Vec<&str> = events
        .iter()
        .map(|e| e["flags"].as_str().unwrap())
        .collect();
    assert_eq!(flags.first(), Some(&"S"), "the SYN first: {text}");
    assert!(flags.iter().any(|f| f.contains('F')), "a FIN: {text}");
    assert!(
        (4..=12).contains(&events.len()),
        "one short connection's client packets, not the other's: {text}"
    );
    let backend = bed.addr(&served);
    assert!(
        events
            .iter()
            .skip(1)
            .all(|e| e["flow_backend"] == backend.as_str()),
        "every packet after the SYN finds the flow to {backend}: {text}"
    );
    // Off again: the watcher said stop before it exited.
    d.expect_log(&["reporting a connection's packets", &client]);
    d.expect_log(&["watch ended"]);
    bed.stop(d);
}
