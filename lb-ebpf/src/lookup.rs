//! `lb_lookup`, the `sk_lookup` program of proxy services: a new TCP connection to a
//! proxy VIP:port is handed to the daemon's listening socket, so the VIP needs no address
//! on any interface and the listener need not be bound to it (a local route for the VIP
//! is enough for the kernel to deliver the packets locally).
//!
//! The kernel runs the program on the listener lookup of every SYN (and every UDP
//! datagram) delivered locally in the network namespace it is attached to, before the
//! regular lookup. Established connections are found before it runs, so only new
//! connections pay for the map lookup.

use aya_ebpf::{
    bindings::{bpf_sk_lookup, sk_action},
    programs::SkLookupContext,
};
use core::ptr::read_volatile;
use lb_common::maps::{FAMILY_V4, FAMILY_V6, PROTO_TCP, VipKey};

use crate::maps::{PROXY_LISTENERS, PROXY_VIPS};

/// `AF_INET` and `AF_INET6` as the kernel reports them in `bpf_sk_lookup::family`.
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Assigns the listener registered for the destination VIP:port, if any. Always
/// `SK_PASS`: without an entry (or if the assignment fails) the kernel goes on with its
/// regular lookup, so sockets bound to the address itself still work.
#[inline(always)]
pub fn handle(ctx: &SkLookupContext) -> u32 {
    if let Some(key) = vip_key(ctx.lookup) {
        // SAFETY: the map value is a plain u32 that stays valid for the program run.
        if let Some(&index) = unsafe { PROXY_VIPS.get(&key) } {
            // Looks the socket up (taking a reference), bpf_sk_assign's it and releases
            // the reference. An error (no socket at the index, a listener of the wrong
            // family or not listening) leaves the lookup to the kernel.
            let _ = PROXY_LISTENERS.redirect_sk_lookup(ctx, index, 0);
        }
    }
    sk_action::SK_PASS
}

/// The `VipKey` of the lookup's destination, or None for anything but TCP over IPv4/v6.
///
/// Byte orders of the context (`struct bpf_sk_lookup`, include/uapi/linux/bpf.h):
/// - `local_ip4` and `local_ip6[4]` are network order, i.e. the address bytes as they
///   are on the wire; read as native `u32` words they are exactly the "network order
///   words" of `VipKey::addr` (an IPv4 address in word 0, words 1..4 zero).
/// - `local_port` is a `u32` in HOST order (unlike `remote_port`, a `__be16` in network
///   order), so it is converted to the network order `u16` that `VipKey::port` holds.
/// - `family` is `AF_INET`/`AF_INET6` and `protocol` the IP protocol number, both host
///   order; `VipKey` uses `FAMILY_V4`/`FAMILY_V6` and `PROTO_TCP`.
///
/// Every field is read with its own volatile load at a constant offset from the context
/// pointer: the verifier rejects a load through a context pointer that was moved, which
/// LLVM otherwise produces by merging the IPv4 and IPv6 loads behind one pointer.
#[inline(always)]
fn vip_key(ctx: *mut bpf_sk_lookup) -> Option<VipKey> {
    // SAFETY: `ctx` is the context pointer the kernel passed to the program; each read
    // is an aligned 4-byte load of a readable field, which the verifier checks.
    let (protocol, family, ip4, ip6, port) = unsafe {
        (
            read_volatile(&raw const (*ctx).protocol),
            read_volatile(&raw const (*ctx).family),
            read_volatile(&raw const (*ctx).local_ip4),
            [
                read_volatile(&raw const (*ctx).local_ip6[0]),
                read_volatile(&raw const (*ctx).local_ip6[1]),
                read_volatile(&raw const (*ctx).local_ip6[2]),
                read_volatile(&raw const (*ctx).local_ip6[3]),
            ],
            read_volatile(&raw const (*ctx).local_port),
        )
    };
    if protocol != PROTO_TCP as u32 {
        return None;
    }
    let (addr, family) = match family {
        AF_INET => ([ip4, 0, 0, 0], FAMILY_V4),
        AF_INET6 => (ip6, FAMILY_V6),
        _ => return None,
    };
    Some(VipKey {
        addr,
        port: (port as u16).to_be(),
        proto: PROTO_TCP,
        family,
    })
}
