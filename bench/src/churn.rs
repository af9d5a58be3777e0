//! The connection-state workloads (issue 11): new connections sustained long enough
//! for the client's ports and the LB's SNAT ports to come round again
//! (`conn-sustained`), and new connections during a SYN flood against the same
//! system's rate without one (`synflood`). The LB's veths receive in NAPI threads on
//! the LB's CPU, so every system does its work there.

use crate::bed::{Bed, CLIENT_CPU, LB_CPU};
use crate::clients::{CLIENT_THREADS, TcpCounters, Wrk, wrk};
use crate::cpu::{self, Stat};
use crate::flood::{self, Flood, Sent};
use crate::napi::{self, LbRx, pass_links};
use crate::systems::Running;
use anyhow::{Context, Result, bail};
use aya::programs::xdp::XdpLink;
use std::net::SocketAddr;
use std::time::Duration;

/// Concurrent connections of both workloads (all wrk threads together).
pub const CONCURRENCY: u32 = 30;
/// The client's ephemeral ports during `conn-sustained`: 16,384 of them, so at
/// thousands of connections per second each comes round again every few seconds, well
/// within a run.
pub const PORT_RANGE: (u16, u16) = (40_000, 56_383);
/// The client namespace's port range otherwise (the bed's).
const BED_PORT_RANGE: &str = "1024 65000";
/// lb's counter of SYNs dropped for want of a SNAT port.
pub const SNAT_EXHAUSTED: &str = "drop_snat_ports_exhausted";

/// One measured stretch of new connections.
pub struct Phase {
    pub wrk: Wrk,
    /// The client's TCP counters over the stretch.
    pub tcp: TcpCounters,
    /// lb's [`SNAT_EXHAUSTED`] over the stretch (0 for the systems without it).
    pub snat_exhausted: u64,
    /// Busy share of the LB's CPU and of the client's.
    pub lb_busy: f64,
    pub client_busy: f64,
    /// CPU time of the LB's veths' NAPI threads, as a share of one CPU.
    pub napi_busy: f64,
    /// Flood SYNs that reached the LB's receive ring.
    pub flood_in: u64,
    pub disturbed: Option<String>,
}

impl Phase {
    pub fn rate(&self) -> f64 {
        self.wrk.requests as f64 / self.wrk.secs.max(1e-6)
    }

    /// Connections that did not complete a request: opened and never answered
    /// (a SYN lost for good, a reset, still waiting at the end) or failed in wrk.
    pub fn failed(&self) -> u64 {
        self.tcp.active_opens.saturating_sub(self.wrk.requests) + self.wrk.errors
    }
}

/// `conn-sustained`: `warm` seconds unmeasured, then `secs` measured, with the client's
/// ports narrowed to [`PORT_RANGE`].
pub fn sustained(bed: &mut Bed, running: &mut Running, warm: u32, secs: u32) -> Result<Phase> {
    let (lo, hi) = PORT_RANGE;
    bed.topo
        .client
        .sysctl(&[&format!("net.ipv4.ip_local_port_range={lo} {hi}")])?;
    let result = (|| {
        let pass = pass_links(bed, running)?;
        let (rx, to) = warmed_up(bed, running, pass, warm)?;
        checked(phase(bed, running, &rx, &to, secs, None)?.0, &rx)
    })();
    bed.topo
        .client
        .sysctl(&[&format!("net.ipv4.ip_local_port_range={BED_PORT_RANGE}")])?;
    finish(bed, running, result)
}

/// What `synflood` measured: the same system without and with the flood.
pub struct FloodRun {
    pub base: Phase,
    pub flood: Phase,
    pub sent: Sent,
}

