//! TCP options on the packet path: where in a segment's header an option is, and its
//! values. One small search per option rather than one walk that notes them all: the
//! verifier follows a loop's every path, and a walk with a branch per kind it records
//! multiplies them past its limit. Most segments carry Linux's layout, which one read
//! checks and answers before any search.

use aya_ebpf::programs::XdpContext;
use core::ptr::addr_of;
use lb_common::tcp::{
    OPT_END, OPT_MSS, OPT_NOP, OPT_SACK_OK, OPT_TIMESTAMPS, OPT_WSCALE, TIMESTAMPS_LEN,
};
use network_types::tcp::TcpHdr;

use crate::{
    packet::ptr_at,
    parse::{OFF_MASK, Packet, offset_flags},
};

/// Options looked at before giving up: Linux puts none after the fourth (MSS, SACK
/// permitted, timestamps, window scale, with NOPs), other stacks after a few more NOPs.
const MAX_OPTIONS: usize = 10;
/// Bounds option offsets (TCP header offset + up to 60) for the verifier without
/// changing any valid one.
pub const OPT_OFF_MASK: usize = 0xff;

/// Where option `kind` starts in the packet's TCP header (its kind byte, in bytes from
/// the header's start) and its length; `None` if the header has no such option within
/// the first few, or it is cut off.
#[inline(never)]
pub fn find(ctx: &XdpContext, pkt: &Packet, kind: u8) -> Option<(u32, u32)> {
    let l4 = pkt.l4 as usize & OFF_MASK;
    let th = ptr_at::<TcpHdr>(ctx, l4)?;
    // SAFETY: `ptr_at` checked the TCP header at `th` is inside the packet.
    let doff = (unsafe { offset_flags(th) }[0] >> 4) as usize * 4;
    let mut off = TcpHdr::LEN;
    let mut i = 0;
    while i < MAX_OPTIONS {
        i += 1;
        if off >= doff {
            return None;
        }
        // Kind and length in one read: a 1-byte read compiles to a `pkt >= pkt_end`
        // test that the verifier does not take as a bound. A NOP reads its next byte too,
        // harmlessly (it is inside the header or the packet, else the search ends).
        let p = ptr_at::<[u8; 2]>(ctx, (l4 + off) & OPT_OFF_MASK)?;
        // SAFETY: `ptr_at` checked the 2 bytes are inside the packet.
        let [k, len] = unsafe { p.read_unaligned() };
        if k == OPT_END {
            return None;
        }
        if k == OPT_NOP {
            off += 1;
            continue;
        }
        let len = len as usize;
        if len < 2 || off + len > doff {
            return None;
        }
        if k == kind {
            return Some((off as u32, len as u32));
        }
        off += len;
    }
    None
}

/// The TSval and TSecr of the segment's timestamps option, and its offset.
#[inline(always)]
pub fn timestamps(ctx: &XdpContext, pkt: &Packet) -> Option<Timestamps> {
    let (off, len) = match linux_timestamps_at(ctx, pkt) {
        Some(off) => (off, TIMESTAMPS_LEN as u32),
        None => find(ctx, pkt, OPT_TIMESTAMPS)?,
    };
    if len != TIMESTAMPS_LEN as u32 {
        return None;
    }
    Some(Timestamps {
        off,
        tsval: read_u32(ctx, pkt, off + 2)?,
        tsecr: read_u32(ctx, pkt, off + 6)?,
    })
}

/// A segment's timestamps option: where it is and its values (host order).
#[derive(Clone, Copy)]
pub struct Timestamps {
    pub off: u32,
    pub tsval: u32,
    pub tsecr: u32,
}

/// The 32-bit value (host order) at `off` bytes into the TCP header.
#[inline(always)]
pub fn read_u32(ctx: &XdpContext, pkt: &Packet, off: u32) -> Option<u32> {
    let p = ptr_at::<[u8; 4]>(ctx, (pkt.l4 as usize + off as usize) & OPT_OFF_MASK)?;
    // SAFETY: `ptr_at` checked the 4 bytes are inside the packet.
    Some(u32::from_be_bytes(unsafe { p.read_unaligned() }))
}

/// The two bytes at `off` bytes into the TCP header.
#[inline(always)]
pub fn read_2(ctx: &XdpContext, pkt: &Packet, off: u32) -> Option<[u8; 2]> {
    let p = ptr_at::<[u8; 2]>(ctx, (pkt.l4 as usize + off as usize) & OPT_OFF_MASK)?;
    // SAFETY: `ptr_at` checked the 2 bytes are inside the packet.
    Some(unsafe { p.read_unaligned() })
}

/// What a SYN offers: its MSS (0 if none), window scale ([`NO_WSCALE`] if none) and
/// SACK. No `Option`s, see `lb_common::syn_proxy::ClientOptions`.
#[derive(Clone, Copy)]
pub struct SynOptions {
    pub mss: u16,
    pub wscale: u8,
    pub sack: bool,
}

