//! Restarts, upgrades and crashes keep every flow: the data path is pinned in the state
//! directory and outlives the daemon. Under load (a paced download and a stream of new
//! connections through a `nat` VIP): `kill -9` then start; SIGTERM then start with the
//! backends reordered; an upgrade (a second daemon beside the first). Then the state of
//! the previous layout is adopted, `lb down` leaves nothing, and bad state directories
//! or a bad restart leave the running data path alone. (The `proxy-v2` upgrade, with its
//! connections handed over, is in proxy.rs.)
//!
//! The daemons run through `nsenter --net`, which keeps the host's bpffs, as on a real
//! LB host; `ip netns exec` gives each process a private one (last test). Runs as root
//! with real traffic, like e2e.rs; a missing prerequisite is a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData, MapType};
use lb_common::maps::{FlowKey, FlowState};

use lb_tests::bed::Bed;
use lb_tests::daemon::{XdpState, backend_new_flows, tc_ingress_programs, xdp_state};
use lb_tests::load::{self, Conns, ShortConns, ShortOpts, SlowDownload};
use lb_tests::netns::wait_until;
use lb_tests::{Daemon, Kind, Launch, must};

fn env() -> Bed {
    Bed::new(Kind::TwoArmed)
}

/// `--iface ... --vip ... --backend b1 b2 b3` (in `order`), checked by TCP.
fn args(bed: &Bed, order: &[&str], extra: &[&str]) -> Vec<String> {
    let backends: Vec<(&str, u32)> = order.iter().map(|b| (*b, 1)).collect();
    let mut more = vec!["--health", "tcp"];
    more.extend_from_slice(lb_tests::bed::FAST_HEALTH);
    more.extend_from_slice(extra);
    bed.args(&backends, &more)
}

/// Traffic across a lifecycle event: a download at 256 KiB/s of a 4 MiB blob (16 s) and
/// new connections every 20 ms.
struct Load {
    slow: SlowDownload,
    want: String,
    short: ShortConns,
}

impl Load {
    fn start(bed: &Bed) -> Load {
        let want = must(bed.topo.create_blob(4 << 20));
        let slow = must(SlowDownload::start(
            &bed.topo,
            false,
            "blob",
            256 << 10,
            Duration::from_secs(60),
        ));
        let mut short = must(ShortConns::start(
            &bed.topo,
            false,
            ShortOpts {
                max_time: Duration::from_secs(90),
                ..ShortOpts::default()
            },
        ));
        must(short.wait_for(20, Duration::from_secs(10)));
        Load { slow, want, short }
    }

    /// Connections made since `t` (seconds, `load::now()`): at least `n` of them (5 s
    /// at most to get there).
    fn since(&mut self, t: f64, n: usize) -> Conns {
        let mut got = None;
        wait_until(Duration::from_secs(5), || {
            let since = self.short.snapshot()?.since(t);
            let enough = since.len() >= n;
            got = Some(since);
            Ok(enough)
        });
        let got = got.expect("polled once");
        assert!(
            got.len() >= n,
            "only {} connections since {t}: {got}",
            got.len()
        );
        got
    }

    /// Stops the connections and waits for the download: every connection succeeded and
    /// the download is exact.
    fn finish(mut self, logs: &str) {
        let conns = must(self.short.stop());
        assert!(
            conns.failures().is_empty(),
            "connections failed: {conns}\n{logs}"
        );
        let status = must(self.slow.wait(Duration::from_secs(60)));
        assert!(
            status.success(),
            "the download failed: {}\n{logs}",
            self.slow.output()
        );
        assert_eq!(
            must(self.slow.sha256()),
            self.want,
            "the download is not exact\n{logs}"
        );
    }
}

/// Load started on `d`'s data path, with the counters a second into it.
fn under_load(bed: &Bed, d: &Daemon) -> (Load, BTreeMap<String, u64>) {
    let load = Load::start(bed);
    std::thread::sleep(Duration::from_secs(1));
    let before = new_flows(d);
    (load, before)
}

