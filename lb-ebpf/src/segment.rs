//! A TCP segment the program writes itself over the one it received, in place: the RST
//! for a connection no backend can take, and the SYN proxy's SYN-ACK, SYN and ACKs.
//! The frame keeps its Ethernet header(s) (and VLAN tag); the IP header is rewritten
//! without options, the TCP header with the options of a [`Shape`], and the payload
//! goes (the frame is trimmed or grown to the new headers).
//!
//! An answer goes back where the segment came from (addresses, ports and MACs swapped,
//! TTL/hop limit 64, sent with XDP_TX: no route or neighbour lookup); any other segment
//! keeps the received addresses and is rewritten and routed on like a forwarded one.

use aya_ebpf::{
    helpers::bpf_xdp_adjust_tail, macros::map, maps::PerCpuArray, programs::XdpContext,
};
use lb_common::{
    maps::{FAMILY_V4, PROTO_TCP},
    tcp::{OPT_MSS, OPT_NOP, OPT_SACK_OK, OPT_TIMESTAMPS, OPT_WSCALE, TIMESTAMPS_LEN},
};
use lb_ebpf::csum;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

pub use crate::options::NO_WSCALE;
use crate::{
    nat::ports_word,
    packet::{frame_len, ptr_at},
    parse::{OFF_MASK, Packet},
    stack::zero_words,
};

const IPV4_HLEN: usize = Ipv4Hdr::LEN;
const IPV6_HLEN: usize = Ipv6Hdr::LEN;
/// A TCP header with the most options a [`Shape`] has: 40 bytes.
const MAX_TCP_WORDS: usize = 10;
/// TTL / hop limit of an answer (Linux's default).
const TTL: u8 = 64;
/// ECN bits of the IPv4 TOS byte: none of the segments written here is ECN-capable
/// transport (RFC 3168 6.1.1), so they are cleared while the DSCP is kept.
const ECN_MASK: u8 = 0x03;
/// Don't fragment, in the IPv4 flags/fragment offset field (network order bytes).
const IPV4_DF: [u8; 2] = [0x40, 0];

/// The segment to write. Numbers are host order.
#[repr(C)]
pub struct Shape {
    pub seq: u32,
    pub ack: u32,
    pub tsval: u32,
    pub tsecr: u32,
    pub window: u16,
    /// MSS option value; 0: no MSS option.
    pub mss: u16,
    pub flags: u8,
    /// Window scale option value; [`NO_WSCALE`]: none.
    pub wscale: u8,
    /// 1: SACK permitted option.
    pub sack_ok: u8,
    /// 1: timestamps option (`tsval`, `tsecr`).
    pub ts: u8,
    /// 1: back to the sender (see the module doc).
    pub answer: u8,
    pub _pad: [u8; 3],
}

/// The TCP header with its pseudo-header in front, so one checksum pass covers both.
/// The pseudo-header is laid out as IPv6's (RFC 8200 8.1) for both families: an IPv4
/// address is its first word with the other three zero, which adds nothing to the sum,
/// and the length/next-header word `[0, 6, 0, len]` sums to the same 16-bit words as
/// IPv4's `zero, protocol, TCP length` and IPv6's. Option words not used stay zero and
/// add nothing either.
/// Where [`write`] builds its segment (one per CPU): the program's own scratch space,
/// not shared with the daemon, so it lives here rather than in `maps`.
#[map]
static SEGMENT_SCRATCH: PerCpuArray<Segment> = PerCpuArray::with_max_entries(1, 0);

/// Built in this CPU's entry of `SEGMENT_SCRATCH`, not on the stack: the program's
/// deepest call chains (an answer from the forward path) would not fit the 512 bytes
/// all their frames share.
#[repr(C)]
struct Segment {
    src: [u32; 4],
    dst: [u32; 4],
    proto_len: u32,
    tcp: [u32; MAX_TCP_WORDS],
}

/// Where and what the new IP header is (a struct: BPF calls take five arguments).
#[repr(C)]
struct IpFields {
    /// Offset of the IP header.
    l3: u32,
    /// Length of the TCP header after it.
    tcp_len: u32,
    /// IPv4 TOS byte as received.
    tos: u8,
    ttl: u8,
    _pad: [u8; 2],
}