/// [`SynOptions::wscale`] of a segment without the option.
pub const NO_WSCALE: u8 = lb_common::syn_proxy::NOT_OFFERED;

/// The options of the packet's SYN.
#[inline(never)]
pub fn syn_options(ctx: &XdpContext, pkt: &Packet) -> SynOptions {
    if let Some(o) = linux_syn_options(ctx, pkt) {
        return o;
    }
    let mss = match find(ctx, pkt, OPT_MSS) {
        Some((off, 4)) => read_2(ctx, pkt, off + 2).map_or(0, u16::from_be_bytes),
        _ => 0,
    };
    SynOptions {
        mss,
        wscale: wscale(ctx, pkt),
        sack: matches!(find(ctx, pkt, OPT_SACK_OK), Some((_, 2))),
    }
}

/// A SYN's options when they are Linux's, in its order and nothing else: MSS, SACK
/// permitted, timestamps, NOP, window scale (`02 04 mm mm 04 02 08 0a` ... `01 03 03 ws`,
/// a header of 40 bytes). Most SYNs are, and one read replaces a search per option;
/// where this answers, the searches would find the same.
#[inline(always)]
fn linux_syn_options(ctx: &XdpContext, pkt: &Packet) -> Option<SynOptions> {
    let p = ptr_at::<[u8; LINUX_SYN_HLEN]>(ctx, pkt.l4 as usize & OFF_MASK)?;
    // SAFETY: `ptr_at` checked the 40 bytes at `p` are inside the packet; unaligned.
    let h = unsafe { p.read_unaligned() };
    let o = &h[TcpHdr::LEN..];
    let linux = (h[12] >> 4) as usize * 4 == LINUX_SYN_HLEN
        && o[..2] == [OPT_MSS, 4]
        && o[4..8] == [OPT_SACK_OK, 2, OPT_TIMESTAMPS, TIMESTAMPS_LEN]
        && o[16..19] == [OPT_NOP, OPT_WSCALE, 3];
    linux.then(|| SynOptions {
        mss: u16::from_be_bytes([o[2], o[3]]),
        wscale: o[19],
        sack: true,
    })
}

/// A SYN header with Linux's options ([`linux_syn_options`]).
const LINUX_SYN_HLEN: usize = 40;

/// Where the timestamps option is (its kind byte, from the header's start) when it
/// comes where Linux puts it: after two NOPs (every segment but a SYN), or after the
/// MSS and SACK permitted or two NOPs (a SYN). One read of the first option word(s)
/// replaces the search; where this answers, the search would find the same.
#[inline(always)]
fn linux_timestamps_at(ctx: &XdpContext, pkt: &Packet) -> Option<u32> {
    let p = ptr_at::<[u8; TS_PROBE_LEN]>(ctx, pkt.l4 as usize & OFF_MASK)?;
    // SAFETY: `ptr_at` checked the bytes at `p` are inside the packet; unaligned.
    let h = unsafe { p.read_unaligned() };
    let doff = (h[12] >> 4) as usize * 4;
    let o = &h[TcpHdr::LEN..];
    let ts = [OPT_TIMESTAMPS, TIMESTAMPS_LEN];
    let off = if o[..4] == [OPT_NOP, OPT_NOP, ts[0], ts[1]] {
        TcpHdr::LEN + 2
    } else if o[..2] == [OPT_MSS, 4]
        && (o[4..6] == [OPT_SACK_OK, 2] || o[4..6] == [OPT_NOP, OPT_NOP])
        && o[6..8] == ts
    {
        TcpHdr::LEN + 6
    } else {
        return None;
    };
    (off + TIMESTAMPS_LEN as usize <= doff).then_some(off as u32)
}

/// Bytes [`linux_timestamps_at`] reads: the TCP header and two option words.
const TS_PROBE_LEN: usize = TcpHdr::LEN + 8;

/// The window scale a SYN or SYN-ACK offers, or [`NO_WSCALE`].
#[inline(always)]
pub fn wscale(ctx: &XdpContext, pkt: &Packet) -> u8 {
    match find(ctx, pkt, OPT_WSCALE) {
        // The option is kind, length, shift: the shift is the second byte read at +1.
        Some((off, 3)) => read_2(ctx, pkt, off + 1).map_or(NO_WSCALE, |b| b[1]),
        _ => NO_WSCALE,
    }
}

/// The TCP header's sequence and acknowledgment numbers and window, host order.
#[inline(always)]
pub fn numbers(ctx: &XdpContext, pkt: &Packet) -> Option<(u32, u32, u16)> {
    let th = ptr_at::<TcpHdr>(ctx, pkt.l4 as usize & OFF_MASK)?;
    // SAFETY: `ptr_at` checked the TCP header at `th` is inside the packet; read
    // unaligned.
    unsafe {
        Some((
            u32::from_be_bytes(addr_of!((*th).seq).read_unaligned()),
            u32::from_be_bytes(addr_of!((*th).ack_seq).read_unaligned()),
            u16::from_be_bytes(addr_of!((*th).window).read_unaligned()),
        ))
    }
}
