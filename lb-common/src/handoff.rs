//! The hand-off of a packet whose next hop has no neighbour entry, from the XDP program to
//! its TC companion: XDP rewrites the packet, writes a [`Handoff`] into the packet's
//! metadata area and passes it; the TC ingress program finds it there first thing and
//! sends the packet out with `bpf_redirect_neigh`, so the kernel resolves the neighbour
//! (ARP/ND) and sends the packet once it has (XDP itself can only drop or pass it).

use core::mem::size_of;

/// [`Handoff::magic`]: the metadata is lb's (`"lbnh"`), not another XDP program's.
pub const MAGIC: u32 = 0x6c62_6e68;
/// [`Handoff::family`] of an IPv4 next hop (`AF_INET`, as `bpf_redir_neigh.nh_family`).
pub const FAMILY_INET: u32 = 2;
/// [`Handoff::family`] of an IPv6 next hop (`AF_INET6`).
pub const FAMILY_INET6: u32 = 10;

/// What the TC program needs to send a handed-off packet: the FIB lookup's answer.
/// Lives in the metadata area right before the Ethernet header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handoff {
    /// [`MAGIC`], host byte order.
    pub magic: u32,
    /// The egress interface the FIB lookup chose, host byte order.
    pub ifindex: u32,
    /// [`FAMILY_INET`] or [`FAMILY_INET6`]: the next hop's family, which may differ from
    /// the packet's (an IPv4 route via an IPv6 gateway), host byte order.
    pub family: u32,
    /// The next hop (the gateway, or the destination itself on a connected route),
    /// network byte order; IPv4 in word 0.
    pub addr: [u32; 4],
}

/// Bytes the metadata area grows by: a multiple of 4, at most 32 (the kernel's limits).
pub const LEN: usize = size_of::<Handoff>();
// 28: a multiple of 4 and at most 32, as `bpf_xdp_adjust_meta` requires.
const _: () = assert!(LEN == 28);

impl Handoff {
    /// Reads a hand-off from the start of `bytes` (a metadata area, as BPF_PROG_TEST_RUN
    /// returns it before the frame), if it is lb's.
    pub fn decode(bytes: &[u8]) -> Option<Handoff> {
        let word = |i: usize| -> Option<[u8; 4]> { bytes.get(i * 4..i * 4 + 4)?.try_into().ok() };
        let h = Handoff {
            magic: u32::from_ne_bytes(word(0)?),
            ifindex: u32::from_ne_bytes(word(1)?),
            family: u32::from_ne_bytes(word(2)?),
            addr: [
                u32::from_ne_bytes(word(3)?),
                u32::from_ne_bytes(word(4)?),
                u32::from_ne_bytes(word(5)?),
                u32::from_ne_bytes(word(6)?),
            ],
        };
        (h.magic == MAGIC).then_some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_lbs_own_metadata() {
        let mut bytes = [0u8; LEN];
        bytes[..4].copy_from_slice(&MAGIC.to_ne_bytes());
        bytes[4..8].copy_from_slice(&7u32.to_ne_bytes());
        bytes[8..12].copy_from_slice(&FAMILY_INET.to_ne_bytes());
        bytes[12..16].copy_from_slice(&[198, 18, 0, 1]);
        let h = Handoff::decode(&bytes).unwrap();
        assert_eq!((h.ifindex, h.family), (7, FAMILY_INET));
        assert_eq!(h.addr[0].to_ne_bytes(), [198, 18, 0, 1]);
        assert!(Handoff::decode(&bytes[..LEN - 1]).is_none(), "too short");
        bytes[0] ^= 1;
        assert!(Handoff::decode(&bytes).is_none(), "not ours");
    }
}
