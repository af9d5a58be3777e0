//! `lb decap`: the backends' half of direct server return. Attaches `lb_decap` (XDP) to
//! the interface the LB's encapsulated packets arrive on, puts the VIPs on `lo` so the
//! stack accepts the inner packets, keeps the host from answering ARP for them, and
//! with `--clamp-mss` attaches `lb_decap_mss` (TC egress). Everything it did is undone
//! when it stops (SIGTERM, SIGINT); its links are not pinned, so even a crash detaches
//! the programs.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use clap::Args;
use lb_common::decap::{COUNTER_NAMES, DecapConfig, DecapVip, NUM_COUNTERS};
use lb_common::encap::DEFAULT_GUE_PORT;
use lb_common::maps::names;
use tracing::{info, warn};

use crate::config::Cidr;
use crate::dataplane::object;
use crate::sys;

#[derive(Debug, Args)]
pub struct DecapArgs {
    /// The interface the LB's encapsulated packets arrive on.
    #[arg(long, value_name = "IF")]
    pub iface: String,
    /// A VIP of the DSR services this backend serves; repeat per VIP.
    #[arg(long = "vip", value_name = "IP")]
    pub vips: Vec<String>,
    /// The services' encapsulation: ipip (default), gue or l2.
    #[arg(long, value_name = "ENCAP")]
    pub encap: Option<String>,
    /// The GUE port (gue only; default 6080).
    #[arg(long, value_name = "PORT")]
    pub gue_port: Option<u16>,
    /// Take encapsulated packets only from these sources (the LB hosts); repeat.
    #[arg(long = "from", value_name = "CIDR")]
    pub from: Vec<String>,
    /// Lower the MSS the VIPs' SYN-ACKs announce to this, so clients send segments that
    /// fit once encapsulated (e.g. 1440 for IPv4 gue on a 1500-byte path).
    #[arg(long, value_name = "BYTES")]
    pub clamp_mss: Option<u16>,
}

/// `lb decap`'s checked settings.
#[derive(Debug)]
struct Settings {
    iface: String,
    ifindex: u32,
    vips: Vec<IpAddr>,
    ipip: bool,
    gue_port: u16,
    from: Vec<Cidr>,
    clamp_mss: u16,
}

/// A bad flag: the flag, the value and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {value:?}: {reason}")]
pub struct UsageError {
    flag: &'static str,
    value: String,
    reason: String,
}

fn usage(flag: &'static str, value: impl Into<String>, reason: impl Into<String>) -> UsageError {
    UsageError {
        flag,
        value: value.into(),
        reason: reason.into(),
    }
}

impl DecapArgs {
    fn settings(&self) -> Result<Settings, UsageError> {
        if self.vips.is_empty() {
            return Err(usage("--vip", "", "give at least one VIP"));
        }
        let mut vips = Vec::new();
        for v in &self.vips {
            let ip: IpAddr = v
                .parse()
                .map_err(|_| usage("--vip", v, "not an IPv4 or IPv6 address"))?;
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return Err(usage("--vip", v, "a VIP is a unicast address"));
            }
            if !vips.contains(&ip) {
                vips.push(ip);
            }
        }
        let encap = self.encap.as_deref().unwrap_or("ipip");
        let (ipip, gue) = match encap {
            "ipip" => (true, false),
            "gue" => (false, true),
            "l2" => (false, false),
            other => return Err(usage("--encap", other, "expected ipip, gue or l2")),
        };
        let gue_port = match (gue, self.gue_port) {
            (true, None) => DEFAULT_GUE_PORT,
            (true, Some(0)) => return Err(usage("--gue-port", "0", "use a port from 1 to 65535")),
            (true, Some(p)) => p,
            (false, Some(p)) => {
                return Err(usage(
                    "--gue-port",
                    p.to_string(),
                    "a GUE port needs --encap gue",
                ));
            }
            (false, None) => 0,
        };
        let from = self
            .from
            .iter()
            .map(|c| c.parse::<Cidr>().map_err(|r| usage("--from", c, r)))
            .collect::<Result<Vec<_>, _>>()?;
        if !from.is_empty() && !ipip && !gue {
            return Err(usage(
                "--from",
                &self.from[0],
                "l2 has no outer header whose source could be checked",
            ));
        }
        let clamp_mss = match self.clamp_mss {
            None => 0,
            Some(m) if (536..=9000).contains(&m) => m,
            Some(m) => return Err(usage("--clamp-mss", m.to_string(), "use 536 to 9000 bytes")),
        };
        let ifindex = sys::ifindex(&self.iface)
            .map_err(|e| usage("--iface", &self.iface, format!("no such interface ({e})")))?;
        Ok(Settings {
            iface: self.iface.clone(),
            ifindex,
            vips,
            ipip,
            gue_port,
            from,
            clamp_mss,
        })
    }
}

