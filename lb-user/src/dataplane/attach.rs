//! Attaching the programs: XDP to the LB's interfaces (with the native → skb fallback) and
//! its TC companion (neighbour hand-off) to their ingress, sk_lookup to the network
//! namespace, and the checks and detach of a clean shutdown.

use aya::maps::{MapData, SockMap};
use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, SkLookup, TcAttachType, XdpMode, tc::TcAttachOptions,
};
use lb_common::maps::names;
use tracing::{info, warn};

use super::{
    Attachment, Dataplane, DataplaneError, lb_program, map_error, neigh_program, pin, program_error,
};
use crate::config::XdpModeChoice;
use crate::sys;

impl Dataplane {
    /// Registers the proxy listeners and attaches the sk_lookup program to this
    /// network namespace, so connections to proxy VIPs land on them. The link lives as
    /// long as the object (detached when the daemon exits).
    pub fn attach_lookup(
        &mut self,
        v4: &std::net::TcpListener,
        v6: Option<&std::net::TcpListener>,
    ) -> Result<(), DataplaneError> {
        {
            let mut socks: SockMap<&mut MapData> = self.map_mut(names::PROXY_LISTENERS)?;
            let map_err = map_error(names::PROXY_LISTENERS);
            socks.set(0, v4, 0).map_err(map_err)?;
            if let Some(v6) = v6 {
                socks.set(1, v6, 0).map_err(map_err)?;
            }
        }
        let wrap = program_error(names::PROG_LOOKUP);
        let netns = std::fs::File::open("/proc/self/ns/net")
            .map_err(|source| wrap(ProgramError::IOError(source)))?;
        let prog: &mut SkLookup = self
            .ebpf
            .program_mut(names::PROG_LOOKUP)
            .ok_or(DataplaneError::MissingProgram(names::PROG_LOOKUP))?
            .try_into()
            .map_err(wrap)?;
        prog.load().map_err(wrap)?;
        prog.attach(netns).map_err(wrap)?;
        info!(
            "attached sk_lookup program {} to this network namespace",
            names::PROG_LOOKUP
        );
        Ok(())
    }

