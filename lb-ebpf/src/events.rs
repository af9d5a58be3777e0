//! Log records (aya-log-ebpf) of rare events: drops that mean the LB is short of
//! something (flow table, SNAT ports, a route, a map entry the daemon writes) and branches
//! that exist only for the verifier. Never called on a packet's normal path. Each is a
//! call of its own, so the record's code stays off the callers' stack and instruction
//! budget; the daemon sets which levels are written when it loads the program. A CPU
//! writes at most one record a second (`LOG_LAST`), so a failure that lasts costs one
//! line a second, not one a packet; the counters still count every packet.

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::{error, warn};
use lb_common::counters;

use crate::{conntrack, maps::LOG_LAST};

/// The shortest time between two records of one CPU.
const LOG_INTERVAL_NS: u64 = 1_000_000_000;

/// Whether this CPU may write a record now; if so, the time is taken.
#[inline(always)]
fn may_log() -> bool {
    let Some(last) = LOG_LAST.get_ptr_mut(0) else {
        return false;
    };
    let now = conntrack::now();
    // SAFETY: a per-CPU slot has a single writer: this program, running to completion on
    // this CPU with preemption off.
    unsafe {
        if *last != 0 && now.wrapping_sub(*last) < LOG_INTERVAL_NS {
            return false;
        }
        *last = now;
    }
    true
}

/// Logs a drop of the rare kinds; other counters are not logged.
#[inline(never)]
pub fn dropped(ctx: &XdpContext, counter: u32) {
    let why = match counter {
        counters::DROP_FLOW_TABLE_FULL => "the flow table is full (raise --max-flows)",
        counters::DROP_SNAT_EXHAUSTED => "every SNAT port tried toward the backend is taken",
        counters::DROP_NO_ROUTE => "no route toward the next hop",
        counters::DROP_NO_NEIGH => {
            "no neighbour entry for the next hop, and no hand-off mark yet to hand it to TC"
        }
        counters::DROP_INTERNAL => {
            return internal(ctx, "a map entry the daemon writes is missing");
        }
        _ => return,
    };
    if !may_log() {
        return;
    }
    // One statement with the reason as an argument: each statement is a few hundred
    // instructions.
    warn!(ctx, "packet dropped: {}", why);
}

/// Logs that a branch kept only for the verifier was taken (a header the parser
/// checked was out of bounds): a bug.
#[inline(always)]
pub fn unreachable(ctx: &XdpContext) {
    internal(ctx, "a verifier-only branch was taken");
}

#[inline(never)]
fn internal(ctx: &XdpContext, what: &str) {
    if !may_log() {
        return;
    }
    error!(ctx, "internal error, packet dropped: {}", what);
}
