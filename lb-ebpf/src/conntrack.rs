//! Flow-table entries on the packet path: where they live (half-open flows in
//! `HALF_OPEN`, the others in `FLOWS`), the clock they are stamped with, and how a
//! packet refreshes its flow. When an entry is over is `lb_common::flow`'s rule.

use core::{
    intrinsics::{AtomicOrdering, atomic_and, atomic_or},
    mem::offset_of,
};

use aya_ebpf::bindings::BPF_ANY;
use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
use aya_ebpf::programs::XdpContext;
use lb_common::{
    flow,
    maps::{
        FLOW_BACKEND_TIME_WAIT, FLOW_CLIENT_TS, FLOW_ESTABLISHED, FLOW_FIN_BACKEND,
        FLOW_FIN_CLIENT, FLOW_RST, FlowKey, FlowState,
    },
    tcp,
};

use crate::{
    maps::{CLOCK, FLOWS, HALF_OPEN},
    parse::Packet,
    sequence::{self, Sequence},
};

/// A flow's entry and whether it is in `HALF_OPEN`.
pub struct Entry {
    pub state: *mut FlowState,
    pub half_open: bool,
}

/// The entry of flow `key`, established or half-open.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<Entry> {
    if let Some(state) = FLOWS.get_ptr_mut(key) {
        return Some(Entry {
            state,
            half_open: false,
        });
    }
    HALF_OPEN.get_ptr_mut(key).map(|state| Entry {
        state,
        half_open: true,
    })
}

/// Enters a new flow: a half-open one in `HALF_OPEN` (and the key's old entry in
/// `FLOWS`, a closed flow whose client reuses its port, goes), any other in `FLOWS`.
/// False if the map refused it.
///
/// A new half-open entry is looked up once right away: that sets its LRU reference
/// bit, as the backend's SYN-ACK would a moment later. The kernel's LRU makes room for
/// a new entry by taking entries without that bit first. In a table full of entries
/// that have it (a flood's, whose SYN-ACKs looked them up, and the completed flows the
/// table keeps until they are pushed out) the ones without it were the newest, so a
/// new flow pushed out one entered just before it, before its SYN-ACK came: in one run
/// of the bench's SYN flood the LB reset 205 real clients' SYN-ACKs as stale answers,
/// 11 with this lookup.
#[inline(always)]
pub fn insert(key: &FlowKey, fs: &FlowState) -> bool {
    if fs.flags & FLOW_ESTABLISHED == 0 {
        let _ = FLOWS.remove(key);
        let ok = HALF_OPEN.insert(key, fs, BPF_ANY as u64).is_ok();
        if ok {
            let _ = HALF_OPEN.get_ptr(key);
        }
        ok
    } else {
        FLOWS.insert(key, fs, BPF_ANY as u64).is_ok()
    }
}

/// Copies a half-open flow whose handshake just completed to `FLOWS`, where lookups find
/// it first from now on. The `HALF_OPEN` entry is left to be evicted (or overwritten by
/// the key's next SYN), not deleted: a deleted LRU entry goes back to the free list at
/// once, and a packet of the flow on another CPU could still be writing to it. Marked
/// established, it counts as half-open nowhere.
#[inline(always)]
pub fn promote(key: &FlowKey, fs: &FlowState) {
    let _ = FLOWS.insert(key, fs, BPF_ANY as u64);
}

/// CLOCK_MONOTONIC to the last tick: enough for timeouts of seconds, and in a VM it
/// reads no clock source (the precise `bpf_ktime_get_ns` reads the TSC through the
/// paravirtual clock, a few percent of the per-packet cost).
///
/// The coarse clock moves once a tick, so this CPU keeps the value it last read with the
/// tick (`jiffies`) it read it in, and calls the clock again only in a new tick: the
/// kernel inlines `bpf_jiffies64` and the `CLOCK` lookup into a few loads, where the
/// helper call was a tenth of the established path's cost. The jiffy is counted a moment
/// before the clock moves; a value read in between is not kept when it is the one
/// already cached (the usual case on a busy CPU), so the next packet reads again. Per
/// CPU the result never goes back; across CPUs it may lag by a tick, as plain reads
/// already may when a CPU is delayed between its read and its store. A call of its own:
/// inlined, its slot's key deepened the longest call chain past the verifier's 512
/// bytes of stack.
#[inline(never)]
pub fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    let tick = unsafe { bpf_jiffies64() };
    let Some(c) = CLOCK.get_ptr_mut(0) else {
        return coarse_now();
    };
    // SAFETY: a per-CPU slot, read and written only here, by this CPU's XDP programs,
    // which run to completion in its softirq and so never interleave on it.
    let c = unsafe { &mut *c };
    if c.tick == tick && c.ns != 0 {
        return c.ns;
    }
    let ns = coarse_now();
    if ns != c.ns {
        c.ns = ns;
        c.tick = tick;
    }
    ns
}

/// The coarse clock itself.
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Stamps the flow with a client segment's time, counts the packet and adds the
/// `FLOW_*` bits it brings (`lb_common::flow::client_segment`). Concurrent writers on
/// other CPUs store timestamps and counts, where a lost update is harmless, and flag
/// bits, which are set atomically ([`add_flags`]).
#[inline(always)]
pub fn touch_client(fs: &mut FlowState, now: u64, tcp_flags: u8) {
    fs.last_seen_ns = now;
    fs.packets = fs.packets.wrapping_add(1);
    add_flags(fs, flow::client_segment(fs.flags, tcp_flags));
}

