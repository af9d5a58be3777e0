//! Loading the embedded eBPF object: maps sized from the configuration, pinned flow
//! tables reused (after a size check), and the XDP program and its TC companion through
//! the verifier.

use std::path::Path;

use aya::programs::ProgramError;
use aya::{Ebpf, EbpfLoader};
use lb_common::maps::names;
use tracing::info;

use super::{Dataplane, DataplaneError, lb_program, map_error, neigh_program, object, pin};
use crate::config::Config;

impl Dataplane {
    /// Loads the embedded object with maps sized from `cfg` and verifies the program.
    /// Nothing is attached yet.
    pub fn load(cfg: &Config) -> Result<Dataplane, DataplaneError> {
        let bytes = object::require()?;
        let maglev_entries = cfg.max_services * 2 * cfg.ring_size;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::MAGLEV, maglev_entries)
            .map_max_entries(names::FLOWS, cfg.max_flows)
            .map_max_entries(names::HALF_OPEN, half_open_entries(cfg.max_flows))
            .map_max_entries(names::REVERSE_NAT, cfg.max_flows)
            // Two sockets per proxied connection.
            .map_max_entries(names::SPLICE, cfg.max_conns.saturating_mul(2))
            .map_max_entries(names::SPLICE_HOOK, cfg.max_conns.saturating_mul(2));
        super::ebpf_log::configure(&mut loader);
        let mut reused = Vec::new();
        if let Some(dir) = &cfg.pin_dir {
            pin::prepare(dir)?;
            for (map, path) in pin::paths(dir) {
                if path.exists() {
                    reused.push(map);
                }
                loader.map_pin_path(map, path);
            }
        }
        let mut ebpf = loader
            .load(bytes)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        if let Some(dir) = &cfg.pin_dir {
            check_pinned_sizes(&ebpf, cfg.max_flows, dir, &reused)?;
        }
        lb_program(&mut ebpf)?
            .load()
            .map_err(verifier_error(names::PROG_LB))?;
        neigh_program(&mut ebpf)?
            .load()
            .map_err(verifier_error(names::PROG_NEIGH))?;
        super::ebpf_log::forward(&mut ebpf);
        info!(
            maglev_entries,
            max_flows = cfg.max_flows,
            "loaded XDP program {}",
            names::PROG_LB
        );
        Ok(Dataplane {
            ebpf,
            ring_size: cfg.ring_size,
            pin_dir: cfg.pin_dir.clone(),
            links: Vec::new(),
            neigh_links: Vec::new(),
            attachments: Vec::new(),
        })
    }
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

/// A reused pin must match this run's sizes: aya opens a pinned map as it is.
fn check_pinned_sizes(
    ebpf: &Ebpf,
    max_flows: u32,
    dir: &Path,
    reused: &[&'static str],
) -> Result<(), DataplaneError> {
    for (map, path) in pin::paths(dir) {
        let info = match ebpf.map(map) {
            Some(aya::maps::Map::LruHashMap(d)) => d.info(),
            _ => return Err(DataplaneError::MissingMap(map)),
        }
        .map_err(map_error(map))?;
        // The size this run gives the map (see `load`).
        let wanted = if map == names::HALF_OPEN {
            half_open_entries(max_flows)
        } else {
            max_flows
        };
        if info.max_entries() != wanted {
            return Err(DataplaneError::PinnedSize {
                path,
                entries: info.max_entries(),
                wanted,
                max_flows,
            });
        }
        if reused.contains(&map) {
            info!(map, path = %path.display(), "reusing pinned flow table: established flows keep their backends");
        }
    }
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
