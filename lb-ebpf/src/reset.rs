//! TCP resets for connections no backend can take, and for a backend's answers to
//! connections the LB no longer keeps.
//!
//! When a new flow finds no usable backend, silently dropping its SYN leaves the client
//! retransmitting for a minute or more before it gives up; a RST makes it fail (or try
//! another address) at once, as it would against a closed port. A backend's SYN-ACK to
//! a forgotten half-open flow gets one too (`reverse`), so the backend drops the request.
//! The frame that arrived is rewritten in place into the RST and sent back with
//! `XDP_TX`: out of the same interface, with the same VLAN tag, to the MAC it came from,
//! so no route or neighbour lookup is needed and nothing is allocated.
//!
//! The RST follows RFC 9293 section 3.10.7.1 (what Linux sends for a closed port):
//! - a segment that is itself a RST is never answered (dropped);
//! - a segment with ACK gets `seq = its ack`, flags RST;
//! - any other gets `seq = 0`, `ack = its seq + payload length (+1 for SYN, +1 for FIN)`,
//!   flags RST|ACK.
//!
//! The RST has no TCP options and no payload, window 0, TTL/hop limit 64, and no IPv4
//! options (`segment` writes it over the received one).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    counters,
    tcp::{ACK, RST},
};

use crate::{
    events, options,
    parse::Packet,
    segment::{self, NO_WSCALE, Shape},
    sequence,
    verdict::Verdict,
};

/// Answers the packet's sender with a RST built in place; counted under `counter`
/// whether it is answered (`XDP_TX`) or dropped (it was a RST itself).
#[inline(never)]
pub fn answer(ctx: &XdpContext, pkt: &mut Packet, counter: u32) -> Verdict {
    if pkt.tcp_flags & RST != 0 {
        // Answering a RST with a RST could loop between two such hosts.
        return Verdict::drop(counter);
    }
    let Some(s) = shape(ctx, pkt) else {
        // verifier: the parser checked the TCP header; this path is never taken.
        events::unreachable(ctx);
        return Verdict::drop(counters::DROP_MALFORMED);
    };
    if !segment::write(ctx, pkt, &s) {
        return Verdict::drop(counter);
    }
    Verdict::tx(counter)
}

/// The RST's numbers and flags from the received segment (see the module doc).
#[inline(never)]
fn shape(ctx: &XdpContext, pkt: &Packet) -> Option<Shape> {
    let (_, ack, _) = options::numbers(ctx, pkt)?;
    let (rst_seq, rst_ack, flags) = if pkt.tcp_flags & ACK != 0 {
        (ack, 0, RST)
    } else {
        let seq = sequence::read(ctx, pkt)?;
        (0, seq.end, RST | ACK)
    };
    Some(Shape {
        seq: rst_seq,
        ack: rst_ack,
        tsval: 0,
        tsecr: 0,
        window: 0,
        mss: 0,
        flags,
        wscale: NO_WSCALE,
        sack_ok: 0,
        ts: 0,
        answer: 1,
        _pad: [0; 3],
    })
}
