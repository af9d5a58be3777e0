//! `lb explain --watch`: the packets of one client → VIP connection, reported to user
//! space through a ring buffer. Off unless asked: only a service whose entry carries
//! `ACCESS_WATCH` (set by the daemon while someone watches) compares its packets with
//! the watched tuple; a full ring drops events, never packets.

use aya_ebpf::{helpers::bpf_get_prandom_u32, programs::XdpContext};
use lb_common::maps::WatchEvent;

use crate::{
    conntrack::now,
    maps::{WATCH, WATCH_EVENTS},
    options,
    packet::frame_len,
    parse::Packet,
};

/// Reports `pkt` if it belongs to the watched connection (one in `every`, at random).
#[inline(never)]
pub fn note(ctx: &XdpContext, pkt: &Packet) {
    let Some(spec) = WATCH.get(0) else {
        return;
    };
    let k = &pkt.key;
    let w = &spec.key;
    if k.src != w.src || k.dst != w.dst || k.sport != w.sport || k.dport != w.dport {
        return;
    }
    // SAFETY: a helper without arguments.
    if spec.every > 1 && unsafe { bpf_get_prandom_u32() } % spec.every != 0 {
        return;
    }
    let (seq, ack, _) = options::numbers(ctx, pkt).unwrap_or((0, 0, 0));
    let event = WatchEvent {
        ns: now(),
        len: frame_len(ctx) as u32,
        seq,
        ack,
        tcp_flags: pkt.tcp_flags,
        _pad: [0; 3],
    };
    // A full ring loses the event: the watcher says how many it missed.
    let _ = WATCH_EVENTS.output::<WatchEvent>(&event, 0);
}
