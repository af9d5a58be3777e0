//! Outer headers around a frame, as direct server return sends it to a backend: built
//! here from the format's definition (`lb_common::encap`), independently of the XDP
//! program, so tests compare the program's output with them byte for byte.

use std::net::IpAddr;

use lb_common::encap::{
    ENCAP_GUE, ENCAP_IPIP, GUE_LEN, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP, OUTER_TTL, UDP_LEN,
    gue_header,
};

use crate::packet::ipv4_checksum;

/// The outer headers of one encapsulated packet.
#[derive(Clone, Copy, Debug)]
pub struct Outer {
    /// `lb_common::encap::ENCAP_IPIP` or `ENCAP_GUE`.
    pub kind: u8,
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    /// Outer addresses (the inner packet's family).
    pub src: IpAddr,
    pub dst: IpAddr,
    /// GUE: UDP source and destination ports.
    pub udp_ports: (u16, u16),
    /// IPv6: the outer flow label.
    pub flow_label: u32,
}

impl Outer {
    /// `frame` (an untagged Ethernet frame) with the outer headers between its Ethernet
    /// header and its IP packet: Ethernet addresses replaced, the IP packet unchanged;
    /// the outer TOS / traffic class is the inner one's.
    pub fn wrap(&self, frame: &[u8]) -> Vec<u8> {
        let inner = &frame[14..];
        let gue = self.kind == ENCAP_GUE;
        assert!(gue || self.kind == ENCAP_IPIP, "ipip or gue");
        let extra = if gue { UDP_LEN + GUE_LEN } else { 0 };
        let mut f = Vec::new();
        f.extend(self.eth_dst);
        f.extend(self.eth_src);
        f.extend(&frame[12..14]);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let proto = if gue { IPPROTO_UDP } else { IPPROTO_IPIP };
                let mut ip = vec![0x45, inner[1]];
                ip.extend(((20 + extra + inner.len()) as u16).to_be_bytes());
                ip.extend([0, 0, 0x40, 0, OUTER_TTL, proto, 0, 0]);
                ip.extend(s.octets());
                ip.extend(d.octets());
                let c = ipv4_checksum(&ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend(ip);
                if gue {
                    f.extend(self.udp_gue(inner, IPPROTO_IPIP));
                }
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let next = if gue { IPPROTO_UDP } else { IPPROTO_IPV6 };
                let class = (u32::from_be_bytes(inner[..4].try_into().unwrap()) >> 20) & 0xff;
                let word = 6 << 28 | class << 20 | (self.flow_label & 0xf_ffff);
                f.extend(word.to_be_bytes());
                f.extend(((extra + inner.len()) as u16).to_be_bytes());
                f.extend([next, OUTER_TTL]);
                f.extend(s.octets());
                f.extend(d.octets());
                if gue {
                    f.extend(self.udp_gue(inner, IPPROTO_IPV6));
                }
            }
            _ => panic!("mixed address families"),
        }
        f.extend(inner);
        f
    }

    /// The UDP header (checksum 0) and GUE header in front of `inner`.
    fn udp_gue(&self, inner: &[u8], proto: u8) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend(self.udp_ports.0.to_be_bytes());
        h.extend(self.udp_ports.1.to_be_bytes());
        h.extend(((UDP_LEN + GUE_LEN + inner.len()) as u16).to_be_bytes());
        h.extend([0, 0]);
        h.extend(gue_header(proto));
        h
    }
}