/// `synflood`: `warm` seconds unmeasured, `secs` without a flood, then `secs` during
/// one.
pub fn synflood(bed: &mut Bed, running: &mut Running, warm: u32, secs: u32) -> Result<FloodRun> {
    let syns = flood::arm(bed, running.system.vip())?;
    // The spoofed sources' answers die in the LB namespace (as if sent to a far
    // internet): no loop, no cost of delivering them to anyone, nothing leaves the bed.
    let (net, len) = flood::SOURCES;
    let route = format!("{net}/{len}");
    bed.topo.lb.ip(&format!("route add blackhole {route}"))?;
    let result = (|| {
        queue_client_packets(bed)?;
        let pass = pass_links(bed, running)?;
        let (rx, to) = warmed_up(bed, running, pass, warm)?;
        let base = checked(phase(bed, running, &rx, &to, secs, None)?.0, &rx)?;
        // A little longer than wrk's run: the flood is on before its first connection
        // and until its last. No request during it is a figure (0), not a failure.
        let limit = Duration::from_secs(secs as u64 + 2);
        let (flood, sent) = phase(bed, running, &rx, &to, secs, Some((&syns, limit)))?;
        Ok(FloodRun {
            base,
            flood,
            sent: sent.context("the flood phase sent no flood")?,
        })
    })();
    let _ = bed.topo.lb.ip(&format!("route del blackhole {route}"));
    let _ = bed
        .topo
        .client
        .exec("tc", &["qdisc", "del", "dev", "eth0", "root"]);
    clear_half_open(bed)?;
    flush_conntrack(&bed.topo.lb)?;
    finish(bed, running, result)
}

/// Gives the client's `eth0` a queue, as a host's NIC has (a veth has none): while the
/// LB's receive ring is full, the kernel holds the client's own packets back in it
/// instead of dropping them (veth stops a device's queue while the peer's ring is full;
/// `tc -s qdisc` counts the requeues). The flood's frames bypass it (the generator's
/// socket skips the qdisc) and are dropped where they find the ring full (`syn_in`).
/// Without the queue a client packet that met a full ring was lost and cost a
/// retransmission timeout: the figure measured the bed's ring, not the LB.
fn queue_client_packets(bed: &Bed) -> Result<()> {
    bed.topo
        .client
        .exec(
            "tc",
            &[
                "qdisc", "replace", "dev", "eth0", "root", "pfifo", "limit", "10000",
            ],
        )
        .context("a queue on the client's eth0")?;
    Ok(())
}

/// The LB's receive threads started (with `pass` for a system that needs it) and
/// `warm` seconds of new connections, unmeasured; the LB's receive and the client's
/// targets.
fn warmed_up<'a>(
    bed: &'a Bed,
    running: &Running,
    pass: Vec<XdpLink>,
    warm: u32,
) -> Result<(LbRx<'a>, Vec<SocketAddr>)> {
    let rx = LbRx::start(bed, pass)?;
    let to = running.targets(bed).0;
    if warm > 0 {
        wrk(bed, &to, "/small", CONCURRENCY, warm, true).context("the warm-up")?;
    }
    Ok((rx, to))
}

/// Removes the flood's half-open connections (`ss -K`) from the backends and the LB
/// namespace (a proxy's listener). Left there, they would answer the next system's
/// SYNs from the LB's address and a port the flood had, with the flood's SYN-ACK, for
/// a minute.
fn clear_half_open(bed: &Bed) -> Result<()> {
    let t = &bed.topo;
    let nss: Vec<&lb_tests::Netns> = t.backends.iter().map(|b| &b.ns).chain([&t.lb]).collect();
    let half_open = |ns: &lb_tests::Netns| -> Result<usize> {
        Ok(ns
            .exec("ss", &["-Htn", "state", "syn-recv"])?
            .lines()
            .count())
    };
    let left: usize = nss.iter().map(|ns| half_open(ns)).sum::<Result<usize>>()?;
    for ns in &nss {
        ns.exec("ss", &["-K", "-t", "-n", "state", "syn-recv"])
            .with_context(|| {
                format!(
                    "removing the flood's half-open connections in {}",
                    ns.name()
                )
            })?;
    }
    let after: usize = nss.iter().map(|ns| half_open(ns)).sum::<Result<usize>>()?;
    if after > 0 {
        bail!("{after} of the flood's {left} half-open connections are still there after `ss -K`");
    }
    Ok(())
}

