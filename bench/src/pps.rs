//! The packet-rate workloads: small TCP frames at the highest rate this machine makes,
//! cycling through 1, 1,000 or 100,000 flows, into the LB namespace's XDP path, and
//! counted where they leave it.
//!
//! The frames come from the bench's user-space generator ([`crate::sender`]) on the client's
//! veth, on a thread pinned to the client's CPU: an AF_PACKET socket that bypasses the
//! qdisc sends them in calls of 256, so on a full ring they are dropped, not queued.
//! (Until kernel 6.18.44-fc-v1300 they came from `bench_gen`, an XDP program run with
//! BPF_PROG_TEST_RUN in live-frames mode; that kernel refuses live frames with EPERM.)
//! They enter the LB's `lb0`, where lb's `lb_xdp` (or, for the ceiling,
//! `bench_redirect`) sends them out of `lb1`, and `bench_sink` on the switch's end of
//! that veth counts and drops them. Frames go to the `pps` service ([`PPS_PORT`]), whose
//! backends are never health-checked, and the sink drops only TCP to the `pps` backends'
//! ports, so the other workloads' traffic passes it untouched.

use crate::bed::{Bed, CLIENT_CPU, LB_CPU, PPS_PORT};
use crate::cpu::Stat;
use crate::frames::{self, ACK, mac};
use crate::napi::ThreadedNapi;
use crate::sender::{BATCH, Generator};
use crate::systems::Running;
use crate::xdp::enter;
use anyhow::{Context, Result, anyhow, bail};
use std::time::{Duration, Instant};

/// Frames sent between two looks at the clock: 64 calls, a few milliseconds.
const CHUNK: u64 = 64 * BATCH as u64;
/// Unmeasured time first: every flow is created and the rings fill.
const WARMUP: Duration = Duration::from_secs(1);

/// What one packet-rate run measured.
pub struct Rate {
    /// Frames per second that came out of the system under test.
    pub delivered: f64,
    /// Frames per second the generator sent (those the LB's full ring dropped too).
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
    let _pass = if running.system.has_own_xdp() {
        None
    } else {
        Some(
            bed.xdp
                .attach_pass(&bed.topo.lb, lb_tests::topology::LB_IF_A)?,
        )
    };
    let topo = &bed.topo;
    let frame = frames::frame(
        (
            mac(&topo.client, "eth0")?,
            mac(&topo.lb, lb_tests::topology::LB_IF_A)?,
        ),
        topo.client_v4,
        running.system.vip(),
        PPS_PORT,
        ACK,
    );
    let (xdp, topo) = (&bed.xdp, &bed.topo);
    let _napi = ThreadedNapi::start(&topo.lb, lb_tests::topology::LB_IF_A, LB_CPU)?;
    let client = &topo.client;
    let cpu: usize = CLIENT_CPU.parse().expect("a CPU number");
    let measure = Duration::from_secs(secs.into());
    let rate = std::thread::scope(|s| {
        s.spawn(|| -> Result<Rate> {
            enter(client)?;
            lb_tests::sys::pin_to_cpu(cpu).context("pinning the generator")?;
            let mut generator = Generator::open("eth0", &frame, flows)?;
            let warm = Instant::now();
            let mut sent = 0u64;
            while warm.elapsed() < WARMUP || sent < 2 * flows as u64 {
                sent += generator.send(CHUNK)?.sent;
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
                sent += generator.send(CHUNK)?.sent;
                if t0.elapsed() > measure + Duration::from_secs(10) {
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
