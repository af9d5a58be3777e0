//! The hand-off of a packet whose next hop has no neighbour entry, from the XDP program to
//! its TC companion: XDP rewrites the packet, writes a [`Handoff`] over its two Ethernet
//! addresses and passes it; the TC ingress program on the same interface recognises the
//! host's [`Handoff::mark`] there and sends the packet out with `bpf_redirect_neigh`, so
//! the kernel resolves the neighbour (ARP/ND) and sends the packet once it has (XDP
//! itself can only drop or pass it).
//!
//! Why the Ethernet header: a kernel need not let an XDP program grow the frame's
//! metadata area (the 6.18.44-fc kernels this project is tested on refuse
//! `bpf_xdp_adjust_meta` to XDP programs at load), and the header is free: the neighbour
//! output writes a new one.
//! The TC program gives the kernel no next hop: it looks the route up from the packet's
//! addresses, bound to the interface the XDP program's FIB lookup chose.

/// Bytes of the frame a hand-off takes: both Ethernet addresses.
pub const LEN: usize = 12;

/// What the TC program needs to send a handed-off packet, in the frame's first
/// [`LEN`] bytes: the mark in the destination address and the first two bytes of the
/// source, the egress interface in the other four.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handoff {
    /// This host's mark ([`mark`]): the frame is lb's hand-off, not a frame that came
    /// in with these addresses.
    pub mark: u64,
    /// The egress interface the XDP program's FIB lookup chose.
    pub ifindex: u32,
}

/// Makes a host's mark from 8 random bytes. As the first six bytes of a destination
/// address it is a unicast, locally administered MAC: if no TC program takes the frame,
/// the kernel sees a frame for another host and drops it. The random rest (62 bits)
/// keeps a frame from another host from passing for a hand-off, and the mark never
/// leaves the host (the neighbour output replaces it). Never 0, which means "none yet".
pub const fn mark(random: [u8; 8]) -> u64 {
    let mut b = random;
    b[0] = (b[0] & !0x01) | 0x02;
    u64::from_le_bytes(b)
}

/// Whether `m` is a mark [`mark`] could have made (the daemon's check of a pinned one).
pub const fn is_mark(m: u64) -> bool {
    m.to_le_bytes()[0] & 0x03 == 0x02
}

impl Handoff {
    /// The frame's first [`LEN`] bytes for this hand-off.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..8].copy_from_slice(&self.mark.to_le_bytes());
        out[8..].copy_from_slice(&self.ifindex.to_ne_bytes());
        out
    }

    /// The hand-off at the start of `frame`, if it carries the host's mark `mark`.
    pub fn decode(frame: &[u8], mark: u64) -> Option<Handoff> {
        let b: &[u8; LEN] = frame.get(..LEN)?.try_into().ok()?;
        let m = u64::from_le_bytes(b[..8].try_into().ok()?);
        (is_mark(mark) && m == mark).then(|| Handoff {
            mark: m,
            ifindex: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_a_unicast_locally_administered_address_and_never_zero() {
        for random in [[0u8; 8], [0xff; 8], [1, 2, 3, 4, 5, 6, 7, 8]] {
            let m = mark(random);
            let first = m.to_le_bytes()[0];
            assert_eq!(first & 1, 0, "unicast: {random:?}");
            assert_eq!(first & 2, 2, "locally administered: {random:?}");
            assert!(is_mark(m) && m != 0);
            assert_eq!(
                m.to_le_bytes()[1..],
                random[1..],
                "the rest is the random bytes"
            );
        }
        assert!(!is_mark(0));
    }

    #[test]
    fn decodes_only_the_hosts_own_mark() {
        let m = mark([9, 8, 7, 6, 5, 4, 3, 2]);
        let h = Handoff {
            mark: m,
            ifindex: 7,
        };
        let mut frame = h.encode().to_vec();
        frame.extend_from_slice(&[0x08, 0x00, 0x45]);
        assert_eq!(Handoff::decode(&frame, m), Some(h));
        assert_eq!(Handoff::decode(&frame[..LEN - 1], m), None, "too short");
        assert_eq!(Handoff::decode(&frame, m ^ 0x100), None, "another mark");
        assert_eq!(Handoff::decode(&[0; 20], 0), None, "no mark set");
        frame[3] ^= 1;
        assert_eq!(Handoff::decode(&frame, m), None, "not this host's");
    }
}
