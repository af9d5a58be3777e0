//! `lb decap`, the backends' half of direct server return: `lb_decap` strips the
//! encapsulation `lb_common::encap` defines from packets for a configured VIP and passes
//! the inner packet to the stack; `lb_decap_mss` (TC egress) lowers the MSS the VIP's
//! SYN-ACKs announce, so clients send segments that fit once encapsulated.
//!
//! XDP rather than TC ingress: it runs first, before the kernel builds an skb for the
//! outer packet, so the stack (and GRO) only ever sees the inner TCP; and it runs
//! natively on veth and most NICs. Only packets whose inner destination is a VIP (and,
//! with `--from`, whose outer source is an LB) are taken: anything else passes
//! untouched, so the host is no open tunnel (its kernel has no decapsulation of its own
//! and drops them).

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    helpers::bpf_xdp_adjust_head,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use lb_common::{
    decap::{
        DECAPSULATED, DecapConfig, DecapVip, MALFORMED, MSS_CLAMPED, NOT_FROM_LB, NOT_VIP,
        NUM_COUNTERS, PASSED,
    },
    encap::{GUE_LEN, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP, UDP_LEN, gue_inner},
    maps::{FAMILY_V4, FAMILY_V6, PROTO_TCP},
    tcp::{ACK, OPT_MSS, SYN},
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

use crate::packet::{Cursor, ptr_at};

/// The VIPs encapsulated packets are taken for.
#[map]
pub static DECAP_VIPS: HashMap<DecapVip, u8> = HashMap::with_max_entries(256, 0);
/// `--from`: the outer sources taken, per family.
#[map]
pub static DECAP_FROM4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(256, 0);
#[map]
pub static DECAP_FROM6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(256, 0);
#[map]
pub static DECAP_CONFIG: Array<DecapConfig> = Array::with_max_entries(1, 0);
#[map]
pub static DECAP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NUM_COUNTERS, 0);

/// The outer headers found in front of an inner packet.
struct Outer {
    /// Bytes of outer headers (IP, and UDP + GUE).
    len: usize,
    /// The inner packet's family.
    inner: u8,
}

/// `lb_decap`'s whole program: every packet is passed, decapsulated or not.
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> u32 {
    count(decap(ctx));
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count(counter: u32) {
    if let Some(c) = DECAP_COUNTERS.get_ptr_mut(counter) {
        // SAFETY: this CPU's slot of a per-CPU array; no other writer runs on this CPU.
        unsafe { *c += 1 };
    }
}

/// Decapsulates the packet if it is ours; returns the counter saying what happened.
#[inline(never)]
fn decap(ctx: &XdpContext) -> u32 {
    let Some(cfg) = DECAP_CONFIG.get(0) else {
        return PASSED;
    };
    let mut c = Cursor::new();
    let Some(eth) = c.next::<EthHdr>(ctx) else {
        return PASSED;
    };
    // SAFETY: `next` checked the header is inside the packet; read unaligned.
    let mut proto = unsafe { core::ptr::addr_of!((*eth).ether_type).read_unaligned() };
    if proto == EtherType::Ieee8021q as u16 {
        let Some(vlan) = c.next::<VlanHdr>(ctx) else {
            return PASSED;
        };
        // SAFETY: as above, for the VLAN tag.
        proto = unsafe { core::ptr::addr_of!((*vlan).ether_type).read_unaligned() };
    }
    let l2 = c.offset();
    let outer = if proto == EtherType::Ipv4 as u16 {
        outer_v4(ctx, &mut c, cfg)
    } else if proto == EtherType::Ipv6 as u16 {
        outer_v6(ctx, &mut c, cfg)
    } else {
        Err(PASSED)
    };
    let outer = match outer {
        Ok(o) => o,
        Err(counter) => return counter,
    };
    let inner = match inner_vip(ctx, &c, outer.inner) {
        Ok(vip) => vip,
        Err(counter) => return counter,
    };
    if DECAP_VIPS.get_ptr(&inner).is_none() {
        return NOT_VIP;
    }
    strip(ctx, l2, &outer)
}

/// The outer IPv4 header (and UDP + GUE) at the cursor, which moves past them.
#[inline(always)]
fn outer_v4(ctx: &XdpContext, c: &mut Cursor, cfg: &DecapConfig) -> Result<Outer, u32> {
    let ip = c.next::<Ipv4Hdr>(ctx).ok_or(PASSED)?;
    // SAFETY: `next` checked the 20 bytes are inside the packet; byte fields.
    let ip = unsafe { &*ip };
    let gue = ip.proto == IPPROTO_UDP;
    if ip.vihl != 0x45 || !(ip.proto == IPPROTO_IPIP && cfg.ipip != 0 || gue) {
        return Err(PASSED);
    }
    // A fragment cannot be decapsulated alone (the LB sends none: it sets DF).
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return Err(PASSED);
    }
    let (len, inner) = if gue {
        udp_gue(ctx, c, cfg)?
    } else {
        (0, FAMILY_V4)
    };
    if cfg.from_v4 != 0 && DECAP_FROM4.get(Key::new(32, ip.src_addr)).is_none() {
        return Err(NOT_FROM_LB);
    }
    Ok(Outer {
        len: Ipv4Hdr::LEN + len,
        inner,
    })
}

