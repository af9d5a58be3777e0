//! Direct server return: the client's packet, whole, inside the outer header toward its
//! backend (`lb_common::encap` defines the format the backends' `lb decap` removes). The
//! Ethernet header moves to the new front of the frame; `fib` then writes its MACs. An
//! `l2` service's packet needs nothing here: only its MACs change.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    encap::{
        ENCAP_GUE, GUE_LEN, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP, OUTER_TTL, OUTER_V4_LEN,
        OUTER_V6_LEN, UDP_LEN, flow_label, gue_header,
    },
    hash::flow_hash,
    maps::FAMILY_V4,
};
use lb_ebpf::csum;
use network_types::{eth::EthHdr, vlan::VlanHdr};

use crate::{
    nat::Target,
    packet::ptr_at,
    parse::{OFF_MASK, Packet},
};

/// IPv4 "don't fragment", as the flags/offset bytes: the outer packet takes part in path
/// MTU discovery (the LB answers the client when it does not fit, see `icmp`).
const IPV4_DF: [u8; 2] = [0x40, 0];

/// Puts the outer headers of `t` in front of the packet; false if the frame could not
/// grow (no headroom) or, for the verifier, a header is not where it was.
#[inline(never)]
pub fn push(ctx: &XdpContext, pkt: &Packet, t: &Target) -> bool {
    let outer = t.outer_len(pkt.key.family) as usize;
    if outer == 0 {
        return true;
    }
    // SAFETY: the context pointer is this program's own; the helper checks the headroom
    // itself and invalidates packet pointers, none of which is used after it (every later
    // access goes through `ptr_at`).
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer as i32)) } != 0 {
        return false;
    }
    // verifier: the mask bounds the offset read back from the stack; it never changes it.
    let l3 = pkt.l3 as usize & OFF_MASK;
    let moved = if l3 == EthHdr::LEN {
        move_front::<[u8; EthHdr::LEN]>(ctx, outer)
    } else {
        move_front::<[u8; EthHdr::LEN + VlanHdr::LEN]>(ctx, outer)
    };
    if !moved {
        return false;
    }
    // The outer family is the inner one: the ether type stays.
    if pkt.key.family == FAMILY_V4 {
        outer_v4(ctx, pkt, t, l3)
    } else {
        outer_v6(ctx, pkt, t, l3)
    }
}

/// Copies the link header `H` from `from` bytes into the frame to its start.
#[inline(always)]
fn move_front<H>(ctx: &XdpContext, from: usize) -> bool {
    // verifier: checked one after the other, as in `nat::headers`.
    let Some(src) = ptr_at::<H>(ctx, from & OFF_MASK) else {
        return false;
    };
    let Some(dst) = ptr_at::<H>(ctx, 0) else {
        return false;
    };
    // SAFETY: `ptr_at` checked both ranges are inside the packet; the source lies after
    // the destination and `read` copies it out before the write.
    unsafe { dst.write_unaligned(src.read_unaligned()) };
    true
}

#[inline(never)]
fn outer_v4(ctx: &XdpContext, pkt: &Packet, t: &Target, l3: usize) -> bool {
    let gue = t.encap == ENCAP_GUE;
    let (proto, extra) = if gue {
        (IPPROTO_UDP, UDP_LEN + GUE_LEN)
    } else {
        (IPPROTO_IPIP, 0)
    };
    let tot = ((pkt.ip_len as usize + OUTER_V4_LEN + extra) as u16).to_be_bytes();
    let mut h: [u32; OUTER_V4_LEN / 4] = [
        u32::from_ne_bytes([0x45, pkt.tos_flowinfo as u8, tot[0], tot[1]]),
        u32::from_ne_bytes([0, 0, IPV4_DF[0], IPV4_DF[1]]),
        u32::from_ne_bytes([OUTER_TTL, proto, 0, 0]),
        t.src[0],
        t.dst[0],
    ];
    let c = csum::of(&mut h).to_ne_bytes();
    h[2] = u32::from_ne_bytes([OUTER_TTL, proto, c[0], c[1]]);
    let Some(ip) = ptr_at::<[u32; OUTER_V4_LEN / 4]>(ctx, l3) else {
        return false;
    };
    // SAFETY: `ptr_at` checked the 20 bytes are inside the packet; written unaligned.
    unsafe { ip.write_unaligned(h) };
    !gue || udp_gue(ctx, pkt, t, l3 + OUTER_V4_LEN, IPPROTO_IPIP)
}

#[inline(never)]
fn outer_v6(ctx: &XdpContext, pkt: &Packet, t: &Target, l3: usize) -> bool {
    let gue = t.encap == ENCAP_GUE;
    let (next, extra) = if gue {
        (IPPROTO_UDP, UDP_LEN + GUE_LEN)
    } else {
        (IPPROTO_IPV6, 0)
    };
    // The inner traffic class (its DSCP and ECN) is the outer one's too.
    let class = (u32::from_be(pkt.tos_flowinfo) >> 20) & 0xff;
    let first = (6 << 28) | (class << 20) | flow_label(flow_hash(&pkt.key));
    let payload = ((pkt.ip_len as usize + extra) as u16).to_be_bytes();
    let h: [u32; OUTER_V6_LEN / 4] = [
        first.to_be(),
        u32::from_ne_bytes([payload[0], payload[1], next, OUTER_TTL]),
        t.src[0],
        t.src[1],
        t.src[2],
        t.src[3],
        t.dst[0],
        t.dst[1],
        t.dst[2],
        t.dst[3],
    ];
    let Some(ip) = ptr_at::<[u32; OUTER_V6_LEN / 4]>(ctx, l3) else {
        return false;
    };
    // SAFETY: `ptr_at` checked the 40 bytes are inside the packet; written unaligned.
    unsafe { ip.write_unaligned(h) };
    !gue || udp_gue(ctx, pkt, t, l3 + OUTER_V6_LEN, IPPROTO_IPV6)
}

/// The UDP and GUE headers at `off`. The UDP checksum is 0: "none" for IPv4, and for
/// IPv6 the zero checksum RFC 6935 allows for tunnels, which `lb decap` (a BPF program,
/// before the kernel's UDP) accepts; the inner TCP checksum still covers the payload.
#[inline(always)]
fn udp_gue(ctx: &XdpContext, pkt: &Packet, t: &Target, off: usize, inner: u8) -> bool {
    let len = ((pkt.ip_len as usize + UDP_LEN + GUE_LEN) as u16).to_be_bytes();
    let s = t.sport.to_ne_bytes();
    let d = t.dport.to_ne_bytes();
    let h: [u32; (UDP_LEN + GUE_LEN) / 4] = [
        u32::from_ne_bytes([s[0], s[1], d[0], d[1]]),
        u32::from_ne_bytes([len[0], len[1], 0, 0]),
        u32::from_ne_bytes(gue_header(inner)),
    ];
    let Some(p) = ptr_at::<[u32; (UDP_LEN + GUE_LEN) / 4]>(ctx, off & 0xff) else {
        return false;
    };
    // SAFETY: `ptr_at` checked the 12 bytes are inside the packet; written unaligned.
    unsafe { p.write_unaligned(h) };
    true
}
