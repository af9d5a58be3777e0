//! The one packet builder and decoder of the test kit: Ethernet (+802.1Q), IPv4 (+options)
//! or IPv6, and TCP, with checksums computed from scratch over whole headers, so they
//! check the XDP program's incremental updates instead of repeating them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, bail, ensure};

/// TCP flag bits, as in the header's flags byte (lb-common's, which the program uses).
pub use lb_common::tcp as flags;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
/// Offset of the checksum in a TCP header and in an IPv4 header.
const TCP_CSUM: usize = 16;
const IPV4_CSUM: usize = 10;

/// A TCP segment in an Ethernet frame: every field the builder writes and the decoder
/// reads back, so `decode(&p.build()) == p`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    /// 802.1Q tag control information (VLAN id and priority), if tagged.
    pub vlan: Option<u16>,
    /// Source and destination: both IPv4 (an IPv4 header) or both IPv6.
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 TOS byte or IPv6 traffic class (DSCP and ECN).
    pub tos: u8,
    /// TTL or hop limit.
    pub ttl: u8,
    /// IPv4 identification.
    pub ip_id: u16,
    /// IPv4 Don't Fragment flag.
    pub df: bool,
    /// IPv4 "more fragments" flag and fragment offset (in 8-byte units).
    pub more_fragments: bool,
    pub frag_offset: u16,
    /// IPv6 flow label (20 bits).
    pub flow_label: u32,
    /// IPv4 options, a multiple of 4 bytes.
    pub ip_options: Vec<u8>,
    /// TCP ports.
    pub sport: u16,
    pub dport: u16,
    /// TCP options, a multiple of 4 bytes.
    pub tcp_options: Vec<u8>,
    /// Sequence and acknowledgment numbers.
    pub seq: u32,
    pub ack: u32,
    /// The data after the TCP header.
    pub payload: Vec<u8>,
    /// TCP flags byte ([`flags`]) and receive window (unscaled).
    pub flags: u8,
    pub window: u16,
}

