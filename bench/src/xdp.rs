//! The bench's own XDP programs (the `lb-bench-xdp` object, built next to lb's): the
//! sink that counts what comes out of the packet-rate workloads, the bare-redirect
//! ceiling and a pass-through; and attaching them inside the bed's namespaces.

use anyhow::{Context, Result, anyhow};
use aya::maps::{Array, DevMap, PerCpuArray};
use aya::programs::{Xdp, XdpMode, xdp::XdpLink};
use aya::{Ebpf, EbpfLoader};
use lb_tests::Netns;
use std::path::{Path, PathBuf};

/// What the sink counts and drops: TCP to these ports (the `pps` service's backend
/// ports, the bed's `PPS_BACKEND_PORTS`), so the other workloads' traffic passes it.
const SINK_PORTS: (u16, u16) = (9000, 9003);

/// The object with the bench's XDP programs, next to lb's object.
pub fn object_path(lb_object: &Path) -> PathBuf {
    lb_object.with_file_name("lb-bench-xdp")
}

/// The loaded bench programs; the sink stays attached while this lives.
pub struct BenchXdp {
    ebpf: Ebpf,
}

impl BenchXdp {
    pub fn load(object: &Path) -> Result<BenchXdp> {
        let mut ebpf = EbpfLoader::new().load_file(object).with_context(|| {
            format!(
                "loading the bench's XDP object {} (`cargo xtask build` builds it)",
                object.display()
            )
        })?;
        for name in ["bench_redirect", "bench_pass", "bench_sink"] {
            xdp(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading program `{name}`"))?;
        }
        let mut ports: Array<_, u32> = Array::try_from(map(&mut ebpf, "SINK_PORTS")?)?;
        ports.set(0, SINK_PORTS.0 as u32, 0)?;
        ports.set(1, SINK_PORTS.1 as u32, 0)?;
        Ok(BenchXdp { ebpf })
    }

    /// Attaches the sink to `iface` in `ns` for as long as this lives.
    pub fn attach_sink(&mut self, ns: &Netns, iface: &str) -> Result<()> {
        let prog = xdp(&mut self.ebpf, "bench_sink")?;
        in_netns(ns, || prog.attach(iface, XdpMode::Driver).map(drop))
            .with_context(|| format!("attaching bench_sink to {iface} in {}", ns.name()))
    }

    /// Attaches the bare ceiling to `iface` in `ns`, redirecting to `to` there; it is
    /// detached when the returned link drops.
    pub fn attach_redirect(&mut self, ns: &Netns, iface: &str, to: &str) -> Result<XdpLink> {
        let mut tx = DevMap::try_from(map(&mut self.ebpf, "REDIRECT")?)?;
        // Inside the namespace: the kernel resolves a devmap entry's ifindex in the
        // writer's namespace.
        in_netns(ns, || -> Result<()> {
            tx.set(0, ifindex(to)?, None, 0)
                .context("writing the redirect port")?;
            Ok(())
        })?;
        let prog = xdp(&mut self.ebpf, "bench_redirect")?;
        let id = in_netns(ns, || prog.attach(iface, XdpMode::Driver))
            .with_context(|| format!("attaching bench_redirect to {iface} in {}", ns.name()))?;
        Ok(prog.take_link(id)?)
    }

    /// Attaches `bench_pass` to `iface` in `ns`; detached when the link drops.
    pub fn attach_pass(&mut self, ns: &Netns, iface: &str) -> Result<XdpLink> {
        let prog = xdp(&mut self.ebpf, "bench_pass")?;
        let id = in_netns(ns, || prog.attach(iface, XdpMode::Driver))
            .with_context(|| format!("attaching bench_pass to {iface} in {}", ns.name()))?;
        Ok(prog.take_link(id)?)
    }

    /// Frames the sink has dropped so far, over all CPUs.
    pub fn sunk(&self) -> Result<u64> {
        let count: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("SINK_COUNT")
                .ok_or_else(|| anyhow!("map SINK_COUNT not in the bench object"))?,
        )?;
        Ok(count.get(&0, 0)?.iter().sum())
    }
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program `{name}` not in the bench object"))?
        .try_into()
        .with_context(|| format!("`{name}` is not an XDP program"))
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map `{name}` not in the bench object"))
}

/// Moves the calling thread into `ns`.
pub fn enter(ns: &Netns) -> Result<()> {
    lb_tests::sys::enter_netns(&ns.path())
        .with_context(|| format!("entering namespace {}", ns.name()))
}

/// Runs `f` on a thread inside `ns` (interface names mean something only there).
fn in_netns<T: Send, E: Into<anyhow::Error> + Send>(
    ns: &Netns,
    f: impl FnOnce() -> std::result::Result<T, E> + Send,
) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            enter(ns)?;
            f().map_err(Into::into)
        })
        .join()
        .map_err(|_| anyhow!("a thread inside {} panicked", ns.name()))?
    })
}

/// The index of `iface` in the calling thread's namespace.
pub fn ifindex(iface: &str) -> Result<u32> {
    crate::sys::ifindex(iface).with_context(|| format!("no interface {iface}"))
}