/// Runs `lb decap` until SIGTERM or SIGINT. A usage error comes back as [`UsageError`]
/// (exit 2) with nothing changed.
pub fn run(args: &DecapArgs) -> Result<()> {
    let s = args.settings()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut undo = Undo::default();
    let result = rt.block_on(serve(&s, &mut undo));
    undo.run();
    result
}

/// Sets everything up, then waits for SIGTERM or SIGINT, logging the counters when they
/// change (every 10 s at most).
async fn serve(s: &Settings, undo: &mut Undo) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut ebpf = load()?;
    write_maps(&mut ebpf, s)?;
    attach(&mut ebpf, s)?;
    for vip in &s.vips {
        undo.add_vip(*vip)?;
    }
    if s.vips.iter().any(IpAddr::is_ipv4) {
        undo.quiet_arp(&s.iface)?;
    }
    info!(iface = %s.iface, vips = ?s.vips, "decapsulating; the VIPs are on lo");
    let mut last = counters(&ebpf)?;
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                let now = counters(&ebpf)?;
                if now != last {
                    info!("{}", line(&now));
                    last = now;
                }
            }
        }
    }
    println!("{}", line(&counters(&ebpf)?));
    // Dropping the object detaches the programs (their links are not pinned).
    drop(ebpf);
    Ok(())
}

/// The embedded object with only what `lb decap` needs sized: the load balancer's own
/// tables are created at their smallest, as nothing here uses them.
fn load() -> Result<Ebpf> {
    let bytes = object::require()?;
    let mut loader = EbpfLoader::new();
    for map in [
        names::FLOWS,
        names::HALF_OPEN,
        names::REVERSE_NAT,
        names::MAGLEV,
        names::SOURCE_BUCKETS,
        names::TRUSTED_SOURCES,
        names::SPLICE,
        names::SPLICE_HOOK,
    ] {
        loader.map_max_entries(map, 64);
    }
    loader.load(bytes).context("loading the eBPF object")
}

fn write_maps(ebpf: &mut Ebpf, s: &Settings) -> Result<()> {
    let cfg = DecapConfig {
        gue_port: s.gue_port.to_be(),
        from_v4: u8::from(s.from.iter().any(|c| c.addr.is_ipv4())),
        from_v6: u8::from(s.from.iter().any(|c| c.addr.is_ipv6())),
        ipip: u8::from(s.ipip),
        _pad: 0,
        clamp_mss: s.clamp_mss,
    };
    let mut config: Array<&mut MapData, DecapConfig> = map(ebpf, names::DECAP_CONFIG)?;
    config.set(0, cfg, 0)?;
    let mut vips: HashMap<&mut MapData, DecapVip, u8> = map(ebpf, names::DECAP_VIPS)?;
    for vip in &s.vips {
        let (addr, family) = lb_common::addr::ip_to_words(*vip);
        vips.insert(
            DecapVip {
                addr,
                family,
                _pad: [0; 3],
            },
            1,
            0,
        )?;
    }
    for c in &s.from {
        match c.addr {
            IpAddr::V4(a) => {
                let mut t: LpmTrie<&mut MapData, [u8; 4], u8> = map(ebpf, names::DECAP_FROM4)?;
                t.insert(&Key::new(u32::from(c.prefix), a.octets()), 1, 0)?;
            }
            IpAddr::V6(a) => {
                let mut t: LpmTrie<&mut MapData, [u8; 16], u8> = map(ebpf, names::DECAP_FROM6)?;
                t.insert(&Key::new(u32::from(c.prefix), a.octets()), 1, 0)?;
            }
        }
    }
    Ok(())
}

fn map<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf
        .map_mut(name)
        .with_context(|| format!("the eBPF object has no map {name}"))?;
    T::try_from(m).with_context(|| format!("map {name}"))
}

