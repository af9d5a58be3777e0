//! The SYN flood of the `synflood` workload: SYNs to the HTTP VIP from spoofed sources
//! inside [`SOURCES`] only, sent by `bench_gen` (the packet-rate workloads' XDP
//! generator, BPF_PROG_TEST_RUN live frames on the client's veth, on the client's CPU)
//! as fast as it goes, bounded in count and in time. Every SYN of a flood is a new flow
//! (its own source address and port), as a spoofing attacker's are.
//!
//! Paced in calls of [`CHUNK`] SYNs. Each BPF_PROG_TEST_RUN call makes a page pool of
//! its own and tears it down at the end; a pool whose frames are still in flight lingers
//! about a second, and every teardown walks all lingering ones
//! (`mem_allocator_disconnect`). In calls of 256 SYNs at 1 Mpps that walk took 60% of
//! the client's CPU (perf), so the generator reached 0.37 Mpps and wrk, on the same CPU,
//! was starved; in calls of 4,096 it costs little and the flood reaches 1 Mpps. Within a
//! call the SYNs go at the generator's full speed, in flushes of 256 (the live-frames
//! batch; `syn_burst` in the report), faster than the LB takes SYNs (about 1 µs each),
//! and a 256-frame veth ring absorbs little of a burst: part of each finds the ring full
//! (`syn_in` says how much reached it). The client's own packets sent meanwhile wait in
//! its eth0's queue (`churn::synflood`).
//!
//! A generator call normally also costs two RCU grace periods (about 20 ms here, as the
//! kernel puts the program into its XDP dispatcher and takes it out); with the generator
//! also attached to an idle interface (a veth of its own in the client namespace) for the
//! flood's duration it stays in the dispatcher and a call costs far less.

use crate::bed::{Bed, CLIENT_CPU, HTTP_PORT};
use crate::frames::{self, SYN, mac, words};
use crate::sys;
use crate::xdp::{enter, ifindex};
use anyhow::{Context, Result, anyhow};
use aya::programs::xdp::XdpLink;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The spoofed sources: 198.18.128.0/17, and only there (the generator counts up from
/// its first address, [`FLOWS`] keeps it inside).
pub const SOURCES: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 128, 0), 17);
/// SYNs per second the flood offers: the million (`Sent` says what the
/// generator reached).
pub const RATE: f64 = 1e6;
/// Source ports per address in the generator (`bench_gen`'s 1024..65024).
const PORTS_PER_ADDR: u32 = 64_000;
/// Flows the flood cycles through: every port of 512 addresses (198.18.128.0 to
/// 198.18.129.255), 32 million SYNs before a 5-tuple comes again, more than a flood of
/// a phase (30 s and 2 more at 1 Mpps) sends.
pub const FLOWS: u32 = PORTS_PER_ADDR * 512;
/// SYNs per generator call: few enough calls that their page pools cost little (see
/// the module's doc).
const CHUNK: u64 = 4096;
/// Behind schedule by more than this, the flood gives up catching up (no bursts to
/// make up for lost time): it then sends less than [`RATE`], and says so.
const MAX_LAG: Duration = Duration::from_millis(5);
/// The idle interface in the client namespace (one end of a veth of its own) that holds the generator (see above).
const HOLDER: &str = "gen0";

/// What a flood sent.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub syns: u64,
    pub secs: f64,
    /// Seconds spent inside the generator's calls: the SYNs' rate within a burst is
    /// `syns / in_calls`.
    pub in_calls: f64,
}

impl Sent {
    /// SYNs per second it reached.
    pub fn rate(&self) -> f64 {
        self.syns as f64 / self.secs.max(1e-6)
    }

    /// SYNs per second within the generator's calls (its bursts).
    pub fn burst_rate(&self) -> f64 {
        self.syns as f64 / self.in_calls.max(1e-6)
    }
}

/// Loads the SYN template into the generator (SYNs from [`SOURCES`] to `vip`'s HTTP
/// port, addressed to the LB's client-side veth) and holds it in the dispatcher until
/// the returned link drops.
pub fn arm(bed: &mut Bed, vip: Ipv4Addr) -> Result<XdpLink> {
    let topo = &bed.topo;
    let frame = syn_frame(
        mac(&topo.client, "eth0")?,
        mac(&topo.lb, lb_tests::topology::LB_IF_A)?,
        vip,
    );
    bed.xdp.set_generator(FLOWS, SOURCES.0, words(&frame))?;
    if topo.client.ip(&format!("link show {HOLDER}")).is_err() {
        topo.client.ip_batch(&format!(
            "link add {HOLDER} type veth peer name {HOLDER}p\nlink set {HOLDER} up\n"
        ))?;
    }
    bed.xdp.hold_generator(&bed.topo.client, HOLDER)
}

