//! The PROXY protocol encoder: what `proxy-v2` services write to a backend right after
//! the connect, before any byte of the client, so the backend sees the client's real
//! address instead of the load balancer's.
//!
//! Follows <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>:
//! - v2 (binary): command PROXY with TCP over IPv4 (`0x11`) or IPv6 (`0x21`), or command
//!   LOCAL with `AF_UNSPEC` and no addresses (what health checks send). Optional TLVs:
//!   ALPN, AUTHORITY (the TLS SNI), CRC32C, NOOP and UNIQUE_ID.
//! - v1 (text), for receivers that only know v1: `PROXY TCP4 ...` / `PROXY TCP6 ...`.
//!
//! Address families: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack
//! socket reports for an IPv4 peer) is sent as the IPv4 address it stands for, so a
//! backend logs `a.b.c.d`. When the two sides still differ in family (an IPv6 client on
//! an IPv4 backend path or the reverse), the IPv4 side is written as an IPv4-mapped
//! IPv6 address and the header says IPv6 (`0x21`, `TCP6`): the spec requires both
//! addresses of one header to share a family, and this is what HAProxy sends. In v1,
//! IPv6 addresses are written as the spec asks ("sets of 4 hexadecimal digits",
//! RFC 5952 zero compression), never with the dotted-quad tail that Rust's `Display`
//! uses for mapped addresses, so strict v1 receivers accept them. `PROXY UNKNOWN` is
//! only offered separately ([`encode_v1_unknown`]): the spec advises against sending it
//! for connections that should be accepted.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crc32c::crc32c;

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a v2 header: signature, version/command, family, length.
pub const V2_FIXED_LEN: usize = 16;
/// The longest v2 header: the fixed part plus the largest 16-bit length.
pub const V2_MAX_LEN: usize = V2_FIXED_LEN + u16::MAX as usize;
/// The longest v1 line the spec allows, CRLF included (`PROXY UNKNOWN` with two full
/// IPv6 addresses and ports).
pub const V1_MAX_LEN: usize = 107;
/// The largest PP2_TYPE_UNIQUE_ID value the spec allows.
pub const UNIQUE_ID_MAX_LEN: usize = 128;

/// Version 2 in the high nibble, command LOCAL in the low one.
pub const V2_CMD_LOCAL: u8 = 0x20;
/// Version 2 in the high nibble, command PROXY in the low one.
pub const V2_CMD_PROXY: u8 = 0x21;
/// `AF_UNSPEC`, transport UNSPEC.
pub const FAM_UNSPEC: u8 = 0x00;
/// TCP over IPv4: 4-byte addresses, 12-byte address block.
pub const FAM_TCP4: u8 = 0x11;
/// TCP over IPv6: 16-byte addresses, 36-byte address block.
pub const FAM_TCP6: u8 = 0x21;

/// Registered TLV types (spec section 2.2).
pub mod tlv_type {
    /// Application-Layer Protocol Negotiation: the protocol (e.g. `h2`).
    pub const ALPN: u8 = 0x01;
    /// The host name the client asked for (the TLS SNI).
    pub const AUTHORITY: u8 = 0x02;
    /// CRC32C of the whole header, computed with this field zeroed.
    pub const CRC32C: u8 = 0x03;
    /// Ignored by receivers; padding.
    pub const NOOP: u8 = 0x04;
    /// An opaque connection id of up to 128 bytes.
    pub const UNIQUE_ID: u8 = 0x05;
    /// TLS details of the client connection (with sub-TLVs).
    pub const SSL: u8 = 0x20;
    /// The network namespace name.
    pub const NETNS: u8 = 0x30;
}