/// Empties the LB namespace's connection tracking table (netlink's conntrack flush; no
/// conntrack tool is installed). A flood through nftables fills it with half-open
/// entries that last two minutes, and the next runs' connections would wait for room.
fn flush_conntrack(ns: &lb_tests::Netns) -> Result<()> {
    const FLUSH: &str = "import socket, struct\n\
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER\n\
        body = struct.pack('=BBH', 2, 0, 0)  # nfgenmsg: AF_INET\n\
        # ctnetlink (subsystem 1), IPCTNL_MSG_CT_DELETE (2) without a tuple: all; REQUEST|ACK\n\
        s.send(struct.pack('=IHHII', 16 + len(body), (1 << 8) | 2, 1 | 4, 1, 0) + body)\n\
        r = s.recv(4096)\n\
        kind, err = struct.unpack('=H', r[4:6])[0], struct.unpack('=i', r[16:20])[0]\n\
        if kind != 2 or err != 0:\n\
        \x20   raise SystemExit(f'netlink answered type {kind}, error {err}')\n";
    ns.exec("python3", &["-c", FLUSH])
        .with_context(|| format!("flushing the conntrack table of {}", ns.name()))
        .map(drop)
}

/// Fails if the system or a backend died, else passes `result` on.
fn finish<T>(bed: &mut Bed, running: &mut Running, result: Result<T>) -> Result<T> {
    running.check()?;
    bed.check_servers()?;
    result
}

/// A run that moved nothing says why rather than reporting 0 conn/s as a figure.
fn checked(p: Phase, rx: &LbRx) -> Result<Phase> {
    if p.wrk.requests == 0 {
        bail!(
            "no request completed in {:.1} s ({} connections opened, {} SYNs sent again; LB receive: {})",
            p.wrk.secs,
            p.tcp.active_opens,
            p.tcp.syn_retrans,
            rx.placement()
        );
    }
    Ok(p)
}

/// wrk for `secs` with `Connection: close`, measured; during a SYN flood bounded by
/// `flood` if given.
fn phase(
    bed: &Bed,
    running: &Running,
    rx: &LbRx,
    to: &[SocketAddr],
    secs: u32,
    flood: Option<(&Flood, Duration)>,
) -> Result<(Phase, Option<Sent>)> {
    let ours = bed.net_inodes();
    let pids = running.lb_pids();
    let counter = || -> Result<u64> { Ok(running.lb_counter(SNAT_EXHAUSTED)?.unwrap_or(0)) };
    let cpus =
        || -> Result<(Stat, Stat)> { Ok((Stat::read_cpu(LB_CPU)?, Stat::read_cpu(CLIENT_CPU)?)) };
    let (snat0, tcp0, napi0, cpus0) = (
        counter()?,
        TcpCounters::read(&bed.topo.client)?,
        rx.ticks(),
        cpus()?,
    );
    let a = cpu::snap(&pids, &ours)?;
    let client = || {
        wrk(bed, to, "/small", CONCURRENCY, secs, true).with_context(|| {
            format!(
                "the phase {} a flood",
                if flood.is_some() { "during" } else { "without" }
            )
        })
    };
    let (wrk, sent) = match flood {
        Some((syns, limit)) => {
            let (r, sent) = syns.during(bed, limit, client)?;
            (r, Some(sent))
        }
        None => (client(), None),
    };
    let b = cpu::snap(&pids, &ours)?;
    let (napi1, cpus1, tcp1, snat1) = (
        rx.ticks(),
        cpus()?,
        TcpCounters::read(&bed.topo.client)?,
        counter()?,
    );
    let wrk = wrk?;
    let (_, _, disturbed) = cpu::spent(&a, &b);
    let wall = b.at.duration_since(a.at).as_secs_f64();
    let share = |x: &Stat, y: &Stat| {
        let d = y.since(x);
        d.busy() as f64 / d.total().max(1) as f64
    };
    Ok((
        Phase {
            wrk,
            tcp: tcp1.since(&tcp0),
            snat_exhausted: snat1.saturating_sub(snat0),
            lb_busy: share(&cpus0.0, &cpus1.0),
            client_busy: share(&cpus0.1, &cpus1.1),
            napi_busy: napi1.saturating_sub(napi0) as f64 / cpu::ticks_per_sec() / wall.max(1e-6),
            flood_in: sent.map_or(0, |s| s.reached_lb),
            disturbed,
        },
        sent,
    ))
}

/// The report's line on where the LB's receive work ran.
pub fn placement_note() -> String {
    format!(
        "{}, wrk's {CLIENT_THREADS} threads on CPU {CLIENT_CPU}",
        napi::placement_note()
    )
}
