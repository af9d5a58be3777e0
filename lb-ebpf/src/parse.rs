//! Header parsing: Ethernet, one optional VLAN tag, IPv4 (options allowed) or IPv6, and
//! TCP, read through `network-types` views from a [`Cursor`]. Variable-length headers
//! (`ihl`, `doff`) are validated before the cursor moves past them.

use aya_ebpf::programs::XdpContext;
use core::ptr::addr_of;
use lb_common::maps::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};

use crate::{
    packet::{Cursor, frame_len, ptr_at},
    unaligned::{load16, load32},
};

/// 802.1ad (QinQ outer tag), network order as in the header: tagged like 802.1Q.
const ETH_P_8021AD: u16 = 0x88a8_u16.to_be();
/// IPv4 "more fragments" flag and fragment offset mask, in host order of `frags`.
const IPV4_MF: u16 = 0x2000;
const IPV4_OFFSET: u16 = 0x1fff;

/// Largest offset of a TCP header: Ethernet + VLAN tag + IPv4 header with options.
pub const MAX_L4_OFF: usize = EthHdr::LEN + VlanHdr::LEN + 60;
/// Mask that keeps every valid header offset (all are `<= MAX_L4_OFF`) unchanged; used to
/// give the verifier a bound on offsets read back from the stack.
pub const OFF_MASK: usize = 0x7f;
const _: () = assert!(MAX_L4_OFF <= OFF_MASK);

/// What the parser found.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Parsed {
    /// Not TCP over IP, or cut off before the ports: not ours to judge, pass untouched.
    Skip,
    /// A well-formed TCP segment; every field of [`Packet`] is set.
    Tcp,
    /// The ports are known (`key` is set) but a header is inconsistent.
    Malformed,
    /// An IPv4 fragment: only the first one has ports (`key` set, `l4` valid).
    FirstFragment,
    /// An IPv4 fragment after the first: no ports.
    LaterFragment,
    /// An ICMP error (IPv4 destination unreachable or time exceeded, ICMPv6 destination
    /// unreachable, packet too big or time exceeded): only `l3`, `ip_len`, the TOS /
    /// flow info and the TTL are set; [`icmp_quote`] reads the flow it is about.
    IcmpError,
}

/// The ICMP error types: IPv4 destination unreachable and time exceeded; ICMPv6
/// destination unreachable, packet too big and time exceeded.
const ICMP_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_UNREACH: u8 = 1;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
/// The ICMP header before the quoted packet.
const ICMP_HLEN: usize = 8;

/// The fields of a parsed packet the rest of the program uses.
#[repr(C)]
pub struct Packet {
    /// The packet's own 5-tuple (addresses and ports as in the packet).
    pub key: FlowKey,
    /// `bpf_ktime_get_coarse_ns()` when the packet arrived.
    pub now: u64,
    /// Offset of the IP header. (Both offsets are `u16`: the packet lives in the entry
    /// function's stack frame, whose size bounds the deepest call chain's.)
    pub l3: u16,
    /// Offset of the TCP header.
    pub l4: u16,
    /// IPv4 total length, or IPv6 header + payload length, host order.
    pub ip_len: u32,
    /// IPv4: the TOS byte; IPv6: the first header word masked to the flow info
    /// (traffic class and flow label), as the packet's bytes.
    pub tos_flowinfo: u32,
    /// TTL or hop limit.
    pub ttl: u8,
    /// TCP flags byte.
    pub tcp_flags: u8,
    pub _pad: [u8; 2],
}

/// Parses Ethernet, one optional VLAN tag, IPv4/IPv6 and TCP into `pkt`.
#[inline(never)]
pub fn parse(ctx: &XdpContext, pkt: &mut Packet) -> Parsed {
    let mut c = Cursor::new();
    let Some(eth) = c.next::<EthHdr>(ctx) else {
        return Parsed::Skip;
    };
    // SAFETY: `next` checked the header is inside the packet.
    let dst = unsafe { dst_mac(eth.cast()) };
    if !addressed_here(ctx, dst) {
        // A frame for another host (a veth, bridge port or promiscuous NIC passes it
        // on): the kernel drops it.
        return Parsed::Skip;
    }
    // SAFETY: as above.
    let mut proto = unsafe { addr_of!((*eth).ether_type).read_unaligned() };
    if proto == EtherType::Ieee8021q as u16 || proto == ETH_P_8021AD {
        let Some(vlan) = c.next::<VlanHdr>(ctx) else {
            return Parsed::Skip;
        };
        // SAFETY: as above, for the VLAN tag.
        proto = unsafe { addr_of!((*vlan).ether_type).read_unaligned() };
    }
    pkt.l3 = c.offset() as u16;
    if proto == EtherType::Ipv4 as u16 {
        parse_v4(ctx, c, pkt)
    } else if proto == EtherType::Ipv6 as u16 {
        parse_v6(ctx, c, pkt)
    } else {
        Parsed::Skip
    }
}

