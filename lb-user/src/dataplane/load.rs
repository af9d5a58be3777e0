//! Loading the embedded eBPF object: maps sized from the configuration and pinned in the
//! state directory (or adopted from it, after a size check), and the programs through the
//! verifier. Nothing is attached or written here, so a running data path (or the daemon
//! being upgraded) is untouched until the caller decides.

use aya::maps::{MapData, ProgramArray};
use aya::programs::{ProgramError, Xdp};
use aya::{Ebpf, EbpfLoader};
use lb_common::maps::names;
use tracing::info;

use super::state::{self, StateDir};
use super::{
    Dataplane, DataplaneError, lb_program, map_data, map_error, neigh_program, object,
    program_error,
};
use crate::config::Config;

impl Dataplane {
    /// Loads the embedded object with maps sized from `cfg`, pinned in (or adopted from)
    /// the state directory, and verifies the programs. Nothing is attached yet.
    pub fn load(cfg: &Config) -> Result<Dataplane, DataplaneError> {
        let bytes = object::require()?;
        let dir = match &cfg.state_dir {
            Some(d) => d.clone(),
            None => state::default_dir().map_err(DataplaneError::StateIo)?,
        };
        let state = StateDir::open(&dir)?;
        let sizes = Sizes::of(cfg);
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::MAGLEV, sizes.maglev)
            .map_max_entries(names::FLOWS, sizes.flows)
            .map_max_entries(names::HALF_OPEN, sizes.half_open)
            .map_max_entries(names::REVERSE_NAT, sizes.flows)
            .map_max_entries(names::SPLICE, sizes.splice)
            .map_max_entries(names::SPLICE_HOOK, sizes.splice);
        super::ebpf_log::configure(&mut loader);
        for (map, path) in state.map_paths() {
            loader.map_pin_path(map, path);
        }
        let loaded = loader
            .load(bytes)
            .map_err(|e| DataplaneError::Load(Box::new(e)))
            .and_then(|ebpf| {
                check_adopted_sizes(&ebpf, &state, &sizes)?;
                Ok(ebpf)
            });
        let mut ebpf = match loaded {
            Ok(e) => e,
            Err(e) => {
                // A fresh state directory goes with the failed start; an adopted one
                // stays as the running data path uses it.
                if !state.adopted() {
                    let _ = state::remove(state.root());
                }
                return Err(e);
            }
        };
        let verified = lb_program(&mut ebpf)
            .and_then(|p| retrying_signals(|| p.load()).map_err(verifier_error(names::PROG_LB)))
            .and_then(|()| {
                let p = neigh_program(&mut ebpf)?;
                retrying_signals(|| p.load()).map_err(verifier_error(names::PROG_NEIGH))
            })
            .and_then(|()| load_direct(&mut ebpf));
        if let Err(e) = verified {
            if !state.adopted() {
                let _ = state::remove(state.root());
            }
            return Err(e);
        }
        super::ebpf_log::forward(&mut ebpf);
        info!(
            maglev_entries = sizes.maglev,
            max_flows = cfg.max_flows,
            state_dir = %state.root().display(),
            state = ?state.found,
            "loaded XDP program {}",
            names::PROG_LB
        );
        let mut dp = Dataplane {
            ebpf,
            ring_size: cfg.ring_size,
            state,
            attachments: Vec::new(),
        };
        // Nothing is attached yet: the adopted services' slots are in place before this
        // daemon's program sees a packet.
        dp.rebuild_service_slots()?;
        Ok(dp)
    }
}

/// Loads `lb_direct` and makes it the one `lb_xdp` tail-calls: in place of an earlier
/// daemon's, if the program array was adopted.
fn load_direct(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let prog: &mut Xdp = ebpf
        .program_mut(names::PROG_DIRECT)
        .ok_or(DataplaneError::MissingProgram(names::PROG_DIRECT))?
        .try_into()
        .map_err(program_error(names::PROG_DIRECT))?;
    retrying_signals(|| prog.load()).map_err(verifier_error(names::PROG_DIRECT))?;
    let fd = prog
        .fd()
        .map_err(program_error(names::PROG_DIRECT))?
        .try_clone()
        .map_err(|e| DataplaneError::Program {
            program: names::PROG_DIRECT,
            source: Box::new(e.into()),
        })?;
    let mut direct: ProgramArray<&mut MapData> = ebpf
        .map_mut(names::DIRECT)
        .ok_or(DataplaneError::MissingMap(names::DIRECT))?
        .try_into()
        .map_err(map_error(names::DIRECT))?;
    direct.set(0, &fd, 0).map_err(map_error(names::DIRECT))
}

