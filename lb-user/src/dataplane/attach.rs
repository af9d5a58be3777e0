//! Attaching the programs: XDP to the LB's interfaces (with the native → skb fallback) and
//! its TC companion (neighbour hand-off) to their ingress, sk_lookup to the network
//! namespace. Every link is pinned in the state directory, so it outlives the daemon; a
//! link an earlier daemon pinned gets this daemon's program in place (`BPF_LINK_UPDATE`),
//! so the hook never runs without one.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::{MapData, SockMap};
use aya::programs::links::FdLink;
use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, SkLookup, TcAttachType, XdpMode, tc::TcAttachOptions,
};
use lb_common::maps::names;
use tracing::{info, warn};

use super::{
    Attachment, Dataplane, DataplaneError, lb_program, map_error, neigh_program, program_error,
};
use crate::config::XdpModeChoice;
use crate::sys;

/// Pin name of the sk_lookup link (one per network namespace).
const LOOKUP_LINK: &str = "sk_lookup";

impl Dataplane {
    /// Registers the proxy listeners and makes the network namespace's sk_lookup hook
    /// run the lookup program, so connections to proxy VIPs land on them.
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
        let pin = self.state.links_dir().join(LOOKUP_LINK);
        let prog: &mut SkLookup = self
            .ebpf
            .program_mut(names::PROG_LOOKUP)
            .ok_or(DataplaneError::MissingProgram(names::PROG_LOOKUP))?
            .try_into()
            .map_err(wrap)?;
        prog.load().map_err(wrap)?;
        if pin.exists() && replace_or_drop(&pin, prog.fd().map_err(wrap)?.as_fd()) {
            info!(
                "replaced the sk_lookup program {} in place",
                names::PROG_LOOKUP
            );
        } else {
            let netns = std::fs::File::open("/proc/self/ns/net")
                .map_err(|source| wrap(ProgramError::IOError(source)))?;
            let id = prog.attach(netns).map_err(wrap)?;
            let link: FdLink = prog.take_link(id).map_err(wrap)?.into();
            pin_link(link, &pin, "the sk_lookup link")?;
            info!(
                "attached sk_lookup program {} to this network namespace",
                names::PROG_LOOKUP
            );
        }
        self.pin_program(names::PROG_LOOKUP)
    }

    /// Runs the program on every interface: in the link an earlier daemon left there,
    /// or in a new one. Links of interfaces no longer configured (or re-created since)
    /// are removed, which detaches them.
    pub fn attach(
        &mut self,
        ifaces: &[String],
        choice: XdpModeChoice,
    ) -> Result<(), DataplaneError> {
        // Resolve every name first: a typo in the last --iface must not change the first.
        let mut resolved = Vec::new();
        for iface in ifaces {
            resolved.push((iface.clone(), super::maps::resolve_iface(iface)?));
        }
        let pinned = self.pinned_links()?;
        let mut kept = Vec::new();
        for (iface, ifindex) in resolved {
            let xdp = pinned.iter().find(|p| {
                p.kind == "xdp"
                    && p.iface == iface
                    && p.ifindex == ifindex
                    && choice.accepts(&p.mode)
            });
            let replaced = match xdp {
                Some(p) => {
                    let prog = lb_program(&mut self.ebpf)?;
                    let fd = prog.fd().map_err(program_error(names::PROG_LB))?;
                    replace_or_drop(&p.path, fd.as_fd()).then(|| {
                        info!(iface = %iface, ifindex, mode = %p.mode, "replaced the XDP program {} in place", names::PROG_LB);
                        kept.push(p.path.clone());
                        p.mode.clone()
                    })
                }
                None => None,
            };
            let mode = match replaced {
                Some(mode) => mode,
                None => {
                    let (mode, path) = self.attach_xdp(&iface, ifindex, choice)?;
                    kept.push(path);
                    mode.to_string()
                }
            };
            let tc = pinned
                .iter()
                .find(|p| p.kind == "tc" && p.iface == iface && p.ifindex == ifindex);
            let replaced = match tc {
                Some(p) => {
                    let prog = neigh_program(&mut self.ebpf)?;
                    let fd = prog.fd().map_err(program_error(names::PROG_NEIGH))?;
                    replace_or_drop(&p.path, fd.as_fd()).then(|| kept.push(p.path.clone()))
                }
                None => None,
            };
            if replaced.is_none() {
                kept.push(self.attach_neigh(&iface, ifindex)?);
            }
            self.attachments.push(Attachment {
                iface,
                ifindex,
                mode,
            });
        }
        for stale in pinned.iter().filter(|p| !kept.contains(&p.path)) {
            info!(link = %stale.path.display(), "removing the link of an interface no longer configured (or re-created)");
            if let Err(e) = std::fs::remove_file(&stale.path) {
                warn!(link = %stale.path.display(), cause = %e, "removing a stale link");
            }
        }
        self.pin_program(names::PROG_LB)?;
        self.pin_program(names::PROG_DIRECT)?;
        self.pin_program(names::PROG_NEIGH)
    }

    /// Attaches the XDP program to a new link on `iface` and pins it; returns the mode
    /// and the pin.
    fn attach_xdp(
        &mut self,
        iface: &str,
        ifindex: u32,
        choice: XdpModeChoice,
    ) -> Result<(&'static str, PathBuf), DataplaneError> {
        // A link of the other mode (the configuration changed it) must go first: an
        // interface has one XDP program.
        for p in self.pinned_links()? {
            if p.kind == "xdp" && p.iface == iface && p.ifindex == ifindex {
                warn!(iface = %iface, from = %p.mode, "--xdp-mode changed: re-attaching, which drops packets for a moment");
                let _ = std::fs::remove_file(&p.path);
            }
        }
        let prog = lb_program(&mut self.ebpf)?;
        let (link, mode) = match choice {
            XdpModeChoice::Skb => (prog.attach_to_if_index(ifindex, XdpMode::Skb), "skb"),
            XdpModeChoice::Native => (prog.attach_to_if_index(ifindex, XdpMode::Driver), "native"),
            XdpModeChoice::Auto => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(l) => (Ok(l), "native"),
                Err(e) => {
                    warn!(iface = %iface, cause = %e, "native XDP attach failed; falling back to skb (generic) mode, which is slower");
                    (prog.attach_to_if_index(ifindex, XdpMode::Skb), "skb")
                }
            },
        };
        let id = link.map_err(|source| DataplaneError::Attach {
            iface: iface.to_string(),
            mode,
            source: Box::new(source),
            hint: if mode == "native" {
                "the driver may lack native XDP, or another XDP program is attached (`ip link show`); try --xdp-mode skb"
            } else {
                "another XDP program may be attached (`ip link show`), or the kernel lacks XDP"
            },
        })?;
        let link = prog.take_link(id).map_err(program_error(names::PROG_LB))?;
        let link = FdLink::try_from(link).map_err(|e| DataplaneError::PinLink {
            what: format!("the XDP link of {iface}"),
            path: self.state.links_dir(),
            source: Box::new(e),
        })?;
        let path = self
            .state
            .links_dir()
            .join(format!("xdp-{iface}-{ifindex}-{mode}"));
        pin_link(link, &path, &format!("the XDP link of {iface}"))?;
        info!(iface = %iface, ifindex, mode, "attached XDP program {}", names::PROG_LB);
        Ok((mode, path))
    }

    /// Attaches the neighbour hand-off's TC program to `iface`'s ingress, ahead of any
    /// other TCX program there (what the XDP program passes with a hand-off must reach it
    /// unchanged), and pins the link.
    fn attach_neigh(&mut self, iface: &str, ifindex: u32) -> Result<PathBuf, DataplaneError> {
        let prog = neigh_program(&mut self.ebpf)?;
        let id = prog
            .attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .map_err(|source| DataplaneError::AttachNeigh {
                iface: iface.to_string(),
                source: Box::new(source),
            })?;
        let link = prog
            .take_link(id)
            .map_err(program_error(names::PROG_NEIGH))?;
        let what = format!("the TC link of {iface}");
        let link = FdLink::try_from(link).map_err(|e| DataplaneError::PinLink {
            what: what.clone(),
            path: self.state.links_dir(),
            source: Box::new(e),
        })?;
        let path = self.state.links_dir().join(format!("tc-{iface}-{ifindex}"));
        pin_link(link, &path, &what)?;
        info!(iface = %iface, "attached TC program {} (ingress)", names::PROG_NEIGH);
        Ok(path)
    }

    /// Pins `program` under `progs/` for bpftool, in place of an earlier daemon's.
    pub(super) fn pin_program(&mut self, program: &'static str) -> Result<(), DataplaneError> {
        let path = self.state.prog_path(program);
        let _ = std::fs::remove_file(&path);
        self.ebpf
            .program_mut(program)
            .ok_or(DataplaneError::MissingProgram(program))?
            .pin(&path)
            .map_err(|e| DataplaneError::PinLink {
                what: format!("program {program}"),
                path,
                source: Box::new(e),
            })
    }

    /// The XDP and TC links pinned in the state directory.
    fn pinned_links(&self) -> Result<Vec<PinnedLink>, DataplaneError> {
        let mut links = Vec::new();
        let dir = self.state.links_dir();
        for e in std::fs::read_dir(&dir).map_err(DataplaneError::StateIo)? {
            let path = e.map_err(DataplaneError::StateIo)?.path();
            if let Some(link) = PinnedLink::parse(&path) {
                links.push(link);
            }
        }
        Ok(links)
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
}

