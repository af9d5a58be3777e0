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

use aya_ebpf::{
    bindings::sk_action,
    helpers::{bpf_get_socket_cookie, bpf_probe_read_kernel},
    programs::SkBuffContext,
};

use crate::maps::{SPLICE, SPLICE_LAYOUT};

/// Most bytes one `bpf_skb_adjust_room` call may cut from an sk_skb (the kernel's limit).
const TRIM_STEP: u32 = 0xfff;
/// Calls allowed per skb: enough for 256 KiB, above the largest GRO skb (64 KiB unless
/// BIG TCP raised `gro_max_size`).
const TRIM_STEPS: u32 = 64;
/// The kernel field offsets are masked to this: they are small, and the verifier wants
/// the pointer arithmetic bounded.
const OFFSET_MASK: u32 = 0xffff;

/// Redirects the skb to the peer of the socket it was received on: `SK_PASS` with the
/// redirect set on success; `SK_DROP` when the socket has no peer in `SPLICE`, which
/// cannot happen while user space keeps the entries in place for the splice's lifetime.
///
/// Bytes the socket already has are cut off first (see [`already_had`]); what is left
/// may be nothing.
///
/// An skb without payload is dropped rather than redirected: TCP hands the verdict the
/// skb that carried a bare FIN (its FIN is already processed by then, and user space
/// forwards it with shutdown(2)), and the peer's send worker treats a 0-byte send as
/// a broken pipe: it sets EPIPE on the peer and stops its redirects (seen on 6.18).
/// Dropping it is free: the kernel advances the socket's `copied_seq` by the skb's
/// length after the verdict, here 0.
#[inline(always)]
pub fn handle(ctx: &SkBuffContext) -> u32 {
    if trim(ctx, already_had(ctx)).is_err() {
        // Out of memory in the middle of a cut: what is left would repeat bytes. Drop
        // it; the stream then lacks bytes, which the engine's tail never sees arrive, so
        // the connection stalls and is reset by the idle timeout, never passed on wrong.
        return sk_action::SK_DROP;
    }
    if ctx.len() == 0 {
        return sk_action::SK_DROP;
    }
    // SAFETY: the helper only reads the skb's socket (set by the verdict caller).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    // Flags 0: to the peer's egress (BPF_F_INGRESS would queue it for the peer's reader).
    SPLICE.redirect_skb(ctx, cookie, 0) as u32
}

/// How many of the skb's first bytes the socket already passed on: its `copied_seq`
/// minus the skb's first sequence number, when positive.
///
/// The verdict (tcp_read_skb) takes whole skbs from the head of the receive queue, and
/// TCP queues a segment that starts before `rcv_nxt` whole when it also brings new bytes
/// (tcp_data_queue's "partial packet"): a retransmission of bytes that were received
/// after all, which GRO may have merged with new segments. Without the cut its old
/// bytes go out twice (a 1 GiB download under CPU contention got a 5-segment skb twice).
/// The same cut covers an skb user space read partly before the socket was hooked.
///
/// 0 when the offsets are not known (the daemon writes them before it attaches this
/// program) or a read fails.
#[inline(always)]
fn already_had(ctx: &SkBuffContext) -> u32 {
    let Some(layout) = SPLICE_LAYOUT.get(0) else {
        return 0;
    };
    if layout.ready == 0 {
        return 0;
    }
    // The context is the kernel's `struct sk_buff` itself.
    let skb = ctx.skb.skb.cast::<u8>();
    let at = |off: u32| skb.wrapping_add((off & OFFSET_MASK) as usize);
    // SAFETY: bpf_probe_read_kernel never faults (a bad address returns an error), and
    // the offsets come from this kernel's BTF, so they name the intended fields.
    let seq = unsafe { bpf_probe_read_kernel(at(layout.skb_seq).cast::<u32>()) };
    // SAFETY: as above.
    let sk = unsafe { bpf_probe_read_kernel(at(layout.skb_sk).cast::<u64>()) };
    let (Ok(seq), Ok(sk)) = (seq, sk) else {
        return 0;
    };
    if sk == 0 {
        return 0;
    }
    let copied_seq = (sk + u64::from(layout.copied_seq & OFFSET_MASK)) as *const u32;
    // SAFETY: as above; `sk` is the skb's socket, a TCP socket (only TCP sockets enter
    // the maps), so `copied_seq` is a `struct tcp_sock` field of it.
    let Ok(copied) = (unsafe { bpf_probe_read_kernel(copied_seq) }) else {
        return 0;
    };
    // Sequence numbers wrap: the difference, read as signed, is the distance.
    let old = copied.wrapping_sub(seq) as i32;
    if old > 0 { old as u32 } else { 0 }
}

/// Cuts `n` bytes (at most all) off the head of the skb; Err if the kernel could not.
#[inline(always)]
fn trim(ctx: &SkBuffContext, n: u32) -> Result<(), ()> {
    let mut left = if n < ctx.len() { n } else { ctx.len() };
    for _ in 0..TRIM_STEPS {
        if left == 0 {
            return Ok(());
        }
        let step = if left < TRIM_STEP { left } else { TRIM_STEP };
        ctx.adjust_room(-(step as i32), 0, 0).map_err(|_| ())?;
        left -= step;
    }
    if left == 0 { Ok(()) } else { Err(()) }
}
