//! The generator's template frames: one TCP segment with its Ethernet and IPv4
//! headers, checksums right, that `bench_gen` copies into every frame it sends before it
//! sets the flow's source port and address.

use crate::xdp::TEMPLATE_WORDS;
use anyhow::{Context, Result, anyhow};
use lb_tests::Netns;
use std::net::Ipv4Addr;

/// The frame: 14 Ethernet + 20 IPv4 + 20 TCP + 6 padding (a 64-byte frame on a wire,
/// with its FCS).
pub const FRAME_LEN: usize = 60;

/// TCP flags of a template.
pub const ACK: u8 = 0x10;
pub const SYN: u8 = 0x02;

/// A template frame: `src` → `dst`:`dport` from source port 1024 (the generator sets
/// the flow's), a bare TCP segment with `flags`, checksums right.
pub fn frame(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let mut f = vec![0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = 14;
    f[ip] = 0x45;
    f[ip + 2..ip + 4].copy_from_slice(&40u16.to_be_bytes());
    f[ip + 6] = 0x40; // DF
    f[ip + 8] = 64; // TTL
    f[ip + 9] = 6; // TCP
    f[ip + 12..ip + 16].copy_from_slice(&src.octets());
    f[ip + 16..ip + 20].copy_from_slice(&dst.octets());
    let c = !fold(sum(&f[ip..ip + 20]));
    f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    let tcp = ip + 20;
    f[tcp..tcp + 2].copy_from_slice(&1024u16.to_be_bytes());
    f[tcp + 2..tcp + 4].copy_from_slice(&dport.to_be_bytes());
    f[tcp + 4..tcp + 8].copy_from_slice(&1u32.to_be_bytes()); // seq
    if flags & ACK != 0 {
        f[tcp + 8..tcp + 12].copy_from_slice(&1u32.to_be_bytes());
    }
    f[tcp + 12] = 5 << 4;
    f[tcp + 13] = flags;
    f[tcp + 14..tcp + 16].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&f[tcp..tcp + 20]);
    let c = !fold(sum(&pseudo));
    f[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// The first [`TEMPLATE_WORDS`] words of `frame`, as the program copies them.
pub fn words(frame: &[u8]) -> [u64; TEMPLATE_WORDS] {
    let mut w = [0u64; TEMPLATE_WORDS];
    for (i, chunk) in frame.chunks(8).take(TEMPLATE_WORDS).enumerate() {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        w[i] = u64::from_ne_bytes(b);
    }
    w
}

/// One's-complement sum of big-endian 16-bit words (`data` has an even length).
fn sum(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
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

    /// Whether the TCP checksum of a frame verifies (over the pseudo-header).
    fn tcp_checksum_ok(f: &[u8]) -> bool {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&f[34..54]);
        fold(sum(&pseudo)) == 0xffff
    }

    #[test]
    fn template_checksums_verify() {
        let f = frame(
            ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 100, 1),
            9000,
            ACK,
        );
        assert_eq!(f.len(), FRAME_LEN);
        assert_eq!(fold(sum(&f[14..34])), 0xffff, "IPv4 header checksum");
        assert!(tcp_checksum_ok(&f), "TCP checksum");
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 9000);
        assert_eq!(f[47], ACK);
        let syn = frame(
            ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
            Ipv4Addr::new(198, 18, 128, 0),
            Ipv4Addr::new(198, 18, 100, 1),
            8080,
            SYN,
        );
        assert_eq!(syn[47], SYN);
        assert_eq!(&syn[42..46], &[0, 0, 0, 0], "a SYN acknowledges nothing");
        assert!(tcp_checksum_ok(&syn), "the SYN's TCP checksum");
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