    /// Attaches the program to every interface. On any failure the ones already attached
    /// are detached (by dropping `self`), so a failed start leaves nothing behind.
    pub fn attach(
        &mut self,
        ifaces: &[String],
        choice: XdpModeChoice,
    ) -> Result<(), DataplaneError> {
        // Resolve every name first: a typo in the last --iface must not leave the first attached.
        let mut resolved = Vec::new();
        for iface in ifaces {
            let idx = sys::ifindex(iface).map_err(|source| DataplaneError::UnknownIface {
                iface: iface.clone(),
                source,
            })?;
            resolved.push((iface.clone(), idx));
        }
        for (iface, ifindex) in resolved {
            let prog = lb_program(&mut self.ebpf)?;
            let (link, mode) = match choice {
                XdpModeChoice::Skb => (prog.attach_to_if_index(ifindex, XdpMode::Skb), "skb"),
                XdpModeChoice::Native => {
                    (prog.attach_to_if_index(ifindex, XdpMode::Driver), "native")
                }
                XdpModeChoice::Auto => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
                    Ok(l) => (Ok(l), "native"),
                    Err(e) => {
                        warn!(iface = %iface, cause = %e, "native XDP attach failed; falling back to skb (generic) mode, which is slower");
                        (prog.attach_to_if_index(ifindex, XdpMode::Skb), "skb")
                    }
                },
            };
            let link = link.map_err(|source| DataplaneError::Attach {
                iface: iface.clone(),
                mode,
                source: Box::new(source),
                hint: if mode == "native" {
                    "the driver may lack native XDP, or another XDP program is attached (`ip link show`); try --xdp-mode skb"
                } else {
                    "another XDP program may be attached (`ip link show`), or the kernel lacks XDP"
                },
            })?;
            info!(iface = %iface, ifindex, mode, "attached XDP program {}", names::PROG_LB);
            self.links.push(link);
            self.attach_neigh(&iface)?;
            self.attachments.push(Attachment {
                iface,
                ifindex,
                mode: mode.into(),
            });
        }
        Ok(())
    }

    /// Attaches the neighbour hand-off's TC program to `iface`'s ingress, ahead of any
    /// other TCX program there: what the XDP program passes with a hand-off must reach it
    /// unchanged.
    fn attach_neigh(&mut self, iface: &str) -> Result<(), DataplaneError> {
        let link = neigh_program(&mut self.ebpf)?
            .attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .map_err(|source| DataplaneError::AttachNeigh {
                iface: iface.to_string(),
                source: Box::new(source),
            })?;
        info!(iface = %iface, "attached TC program {} (ingress)", names::PROG_NEIGH);
        self.neigh_links.push(link);
        Ok(())
    }

    /// What is wrong with the attachments, if anything: an interface that is gone or
    /// was re-created, or fewer XDP or TC links running the programs than interfaces.
    pub fn attachment_problems(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.attachments.is_empty() {
            problems.push("not attached".to_string());
        }
        for a in &self.attachments {
            match sys::ifindex(&a.iface) {
                Ok(i) if i == a.ifindex => {}
                Ok(i) => problems.push(format!(
                    "{} has ifindex {i} now, not {}: re-created without the program",
                    a.iface, a.ifindex
                )),
                Err(e) => problems.push(format!("{}: {e}", a.iface)),
            }
        }
        let xdp_id = lb_program(&mut self.ebpf)
            .ok()
            .and_then(|p| p.info().ok())
            .map(|i| i.id());
        let links = aya::programs::loaded_links()
            .filter_map(Result::ok)
            .filter(|l| Some(l.program_id()) == xdp_id)
            .count();
        if links < self.attachments.len() {
            problems.push(format!(
                "{links} XDP links run the program, {} expected",
                self.attachments.len()
            ));
        }
        // Asked per interface: a detached TCX link still exists (and names the program)
        // while the daemon holds it, but the interface no longer runs it.
        let tc_id = neigh_program(&mut self.ebpf)
            .ok()
            .and_then(|p| p.info().ok())
            .map(|i| i.id());
        for a in &self.attachments {
            let running = SchedClassifier::query_tcx(&a.iface, TcAttachType::Ingress)
                .map(|(_, progs)| progs.iter().any(|p| Some(p.id()) == tc_id));
            match running {
                Ok(true) => {}
                Ok(false) => problems.push(format!(
                    "{}: TC program {} is not attached to its ingress",
                    a.iface,
                    names::PROG_NEIGH
                )),
                Err(e) => problems.push(format!("{}: querying its TC programs: {e}", a.iface)),
            }
        }
        problems
    }

    /// Detaches from every interface and removes the pins: a clean shutdown leaves
    /// nothing behind. (Dropping without this also detaches, but keeps the pins.)
    pub fn shutdown(&mut self) {
        if let Ok(prog) = lb_program(&mut self.ebpf) {
            for (link, a) in self.links.drain(..).zip(&self.attachments) {
                match prog.detach(link) {
                    Ok(()) => info!(iface = %a.iface, "detached XDP program"),
                    Err(e) => warn!(iface = %a.iface, cause = %e, "detaching XDP program failed"),
                }
            }
        }
        if let Ok(prog) = neigh_program(&mut self.ebpf) {
            for (link, a) in self.neigh_links.drain(..).zip(&self.attachments) {
                match prog.detach(link) {
                    Ok(()) => info!(iface = %a.iface, "detached TC program"),
                    Err(e) => warn!(iface = %a.iface, cause = %e, "detaching TC program failed"),
                }
            }
        }
        if let Some(dir) = self.pin_dir.take() {
            pin::remove(&dir);
            info!(dir = %dir.display(), "removed pinned flow tables");
        }
    }
}