/// A pinned XDP or TC link, as its pin name describes it: `xdp-IFACE-IFINDEX-MODE` or
/// `tc-IFACE-IFINDEX`.
#[derive(Debug)]
struct PinnedLink {
    kind: String,
    iface: String,
    ifindex: u32,
    mode: String,
    path: PathBuf,
}

impl PinnedLink {
    fn parse(path: &Path) -> Option<PinnedLink> {
        let name = path.file_name()?.to_str()?;
        let (kind, rest) = name.split_once('-')?;
        let (rest, mode) = match kind {
            "xdp" => rest.rsplit_once('-')?,
            "tc" => (rest, ""),
            _ => return None,
        };
        let (iface, ifindex) = rest.rsplit_once('-')?;
        Some(PinnedLink {
            kind: kind.to_string(),
            iface: iface.to_string(),
            ifindex: ifindex.parse().ok()?,
            mode: mode.to_string(),
            path: path.to_path_buf(),
        })
    }
}

/// Pins `link` at `path`: from now on it outlives this process.
fn pin_link(link: FdLink, path: &Path, what: &str) -> Result<(), DataplaneError> {
    let _ = std::fs::remove_file(path);
    link.pin(path).map_err(|e| DataplaneError::PinLink {
        what: what.to_string(),
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    Ok(())
}

/// Puts `prog` into the link pinned at `path`; true if it runs there now. A link that
/// no longer hooks anything (its interface or namespace is gone: ENOLINK) or cannot be
/// opened is unpinned, and false tells the caller to attach anew.
fn replace_or_drop(path: &Path, prog: std::os::fd::BorrowedFd<'_>) -> bool {
    let updated = sys::bpf_obj_get(path).and_then(|link| sys::bpf_link_update(link.as_fd(), prog));
    match updated {
        Ok(()) => true,
        Err(e) => {
            warn!(link = %path.display(), cause = %e, "a pinned link cannot take the new program (its hook is gone?): attaching anew");
            let _ = std::fs::remove_file(path);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pins_name_kind_interface_index_and_mode() {
        let xdp = PinnedLink::parse(Path::new("/s/links/xdp-lb-in0-12-native")).unwrap();
        assert_eq!(
            (
                xdp.kind.as_str(),
                xdp.iface.as_str(),
                xdp.ifindex,
                xdp.mode.as_str()
            ),
            ("xdp", "lb-in0", 12, "native")
        );
        let tc = PinnedLink::parse(Path::new("/s/links/tc-eth0-3")).unwrap();
        assert_eq!(
            (tc.kind.as_str(), tc.iface.as_str(), tc.ifindex),
            ("tc", "eth0", 3)
        );
        assert!(PinnedLink::parse(Path::new("/s/links/sk_lookup")).is_none());
        assert!(PinnedLink::parse(Path::new("/s/links/xdp-eth0-x-skb")).is_none());
    }
}