/// A TLV to append to a v2 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tlv<'a> {
    /// PP2_TYPE_ALPN: the application protocol, e.g. `b"h2"`.
    Alpn(&'a [u8]),
    /// PP2_TYPE_AUTHORITY: the host name, e.g. the TLS SNI.
    Authority(&'a str),
    /// PP2_TYPE_CRC32C: the encoder computes it over the finished header.
    Crc32c,
    /// PP2_TYPE_NOOP with this many zero bytes of value (3 + n bytes of padding).
    Noop(u16),
    /// PP2_TYPE_UNIQUE_ID: at most [`UNIQUE_ID_MAX_LEN`] bytes.
    UniqueId(&'a [u8]),
    /// Any other type, value passed through (e.g. TLVs received with `--accept-proxy`).
    Other {
        /// The TLV type byte; not [`tlv_type::CRC32C`] (use [`Tlv::Crc32c`]).
        kind: u8,
        /// The value.
        value: &'a [u8],
    },
}

impl Tlv<'_> {
    /// The type byte on the wire.
    pub fn kind(&self) -> u8 {
        match self {
            Tlv::Alpn(_) => tlv_type::ALPN,
            Tlv::Authority(_) => tlv_type::AUTHORITY,
            Tlv::Crc32c => tlv_type::CRC32C,
            Tlv::Noop(_) => tlv_type::NOOP,
            Tlv::UniqueId(_) => tlv_type::UNIQUE_ID,
            Tlv::Other { kind, .. } => *kind,
        }
    }

    /// The value's length on the wire.
    fn value_len(&self) -> usize {
        match self {
            Tlv::Alpn(v) | Tlv::UniqueId(v) | Tlv::Other { value: v, .. } => v.len(),
            Tlv::Authority(s) => s.len(),
            Tlv::Crc32c => 4,
            Tlv::Noop(n) => usize::from(*n),
        }
    }
}

/// Why a header could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Addresses and TLVs do not fit the 16-bit length field.
    #[error("PROXY v2 header body would be {len} bytes, over the 65535 its length field holds")]
    TooLong {
        /// The body length (addresses and TLVs) that was asked for.
        len: usize,
    },
    /// A UNIQUE_ID value over the spec's limit.
    #[error(
        "PP2_TYPE_UNIQUE_ID value is {len} bytes, over the {UNIQUE_ID_MAX_LEN} the spec allows"
    )]
    UniqueIdTooLong {
        /// The value's length.
        len: usize,
    },
    /// More than one CRC32C TLV: a receiver could not tell which one to check.
    #[error("more than one PP2_TYPE_CRC32C TLV")]
    DuplicateCrc32c,
    /// A CRC32C given as [`Tlv::Other`]: its value must be computed, use [`Tlv::Crc32c`].
    #[error("TLV type 0x03 (CRC32C) must be given as Tlv::Crc32c so it is computed")]
    RawCrc32c,
}

/// The address a PROXY header carries for `addr`: IPv4-mapped IPv6 addresses become the
/// IPv4 address they stand for; IPv6 flow info and scope id are dropped (the header has
/// no room for them).
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => addr,
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => SocketAddr::new(IpAddr::V6(*a.ip()), a.port()),
        },
    }
}

