//! The packet-rate workloads: small TCP frames at the highest rate this machine makes,
//! cycling through 1, 1,000 or 100,000 flows, into the LB namespace's XDP path, and
//! counted where they leave it.
//!
//! The frames come from `bench_gen` (the `lb-bench-xdp` object) run with
//! BPF_PROG_TEST_RUN in live-frames mode on the client's veth: the kernel sends each
//! frame with XDP_TX, so no socket, qdisc or user-space copy limits the rate. They
//! enter the LB's `lb0`, where lb's `lb_xdp` (or, for the ceiling, `bench_redirect`)
//! sends them out of `lb1`, and `bench_sink` on the switch's end of that veth counts
//! and drops them. Frames go to the `pps` service ([`PPS_PORT`]), whose backends are
//! never health-checked, and the sink drops only TCP to the `pps` backends' ports, so
//! the other workloads' traffic passes it untouched.

use crate::bed::{Bed, CLIENT_CPU, LB_CPU, PPS_PORT};
use crate::cpu::Stat;
use crate::sys;
use crate::systems::{Running, System};
use crate::xdp::{TEMPLATE_WORDS, enter, ifindex};
use anyhow::{Context, Result, anyhow, bail};
use lb_tests::Netns;
use lb_tests::packet::{Packet, flags};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// The frame: 14 Ethernet + 20 IPv4 + 20 TCP + 6 padding (a 64-byte frame on a wire,
/// with its FCS).
const FRAME_LEN: usize = 60;
/// Frames of the first BPF_PROG_TEST_RUN call. Every call waits for two RCU grace
/// periods (the kernel installs the program in its XDP dispatcher and removes it), during
/// which nothing is sent, so later calls are sized to last about [`CALL`] each.
const FIRST_CALL: u32 = 1 << 18;
const CALL: Duration = Duration::from_secs(1);
/// The most frames of one call (a few seconds at the rates a veth reaches), which bounds
/// how far a run can overshoot its time.
const MAX_CALL: u32 = 1 << 24;
/// Unmeasured time first: every flow is created and the rings fill.
const WARMUP: Duration = Duration::from_secs(1);

/// What one packet-rate run measured.
pub struct Rate {
    /// Frames per second that came out of the system under test.
    pub delivered: f64,
    /// Frames per second the generator sent.
    pub offered: f64,
    /// Share of the LB's CPU busy meanwhile (its NAPI thread: the system under test).
    pub lb_cpu: f64,
    /// Share of the client's CPU busy meanwhile (the generator).
    pub client_cpu: f64,
}

/// Sends frames to the `pps` service through `running` for `secs` after the warm-up,
/// cycling through `flows` flows, and measures what comes out.
pub fn run(bed: &mut Bed, running: &mut Running, flows: u32, secs: u32) -> Result<Rate> {
    // A kernel path has no XDP program of its own on the LB's client side.
    let _pass = match running.system {
        System::NftDnat => Some(
            bed.xdp
                .attach_pass(&bed.topo.lb, lb_tests::topology::LB_IF_A)?,
        ),
        _ => None,
    };
    let topo = &bed.topo;
    let frame = frame(
        mac(&topo.client, "eth0")?,
        mac(&topo.lb, lb_tests::topology::LB_IF_A)?,
        topo.client_v4,
        running.system.vip(),
    );
    bed.xdp
        .set_generator(flows, topo.client_v4, words(&frame))?;
    let (xdp, topo) = (&bed.xdp, &bed.topo);
    let _napi = ThreadedNapi::start(&topo.lb, lb_tests::topology::LB_IF_A, LB_CPU)?;
    let gen_fd = xdp.generator_fd()?;
    let client = &topo.client;
    let cpu: usize = CLIENT_CPU.parse().expect("a CPU number");
    let measure = Duration::from_secs(secs.into());
    let rate = std::thread::scope(|s| {
        s.spawn(|| -> Result<Rate> {
            enter(client)?;
            sys::pin_to_cpu(cpu).context("pinning the generator")?;
            let ifindex = ifindex("eth0")?;
            // Sends `n` frames in one call; returns how many the next call should send
            // to last about CALL at the rate this one reached.
            let send = |n: u32| -> Result<u32> {
                let t = Instant::now();
                sys::test_run_live(gen_fd.as_raw_fd(), &frame, ifindex, n)
                    .context("BPF_PROG_TEST_RUN (live frames) of bench_gen")?;
                let rate = n as f64 / t.elapsed().as_secs_f64().max(1e-6);
                Ok((rate * CALL.as_secs_f64()).clamp(FIRST_CALL as f64, MAX_CALL as f64) as u32)
            };
            let warm = Instant::now();
            let mut sent = 0u64;
            let mut chunk = FIRST_CALL;
            while warm.elapsed() < WARMUP || sent < 2 * flows as u64 {
                sent += chunk as u64;
                chunk = send(chunk)?;
                if warm.elapsed() > WARMUP * 10 {
                    bail!("the warm-up did not send {} frames in 10 s", 2 * flows);
                }
            }
            let cpus = || -> Result<(Stat, Stat)> {
                Ok((Stat::read_cpu(LB_CPU)?, Stat::read_cpu(CLIENT_CPU)?))
            };
            let (c0, s0, t0) = (cpus()?, xdp.sunk()?, Instant::now());
            let mut sent = 0u64;
            while t0.elapsed() < measure {
                sent += chunk as u64;
                chunk = send(chunk)?;
                if t0.elapsed() > measure + 10 * CALL {
                    bail!(
                        "the generator overran its {} s by more than 10 s",
                        measure.as_secs()
                    );
                }
            }
            let (s1, dt, c1) = (xdp.sunk()?, t0.elapsed().as_secs_f64(), cpus()?);
            let share = |a: &Stat, b: &Stat| {
                let d = b.since(a);
                d.busy() as f64 / d.total().max(1) as f64
            };
            Ok(Rate {
                delivered: (s1 - s0) as f64 / dt,
                offered: sent as f64 / dt,
                lb_cpu: share(&c0.0, &c1.0),
                client_cpu: share(&c0.1, &c1.1),
            })
        })
        .join()
        .map_err(|_| anyhow!("the generator thread panicked"))?
    })?;
    running.check()?;
    if rate.delivered < 0.01 * rate.offered {
        bail!(
            "{:.0} frames/s sent but only {:.0}/s came out of {}",
            rate.offered,
            rate.delivered,
            running.system.name()
        );
    }
    Ok(rate)
}