/// The outer IPv6 header (and UDP + GUE) at the cursor, which moves past them.
#[inline(always)]
fn outer_v6(ctx: &XdpContext, c: &mut Cursor, cfg: &DecapConfig) -> Result<Outer, u32> {
    let ip = c.next::<Ipv6Hdr>(ctx).ok_or(PASSED)?;
    // SAFETY: `next` checked the 40 bytes are inside the packet; byte fields.
    let ip = unsafe { &*ip };
    let gue = ip.next_hdr == IPPROTO_UDP;
    if ip.vcf[0] >> 4 != 6 || !(ip.next_hdr == IPPROTO_IPV6 && cfg.ipip != 0 || gue) {
        return Err(PASSED);
    }
    let (len, inner) = if gue {
        udp_gue(ctx, c, cfg)?
    } else {
        (0, FAMILY_V6)
    };
    if cfg.from_v6 != 0 && DECAP_FROM6.get(Key::new(128, ip.src_addr)).is_none() {
        return Err(NOT_FROM_LB);
    }
    Ok(Outer {
        len: Ipv6Hdr::LEN + len,
        inner,
    })
}

/// The UDP header to the GUE port and a GUE header this format writes, at the cursor:
/// their length and the inner family. Other UDP is not ours.
#[inline(always)]
fn udp_gue(ctx: &XdpContext, c: &mut Cursor, cfg: &DecapConfig) -> Result<(usize, u8), u32> {
    let udp = c.next::<[u16; 4]>(ctx).ok_or(PASSED)?;
    // SAFETY: `next` checked the 8 bytes are inside the packet; read unaligned.
    let udp = unsafe { udp.read_unaligned() };
    if cfg.gue_port == 0 || udp[1] != cfg.gue_port {
        return Err(PASSED);
    }
    let gue = c.next::<[u8; GUE_LEN]>(ctx).ok_or(MALFORMED)?;
    // SAFETY: as above, for the 4 bytes of the GUE header.
    let family = match gue_inner(unsafe { gue.read_unaligned() }) {
        Some(IPPROTO_IPIP) => FAMILY_V4,
        Some(_) => FAMILY_V6,
        None => return Err(MALFORMED),
    };
    Ok((UDP_LEN + GUE_LEN, family))
}

/// The inner packet's destination, which must be a whole header of `family`.
#[inline(always)]
fn inner_vip(ctx: &XdpContext, c: &Cursor, family: u8) -> Result<DecapVip, u32> {
    let mut vip = DecapVip {
        family,
        ..DecapVip::default()
    };
    let mut at = Cursor::at(c.offset());
    if family == FAMILY_V4 {
        let ip = at.next::<Ipv4Hdr>(ctx).ok_or(MALFORMED)?;
        // SAFETY: `next` checked the header is inside the packet; byte fields.
        let ip = unsafe { &*ip };
        if ip.vihl >> 4 != 4 {
            return Err(MALFORMED);
        }
        vip.addr[0] = u32::from_ne_bytes(ip.dst_addr);
    } else {
        let ip = at.next::<Ipv6Hdr>(ctx).ok_or(MALFORMED)?;
        // SAFETY: as above.
        let ip = unsafe { &*ip };
        if ip.vcf[0] >> 4 != 6 {
            return Err(MALFORMED);
        }
        // SAFETY: 16 readable bytes; any bytes are valid `u32`s; read unaligned.
        vip.addr = unsafe {
            (&ip.dst_addr as *const [u8; 16])
                .cast::<[u32; 4]>()
                .read_unaligned()
        };
    }
    Ok(vip)
}

