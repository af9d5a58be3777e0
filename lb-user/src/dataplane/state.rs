//! The state directory: what of the data path must outlive the daemon, pinned in a bpf
//! filesystem, so a restart, an upgrade or a crash leaves packets forwarding and the next
//! daemon adopts it all (flows, services, backends, Maglev tables, counters).
//!
//! Layout (format 2):
//! - `format-2/`: the layout marker (an empty directory: a bpffs holds no plain files);
//! - `maps/NAME_vN`: every map whose contents outlive the daemon; N is the layout version
//!   of its key and value types, so a changed struct gets a new name (aya opens a pinned
//!   map without checking its layout); an older version is dropped, or carried into the
//!   new map ([`CARRIED`], `super::carry`);
//! - `progs/NAME`: the programs, for `bpftool` (the links hold them);
//! - `links/xdp-IFACE-IFINDEX-MODE`, `links/tc-IFACE-IFINDEX`, `links/sk_lookup`: the
//!   attachments; an interface re-created since has another index and so a stale pin.
//!
//! Format 1 was `--pin-dir`: the flow tables directly in the directory; adopting it moves
//! them under `maps/`.
//!
//! `ip netns exec` remounts /sys, so /sys/fs/bpf is no bpf filesystem under it; then a
//! bpffs is mounted there, with a warning that it lives only as long as that mount
//! namespace (`nsenter --net=...` keeps the host's bpffs and so the state).

use crate::sys;
use lb_common::maps::names;
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// The layout this lb writes and reads.
pub const FORMAT: u32 = 2;

/// Pinned maps and the file names that carry their layout version. Left out: the proxy
/// listeners (each daemon sets its own), per-run scratch and the log's ring.
pub const MAPS: &[(&str, &str)] = &[
    (names::FLOWS, "flows_v4"),
    (names::HALF_OPEN, "half_open_v3"),
    (names::REVERSE_NAT, "reverse_nat_v1"),
    (names::SERVICES, "services_v1"),
    (names::SERVICE_SLOTS, "service_slots_v1"),
    (names::BACKENDS, "backends_v1"),
    (names::MAGLEV, "maglev_v1"),
    (names::CONFIG, "config_v1"),
    (names::TX_PORTS, "tx_ports_v1"),
    (names::LOCAL_MACS, "local_macs_v1"),
    // Pinned, so an upgrade's programs mark hand-offs as the old ones did.
    (names::HANDOFF_MARK, "handoff_mark_v1"),
    (names::NEXT_HOPS, "next_hops_v1"),
    (names::SNAT_ADDRS, "snat_addrs_v1"),
    (names::SOURCE_BUCKETS, "source_buckets_v1"),
    (names::SYN_RATE, "syn_rate_v1"),
    (names::TRUSTED_SOURCES, "trusted_sources_v1"),
    (names::SERVICE_STATS, "service_stats_v1"),
    (names::BACKEND_STATS, "backend_stats_v1"),
    (names::COUNTERS, "counters_v5"),
    (names::ALLOW, "allow_v1"),
    (names::PROXY_VIPS, "proxy_vips_v1"),
    // Pinned, so the tail call outlives the daemon that wrote it (an unpinned program
    // array is emptied when its last file descriptor closes).
    (names::DIRECT, "direct_v1"),
    // The sockmap engine's pairs: an upgrade hands its connections over in place.
    (names::SPLICE, "splice_v1"),
    (names::SPLICE_HOOK, "splice_hook_v1"),
];

/// The maps format 1 pinned, under the names format 2 keeps for them.
const FORMAT1_MAPS: [&str; 3] = ["flows_v3", "half_open_v2", "reverse_nat_v1"];

/// Pins of an older layout version whose entries the daemon carries into the current
/// map (`super::carry`) rather than dropping them: the flow tables of the 32-byte
/// `FlowState`, with the map each is carried into.
pub const CARRIED: &[(&str, &str)] = &[
    (names::FLOWS, "flows_v3"),
    (names::HALF_OPEN, "half_open_v2"),
];

/// The default mount point of the bpf filesystem.
const BPFFS_ROOT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("--state-dir {dir}: {reason}")]
    NotBpffs { dir: PathBuf, reason: String },
    #[error(
        "--state-dir {dir}: written by a newer lb (state format {found}; this lb reads format {FORMAT}): run the newer lb, or stop it and run its `lb down` before starting this one"
    )]
    Newer { dir: PathBuf, found: u32 },
    #[error("--state-dir {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// How the directory was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Empty or absent: this daemon creates the state.
    Fresh,
    /// Written by a daemon of this format: adopted as it is.
    Current,
    /// Written in format 1 and moved into this format.
    Migrated,
}

/// An opened state directory.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    pub found: Found,
}

/// The default state directory of this network namespace: named by its cookie, which
/// no other namespace gets before a reboot (inodes are reused, and a directory a deleted
/// namespace left must not be taken for this one's).
pub fn default_dir() -> std::io::Result<PathBuf> {
    Ok(Path::new(BPFFS_ROOT)
        .join("lb")
        .join(format!("netns-{}", sys::netns_cookie()?)))
}

