//! `lb down`: takes lb out of this network namespace. The data path outlives the daemon
//! on purpose (a restart or upgrade keeps every flow), so removing it is a separate,
//! explicit step: stop a running daemon, remove the links (which detaches the programs),
//! the pinned maps and programs, the proxy VIPs' local routes, the runtime record and
//! the hand-over socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::announce;
use crate::daemon::handover;
use crate::dataplane::runtime::{self, RuntimeRecord};
use crate::dataplane::state;
use crate::proxy::route;
use crate::sys;

/// How long a running daemon may take to stop (its proxied connections get
/// `--shutdown-timeout`, 30 s by default).
const STOP_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DownError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("the lb daemon (pid {0}) did not stop within {STOP_WAIT:?} of SIGTERM")]
    StillRunning(u32),
    #[error("stopping the lb daemon (pid {pid}): {source}")]
    Signal { pid: u32, source: std::io::Error },
    #[error("removing {dir}: {source}")]
    Remove {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Takes lb down; returns what it did, a line each.
pub fn run(state_dir: Option<&Path>) -> Result<Vec<String>, DownError> {
    let inode = runtime::netns_inode()?;
    let record_path = runtime::record_path(inode);
    let record = RuntimeRecord::read(&record_path).ok();
    let mut done = Vec::new();
    if let Some(pid) = record
        .as_ref()
        .map(|r| r.pid)
        .filter(|p| sys::process_alive(*p))
    {
        stop(pid)?;
        done.push(format!("stopped the lb daemon (pid {pid})"));
    }
    let dir = match state_dir
        .map(Path::to_path_buf)
        .or_else(|| record.as_ref().and_then(|r| r.state_dir.clone()))
    {
        Some(d) => d,
        None => state::default_dir().map_err(|source| DownError::Remove {
            dir: PathBuf::from("/sys/fs/bpf/lb"),
            source,
        })?,
    };
    match announce::remove_all() {
        Ok(removed) => done.extend(removed.iter().map(|(table, vip)| {
            format!("withdrew VIP {vip} (its route in announce table {table})")
        })),
        Err(e) => done.push(format!("could not remove the announced VIP routes: {e}")),
    }
    for ip in state::pinned_proxy_vips(&dir) {
        match route::remove_local(ip) {
            Ok(()) => done.push(format!("removed the local route of proxy VIP {ip}")),
            Err(e) => done.push(format!("could not remove the local route of {ip}: {e}")),
        }
    }
    let removed = state::remove(&dir).map_err(|source| DownError::Remove {
        dir: dir.clone(),
        source,
    })?;
    if !removed.is_empty() {
        done.push(format!(
            "removed {} (links, programs and {} pinned objects)",
            dir.display(),
            removed.len()
        ));
    }
    // The default admin socket too: a daemon killed outright leaves it behind.
    let sockets = [
        handover::socket_path(inode),
        runtime::admin_socket_path(inode),
    ];
    for path in std::iter::once(record_path).chain(sockets) {
        if std::fs::remove_file(&path).is_ok() {
            done.push(format!("removed {}", path.display()));
        }
    }
    if done.is_empty() {
        done.push(format!(
            "nothing to remove: no daemon, no state in {}",
            dir.display()
        ));
    }
    Ok(done)
}

/// SIGTERM, then waits for the process to go.
fn stop(pid: u32) -> Result<(), DownError> {
    sys::kill(pid, libc::SIGTERM).map_err(|source| DownError::Signal { pid, source })?;
    let until = Instant::now() + STOP_WAIT;
    while sys::process_alive(pid) {
        if Instant::now() >= until {
            return Err(DownError::StillRunning(pid));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
