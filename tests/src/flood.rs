//! A bounded SYN flood for the end-to-end tests: spoofed TCP SYNs from sources inside
//! [`SOURCES`] only, each from its own address and port as a spoofing attacker's are,
//! sent from a raw socket (IP_HDRINCL) in a namespace at a given rate on a thread of its
//! own, stopped by count, by time, or when the test lets go of it.
//!
//! The LB's answers to those sources must go nowhere: [`sink_replies`] routes the
//! sources to nowhere in the LB's namespace, so nothing leaves the test's namespaces.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::Netns;
use crate::packet::{Packet, flags};

/// The spoofed sources: 198.18.128.0/17, and only there.
pub const SOURCES: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 128, 0), 17);
/// Host addresses of [`SOURCES`] the flood uses: all but the network and broadcast ones.
const ADDRS: u32 = (1 << (32 - SOURCES.1)) - 2;
/// Source ports the flood uses per address, from [`FIRST_PORT`].
const PORTS: u32 = 64_000;
const FIRST_PORT: u16 = 1024;
/// SYNs sent between looks at the clock and the stop flag.
const BURST: u64 = 256;
/// The MSS option every SYN carries (kind 2, length 4, 1460), as a real client's does.
const MSS_OPTION: [u8; 4] = [2, 4, 0x05, 0xb4];
/// The LB namespace's end of [`Sink::DeadLink`]'s veth, its other end (down) and the
/// next hop behind it (outside [`SOURCES`], resolved once and for good).
const SINK_IFACE: &str = "flood0";
const SINK_PEER: &str = "flood0p";
const SINK_HOP: Ipv4Addr = Ipv4Addr::new(198, 19, 254, 2);
const SINK_HOP_MAC: &str = "02:00:00:00:fe:02";

/// What to flood, how fast and how much.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    pub target: SocketAddrV4,
    /// SYNs per second offered.
    pub rate: u32,
    /// SYNs in all: the flood stops once it has sent them.
    pub count: u64,
    /// The flood stops after this long whatever it has sent.
    pub max_time: Duration,
}

/// What a flood sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// SYNs the kernel took (sendto succeeded).
    pub syns: u64,
    /// Sends the kernel refused (a full queue, ENOBUFS): not counted in `syns`.
    pub refused: u64,
    /// From the first SYN to the last.
    pub secs: f64,
}

impl Sent {
    /// SYNs per second it reached.
    pub fn rate(&self) -> f64 {
        self.syns as f64 / self.secs.max(1e-6)
    }
}

/// A flood under way on its own thread. Dropping it stops the flood and waits for the
/// thread, so a failing test leaves nothing sending.
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Sent>>>,
}

impl Running {
    /// Waits for the flood to reach its count or its time limit.
    pub fn wait(mut self) -> Result<Sent> {
        self.join()
    }

