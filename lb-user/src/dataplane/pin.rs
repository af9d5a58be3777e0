//! Pinning the flow state in a bpf filesystem (`--pin-dir`), so a daemon that dies
//! without cleaning up (a crash, SIGKILL, OOM) comes back with every flow it had: the new
//! daemon reopens the pinned flow and reverse NAT tables instead of creating empty ones.
//! A clean shutdown (SIGINT/SIGTERM) removes the pins, like everything else lb created.
//!
//! `ip netns exec` remounts /sys, so /sys/fs/bpf is no bpf filesystem under it; then a
//! bpffs is mounted there, with a warning that it lives only as long as that mount
//! namespace (`nsenter --net=...` keeps the host's bpffs and so the pins).

use crate::sys;
use std::path::{Path, PathBuf};
use tracing::warn;

/// Pin names carry the layout version of their value types: aya reuses a pinned map
/// without checking its layout, so a changed struct must get a new name.
pub const PINNED: &[(&str, &str)] = &[
    (lb_common::maps::names::FLOWS, "flows_v3"),
    (lb_common::maps::names::HALF_OPEN, "half_open_v2"),
    (lb_common::maps::names::REVERSE_NAT, "reverse_nat_v1"),
];

/// The default mount point of the bpf filesystem.
const BPFFS_ROOT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("--pin-dir {dir}: {reason}")]
    NotBpffs { dir: PathBuf, reason: String },
    #[error("--pin-dir {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Makes sure `dir` exists on a bpf filesystem, mounting one on /sys/fs/bpf if `dir` is
/// below it and none is mounted there.
pub fn prepare(dir: &Path) -> Result<(), PinError> {
    let io = |source| PinError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if sys::fs_type(existing).map_err(io)? != sys::BPF_FS_MAGIC {
        if !dir.starts_with(BPFFS_ROOT) {
            return Err(PinError::NotBpffs {
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
             its pins last only as long as this mount namespace: start lb with \
             `nsenter --net=/run/netns/NAME` to keep flows across a crash"
        );
    }
    std::fs::create_dir_all(dir).map_err(io)
}

/// Paths of the pins under `dir`, with the map each belongs to.
pub fn paths(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    PINNED
        .iter()
        .map(|(map, file)| (*map, dir.join(file)))
        .collect()
}

/// Removes the pins (clean shutdown), and `dir` if that leaves it empty.
pub fn remove(dir: &Path) {
    for (_, path) in paths(dir) {
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %path.display(), cause = %e, "removing pinned map");
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
