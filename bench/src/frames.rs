//! The generator's template frames: one TCP segment with its Ethernet and IPv4
//! headers, checksums right, from which the generator (`sender`) makes every flow's frame
//! by setting its source port and address.

use anyhow::{Context, Result, anyhow};
use lb_tests::Netns;
use lb_tests::packet::Packet;
use std::net::Ipv4Addr;

/// The frame: 14 Ethernet + 20 IPv4 + 20 TCP + 6 padding (a 64-byte frame on a wire,
/// with its FCS).
pub const FRAME_LEN: usize = 60;

/// TCP flags of a template.
pub use lb_common::tcp::{ACK, SYN};

/// A template frame: `src` → `dst`:`dport` from source port 1024 (the generator sets
/// the flow's), a bare TCP segment with `flags`, checksums right (the test kit's packet
/// builder), padded to [`FRAME_LEN`].
pub fn frame(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let mut p = Packet::tcp(src.into(), 1024, dst.into(), dport, flags);
    (p.eth_src, p.eth_dst) = (src_mac, dst_mac);
    p.seq = 1;
    p.ack = if flags & ACK != 0 { 1 } else { 0 };
    p.window = 65535;
    let mut f = p.build();
    f.resize(FRAME_LEN, 0);
    f
}

/// The MAC address of `iface` in `ns`.
pub fn mac(ns: &Netns, iface: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&format!("-j link show dev {iface}"))?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("parsing `ip -j link show dev {iface}`"))?;
    let text = v[0]["address"]
        .as_str()
        .ok_or_else(|| anyhow!("{iface} in {} has no MAC address", ns.name()))?;
    parse_mac(text).with_context(|| format!("the MAC address `{text}` of {iface}"))
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| anyhow!("not six bytes long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_tests::packet::decode;

    #[test]
    fn template_checksums_verify() {
        let template = |src: [u8; 4], dport, flags| {
            let macs = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
            frame(
                macs,
                src.into(),
                Ipv4Addr::new(198, 18, 100, 1),
                dport,
                flags,
            )
        };
        let f = template([198, 18, 0, 2], 9000, ACK);
        assert_eq!(f.len(), FRAME_LEN);
        // The kit's decoder verifies the IPv4 and TCP checksums.
        let p = decode(&f).expect("a valid TCP frame");
        assert_eq!((p.dport, p.flags), (9000, ACK));
        let syn = template([198, 18, 128, 0], 8080, SYN);
        let p = decode(&syn).expect("a valid TCP frame");
        assert_eq!((p.flags, p.ack), (SYN, 0), "a SYN acknowledges nothing");
    }

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("02:ab:00:10:ff:0e").unwrap(),
            [2, 0xab, 0, 0x10, 0xff, 0x0e]
        );
        assert!(parse_mac("02:ab:00:10:ff").is_err());
        assert!(parse_mac("zz:ab:00:10:ff:0e").is_err());
    }
}
