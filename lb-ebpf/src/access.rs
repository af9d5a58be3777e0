//! Source allowlists (`--allow`): whether a packet's source may reach its service (one
//! `ALLOW` lookup, only for services that have a list), asked by `dispatch` before any
//! forward path runs, so a refused source creates no state; and how a refused segment is
//! answered.

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use lb_common::{
    counters::DROP_DENIED,
    maps::{
        ACCESS_CUT_ESTABLISHED, ACCESS_LIST, ACCESS_RESET, ALLOW_ID_BITS, FAMILY_V4, MODE_PROXY,
        Service, allow_data,
    },
    tcp,
};

use crate::{conntrack, maps::ALLOW, parse::Packet, reset, verdict::Verdict};

/// Whether `pkt` is refused: its service has a list without its source, and it would
/// open a flow (a SYN, or a segment no flow knows), or the service cuts such sources'
/// flows too (`deny_established`). A proxy service's flows live in the daemon's
/// sockets, not the flow table: only their SYNs are refused then.
#[inline(never)]
pub fn refused(pkt: &Packet, svc: &Service) -> bool {
    if svc.access & ACCESS_LIST == 0 || allowed(pkt, svc.id) {
        return false;
    }
    if svc.access & ACCESS_CUT_ESTABLISHED != 0 || pkt.tcp_flags & tcp::SYN != 0 {
        return true;
    }
    svc.mode != MODE_PROXY && conntrack::lookup(&pkt.key).is_none()
}

/// Whether the service `id`'s list holds the packet's source.
#[inline(always)]
fn allowed(pkt: &Packet, id: u32) -> bool {
    let w = &pkt.key.src;
    // The words hold the address's bytes in network order.
    let key = if pkt.key.family == FAMILY_V4 {
        Key::new(ALLOW_ID_BITS + 32, allow_data(id, &w[0].to_ne_bytes()))
    } else {
        let mut a = [0u8; 16];
        for (i, word) in w.iter().enumerate() {
            a[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        Key::new(ALLOW_ID_BITS + 128, allow_data(id, &a))
    };
    ALLOW.get(&key).is_some()
}

/// The answer to a refused segment: a RST with `deny = "reset"`, else nothing.
#[inline(always)]
pub fn refuse(ctx: &XdpContext, pkt: &mut Packet, svc: &Service) -> Verdict {
    if svc.access & ACCESS_RESET != 0 {
        reset::answer(ctx, pkt, DROP_DENIED)
    } else {
        Verdict::drop(DROP_DENIED)
    }
}