impl Packet {
    /// A bare TCP segment between two endpoints: no VLAN, no options, no payload,
    /// TTL 64, DF, window 64240; the rest zero.
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Packet {
        Packet {
            eth_dst: [0; 6],
            eth_src: [0; 6],
            vlan: None,
            src,
            dst,
            tos: 0,
            ttl: 64,
            ip_id: 0,
            df: true,
            more_fragments: false,
            frag_offset: 0,
            flow_label: 0,
            ip_options: Vec::new(),
            sport,
            dport,
            seq: 0,
            ack: 0,
            flags,
            window: 64240,
            tcp_options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// The frame's bytes, with correct IPv4 header and TCP checksums.
    pub fn build(&self) -> Vec<u8> {
        assert_eq!(self.tcp_options.len() % 4, 0, "TCP options pad to 4 bytes");
        assert_eq!(self.ip_options.len() % 4, 0, "IP options pad to 4 bytes");
        let mut tcp = Vec::with_capacity(20 + self.tcp_options.len() + self.payload.len());
        tcp.extend(self.sport.to_be_bytes());
        tcp.extend(self.dport.to_be_bytes());
        tcp.extend(self.seq.to_be_bytes());
        tcp.extend(self.ack.to_be_bytes());
        tcp.push((((20 + self.tcp_options.len()) / 4) << 4) as u8);
        tcp.push(self.flags);
        tcp.extend(self.window.to_be_bytes());
        tcp.extend([0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend(&self.tcp_options);
        tcp.extend(&self.payload);
        let c = tcp_checksum(self.src, self.dst, &tcp);
        tcp[TCP_CSUM..TCP_CSUM + 2].copy_from_slice(&c.to_be_bytes());

        let mut f = Vec::new();
        f.extend(self.eth_dst);
        f.extend(self.eth_src);
        if let Some(tci) = self.vlan {
            f.extend(ETH_P_8021Q.to_be_bytes());
            f.extend(tci.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                f.extend(ETH_P_IPV4.to_be_bytes());
                let hlen = 20 + self.ip_options.len();
                let frag = u16::from(self.df) << 14
                    | u16::from(self.more_fragments) << 13
                    | self.frag_offset;
                let mut ip = vec![0x40 | (hlen / 4) as u8, self.tos];
                ip.extend(((hlen + tcp.len()) as u16).to_be_bytes());
                ip.extend(self.ip_id.to_be_bytes());
                ip.extend(frag.to_be_bytes());
                ip.extend([self.ttl, IPPROTO_TCP, 0, 0]);
                ip.extend(src.octets());
                ip.extend(dst.octets());
                ip.extend(&self.ip_options);
                let c = ipv4_checksum(&ip);
                ip[IPV4_CSUM..IPV4_CSUM + 2].copy_from_slice(&c.to_be_bytes());
                f.extend(ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                assert!(self.ip_options.is_empty(), "no IPv6 extension headers");
                f.extend(ETH_P_IPV6.to_be_bytes());
                let word = 6 << 28 | u32::from(self.tos) << 20 | (self.flow_label & 0xf_ffff);
                f.extend(word.to_be_bytes());
                f.extend((tcp.len() as u16).to_be_bytes());
                f.extend([IPPROTO_TCP, self.ttl]);
                f.extend(src.octets());
                f.extend(dst.octets());
            }
            _ => panic!("mixed address families: {} → {}", self.src, self.dst),
        }
        f.extend(tcp);
        f
    }
}

/// Offsets of the headers in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub l3: usize,
    pub l4: usize,
}

/// Where the IP and TCP headers start in `frame` (one optional 802.1Q tag, IPv4 `ihl`).
pub fn offsets(frame: &[u8]) -> Result<Offsets> {
    ensure!(frame.len() >= 14, "shorter than an Ethernet header");
    let (l3, ethertype) = match be16(frame, 12) {
        ETH_P_8021Q => {
            ensure!(frame.len() >= 18, "VLAN tag cut off");
            (18, be16(frame, 16))
        }
        t => (14, t),
    };
    let l4 = match ethertype {
        ETH_P_IPV4 => {
            ensure!(frame.len() > l3, "IPv4 header cut off");
            l3 + (frame[l3] & 0x0f) as usize * 4
        }
        ETH_P_IPV6 => l3 + 40,
        t => bail!("not IP: ethertype {t:#06x}"),
    };
    Ok(Offsets { l3, l4 })
}

/// Reads a TCP frame back into a [`Packet`], after checking its lengths, its IPv4 header
/// checksum and its TCP checksum from scratch. Bytes after the IP packet (Ethernet
/// padding) are ignored.
pub fn decode(frame: &[u8]) -> Result<Packet> {
    let Offsets { l3, l4 } = offsets(frame)?;
    let mut p = Packet::tcp(
        Ipv4Addr::UNSPECIFIED.into(),
        0,
        Ipv4Addr::UNSPECIFIED.into(),
        0,
        0,
    );
    p.eth_dst = frame[0..6].try_into().expect("6 bytes");
    p.eth_src = frame[6..12].try_into().expect("6 bytes");
    p.vlan = (l3 == 18).then(|| be16(frame, 14));
    let end = match be16(frame, l3 - 2) {
        ETH_P_IPV4 => {
            ensure!(frame.len() >= l4 && l4 >= l3 + 20, "IPv4 header length");
            let h = &frame[l3..l4];
            ensure!(h[0] >> 4 == 4, "IPv4 version {}", h[0] >> 4);
            ensure!(h[9] == IPPROTO_TCP, "IP protocol {}", h[9]);
            let stored = be16(h, IPV4_CSUM);
            ensure!(
                stored == ipv4_checksum(h),
                "IPv4 header checksum {stored:#06x}, want {:#06x}",
                ipv4_checksum(h)
            );
            let frag = be16(h, 6);
            p.tos = h[1];
            p.ip_id = be16(h, 4);
            p.df = frag & 0x4000 != 0;
            p.more_fragments = frag & 0x2000 != 0;
            p.frag_offset = frag & 0x1fff;
            p.ttl = h[8];
            p.src = Ipv4Addr::from(<[u8; 4]>::try_from(&h[12..16])?).into();
            p.dst = Ipv4Addr::from(<[u8; 4]>::try_from(&h[16..20])?).into();
            p.ip_options = h[20..].to_vec();
            l3 + be16(h, 2) as usize
        }
        _ => {
            ensure!(frame.len() >= l4, "IPv6 header cut off");
            let h = &frame[l3..l4];
            let word = u32::from_be_bytes(h[0..4].try_into()?);
            ensure!(word >> 28 == 6, "IPv6 version {}", word >> 28);
            ensure!(h[6] == IPPROTO_TCP, "IPv6 next header {}", h[6]);
            p.tos = (word >> 20) as u8;
            p.flow_label = word & 0xf_ffff;
            p.df = false;
            p.ttl = h[7];
            p.src = Ipv6Addr::from(<[u8; 16]>::try_from(&h[8..24])?).into();
            p.dst = Ipv6Addr::from(<[u8; 16]>::try_from(&h[24..40])?).into();
            l4 + be16(h, 4) as usize
        }
    };
    ensure!(end <= frame.len(), "IP length {end} beyond the frame");
    ensure!(end >= l4 + 20, "no room for a TCP header");
    let seg = &frame[l4..end];
    let doff = (seg[12] >> 4) as usize * 4;
    ensure!(
        (20..=seg.len()).contains(&doff),
        "TCP data offset {doff} in a {}-byte segment",
        seg.len()
    );
    let stored = be16(seg, TCP_CSUM);
    let want = tcp_checksum(p.src, p.dst, seg);
    ensure!(
        stored == want,
        "TCP checksum {stored:#06x}, want {want:#06x}"
    );
    p.sport = be16(seg, 0);
    p.dport = be16(seg, 2);
    p.seq = u32::from_be_bytes(seg[4..8].try_into()?);
    p.ack = u32::from_be_bytes(seg[8..12].try_into()?);
    p.flags = seg[13];
    p.window = be16(seg, 14);
    p.tcp_options = seg[20..doff].to_vec();
    p.payload = seg[doff..].to_vec();
    Ok(p)
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

/// One's-complement sum of big-endian 16-bit words (an odd tail padded with zero),
/// not yet folded: added to `acc`, so partial sums can be kept and completed later (the
/// bench's generator precomputes the parts of a frame that do not change).
pub fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// Folds the carries and complements: the Internet checksum (RFC 1071).
pub fn finish16(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The Internet checksum of `bytes` as they are (an ICMP message's, or anything whose
/// checksum covers only itself): 0 when `bytes` holds a correct checksum.
pub fn inet_checksum(bytes: &[u8]) -> u16 {
    finish16(sum16(bytes, 0))
}

/// The checksum of an IPv4 header, its checksum field taken as zero.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut h = header.to_vec();
    h[IPV4_CSUM..IPV4_CSUM + 2].fill(0);
    finish16(sum16(&h, 0))
}

/// The TCP checksum of `segment` (header and data, its checksum field taken as zero)
/// with the IPv4 or IPv6 pseudo-header of `src` → `dst`.
pub fn tcp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend(s.octets());
            pseudo.extend(d.octets());
            pseudo.extend([0, IPPROTO_TCP]);
            pseudo.extend((segment.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend(s.octets());
            pseudo.extend(d.octets());
            pseudo.extend((segment.len() as u32).to_be_bytes());
            pseudo.extend([0, 0, 0, IPPROTO_TCP]);
        }
        _ => panic!("mixed address families: {src} → {dst}"),
    }
    let mut seg = segment.to_vec();
    seg[TCP_CSUM..TCP_CSUM + 2].fill(0);
    finish16(sum16(&seg, sum16(&pseudo, 0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flags::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn internet_checksum_matches_rfc1071_and_a_known_ipv4_header() {
        // RFC 1071 section 3's example sums to 0xddf2 before complementing.
        assert_eq!(finish16(sum16(&hex("0001 f203 f4f5 f6f7"), 0)), !0xddf2);
        // A widely quoted header (192.168.0.1 → 192.168.0.199, UDP) with checksum 0xb861.
        let h = hex("4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7");
        assert_eq!(ipv4_checksum(&h), 0xb861);
    }

    /// Frames whose checksums were computed by a separate implementation (Python's
    /// one's-complement sum over the header, or the pseudo-header and segment), not by
    /// this module: 198.18.1.2:12345 → 198.18.2.1:80 and fd00:1::2 → fd00:2::1, SYN.
    #[test]
    fn checksums_match_known_frames() {
        let v4 = hex("020000000000 020000000001 0800
             4500 0028 1234 4000 4006 9974 c612 0102 c612 0201
             3039 0050 10000000 00000000 5002 faf0 e540 0000");
        let v6 = hex("020000000000 020000000001 86dd
             60012345 0014 06 40
             fd000001000000000000000000000002 fd000002000000000000000000000001
             3039 0050 10000000 00000000 5002 faf0 7a61 0000");
        assert_eq!(ipv4_checksum(&v4[14..34]), 0x9974);
        for (frame, l4) in [(&v4, 34), (&v6, 54)] {
            let p = decode(frame).expect("known frame decodes with its checksums");
            assert_eq!(
                tcp_checksum(p.src, p.dst, &frame[l4..]),
                be16(frame, l4 + 16)
            );
            assert_eq!(&p.build(), frame, "{} rebuilt byte for byte", p.src);
        }
    }

    fn syn4() -> Packet {
        Packet {
            eth_dst: [2, 0, 0, 0, 0, 0xa1],
            eth_src: [2, 0, 0, 0, 0, 0xc2],
            ip_id: 0x1234,
            tos: 0xb9,
            seq: 0x1000_0000,
            tcp_options: vec![2, 4, 0x05, 0xb4, 1, 1, 4, 2],
            payload: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            ..Packet::tcp(
                IpAddr::from([198, 18, 1, 2]),
                12345,
                IpAddr::from([198, 18, 2, 1]),
                80,
                SYN,
            )
        }
    }

    fn syn6() -> Packet {
        Packet {
            src: "fd00:1::2".parse().unwrap(),
            dst: "fd00:2::1".parse().unwrap(),
            df: false,
            ip_id: 0,
            flow_label: 0x12345,
            ..syn4()
        }
    }

    #[test]
    fn build_then_decode_gives_the_packet_back() {
        let cases = [
            ("IPv4 SYN", syn4()),
            ("IPv6 SYN", syn6()),
            (
                "tagged IPv4 ACK with IP options",
                Packet {
                    vlan: Some(42),
                    ip_options: vec![0x94, 0x04, 0, 0],
                    flags: ACK | PSH,
                    ack: 0x2000_0000,
                    ..syn4()
                },
            ),
            (
                "tagged IPv6 RST",
                Packet {
                    vlan: Some(7),
                    flags: RST,
                    payload: vec![],
                    tcp_options: vec![],
                    ..syn6()
                },
            ),
            (
                "IPv4 first fragment",
                Packet {
                    more_fragments: true,
                    df: false,
                    ..syn4()
                },
            ),
            (
                "odd payload length",
                Packet {
                    payload: b"abc".to_vec(),
                    flags: FIN | ACK,
                    ..syn4()
                },
            ),
        ];
        for (what, p) in cases {
            let frame = p.build();
            assert_eq!(decode(&frame).unwrap(), p, "{what}");
            // Ethernet padding after the IP packet is not part of it.
            let mut padded = frame.clone();
            padded.extend([0; 6]);
            assert_eq!(decode(&padded).unwrap(), p, "{what}: padded");
        }
    }

    #[test]
    fn vlan_tag_and_ip_options_move_the_headers() {
        let plain = syn4();
        let tagged = Packet {
            vlan: Some(42),
            ..plain.clone()
        };
        let options = Packet {
            ip_options: vec![0x94, 0x04, 0, 0],
            ..plain.clone()
        };
        let both = Packet {
            vlan: Some(42),
            ..options.clone()
        };
        for (p, l3, l4) in [
            (&plain, 14, 34),
            (&tagged, 18, 38),
            (&options, 14, 38),
            (&both, 18, 42),
            (&syn6(), 14, 54),
        ] {
            let f = p.build();
            assert_eq!(offsets(&f).unwrap(), Offsets { l3, l4 });
            assert_eq!(be16(&f, l4), 12345, "source port at l4");
            assert_eq!(f.len(), l4 + 20 + 8 + p.payload.len());
        }
        assert_eq!(be16(&tagged.build(), 14), 42, "the tag's TCI");
        assert_eq!(&options.build()[34..38], &[0x94, 0x04, 0, 0]);
        // The traffic class spans the first two bytes of the IPv6 header.
        assert_eq!(&syn6().build()[14..18], &[0x6b, 0x91, 0x23, 0x45]);
    }

    #[test]
    fn a_corrupted_byte_fails_a_checksum() {
        for (what, p) in [("IPv4", syn4()), ("IPv6", syn6())] {
            let good = p.build();
            let l4 = offsets(&good).unwrap().l4;
            let mut payload = good.clone();
            *payload.last_mut().unwrap() ^= 1;
            let e = decode(&payload).unwrap_err().to_string();
            assert!(e.contains("TCP checksum"), "{what}: {e}");
            let mut header = good.clone();
            header[l4 - if what == "IPv4" { 12 } else { 32 }] ^= 1;
            let e = decode(&header).unwrap_err().to_string();
            let want = if what == "IPv4" {
                "IPv4 header checksum"
            } else {
                "TCP checksum" // the IPv6 source address is in the pseudo-header
            };
            assert!(e.contains(want), "{what}: {e}");
        }
    }

    #[test]
    fn frames_that_are_not_tcp_are_refused() {
        let good = syn4().build();
        let mut arp = good[..12].to_vec();
        arp.extend([0x08, 0x06]);
        arp.extend([0; 28]);
        assert!(decode(&arp).is_err());
        assert!(decode(&good[..14]).is_err());
        assert!(decode(&good[..40]).is_err());
    }
}
