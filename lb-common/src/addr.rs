//! Conversions between `std::net` addresses and the map representation (network-order
//! bytes viewed as native `u32` words, IPv4 in word 0).

use crate::maps::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, VipKey};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Map words and family of an address.
pub fn ip_to_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut w = [0u32; 4];
            for (i, word) in w.iter_mut().enumerate() {
                *word = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            }
            (w, FAMILY_V6)
        }
    }
}

/// The address that map words of `family` stand for; `None` for an unknown family.
pub fn words_to_ip(words: [u32; 4], family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))),
        FAMILY_V6 => {
            let mut o = [0u8; 16];
            for (i, word) in words.iter().enumerate() {
                o[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

impl VipKey {
    /// The `SERVICES` (and `PROXY_VIPS`) key of a TCP service at `vip`.
    pub fn from_socket_addr(vip: SocketAddr) -> VipKey {
        let (addr, family) = ip_to_words(vip.ip());
        VipKey {
            addr,
            port: vip.port().to_be(),
            proto: PROTO_TCP,
            family,
        }
    }
}

impl FlowKey {
    /// The flow key the XDP program builds for a TCP packet from `client` to `vip`.
    pub fn tcp(client: SocketAddr, vip: SocketAddr) -> FlowKey {
        let (src, family) = ip_to_words(client.ip());
        let (dst, _) = ip_to_words(vip.ip());
        FlowKey {
            src,
            dst,
            sport: client.port().to_be(),
            dport: vip.port().to_be(),
            proto: PROTO_TCP,
            family,
            _pad: [0; 2],
        }
    }
}

/// The address's bytes (4 or 16), for [`crate::hash::backend_key`].
pub fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_keep_network_byte_order_in_memory() {
        for ip in ["198.18.0.1", "fd00::1:2", "fd00:1:2:3:4:5:6:7"] {
            let ip: IpAddr = ip.parse().unwrap();
            let (w, f) = ip_to_words(ip);
            assert_eq!(words_to_ip(w, f), Some(ip));
        }
        let (w, _) = ip_to_words("198.18.0.1".parse().unwrap());
        assert_eq!(w[0].to_ne_bytes(), [198, 18, 0, 1]);
        assert_eq!(words_to_ip(w, 9), None);
    }

    #[test]
    fn vip_key_of_a_socket_address_is_tcp_with_the_port_in_network_order() {
        let k = VipKey::from_socket_addr("198.18.0.1:80".parse().unwrap());
        assert_eq!(k.addr[0].to_ne_bytes(), [198, 18, 0, 1]);
        assert_eq!(k.addr[1..], [0, 0, 0]);
        assert_eq!(k.port.to_ne_bytes(), [0, 80]);
        assert_eq!((k.proto, k.family), (PROTO_TCP, FAMILY_V4));
        let k = VipKey::from_socket_addr("[fd00::1]:443".parse().unwrap());
        assert_eq!(
            words_to_ip(k.addr, k.family),
            Some("fd00::1".parse().unwrap())
        );
        assert_eq!(u16::from_be(k.port), 443);
    }
}