/// After a restart or upgrade to `new`: new connections go on for 2 s, no counter went
/// below `before`, every connection and the download were whole; then lb is stopped.
fn carries_on(
    bed: &Bed,
    mut load: Load,
    before: &BTreeMap<String, u64>,
    old: &Daemon,
    new: Daemon,
) {
    let after = load::now();
    std::thread::sleep(Duration::from_secs(2));
    load.since(after, 20);
    never_backwards(before, &new_flows(&new));
    load.finish(&logs(&[old, &new]));
    bed.stop(new);
}

/// Per-backend `new_flows` and every global packet counter from `lb stats --json`.
fn new_flows(d: &Daemon) -> BTreeMap<String, u64> {
    let stats = must(d.stats_json());
    let mut all: BTreeMap<String, u64> = must(backend_new_flows(&stats)).into_iter().collect();
    for (name, v) in stats["counters"].as_object().expect("global counters") {
        all.insert(format!("counter {name}"), v.as_u64().unwrap_or(0));
    }
    assert!(all.len() > 10, "{stats:#}");
    all
}

/// Each backend's passed health checks, from `lb stats --json`.
fn checks_passed(d: &Daemon) -> BTreeMap<String, u64> {
    let stats = must(d.stats_json());
    let mut out = BTreeMap::new();
    for s in stats["services"].as_array().expect("services") {
        for b in s["backends"].as_array().expect("backends") {
            let n = b["health"]["checks_passed"]
                .as_u64()
                .unwrap_or_else(|| panic!("no health.checks_passed in {b}"));
            out.insert(b["addr"].as_str().unwrap().to_owned(), n);
        }
    }
    out
}

/// Every counter of `after` at least its value in `before`.
fn never_backwards(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) {
    for (addr, n) in before {
        let now = after.get(addr).copied().unwrap_or(0);
        assert!(now >= *n, "{addr} went from {n} to {now}");
    }
}

/// Backend id by address, from the runtime record of the daemon in the LB namespace.
fn backend_ids(bed: &Bed) -> BTreeMap<String, u64> {
    let path = record_path(bed);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let rec: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut ids = BTreeMap::new();
    for s in rec["services"].as_array().unwrap() {
        for b in s["backends"].as_array().unwrap() {
            ids.insert(
                b["addr"].as_str().unwrap().to_owned(),
                b["id"].as_u64().unwrap(),
            );
        }
    }
    ids
}

fn netns_inode(bed: &Bed) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(bed.topo.lb.path()).unwrap().ino()
}

/// The runtime record of the LB namespace's daemon.
fn record_path(bed: &Bed) -> PathBuf {
    PathBuf::from(format!("/run/lb/netns-{}.json", netns_inode(bed)))
}

/// The state directory the LB namespace's daemon (running, or killed) recorded.
fn default_state_dir(bed: &Bed) -> PathBuf {
    let path = record_path(bed);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let rec: serde_json::Value = serde_json::from_str(&text).unwrap();
    let dir = PathBuf::from(rec["state_dir"].as_str().expect("state_dir in the record"));
    assert!(
        dir.to_string_lossy().starts_with("/sys/fs/bpf/lb/netns-"),
        "not the default state directory: {dir:?}"
    );
    dir
}

fn xdp_everywhere(bed: &Bed) -> bool {
    bed.topo
        .lb_ifaces
        .iter()
        .all(|i| xdp_state(&bed.topo.lb, i).unwrap() != XdpState::None)
}

fn logs(ds: &[&Daemon]) -> String {
    ds.iter()
        .map(|d| format!("--- lb pid {}:\n{}", d.pid(), d.log()))
        .collect()
}

