//! End to end through the XDP SYN proxy: with `--syn-cookies always` every connection
//! is answered by the LB's cookie SYN-ACK and its backend leg opened by the LB, so
//! every byte crosses the sequence, SACK, timestamp and window translation. Loss on the
//! client's wire (an nftables `numgen random` drop rule in its namespace) makes
//! retransmissions and, with timestamps, SACK blocks cross it too; without timestamps
//! the client gets no window scaling and no SACK (the cookie cannot carry them), and
//! the download must still be exact. With `--syn-cookies auto` a VIP switches to
//! cookies when its SYN rate passes `--syn-cookie-rate`, and back.
//!
//! Needs root, the `lb` binary and the eBPF object; a missing one fails, never skips.

use std::time::Duration;

use lb_tests::bed::Bed;
use lb_tests::topology::{BACKEND_NAMES, Kind};
use lb_tests::{Daemon, cmd, must};

/// The nftables table of the loss rules in the client namespace.
const LOSS_TABLE: &str = "lbt_loss";

fn all_backends() -> Vec<(&'static str, u32)> {
    BACKEND_NAMES.iter().map(|n| (*n, 1)).collect()
}

/// `lb stats --json`'s counter `name`.
fn counter(d: &Daemon, name: &str) -> u64 {
    let stats = must(d.stats_json());
    stats["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counters.{name}: {stats:#}"))
}

/// Drops one in `inbound` TCP segments the client receives and one in `outbound` it
/// sends (nftables `numgen random`, in the client's namespace only).
fn lossy_client(bed: &Bed, inbound: u32, outbound: u32) {
    let script = format!(
        "table inet {LOSS_TABLE} {{
            chain in {{ type filter hook input priority 0; meta l4proto tcp numgen random mod {inbound} == 0 counter drop; }}
            chain out {{ type filter hook output priority 0; meta l4proto tcp numgen random mod {outbound} == 0 counter drop; }}
        }}"
    );
    must(cmd::run_with_stdin(
        bed.topo.client.command("nft").args(["-f", "-"]),
        &script,
    ));
}

/// Packets the loss rules dropped (both chains).
fn lost(bed: &Bed) -> u64 {
    let out = must(
        bed.topo
            .client
            .exec("nft", &["list", "table", "inet", LOSS_TABLE]),
    );
    out.split_whitespace()
        .collect::<Vec<_>>()
        .windows(4)
        .filter(|w| w[0] == "packets" && w[2] == "bytes")
        .map(|w| w[1].parse::<u64>().unwrap_or(0))
        .sum()
}

/// 100 MB downloaded through the SYN proxy with one in `loss` segments lost each way
/// on the client's wire.
fn bulk_through_the_proxy(timestamps: bool, loss: u32) {
    let bed = Bed::new(Kind::TwoArmed);
    let d = bed.start(&bed.args(&all_backends(), &["--syn-cookies", "always"]));
    let ts = if timestamps { "1" } else { "0" };
    must(
        bed.topo
            .client
            .sysctl(&[&format!("net.ipv4.tcp_timestamps={ts}")]),
    );
    lossy_client(&bed, loss, loss);
    let want = must(bed.topo.create_blob(100 << 20));
    let got = bed
        .topo
        .download(&bed.topo.vip_url(false, "blob"), Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}\nlb log:\n{}", d.log()));
    assert_eq!(
        got, want,
        "sha256 of the 100 MB download through the SYN proxy"
    );
    let dropped = lost(&bed);
    let csum = must(bed.topo.tcp_csum_errors());
    assert!(csum.is_empty(), "TCP checksum errors: {csum:?}");
    let (sent, valid) = (
        counter(&d, "syn_cookies_sent"),
        counter(&d, "syn_cookies_valid"),
    );
    eprintln!(
        "timestamps {timestamps}: {dropped} segments lost on the wire, {sent} cookies sent, {valid} valid"
    );
    assert!(
        sent >= 1 && valid >= 1,
        "the download went through the proxy: {sent} cookies sent, {valid} valid"
    );
    assert!(
        dropped >= 20,
        "the loss rules dropped only {dropped} segments: retransmissions did not cross the proxy"
    );
    bed.stop(d);
}

#[test]
fn a_100mb_download_through_the_syn_proxy_with_loss_and_timestamps() {
    bulk_through_the_proxy(true, 100);
}