/// Refreshes the flow with a client segment ([`touch_client`]); a segment that closes
/// it, or comes once it is closing, first records where it ends ([`record_close`]).
/// In that order: the backend's FIN, crossing this one on another CPU, reads
/// `close_seq` once it sees `FLOW_FIN_CLIENT` ([`touch_backend`]). The other way round
/// it could read the value from before and take a passive close for a simultaneous one
/// (or the reverse): the backend's TIME_WAIT miscounted, its SNAT port reused too early
/// or held too long. (x86 keeps stores in order, and the flag bit is set with a locked
/// instruction.) A call of its own: inlined, the sequence read would deepen
/// `forward`'s frame past the stack the verifier allows the deepest call chain.
#[inline(never)]
pub fn client_segment(ctx: &XdpContext, pkt: &Packet, fs: &mut FlowState) {
    if flow::records_close(fs.flags, pkt.tcp_flags) {
        if let Some(seq) = sequence::read(ctx, pkt) {
            record_close(fs, &seq);
        }
    }
    touch_client(fs, pkt.now, pkt.tcp_flags);
}

/// As [`touch_client`], for a flow whose backend answers the client directly (DSR): the
/// client's segments are all the LB sees (`lb_common::flow::client_segment_one_sided`).
#[inline(always)]
pub fn touch_client_one_sided(fs: &mut FlowState, now: u64, tcp_flags: u8) {
    fs.last_seen_ns = now;
    fs.packets = fs.packets.wrapping_add(1);
    add_flags(fs, flow::client_segment_one_sided(tcp_flags));
}

/// As [`touch_client`], for a backend segment; a backend's first FIN after the client's
/// is checked for a simultaneous close (`lb_common::flow::simultaneous_close`), which
/// leaves the backend in TIME_WAIT too.
#[inline(always)]
pub fn touch_backend(ctx: &XdpContext, pkt: &Packet, fs: &mut FlowState) {
    let before = fs.flags;
    touch_backend_plain(fs, pkt.now, pkt.tcp_flags);
    if pkt.tcp_flags & tcp::FIN != 0
        && before & (FLOW_FIN_CLIENT | FLOW_FIN_BACKEND) == FLOW_FIN_CLIENT
        && sequence::ack(ctx, pkt).is_some_and(|ack| flow::simultaneous_close(ack, fs.close_seq))
    {
        add_flags(fs, FLOW_BACKEND_TIME_WAIT);
    }
}

/// [`touch_backend`] for a segment without FIN: its time, its count and the `FLOW_*`
/// bits it brings (`lb_common::flow::backend_segment`).
#[inline(always)]
pub fn touch_backend_plain(fs: &mut FlowState, now: u64, tcp_flags: u8) {
    let before = fs.flags;
    fs.last_seen_ns = now;
    fs.packets = fs.packets.wrapping_add(1);
    add_flags(fs, flow::backend_segment(before, tcp_flags));
}

/// Marks the flow reset: the LB reset the backend's side of it (`lb_common::flow::
/// stale_syn_ack`), which leaves nothing holding its SNAT port.
#[inline(always)]
pub fn mark_reset(fs: &mut FlowState) {
    add_flags(fs, FLOW_RST);
}

/// Sets flag bits with one atomic OR. The two directions of a flow often run at once
/// on two CPUs (a client's FIN and a backend's FIN crossing), and a plain `|=` there
/// could store one CPU's bits over the other's: a flow left with one FIN counts as open
/// and holds its SNAT port until the idle timeout. Only written when a bit is new, so
/// the common packet takes no locked instruction.
#[inline(always)]
fn add_flags(fs: &mut FlowState, f: u8) {
    if f & !fs.flags != 0 {
        // SAFETY: the word is inside the entry and 8-byte aligned (`flags_word`); the
        // OR leaves every byte but `flags` as it is.
        unsafe {
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(
                flags_word(fs),
                u64::from(f) << FLAGS_SHIFT,
            )
        };
    }
}

/// Clears flag bits with one atomic AND, for the same reason as [`add_flags`].
#[inline(always)]
fn clear_flags(fs: &mut FlowState, f: u8) {
    if f & fs.flags != 0 {
        // SAFETY: as in `add_flags`; the AND leaves every byte but `flags` as it is.
        unsafe {
            atomic_and::<u64, u64, { AtomicOrdering::Relaxed }>(
                flags_word(fs),
                !(u64::from(f) << FLAGS_SHIFT),
            )
        };
    }
}

/// Offset of the aligned 64-bit word that holds `FlowState::flags`, and the flag byte's
/// shift inside it (little-endian: the BPF target is bpfel). 64 bits because the BPF
/// target's narrowest atomic is 64 bits wide.
const FLAGS_WORD: usize = offset_of!(FlowState, flags) & !7;
const FLAGS_SHIFT: u32 = ((offset_of!(FlowState, flags) - FLAGS_WORD) * 8) as u32;
const _: () = assert!(FLAGS_WORD + 8 <= size_of::<FlowState>());
const _: () = assert!(align_of::<FlowState>() >= 8);

#[inline(always)]
fn flags_word(fs: &mut FlowState) -> *mut u64 {
    // SAFETY: `FLAGS_WORD + 8` is within the entry (asserted above).
    unsafe {
        (fs as *mut FlowState)
            .cast::<u8>()
            .add(FLAGS_WORD)
            .cast::<u64>()
    }
}

/// Keeps where the client's segment ends and its TSval once the flow is closing: the
/// last values the backend saw from this address and port, which decide when the SNAT
/// port may carry a new flow (`lb_common::flow::port_free_for`).
#[inline(always)]
pub fn record_close(fs: &mut FlowState, seq: &Sequence) {
    fs.close_seq = seq.end;
    match seq.start.tsval() {
        Some(ts) => {
            fs.close_tsval = ts;
            add_flags(fs, FLOW_CLIENT_TS);
        }
        None => clear_flags(fs, FLOW_CLIENT_TS),
    }
}