#[test]
fn kill_9_then_start_keeps_every_flow_and_serves_the_gap() {
    let bed = env();
    let _down = DownOnDrop(&bed);
    let a = args(&bed, &["b1", "b2", "b3"], &[]);
    let mut first = bed.start_via(Launch::Nsenter, &a);
    let (mut load, before) = under_load(&bed, &first);

    must(first.kill_hard());
    first.superseded();
    assert!(xdp_everywhere(&bed), "the data path went with the daemon");
    // No daemon: new connections are balanced and forwarded all the same.
    let gap = load::now();
    std::thread::sleep(Duration::from_millis(1500));
    let in_gap = load.since(gap, 20);
    assert!(in_gap.failures().is_empty(), "in the gap: {in_gap}");

    let second = bed.start_via(Launch::Nsenter, &a);
    second.expect_log(&["adopted the pinned state"]);
    second.expect_log(&["frozen"]);
    carries_on(&bed, load, &before, &first, second);
}

#[test]
fn sigterm_then_start_with_the_backends_reordered_keeps_flows_and_ids() {
    let bed = env();
    let _down = DownOnDrop(&bed);
    let first = bed.start_via(Launch::Nsenter, &args(&bed, &["b1", "b2", "b3"], &[]));
    let ids = backend_ids(&bed);
    let (mut load, before) = under_load(&bed, &first);

    let mut first = first;
    first.superseded();
    must(first.signal(libc::SIGTERM));
    let status = must(first.wait_exit(Duration::from_secs(10)));
    assert!(status.success(), "{status}\n{}", first.log());
    first.expect_log(&["leaving the data path running"]);
    assert!(xdp_everywhere(&bed), "SIGTERM took the data path down");
    let gap = load::now();
    std::thread::sleep(Duration::from_secs(1));
    load.since(gap, 10);

    let second = bed.start_via(Launch::Nsenter, &args(&bed, &["b3", "b1", "b2"], &[]));
    assert_eq!(backend_ids(&bed), ids, "backend ids moved with the order");
    carries_on(&bed, load, &before, &first, second);
}

#[test]
fn an_upgrade_in_nat_mode_serves_every_connection() {
    let bed = env();
    let _down = DownOnDrop(&bed);
    let a = args(&bed, &["b1", "b2", "b3"], &[]);
    let mut old = bed.start_via(Launch::Nsenter, &a);
    let (load, before) = under_load(&bed, &old);
    // Enough checks that a new daemon cannot reach as many of its own within a second.
    let mut checks_before = BTreeMap::new();
    let enough = wait_until(Duration::from_secs(15), || {
        checks_before = checks_passed(&old);
        Ok(checks_before.values().all(|n| *n >= 5))
    });
    assert!(enough, "checks passed so far: {checks_before:?}");

    let new = bed.start_via(Launch::Nsenter, &a);
    // The check totals come over with the hand-over: the metrics do not start again.
    let mut checks_after = BTreeMap::new();
    let carried = wait_until(Duration::from_secs(1), || {
        checks_after = checks_passed(&new);
        Ok(checks_before
            .iter()
            .all(|(a, n)| checks_after.get(a).is_some_and(|m| m >= n)))
    });
    assert!(
        carried,
        "check totals before the upgrade {checks_before:?}, right after {checks_after:?}"
    );
    let status = must(old.wait_exit(Duration::from_secs(10)));
    assert!(status.success(), "old daemon: {status}\n{}", old.log());
    old.superseded();
    new.expect_log(&["taking over from pid", &old.pid().to_string()]);
    old.expect_log(&["handed over to pid", &new.pid().to_string()]);
    carries_on(&bed, load, &before, &old, new);
}

