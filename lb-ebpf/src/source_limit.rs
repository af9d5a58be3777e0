//! The per-source new-flow limit on the packet path: a SYN that would open a flow takes
//! a token from its source's bucket (`lb_common::source_limit`), or is dropped.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    maps::{GlobalConfig, SourceKey},
    source_limit::{Decision, admit},
    tcp,
};

use crate::{maps::SOURCE_BUCKETS, parse::Packet};

/// Whether the packet, which found no flow, may open one. Only SYNs are limited: a
/// mid-stream segment whose flow entry is gone (evicted, a restart without pins) belongs
/// to a connection already open, and dropping it would cut that connection.
#[inline(never)]
pub fn admits(pkt: &Packet, cfg: &GlobalConfig) -> bool {
    if cfg.source_rate == 0 || pkt.tcp_flags & tcp::SYN == 0 {
        return true;
    }
    let key = SourceKey::of(&pkt.key.src, pkt.key.family);
    let slot = SOURCE_BUCKETS.get_ptr_mut(&key);
    // SAFETY: a map value stays valid for the whole program run (RCU). Another CPU may
    // update the same bucket meanwhile: both may take the same token (a lost update), a
    // small overshoot the README documents; a u64 store is never seen half done.
    let next = slot.map(|p| unsafe { *p });
    match admit(next, pkt.now, cfg.source_rate, cfg.source_burst) {
        Decision::Admit { next_ns } => {
            match slot {
                // SAFETY: as above.
                Some(p) => unsafe { *p = next_ns },
                // A full map evicts its least recently used source; if even that
                // fails the flow is let through: the limit never blocks a source by
                // mistake.
                None => {
                    let _ = SOURCE_BUCKETS.insert(&key, &next_ns, BPF_ANY as u64);
                }
            }
            true
        }
        Decision::Deny { store } => {
            if let (Some(p), Some(v)) = (slot, store) {
                // SAFETY: as above.
                unsafe { *p = v };
            }
            false
        }
    }
}
