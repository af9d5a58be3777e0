//! Source allowlists end to end: a client namespace with two addresses per family, one
//! allowed and one not. The allowed source connects; the other is dropped (IPv4) or
//! answered with a RST (IPv6, `deny = "reset"`) and counted as `denied`; a reload that
//! widens the list lets it in at once; one that narrows it leaves its connection running
//! unless `deny_established`, which cuts it. `lb explain` reports the verdict and the
//! source's new-flow bucket, which refused SYNs leave untouched.
//!
//! Root, curl, the `lb` binary and the eBPF object are required (a missing one fails);
//! the tests run one at a time (the lock in [`Bed`]).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lb_tests::admin;
use lb_tests::bed::Bed;
use lb_tests::bg::Bg;
use lb_tests::topology::{Kind, PORT, VIP4, VIP6};

/// The client's own addresses (the topology's) and the second ones this test adds.
const OWN4: &str = "198.18.0.2";
const OTHER4: &str = "198.18.0.3";
const OWN6: &str = "fd00::2";
const OTHER6: &str = "fd00::3";

/// The configuration: web4 (IPv4, allowing `allow4`) and web6 (IPv6, allowing the
/// client's own address, refusing with a RST).
fn config(bed: &Bed, allow4: &[&str], deny_established: bool) -> String {
    let b = |v6: bool| -> String {
        let list: Vec<String> = (bed.topo.backends.iter())
            .map(|b| format!("\"{}\"", if v6 { b.addr6() } else { b.addr4() }))
            .collect();
        list.join(", ")
    };
    let allow4: Vec<String> = allow4.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"iface = ["{}", "{}"]
xdp_mode = "native"
source_rate = 20
source_burst = 10

[[service]]
name = "web4"
vip = "{VIP4}:{PORT}"
backends = [{}]
allow = [{}]
deny_established = {deny_established}

[[service]]
name = "web6"
vip = "[{VIP6}]:{PORT}"
backends = [{}]
allow = ["{OWN6}/128"]
deny = "reset"
"#,
        bed.topo.lb_ifaces[0],
        bed.topo.lb_ifaces[1],
        b(false),
        allow4.join(", "),
        b(true)
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// `curl` from source address `src` to the VIP's `/name` (2 s to connect): the
/// backend's name, or curl's exit code and how long it took.
fn fetch(bed: &Bed, src: &str) -> Result<String, (i32, Duration)> {
    let v6 = src.contains(':');
    let url = bed.topo.vip_url(v6, "name");
    let t = Instant::now();
    let out = bed
        .topo
        .client
        .command("curl")
        .args([
            "-s",
            "-g",
            "--interface",
            src,
            "--connect-timeout",
            "2",
            "--max-time",
            "5",
        ])
        .arg(&url)
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        code => Err((code.unwrap_or(-1), t.elapsed())),
    }
}

