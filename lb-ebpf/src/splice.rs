//! `lb_splice`, the `sk_skb` stream verdict of the sockmap splice engine: every skb a
//! spliced socket receives is redirected to the egress (send queue) of its peer, so the
//! bytes of a proxied connection never reach user space.
//!
//! Two socket hashes, both keyed by socket cookie (`SO_COOKIE`, `bpf_get_socket_cookie`):
//! - `SPLICE`: cookie of a socket → its PEER (client A is stored under cookie(B) and
//!   backend B under cookie(A)). Only a redirect target: no program is attached to it.
//! - `SPLICE_HOOK`: cookie of a socket → the socket itself. `lb_splice` is attached to
//!   this map, so a socket gets the verdict when it enters it.
//!
//! Two maps because the verdict runs as soon as a socket enters the map it is attached
//! to: with a single map, the first socket inserted would already be redirected while
//! its peer's entry did not exist yet, and the bytes it received in between would be
//! dropped. User space fills `SPLICE` with both entries first, then hooks A and B; from
//! the first hook on every redirect finds its target.

use aya_ebpf::{bindings::sk_action, helpers::bpf_get_socket_cookie, programs::SkBuffContext};

use crate::maps::SPLICE;

/// Redirects the skb to the peer of the socket it was received on: `SK_PASS` with the
/// redirect set on success; `SK_DROP` when the socket has no peer in `SPLICE`, which
/// cannot happen while user space keeps the entries in place for the splice's lifetime.
///
/// An skb without payload is dropped rather than redirected: TCP hands the verdict the
/// skb that carried a bare FIN (its FIN is already processed by then, and user space
/// forwards it with shutdown(2)), and the peer's send worker treats a 0-byte send as
/// a broken pipe: it sets EPIPE on the peer and stops its redirects (seen on 6.18).
#[inline(always)]
pub fn handle(ctx: &SkBuffContext) -> u32 {
    if ctx.len() == 0 {
        return sk_action::SK_DROP;
    }
    // SAFETY: the helper only reads the skb's socket (set by the verdict caller).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    // Flags 0: to the peer's egress (BPF_F_INGRESS would queue it for the peer's reader).
    SPLICE.redirect_skb(ctx, cookie, 0) as u32
}
