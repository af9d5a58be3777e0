//! The daemon's runtime record: which maps it owns and what it programmed, so `lb stats`
//! in another process can find them. One file per network namespace under /run/lb, keyed
//! by the namespace's inode: /run is shared by `ip netns exec` and `nsenter` alike,
//! unlike /sys/fs/bpf, which `ip netns exec` remounts.

use crate::dataplane::{Attachment, ServiceSlot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

pub const RUN_DIR: &str = "/run/lb";

#[derive(Debug, Serialize, Deserialize)]
pub struct RuntimeRecord {
    pub pid: u32,
    pub netns_inode: u64,
    pub maps: BTreeMap<String, u32>,
    pub attachments: Vec<Attachment>,
    pub services: Vec<ServiceSlot>,
    /// The admin API's address, if it is on.
    #[serde(default)]
    pub admin: Option<std::net::SocketAddr>,
    /// The state directory the daemon pinned its data path in.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// `--announce-table`, and the VIPs whose route is in it.
    #[serde(default)]
    pub announce_table: Option<u32>,
    #[serde(default)]
    pub announced: Vec<std::net::IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("reading this process's network namespace (/proc/self/ns/net): {0}")]
    Netns(#[source] std::io::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "no lb daemon runs in this network namespace (no {path}); run `lb stats` where `lb` runs, e.g. `ip netns exec NS lb stats`"
    )]
    NotRunning { path: PathBuf },
    #[error("the lb daemon recorded in {path} (pid {pid}) is gone")]
    Stale { path: PathBuf, pid: u32 },
}

/// Inode of the calling thread's network namespace.
pub fn netns_inode() -> Result<u64, RuntimeError> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .or_else(|_| std::fs::metadata("/proc/self/ns/net"))
        .map(|m| m.ino())
        .map_err(RuntimeError::Netns)
}

pub fn record_path(inode: u64) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("netns-{inode}.json"))
}

/// The default admin socket of the daemon of network namespace `inode`, where `lb ctl`
/// run in that namespace looks (beside the hand-over socket, `netns-<inode>.sock`).
pub fn admin_socket_path(inode: u64) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("netns-{inode}-admin.sock"))
}

impl RuntimeRecord {
    /// Writes the record atomically (temp file + rename) and returns its path.
    pub fn write(&self) -> Result<PathBuf, RuntimeError> {
        let path = record_path(self.netns_inode);
        let io = |source| RuntimeError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(RUN_DIR).map_err(io)?;
        let tmp = path.with_extension(format!("tmp{}", self.pid));
        let text = serde_json::to_vec_pretty(self).map_err(|source| RuntimeError::Parse {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(path)
    }

    /// Reads the record of the daemon running in this network namespace.
    pub fn read_current() -> Result<RuntimeRecord, RuntimeError> {
        let path = record_path(netns_inode()?);
        let rec = RuntimeRecord::read(&path)?;
        if !crate::sys::process_alive(rec.pid) {
            return Err(RuntimeError::Stale { path, pid: rec.pid });
        }
        Ok(rec)
    }

    /// Reads the record at `path`, whether its daemon still runs or not.
    pub fn read(path: &std::path::Path) -> Result<RuntimeRecord, RuntimeError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotRunning {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(RuntimeError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        serde_json::from_slice(&text).map_err(|source| RuntimeError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}