/// Writes `s` over the packet's IP and TCP headers and fits the frame to them; updates
/// `pkt` (`l4`, `ip_len`, `tcp_flags`) to the new segment. False if the frame could not
/// be resized (no room to grow) or, never in practice, a header is not in the packet.
#[inline(never)]
pub fn write(ctx: &XdpContext, pkt: &mut Packet, s: &Shape) -> bool {
    let Some(seg) = SEGMENT_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's entry of a per-CPU array, valid for the whole program run; no
    // other program instance runs on this CPU meanwhile.
    let seg = unsafe { &mut *seg };
    seg.src = pkt.key.src;
    seg.dst = pkt.key.dst;
    zero_words(&mut seg.tcp);
    let (mut sport, mut dport) = (pkt.key.sport, pkt.key.dport);
    if s.answer != 0 {
        seg.src = pkt.key.dst;
        seg.dst = pkt.key.src;
        (sport, dport) = (dport, sport);
    }
    let words = tcp_words(s, &mut seg.tcp, ports_word(sport, dport));
    let tcp_len = words * 4;
    seg.proto_len = u32::from_ne_bytes([0, PROTO_TCP, 0, tcp_len as u8]);
    let c = csum::of(seg).to_ne_bytes();
    seg.tcp[4] = u32::from_ne_bytes([c[0], c[1], 0, 0]);

    // verifier: the mask bounds the offset read back from the stack; it never changes it.
    let l3 = pkt.l3 as usize & OFF_MASK;
    let ip_hlen = if pkt.key.family == FAMILY_V4 {
        IPV4_HLEN
    } else {
        IPV6_HLEN
    };
    // Everything needed from the received headers is read: `pkt` and the first IPv6
    // word (before the tail, unaffected by resizing).
    if !resize(ctx, l3 + ip_hlen + tcp_len) {
        return false;
    }
    let f = IpFields {
        l3: l3 as u32,
        tcp_len: tcp_len as u32,
        tos: pkt.tos_flowinfo as u8,
        ttl: if s.answer != 0 { TTL } else { pkt.ttl },
        _pad: [0; 2],
    };
    let ok = if pkt.key.family == FAMILY_V4 {
        write_v4(ctx, &f, seg)
    } else {
        write_v6(ctx, &f, seg)
    };
    if !ok || !write_tcp(ctx, l3 + ip_hlen, &seg.tcp, words) {
        return false;
    }
    if s.answer != 0 && !swap_macs(ctx) {
        return false;
    }
    pkt.l4 = (l3 + ip_hlen) as u16;
    pkt.ip_len = (ip_hlen + tcp_len) as u32;
    pkt.tcp_flags = s.flags;
    pkt.ttl = f.ttl;
    true
}

/// Fills the TCP header words (checksum zero) and returns how many there are. Options
/// in Linux's order: MSS, SACK permitted (or two NOPs) with the timestamps, window
/// scale after a NOP.
#[inline(always)]
fn tcp_words(s: &Shape, w: &mut [u32; MAX_TCP_WORDS], ports: u32) -> usize {
    w[0] = ports;
    w[1] = s.seq.to_be();
    w[2] = s.ack.to_be();
    let win = s.window.to_be_bytes();
    let mut n = 5;
    if s.mss != 0 {
        let m = s.mss.to_be_bytes();
        w[n] = u32::from_ne_bytes([OPT_MSS, 4, m[0], m[1]]);
        n += 1;
    }
    if s.ts != 0 {
        w[n] = if s.sack_ok != 0 {
            u32::from_ne_bytes([OPT_SACK_OK, 2, OPT_TIMESTAMPS, TIMESTAMPS_LEN])
        } else {
            u32::from_ne_bytes([OPT_NOP, OPT_NOP, OPT_TIMESTAMPS, TIMESTAMPS_LEN])
        };
        w[n + 1] = s.tsval.to_be();
        w[n + 2] = s.tsecr.to_be();
        n += 3;
    } else if s.sack_ok != 0 {
        w[n] = u32::from_ne_bytes([OPT_NOP, OPT_NOP, OPT_SACK_OK, 2]);
        n += 1;
    }
    if s.wscale != NO_WSCALE {
        w[n] = u32::from_ne_bytes([OPT_NOP, OPT_WSCALE, 3, s.wscale]);
        n += 1;
    }
    // Data offset, flags, window.
    w[3] = u32::from_ne_bytes([(n as u8) << 4, s.flags, win[0], win[1]]);
    n
}

/// Grows or trims the frame to `len` bytes.
#[inline(always)]
fn resize(ctx: &XdpContext, len: usize) -> bool {
    let delta = len as i32 - frame_len(ctx) as i32;
    if delta == 0 {
        return true;
    }
    // SAFETY: the context pointer is this program's own, valid for the whole run. The
    // helper invalidates packet pointers; none is used after it (every later access
    // re-reads `data`/`data_end` through `packet::ptr_at`).
    unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) == 0 }
}