    /// Stops the flood now and returns what it sent.
    pub fn stop(mut self) -> Result<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    fn join(&mut self) -> Result<Sent> {
        let thread = self.thread.take().context("the flood was already joined")?;
        thread
            .join()
            .map_err(|_| anyhow!("the flood thread panicked"))?
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts `flood` from namespace `ns` (whose routes take the target's packets to the
/// LB). Returns once its raw socket is open in `ns`, so a flood that cannot run fails
/// here.
pub fn start(ns: &Netns, flood: Flood) -> Result<Running> {
    if flood.rate == 0 {
        bail!("a flood needs a rate above 0");
    }
    let path = ns.path();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("syn-flood".to_owned())
        .spawn(move || -> Result<Sent> {
            let sock = open(&path);
            let ok = sock.is_ok();
            let _ = ready_tx.send(sock.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")));
            if !ok {
                return Ok(Sent::default());
            }
            send(&sock?, &flood, &flag)
        })
        .context("spawning the flood thread")?;
    let running = Running {
        stop,
        thread: Some(thread),
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(running),
        Ok(Err(e)) => bail!("opening the flood's raw socket in {}: {e}", ns.name()),
        Err(_) => bail!("the flood thread ended before opening its socket"),
    }
}

/// A raw IPv4 socket opened inside the namespace at `path` (IPPROTO_RAW: we write the IP
/// header ourselves, spoofed source included).
fn open(path: &std::path::Path) -> Result<Socket> {
    crate::sys::enter_netns(path).with_context(|| format!("entering {}", path.display()))?;
    let sock = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .context("socket(AF_INET, SOCK_RAW, IPPROTO_RAW)")?;
    // A deep send buffer: bursts wait in it rather than fail.
    sock.set_send_buffer_size(4 << 20)
        .context("SO_SNDBUF on the raw socket")?;
    Ok(sock)
}

/// Sends at `flood.rate` until the count, the time limit or `stop`. A refused send
/// (ENOBUFS) is counted and the next SYN tried; any other error ends the flood.
fn send(sock: &Socket, flood: &Flood, stop: &AtomicBool) -> Result<Sent> {
    let to = SockAddr::from(SocketAddr::V4(flood.target));
    let mut sent = Sent::default();
    let mut i = 0u64;
    let start = Instant::now();
    while sent.syns < flood.count && !stop.load(Ordering::Relaxed) {
        let elapsed = start.elapsed();
        if elapsed >= flood.max_time {
            break;
        }
        let due = ((elapsed.as_secs_f64() * f64::from(flood.rate)) as u64).min(flood.count);
        if due <= sent.syns {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        for _ in 0..(due - sent.syns).min(BURST) {
            let packet = syn(i, *flood.target.ip(), flood.target.port());
            i += 1;
            match sock.send_to(&packet, &to) {
                Ok(_) => sent.syns += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => sent.refused += 1,
                Err(e) => return Err(e).context("sending a SYN on the raw socket"),
            }
        }
    }
    sent.secs = start.elapsed().as_secs_f64();
    Ok(sent)
}

/// The source of the flood's `i`th SYN: addresses first, then ports, so consecutive SYNs
/// come from different addresses and no two of the first billions share a 5-tuple.
pub fn source(i: u64) -> SocketAddrV4 {
    let addr = u32::from(SOURCES.0) + 1 + (i % u64::from(ADDRS)) as u32;
    let port = FIRST_PORT + ((i / u64::from(ADDRS)) % u64::from(PORTS)) as u16;
    SocketAddrV4::new(Ipv4Addr::from(addr), port)
}

/// The IPv4 packet of the flood's `i`th SYN to `dst:dport`, checksums included.
fn syn(i: u64, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let src = source(i);
    let mut p = Packet::tcp(
        IpAddr::V4(*src.ip()),
        src.port(),
        IpAddr::V4(dst),
        dport,
        flags::SYN,
    );
    // Sequence numbers and IP ids that differ from SYN to SYN, as a real stack's do.
    p.seq = (i as u32).wrapping_mul(2_654_435_761);
    p.ip_id = i as u16;
    p.tcp_options = MSS_OPTION.to_vec();
    // The builder makes an Ethernet frame; the raw socket takes the IP packet.
    p.build().split_off(ETH_HEADER)
}

/// Length of the untagged Ethernet header [`Packet::build`] puts in front.
const ETH_HEADER: usize = 14;

/// Where the LB's namespace sends what it answers the flood's sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// A blackhole route: the XDP program's route lookup fails and it drops the reply,
    /// as cheap as it gets (for `nat` mode, where the program answers in XDP).
    Blackhole,
    /// A route that works, through a permanent neighbour, into a veth whose other end
    /// is down, which discards what it is given: the kernel's own replies (a
    /// listener's SYN-ACKs, cookies included) are only made when their route lookup
    /// succeeds. (No `dummy` device: its module may be missing.)
    DeadLink,
}

/// Routes [`SOURCES`] to `sink` in `lb` (the LB's namespace). Reverse-path filtering is
/// turned off there, so the flood's SYNs on the client side are not dropped for
/// arriving where their sources are not routed.
pub fn sink_replies(lb: &Netns, sink: Sink) -> Result<()> {
    let (net, len) = SOURCES;
    match sink {
        Sink::Blackhole => lb.ip(&format!("route add blackhole {net}/{len}"))?,
        Sink::DeadLink => lb.ip_batch(&format!(
            "link add {SINK_IFACE} type veth peer name {SINK_PEER}\n\
             link set {SINK_IFACE} up\n\
             neigh add {SINK_HOP} lladdr {SINK_HOP_MAC} dev {SINK_IFACE} nud permanent\n\
             route add {net}/{len} via {SINK_HOP} dev {SINK_IFACE} onlink\n"
        ))?,
    };
    lb.sysctl(&[
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ])?;
    for iface in lb.exec("ls", &["/sys/class/net"])?.split_whitespace() {
        lb.sysctl(&[&format!("net.ipv4.conf.{iface}.rp_filter=0")])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inside_sources(a: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - SOURCES.1);
        u32::from(a) & mask == u32::from(SOURCES.0)
    }

    #[test]
    fn sources_stay_inside_198_18_128_0_17() {
        assert!(SOURCES.0.octets()[..2] == [198, 18] && SOURCES.1 >= 15);
        for i in [0, 1, u64::from(ADDRS) - 1, u64::from(ADDRS), 10_000_000_000] {
            let s = source(i);
            assert!(inside_sources(*s.ip()), "{i}: {s}");
            assert_ne!(*s.ip(), SOURCES.0, "not the network address");
            assert_ne!(*s.ip(), Ipv4Addr::new(198, 18, 255, 255), "not broadcast");
            assert!(s.port() >= FIRST_PORT);
        }
    }

    #[test]
    fn every_syn_of_a_flood_is_a_new_flow() {
        let n = 400_000u64;
        let seen: std::collections::HashSet<SocketAddrV4> = (0..n).map(source).collect();
        assert_eq!(seen.len() as u64, n);
        assert_ne!(
            source(0).ip(),
            source(1).ip(),
            "consecutive SYNs change address"
        );
    }

    #[test]
    fn syn_is_a_checksummed_ipv4_syn_with_mss() {
        let dst = Ipv4Addr::new(198, 18, 100, 1);
        let ip = syn(5, dst, 80);
        let mut frame = vec![0u8; ETH_HEADER];
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        frame.extend(&ip);
        let p = crate::packet::decode(&frame).unwrap();
        assert_eq!(p.src, IpAddr::V4(*source(5).ip()));
        assert_eq!(p.sport, source(5).port());
        assert_eq!((p.dst, p.dport), (IpAddr::V4(dst), 80));
        assert_eq!(p.flags, flags::SYN);
        assert_eq!(p.tcp_options, MSS_OPTION);
        assert_eq!(ip.len(), 20 + 24);
    }
}