fn syn_frame(client_mac: [u8; 6], lb_mac: [u8; 6], vip: Ipv4Addr) -> Vec<u8> {
    frames::frame((client_mac, lb_mac), SOURCES.0, vip, HTTP_PORT, SYN)
}

/// Runs `f` while the generator (armed with [`arm`]) floods at [`RATE`] on the client's
/// CPU; the flood stops when `f` returns, or after `limit`, or after `limit` worth of
/// SYNs, whichever comes first.
pub fn during<T>(bed: &Bed, limit: Duration, f: impl FnOnce() -> T) -> Result<(T, Sent)> {
    let fd = bed.xdp.generator_fd()?;
    let client = &bed.topo.client;
    let cpu: usize = CLIENT_CPU.parse().expect("a CPU number");
    let stop = AtomicBool::new(false);
    let cap = (RATE * limit.as_secs_f64()) as u64;
    std::thread::scope(|s| {
        let generator = s.spawn(|| -> Result<Sent> {
            enter(client)?;
            lb_tests::sys::pin_to_cpu(cpu).context("pinning the flood generator")?;
            let ifindex = ifindex("eth0")?;
            // The program writes the whole template into each frame: these bytes do not
            // matter.
            let frame = vec![0u8; frames::FRAME_LEN];
            let start = Instant::now();
            // When the SYNs sent so far were due, less the time given up as lag.
            let mut base = start;
            let mut on_time = 0u64;
            let mut syns = 0u64;
            let mut in_calls = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) && start.elapsed() < limit && syns < cap {
                let due = base + Duration::from_secs_f64(on_time as f64 / RATE);
                let now = Instant::now();
                if now < due {
                    std::thread::sleep(due - now);
                    continue;
                }
                if now - due > MAX_LAG {
                    (base, on_time) = (now, 0);
                }
                let n = CHUNK.min(cap - syns) as u32;
                let call = Instant::now();
                sys::test_run_live(fd.as_raw_fd(), &frame, ifindex, n)
                    .context("BPF_PROG_TEST_RUN (live frames) of bench_gen")?;
                in_calls += call.elapsed();
                syns += n as u64;
                on_time += n as u64;
            }
            Ok(Sent {
                syns,
                secs: start.elapsed().as_secs_f64(),
                in_calls: in_calls.as_secs_f64(),
            })
        });
        let out = f();
        stop.store(true, Ordering::Relaxed);
        let sent = generator
            .join()
            .map_err(|_| anyhow!("the flood generator panicked"))??;
        Ok((out, sent))
    })
}

/// Frames the client's veth handed to the LB's (`tx_queue_N_xdp_xmit` of `ethtool -S`
/// on the client's `eth0`, all queues): the flood's SYNs that reached the LB's receive
/// ring, where the generator's bursts found room. The client's own connections go the
/// ordinary way and are not counted.
pub fn reached_lb(bed: &Bed) -> Result<u64> {
    let out = bed.topo.client.exec("ethtool", &["-S", "eth0"])?;
    parse_xdp_xmit(&out).context("no tx_queue_N_xdp_xmit in `ethtool -S eth0` of the client")
}

fn parse_xdp_xmit(ethtool: &str) -> Option<u64> {
    let counts: Vec<u64> = ethtool
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| k.starts_with("tx_queue_") && k.ends_with("_xdp_xmit"))
        .filter_map(|(_, v)| v.trim().parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_stays_inside_its_sources() {
        let (first, prefix) = SOURCES;
        let last = u32::from(first) + (FLOWS - 1) / PORTS_PER_ADDR;
        let mask = u32::MAX << (32 - prefix);
        assert_eq!(u32::from(first) & mask, u32::from(first));
        assert_eq!(last & mask, u32::from(first), "{}", Ipv4Addr::from(last));
        assert!(
            first.octets()[..2] == [198, 18] && prefix >= 15,
            "inside 198.18.0.0/15"
        );
    }

    #[test]
    fn counts_frames_handed_to_the_peer() {
        let out = "NIC statistics:\n     peer_ifindex: 2\n     rx_queue_0_xdp_packets: 7\n     tx_queue_0_xdp_xmit: 1000\n     tx_queue_0_xdp_xmit_errors: 50\n     tx_queue_1_xdp_xmit: 24\n";
        assert_eq!(parse_xdp_xmit(out), Some(1024));
        assert_eq!(
            parse_xdp_xmit("NIC statistics:\n     peer_ifindex: 2\n"),
            None
        );
    }

    #[test]
    fn syn_frame_is_a_syn_to_the_http_port() {
        let f = syn_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(198, 18, 100, 1),
        );
        assert_eq!(&f[26..30], &[198, 18, 128, 0]);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), HTTP_PORT);
        assert_eq!(f[47], SYN);
    }
}
