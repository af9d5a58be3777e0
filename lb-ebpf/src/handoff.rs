//! The TC half of the neighbour hand-off (`lb_common::handoff`): a packet `fib` passed with
//! the host's mark over its Ethernet addresses goes out of the interface the mark names
//! through the kernel's neighbour resolution (`bpf_redirect_neigh`: a route lookup for the
//! packet's destination on that interface, then ARP/ND, the packet queued meanwhile).
//! Every other packet goes on untouched after an array read and a compare.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use core::ptr::null_mut;
use lb_common::handoff;

use crate::{maps::HANDOFF_MARK, unaligned::load32};

/// The skb, read with a volatile load so the context loads stay here (see `packet::raw`).
#[inline(always)]
fn raw(ctx: &TcContext) -> *mut __sk_buff {
    // SAFETY: `ctx` is a valid reference; reading its field has no other precondition.
    unsafe { core::ptr::addr_of!(ctx.skb.skb).read_volatile() }
}

/// Sends a handed-off packet toward its next hop; anything else goes on to the next TC
/// program or the stack (`TC_ACT_UNSPEC`, TCX's "next").
#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    let Some(&mark) = HANDOFF_MARK.get(0) else {
        return TC_ACT_UNSPEC;
    };
    if !handoff::is_mark(mark) {
        return TC_ACT_UNSPEC;
    }
    let skb = raw(ctx);
    // SAFETY: the context pointer is valid for the whole program run. At TC ingress
    // `data` is the Ethernet header.
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    // verifier: proves the addresses lie inside the packet.
    if data + handoff::LEN > end {
        return TC_ACT_UNSPEC;
    }
    let eth = data as *const u8;
    // SAFETY: checked just above to lie inside the packet; unaligned loads.
    let (lo, hi, ifindex) = unsafe { (load32(eth), load32(eth.add(4)), load32(eth.add(8))) };
    if u64::from(lo) | u64::from(hi) << 32 != mark {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: no next hop is passed (a null pointer of length 0): the helper looks the
    // route up itself, as its documentation allows.
    let rc = unsafe { bpf_redirect_neigh(ifindex, null_mut(), 0, 0) };
    // TC_ACT_REDIRECT on success; the helper rejects only flags, so anything else means
    // the packet cannot go anywhere sensible.
    if rc < 0 { TC_ACT_SHOT } else { rc as i32 }
}
