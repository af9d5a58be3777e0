//! The parser's part of the model: what the program makes of a frame's bytes, as
//! `lb-ebpf`'s `parse` reads them (one optional 802.1Q/802.1ad tag, IPv4 with options,
//! IPv6 without extension headers, the TCP header and its timestamps option).

use super::Segment;
use crate::maps::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP};

/// What the parser makes of a frame (Ethernet, one optional 802.1Q/802.1ad tag, IPv4
/// with options or IPv6 without extension headers, TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not TCP over IP, or cut off before the ports: passed untouched.
    Skip,
    Tcp(Segment),
    /// The ports are known but a length is inconsistent.
    Malformed(FlowKey),
    /// An IPv4 fragment with the TCP ports, and one after it.
    FirstFragment(FlowKey),
    LaterFragment,
    /// An ICMP error (outside the model's scope).
    IcmpError,
}

/// Parses `frame` as the program does.
pub fn parse(frame: &[u8]) -> Parsed {
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let Some(mut proto) = be16(12) else {
        return Parsed::Skip;
    };
    let mut l3 = 14;
    if proto == 0x8100 || proto == 0x88a8 {
        let Some(inner) = be16(16) else {
            return Parsed::Skip;
        };
        proto = inner;
        l3 = 18;
    }
    match proto {
        0x0800 => parse_v4(frame, l3),
        0x86dd => parse_v6(frame, l3),
        _ => Parsed::Skip,
    }
}

fn parse_v4(f: &[u8], l3: usize) -> Parsed {
    let Some(ip) = f.get(l3..l3 + 20) else {
        return Parsed::Skip;
    };
    if ip[0] >> 4 != 4 {
        return Parsed::Skip;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] == PROTO_ICMP && ihl == 20 {
        return match f.get(l3 + 20) {
            Some(3 | 11) => Parsed::IcmpError,
            _ => Parsed::Skip,
        };
    }
    if ip[9] != PROTO_TCP {
        return Parsed::Skip;
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x1fff != 0 {
        return Parsed::LaterFragment;
    }
    if ihl < 20 {
        return Parsed::Skip;
    }
    let word = |a: &[u8]| [u32::from_ne_bytes([a[0], a[1], a[2], a[3]]), 0, 0, 0];
    let l4 = l3 + ihl;
    let Some(key) = ports_key(f, l4, word(&ip[12..16]), word(&ip[16..20]), FAMILY_V4) else {
        return Parsed::Skip;
    };
    if frag & 0x2000 != 0 {
        return Parsed::FirstFragment(key);
    }
    let tot_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if tot_len < ihl + 20 || l3 + tot_len > f.len() {
        return Parsed::Malformed(key);
    }
    tcp_segment(f, key, l4, tot_len - ihl, ip[8])
}

fn parse_v6(f: &[u8], l3: usize) -> Parsed {
    let Some(ip) = f.get(l3..l3 + 40) else {
        return Parsed::Skip;
    };
    if ip[0] >> 4 != 6 {
        return Parsed::Skip;
    }
    if ip[6] == PROTO_ICMPV6 {
        return match f.get(l3 + 40) {
            Some(1..=3) => Parsed::IcmpError,
            _ => Parsed::Skip,
        };
    }
    if ip[6] != PROTO_TCP {
        return Parsed::Skip;
    }
    let words = |a: &[u8]| {
        let mut w = [0u32; 4];
        for (i, c) in a.chunks(4).enumerate() {
            w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        }
        w
    };
    let l4 = l3 + 40;
    let Some(key) = ports_key(f, l4, words(&ip[8..24]), words(&ip[24..40]), FAMILY_V6) else {
        return Parsed::Skip;
    };
    let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if l4 + payload > f.len() {
        return Parsed::Malformed(key);
    }
    tcp_segment(f, key, l4, payload, ip[7])
}

/// The flow key once the ports at `l4` are in the frame.
fn ports_key(f: &[u8], l4: usize, src: [u32; 4], dst: [u32; 4], family: u8) -> Option<FlowKey> {
    let p = f.get(l4..l4 + 4)?;
    Some(FlowKey {
        src,
        dst,
        sport: u16::from_ne_bytes([p[0], p[1]]),
        dport: u16::from_ne_bytes([p[2], p[3]]),
        proto: PROTO_TCP,
        family,
        _pad: [0; 2],
    })
}

/// The TCP header at `l4` of a segment of `len` bytes (header and data).
fn tcp_segment(f: &[u8], key: FlowKey, l4: usize, len: usize, ttl: u8) -> Parsed {
    let Some(th) = f.get(l4..l4 + 20) else {
        return Parsed::Malformed(key);
    };
    let doff = usize::from(th[12] >> 4) * 4;
    if doff < 20 || doff > len {
        return Parsed::Malformed(key);
    }
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Parsed::Tcp(Segment {
        key,
        flags: th[13],
        seq: be32(&th[4..8]),
        ack: be32(&th[8..12]),
        payload_len: (len - doff) as u32,
        tsval: f.get(l4 + 20..l4 + doff).and_then(timestamp),
        ttl,
    })
}

/// The TSval of a timestamps option among TCP `options`.
fn timestamp(options: &[u8]) -> Option<u32> {
    let mut i = 0;
    while let Some(&kind) = options.get(i) {
        match kind {
            0 => return None,
            1 => i += 1,
            _ => {
                let len = usize::from(*options.get(i + 1)?);
                if len < 2 {
                    return None;
                }
                if kind == 8 && len == 10 {
                    let b = options.get(i + 2..i + 6)?;
                    return Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                }
                i += len;
            }
        }
    }
    None
}