#[test]
fn a_100mb_download_through_the_syn_proxy_with_loss_and_no_timestamps() {
    // Without timestamps the backend sends 536-byte segments to a client without SACK:
    // recovering from each loss takes a retransmission timeout often enough that the
    // loss of the other test would take minutes.
    bulk_through_the_proxy(false, 1000);
}

/// `lb` arguments for the family's VIP over the three backends, then `extra`.
fn family_args(bed: &Bed, v6: bool, extra: &[&str]) -> Vec<String> {
    let mut a = Vec::new();
    for iface in &bed.topo.lb_ifaces {
        a.extend(["--iface".to_owned(), iface.clone()]);
    }
    a.extend(["--vip".to_owned(), bed.topo.vip_arg(v6)]);
    for b in bed.topo.backend_args(v6, &[1, 1, 1]) {
        a.extend(["--backend".to_owned(), b]);
    }
    a.extend(["--xdp-mode".to_owned(), "native".to_owned()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Every short connection through the proxy reaches a backend, and only the cookie
/// path opened them.
fn short_connections(v6: bool) {
    let bed = Bed::new(Kind::TwoArmed);
    let d = bed.start(&family_args(&bed, v6, &["--syn-cookies", "always"]));
    let s = must(bed.topo.spread(v6, 30));
    assert_eq!(
        s.failures,
        0,
        "v6 {v6}: {s}\nlb stats: {:#}",
        must(d.stats_json())["counters"]
    );
    let (sent, valid) = (
        counter(&d, "syn_cookies_sent"),
        counter(&d, "syn_cookies_valid"),
    );
    assert!(sent >= 30, "every connection's SYN got a cookie: {sent}");
    assert_eq!(valid, 30, "every connection was opened by its cookie ACK");
    assert_eq!(counter(&d, "drop_syn_cookie_invalid"), 0);
    bed.stop(d);
}

#[test]
fn short_connections_through_the_syn_proxy_v4() {
    short_connections(false);
}

#[test]
fn short_connections_through_the_syn_proxy_v6() {
    short_connections(true);
}

/// `n` connections to the IPv4 VIP started at once from the client namespace; returns
/// how many got an HTTP 200. The timeouts leave room for three SYN retransmissions
/// (1, 3 and 7 s): under the whole suite's load, 3 of 200 connections started at once
/// once failed to connect within 5 s (two retransmissions).
fn parallel_connections(bed: &Bed, n: usize) -> usize {
    let url = bed.topo.vip_url(false, "");
    let mut c = bed.topo.client.command("curl");
    c.args(["-s", "-g", "--parallel", "--parallel-immediate"])
        .args(["--parallel-max", &n.to_string()])
        .args(["--connect-timeout", "15", "--max-time", "30"])
        .args(["-H", "Connection: close", "-w", "%{http_code}\\n"]);
    for _ in 0..n {
        c.args(["-o", "/dev/null", &url]);
    }
    let out = must(cmd::output_any(&mut c));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().filter(|c| *c == "200").count()
}

/// `--syn-cookies auto`: connections under the rate open flows the usual way; in a burst
/// over it, SYNs get cookies until one of the client's cookie ACKs comes back, and the
/// client, trusted from then on, opens the rest as usual; all of them connect.
#[test]
fn auto_mode_answers_with_cookies_only_over_the_rate() {
    let bed = Bed::new(Kind::TwoArmed);
    let d = bed.start(&bed.args(
        &all_backends(),
        &["--syn-cookies", "auto", "--syn-cookie-rate", "400"],
    ));
    assert_eq!(parallel_connections(&bed, 20), 20);
    assert_eq!(
        counter(&d, "syn_cookies_sent"),
        0,
        "20 SYNs are under the rate of 400 a second (27 in a rate window of 2^26 ns)"
    );
    // Past the rate's window (about 67 ms, and the one after it).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(parallel_connections(&bed, 200), 200, "lb log:\n{}", d.log());
    let sent = counter(&d, "syn_cookies_sent");
    let trusted = counter(&d, "syn_trusted");
    assert!(
        sent >= 1 && trusted >= 1,
        "past the rate, cookies until the client passes one ({sent}), then its SYNs trusted ({trusted})"
    );
    assert!(
        (50..=200).contains(&(sent + trusted)),
        "200 SYNs at once are over 400 a second: those past the rate get cookies or are trusted ({sent} + {trusted})"
    );
    assert_eq!(counter(&d, "syn_cookies_valid"), sent);
    bed.stop(d);
}
