//! The encapsulations of direct server return, written by the LB (`lb_xdp`) and removed
//! on the backends (`lb decap`): one definition of the wire format for both sides.
//!
//! - `ipip`: an outer IPv4 header with protocol 4 around an IPv4 packet, or an outer
//!   IPv6 header with next header 41 around an IPv6 packet (RFC 2003, RFC 2473).
//! - `gue`: outer IP, UDP to the backends' GUE port, then a 4-byte GUE header (RFC
//!   draft-ietf-intarea-gue, variant 0, no optional fields) whose protocol field names
//!   the inner packet (4 or 41), then the inner packet.
//! - `l2`: no header at all: only the destination MAC becomes the backend's.
//!
//! The outer source is the LB's own address toward the backend (its source address in
//! the backend table). What spreads the flows over a backend's receive queues: the UDP
//! source port of `gue` and the flow label of IPv6 `ipip` carry bits of the flow hash,
//! which receive-side scaling hashes; IPv4 `ipip` has no such field (use `gue` when the
//! backends' NICs spread by outer header only).

/// Not encapsulated (every mode but DSR).
pub const ENCAP_NONE: u8 = 0;
/// IPv4 in IPv4 or IPv6 in IPv6.
pub const ENCAP_IPIP: u8 = 1;
/// Generic UDP encapsulation.
pub const ENCAP_GUE: u8 = 2;
/// Layer 2: the destination MAC only.
pub const ENCAP_L2: u8 = 3;

/// The default UDP port of GUE.
pub const DEFAULT_GUE_PORT: u16 = 6080;

/// IP protocol numbers of the inner packet: IPv4 in IP, IPv6 in IP.
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_UDP: u8 = 17;

/// Bytes of an outer IPv4 header (no options) and of an outer IPv6 header.
pub const OUTER_V4_LEN: usize = 20;
pub const OUTER_V6_LEN: usize = 40;
/// Bytes of the UDP header and of the GUE header that follow the outer IP header.
pub const UDP_LEN: usize = 8;
pub const GUE_LEN: usize = 4;

/// TTL / hop limit of the outer header.
pub const OUTER_TTL: u8 = 64;

/// The GUE header in front of an inner packet of IP protocol `inner` (4 or 41):
/// version 0, control bit 0, no optional fields, no flags.
pub const fn gue_header(inner: u8) -> [u8; GUE_LEN] {
    [0, inner, 0, 0]
}

/// Whether `h` is a GUE header this format writes, and the inner protocol it names.
pub fn gue_inner(h: [u8; GUE_LEN]) -> Option<u8> {
    // Version 0, data message (C = 0), no optional fields (Hlen = 0), no flags.
    if h[0] != 0 || h[2] != 0 || h[3] != 0 {
        return None;
    }
    match h[1] {
        IPPROTO_IPIP | IPPROTO_IPV6 => Some(h[1]),
        _ => None,
    }
}

/// Bytes the encapsulation `encap` adds in front of an inner packet of `family`
/// (`maps::FAMILY_V4` or `FAMILY_V6`); 0 for `l2` and none.
pub const fn overhead(encap: u8, v6: bool) -> usize {
    let ip = if v6 { OUTER_V6_LEN } else { OUTER_V4_LEN };
    match encap {
        ENCAP_IPIP => ip,
        ENCAP_GUE => ip + UDP_LEN + GUE_LEN,
        _ => 0,
    }
}

/// The UDP source port of a GUE packet for a flow of hash `hash`: in the dynamic range
/// (49152-65535), so it never looks like a service port, and different per flow so the
/// backend's receive-side scaling spreads flows. Host order.
pub const fn gue_source_port(hash: u32) -> u16 {
    0xc000 | ((hash ^ (hash >> 16)) as u16 & 0x3fff)
}

/// The IPv6 flow label of an outer header for a flow of hash `hash` (20 bits, never 0:
/// 0 means "no label" and receivers then fall back to the addresses only).
pub const fn flow_label(hash: u32) -> u32 {
    let l = (hash ^ (hash >> 20)) & 0x000f_ffff;
    if l == 0 { 1 } else { l }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gue_header_round_trips_and_rejects_others() {
        assert_eq!(gue_inner(gue_header(IPPROTO_IPIP)), Some(IPPROTO_IPIP));
        assert_eq!(gue_inner(gue_header(IPPROTO_IPV6)), Some(IPPROTO_IPV6));
        assert_eq!(gue_inner([0, 6, 0, 0]), None);
        assert_eq!(gue_inner([0x20, 4, 0, 0]), None, "optional fields");
        assert_eq!(gue_inner([0x80, 4, 0, 0]), None, "control message");
    }

    #[test]
    fn overheads() {
        assert_eq!(overhead(ENCAP_IPIP, false), 20);
        assert_eq!(overhead(ENCAP_IPIP, true), 40);
        assert_eq!(overhead(ENCAP_GUE, false), 32);
        assert_eq!(overhead(ENCAP_GUE, true), 52);
        assert_eq!(overhead(ENCAP_L2, true), 0);
    }

    #[test]
    fn gue_ports_and_labels_spread_and_stay_in_range() {
        let mut ports = std::collections::BTreeSet::new();
        for h in 0..1000u32 {
            let hash = h.wrapping_mul(2_654_435_761);
            let p = gue_source_port(hash);
            assert!(p >= 49152);
            ports.insert(p);
            let l = flow_label(hash);
            assert!(l != 0 && l < (1 << 20));
        }
        assert!(ports.len() > 900, "{} distinct ports", ports.len());
    }
}
