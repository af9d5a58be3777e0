//! Flow entries of the 32-byte layout (lb before flows kept their age and packet count)
//! carried into this layout's tables at an upgrade, so an upgrade across the change
//! keeps every connection on its backend and SNAT port.
//!
//! The earlier program keeps writing its own tables until this daemon's attach replaces
//! it, so the entries are carried twice: before the attach, so this program starts with
//! them, and after it, for the flows opened or changed in between; only then do the
//! old pins go. Of two entries for one flow, the one with the later packet wins. A
//! carried flow's age is unknown (`first_seen_ns` 0) and its packets are counted from
//! the carry on.

use aya::maps::{HashMap, Map, MapData};
use lb_common::maps::{FLOW_STATE_32_BYTE_LAYOUT, FlowKey, FlowState};
use tracing::{info, warn};

use super::{Dataplane, DataplaneError, map_error};

/// How the carrying went for one old table.
#[derive(Debug, Default, PartialEq, Eq)]
struct Carried {
    /// Entries written into the current table.
    entries: usize,
    /// Entries the current table had already, as new as the old one or newer.
    present: usize,
}

impl Dataplane {
    /// Carries the entries of every older-layout flow table in the state directory into
    /// the current one. With `last`, after the attach, the old pins are removed too. A
    /// table that cannot be carried is said in the log; its flows start again.
    pub fn carry_old_flows(&mut self, last: bool) {
        for (map, path) in self.state.carried_paths() {
            match self.carry_one(map, &path) {
                Ok(c) => info!(
                    pin = %path.display(),
                    carried = c.entries,
                    already = c.present,
                    "carried the flow entries of the previous layout into {map}"
                ),
                Err(e) => warn!(
                    pin = %path.display(),
                    cause = %e,
                    "cannot carry the flow entries of the previous layout: those flows start again"
                ),
            }
            if last && let Err(e) = std::fs::remove_file(&path) {
                warn!(pin = %path.display(), cause = %e, "cannot remove the previous layout's pin");
            }
        }
    }

    fn carry_one(
        &mut self,
        map: &'static str,
        path: &std::path::Path,
    ) -> Result<Carried, DataplaneError> {
        let old = MapData::from_pin(path).map_err(map_error(map))?;
        let old = Map::from_map_data(old).map_err(map_error(map))?;
        let old: HashMap<&MapData, FlowKey, [u8; FLOW_STATE_32_BYTE_LAYOUT]> =
            HashMap::try_from(&old).map_err(map_error(map))?;
        let mut current: HashMap<&mut MapData, FlowKey, FlowState> = self.map_mut(map)?;
        let mut carried = Carried::default();
        for entry in old.iter() {
            // An entry can vanish between the walk's key and its lookup: skip it.
            let Ok((key, value)) = entry else { continue };
            let mut fs = FlowState::from_32_byte_layout(&value);
            if let Ok(here) = current.get(&key, 0) {
                if here.last_seen_ns >= fs.last_seen_ns {
                    carried.present += 1;
                    continue;
                }
                // The old program saw a later packet (its flags may have moved on):
                // its fields, this entry's count.
                fs.first_seen_ns = here.first_seen_ns;
                fs.packets = here.packets;
            }
            current.insert(key, fs, 0).map_err(map_error(map))?;
            carried.entries += 1;
        }
        Ok(carried)
    }
}
