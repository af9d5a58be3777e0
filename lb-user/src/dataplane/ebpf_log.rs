//! The XDP program's log records (aya-log-ebpf; written on rare paths only: flow table
//! full, SNAT ports exhausted, no route, internal errors) forwarded to the daemon's
//! `tracing` output under targets `lb_ebpf::…`.
//!
//! `LB_LOG` decides which levels the program writes at all: [`level`] reads the filter
//! for target `lb_ebpf` when the program is loaded (e.g. `LB_LOG=info,lb_ebpf=off` turns
//! them off), so a disabled statement costs the program one load and compare.

use aya::{Ebpf, EbpfLoader};
use log::Level;
use tracing::{debug, warn};

/// The target the program's records are filtered by (they carry `lb_ebpf::<module>`).
const TARGET: &str = "lb_ebpf";

/// aya-log-ebpf's level value (`AYA_LOG_LEVEL`): records up to this level are written;
/// 0 writes none. The levels' numbers are aya-log-common's (`Error` = 1 … `Trace` = 5).
fn level() -> u8 {
    let levels = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
    ];
    levels
        .iter()
        .find(|&&l| log::log_enabled!(target: TARGET, l))
        .map_or(0, |&l| l as u8)
}

/// Sets which levels the program will write, from the `tracing` filter (see the module
/// doc). Objects without log statements have no such global: nothing is set then.
pub fn configure(loader: &mut EbpfLoader<'_>) {
    // The loader keeps a reference to the value until it loads.
    static LEVELS: [u8; 6] = [0, 1, 2, 3, 4, 5];
    loader.override_global(aya_log::LEVEL, &LEVELS[usize::from(level())], false);
}

/// Starts forwarding the loaded object's records to `tracing`, on the current tokio
/// runtime. Never fails the daemon: without the log map (an object with no log
/// statement) or a runtime there is nothing to forward, and any other problem is
/// reported as a warning.
pub fn forward(ebpf: &mut Ebpf) {
    // The runtime first: without one the log map stays in the object for another reader.
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        debug!("no tokio runtime: eBPF log records will not be shown");
        return;
    };
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(aya_log::Error::MapNotFound) => {
            debug!("the eBPF object writes no log records");
            return;
        }
        Err(e) => {
            warn!(cause = %e, "eBPF log records will not be shown");
            return;
        }
    };
    let _guard = rt.enter();
    let mut fd = match crate::sys::async_ebpf_logger(logger) {
        Ok(fd) => fd,
        Err(e) => {
            warn!(cause = %e, "eBPF log records will not be shown");
            return;
        }
    };
    rt.spawn(async move {
        loop {
            let Ok(mut ready) = fd.readable_mut().await else {
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The level numbers must be aya-log-common's, which `AYA_LOG_LEVEL` is compared with.
    #[test]
    fn log_levels_number_like_aya_log() {
        assert_eq!(Level::Error as u8, 1);
        assert_eq!(Level::Warn as u8, 2);
        assert_eq!(Level::Info as u8, 3);
        assert_eq!(Level::Debug as u8, 4);
        assert_eq!(Level::Trace as u8, 5);
    }
}
