//! The TC half of the neighbour hand-off (`lb_common::handoff`): a packet `fib` passed with
//! a [`Handoff`] in its metadata goes out of the FIB's interface through the kernel's
//! neighbour resolution (`bpf_redirect_neigh`: ARP/ND, the packet queued meanwhile). Every
//! other packet has no such metadata and goes on untouched after two loads and a compare.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_redir_neigh},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use core::mem::{MaybeUninit, size_of};
use lb_common::handoff::{self, Handoff};

use crate::stack::zeroed;

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
    let skb = raw(ctx);
    // SAFETY: the context pointer is valid for the whole program run.
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    // verifier: proves the whole `Handoff` lies inside the metadata area.
    if meta + size_of::<Handoff>() > data {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: checked just above to lie between `data_meta` and `data`.
    let h = unsafe { (meta as *const Handoff).read_unaligned() };
    if h.magic != handoff::MAGIC {
        return TC_ACT_UNSPEC;
    }
    let mut nh = MaybeUninit::<bpf_redir_neigh>::uninit();
    let nh = zeroed(&mut nh);
    nh.nh_family = h.family;
    if h.family == handoff::FAMILY_INET {
        nh.__bindgen_anon_1.ipv4_nh = h.addr[0];
    } else {
        nh.__bindgen_anon_1.ipv6_nh = h.addr;
    }
    // SAFETY: `nh` is an initialised `bpf_redir_neigh` of the size passed, on the stack.
    let rc = unsafe { bpf_redirect_neigh(h.ifindex, nh, size_of::<bpf_redir_neigh>() as i32, 0) };
    // TC_ACT_REDIRECT on success; the helper rejects only flags, so anything else means
    // the packet cannot go anywhere sensible.
    if rc < 0 { TC_ACT_SHOT } else { rc as i32 }
}