/// A state directory of the previous layout (what `--pin-dir` wrote: the flow tables
/// right in the directory, no format marker) is adopted and moved into the current one.
#[test]
fn state_of_the_previous_layout_is_adopted() {
    let bed = env();
    let _down = DownOnDrop(&bed);
    let dir = PathBuf::from(format!("/sys/fs/bpf/lbtest-{}-migrate", std::process::id()));
    let _gone = RemoveOnDrop(dir.clone());
    let a = args(
        &bed,
        &["b1", "b2", "b3"],
        &["--state-dir", dir.to_str().unwrap()],
    );
    let mut first = bed.start_via(Launch::Nsenter, &a);
    let spread = must(bed.topo.spread(false, 40));
    assert_eq!(spread.failures, 0, "{spread}");
    let flows = must(first.stats_json())["flows"].as_u64().unwrap();
    assert!(flows >= 40, "{flows} flows after 40 connections");
    must(first.kill_hard());
    first.superseded();

    // Back to format 1: the three flow tables in the directory itself (the flow
    // entries of 32 bytes), nothing else.
    let maps = dir.join("maps");
    pin_in_old_layout(&maps.join("flows_v4"), &dir.join("flows_v3"));
    pin_in_old_layout(&maps.join("half_open_v3"), &dir.join("half_open_v2"));
    std::fs::rename(maps.join("reverse_nat_v1"), dir.join("reverse_nat_v1")).unwrap();
    for sub in ["links", "progs", "maps"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
        std::fs::remove_dir(dir.join(sub)).unwrap();
    }
    std::fs::remove_dir(dir.join("format-2")).unwrap();

    let second = bed.start_via(Launch::Nsenter, &a);
    second.expect_log(&["migrated the flow tables of state format 1"]);
    second.expect_log(&["carried the flow entries of the previous layout into flows"]);
    let after = must(second.stats_json())["flows"].as_u64().unwrap();
    assert!(after >= flows, "{after} flows adopted of {flows}");
    assert!(dir.join("format-2").is_dir() && maps.join("flows_v4").exists());
    assert!(!dir.join("flows_v3").exists() && !maps.join("flows_v3").exists());
    let spread = must(bed.topo.spread(false, 20));
    assert_eq!(spread.failures, 0, "{spread}\n{}", second.log());
    must(second.run_cli(&["down", "--state-dir", dir.to_str().unwrap()]));
    assert!(!dir.exists(), "lb down left {dir:?}");
}

/// An upgrade from an lb whose flow entries had 32 bytes (before they kept their age
/// and packet count): the new daemon carries every entry into its own tables with its
/// backend and SNAT port, so a download running across the upgrade completes exact,
/// and `lb explain` reports the carried flow with its age unknown and its packets
/// counted since.
#[test]
fn an_upgrade_from_the_32_byte_flow_layout_keeps_every_flow() {
    let bed = env();
    let _down = DownOnDrop(&bed);
    let a = args(&bed, &["b1", "b2", "b3"], &[]);
    let mut first = bed.start_via(Launch::Nsenter, &a);
    // 8 MiB at 256 KiB/s: 32 s, past the upgrade.
    let want = must(bed.topo.create_blob(8 << 20));
    let mut slow = must(SlowDownload::start(
        &bed.topo,
        false,
        "blob",
        256 << 10,
        Duration::from_secs(90),
    ));
    let spread = must(bed.topo.spread(false, 20));
    assert_eq!(spread.failures, 0, "{spread}");
    std::thread::sleep(Duration::from_secs(1));
    must(first.kill_hard());
    first.superseded();

    // What the older lb left: its tables with 32-byte entries, under their names. The
    // attached program keeps its own (now unpinned) table meanwhile.
    let maps = default_state_dir(&bed).join("maps");
    let old = pin_in_old_layout(&maps.join("flows_v4"), &maps.join("flows_v3"));
    pin_in_old_layout(&maps.join("half_open_v3"), &maps.join("half_open_v2"));
    for m in ["flows_v4", "half_open_v3"] {
        std::fs::remove_file(maps.join(m)).unwrap();
    }
    assert!(
        old.len() >= 21,
        "{} flows: the download and 20 more",
        old.len()
    );

    let second = bed.start_via(Launch::Nsenter, &a);
    second.expect_log(&["carried the flow entries of the previous layout into flows"]);
    assert!(!maps.join("flows_v3").exists() && !maps.join("half_open_v2").exists());
    // Every old entry still in the table kept its backend and SNAT port, its age unknown.
    std::thread::sleep(Duration::from_secs(2));
    let now = flow_entries(&maps.join("flows_v4"));
    let mut moving = None;
    for (key, was) in &old {
        let Some((_, is)) = now.iter().find(|(k, _)| k == key) else {
            continue;
        };
        assert_eq!(
            (is.backend, is.snat_port, is.first_seen_ns),
            (was.backend, was.snat_port, 0),
            "{key:?}: was {was:?}, is {is:?}"
        );
        if is.packets > 0 {
            moving = Some(*key);
        }
    }
    // The download: the one carried flow with packets since.
    let key = moving.unwrap_or_else(|| panic!("no carried flow moved: {now:?}"));
    let client = format!("{}:{}", bed.topo.client_v4, u16::from_be(key.sport));
    let vip = format!("{}:{}", lb_tests::topology::VIP4, lb_tests::topology::PORT);
    let e: serde_json::Value = serde_json::from_str(&must(
        second.run_cli(&["explain", "--vip", &vip, "--client", &client, "--json"]),
    ))
    .unwrap();
    assert!(e["flow"]["age_secs"].is_null(), "{e}");
    assert!(e["flow"]["packets"].as_u64().unwrap_or(0) > 0, "{e}");

    let spread = must(bed.topo.spread(false, 20));
    assert_eq!(spread.failures, 0, "{spread}\n{}", second.log());
    let status = must(slow.wait(Duration::from_secs(90)));
    assert!(status.success(), "the download failed: {}", slow.output());
    assert_eq!(must(slow.sha256()), want, "the download is not exact");
    bed.stop(second);
}

