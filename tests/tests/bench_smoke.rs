//! Smoke test of `cargo xtask bench`: a quick run (1 s per workload, one repeat) must
//! produce the JSON lines, the Markdown report and the chart, with a figure for every
//! system and workload, so the bench cannot silently rot. No figure is asserted as a
//! speed target. A missing tool (wrk, iperf3, haproxy, nginx's stream module...) fails
//! the run, and so this test. Needs root, the built `lb` and eBPF object.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use lb_tests::bg::Bg;
use lb_tests::topology::TempDir;

/// Like the other end-to-end binaries: one namespace-building test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The quick bench's own bound is 150 s, then its failover run (about 40 s); this one
/// catches a hang.
const LIMIT: Duration = Duration::from_secs(300);

fn workloads_of(system: &str) -> Vec<&'static str> {
    const ALL: &[&str] = &["conn", "keepalive", "bulk1", "bulk4", "download"];
    // iperf3 cannot read a PROXY header: the PROXY senders have no iperf3 workloads.
    const PROXY: &[&str] = &["conn", "keepalive", "download"];
    const PPS: &[&str] = &["pps-1", "pps-1k", "pps-100k"];
    let parts: &[&[&str]] = match system {
        "lb-proxy-v2" | "lb-proxy-v2-sockmap" => &[PROXY, &["synflood"]],
        "haproxy-pp2" | "nginx-pp" => &[PROXY],
        "lb-nat" => &[ALL, PPS, &["conn-sustained", "synflood"]],
        "nft-dnat" => &[ALL, PPS, &["conn-sustained"]],
        "nft-fullnat" => &[ALL, &["conn-sustained", "synflood"]],
        "no-lb" => &[ALL, &["conn-sustained"]],
        "haproxy" => &[ALL, &["synflood"]],
        "xdp-bare" => &[PPS],
        _ => &[ALL],
    };
    parts.concat()
}

/// Runs `cargo ARGS` in the workspace; its failure fails the test.
fn cargo(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(lb_tests::workspace_root())
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("running cargo {}: {e}", args.join(" ")));
    assert!(
        status.success(),
        "cargo {} failed: {status}",
        args.join(" ")
    );
}

/// Builds the xtask binary (cheap: `cargo xtask test` has just built it) and returns
/// its path.
fn xtask_bin() -> std::path::PathBuf {
    cargo(&["build", "--quiet", "-p", "xtask"]);
    lb_tests::workspace_root().join("target/debug/xtask")
}

/// Builds the Maglev cost harness, which `--no-build` takes as built like `lb` (a
/// second, it has no dependencies).
fn maglev_harness() {
    let args = "build --quiet --release -p lb-common --features std --example maglev_cost";
    cargo(&args.split(' ').collect::<Vec<_>>());
}

