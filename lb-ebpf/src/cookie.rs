//! SYN cookies from the kernel (`bpf_tcp_raw_gen_syncookie_*`, `..._check_syncookie_*`):
//! the same keyed hash and time counter as the kernel's own syncookies, so a cookie is
//! valid for about two minutes and cannot be forged without the kernel's secret.
//!
//! The helpers read the addresses, ports and sequence numbers (and a SYN's MSS option)
//! from header structs; they get copies on the stack, which the verifier checks once,
//! rather than packet pointers whose lengths it would have to be shown.

use aya_ebpf::{
    bindings::{iphdr, ipv6hdr, tcphdr},
    helpers::{
        bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_check_syncookie_ipv6,
        bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6,
    },
    programs::XdpContext,
};
use core::mem::MaybeUninit;
use lb_common::{
    maps::FAMILY_V4,
    tcp::{ACK, OPT_MSS, OPT_NOP, RST, SYN},
};

use crate::{
    nat::ports_word,
    packet::ptr_at,
    parse::{OFF_MASK, Packet},
    stack::zeroed,
};

/// A TCP header with one option word (the MSS), as the generator reads it.
const SYN_WORDS: usize = 6;

/// An IPv4 header (20 bytes) or an IPv6 one (40) with only the addresses set: all the
/// helpers read of it.
#[repr(C)]
struct Ip {
    words: [u32; 10],
}

/// The header view the helpers take, in `slot`: addresses at their place in an IPv4 or
/// IPv6 header. codegen: zeroed word by word (`stack::zeroed`); a literal of zeros
/// became a byte-loop `memset` call.
#[inline(always)]
fn ip_of<'a>(pkt: &Packet, slot: &'a mut MaybeUninit<Ip>) -> &'a mut Ip {
    let k = &pkt.key;
    let ip = zeroed(slot);
    if k.family == FAMILY_V4 {
        // Version/IHL first; source and destination are words 3 and 4.
        ip.words[0] = u32::from_ne_bytes([0x45, 0, 0, 0]);
        ip.words[3] = k.src[0];
        ip.words[4] = k.dst[0];
    } else {
        ip.words[0] = u32::from_ne_bytes([0x60, 0, 0, 0]);
        ip.words[2..6].copy_from_slice(&k.src);
        ip.words[6..10].copy_from_slice(&k.dst);
    }
    ip
}

/// The cookie (the SYN-ACK's sequence number) for the packet's SYN with sequence number
/// `seq` and MSS option `mss` (0: none).
#[inline(never)]
pub fn generate(pkt: &Packet, seq: u32, mss: u16) -> Option<u32> {
    let mut slot = MaybeUninit::uninit();
    let ip = ip_of(pkt, &mut slot);
    let m = mss.to_be_bytes();
    let mut th: [u32; SYN_WORDS] = [
        ports_word(pkt.key.sport, pkt.key.dport),
        seq.to_be(),
        0,
        u32::from_ne_bytes([(SYN_WORDS as u8) << 4, SYN, 0, 0]),
        0,
        if mss != 0 {
            u32::from_ne_bytes([OPT_MSS, 4, m[0], m[1]])
        } else {
            u32::from_ne_bytes([OPT_NOP; 4])
        },
    ];
    let len = (SYN_WORDS * 4) as u32;
    let ipp = ip.words.as_mut_ptr();
    let thp = th.as_mut_ptr().cast::<tcphdr>();
    // SAFETY: both pointers are to initialised stack values at least as long as the
    // helpers read (`iphdr`: 20 bytes, `ipv6hdr`: 40, the TCP header: `len` bytes,
    // which is its data offset, as the helper requires).
    let r = unsafe {
        if pkt.key.family == FAMILY_V4 {
            bpf_tcp_raw_gen_syncookie_ipv4(ipp.cast::<iphdr>(), thp, len)
        } else {
            bpf_tcp_raw_gen_syncookie_ipv6(ipp.cast::<ipv6hdr>(), thp, len)
        }
    };
    if r < 0 { None } else { Some(r as u32) }
}

/// What a segment without a flow says about a SYN cookie.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cookie {
    /// It acknowledges no cookie this host gave its 4-tuple lately.
    Invalid,
    /// The client's ACK of a cookie SYN-ACK (sequence number = its ISN + 1).
    Ack,
    /// A zero-window probe (sequence number = its ISN) acknowledging a cookie: the
    /// client's ACK was lost and the window the cookie SYN-ACK gave is 0, so the
    /// probes are all the LB will hear.
    Probe,
}

/// Whether the packet (an ACK without SYN or RST) acknowledges a cookie this host gave
/// its 4-tuple in the last two minutes or so.
#[inline(never)]
pub fn check(ctx: &XdpContext, pkt: &Packet) -> Cookie {
    if pkt.tcp_flags & (SYN | ACK | RST) != ACK {
        return Cookie::Invalid;
    }
    let Some(th) = ptr_at::<[u32; 5]>(ctx, pkt.l4 as usize & OFF_MASK) else {
        return Cookie::Invalid;
    };
    // SAFETY: `ptr_at` checked the 20-byte TCP header is inside the packet; unaligned.
    let mut th = unsafe { th.read_unaligned() };
    let mut slot = MaybeUninit::uninit();
    let ip = ip_of(pkt, &mut slot);
    if valid(ip, &mut th, pkt.key.family) {
        return Cookie::Ack;
    }
    // The helper takes the sequence number minus one as the client's ISN.
    th[1] = u32::from_be(th[1]).wrapping_add(1).to_be();
    if valid(ip, &mut th, pkt.key.family) {
        return Cookie::Probe;
    }
    Cookie::Invalid
}

#[inline(always)]
fn valid(ip: &mut Ip, th: &mut [u32; 5], family: u8) -> bool {
    let ipp = ip.words.as_mut_ptr();
    let thp = th.as_mut_ptr().cast::<tcphdr>();
    // SAFETY: both pointers are to initialised stack values of the sizes the helpers
    // read (`iphdr` 20 or `ipv6hdr` 40 bytes; `tcphdr` 20).
    let r = unsafe {
        if family == FAMILY_V4 {
            bpf_tcp_raw_check_syncookie_ipv4(ipp.cast::<iphdr>(), thp)
        } else {
            bpf_tcp_raw_check_syncookie_ipv6(ipp.cast::<ipv6hdr>(), thp)
        }
    };
    r == 0
}
