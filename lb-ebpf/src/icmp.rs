//! ICMP on the DSR path.
//!
//! A client's packet that no longer fits the path toward its backend once encapsulated is
//! answered with ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6) carrying
//! the MTU left for the inner packet, so the client's path MTU discovery shrinks its
//! segments; the LB never fragments. Like `reset`, the answer is built in place over the
//! received frame (new IP and ICMP headers in front of the quoted IP header and the
//! first 8 bytes of TCP, which are already where the quote goes) and sent back with
//! XDP_TX to the MAC it came from. Only a packet without IPv4 options is answered (the
//! quote is then of a fixed size); Linux never sends TCP with options.

use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use core::ptr;
use lb_common::{
    counters,
    maps::{FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6},
};
use lb_ebpf::csum;
use network_types::{eth::EthHdr, vlan::VlanHdr};

use crate::{
    packet::{frame_len, ptr_at},
    parse::{OFF_MASK, Packet},
    verdict::Verdict,
};

const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const ICMP_LEN: usize = 8;
/// What an answer quotes: the IP header and the first 8 bytes of TCP (the ports and the
/// sequence number, which is all a receiver needs to find its socket).
const QUOTE_V4: usize = IPV4_LEN + 8;
const QUOTE_V6: usize = IPV6_LEN + 8;
const TTL: u8 = 64;
/// IPv4: destination unreachable, fragmentation needed; IPv6: packet too big.
const V4_UNREACH: u8 = 3;
const V4_FRAG_NEEDED: u8 = 4;
const V6_TOO_BIG: u8 = 2;
/// Smallest MTU each family may announce.
const MIN_MTU_V4: u32 = 68;
const MIN_MTU_V6: u32 = 1280;

/// Answers the packet's client: its packet, `mtu` bytes at most once encapsulated, did
/// not fit (`mtu` is what is left for the inner packet). Counted as `DROP_TOO_BIG`.
#[inline(never)]
pub fn too_big(ctx: &XdpContext, pkt: &Packet, mtu: u32) -> Verdict {
    // An ICMP error being sent on (its `l4` is unset) is never answered with another.
    let answered = if pkt.l4 == 0 {
        false
    } else if pkt.key.family == FAMILY_V4 {
        pkt.l4 == pkt.l3 + IPV4_LEN as u16 && too_big_v4(ctx, pkt, mtu.max(MIN_MTU_V4))
    } else {
        too_big_v6(ctx, pkt, mtu.max(MIN_MTU_V6))
    };
    if answered {
        Verdict::tx(counters::DROP_TOO_BIG)
    } else {
        Verdict::drop(counters::DROP_TOO_BIG)
    }
}

/// Grows the frame by `room` bytes in front, moves the link header there with its MACs
/// swapped (the answer goes back where the packet came from) and trims the frame to
/// `len` bytes; the original IP header then starts `room` bytes after the link header.
#[inline(always)]
fn make_room(ctx: &XdpContext, l3: usize, room: usize, len: usize) -> bool {
    // SAFETY: the context pointer is this program's own; the helper checks the headroom
    // and invalidates packet pointers, none of which is used after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(room as i32)) } != 0 {
        return false;
    }
    let moved = if l3 == EthHdr::LEN {
        link_back::<{ EthHdr::LEN }>(ctx, room)
    } else {
        link_back::<{ EthHdr::LEN + VlanHdr::LEN }>(ctx, room)
    };
    if !moved {
        return false;
    }
    let delta = len as i32 - frame_len(ctx) as i32;
    // SAFETY: as above; the frame only shrinks (the packet held headers and a quote).
    delta <= 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } == 0
}

/// Copies the `N`-byte link header from `from` to the frame's start, MACs swapped.
#[inline(always)]
fn link_back<const N: usize>(ctx: &XdpContext, from: usize) -> bool {
    // verifier: checked one after the other, as in `nat::headers`.
    let Some(src) = ptr_at::<[u8; N]>(ctx, from & OFF_MASK) else {
        return false;
    };
    let Some(dst) = ptr_at::<[u8; N]>(ctx, 0) else {
        return false;
    };
    // SAFETY: `ptr_at` checked both ranges are inside the packet; the header is read
    // whole before anything is written.
    let mut h = unsafe { src.read_unaligned() };
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&h[6..12]);
    macs[6..].copy_from_slice(&h[..6]);
    h[..12].copy_from_slice(&macs);
    // SAFETY: as above.
    unsafe { dst.write_unaligned(h) };
    true
}