/// The two addresses of one header, in one family.
enum Pair {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

fn pair(src: SocketAddr, dst: SocketAddr) -> Pair {
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    match (canonical(src).ip(), canonical(dst).ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Pair::V4(s.octets(), d.octets()),
        (s, d) => Pair::V6(v6(s).octets(), v6(d).octets()),
    }
}

/// The PROXY v2 header for a TCP connection from `src` (the client) to `dst` (the VIP),
/// with `tlvs` appended in order. See the module docs for mixed address families.
pub fn encode_v2(
    src: SocketAddr,
    dst: SocketAddr,
    tlvs: &[Tlv<'_>],
) -> Result<Vec<u8>, EncodeError> {
    let mut crc_seen = false;
    for tlv in tlvs {
        match tlv {
            Tlv::Crc32c if crc_seen => return Err(EncodeError::DuplicateCrc32c),
            Tlv::Crc32c => crc_seen = true,
            Tlv::UniqueId(v) if v.len() > UNIQUE_ID_MAX_LEN => {
                return Err(EncodeError::UniqueIdTooLong { len: v.len() });
            }
            Tlv::Other {
                kind: tlv_type::CRC32C,
                ..
            } => return Err(EncodeError::RawCrc32c),
            _ => {}
        }
    }
    let addrs = pair(src, dst);
    let addr_len = match addrs {
        Pair::V4(..) => 12,
        Pair::V6(..) => 36,
    };
    // Saturating: a caller cannot overflow usize with slices, but stay obviously safe.
    let body_len = tlvs.iter().fold(addr_len, |acc: usize, t| {
        acc.saturating_add(3).saturating_add(t.value_len())
    });
    let Ok(body_len16) = u16::try_from(body_len) else {
        return Err(EncodeError::TooLong { len: body_len });
    };

    let mut h = Vec::with_capacity(V2_FIXED_LEN + body_len);
    h.extend_from_slice(&V2_SIGNATURE);
    h.push(V2_CMD_PROXY);
    match addrs {
        Pair::V4(s, d) => {
            h.push(FAM_TCP4);
            h.extend_from_slice(&body_len16.to_be_bytes());
            h.extend_from_slice(&s);
            h.extend_from_slice(&d);
        }
        Pair::V6(s, d) => {
            h.push(FAM_TCP6);
            h.extend_from_slice(&body_len16.to_be_bytes());
            h.extend_from_slice(&s);
            h.extend_from_slice(&d);
        }
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());

    let mut crc_at = None;
    for tlv in tlvs {
        h.push(tlv.kind());
        // Fits: the whole body fits in 16 bits.
        h.extend_from_slice(&(tlv.value_len() as u16).to_be_bytes());
        match tlv {
            Tlv::Alpn(v) | Tlv::UniqueId(v) | Tlv::Other { value: v, .. } => h.extend_from_slice(v),
            Tlv::Authority(s) => h.extend_from_slice(s.as_bytes()),
            Tlv::Crc32c => {
                crc_at = Some(h.len());
                h.extend_from_slice(&[0; 4]);
            }
            Tlv::Noop(n) => h.resize(h.len() + usize::from(*n), 0),
        }
    }
    debug_assert_eq!(h.len(), V2_FIXED_LEN + body_len);
    if let Some(at) = crc_at {
        // The spec: checksum the whole header with the checksum field zeroed, then store.
        let crc = crc32c(&h);
        h[at..at + 4].copy_from_slice(&crc.to_be_bytes());
    }
    Ok(h)
}

/// The PROXY v2 header with command LOCAL, `AF_UNSPEC` and no addresses: the connection
/// is the proxy's own (a health check), and the receiver uses the real endpoints.
pub fn encode_v2_local() -> Vec<u8> {
    let mut h = Vec::with_capacity(V2_FIXED_LEN);
    h.extend_from_slice(&V2_SIGNATURE);
    h.push(V2_CMD_LOCAL);
    h.push(FAM_UNSPEC);
    h.extend_from_slice(&0u16.to_be_bytes());
    h
}

/// The PROXY v1 line for a TCP connection from `src` to `dst`: `PROXY TCP4 a b p q\r\n`,
/// or `TCP6` when either side is IPv6 (the IPv4 side then IPv4-mapped). At most 104
/// bytes.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> String {
    let mut line = String::with_capacity(104);
    match pair(src, dst) {
        Pair::V4(s, d) => {
            let (s, d) = (std::net::Ipv4Addr::from(s), std::net::Ipv4Addr::from(d));
            let _ = write!(line, "PROXY TCP4 {s} {d}");
        }
        Pair::V6(s, d) => {
            line.push_str("PROXY TCP6 ");
            push_ipv6_hex(&mut line, &Ipv6Addr::from(s));
            line.push(' ');
            push_ipv6_hex(&mut line, &Ipv6Addr::from(d));
        }
    }
    let _ = write!(line, " {} {}\r\n", src.port(), dst.port());
    line
}

/// `PROXY UNKNOWN\r\n`: the v1 line for when the addresses cannot be filled in. The
/// receiver then uses the connection's own endpoints; some receivers reject it.
pub fn encode_v1_unknown() -> &'static str {
    "PROXY UNKNOWN\r\n"
}