/// The sizes of the maps the configuration sizes.
struct Sizes {
    maglev: u32,
    flows: u32,
    half_open: u32,
    splice: u32,
}

impl Sizes {
    fn of(cfg: &Config) -> Sizes {
        Sizes {
            maglev: cfg.max_services * 2 * cfg.ring_size,
            flows: cfg.max_flows,
            half_open: half_open_entries(cfg.max_flows),
            // Two sockets per proxied connection.
            splice: cfg.max_conns.saturating_mul(2),
        }
    }
}

/// Tries to load a program again when the verifier gave up because a signal arrived
/// (EAGAIN): `lb_xdp` takes the verifier seconds, and a child process exiting meanwhile
/// (a health check's, a test's) signals the loading thread. Any other outcome is final.
fn retrying_signals(
    mut load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    const TRIES: usize = 5;
    for _ in 1..TRIES {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) => {}
            done => return done,
        }
    }
    load()
}

/// The error of a failed program load, with the verifier's log when it rejected it.
fn verifier_error(program: &'static str) -> impl Fn(ProgramError) -> DataplaneError {
    move |e| match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => DataplaneError::Verifier {
            program,
            source: io_error,
            log: verifier_log.to_string(),
        },
        other => DataplaneError::Program {
            program,
            source: Box::new(other),
        },
    }
}

/// An adopted map must have this run's size: aya opens a pinned map as it is.
fn check_adopted_sizes(ebpf: &Ebpf, state: &StateDir, sizes: &Sizes) -> Result<(), DataplaneError> {
    if !state.adopted() {
        return Ok(());
    }
    let wanted = [
        (names::FLOWS, sizes.flows, "--max-flows"),
        (names::REVERSE_NAT, sizes.flows, "--max-flows"),
        (names::HALF_OPEN, sizes.half_open, "--max-flows"),
        (
            names::MAGLEV,
            sizes.maglev,
            "--max-services and --ring-size",
        ),
        (names::SPLICE, sizes.splice, "--max-conns"),
        (names::SPLICE_HOOK, sizes.splice, "--max-conns"),
    ];
    for (map, wanted, flags) in wanted {
        let data = ebpf
            .map(map)
            .and_then(map_data)
            .ok_or(DataplaneError::MissingMap(map))?;
        let entries = data.info().map_err(super::map_error(map))?.max_entries();
        if entries != wanted {
            let path = state
                .map_paths()
                .into_iter()
                .find(|(m, _)| *m == map)
                .map(|(_, p)| p)
                .unwrap_or_default();
            return Err(DataplaneError::PinnedSize {
                path,
                entries,
                wanted,
                flags,
            });
        }
    }
    info!(dir = %state.root().display(), "adopted the pinned state: established flows keep their backends");
    Ok(())
}

/// Size of the half-open flow table: a sixteenth of the flow table, at least 1024. A
/// flood of SYNs nobody completes cycles through it; the newest of them keep their
/// entries and SNAT ports, the older ones give theirs back. Small on purpose: what it
/// holds, a flood holds of the SNAT ports (16,384 at the default --max-flows, against
/// 22,768 ports per backend and SNAT address), while a real handshake needs its entry
/// for one round trip; even at 30,000 flood SYNs a second an entry lasts half a second.
pub fn half_open_entries(max_flows: u32) -> u32 {
    (max_flows / 16).max(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya_obj::VerifierLog;

    fn load_error(errno: i32) -> ProgramError {
        ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(errno),
            verifier_log: VerifierLog::new(String::new()),
        }
    }

    #[test]
    fn a_load_interrupted_by_a_signal_is_tried_again() {
        let mut calls = 0;
        let r = retrying_signals(|| {
            calls += 1;
            if calls < 3 {
                Err(load_error(libc::EAGAIN))
            } else {
                Ok(())
            }
        });
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_rejection_is_final_and_signals_are_tried_a_bounded_number_of_times() {
        let mut calls = 0;
        let r = retrying_signals(|| {
            calls += 1;
            Err(load_error(libc::EACCES))
        });
        assert!(matches!(r, Err(ProgramError::LoadError { .. })));
        assert_eq!(calls, 1, "the verifier's rejection is not retried");
        let mut calls = 0;
        let r = retrying_signals(|| {
            calls += 1;
            Err(load_error(libc::EAGAIN))
        });
        assert!(r.is_err());
        assert_eq!(calls, 5);
    }
}
