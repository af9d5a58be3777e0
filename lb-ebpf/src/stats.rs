//! Verdicts and counters. Every packet ends in a [`Verdict`] (XDP action + the one
//! `COUNTERS` index it bumps), turned into the action at the single exit point
//! [`finish`]. Traffic counters of services and backends are bumped where a packet is
//! actually sent on.

use aya_ebpf::bindings::xdp_action;
use lb_common::{maps::TrafficCounters, stats};

use crate::maps::{BACKEND_STATS, COUNTERS, SERVICE_STATS};

/// What happens to a packet: an XDP action and the counter that says why.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Verdict(u32);

impl Verdict {
    #[inline(always)]
    pub const fn new(action: u32, counter: u32) -> Self {
        Verdict((counter << 8) | action)
    }

    /// Passed to the kernel untouched: not ours.
    pub const PASS: Verdict = Verdict::new(xdp_action::XDP_PASS, stats::PASS);

    /// Dropped, counted under `counter`.
    #[inline(always)]
    pub const fn drop(counter: u32) -> Self {
        Verdict::new(xdp_action::XDP_DROP, counter)
    }

    /// Passed to the kernel, counted under `counter`.
    #[inline(always)]
    pub const fn pass(counter: u32) -> Self {
        Verdict::new(xdp_action::XDP_PASS, counter)
    }

    /// Sent back out of the interface it arrived on (`XDP_TX`), counted under `counter`.
    #[inline(always)]
    pub const fn tx(counter: u32) -> Self {
        Verdict::new(xdp_action::XDP_TX, counter)
    }

    #[inline(always)]
    pub const fn action(self) -> u32 {
        self.0 & 0xff
    }

    #[inline(always)]
    pub const fn counter(self) -> u32 {
        self.0 >> 8
    }
}

/// The single exit point: bumps the verdict's counter, returns its action.
#[inline(always)]
pub fn finish(v: Verdict) -> u32 {
    if let Some(c) = COUNTERS.get_ptr_mut(v.counter()) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, valid for the whole
        // program run, and no other program instance runs on this CPU meanwhile.
        unsafe { *c += 1 };
    }
    v.action()
}

/// Which direction a packet travelled, for the traffic counters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client → backend.
    In,
    /// Backend → client.
    Out,
}

/// Counts a forwarded packet of `bytes` for a service and a backend.
#[inline(always)]
pub fn traffic(service: u32, backend: u32, dir: Dir, bytes: u64) {
    add(SERVICE_STATS.get_ptr_mut(service), dir, bytes);
    add(BACKEND_STATS.get_ptr_mut(backend), dir, bytes);
}

/// Counts a packet of `bytes` for a service alone (its backend is not known here).
#[inline(always)]
pub fn service_traffic(service: u32, dir: Dir, bytes: u64) {
    add(SERVICE_STATS.get_ptr_mut(service), dir, bytes);
}

/// Counts a new flow for a service and a backend.
#[inline(always)]
pub fn new_flow(service: u32, backend: u32) {
    if let Some(t) = SERVICE_STATS.get_ptr_mut(service) {
        // SAFETY: this CPU's slot of a per-CPU array (see `finish`).
        unsafe { (*t).new_flows += 1 };
    }
    if let Some(t) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: this CPU's slot of a per-CPU array (see `finish`).
        unsafe { (*t).new_flows += 1 };
    }
}

#[inline(always)]
fn add(t: Option<*mut TrafficCounters>, dir: Dir, bytes: u64) {
    let Some(t) = t else { return };
    // SAFETY: this CPU's slot of a per-CPU array (see `finish`).
    let t = unsafe { &mut *t };
    match dir {
        Dir::In => {
            t.packets_in += 1;
            t.bytes_in += bytes;
        }
        Dir::Out => {
            t.packets_out += 1;
            t.bytes_out += bytes;
        }
    }
}