/// The destination MAC of the Ethernet header at `eth` as a `lb_common::maps::mac_word`:
/// two loads, where six bytes took six.
///
/// # Safety
/// The header's first six bytes must be inside the packet.
#[inline(always)]
pub unsafe fn dst_mac(eth: *const u8) -> u64 {
    // SAFETY: the caller's promise; `load32`/`load16` read unaligned.
    unsafe { u64::from(load32(eth)) | u64::from(load16(eth.add(4))) << 32 }
}

/// Whether a frame to `dst` (a `lb_common::maps::mac_word`) is this host's (see
/// `LocalMacs`).
#[inline(always)]
pub fn addressed_here(ctx: &XdpContext, dst: u64) -> bool {
    match crate::maps::LOCAL_MACS.get(0) {
        Some(macs) => macs.accepts(ctx.ingress_ifindex() as u32, dst),
        None => true,
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, mut c: Cursor, pkt: &mut Packet) -> Parsed {
    let l3 = c.offset();
    let Some(ip) = c.next::<Ipv4Hdr>(ctx) else {
        return Parsed::Skip;
    };
    // SAFETY: `next` checked the 20-byte header is inside the packet; its fields are
    // bytes, so the view has no alignment to respect.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Parsed::Skip;
    }
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    if ip.proto == PROTO_ICMP && ihl == Ipv4Hdr::LEN {
        let t = icmp_type(ctx, c.offset());
        if t != ICMP_UNREACH && t != ICMP_TIME_EXCEEDED {
            return Parsed::Skip;
        }
        pkt.ip_len = u32::from(u16::from_be_bytes(ip.tot_len));
        pkt.tos_flowinfo = ip.tos as u32;
        pkt.ttl = ip.ttl;
        return Parsed::IcmpError;
    }
    if ip.proto != PROTO_TCP {
        return Parsed::Skip;
    }
    // SAFETY: the fields are in the packet (checked above).
    let (frag, src, dst) = unsafe {
        (
            u16::from_be(load16(ip.frags.as_ptr())),
            load32(ip.src_addr.as_ptr()),
            load32(ip.dst_addr.as_ptr()),
        )
    };
    let key = &mut pkt.key;
    key.src = [src, 0, 0, 0];
    key.dst = [dst, 0, 0, 0];
    key.proto = PROTO_TCP;
    key.family = FAMILY_V4;
    key._pad = [0; 2];
    if frag & IPV4_OFFSET != 0 {
        return Parsed::LaterFragment;
    }
    if ihl < Ipv4Hdr::LEN {
        // Where the ports would be is unknown: cannot tell whether it is ours.
        return Parsed::Skip;
    }
    // The options: `ihl` is at most 60, so this stays within `MAX_L4_OFF`.
    c.skip(ihl - Ipv4Hdr::LEN);
    let l4 = c.offset();
    let Some(ports) = ports(ctx, &c) else {
        return Parsed::Skip;
    };
    key.sport = ports[0];
    key.dport = ports[1];
    pkt.l4 = l4 as u16;
    if frag & IPV4_MF != 0 {
        return Parsed::FirstFragment;
    }
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    if tot_len < ihl + TcpHdr::LEN || l3 + tot_len > frame_len(ctx) {
        return Parsed::Malformed;
    }
    let Some(doff) = tcp(ctx, c, pkt) else {
        return Parsed::Malformed;
    };
    if doff > tot_len - ihl {
        return Parsed::Malformed;
    }
    pkt.ip_len = tot_len as u32;
    pkt.tos_flowinfo = ip.tos as u32;
    pkt.ttl = ip.ttl;
    Parsed::Tcp
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, mut c: Cursor, pkt: &mut Packet) -> Parsed {
    let Some(ip) = c.next::<Ipv6Hdr>(ctx) else {
        return Parsed::Skip;
    };
    // SAFETY: `next` checked the 40-byte header is inside the packet; its fields are
    // bytes, so the view has no alignment to respect.
    let ip = unsafe { &*ip };
    // Extension headers are not followed: only TCP (or an ICMPv6 error) directly after
    // the header is ours.
    if ip.vcf[0] >> 4 != 6 {
        return Parsed::Skip;
    }
    if ip.next_hdr == PROTO_ICMPV6 {
        let t = icmp_type(ctx, c.offset());
        if !(ICMPV6_UNREACH..=ICMPV6_TIME_EXCEEDED).contains(&t) {
            return Parsed::Skip;
        }
        pkt.ip_len = (Ipv6Hdr::LEN + u16::from_be_bytes(ip.payload_len) as usize) as u32;
        pkt.tos_flowinfo = u32::from_ne_bytes(ip.vcf) & u32::from_be(0x0fff_ffff);
        pkt.ttl = ip.hop_limit;
        return Parsed::IcmpError;
    }
    if ip.next_hdr != PROTO_TCP {
        return Parsed::Skip;
    }
    let l4 = c.offset();
    let Some(ports) = ports(ctx, &c) else {
        return Parsed::Skip;
    };
    let key = &mut pkt.key;
    key.src = words(&ip.src_addr);
    key.dst = words(&ip.dst_addr);
    key.sport = ports[0];
    key.dport = ports[1];
    key.proto = PROTO_TCP;
    key.family = FAMILY_V6;
    key._pad = [0; 2];
    pkt.l4 = l4 as u16;
    let payload = u16::from_be_bytes(ip.payload_len) as usize;
    if l4 + payload > frame_len(ctx) {
        return Parsed::Malformed;
    }
    let Some(doff) = tcp(ctx, c, pkt) else {
        return Parsed::Malformed;
    };
    if doff > payload {
        return Parsed::Malformed;
    }
    pkt.ip_len = (Ipv6Hdr::LEN + payload) as u32;
    // Traffic class and flow label: the first word without the version nibble.
    pkt.tos_flowinfo = u32::from_ne_bytes(ip.vcf) & u32::from_be(0x0fff_ffff);
    pkt.ttl = ip.hop_limit;
    Parsed::Tcp
}