/// Removes the outer headers: the link header moves up to the inner packet, with the
/// inner family's ether type, and the frame starts there.
#[inline(always)]
fn strip(ctx: &XdpContext, l2: usize, outer: &Outer) -> u32 {
    let ether = if outer.inner == FAMILY_V4 {
        EtherType::Ipv4 as u16
    } else {
        EtherType::Ipv6 as u16
    };
    // verifier: both offsets are bounded (l2 ≤ 18, outer ≤ 52); masks never change them.
    let to = outer.len & 0x3f;
    let moved = if l2 == EthHdr::LEN {
        move_link::<{ EthHdr::LEN }>(ctx, to, ether)
    } else {
        move_link::<{ EthHdr::LEN + VlanHdr::LEN }>(ctx, to, ether)
    };
    if !moved {
        return MALFORMED;
    }
    // SAFETY: the context pointer is this program's own; the helper checks the frame
    // keeps its minimum size and invalidates packet pointers, none used after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, to as i32) } != 0 {
        return MALFORMED;
    }
    DECAPSULATED
}

/// Copies the `N`-byte link header from the frame's start to `to`, its ether type (the
/// last two bytes) set to `ether`.
#[inline(always)]
fn move_link<const N: usize>(ctx: &XdpContext, to: usize, ether: u16) -> bool {
    // verifier: checked one after the other, as in `nat::headers`.
    let Some(src) = ptr_at::<[u8; N]>(ctx, 0) else {
        return false;
    };
    let Some(dst) = ptr_at::<[u8; N]>(ctx, to) else {
        return false;
    };
    // SAFETY: `ptr_at` checked both ranges are inside the packet; the header is read
    // whole before it is written (the ranges do not overlap: `to` ≥ 20 > N).
    let mut h = unsafe { src.read_unaligned() };
    h[N - 2..].copy_from_slice(&ether.to_ne_bytes());
    // SAFETY: as above.
    unsafe { dst.write_unaligned(h) };
    true
}

/// `lb_decap_mss`: a SYN-ACK from a VIP announcing an MSS above `--clamp-mss` gets that
/// MSS instead (the TCP checksum follows through the kernel's helper, which also handles
/// a checksum the NIC completes). Everything leaves as it came otherwise.
#[inline(always)]
pub fn clamp_mss(ctx: &TcContext) -> i32 {
    let Some(cfg) = DECAP_CONFIG.get(0) else {
        return TC_ACT_OK;
    };
    if cfg.clamp_mss != 0 && clamp(ctx, cfg.clamp_mss) {
        count(MSS_CLAMPED);
    }
    TC_ACT_OK
}

/// Whether the segment was a VIP's SYN-ACK whose MSS was lowered to `max`.
#[inline(never)]
fn clamp(ctx: &TcContext, max: u16) -> bool {
    let Ok(ether) = ctx.load::<u16>(12) else {
        return false;
    };
    let mut vip = DecapVip::default();
    let l4 = if ether == EtherType::Ipv4 as u16 {
        let Ok(ip) = ctx.load::<[u8; 20]>(EthHdr::LEN) else {
            return false;
        };
        if ip[9] != PROTO_TCP {
            return false;
        }
        vip.family = FAMILY_V4;
        vip.addr[0] = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
        EthHdr::LEN + usize::from(ip[0] & 0x0f) * 4
    } else if ether == EtherType::Ipv6 as u16 {
        let Ok(ip) = ctx.load::<[u32; 6]>(EthHdr::LEN) else {
            return false;
        };
        if ip[1].to_ne_bytes()[2] != PROTO_TCP {
            return false;
        }
        vip.family = FAMILY_V6;
        vip.addr = [ip[2], ip[3], ip[4], ip[5]];
        EthHdr::LEN + Ipv6Hdr::LEN
    } else {
        return false;
    };
    if DECAP_VIPS.get_ptr(&vip).is_none() {
        return false;
    }
    let Ok([doff, flags]) = ctx.load::<[u8; 2]>(l4 + 12) else {
        return false;
    };
    if flags & (SYN | ACK) != SYN | ACK {
        return false;
    }
    let end = l4 + usize::from(doff >> 4) * 4;
    // The options: at most 40 bytes, so at most 20 of the shortest (kind, length) steps.
    let mut at = l4 + 20;
    for _ in 0..20 {
        if at + 4 > end {
            return false;
        }
        let Ok([kind, len, hi, lo]) = ctx.load::<[u8; 4]>(at) else {
            return false;
        };
        match kind {
            0 => return false,
            1 => at += 1,
            OPT_MSS if len == 4 => {
                let mss = u16::from_be_bytes([hi, lo]);
                if mss <= max {
                    return false;
                }
                let (old, new) = (mss.to_be(), max.to_be());
                let csum = l4 + 16;
                return ctx.l4_csum_replace(csum, old as u64, new as u64, 2).is_ok()
                    && ctx.store(at + 2, &new, 0).is_ok();
            }
            _ if len < 2 => return false,
            _ => at += usize::from(len),
        }
    }
    false
}