#[inline(never)]
fn too_big_v4(ctx: &XdpContext, pkt: &Packet, mtu: u32) -> bool {
    let l3 = pkt.l3 as usize & OFF_MASK;
    let room = IPV4_LEN + ICMP_LEN;
    if !make_room(ctx, l3, room, l3 + room + QUOTE_V4) {
        return false;
    }
    let tot = ((room + QUOTE_V4) as u16).to_be_bytes();
    let mut ip: [u32; IPV4_LEN / 4] = [
        u32::from_ne_bytes([0x45, 0, tot[0], tot[1]]),
        0,
        u32::from_ne_bytes([TTL, PROTO_ICMP, 0, 0]),
        pkt.key.dst[0],
        pkt.key.src[0],
    ];
    let c = csum::of(&mut ip).to_ne_bytes();
    ip[2] = u32::from_ne_bytes([TTL, PROTO_ICMP, c[0], c[1]]);
    let mtu = (mtu as u16).to_be_bytes();
    let icmp = [
        u32::from_ne_bytes([V4_UNREACH, V4_FRAG_NEEDED, 0, 0]),
        u32::from_ne_bytes([0, 0, mtu[0], mtu[1]]),
    ];
    write_headers::<{ IPV4_LEN / 4 }, { ICMP_LEN + QUOTE_V4 }>(ctx, l3, &ip, icmp, 0)
}

/// Writes the answer's IP header `ip` (`W` words) at `l3` and its ICMP header `icmp`
/// after it, then the ICMP checksum over the `M`-byte message (the header and the quote,
/// which follows it in the frame) and `seed` (the IPv6 pseudo-header's sum; 0 for IPv4).
#[inline(always)]
fn write_headers<const W: usize, const M: usize>(
    ctx: &XdpContext,
    l3: usize,
    ip: &[u32; W],
    icmp: [u32; 2],
    seed: u32,
) -> bool {
    let at = l3 + W * 4;
    // verifier: checked one after the other, as in `nat::headers`.
    let Some(iph) = ptr_at::<[u32; W]>(ctx, l3) else {
        return false;
    };
    let Some(msg) = ptr_at::<[u8; M]>(ctx, at & 0xff) else {
        return false;
    };
    // SAFETY: `ptr_at` checked the IP header and the ICMP message are inside the packet;
    // written unaligned.
    unsafe {
        iph.write_unaligned(*ip);
        msg.cast::<[u32; 2]>().write_unaligned(icmp);
    }
    // SAFETY: `msg` points to `M` bytes of the packet (checked above), a multiple of 4
    // within the helper's limit; the empty `from` side may be null.
    let sum = unsafe { bpf_csum_diff(ptr::null_mut(), 0, msg.cast(), M as u32, seed) };
    let c = csum::fold32(sum as u32).to_ne_bytes();
    let h = icmp[0].to_ne_bytes();
    // SAFETY: the checksum is bytes 2-3 of the checked ICMP header.
    unsafe {
        msg.cast::<[u8; 4]>()
            .write_unaligned([h[0], h[1], !c[0], !c[1]])
    };
    true
}

/// The pseudo-header an ICMPv6 checksum covers, laid out as summed.
#[repr(C)]
struct PseudoV6 {
    src: [u32; 4],
    dst: [u32; 4],
    len: u32,
    next: u32,
}

#[inline(never)]
fn too_big_v6(ctx: &XdpContext, pkt: &Packet, mtu: u32) -> bool {
    let l3 = pkt.l3 as usize & OFF_MASK;
    let room = IPV6_LEN + ICMP_LEN;
    let payload = ICMP_LEN + QUOTE_V6;
    if !make_room(ctx, l3, room, l3 + IPV6_LEN + payload) {
        return false;
    }
    let len = (payload as u16).to_be_bytes();
    let (src, dst) = (pkt.key.dst, pkt.key.src);
    let ip: [u32; IPV6_LEN / 4] = [
        (6u32 << 28).to_be(),
        u32::from_ne_bytes([len[0], len[1], PROTO_ICMPV6, TTL]),
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    let mut pseudo = PseudoV6 {
        src,
        dst,
        len: (payload as u32).to_be(),
        next: u32::from(PROTO_ICMPV6).to_be(),
    };
    let seed = csum::sum_of(&mut pseudo);
    let icmp = [u32::from_ne_bytes([V6_TOO_BIG, 0, 0, 0]), mtu.to_be()];
    write_headers::<{ IPV6_LEN / 4 }, { ICMP_LEN + QUOTE_V6 }>(ctx, l3, &ip, icmp, seed)
}
