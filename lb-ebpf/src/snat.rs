//! SNAT ports: a new flow claims the source port it uses toward its backend by
//! inserting the reverse NAT entry that maps the backend's replies back to it.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{
    flow::{self, Opening},
    maps::{Backend, FlowKey, GlobalConfig, ReverseNat},
};

use crate::{
    maps::{FLOWS, REVERSE_NAT},
    parse::Packet,
};

/// SNAT ports tried for a new flow before giving up: enough that a port whose last
/// flow's backend would refuse this SYN (TIME_WAIT) rarely ends the search.
const SNAT_PROBES: u32 = 32;

/// What a new flow has chosen so far, for [`claim_snat_port`].
pub struct Ids {
    pub backend: u32,
    pub service: u32,
    pub hash: u32,
    /// The flow's opening segment, for `flow::port_free_for`.
    pub opening: Opening,
}

/// Claims a SNAT port toward backend `b` by inserting the reverse NAT entry; returns the
/// port (network order). Candidates start at a port derived from the flow hash (so a
/// flow re-created after eviction likely gets its old port back) and go up by one,
/// wrapping inside the range. A taken port is reused if the entry is stale (its flow is
/// gone or moved), this flow's own, or its flow is over as far as the backend is
/// concerned for a connection opening with `ids.opening` (`flow::port_free_for`).
#[inline(never)]
pub fn claim_snat_port(pkt: &Packet, cfg: &GlobalConfig, b: &Backend, ids: &Ids) -> Option<u16> {
    let (min, max) = (cfg.snat_port_min, cfg.snat_port_max);
    if min == 0 || max < min {
        return None;
    }
    let range = (max - min) as u32 + 1;
    // Other bits of the hash than the Maglev slot's, so the flows of a slot spread.
    let first = ids.hash.rotate_right(16) % range;
    let key = FlowKey {
        src: b.addr,
        dst: b.snat_addr,
        sport: b.port,
        dport: 0,
        proto: pkt.key.proto,
        family: pkt.key.family,
        _pad: [0; 2],
    };
    let val = ReverseNat {
        flow: pkt.key,
        backend: ids.backend,
        service_id: ids.service,
    };
    let mut key = key;
    let mut i = 0;
    while i < SNAT_PROBES {
        let port = (min + ((first + i) % range) as u16).to_be();
        key.dport = port;
        if REVERSE_NAT.insert(&key, &val, BPF_NOEXIST as u64).is_ok() {
            return Some(port);
        }
        if let Some(old) = REVERSE_NAT.get_ptr(&key) {
            // SAFETY: a map value stays valid for the whole program run.
            if reusable(unsafe { &*old }, pkt, port, cfg, &ids.opening)
                && REVERSE_NAT.insert(&key, &val, BPF_ANY as u64).is_ok()
            {
                return Some(port);
            }
        }
        i += 1;
    }
    None
}

/// Whether the reverse NAT entry holding `port` may be taken over by the packet's flow:
/// it is stale (its flow is gone, or uses another backend or port), the flow's own
/// while open (re-created after it expired), or its flow leaves the backend ready for
/// `opening`. Not inlined: keeps the comparison's loads off the probe loop's stack.
#[inline(never)]
fn reusable(
    old: &ReverseNat,
    pkt: &Packet,
    port: u16,
    cfg: &GlobalConfig,
    opening: &Opening,
) -> bool {
    let Some(fs) = FLOWS.get_ptr(&old.flow) else {
        return true;
    };
    // SAFETY: a map value stays valid for the whole program run.
    let fs = unsafe { &*fs };
    if fs.backend != old.backend || fs.snat_port != port {
        return true;
    }
    if old.flow == pkt.key && !flow::closed(fs.flags) {
        return true;
    }
    flow::port_free_for(fs, cfg, pkt.now, opening)
}