/// The type of the ICMP message at `off`; 0 (no error type) if the packet ends first.
#[inline(always)]
fn icmp_type(ctx: &XdpContext, off: usize) -> u8 {
    // verifier: a whole word, not one byte: LLVM turns the one-byte bound check into a
    // comparison the verifier does not learn a packet range from.
    match ptr_at::<[u8; 4]>(ctx, off) {
        // SAFETY: `ptr_at` checked the bytes are inside the packet.
        Some(h) => (unsafe { h.read_unaligned() })[0],
        None => 0,
    }
}

/// The flow an ICMP error (`Parsed::IcmpError`) is about, into `pkt.key`: it quotes a
/// packet the VIP sent the client (a backend's reply, in DSR), so the flow is the quote's
/// reversed. False unless the quote is of TCP with a whole IP header (no IPv4 options,
/// no IPv6 extension headers) and its ports.
#[inline(never)]
pub fn icmp_quote(ctx: &XdpContext, pkt: &mut Packet) -> bool {
    // verifier: the mask bounds the offset read back from the stack; it never changes it.
    let l3 = pkt.l3 as usize & OFF_MASK;
    let key = &mut pkt.key;
    key.proto = PROTO_TCP;
    key._pad = [0; 2];
    // verifier: a whole word, as in `icmp_type`.
    let Some(v) = ptr_at::<[u8; 4]>(ctx, l3) else {
        return false;
    };
    // SAFETY: `ptr_at` checked the bytes are inside the packet.
    let version = (unsafe { v.read_unaligned() })[0] >> 4;
    let mut c = Cursor::at(l3);
    let quoted = match version {
        4 => key_v4(ctx, &mut c, key),
        6 => key_v6(ctx, &mut c, key),
        _ => false,
    };
    if quoted {
        let Some(ports) = c.next::<[u16; 2]>(ctx) else {
            return false;
        };
        // SAFETY: `next` checked the 4 bytes are inside the packet.
        let [sport, dport] = unsafe { port_pair(ports.cast()) };
        key.sport = dport;
        key.dport = sport;
        return true;
    }
    false
}

