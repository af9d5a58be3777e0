//! A veth's receive processing (its NAPI, XDP included) in kernel threads pinned to a
//! CPU, so the workloads that load the LB know which CPU did the LB's work: without it a
//! veth receives in the softirq of the CPU that sent to it, the client's or a
//! backend's.

use crate::bed::{Bed, LB_CPU};
use crate::cpu;
use crate::systems::Running;
use anyhow::{Context, Result, bail};
use aya::programs::xdp::XdpLink;
use lb_tests::Netns;
use lb_tests::topology::{LB_IF_A, LB_IF_B};

/// A veth's NAPI in its own kernel thread, pinned to a CPU, for as long as this lives.
/// The veth needs an XDP program (it has a NAPI only then). In the packet-rate
/// workloads, with the LB's `lb0` threaded on the LB's CPU, the generator has the
/// client's CPU to itself, and the LB's CPU runs the system under test and, in its
/// softirq, the sink (which the LB's redirect schedules there): a small, equal cost for
/// every system.
pub struct ThreadedNapi<'a> {
    ns: &'a Netns,
    iface: &'static str,
    cpu: String,
    /// The NAPI's kernel threads.
    threads: Vec<u32>,
}

impl<'a> ThreadedNapi<'a> {
    pub fn start(ns: &'a Netns, iface: &'static str, cpu: &str) -> Result<ThreadedNapi<'a>> {
        let mut napi = ThreadedNapi {
            ns,
            iface,
            cpu: cpu.to_owned(),
            threads: Vec::new(),
        };
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
        for &pid in &ours {
            lb_tests::cmd::run(std::process::Command::new("taskset").args([
                "-p",
                "-c",
                cpu,
                &pid.to_string(),
            ]))
            .with_context(|| format!("pinning {iface}'s NAPI thread {pid} to CPU {cpu}"))?;
        }
        napi.threads = ours;
        Ok(napi)
    }

    /// CPU time of the NAPI's threads so far, in ticks.
    pub fn ticks(&self) -> u64 {
        self.threads.iter().map(|&p| cpu::process_ticks(p)).sum()
    }

    /// Where the NAPI runs, for the report: `lb0 on CPU 1`.
    pub fn placement(&self) -> String {
        format!("{} on CPU {}", self.iface, self.cpu)
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
        if let Ok(comm) = std::fs::read_to_string(e.path().join("comm"))
            && comm.trim_end().starts_with(&prefix)
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// The LB's two veths receiving in NAPI threads on the LB's CPU, for as long as this
/// lives. A system without an XDP program of its own gets `bench_pass` on both, since a
/// veth has a NAPI only with one.
pub struct LbRx<'a> {
    napi: Vec<ThreadedNapi<'a>>,
    _pass: Vec<XdpLink>,
}

/// `bench_pass` on the LB's veths if `running` has no XDP program there.
pub fn pass_links(bed: &mut Bed, running: &Running) -> Result<Vec<XdpLink>> {
    if running.system.has_own_xdp() {
        return Ok(Vec::new());
    }
    [LB_IF_A, LB_IF_B]
        .into_iter()
        .map(|iface| bed.xdp.attach_pass(&bed.topo.lb, iface))
        .collect()
}

impl<'a> LbRx<'a> {
    pub fn start(bed: &'a Bed, pass: Vec<XdpLink>) -> Result<LbRx<'a>> {
        let napi = [LB_IF_A, LB_IF_B]
            .into_iter()
            .map(|iface| ThreadedNapi::start(&bed.topo.lb, iface, LB_CPU))
            .collect::<Result<Vec<_>>>()?;
        Ok(LbRx { napi, _pass: pass })
    }

    pub fn ticks(&self) -> u64 {
        self.napi.iter().map(ThreadedNapi::ticks).sum()
    }

    pub fn placement(&self) -> String {
        self.napi
            .iter()
            .map(ThreadedNapi::placement)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The report's words on where the LB's receive work ran.
pub fn placement_note() -> String {
    format!(
        "NAPI of {LB_IF_A} and {LB_IF_B} in kernel threads pinned to CPU {LB_CPU} (`bench_pass` on both for systems without an XDP program of their own)"
    )
}
