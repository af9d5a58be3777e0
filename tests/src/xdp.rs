//! Attaching the object's `xdp_pass` program to the LB's veth peers.
//!
//! Native XDP_REDIRECT into a veth drops frames unless the receiving peer runs an XDP
//! program, and XDP_TX out of a veth needs one on the peer (TOOLCHAIN.md, "veth
//! pitfalls"). Real NICs do not need this; the test bed does it for the LB.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use lb_common::maps::names;

use crate::netns::Netns;
use crate::sys;

/// The loaded `xdp_pass` program; its attachments last until this is dropped.
pub struct XdpPass {
    ebpf: Ebpf,
}

impl XdpPass {
    /// Loads `xdp_pass` from the lb object. The object's maps are created too (aya loads
    /// them all); they are shrunk to one entry since this program never uses them.
    pub fn load(object: &Path) -> Result<XdpPass> {
        let mut loader = EbpfLoader::new();
        for map in [
            names::SERVICES,
            names::BACKENDS,
            names::MAGLEV,
            names::FLOWS,
            names::REVERSE_NAT,
            names::CONFIG,
            names::TX_PORTS,
            names::SERVICE_STATS,
            names::BACKEND_STATS,
            names::COUNTERS,
            names::NEXT_HOPS,
            names::REPLY_HOPS,
            names::SNAT_SWEPT,
        ] {
            loader.map_max_entries(map, 1);
        }
        let mut ebpf = loader
            .load_file(object)
            .with_context(|| format!("loading eBPF object {}", object.display()))?;
        let prog: &mut Xdp = ebpf
            .program_mut(names::PROG_PASS)
            .ok_or_else(|| {
                anyhow!(
                    "program `{}` not found in {}",
                    names::PROG_PASS,
                    object.display()
                )
            })?
            .try_into()
            .with_context(|| format!("`{}` is not an XDP program", names::PROG_PASS))?;
        prog.load()
            .with_context(|| format!("loading program `{}`", names::PROG_PASS))?;
        Ok(XdpPass { ebpf })
    }

    /// Attaches the program in native (driver) mode to `iface` inside `ns`. The attach
    /// happens on a short-lived thread that entered the namespace, since the interface
    /// name (and index) only mean something there; the link fd stays valid afterwards.
    pub fn attach(&mut self, ns: &Netns, iface: &str) -> Result<()> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(names::PROG_PASS)
            .expect("checked in load")
            .try_into()
            .expect("checked in load");
        let path = ns.path();
        std::thread::scope(|s| {
            s.spawn(move || -> Result<()> {
                sys::enter_netns(&path)
                    .with_context(|| format!("entering namespace {}", path.display()))?;
                prog.attach(iface, XdpMode::Driver).with_context(|| {
                    format!(
                        "attaching `{}` in native mode to {iface} in {}",
                        names::PROG_PASS,
                        path.display()
                    )
                })?;
                Ok(())
            })
            .join()
            .map_err(|_| anyhow!("the XDP attach thread panicked"))?
        })
    }
}
