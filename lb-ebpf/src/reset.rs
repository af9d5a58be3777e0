//! TCP resets for connections no backend can take.
//!
//! When a new flow finds no usable backend, silently dropping its SYN leaves the client
//! retransmitting for a minute or more before it gives up; a RST makes it fail (or try
//! another address) at once, as it would against a closed port. The frame that arrived
//! is rewritten in place into the RST and sent back with `XDP_TX`: out of the same
//! interface, with the same VLAN tag, to the MAC it came from, so no route or neighbour
//! lookup is needed and nothing is allocated.
//!
//! The RST follows RFC 9293 section 3.10.7.1 (what Linux sends for a closed port):
//! - a segment that is itself a RST is never answered (dropped);
//! - a segment with ACK gets `seq = its ack`, flags RST;
//! - any other gets `seq = 0`, `ack = its seq + payload length (+1 for SYN, +1 for FIN)`,
//!   flags RST|ACK.
//!
//! The RST has no TCP options and no payload, window 0, TTL/hop limit 64, and no IPv4
//! options: the frame is trimmed to the new headers. An IPv4 header with options is
//! replaced by a plain 20-byte one, so such segments are answered too.

use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use core::{
    mem::{MaybeUninit, size_of},
    ptr::{self, addr_of},
};
use lb_common::{
    counters,
    maps::{FAMILY_V4, PROTO_TCP},
    tcp::{ACK, RST},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::{
    events,
    nat::ports_word,
    packet::{frame_len, ptr_at},
    parse::{OFF_MASK, Packet, offset_flags},
    sequence,
    stack::zeroed,
    verdict::Verdict,
};

const IPV4_HLEN: usize = Ipv4Hdr::LEN;
const IPV6_HLEN: usize = Ipv6Hdr::LEN;
const TCP_HLEN: usize = TcpHdr::LEN;
/// TTL / hop limit of the RST (Linux's default).
const TTL: u8 = 64;
/// TCP data offset byte of a header without options: 5 words.
const DOFF_NO_OPTIONS: u8 = ((TCP_HLEN / 4) as u8) << 4;
/// ECN bits of the IPv4 TOS byte. A RST is not ECN-capable transport (RFC 3168 6.1.1),
/// so they are cleared while the DSCP is kept.
const ECN_MASK: u8 = 0x03;
/// Don't fragment, in the IPv4 flags/fragment offset field (network order bytes).
const IPV4_DF: [u8; 2] = [0x40, 0];

/// The RST's TCP header with its pseudo-header in front, so one checksum pass covers
/// both. The pseudo-header is laid out as IPv6's (RFC 8200 8.1) for both families: an
/// IPv4 address is its first word with the other three zero, which adds nothing to the
/// sum, and the length/next-header word `[0, 6, 0, 20]` sums to the same 16-bit words
/// (6 and 20) as IPv4's `zero, protocol, TCP length` and IPv6's 32-bit length followed
/// by three zero bytes and the next header.
#[repr(C)]
struct Segment {
    /// Source address of the RST (the VIP), network order words.
    src: [u32; 4],
    /// Destination address of the RST (the client), network order words.
    dst: [u32; 4],
    /// `[0, PROTO_TCP, 0, TCP_HLEN]` as packet bytes.
    proto_len: u32,
    /// The TCP header as packet bytes.
    tcp: [u32; TCP_HLEN / 4],
}

/// Answers the packet's client with a RST built in place; counted as `DROP_NO_BACKEND`
/// whether it is answered (`XDP_TX`) or dropped (it was a RST itself).
#[inline(never)]
pub fn answer(ctx: &XdpContext, pkt: &Packet) -> Verdict {
    if pkt.tcp_flags & RST != 0 {
        // Answering a RST with a RST could loop between two such hosts.
        return Verdict::drop(counters::DROP_NO_BACKEND);
    }
    let mut seg = MaybeUninit::<Segment>::uninit();
    let seg = zeroed(&mut seg);
    if !build_tcp(ctx, pkt, seg) {
        // verifier: the parser checked the TCP header; this path is never taken.
        events::unreachable(ctx);
        return Verdict::drop(counters::DROP_MALFORMED);
    }
    let ip_hlen = if pkt.key.family == FAMILY_V4 {
        write_v4(ctx, pkt, seg)
    } else {
        write_v6(ctx, pkt, seg)
    };
    let Some(ip_hlen) = ip_hlen else {
        // verifier: as above, the headers were checked; never taken.
        events::unreachable(ctx);
        return Verdict::drop(counters::DROP_MALFORMED);
    };
    if !swap_macs(ctx) || !trim(ctx, pkt.l3 as usize & OFF_MASK, ip_hlen) {
        return Verdict::drop(counters::DROP_NO_BACKEND);
    }
    Verdict::tx(counters::DROP_NO_BACKEND)
}

/// Fills `seg` with the RST's pseudo-header and TCP header (checksum included) from the
/// received segment. Reads the received header before anything is overwritten.
#[inline(never)]
fn build_tcp(ctx: &XdpContext, pkt: &Packet, seg: &mut Segment) -> bool {
    // verifier: the mask bounds offsets read back from the stack; it never changes them.
    let l3 = pkt.l3 as usize & OFF_MASK;
    let l4 = pkt.l4 as usize & OFF_MASK;
    let Some(th) = ptr_at::<TcpHdr>(ctx, l4) else {
        return false;
    };
    // SAFETY: `ptr_at` checked the TCP header at `th` is inside the packet; its fields
    // are read unaligned.
    let (seq, ack, doff) = unsafe {
        (
            u32::from_be_bytes(addr_of!((*th).seq).read_unaligned()),
            u32::from_be_bytes(addr_of!((*th).ack_seq).read_unaligned()),
            (offset_flags(th)[0] >> 4) as u32 * 4,
        )
    };
    let flags = pkt.tcp_flags;
    let (rst_seq, rst_ack, rst_flags) = if flags & ACK != 0 {
        (ack, 0, RST)
    } else {
        (
            0,
            sequence::end(pkt, seq, (l4 - l3) as u32, doff),
            RST | ACK,
        )
    };
    seg.src = pkt.key.dst;
    seg.dst = pkt.key.src;
    seg.proto_len = u32::from_ne_bytes([0, PROTO_TCP, 0, TCP_HLEN as u8]);
    seg.tcp = [
        ports_word(pkt.key.dport, pkt.key.sport),
        rst_seq.to_be(),
        rst_ack.to_be(),
        // Data offset, flags, window 0.
        u32::from_ne_bytes([DOFF_NO_OPTIONS, rst_flags, 0, 0]),
        // Checksum (below), urgent pointer 0.
        0,
    ];
    let c = checksum(seg).to_ne_bytes();
    seg.tcp[4] = u32::from_ne_bytes([c[0], c[1], 0, 0]);
    true
}

/// Writes the RST's IPv4 header (20 bytes, no options) and its TCP header from `seg`;
/// returns the IP header length.
#[inline(never)]
fn write_v4(ctx: &XdpContext, pkt: &Packet, seg: &Segment) -> Option<usize> {
    // verifier: the mask bounds the offset read back from the stack; it never changes it.
    let l3 = pkt.l3 as usize & OFF_MASK;
    let ip = ptr_at::<[u32; IPV4_HLEN / 4]>(ctx, l3)?;
    let th = ptr_at::<[u32; TCP_HLEN / 4]>(ctx, l3 + IPV4_HLEN)?;
    let tot_len = ((IPV4_HLEN + TCP_HLEN) as u16).to_be_bytes();
    let tos = pkt.tos_flowinfo as u8 & !ECN_MASK;
    let mut h: [u32; IPV4_HLEN / 4] = [
        u32::from_ne_bytes([0x45, tos, tot_len[0], tot_len[1]]),
        // Identification 0 (DF set, never fragmented), as Linux sends its RSTs.
        u32::from_ne_bytes([0, 0, IPV4_DF[0], IPV4_DF[1]]),
        u32::from_ne_bytes([TTL, PROTO_TCP, 0, 0]),
        seg.src[0],
        seg.dst[0],
    ];
    let c = checksum(&mut h).to_ne_bytes();
    h[2] = u32::from_ne_bytes([TTL, PROTO_TCP, c[0], c[1]]);
    // SAFETY: `ptr_at` checked that the 20 bytes at `ip` and the 20 bytes at `th` are
    // inside the packet; the writes are unaligned-safe. Everything the RST needs from
    // the received headers was read before (into `pkt` and `seg`).
    unsafe {
        ip.write_unaligned(h);
        th.write_unaligned(seg.tcp);
    }
    Some(IPV4_HLEN)
}

/// Writes the RST's IPv6 header and its TCP header from `seg`; returns the IP header
/// length. Version, DSCP and flow label stay as received; ECN bits are cleared.
#[inline(never)]
fn write_v6(ctx: &XdpContext, pkt: &Packet, seg: &Segment) -> Option<usize> {
    // verifier: the mask bounds the offset read back from the stack; it never changes it.
    let l3 = pkt.l3 as usize & OFF_MASK;
    let ip = ptr_at::<[u32; IPV6_HLEN / 4]>(ctx, l3)?;
    let th = ptr_at::<[u32; TCP_HLEN / 4]>(ctx, l3 + IPV6_HLEN)?;
    // SAFETY: `ptr_at` checked the 40 bytes at `ip`; the read is unaligned-safe.
    let mut first = unsafe { ip.cast::<[u8; 4]>().read_unaligned() };
    // The traffic class spans the low nibble of byte 0 and the high nibble of byte 1;
    // its ECN bits are the low two, i.e. bits 0x30 of byte 1.
    first[1] &= !(ECN_MASK << 4);
    let plen = (TCP_HLEN as u16).to_be_bytes();
    let h: [u32; IPV6_HLEN / 4] = [
        u32::from_ne_bytes(first),
        u32::from_ne_bytes([plen[0], plen[1], PROTO_TCP, TTL]),
        seg.src[0],
        seg.src[1],
        seg.src[2],
        seg.src[3],
        seg.dst[0],
        seg.dst[1],
        seg.dst[2],
        seg.dst[3],
    ];
    // SAFETY: `ptr_at` checked that the 40 bytes at `ip` and the 20 bytes at `th` are
    // inside the packet; the writes are unaligned-safe.
    unsafe {
        ip.write_unaligned(h);
        th.write_unaligned(seg.tcp);
    }
    Some(IPV6_HLEN)
}

/// Swaps the Ethernet destination and source: the RST goes back to the MAC the segment
/// came from, from the MAC it was sent to. A VLAN tag after them stays as it is.
#[inline(never)]
fn swap_macs(ctx: &XdpContext) -> bool {
    // The two MACs: the Ethernet header without its type.
    let Some(eth) = ptr_at::<[u8; EthHdr::LEN - 2]>(ctx, 0) else {
        return false;
    };
    // SAFETY: `ptr_at` checked the 12 MAC bytes at `eth`; accesses are unaligned-safe.
    unsafe {
        let m = eth.read_unaligned();
        eth.write_unaligned([
            m[6], m[7], m[8], m[9], m[10], m[11], m[0], m[1], m[2], m[3], m[4], m[5],
        ]);
    }
    true
}

/// Trims the frame to the Ethernet header(s) at `l3` bytes, the IP header and the TCP
/// header: the received options, payload and any Ethernet padding go.
#[inline(never)]
fn trim(ctx: &XdpContext, l3: usize, ip_hlen: usize) -> bool {
    let want = (l3 + ip_hlen + TCP_HLEN) as i32;
    let delta = want - frame_len(ctx) as i32;
    if delta > 0 {
        // The RST is never longer than the segment it answers (the parser checked the
        // headers were there); never taken.
        return false;
    }
    if delta == 0 {
        return true;
    }
    // SAFETY: the context pointer is this program's own, valid for the whole run. The
    // helper invalidates packet pointers; none is used after it (the next access to the
    // packet would have to re-read `data`/`data_end`, as `packet::ptr_at` does).
    unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) == 0 }
}

/// The Internet checksum (RFC 1071) of `v`, a plain value of whole 32-bit words laid out
/// as packet bytes; returned as the native `u16` of the bytes to store.
#[inline(always)]
fn checksum<T>(v: &mut T) -> u16 {
    const { assert!(size_of::<T>() % 4 == 0 && size_of::<T>() <= 512) };
    // SAFETY: `v` is an initialised value of `size_of::<T>()` bytes, a multiple of 4
    // within the helper's limit; the empty `from` side may be null with size 0.
    let sum = unsafe {
        bpf_csum_diff(
            ptr::null_mut(),
            0,
            (v as *mut T).cast(),
            size_of::<T>() as u32,
            0,
        )
    };
    // The helper fails only for sizes that are not multiples of 4 or too large, which
    // the assertion rules out, so `sum` is a valid 32-bit partial sum.
    !fold(sum as u32)
}

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}
