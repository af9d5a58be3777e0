//! Traffic counters of services and backends (packets, bytes, new flows), bumped where
//! a packet is actually sent on.

use lb_common::maps::TrafficCounters;

use crate::maps::{BACKEND_STATS, SERVICE_STATS};

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
        // SAFETY: this CPU's slot of a per-CPU array (see `verdict::finish`).
        unsafe { (*t).new_flows += 1 };
    }
    if let Some(t) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: this CPU's slot of a per-CPU array (see `verdict::finish`).
        unsafe { (*t).new_flows += 1 };
    }
}

#[inline(always)]
fn add(t: Option<*mut TrafficCounters>, dir: Dir, bytes: u64) {
    let Some(t) = t else { return };
    // SAFETY: this CPU's slot of a per-CPU array (see `verdict::finish`).
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
