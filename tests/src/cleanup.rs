//! A process-wide registry of what the test bed created (namespaces, processes, temp
//! dirs), so a Ctrl-C during the demo can undo it: drop guards do not run on a signal.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use crate::sys;

#[derive(Default)]
struct Registry {
    namespaces: Vec<String>,
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    namespaces: Vec::new(),
    pids: Vec::new(),
    dirs: Vec::new(),
});

/// Set (with the registry locked) once the Ctrl-C handler has started cleaning up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Drop guards call this first: after a Ctrl-C the handler owns the cleanup, so this
/// blocks (on the registry lock the handler holds until it exits the process) instead
/// of racing it.
pub(crate) fn yield_to_handler() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        let _wait = registry();
        // Not reached while the handler runs: it exits the process holding the lock.
    }
}

fn registry() -> MutexGuard<'static, Registry> {
    // A panicking test must not stop the others from cleaning up.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn add_namespace(name: &str) {
    registry().namespaces.push(name.to_owned());
}

pub(crate) fn remove_namespace(name: &str) {
    registry().namespaces.retain(|n| n != name);
}

pub(crate) fn add_pid(pid: u32) {
    registry().pids.push(pid);
}

pub(crate) fn remove_pid(pid: u32) {
    registry().pids.retain(|p| *p != pid);
}

pub(crate) fn add_dir(dir: PathBuf) {
    registry().dirs.push(dir);
}

pub(crate) fn remove_dir(dir: &PathBuf) {
    registry().dirs.retain(|d| d != dir);
}

/// Installs a Ctrl-C (SIGINT/SIGTERM) handler that undoes everything registered and
/// exits 130. Idempotent; fails only if another handler was installed by someone else.
pub fn install_ctrlc_handler() -> anyhow::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = ctrlc::set_handler(|| {
            let mut r = registry();
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("\ninterrupted: cleaning up namespaces and processes");
            cleanup_locked(&mut r);
            std::process::exit(130);
        });
    });
    result.map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))
}

/// Stops every registered process (SIGTERM, then SIGKILL after a grace period, so the
/// daemon gets a chance to detach), deletes every registered namespace and temp dir.
pub fn cleanup_all() {
    cleanup_locked(&mut registry());
}

fn cleanup_locked(r: &mut Registry) {
    let pids = std::mem::take(&mut r.pids);
    let namespaces = std::mem::take(&mut r.namespaces);
    let dirs = std::mem::take(&mut r.dirs);
    for &pid in &pids {
        let _ = sys::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|&p| sys::alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in &pids {
        let _ = sys::kill(pid, libc::SIGKILL);
    }
    for ns in &namespaces {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", ns])
            .status();
    }
    for dir in &dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}
