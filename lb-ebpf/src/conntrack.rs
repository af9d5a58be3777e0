//! Flow-table entries on the packet path: the clock they are stamped with, and how a
//! packet refreshes its flow. When an entry is over is `lb_common::flow`'s rule.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{flow, maps::FlowState};

/// CLOCK_MONOTONIC to the last tick: enough for timeouts of seconds, and in a VM it
/// reads no clock source (the precise `bpf_ktime_get_ns` reads the TSC through the
/// paravirtual clock, a few percent of the per-packet cost).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Stamps the flow with the packet's time and adds the FIN/RST bits its TCP flags
/// carry (`fin`: the sender's `FLOW_FIN_*` bit). Concurrent writers on other CPUs only
/// store timestamps and flag bits, where a lost update is harmless; the flags are only
/// written when they change, so the common packet dirties no more than the timestamp.
#[inline(always)]
pub fn touch(fs: &mut FlowState, now: u64, tcp_flags: u8, fin: u8) {
    fs.last_seen_ns = now;
    let f = flow::flags_from_tcp(tcp_flags, fin);
    if f & !fs.flags != 0 {
        fs.flags |= f;
    }
}