impl StateDir {
    /// Opens (creating or migrating as needed) the state directory `dir`. Refuses one
    /// that is not on a bpffs or that a newer lb wrote, before anything is changed.
    pub fn open(dir: &Path) -> Result<StateDir, StateError> {
        prepare(dir)?;
        let io = |source| StateError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let format = read_format(dir).map_err(io)?;
        let found = match format {
            Some(f) if f > FORMAT => {
                return Err(StateError::Newer {
                    dir: dir.to_path_buf(),
                    found: f,
                });
            }
            Some(_) => Found::Current,
            None if FORMAT1_MAPS.iter().any(|m| dir.join(m).exists()) => Found::Migrated,
            None => Found::Fresh,
        };
        for sub in ["maps", "progs", "links"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io)?;
        }
        if found == Found::Migrated {
            for m in FORMAT1_MAPS {
                let old = dir.join(m);
                if old.exists() {
                    std::fs::rename(&old, dir.join("maps").join(m)).map_err(io)?;
                }
            }
            info!(dir = %dir.display(), "migrated the flow tables of state format 1 (--pin-dir) to format {FORMAT}");
        }
        if let Some(old) = format.filter(|f| *f < FORMAT) {
            let _ = std::fs::remove_dir(dir.join(format!("format-{old}")));
        }
        std::fs::create_dir_all(dir.join(format!("format-{FORMAT}"))).map_err(io)?;
        let state = StateDir {
            root: dir.to_path_buf(),
            found,
        };
        state.drop_old_versions();
        Ok(state)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether a daemon ran on this state before.
    pub fn adopted(&self) -> bool {
        self.found != Found::Fresh
    }

    /// Paths of the pinned maps, with the map each belongs to.
    pub fn map_paths(&self) -> Vec<(&'static str, PathBuf)> {
        MAPS.iter()
            .map(|(map, file)| (*map, self.root.join("maps").join(file)))
            .collect()
    }

    pub fn prog_path(&self, program: &str) -> PathBuf {
        self.root.join("progs").join(program)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// The pins of [`CARRIED`] maps present, with the map each is carried into.
    pub fn carried_paths(&self) -> Vec<(&'static str, PathBuf)> {
        CARRIED
            .iter()
            .map(|(map, file)| (*map, self.root.join("maps").join(file)))
            .filter(|(_, path)| path.exists())
            .collect()
    }

    /// Removes pins of an older layout version of a map this lb pins under a new name:
    /// there is no conversion for them, so their map starts empty. The [`CARRIED`] ones
    /// stay for `super::carry`.
    fn drop_old_versions(&self) {
        let Ok(entries) = std::fs::read_dir(self.root.join("maps")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if MAPS.iter().chain(CARRIED).any(|(_, file)| *file == name) {
                continue;
            }
            warn!(pin = %e.path().display(), "removing a pinned map of another layout version: its contents are lost");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The format marker's number, if there is one.
fn read_format(dir: &Path) -> std::io::Result<Option<u32>> {
    let mut found = None;
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("format-")
            .and_then(|n| n.parse::<u32>().ok())
        {
            found = found.max(Some(n));
        }
    }
    Ok(found)
}

/// Makes sure `dir` exists on a bpf filesystem, mounting one on /sys/fs/bpf if `dir` is
/// below it and none is mounted there.
fn prepare(dir: &Path) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if sys::fs_type(existing).map_err(io)? != sys::BPF_FS_MAGIC {
        if !dir.starts_with(BPFFS_ROOT) {
            return Err(StateError::NotBpffs {
                dir: dir.to_path_buf(),
                reason: format!(
                    "not on a bpf filesystem (mount one: `mount -t bpf bpf {}`)",
                    dir.display()
                ),
            });
        }
        sys::mount_bpffs(Path::new(BPFFS_ROOT)).map_err(io)?;
        warn!(
            mount = BPFFS_ROOT,
            "no bpf filesystem was mounted here (`ip netns exec` remounts /sys), so lb mounted one; \
             the state lasts only as long as this process: a restart will not keep flows. Start lb \
             with `nsenter --net=/run/netns/NAME`, or give --state-dir on a bpffs mounted outside /sys"
        );
    }
    std::fs::create_dir_all(dir).map_err(io)
}

/// Removes everything under `dir` (links first, which detaches the programs), then `dir`.
/// What is not there is fine. Returns what was removed, for the operator.
pub fn remove(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !dir.exists() {
        return Ok(removed);
    }
    for sub in ["links", "progs", "maps"] {
        let path = dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for e in entries {
            let p = e?.path();
            std::fs::remove_file(&p)?;
            removed.push(p);
        }
        std::fs::remove_dir(&path)?;
    }
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            std::fs::remove_dir(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
        removed.push(p);
    }
    std::fs::remove_dir(dir)?;
    // The per-namespace parent (/sys/fs/bpf/lb) goes when it is empty.
    if let Some(parent) = dir.parent().filter(|p| p.ends_with("lb")) {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(removed)
}

/// The addresses of the proxy VIPs in the pinned `PROXY_VIPS` map of `dir` (each has a
/// local route while the data path runs); none if it is not there.
pub fn pinned_proxy_vips(dir: &Path) -> Vec<std::net::IpAddr> {
    let Some((_, file)) = MAPS.iter().find(|(m, _)| *m == names::PROXY_VIPS) else {
        return Vec::new();
    };
    let Ok(data) = aya::maps::MapData::from_pin(dir.join("maps").join(file)) else {
        return Vec::new();
    };
    let map = aya::maps::Map::HashMap(data);
    let Ok(vips) = aya::maps::HashMap::<_, lb_common::maps::VipKey, u32>::try_from(&map) else {
        return Vec::new();
    };
    let mut ips: Vec<std::net::IpAddr> = vips
        .keys()
        .flatten()
        .filter_map(|k| lb_common::addr::words_to_ip(k.addr, k.family))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}