/// What an lb of the 32-byte flow entries left: `from`'s entries (a flow table of this
/// layout) cut to that layout's values, in a new map of the same type and size pinned
/// at `to`. Returns the entries.
fn pin_in_old_layout(from: &Path, to: &Path) -> Vec<(FlowKey, FlowState)> {
    let entries = flow_entries(from);
    let data = MapData::from_pin(from).unwrap();
    let info = data.info().unwrap();
    let kind = match info.map_type().unwrap() {
        MapType::LruHash => "lru_hash",
        MapType::Hash => "hash",
        other => panic!("{from:?} is a {other:?}"),
    };
    let entries_n = info.max_entries().to_string();
    let to_s = to.to_string_lossy();
    let args = [
        "map",
        "create",
        &to_s,
        "type",
        kind,
        "key",
        "40",
        "value",
        "32",
        "entries",
        &entries_n,
        "name",
        "old_flows",
    ];
    let out = std::process::Command::new("bpftool")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let map = Map::from_map_data(MapData::from_pin(to).unwrap()).unwrap();
    let mut old: HashMap<MapData, FlowKey, [u8; 32]> = HashMap::try_from(map).unwrap();
    for (key, fs) in &entries {
        old.insert(key, fs.to_32_byte_layout(), 0).unwrap();
    }
    entries
}

/// The entries of the pinned flow table at `path`.
fn flow_entries(path: &Path) -> Vec<(FlowKey, FlowState)> {
    let map = Map::from_map_data(MapData::from_pin(path).unwrap()).unwrap();
    let table: HashMap<MapData, FlowKey, FlowState> = HashMap::try_from(map).unwrap();
    // A key can vanish between the walk and its lookup (expiry, LRU eviction).
    table.iter().filter_map(Result::ok).collect()
}