#[test]
fn quick_bench_writes_every_figure() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    lb_tests::require_root().unwrap_or_else(|e| panic!("{e:#}"));
    let lb = lb_tests::lb_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let object = lb_tests::bpf_object().unwrap_or_else(|e| panic!("{e:#}"));
    maglev_harness();
    let out = TempDir::new().expect("temp dir");
    let results = out.path().join("results");

    let mut c = Command::new(xtask_bin());
    c.env("LB_BIN", &lb)
        .env("LB_EBPF_OBJECT", &object)
        .args(["bench", "--quick", "--no-build", "--out"])
        .arg(&results);
    let mut run = Bg::spawn(c, &out.path().join("bench.log")).expect("starting the bench");
    let status = match run.wait(LIMIT) {
        Ok(status) => status,
        Err(e) => {
            // SIGINT first: the bench's handler removes its namespaces and servers.
            let _ = run.signal(libc::SIGINT);
            let _ = run.wait(Duration::from_secs(15));
            panic!("the quick bench did not finish: {e:#}");
        }
    };
    let log = run.output();
    assert!(
        status.success(),
        "the quick bench failed ({status}):\n{log}"
    );

    let files: Vec<_> = std::fs::read_dir(&results)
        .unwrap_or_else(|e| panic!("{}: {e}\n{log}", results.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    let with_ext = |ext: &str| -> &Path {
        files
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == ext))
            .unwrap_or_else(|| panic!("no .{ext} file in {files:?}; bench log:\n{log}"))
    };
    let (jsonl, md, png) = (with_ext("jsonl"), with_ext("md"), with_ext("png"));
    let png_bytes = std::fs::read(png).unwrap();
    assert!(
        png_bytes.starts_with(b"\x89PNG\r\n\x1a\n") && png_bytes.len() > 10_000,
        "{} is not a drawn PNG ({} bytes)",
        png.display(),
        png_bytes.len()
    );
    let md = std::fs::read_to_string(md).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    let figures: Vec<&serde_json::Value> = lines.iter().filter(|f| f["kind"] == "figure").collect();
    let ratios: Vec<&serde_json::Value> = lines.iter().filter(|f| f["kind"] == "ratio").collect();
    assert!(!figures.is_empty() && !ratios.is_empty(), "{lines:?}");
    for f in &figures {
        for key in [
            "system", "workload", "metric", "median", "min", "max", "unit", "repeats",
        ] {
            assert!(f.get(key).is_some(), "figure without `{key}`: {f}");
        }
    }

    for system in [
        "lb-nat",
        "lb-proxy-v2",
        "lb-proxy-v2-sockmap",
        "haproxy",
        "haproxy-pp2",
        "nginx",
        "nginx-pp",
        "nft-fullnat",
        "nft-dnat",
        "no-lb",
        "xdp-bare",
    ] {
        let of: Vec<&serde_json::Value> = figures
            .iter()
            .copied()
            .filter(|f| f["system"] == system)
            .collect();
        assert!(!of.is_empty(), "no figure for {system}:\n{md}");
        assert!(
            md.contains(&format!("| {system} |")) || md.contains(&format!(" {system} |")),
            "{system} is not in the Markdown table:\n{md}"
        );
        let status = |f: &serde_json::Value| f["status"].as_str().unwrap_or("").to_owned();
        // lb's proxy-v2 mode is reported as not built until it is (issue 4), never
        // silently left out.
        if system.starts_with("lb-proxy-v2")
            && of.iter().all(|f| status(f).starts_with("not built yet"))
        {
            assert!(md.contains("not built yet"), "{md}");
            continue;
        }
        for workload in workloads_of(system) {
            let wf: Vec<&&serde_json::Value> =
                of.iter().filter(|f| f["workload"] == *workload).collect();
            // lb-nat against this peer, for every figure of the workload.
            if !system.starts_with("lb-") {
                assert!(
                    ratios.iter().any(|r| r["system"] == "lb-nat"
                        && r["peer"] == system
                        && r["workload"] == *workload),
                    "no lb-nat/{system} ratio for {workload}"
                );
            }
            assert!(!wf.is_empty(), "no {workload} figure for {system}:\n{md}");
            for f in wf {
                assert_eq!(status(f), "ok", "{f}\nbench log:\n{log}");
                // A figure sits within its own repeats, and none is negative (rates,
                // times, CPU seconds).
                let figure = |k: &str| f[k].as_f64().unwrap_or(f64::NAN);
                let (min, median, max) = (figure("min"), figure("median"), figure("max"));
                assert!(
                    min.is_finite() && 0.0 <= min && min <= median && median <= max,
                    "min {min} <= median {median} <= max {max}, all finite and >= 0: {f}"
                );
                assert!(f["repeats"].as_u64().unwrap_or(0) >= 1, "{f}");
            }
            // Something went through. During a SYN flood nothing may (that is what the
            // figure measures), so there it is the same run's rate without the flood.
            let primary = of
                .iter()
                .find(|f| {
                    f["workload"] == *workload
                        && (workload != "synflood" || f["metric"] == "rate_base")
                })
                .and_then(|f| f["median"].as_f64())
                .unwrap_or(0.0);
            assert!(
                primary > 0.0,
                "{system} {workload}: nothing went through\n{md}"
            );
        }
    }
    // The Maglev build cost, for every backend count the issue names.
    let maglev: Vec<&serde_json::Value> = figures
        .iter()
        .copied()
        .filter(|f| f["workload"] == "maglev-build")
        .collect();
    for f in &maglev {
        assert_eq!(f["status"], "ok", "{f}\nbench log:\n{log}");
    }
    for n in [10, 100, 1000, 10000] {
        let prefix = format!("build_time_n{n}_ring");
        assert!(
            maglev
                .iter()
                .any(|f| f["metric"].as_str().is_some_and(|m| m.starts_with(&prefix))),
            "no Maglev build time for {n} backends:\n{md}"
        );
    }
    assert!(md.contains("## Maglev table build"), "{md}");
    // The XDP program's cost on each path, measured.
    let paths: Vec<&serde_json::Value> = figures
        .iter()
        .copied()
        .filter(|f| f["workload"] == "xdp-path")
        .collect();
    for path in [
        "syn_new_flow",
        "established_forward",
        "reply",
        "rst_no_backend",
        "not_for_a_vip",
        "handshake_ack",
        "ack_of_fin",
        "short_connection",
    ] {
        let f = paths
            .iter()
            .find(|f| f["metric"] == path)
            .unwrap_or_else(|| panic!("no xdp-path figure {path}:\n{md}"));
        assert_eq!(f["status"], "ok", "{f}\nbench log:\n{log}");
        let ns = f["median"].as_f64().unwrap_or(0.0);
        assert!(ns > 0.0, "{path}: {ns} ns\n{md}");
    }
    // lb_xdp's run-time cost per packet under lb-nat's connection and download
    // workloads: the program ran, and the kernel counted its time.
    for workload in ["conn", "keepalive", "download"] {
        let f = figures
            .iter()
            .find(|f| {
                f["system"] == "lb-nat"
                    && f["workload"] == workload
                    && f["metric"] == "xdp_ns_per_packet"
            })
            .unwrap_or_else(|| panic!("no xdp_ns_per_packet for lb-nat {workload}:\n{md}"));
        let ns = f["median"].as_f64().unwrap_or(0.0);
        assert!(ns > 0.0, "lb-nat {workload}: {ns} ns per packet\n{md}");
    }
    // The lb/peer ratios and the targets are in the report, and nothing the
    // issue asks for is left unmeasured.
    assert!(md.contains("## Ratios lb-nat / peer"), "{md}");
    assert!(md.contains("## Targets"), "{md}");
    assert!(md.contains("XDP packet rate, 1,000 flows"), "{md}");
    assert!(
        md.contains(
            "| ns per packet in lb_xdp, a short connection's segments on average (xdp-path) | "
        ) && !md.contains("short connection's segments on average (xdp-path) | not measured"),
        "{md}"
    );
    assert!(!md.contains("TODO"), "{md}");
}