/// An IPv4 ICMP error's quoted header into `key` (reversed), the cursor after it.
#[inline(always)]
fn key_v4(ctx: &XdpContext, c: &mut Cursor, key: &mut FlowKey) -> bool {
    // The outer header has no options (`parse_v4` checked).
    if c.next::<Ipv4Hdr>(ctx).is_none() {
        return false;
    }
    c.skip(ICMP_HLEN);
    let Some(q) = c.next::<Ipv4Hdr>(ctx) else {
        return false;
    };
    // SAFETY: as above, for the quoted header.
    let q = unsafe { &*q };
    if q.vihl != 0x45 || q.proto != PROTO_TCP {
        return false;
    }
    key.src = [u32::from_ne_bytes(q.dst_addr), 0, 0, 0];
    key.dst = [u32::from_ne_bytes(q.src_addr), 0, 0, 0];
    key.family = FAMILY_V4;
    true
}

/// An ICMPv6 error's quoted header into `key` (reversed), the cursor after it.
#[inline(always)]
fn key_v6(ctx: &XdpContext, c: &mut Cursor, key: &mut FlowKey) -> bool {
    if c.next::<Ipv6Hdr>(ctx).is_none() {
        return false;
    }
    c.skip(ICMP_HLEN);
    let Some(q) = c.next::<Ipv6Hdr>(ctx) else {
        return false;
    };
    // SAFETY: as above, for the quoted header.
    let q = unsafe { &*q };
    if q.next_hdr != PROTO_TCP {
        return false;
    }
    key.src = words(&q.dst_addr);
    key.dst = words(&q.src_addr);
    key.family = FAMILY_V6;
    true
}

/// An IPv6 address in the packet as the network order words of the maps.
#[inline(always)]
pub fn words(a: &[u8; 16]) -> [u32; 4] {
    let p = a.as_ptr();
    // SAFETY: `a` is 16 readable bytes, a field of a header in the packet (every caller's;
    // `unaligned` is for packet memory).
    unsafe {
        [
            load32(p),
            load32(p.add(4)),
            load32(p.add(8)),
            load32(p.add(12)),
        ]
    }
}

/// The two ports (network order) at the cursor, the first thing of a TCP header, which
/// may be all a first fragment carries.
#[inline(always)]
fn ports(ctx: &XdpContext, c: &Cursor) -> Option<[u16; 2]> {
    let p = Cursor::at(c.offset()).next::<[u16; 2]>(ctx)?;
    // SAFETY: `next` checked the 4 bytes are inside the packet.
    Some(unsafe { port_pair(p.cast()) })
}

/// The source and destination ports (network order) of the TCP header at `th`, read in
/// one load.
///
/// # Safety
/// The header's first 4 bytes must be inside the packet.
#[inline(always)]
pub unsafe fn port_pair(th: *const u8) -> [u16; 2] {
    // SAFETY: the caller checked the 4 bytes.
    let w = unsafe { load32(th) }.to_ne_bytes();
    [
        u16::from_ne_bytes([w[0], w[1]]),
        u16::from_ne_bytes([w[2], w[3]]),
    ]
}

/// Validates the TCP header at the cursor and returns its length; records its flags.
#[inline(always)]
fn tcp(ctx: &XdpContext, mut c: Cursor, pkt: &mut Packet) -> Option<usize> {
    let th = c.next::<TcpHdr>(ctx)?;
    // SAFETY: `next` checked the 20-byte header is inside the packet; read unaligned.
    let [doff, flags] = unsafe { offset_flags(th) };
    let doff = (doff >> 4) as usize * 4;
    if doff < TcpHdr::LEN {
        return None;
    }
    pkt.tcp_flags = flags;
    Some(doff)
}

/// The TCP header's data offset byte and flags byte (its bitfield, as packet bytes).
///
/// # Safety
/// `th` must point to a whole TCP header inside the packet.
#[inline(always)]
pub unsafe fn offset_flags(th: *const TcpHdr) -> [u8; 2] {
    // SAFETY: the caller guarantees the header; the bitfield is two plain bytes.
    unsafe {
        addr_of!((*th)._bitfield_1)
            .cast::<[u8; 2]>()
            .read_unaligned()
    }
}