/// A veth's NAPI (its receive processing, XDP included) in its own kernel thread, pinned
/// to a CPU, for as long as this lives. Without it a veth's receive side runs in the
/// softirq of the CPU that sent to it: the generator's, so generator, load balancer
/// and sink would share one CPU. With the LB's `lb0` threaded on the LB's CPU, the
/// generator has the client's CPU to itself, and the LB's CPU runs the system under
/// test and, in its softirq, the sink (which the LB's redirect schedules there): a
/// small, equal cost for every system.
struct ThreadedNapi<'a> {
    ns: &'a Netns,
    iface: &'static str,
}

impl<'a> ThreadedNapi<'a> {
    fn start(ns: &'a Netns, iface: &'static str, cpu: &str) -> Result<ThreadedNapi<'a>> {
        let napi = ThreadedNapi { ns, iface };
        napi.set(false)?;
        let before = napi_threads(iface)?;
        napi.set(true)?;
        let after = napi_threads(iface)?;
        let new: Vec<u32> = after
            .iter()
            .copied()
            .filter(|p| !before.contains(p))
            .collect();
        // Kernels before 6.17 keep a NAPI's thread when threading is turned off (until
        // the NAPI goes, with the XDP program): then the thread is one that was there.
        let ours = if new.is_empty() { after } else { new };
        if ours.is_empty() {
            bail!(
                "no NAPI thread of {iface} in {} runs after it was made threaded",
                ns.name()
            );
        }
        for pid in ours {
            lb_tests::cmd::run(std::process::Command::new("taskset").args([
                "-p",
                "-c",
                cpu,
                &pid.to_string(),
            ]))
            .with_context(|| format!("pinning {iface}'s NAPI thread {pid} to CPU {cpu}"))?;
        }
        Ok(napi)
    }

    fn set(&self, on: bool) -> Result<()> {
        let path = format!("/sys/class/net/{}/threaded", self.iface);
        self.ns
            .exec("sh", &["-c", &format!("echo {} > {path}", u8::from(on))])
            .with_context(|| format!("writing {path} in {}", self.ns.name()))
            .map(drop)
    }
}

impl Drop for ThreadedNapi<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.set(false) {
            eprintln!("bench: turning threaded NAPI off again: {e:#}");
        }
    }
}

/// PIDs of the kernel threads running a NAPI instance of an interface named `iface`
/// (`napi/IFACE-ID`; any namespace).
fn napi_threads(iface: &str) -> Result<Vec<u32>> {
    let prefix = format!("napi/{iface}-");
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
            if comm.trim_end().starts_with(&prefix) {
                pids.push(pid);
            }
        }
    }
    Ok(pids)
}

/// The template frame: client → `vip`:[`PPS_PORT`], a bare ACK, checksums right (the
/// test kit's packet builder), padded to the Ethernet minimum.
fn frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, vip: Ipv4Addr) -> Vec<u8> {
    let mut p = Packet::tcp(src.into(), 1024, vip.into(), PPS_PORT, flags::ACK);
    p.eth_src = src_mac;
    p.eth_dst = dst_mac;
    (p.seq, p.ack, p.window) = (1, 1, 65535);
    let mut f = p.build();
    f.resize(FRAME_LEN, 0);
    f
}

/// The first [`TEMPLATE_WORDS`] words of `frame`, as the program copies them.
fn words(frame: &[u8]) -> [u64; TEMPLATE_WORDS] {
    let mut w = [0u64; TEMPLATE_WORDS];
    for (i, chunk) in frame.chunks(8).take(TEMPLATE_WORDS).enumerate() {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        w[i] = u64::from_ne_bytes(b);
    }
    w
}

/// The MAC address of `iface` in `ns`.
fn mac(ns: &Netns, iface: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&format!("-j link show dev {iface}"))?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("parsing `ip -j link show dev {iface}`"))?;
    let text = v[0]["address"]
        .as_str()
        .ok_or_else(|| anyhow!("{iface} in {} has no MAC address", ns.name()))?;
    parse_mac(text).with_context(|| format!("the MAC address `{text}` of {iface}"))
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| anyhow!("not six bytes long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_a_bare_ack_to_the_pps_port_with_right_checksums() {
        let f = frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 100, 1),
        );
        assert_eq!(f.len(), FRAME_LEN);
        // The decoder verifies both checksums.
        let p = lb_tests::packet::decode(&f).expect("a valid TCP frame");
        assert_eq!((p.dport, p.flags), (PPS_PORT, flags::ACK));
        assert_eq!(p.eth_dst, [2, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("02:ab:00:10:ff:0e").unwrap(),
            [2, 0xab, 0, 0x10, 0xff, 0x0e]
        );
        assert!(parse_mac("02:ab:00:10:ff").is_err());
        assert!(parse_mac("zz:ab:00:10:ff:0e").is_err());
    }
}