/// Takes lb out of the LB namespace when the test ends, passed or not: a daemon killed
/// on purpose leaves its data path pinned on the host's bpffs.
struct DownOnDrop<'a>(&'a Bed);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = Launch::Nsenter
            .command(&self.0.topo.lb, &self.0.lb)
            .arg("down")
            .output();
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `lb down` with a nat and a proxy-v2 service running: the daemon stops, and no XDP or
/// TC program, pin, local route or record is left; a second `lb down` is fine too.
#[test]
fn lb_down_leaves_nothing() {
    let bed = env();
    let _down = DownOnDrop(&bed);
    let conf = bed.topo.path("down.toml");
    let ifaces: Vec<String> = bed
        .topo
        .lb_ifaces
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect();
    let b1 = bed.addr("b1");
    std::fs::write(
        &conf,
        format!(
            "iface = [{}]\nxdp_mode = \"native\"\n\n[[service]]\nname = \"web\"\nvip = \"{}\"\nbackends = [\"{b1}\"]\n\n[[service]]\nname = \"pp\"\nvip = \"{}:8443\"\nmode = \"proxy-v2\"\nbackends = [\"{}:8443\"]\n[service.health]\ncheck = \"none\"\n",
            ifaces.join(", "),
            bed.topo.vip_arg(false),
            lb_tests::topology::VIP4,
            bed.backend("b1").addr4().ip(),
        ),
    )
    .unwrap();
    let mut d = bed.start_via(
        Launch::Nsenter,
        &["--config".to_owned(), conf.display().to_string()],
    );
    let spread = must(bed.topo.spread(false, 10));
    assert_eq!(spread.failures, 0, "{spread}");
    let state = default_state_dir(&bed);
    assert!(state.join("format-2").is_dir(), "no state in {state:?}");
    let record = record_path(&bed);
    let vip_route = || {
        must(bed.topo.lb.ip("route show table local"))
            .lines()
            .any(|l| l.contains(&lb_tests::topology::VIP4.to_string()))
    };
    assert!(vip_route(), "no local route for the proxy VIP");
    for iface in &bed.topo.lb_ifaces {
        let tc = must(tc_ingress_programs(&bed.topo.lb, iface));
        assert!(
            tc.iter().any(|p| p == "lb_neigh"),
            "{iface}: TCX ingress {tc:?}"
        );
    }

    let out = must(d.down());
    assert!(
        !d.is_running(),
        "the daemon still runs after lb down: {out}"
    );
    for iface in &bed.topo.lb_ifaces {
        assert_eq!(
            must(xdp_state(&bed.topo.lb, iface)),
            XdpState::None,
            "{out}"
        );
        let tc = must(tc_ingress_programs(&bed.topo.lb, iface));
        assert!(tc.is_empty(), "TCX programs left on {iface}: {tc:?}: {out}");
    }
    assert!(!state.exists(), "{state:?} left: {out}");
    assert!(!record.exists(), "{record:?} left: {out}");
    assert!(!vip_route(), "the proxy VIP's local route is left: {out}");
    let again = must(d.down());
    assert!(again.contains("nothing to remove"), "{again}");

    // A daemon killed outright leaves its admin socket; lb down removes it too.
    let socket = PathBuf::from(format!("/run/lb/netns-{}-admin.sock", netns_inode(&bed)));
    let mut d = bed.start_via(
        Launch::Nsenter,
        &["--config".to_owned(), conf.display().to_string()],
    );
    must(d.kill_hard());
    assert!(socket.exists(), "{socket:?} gone after kill -9");
    let out = must(d.down());
    assert!(!socket.exists(), "{socket:?} left: {out}");
}

/// Starts lb with `args` through nsenter: it must exit 2 (or `code`) at once and log
/// what `says` accepts.
fn refused(bed: &Bed, args: &[String], log: &str, code: i32, says: &str) -> Daemon {
    let mut d = must(bed.topo.spawn_lb(&bed.lb, Launch::Nsenter, args, log));
    let status = must(d.wait_exit(Duration::from_secs(20)));
    assert_eq!(status.code(), Some(code), "log:\n{}", d.log());
    d.expect_log(&[says]);
    d.superseded();
    d
}