/// Writes `ip` as hexadecimal groups, lowercase, the longest run (two or more, the first
/// on a tie) of zero groups as `::` (RFC 5952), never with a dotted-quad tail.
fn push_ipv6_hex(out: &mut String, ip: &Ipv6Addr) {
    let g = ip.segments();
    // The longest run of zero groups, if at least two long.
    let (mut best_at, mut best_len) = (0, 0);
    let mut i = 0;
    while i < 8 {
        if g[i] == 0 {
            let start = i;
            while i < 8 && g[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                (best_at, best_len) = (start, i - start);
            }
        } else {
            i += 1;
        }
    }
    let write_groups = |out: &mut String, groups: &[u16]| {
        for (n, grp) in groups.iter().enumerate() {
            if n > 0 {
                out.push(':');
            }
            let _ = write!(out, "{grp:x}");
        }
    };
    if best_len >= 2 {
        write_groups(out, &g[..best_at]);
        out.push_str("::");
        write_groups(out, &g[best_at + best_len..]);
    } else {
        write_groups(out, &g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::codec::parse::{Command, Parsed, Version, parse};
    use std::net::{Ipv4Addr, SocketAddrV6};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn complete(buf: &[u8]) -> crate::proxy::codec::parse::Header<'_> {
        match parse(buf) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    #[test]
    fn signature_is_the_specs() {
        assert_eq!(
            V2_SIGNATURE,
            [
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A
            ]
        );
    }

    #[test]
    fn v2_local_is_the_16_byte_header() {
        let h = encode_v2_local();
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(h, want);
        let p = complete(&h);
        assert_eq!(p.command, Command::Local);
        assert_eq!((p.src, p.dst, p.header_len), (None, None, 16));
    }

    #[test]
    fn v2_tcp4_byte_for_byte() {
        // The spec's v1 example connection (192.168.0.1:56324 -> 192.168.0.11:443) in
        // the binary layout of section 2.2, written out by hand.
        let h = encode_v2(sa("192.168.0.1:56324"), sa("192.168.0.11:443"), &[]).unwrap();
        let want: Vec<u8> = [
            &V2_SIGNATURE[..],
            &[0x21, 0x11, 0x00, 0x0C], // v2 PROXY, TCP/IPv4, 12 bytes follow
            &[192, 168, 0, 1],         // source address
            &[192, 168, 0, 11],        // destination address
            &[0xDC, 0x04, 0x01, 0xBB], // 56324, 443
        ]
        .concat();
        assert_eq!(h, want);
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn v2_tcp6_byte_for_byte() {
        let h = encode_v2(sa("[2001:db8::1]:56324"), sa("[2001:db8::11]:443"), &[]).unwrap();
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]); // TCP/IPv6, 36 bytes
        want.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
        ]);
        want.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11,
        ]);
        want.extend_from_slice(&[0xDC, 0x04, 0x01, 0xBB]);
        assert_eq!(h, want);
        assert_eq!(h.len(), 52);
    }

    #[test]
    fn v2_mixed_families_use_ipv4_mapped_ipv6() {
        let h = encode_v2(sa("192.0.2.7:1000"), sa("[2001:db8::1]:443"), &[]).unwrap();
        assert_eq!(&h[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(
            &h[16..32],
            &Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped().octets()
        );
        let h2 = encode_v2(sa("[2001:db8::1]:1000"), sa("192.0.2.7:443"), &[]).unwrap();
        assert_eq!(h2[13], FAM_TCP6);
        assert_eq!(
            &h2[32..48],
            &Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped().octets()
        );
    }

    #[test]
    fn v2_ipv4_mapped_on_both_sides_is_sent_as_ipv4() {
        // What a dual-stack listening socket reports for an IPv4 client.
        let h = encode_v2(
            sa("[::ffff:192.0.2.7]:1000"),
            sa("[::ffff:198.18.100.1]:443"),
            &[],
        )
        .unwrap();
        assert_eq!(
            h,
            encode_v2(sa("192.0.2.7:1000"), sa("198.18.100.1:443"), &[]).unwrap()
        );
    }

    #[test]
    fn v2_drops_flowinfo_and_scope() {
        let src = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 5, 7, 3));
        let h = encode_v2(src, sa("[fe80::2]:80"), &[]).unwrap();
        let p = complete(&h);
        assert_eq!(p.src, Some(sa("[fe80::1]:5")));
    }

    #[test]
    fn v2_tlvs_byte_for_byte() {
        let h = encode_v2(
            sa("10.0.0.1:1"),
            sa("10.0.0.2:2"),
            &[
                Tlv::Alpn(b"h2"),
                Tlv::Authority("registry.example"),
                Tlv::UniqueId(&[0xAA, 0xBB]),
                Tlv::Noop(2),
                Tlv::Other {
                    kind: 0xE0,
                    value: b"x",
                },
            ],
        )
        .unwrap();
        let mut want = V2_SIGNATURE.to_vec();
        let body = 12 + (3 + 2) + (3 + 16) + (3 + 2) + (3 + 2) + (3 + 1);
        want.extend_from_slice(&[0x21, 0x11, 0, body as u8]);
        want.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2]);
        want.extend_from_slice(&[0x01, 0, 2, b'h', b'2']);
        want.extend_from_slice(&[0x02, 0, 16]);
        want.extend_from_slice(b"registry.example");
        want.extend_from_slice(&[0x05, 0, 2, 0xAA, 0xBB]);
        want.extend_from_slice(&[0x04, 0, 2, 0, 0]);
        want.extend_from_slice(&[0xE0, 0, 1, b'x']);
        assert_eq!(h, want);
    }

    #[test]
    fn the_crate_is_crc32c_castagnoli() {
        // The "check" value of the CRC-32C catalogue entry and an RFC 3720 B.4 vector:
        // the checksum TLV needs this polynomial, not the CRC-32 of zip and Ethernet.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0xff; 32]), 0x62A8_AB43);
        // The parser checksums a header in pieces (the field zeroed without a copy).
        let whole = crc32c(b"123456789");
        assert_eq!(crc32c::crc32c_append(crc32c(b"1234"), b"56789"), whole);
    }

    #[test]
    fn v2_crc32c_is_over_the_header_with_the_field_zeroed() {
        let h = encode_v2(
            sa("192.168.0.1:56324"),
            sa("192.168.0.11:443"),
            &[Tlv::Crc32c, Tlv::Authority("a.example")],
        )
        .unwrap();
        // Fixed part 16, addresses 12, then the CRC TLV header at 28..31, value 31..35.
        assert_eq!(&h[28..31], &[0x03, 0x00, 0x04]);
        let stored = u32::from_be_bytes(h[31..35].try_into().unwrap());
        let mut zeroed = h.clone();
        zeroed[31..35].fill(0);
        assert_eq!(stored, crc32c(&zeroed));
        // Pinned (computed independently, bit by bit, outside this code), so a change of
        // byte order or coverage shows.
        assert_eq!(stored, 0x7438_C8D8);
        assert_eq!(
            zeroed,
            [
                &V2_SIGNATURE[..],
                &[
                    0x21, 0x11, 0x00, 0x1F, 192, 168, 0, 1, 192, 168, 0, 11, 0xDC, 0x04, 0x01, 0xBB
                ],
                &[0x03, 0x00, 0x04, 0, 0, 0, 0, 0x02, 0x00, 0x09],
                b"a.example"
            ]
            .concat()
        );
        // Our parser validates it: a flipped bit anywhere is caught, except where it
        // makes a header whose block is skipped unread as the spec says (command LOCAL,
        // transport UNSPEC: no addresses to spoof) or turns the CRC TLV into another
        // type (the checksum is optional, so it cannot protect its own type byte).
        complete(&h);
        for i in 0..h.len() {
            for bit in 0..8 {
                let mut bad = h.clone();
                bad[i] ^= 1 << bit;
                match parse(&bad) {
                    Ok(Parsed::Complete(p)) if i == 12 || i == 13 => {
                        assert_eq!((p.src, p.dst, p.tlvs().count()), (None, None, 0));
                    }
                    Ok(Parsed::Complete(p)) => {
                        assert_eq!(i, 28, "flip {i}.{bit} accepted");
                        assert_eq!(p.crc32c(), None);
                    }
                    Ok(Parsed::Incomplete { .. }) | Err(_) => {}
                }
            }
        }
    }

    #[test]
    fn v2_crc32c_last_and_alone() {
        for tlvs in [&[Tlv::Crc32c][..], &[Tlv::Noop(5), Tlv::Crc32c][..]] {
            let h = encode_v2(sa("[::1]:1"), sa("[::2]:2"), tlvs).unwrap();
            let p = complete(&h);
            assert!(p.crc32c().is_some());
        }
    }

    #[test]
    fn v2_errors() {
        let (s, d) = (sa("10.0.0.1:1"), sa("10.0.0.2:2"));
        assert_eq!(
            encode_v2(s, d, &[Tlv::Crc32c, Tlv::Crc32c]),
            Err(EncodeError::DuplicateCrc32c)
        );
        assert_eq!(
            encode_v2(
                s,
                d,
                &[Tlv::Other {
                    kind: 3,
                    value: &[0; 4]
                }]
            ),
            Err(EncodeError::RawCrc32c)
        );
        assert_eq!(
            encode_v2(s, d, &[Tlv::UniqueId(&[0; 129])]),
            Err(EncodeError::UniqueIdTooLong { len: 129 })
        );
        assert!(encode_v2(s, d, &[Tlv::UniqueId(&[0; 128])]).is_ok());
        // The largest body that fits: 12 bytes of addresses, one NOOP of 65520.
        let max = encode_v2(s, d, &[Tlv::Noop(65535 - 12 - 3)]).unwrap();
        assert_eq!(max.len(), V2_MAX_LEN);
        assert_eq!(complete(&max).header_len, V2_MAX_LEN);
        assert_eq!(
            encode_v2(s, d, &[Tlv::Noop(65535 - 12 - 2)]),
            Err(EncodeError::TooLong { len: 65536 })
        );
        let big = vec![b'a'; 40_000];
        assert_eq!(
            encode_v2(s, d, &[Tlv::Alpn(&big), Tlv::Alpn(&big)]),
            Err(EncodeError::TooLong {
                len: 12 + 2 * 40_003
            })
        );
        // IPv6: 36 bytes of addresses.
        assert_eq!(
            encode_v2(sa("[::1]:1"), d, &[Tlv::Noop(65535 - 36 - 2)]),
            Err(EncodeError::TooLong { len: 65536 })
        );
    }

    #[test]
    fn error_messages_say_what() {
        assert_eq!(
            EncodeError::UniqueIdTooLong { len: 200 }.to_string(),
            "PP2_TYPE_UNIQUE_ID value is 200 bytes, over the 128 the spec allows"
        );
    }

    #[test]
    fn v1_spec_example() {
        assert_eq!(
            encode_v1(sa("192.168.0.1:56324"), sa("192.168.0.11:443")),
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
    }

    #[test]
    fn v1_longest_lines_match_the_spec_lengths() {
        let v4 = encode_v1(sa("255.255.255.255:65535"), sa("255.255.255.255:65535"));
        assert_eq!(
            v4,
            "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
        );
        assert_eq!(v4.len(), 56);
        let f = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let v6 = encode_v1(sa(f), sa(f));
        assert_eq!(v6.len(), 104);
        assert_eq!(encode_v1_unknown(), "PROXY UNKNOWN\r\n");
        assert_eq!(encode_v1_unknown().len(), 15);
    }

    #[test]
    fn v1_tcp6_and_mixed() {
        assert_eq!(
            encode_v1(sa("[2001:db8::1]:56324"), sa("[2001:db8::11]:443")),
            "PROXY TCP6 2001:db8::1 2001:db8::11 56324 443\r\n"
        );
        // Mixed: TCP6, the IPv4 side IPv4-mapped, written in hex groups.
        assert_eq!(
            encode_v1(sa("192.168.0.1:56324"), sa("[2001:db8::11]:443")),
            "PROXY TCP6 ::ffff:c0a8:1 2001:db8::11 56324 443\r\n"
        );
        assert_eq!(
            encode_v1(sa("[::ffff:192.168.0.1]:1"), sa("[::ffff:10.0.0.1]:2")),
            "PROXY TCP4 192.168.0.1 10.0.0.1 1 2\r\n"
        );
    }

    #[test]
    fn ipv6_hex_formatting() {
        let cases = [
            ("::", "::"),
            ("::1", "::1"),
            ("1::", "1::"),
            ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
            ("1:0:0:2:0:0:3:4", "1::2:0:0:3:4"),
            ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),
            ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
            ("::ffff:1.2.3.4", "::ffff:102:304"),
            ("::1.2.3.4", "::102:304"),
            ("fe80::abcd:ef01", "fe80::abcd:ef01"),
        ];
        for (input, want) in cases {
            let mut s = String::new();
            push_ipv6_hex(&mut s, &input.parse().unwrap());
            assert_eq!(s, want, "{input}");
            // And every such text reads back as the same address.
            assert_eq!(
                s.parse::<Ipv6Addr>().unwrap(),
                input.parse::<Ipv6Addr>().unwrap()
            );
        }
    }

    #[test]
    fn round_trips_through_the_parser() {
        let addrs = [
            "0.0.0.0:0",
            "192.168.0.1:56324",
            "255.255.255.255:65535",
            "[::]:0",
            "[::1]:1",
            "[2001:db8::1]:443",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            "[::ffff:10.1.2.3]:8080",
            "[fe80::1:0:0:1]:9",
        ];
        let tlv_sets: [&[Tlv<'_>]; 4] = [
            &[],
            &[Tlv::Crc32c],
            &[
                Tlv::Alpn(b"http/1.1"),
                Tlv::Authority("registry.example"),
                Tlv::Crc32c,
            ],
            &[
                Tlv::UniqueId(&[7; 128]),
                Tlv::Noop(0),
                Tlv::Other {
                    kind: 0x20,
                    value: &[1, 0, 0, 0, 0],
                },
            ],
        ];
        for s in addrs {
            for d in addrs {
                let (src, dst) = (sa(s), sa(d));
                for tlvs in tlv_sets {
                    let h = encode_v2(src, dst, tlvs).unwrap();
                    let p = complete(&h);
                    assert_eq!(p.version, Version::V2);
                    assert_eq!(p.command, Command::Proxy);
                    assert_eq!(p.header_len, h.len());
                    assert_eq!(p.src.map(canonical), Some(canonical(src)), "{s} {d}");
                    assert_eq!(p.dst.map(canonical), Some(canonical(dst)), "{s} {d}");
                    let got: Vec<_> = p.tlvs().map(|t| (t.kind, t.value.to_vec())).collect();
                    assert_eq!(got.len(), tlvs.len());
                    for (t, (kind, value)) in tlvs.iter().zip(&got) {
                        assert_eq!(t.kind(), *kind);
                        match t {
                            Tlv::Alpn(v) | Tlv::UniqueId(v) | Tlv::Other { value: v, .. } => {
                                assert_eq!(v, value)
                            }
                            Tlv::Authority(a) => assert_eq!(a.as_bytes(), value),
                            Tlv::Noop(n) => assert_eq!(value, &vec![0; usize::from(*n)]),
                            Tlv::Crc32c => assert_eq!(value.len(), 4),
                        }
                    }
                    // Trailing client bytes are not part of the header.
                    let mut more = h.clone();
                    more.extend_from_slice(b"GET / HTTP/1.1\r\n");
                    assert_eq!(complete(&more).header_len, h.len());
                }
                let line = encode_v1(src, dst);
                let p = complete(line.as_bytes());
                assert_eq!(p.version, Version::V1);
                assert_eq!(p.header_len, line.len());
                assert_eq!(p.src.map(canonical), Some(canonical(src)), "{line}");
                assert_eq!(p.dst.map(canonical), Some(canonical(dst)), "{line}");
            }
        }
    }
}
