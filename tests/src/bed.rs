//! What the end-to-end tests share: the per-binary lock (the
//! tests run one at a time on two CPUs), the prerequisite checks, a two-armed topology,
//! the daemon's command line over named backends, and the fast health-check settings
//! whose timing the tests assert.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::daemon::READY_WITHIN;
use crate::load::SlowDownload;
use crate::topology::{Backend, Kind, Topology};
use crate::{Daemon, Launch};

/// Health-check interval the tests run with.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Consecutive failures that take a backend down.
pub const FALL: u32 = 2;
/// Consecutive successes that bring it back.
pub const RISE: u32 = 2;
/// Allowance for a loaded two-CPU CI machine on top of the specified bounds.
pub const SLACK: Duration = Duration::from_secs(1);

/// The daemon flags for [`INTERVAL`], a 500 ms timeout, [`RISE`] and [`FALL`].
pub const FAST_HEALTH: &[&str] = &[
    "--health-interval",
    "1s",
    "--health-timeout",
    "500ms",
    "--healthy-threshold",
    "2",
    "--unhealthy-threshold",
    "2",
];

/// The bound on failover: interval × fall + one interval (+ [`SLACK`]).
pub fn down_within() -> Duration {
    INTERVAL * FALL + INTERVAL + SLACK
}

/// The bound on recovery: interval × rise + one interval (+ [`SLACK`]).
pub fn up_within() -> Duration {
    INTERVAL * RISE + INTERVAL + SLACK
}

static SERIAL: Mutex<()> = Mutex::new(());

/// A test's environment. Fields drop in order: the topology (servers, namespaces, temp
/// dir), then the lock. Daemons are locals of the test, so they stop first.
pub struct Bed {
    pub topo: Topology,
    pub lb: PathBuf,
    _serial: MutexGuard<'static, ()>,
}

impl Bed {
    /// Takes the lock, checks root, tools and the built artifacts, and builds `kind`.
    /// Panics with what is missing: tests never skip.
    pub fn new(kind: Kind) -> Bed {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        crate::require_root().unwrap_or_else(|e| panic!("{e:#}"));
        crate::require_tools(crate::TOOLS).unwrap_or_else(|e| panic!("{e:#}"));
        crate::bpf_object().unwrap_or_else(|e| panic!("{e:#}"));
        let lb = crate::lb_bin().unwrap_or_else(|e| panic!("{e:#}"));
        let topo = Topology::new(kind).unwrap_or_else(|e| panic!("building {kind:?}: {e:#}"));
        Bed {
            topo,
            lb,
            _serial: serial,
        }
    }

    pub fn backend(&self, name: &str) -> &Backend {
        self.topo.backend(name)
    }

    /// `198.18.1.11:80` for `b1`, as the daemon lists it.
    pub fn addr(&self, name: &str) -> String {
        self.backend(name).addr4().to_string()
    }

    /// A download of `/blob` through the IPv4 VIP at 256 KiB/s (60 s at most), under way
    /// for half a second; with the name and address of the backend serving it.
    pub fn slow_flow(&self) -> (SlowDownload, String, String) {
        let slow = SlowDownload::start(
            &self.topo,
            false,
            "blob",
            256 << 10,
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let name = crate::must(slow.backend(&self.topo, Duration::from_secs(5)));
        let addr = self.addr(&name);
        std::thread::sleep(Duration::from_millis(500));
        (slow, name, addr)
    }

    /// `--iface ... --vip VIP4 --backend ADDR@W ... --xdp-mode native` for the IPv4 VIP
    /// over the named backends, then `extra`.
    pub fn args(&self, backends: &[(&str, u32)], extra: &[&str]) -> Vec<String> {
        let mut a = Vec::new();
        for iface in &self.topo.lb_ifaces {
            a.extend(["--iface".to_owned(), iface.clone()]);
        }
        a.extend(["--vip".to_owned(), self.topo.vip_arg(false)]);
        for (name, w) in backends {
            a.extend(["--backend".to_owned(), format!("{}@{w}", self.addr(name))]);
        }
        a.extend(["--xdp-mode".to_owned(), "native".to_owned()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Stops `d` with SIGTERM: it must exit 0 and leave no XDP program behind.
    pub fn stop(&self, d: Daemon) {
        d.stop(&self.topo.lb)
            .unwrap_or_else(|e| panic!("stopping lb: {e:#}"));
    }

    /// Starts `lb ARGS` in the LB namespace (`ip netns exec`) and waits until ready.
    pub fn start(&self, args: &[String]) -> Daemon {
        self.start_via(Launch::IpNetnsExec, args)
    }

    /// Starts `lb ARGS` in the LB namespace through `launch` and waits until ready; each
    /// start logs to a file of its own.
    pub fn start_via(&self, launch: Launch, args: &[String]) -> Daemon {
        self.start_within(launch, args, READY_WITHIN)
    }

    /// [`start_via`](Self::start_via), ready within `within`: for a daemon that loads
    /// while the bed is busy.
    pub fn start_within(&self, launch: Launch, args: &[String], within: Duration) -> Daemon {
        static N: AtomicU32 = AtomicU32::new(0);
        let log = format!("lb-{}.log", N.fetch_add(1, Ordering::Relaxed));
        self.topo
            .spawn_lb(&self.lb, launch, args, &log)
            .and_then(|mut d| d.wait_ready(&self.topo.lb, within).map(|()| d))
            .unwrap_or_else(|e| panic!("starting lb {args:?}: {e:#}"))
    }
}