#[test]
fn bad_state_directories_are_refused_and_leave_the_data_path_running() {
    let bed = env();
    let _down = DownOnDrop(&bed);
    // Not on a bpffs: nothing is attached.
    let mut a = args(
        &bed,
        &["b1", "b2", "b3"],
        &["--state-dir", "/tmp/lb-not-bpffs"],
    );
    refused(
        &bed,
        &a,
        "lb-tmp.log",
        2,
        "--state-dir /tmp/lb-not-bpffs: not on a bpf filesystem",
    );
    for iface in &bed.topo.lb_ifaces {
        assert_eq!(must(xdp_state(&bed.topo.lb, iface)), XdpState::None);
    }

    // A data path left running, then a state directory a newer lb wrote.
    a = args(&bed, &["b1", "b2", "b3"], &[]);
    let mut first = bed.start_via(Launch::Nsenter, &a);
    must(first.kill_hard());
    first.superseded();
    let state = default_state_dir(&bed);
    std::fs::create_dir(state.join("format-99")).unwrap();
    refused(&bed, &a, "lb-newer.log", 2, "written by a newer lb");
    assert!(xdp_everywhere(&bed));
    let spread = must(bed.topo.spread(false, 20));
    assert_eq!(spread.failures, 0, "the left data path stopped: {spread}");
    std::fs::remove_dir(state.join("format-99")).unwrap();

    // Maps sized by another --max-flows cannot be adopted.
    let small = args(&bed, &["b1", "b2", "b3"], &["--max-flows", "8192"]);
    refused(
        &bed,
        &small,
        "lb-size.log",
        2,
        "flows_v4 has 262144 entries but --max-flows size it at 8192",
    );
    let spread = must(bed.topo.spread(false, 20));
    assert_eq!(spread.failures, 0, "the left data path stopped: {spread}");

    let second = bed.start_via(Launch::Nsenter, &a);
    second.expect_log(&["adopted the pinned state"]);
    drop(first);
    bed.stop(second);
}

/// A new daemon that cannot start (a typo in --iface) or that sees another bpffs (`ip
/// netns exec`) leaves the running one in charge.
#[test]
fn a_failed_upgrade_leaves_the_running_daemon_in_charge() {
    let bed = env();
    let _down = DownOnDrop(&bed);
    let a = args(&bed, &["b1", "b2", "b3"], &[]);
    let mut old = bed.start_via(Launch::Nsenter, &a);
    let mut bad = a.clone();
    bad.extend(["--iface".to_owned(), "lb-nonesuch".to_owned()]);
    refused(&bed, &bad, "lb-badiface.log", 2, "lb-nonesuch");
    assert!(old.is_running(), "a bad --iface stopped the running daemon");

    let mut private = must(
        bed.topo
            .spawn_lb(&bed.lb, Launch::IpNetnsExec, &a, "lb-private.log"),
    );
    let status = must(private.wait_exit(Duration::from_secs(20)));
    assert_eq!(status.code(), Some(1), "{}", private.log());
    private.expect_log(&["refused to hand over", "nsenter"]);
    private.superseded();
    assert!(
        old.is_running(),
        "a refused upgrade stopped the running daemon"
    );
    let spread = must(bed.topo.spread(false, 20));
    assert_eq!(spread.failures, 0, "{spread}\n{}", old.log());
    // The old one still answers its admin API and its checks.
    let stats = must(old.stats_json());
    assert_eq!(stats["pid"].as_u64(), Some(u64::from(old.pid())));
    bed.stop(old);
}

/// Under `ip netns exec` lb mounts a private bpffs, says so, and `lb down` there is
/// fine; nothing appears on the host's bpffs.
#[test]
fn under_ip_netns_exec_the_state_is_private_and_says_so() {
    let bed = env();
    let _down = DownOnDrop(&bed);
    let d = bed.start_via(Launch::IpNetnsExec, &args(&bed, &["b1", "b2", "b3"], &[]));
    d.expect_log(&["lb mounted one", "nsenter"]);
    assert!(
        !default_state_dir(&bed).exists(),
        "state on the host's bpffs"
    );
    let spread = must(bed.topo.spread(false, 20));
    assert_eq!(spread.failures, 0, "{spread}");
    bed.stop(d);
}