/// Attaches `lb_decap` (native XDP, else skb mode with a warning) and, with
/// `--clamp-mss`, `lb_decap_mss` on TC egress.
fn attach(ebpf: &mut Ebpf, s: &Settings) -> Result<()> {
    let prog: &mut Xdp = ebpf
        .program_mut(names::PROG_DECAP)
        .context("the eBPF object has no lb_decap")?
        .try_into()?;
    prog.load().context("loading lb_decap")?;
    if let Err(e) = prog.attach_to_if_index(s.ifindex, XdpMode::Driver) {
        warn!(iface = %s.iface, cause = %e, "native XDP attach failed; falling back to skb (generic) mode, which is slower");
        prog.attach_to_if_index(s.ifindex, XdpMode::Skb)
            .with_context(|| format!("attaching lb_decap to {} (another XDP program may be attached: `ip link show`)", s.iface))?;
    }
    if s.clamp_mss != 0 {
        let tc: &mut SchedClassifier = ebpf
            .program_mut(names::PROG_DECAP_MSS)
            .context("the eBPF object has no lb_decap_mss")?
            .try_into()?;
        tc.load().context("loading lb_decap_mss")?;
        tc.attach_with_options(
            &s.iface,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .with_context(|| format!("attaching lb_decap_mss to {} (TC egress)", s.iface))?;
    }
    Ok(())
}

/// The counters summed over CPUs, in `COUNTER_NAMES` order.
fn counters(ebpf: &Ebpf) -> Result<Vec<u64>> {
    let m = ebpf
        .map(names::DECAP_COUNTERS)
        .context("the eBPF object has no map DECAP_COUNTERS")?;
    let per_cpu: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(m)?;
    (0..NUM_COUNTERS)
        .map(|i| Ok(per_cpu.get(&i, 0)?.iter().sum()))
        .collect()
}

fn line(values: &[u64]) -> String {
    COUNTER_NAMES
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What `lb decap` changed on the host, undone in reverse order.
#[derive(Default)]
struct Undo {
    /// VIPs it added to `lo` (ones already there stay).
    vips: Vec<IpAddr>,
    /// Sysctls it changed, with their old values.
    sysctls: Vec<(String, String)>,
}

impl Undo {
    fn add_vip(&mut self, vip: IpAddr) -> Result<()> {
        let (fam, prefix) = if vip.is_ipv4() {
            ("-4", 32)
        } else {
            ("-6", 128)
        };
        let shown = ip(&[fam, "-o", "addr", "show", "dev", "lo"])?;
        if shown
            .split_whitespace()
            .any(|w| w == format!("{vip}/{prefix}"))
        {
            info!(%vip, "the VIP is on lo already");
            return Ok(());
        }
        let with_prefix = format!("{vip}/{prefix}");
        let mut args = vec![fam, "addr", "add", &with_prefix, "dev", "lo"];
        if vip.is_ipv6() {
            args.push("nodad");
        }
        ip(&args)?;
        self.vips.push(vip);
        Ok(())
    }

    /// The host must not answer ARP for a VIP on `lo` (it would draw the VIP's traffic
    /// away from the LB): reply only for addresses of the interface asked on, and
    /// announce only those.
    fn quiet_arp(&mut self, iface: &str) -> Result<()> {
        for dev in ["all", iface] {
            self.sysctl(&format!("net/ipv4/conf/{dev}/arp_ignore"), "1")?;
            self.sysctl(&format!("net/ipv4/conf/{dev}/arp_announce"), "2")?;
        }
        Ok(())
    }

    fn sysctl(&mut self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{key}");
        let old = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        std::fs::write(&path, value).with_context(|| format!("writing {path}"))?;
        self.sysctls.push((path, old.trim().to_string()));
        Ok(())
    }

    fn run(&mut self) {
        for (path, old) in self.sysctls.drain(..).rev() {
            if let Err(e) = std::fs::write(&path, &old) {
                warn!(path, cause = %e, "could not restore a sysctl");
            }
        }
        for vip in self.vips.drain(..) {
            let (fam, prefix) = if vip.is_ipv4() {
                ("-4", 32)
            } else {
                ("-6", 128)
            };
            let with_prefix = format!("{vip}/{prefix}");
            if let Err(e) = ip(&[fam, "addr", "del", &with_prefix, "dev", "lo"]) {
                warn!(%vip, cause = %e, "could not remove the VIP from lo");
            }
        }
    }
}

fn ip(args: &[&str]) -> Result<String> {
    Ok(crate::iproute::ip(args)?)
}