/// Writes an IPv4 header of 20 bytes (no options, identification 0 with DF, as Linux
/// sends its own control segments) for `seg`.
#[inline(never)]
fn write_v4(ctx: &XdpContext, f: &IpFields, seg: &Segment) -> bool {
    let Some(ip) = ptr_at::<[u32; IPV4_HLEN / 4]>(ctx, f.l3 as usize & OFF_MASK) else {
        return false;
    };
    let (tos, ttl) = (f.tos, f.ttl);
    let tot_len = ((IPV4_HLEN + f.tcp_len as usize) as u16).to_be_bytes();
    let mut h: [u32; IPV4_HLEN / 4] = [
        u32::from_ne_bytes([0x45, tos & !ECN_MASK, tot_len[0], tot_len[1]]),
        u32::from_ne_bytes([0, 0, IPV4_DF[0], IPV4_DF[1]]),
        u32::from_ne_bytes([ttl, PROTO_TCP, 0, 0]),
        seg.src[0],
        seg.dst[0],
    ];
    let c = csum::of(&mut h).to_ne_bytes();
    h[2] = u32::from_ne_bytes([ttl, PROTO_TCP, c[0], c[1]]);
    // SAFETY: `ptr_at` checked the 20 bytes at `ip` are inside the packet; unaligned.
    unsafe { ip.write_unaligned(h) };
    true
}

/// Writes an IPv6 header for `seg`: version, DSCP and flow label as received, ECN
/// bits cleared.
#[inline(never)]
fn write_v6(ctx: &XdpContext, f: &IpFields, seg: &Segment) -> bool {
    let Some(ip) = ptr_at::<[u32; IPV6_HLEN / 4]>(ctx, f.l3 as usize & OFF_MASK) else {
        return false;
    };
    let ttl = f.ttl;
    // SAFETY: `ptr_at` checked the 40 bytes at `ip`; the read is unaligned-safe.
    let mut first = unsafe { ip.cast::<[u8; 4]>().read_unaligned() };
    // The traffic class spans the low nibble of byte 0 and the high nibble of byte 1;
    // its ECN bits are the low two, i.e. bits 0x30 of byte 1.
    first[1] &= !(ECN_MASK << 4);
    let plen = (f.tcp_len as u16).to_be_bytes();
    let h: [u32; IPV6_HLEN / 4] = [
        u32::from_ne_bytes(first),
        u32::from_ne_bytes([plen[0], plen[1], PROTO_TCP, ttl]),
        seg.src[0],
        seg.src[1],
        seg.src[2],
        seg.src[3],
        seg.dst[0],
        seg.dst[1],
        seg.dst[2],
        seg.dst[3],
    ];
    // SAFETY: `ptr_at` checked the 40 bytes at `ip` are inside the packet; unaligned.
    unsafe { ip.write_unaligned(h) };
    true
}

/// Writes the first `n` words of `w` at `off`: each length is its own fixed-size write,
/// which is what the verifier can check against the packet's end.
#[inline(always)]
fn write_tcp(ctx: &XdpContext, off: usize, w: &[u32; MAX_TCP_WORDS], n: usize) -> bool {
    match n {
        5 => put::<5>(ctx, off, w),
        6 => put::<6>(ctx, off, w),
        7 => put::<7>(ctx, off, w),
        8 => put::<8>(ctx, off, w),
        9 => put::<9>(ctx, off, w),
        10 => put::<10>(ctx, off, w),
        _ => false,
    }
}

#[inline(always)]
fn put<const N: usize>(ctx: &XdpContext, off: usize, w: &[u32; MAX_TCP_WORDS]) -> bool {
    let Some(p) = ptr_at::<[u32; N]>(ctx, off & OFF_MASK) else {
        return false;
    };
    let mut v = [0u32; N];
    let mut i = 0;
    while i < N {
        v[i] = w[i];
        i += 1;
    }
    // SAFETY: `ptr_at` checked the `N` words at `p` are inside the packet; unaligned.
    unsafe { p.write_unaligned(v) };
    true
}

/// Swaps the Ethernet destination and source: the answer goes back to the MAC the
/// segment came from, from the MAC it was sent to. A VLAN tag after them stays.
#[inline(never)]
fn swap_macs(ctx: &XdpContext) -> bool {
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
