//! The sequence-space fields of a client segment that the flow table keeps about a
//! closing flow and checks a new flow's SYN against (`lb_common::flow::port_free_for`):
//! where the segment starts and ends, and its TSval. Read only for those segments (a
//! SYN of a new flow, a segment of a closing one), never on the common path.

use aya_ebpf::programs::XdpContext;
use core::ptr::addr_of;
use lb_common::{
    flow::Opening,
    tcp::{self, OPT_END, OPT_NOP, OPT_TIMESTAMPS, TIMESTAMPS_LEN},
};
use network_types::tcp::TcpHdr;

use crate::{
    packet::ptr_at,
    parse::{OFF_MASK, Packet, offset_flags},
};

/// Options looked at before giving up on finding the timestamps: Linux puts them third
/// at most (MSS, SACK permitted, timestamps), other stacks after a few NOPs.
const MAX_OPTIONS: usize = 8;
/// Bounds option offsets (TCP header offset + up to 60) for the verifier without
/// changing any valid one.
const OPT_OFF_MASK: usize = 0xff;

/// A client segment's place in its sequence space.
#[derive(Clone, Copy)]
pub struct Sequence {
    /// Sequence number, host order.
    pub seq: u32,
    /// The sequence number after the segment: `seq` + payload, + 1 for SYN and for FIN.
    pub end: u32,
    /// TSval, host order, if the segment has the timestamps option.
    pub tsval: Option<u32>,
}

impl Sequence {
    /// What a new flow's port check needs of its opening segment.
    #[inline(always)]
    pub fn opening(&self) -> Opening {
        Opening {
            seq: self.seq,
            tsval: self.tsval,
        }
    }
}

/// Reads the segment's sequence number, end and TSval; `None` if the TCP header is not
/// in the packet (the parser checked it is, so never in practice).
#[inline(never)]
pub fn read(ctx: &XdpContext, pkt: &Packet) -> Option<Sequence> {
    // verifier: the mask bounds offsets read back from the stack; it never changes them.
    let l3 = pkt.l3 as usize & OFF_MASK;
    let l4 = pkt.l4 as usize & OFF_MASK;
    let th = ptr_at::<TcpHdr>(ctx, l4)?;
    // SAFETY: `ptr_at` checked the TCP header at `th` is inside the packet; its fields
    // are read unaligned.
    let (seq, doff) = unsafe {
        (
            u32::from_be_bytes(addr_of!((*th).seq).read_unaligned()),
            (offset_flags(th)[0] >> 4) as usize * 4,
        )
    };
    Some(Sequence {
        seq,
        end: end(pkt, seq, (l4 - l3) as u32, doff as u32),
        tsval: tsval(ctx, l4, doff),
    })
}

/// The segment's acknowledgment number, host order.
#[inline(never)]
pub fn ack(ctx: &XdpContext, pkt: &Packet) -> Option<u32> {
    let th = ptr_at::<TcpHdr>(ctx, pkt.l4 as usize & OFF_MASK)?;
    // SAFETY: `ptr_at` checked the TCP header at `th` is inside the packet; read
    // unaligned.
    Some(u32::from_be_bytes(unsafe {
        addr_of!((*th).ack_seq).read_unaligned()
    }))
}

/// The sequence number after a segment starting at `seq` whose IP and TCP headers are
/// `ip_hlen` and `doff` bytes long. The parser checked `ip_hlen + doff <= ip_len`, so
/// the payload length does not wrap.
#[inline(always)]
pub fn end(pkt: &Packet, seq: u32, ip_hlen: u32, doff: u32) -> u32 {
    let payload = pkt.ip_len.wrapping_sub(ip_hlen).wrapping_sub(doff);
    let mut end = seq.wrapping_add(payload);
    if pkt.tcp_flags & tcp::SYN != 0 {
        end = end.wrapping_add(1);
    }
    if pkt.tcp_flags & tcp::FIN != 0 {
        end = end.wrapping_add(1);
    }
    end
}

/// The TSval of the timestamps option among the options of the TCP header at `l4`
/// (`doff` bytes long), if present and well formed.
#[inline(always)]
fn tsval(ctx: &XdpContext, l4: usize, doff: usize) -> Option<u32> {
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
        let opt = ptr_at::<[u8; 2]>(ctx, (l4 + off) & OPT_OFF_MASK)?;
        // SAFETY: `ptr_at` checked the 2 bytes are inside the packet.
        let [kind, len] = unsafe { opt.read_unaligned() };
        if kind == OPT_END {
            return None;
        }
        if kind == OPT_NOP {
            off += 1;
            continue;
        }
        let len = len as usize;
        if kind == OPT_TIMESTAMPS && len == TIMESTAMPS_LEN as usize && off + len <= doff {
            let v = ptr_at::<[u8; 4]>(ctx, (l4 + off + 2) & OPT_OFF_MASK)?;
            // SAFETY: `ptr_at` checked the 4 bytes are inside the packet.
            return Some(u32::from_be_bytes(unsafe { v.read_unaligned() }));
        }
        if len < 2 {
            return None;
        }
        off += len;
    }
    None
}
