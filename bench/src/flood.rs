//! The SYN flood of the `synflood` workload: SYNs to the HTTP VIP from spoofed sources
//! inside [`SOURCES`] only, sent by the bench's generator ([`crate::sender`], the packet-rate
//! workloads' AF_PACKET sender on the client's veth, on the client's CPU, which it
//! shares with wrk), bounded in count and in time. Every SYN of a flood is a new flow
//! (its own source address and port), as a spoofing attacker's are.
//!
//! Paced to [`RATE`] in bursts of [`CHUNK`] SYNs, each sent at the generator's full speed
//! in `sendmmsg` calls of 256 (`syn_burst` in the report), faster than the LB takes SYNs
//! (about 1 µs each): a 256-frame veth ring absorbs little of a burst, and the SYNs that
//! find it full are dropped (the socket bypasses the client's qdisc; `syn_in` says how
//! many reached the ring). The client's own packets sent meanwhile wait in its eth0's
//! queue (`churn::synflood`). The burst shape is the one the earlier generator had:
//! `bench_gen`, an XDP program run with BPF_PROG_TEST_RUN in live-frames mode, which
//! this kernel (6.18.44-fc-v1300) refuses with EPERM; its calls of 4,096 SYNs were
//! sized so their page pools cost little, and flushed 256 frames at a time.

use crate::bed::{Bed, CLIENT_CPU, HTTP_PORT};
use crate::frames::{self, SYN, mac};
use crate::sender::{Generator, PORTS_PER_ADDR};
use crate::xdp::enter;
use anyhow::{Context, Result, anyhow};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The spoofed sources: 198.18.128.0/17, and only there (the generator counts up from
/// its first address, [`FLOWS`] keeps it inside).
pub const SOURCES: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 128, 0), 17);
/// SYNs per second the flood offers: the million (`Sent` says what the
/// generator reached).
pub const RATE: f64 = 1e6;
/// Flows the flood cycles through: every port of 512 addresses (198.18.128.0 to
/// 198.18.129.255), 32 million SYNs before a 5-tuple comes again, more than a flood of
/// a phase (30 s and 2 more at 1 Mpps) sends.
pub const FLOWS: u32 = PORTS_PER_ADDR * 512;
/// SYNs per burst.
const CHUNK: u64 = 4096;
/// Behind schedule by more than this, the flood gives up catching up (no bursts to
/// make up for lost time): it then sends less than [`RATE`], and says so.
const MAX_LAG: Duration = Duration::from_millis(5);

/// What a flood sent.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub syns: u64,
    /// Of them, SYNs the client's veth put in the LB's receive ring (the rest found it
    /// full).
    pub reached_lb: u64,
    pub secs: f64,
    /// Seconds spent sending bursts: the SYNs' rate within a burst is
    /// `syns / in_calls`.
    pub in_calls: f64,
}

impl Sent {
    /// SYNs per second it reached.
    pub fn rate(&self) -> f64 {
        self.syns as f64 / self.secs.max(1e-6)
    }

    /// SYNs per second within the generator's bursts.
    pub fn burst_rate(&self) -> f64 {
        self.syns as f64 / self.in_calls.max(1e-6)
    }
}

/// A flood ready to send: SYNs from [`SOURCES`] to a VIP's HTTP port, addressed to the
/// LB's client-side veth.
pub struct Flood {
    frame: Vec<u8>,
}

/// The flood against `vip`.
pub fn arm(bed: &Bed, vip: Ipv4Addr) -> Result<Flood> {
    let topo = &bed.topo;
    let frame = syn_frame(
        mac(&topo.client, "eth0")?,
        mac(&topo.lb, lb_tests::topology::LB_IF_A)?,
        vip,
    );
    Ok(Flood { frame })
}

fn syn_frame(client_mac: [u8; 6], lb_mac: [u8; 6], vip: Ipv4Addr) -> Vec<u8> {
    frames::frame((client_mac, lb_mac), SOURCES.0, vip, HTTP_PORT, SYN)
}

impl Flood {
    /// Runs `f` while the generator floods at [`RATE`] on the client's CPU; the flood
    /// stops when `f` returns, or after `limit`, or after `limit` worth of SYNs,
    /// whichever comes first.
    pub fn during<T>(
        &self,
        bed: &Bed,
        limit: Duration,
        f: impl FnOnce() -> T,
    ) -> Result<(T, Sent)> {
        let client = &bed.topo.client;
        let cpu: usize = CLIENT_CPU.parse().expect("a CPU number");
        let stop = AtomicBool::new(false);
        let cap = (RATE * limit.as_secs_f64()) as u64;
        std::thread::scope(|s| {
            let generator = s.spawn(|| -> Result<Sent> {
                enter(client)?;
                lb_tests::sys::pin_to_cpu(cpu).context("pinning the flood generator")?;
                let mut generator = Generator::open("eth0", &self.frame, FLOWS)?;
                let start = Instant::now();
                // When the SYNs sent so far were due, less the time given up as lag.
                let mut base = start;
                let mut on_time = 0u64;
                let (mut syns, mut reached_lb) = (0u64, 0u64);
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
                    let n = CHUNK.min(cap - syns);
                    let call = Instant::now();
                    let count = generator.send(n)?;
                    in_calls += call.elapsed();
                    syns += count.sent;
                    reached_lb += count.taken;
                    on_time += count.sent;
                }
                Ok(Sent {
                    syns,
                    reached_lb,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sender::Flows;

    #[test]
    fn flood_stays_inside_its_sources() {
        let (first, prefix) = SOURCES;
        let f = syn_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(198, 18, 100, 1),
        );
        let last = u32::from(Flows::new(&f, FLOWS).last_source());
        let mask = u32::MAX << (32 - prefix);
        assert_eq!(u32::from(first) & mask, u32::from(first));
        assert_eq!(last & mask, u32::from(first), "{}", Ipv4Addr::from(last));
        assert_eq!(last, u32::from(first) + 511, "512 sources");
        assert!(
            first.octets()[..2] == [198, 18] && prefix >= 15,
            "inside 198.18.0.0/15"
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
