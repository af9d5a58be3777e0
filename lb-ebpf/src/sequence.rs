//! The sequence-space fields of a client segment that the flow table keeps about a
//! closing flow and checks a new flow's SYN against (`lb_common::flow::port_free_for`):
//! where the segment starts and ends, and its TSval. Read only for those segments (a
//! SYN of a new flow, a segment of a closing one), never on the common path.

use aya_ebpf::programs::XdpContext;
use core::ptr::addr_of;
use lb_common::{flow::Opening, tcp};
use network_types::tcp::TcpHdr;

use crate::{
    maps::SEQUENCE_SCRATCH,
    options,
    packet::ptr_at,
    parse::{OFF_MASK, Packet, offset_flags},
};

/// A client segment's place in its sequence space.
#[derive(Clone, Copy)]
pub struct Sequence {
    /// Where the segment starts, and its TSval: what a new flow's port check needs of
    /// the segment that opens it.
    pub start: Opening,
    /// The sequence number after the segment: its start + payload, + 1 for SYN and for
    /// FIN.
    pub end: u32,
}

/// Reads the segment's sequence number, end and TSval into this CPU's scratch slot
/// and returns it; `None` if the TCP header is not in the packet (the parser checked
/// it is, so never in practice). The slot is overwritten by the next read on this CPU,
/// so use it within the packet's run.
///
/// Why a scratch slot: the value is 16 bytes, returned through the caller's stack.
/// As `Option<Sequence>` its BTF has a niche union member at a non-zero offset, which
/// the kernel refuses, so the object loaded without BTF; as a plain struct the
/// returned pointer is to the caller's stack, which the verifier refuses; as an
/// out-parameter it takes 16 bytes the longest call chain does not have.
#[inline(never)]
pub fn read(ctx: &XdpContext, pkt: &Packet) -> Option<&'static Sequence> {
    // verifier: the mask bounds offsets read back from the stack; it never changes them.
    let l3 = pkt.l3 as usize & OFF_MASK;
    let l4 = pkt.l4 as usize & OFF_MASK;
    let th = ptr_at::<TcpHdr>(ctx, l4)?;
    let out = SEQUENCE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: `ptr_at` checked the TCP header at `th` is inside the packet; its fields
    // are read unaligned.
    let (seq, doff) = unsafe {
        (
            u32::from_be_bytes(addr_of!((*th).seq).read_unaligned()),
            (offset_flags(th)[0] >> 4) as usize * 4,
        )
    };
    let ts = options::timestamps(ctx, pkt);
    // SAFETY: `out` is this CPU's slot of a per-CPU array, valid for the program run;
    // nothing else runs on this CPU while the program does.
    unsafe {
        *out = Sequence {
            start: Opening::new(seq, ts.map(|t| t.tsval)),
            end: end(pkt, seq, (l4 - l3) as u32, doff as u32),
        };
        Some(&*out)
    }
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