/// `lb explain --json` of a connection from `src` (port 40000) to the IPv4 VIP.
fn explain(d: &lb_tests::Daemon, src: &str) -> serde_json::Value {
    let vip = format!("{VIP4}:{PORT}");
    let client = format!("{src}:40000");
    let out = d
        .run_cli(&["explain", "--vip", &vip, "--client", &client, "--json"])
        .unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn denied_total(bed: &Bed) -> f64 {
    let (code, body) = admin::get(&bed.topo.lb, "/metrics").unwrap();
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| {
            l.strip_prefix(r#"lb_dropped_packets_total{reason="denied"} "#)?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// A download of the 4 MB blob from `src` at 400 KB/s (about 10 s); curl gives up if
/// under 1 KB/s for 3 s.
fn slow_download(bed: &Bed, src: &str, name: &str) -> Bg {
    let mut c: Command = bed.topo.client.command("curl");
    c.args(["-s", "-g", "--interface", src, "--limit-rate", "400k"])
        .args([
            "--speed-limit",
            "1000",
            "--speed-time",
            "3",
            "--max-time",
            "30",
        ])
        .args(["-o", "/dev/null", "-w", "%{size_download}"])
        .arg(bed.topo.vip_url(false, "blob"));
    Bg::spawn(c, &bed.topo.path(name)).unwrap()
}

#[test]
fn only_listed_sources_connect_and_reloads_change_the_list_at_once() {
    let bed = Bed::new(Kind::TwoArmed);
    bed.topo
        .client
        .ip_batch(&format!(
            "addr add {OTHER4}/24 dev eth0\naddr add {OTHER6}/64 dev eth0 nodad\n"
        ))
        .unwrap();
    // Small receive buffers, so a rate-limited download is paced through the LB to
    // its end rather than sitting in the client's buffer early.
    bed.topo
        .client
        .sysctl(&["net.ipv4.tcp_rmem=4096 32768 65536"])
        .unwrap();
    bed.topo.create_blob(4 << 20).unwrap();
    let file = bed.topo.path("lb.toml");
    write(&file, &config(&bed, &[&format!("{OWN4}/32")], false));
    let d = bed.start(&["--config".to_string(), file.display().to_string()]);

    // IPv4: the listed source connects; the other's SYNs are dropped (a timeout).
    fetch(&bed, OWN4).unwrap_or_else(|e| panic!("{OWN4} refused: {e:?}"));
    let before = denied_total(&bed);
    let (code, took) = fetch(&bed, OTHER4).expect_err("an unlisted source connected");
    assert_eq!(code, 28, "dropped SYNs end in curl's connect timeout");
    assert!(took >= Duration::from_secs(2), "{took:?}");
    // IPv6 with deny = "reset": refused at once.
    fetch(&bed, OWN6).unwrap_or_else(|e| panic!("{OWN6} refused: {e:?}"));
    let (code, took) = fetch(&bed, OTHER6).expect_err("an unlisted source connected");
    assert_eq!(code, 7, "a RST is a refused connection");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let denied = denied_total(&bed) - before;
    assert!(denied >= 2.0, "denied counted {denied}");

    // lb explain says so, and that the refused SYNs took nothing from the source's
    // new-flow bucket (the allowlist comes first).
    let e = explain(&d, OTHER4);
    assert_eq!(e["backend"], serde_json::Value::Null, "{e:#}");
    assert_eq!(e["access"]["list"], true, "{e:#}");
    assert_eq!(e["access"]["allowed"], false, "{e:#}");
    assert_eq!(e["access"]["refused_with"], "drop", "{e:#}");
    assert!(
        e["why"]
            .as_str()
            .unwrap()
            .contains("not in the service's allowlist"),
        "{e:#}"
    );
    assert_eq!(e["source_limit"]["rate"], 20, "{e:#}");
    assert_eq!(e["source_limit"]["tokens"], 10, "{e:#}");
    assert_eq!(e["source_limit"]["admits_now"], true, "{e:#}");
    let e = explain(&d, OWN4);
    assert_eq!(e["access"]["allowed"], true, "{e:#}");
    assert!(e["backend"].is_string(), "{e:#}");

    // Widened: the other source connects at once.
    write(&file, &config(&bed, &["198.18.0.0/24"], false));
    let out = admin::ctl(&d, &["reload"]).unwrap();
    assert!(out.stdout.contains("allowlist 198.18.0.0/24"), "{out}");
    fetch(&bed, OTHER4).unwrap_or_else(|e| panic!("{OTHER4} refused after widening: {e:?}"));

    // Narrowed again while the other source downloads: its connection goes on, a new
    // one is refused.
    let mut running = slow_download(&bed, OTHER4, "kept.out");
    std::thread::sleep(Duration::from_secs(2));
    write(&file, &config(&bed, &[&format!("{OWN4}/32")], false));
    admin::ctl(&d, &["reload"]).unwrap();
    fetch(&bed, OTHER4).expect_err("refused again after narrowing");
    let status = running.wait(Duration::from_secs(30)).unwrap();
    assert!(
        status.success() && running.output().trim() == (4 << 20).to_string(),
        "the established download was cut: {status} {}",
        running.output()
    );

    // With deny_established, narrowing cuts it.
    write(&file, &config(&bed, &["198.18.0.0/24"], true));
    admin::ctl(&d, &["reload"]).unwrap();
    let mut cut = slow_download(&bed, OTHER4, "cut.out");
    std::thread::sleep(Duration::from_secs(2));
    write(&file, &config(&bed, &[&format!("{OWN4}/32")], true));
    admin::ctl(&d, &["reload"]).unwrap();
    let status = cut.wait(Duration::from_secs(30)).unwrap();
    assert!(
        !status.success(),
        "the download of a source taken off the list went on: {}",
        cut.output()
    );
    fetch(&bed, OWN4).unwrap_or_else(|e| panic!("{OWN4} refused at the end: {e:?}"));
    bed.stop(d);
}
