//! The `--accept-proxy` parser: reads a PROXY protocol v1 or v2 header that another
//! load balancer in front of this one put at the start of a client connection.
//!
//! The bytes come from the network, so the parser is written for hostile input:
//! - it never panics and never allocates (TLVs are validated up front, then handed out
//!   as slices of the input by an iterator);
//! - it never asks for more than the spec's bounds ([`V1_MAX_LEN`], [`V2_MAX_LEN`]), so
//!   a caller that reads until [`Parsed::Complete`] holds at most 64 KiB per connection;
//! - it rejects as early as the bytes allow (a wrong signature after one byte, a wrong
//!   version at byte 13), so garbage is reset before the caller waits for more;
//! - it is monotonic: a prefix of the input is either [`Parsed::Incomplete`] or fails
//!   with the same error as the whole input, so feeding it more bytes never turns an
//!   error into success or changes the reason;
//! - every rejection is a [`ParseError`] variant with a stable short
//!   [`reason`](ParseError::reason) for counters and logs.
//!
//! Accepted, per the spec: v2 with command LOCAL (whose address block and TLVs are
//! skipped unread: the receiver uses the connection's own endpoints) or PROXY; for
//! PROXY, TCP over IPv4/IPv6 yields addresses, and the other valid families (UDP, UNIX,
//! UNSPEC) fall back to "no addresses", as the spec allows. v1 `TCP4`, `TCP6` and
//! `UNKNOWN` (whose remainder is ignored). A CRC32C TLV, when present, is verified.
//! Addresses are reported as sent: an IPv4-mapped IPv6 address stays IPv6 (see
//! [`canonical`](super::header::canonical)).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::header::{
    FAM_TCP4, FAM_TCP6, FAM_UNSPEC, UNIQUE_ID_MAX_LEN, V1_MAX_LEN, V2_FIXED_LEN, V2_MAX_LEN,
    V2_SIGNATURE, tlv_type,
};

/// The start of every v1 header.
const V1_PREFIX: &[u8] = b"PROXY";

/// The outcome of looking at the bytes received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Not enough bytes yet: read until the buffer holds at least `need` bytes (a lower
    /// bound; never more than [`V2_MAX_LEN`]) and call again with all of them.
    Incomplete {
        /// The buffer length at which parsing can make progress.
        need: usize,
    },
    /// A whole, valid header: the client's bytes start at `header_len`.
    Complete(Header<'a>),
}

/// Which format the header was in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The text format.
    V1,
    /// The binary format.
    V2,
}

/// What the sender says the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// v2 LOCAL: the sender's own connection (a health check); use the real endpoints.
    Local,
    /// Relayed on behalf of a client (every v1 header, `UNKNOWN` included).
    Proxy,
}

/// A parsed header. `src`/`dst` are `None` when the header carries no usable TCP
/// addresses (v2 LOCAL, UNSPEC, UDP or UNIX; v1 UNKNOWN): the receiver then uses the
/// connection's own endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// v1 or v2.
    pub version: Version,
    /// The header's length in bytes; the client's data follows.
    pub header_len: usize,
    /// LOCAL or PROXY.
    pub command: Command,
    /// The v2 family/transport byte (`0x11` TCP4, `0x21` TCP6, ...); for v1 the
    /// equivalent (`0x11`, `0x21`, or `0x00` for UNKNOWN).
    pub family: u8,
    /// The original client.
    pub src: Option<SocketAddr>,
    /// The address the client connected to.
    pub dst: Option<SocketAddr>,
    /// The TLV area (already validated), empty for v1 and for LOCAL.
    tlv_bytes: &'a [u8],
}

/// One TLV of a parsed v2 header, borrowed from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawTlv<'a> {
    /// The type byte (see [`tlv_type`]).
    pub kind: u8,
    /// The value.
    pub value: &'a [u8],
}

/// The TLVs of a header, in wire order.
#[derive(Clone, Debug)]
pub struct Tlvs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = RawTlv<'a>;

    fn next(&mut self) -> Option<RawTlv<'a>> {
        // The area was validated by the parser; stop quietly if it were not.
        let [kind, hi, lo, rest @ ..] = self.rest else {
            return None;
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let value = rest.get(..len)?;
        self.rest = &rest[len..];
        Some(RawTlv { kind: *kind, value })
    }
}

impl<'a> Header<'a> {
    /// The TLVs, in wire order.
    pub fn tlvs(&self) -> Tlvs<'a> {
        Tlvs {
            rest: self.tlv_bytes,
        }
    }

    /// The value of the first TLV of type `kind`.
    pub fn tlv(&self, kind: u8) -> Option<&'a [u8]> {
        self.tlvs().find(|t| t.kind == kind).map(|t| t.value)
    }

    /// PP2_TYPE_AUTHORITY (the host name, e.g. the client's TLS SNI).
    pub fn authority(&self) -> Option<&'a [u8]> {
        self.tlv(tlv_type::AUTHORITY)
    }

    /// PP2_TYPE_ALPN.
    pub fn alpn(&self) -> Option<&'a [u8]> {
        self.tlv(tlv_type::ALPN)
    }

    /// PP2_TYPE_UNIQUE_ID (at most 128 bytes: longer ones are rejected).
    pub fn unique_id(&self) -> Option<&'a [u8]> {
        self.tlv(tlv_type::UNIQUE_ID)
    }

    /// The PP2_TYPE_CRC32C value, already verified, if the header had one.
    pub fn crc32c(&self) -> Option<u32> {
        self.tlv(tlv_type::CRC32C)
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(u32::from_be_bytes)
    }
}

/// Why a header was rejected. [`ParseError::reason`] names each for counters and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Neither the v2 signature nor `PROXY`: the peer does not speak the PROXY protocol.
    #[error("not a PROXY protocol header")]
    BadSignature,
    /// The v2 signature with a version other than 2.
    #[error("PROXY v2 signature with version {0}")]
    BadVersion(u8),
    /// v2 command neither LOCAL (0) nor PROXY (1).
    #[error("PROXY v2 command {0} is neither LOCAL nor PROXY")]
    BadCommand(u8),
    /// v2 address family above AF_UNIX.
    #[error("PROXY v2 address family {0} is not one of UNSPEC, INET, INET6, UNIX")]
    BadFamily(u8),
    /// v2 transport above DGRAM.
    #[error("PROXY v2 transport {0} is not one of UNSPEC, STREAM, DGRAM")]
    BadTransport(u8),
    /// The v2 length is shorter than the family's address block.
    #[error("PROXY v2 length {len} is shorter than the {need}-byte address block")]
    TruncatedAddresses {
        /// The length field.
        len: usize,
        /// What the family needs.
        need: usize,
    },
    /// A TLV runs past the end of the header (or a stray 1-2 bytes are left).
    #[error("PROXY v2 TLV at offset {offset} runs past the end of the header")]
    BadTlvLength {
        /// Where the TLV starts, from the start of the header.
        offset: usize,
    },
    /// A CRC32C TLV whose value is not 4 bytes.
    #[error("PROXY v2 CRC32C TLV is {len} bytes, not 4")]
    BadCrc32cLength {
        /// Its length.
        len: usize,
    },
    /// Two CRC32C TLVs.
    #[error("PROXY v2 header has more than one CRC32C TLV")]
    DuplicateCrc32c,
    /// The CRC32C TLV does not match the header.
    #[error("PROXY v2 CRC32C mismatch: header says {sent:#010x}, content is {computed:#010x}")]
    BadCrc32c {
        /// The value in the TLV.
        sent: u32,
        /// The checksum of the header as received.
        computed: u32,
    },
    /// A UNIQUE_ID TLV over 128 bytes.
    #[error("PROXY v2 UNIQUE_ID TLV is {len} bytes, over {UNIQUE_ID_MAX_LEN}")]
    UniqueIdTooLong {
        /// Its length.
        len: usize,
    },
    /// No CRLF within the 107 bytes a v1 line may take.
    #[error("PROXY v1 line has no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    /// A bare CR or LF instead of CRLF.
    #[error("PROXY v1 line does not end with CRLF")]
    BadV1LineEnding,
    /// Not `PROXY <proto> ...` with single spaces and four fields, or non-ASCII bytes.
    #[error("PROXY v1 line is malformed")]
    BadV1Syntax,
    /// A protocol other than TCP4, TCP6 or UNKNOWN.
    #[error("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN")]
    BadV1Protocol,
    /// An address that is not a canonical address of the announced family.
    #[error("PROXY v1 address is not a valid address of the announced family")]
    BadV1Address,
    /// A port that is not a decimal 0-65535 without leading zeros.
    #[error("PROXY v1 port is not a decimal number 0-65535 without leading zeros")]
    BadV1Port,
}

impl ParseError {
    /// A stable short name for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::BadSignature => "bad_signature",
            ParseError::BadVersion(_) => "bad_version",
            ParseError::BadCommand(_) => "bad_command",
            ParseError::BadFamily(_) => "bad_family",
            ParseError::BadTransport(_) => "bad_transport",
            ParseError::TruncatedAddresses { .. } => "truncated_addresses",
            ParseError::BadTlvLength { .. } => "bad_tlv_length",
            ParseError::BadCrc32cLength { .. } => "bad_crc32c_length",
            ParseError::DuplicateCrc32c => "duplicate_crc32c",
            ParseError::BadCrc32c { .. } => "bad_crc32c",
            ParseError::UniqueIdTooLong { .. } => "unique_id_too_long",
            ParseError::V1TooLong => "v1_too_long",
            ParseError::BadV1LineEnding => "bad_v1_line_ending",
            ParseError::BadV1Syntax => "bad_v1_syntax",
            ParseError::BadV1Protocol => "bad_v1_protocol",
            ParseError::BadV1Address => "bad_v1_address",
            ParseError::BadV1Port => "bad_v1_port",
        }
    }

    /// Every reason name, for registering counters up front.
    pub const REASONS: [&'static str; 17] = [
        "bad_signature",
        "bad_version",
        "bad_command",
        "bad_family",
        "bad_transport",
        "truncated_addresses",
        "bad_tlv_length",
        "bad_crc32c_length",
        "duplicate_crc32c",
        "bad_crc32c",
        "unique_id_too_long",
        "v1_too_long",
        "bad_v1_line_ending",
        "bad_v1_syntax",
        "bad_v1_protocol",
        "bad_v1_address",
        "bad_v1_port",
    ];
}

/// Parses the PROXY header at the start of `buf` (the bytes received from the client so
/// far). Call again with more bytes on [`Parsed::Incomplete`].
pub fn parse(buf: &[u8]) -> Result<Parsed<'_>, ParseError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete { need: 1 }),
        Some(b'\r') => parse_v2(buf),
        Some(b'P') => parse_v1(buf),
        Some(_) => Err(ParseError::BadSignature),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed<'_>, ParseError> {
    let sig_seen = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_seen] != V2_SIGNATURE[..sig_seen] {
        return Err(ParseError::BadSignature);
    }
    if let Some(&ver_cmd) = buf.get(12) {
        if ver_cmd >> 4 != 2 {
            return Err(ParseError::BadVersion(ver_cmd >> 4));
        }
        if ver_cmd & 0x0f > 1 {
            return Err(ParseError::BadCommand(ver_cmd & 0x0f));
        }
    }
    if let Some(&fam) = buf.get(13) {
        if fam >> 4 > 3 {
            return Err(ParseError::BadFamily(fam >> 4));
        }
        if fam & 0x0f > 2 {
            return Err(ParseError::BadTransport(fam & 0x0f));
        }
    }
    if buf.len() < V2_FIXED_LEN {
        return Ok(Parsed::Incomplete { need: V2_FIXED_LEN });
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let header_len = V2_FIXED_LEN + len;
    let command = if ver_cmd & 0x0f == 0 {
        Command::Local
    } else {
        Command::Proxy
    };
    // The address block's size, when the family defines one.
    let addr_len = match fam {
        0x11 | 0x12 => Some(12),
        0x21 | 0x22 => Some(36),
        0x31 | 0x32 => Some(216),
        _ => None,
    };
    if command == Command::Proxy
        && let Some(need) = addr_len
        && len < need
    {
        return Err(ParseError::TruncatedAddresses { len, need });
    }
    let Some(header) = buf.get(..header_len) else {
        return Ok(Parsed::Incomplete { need: header_len });
    };
    debug_assert!(header_len <= V2_MAX_LEN);
    let body = &header[V2_FIXED_LEN..];

    let (mut src, mut dst, mut tlv_start) = (None, None, None);
    if command == Command::Proxy {
        match fam {
            FAM_TCP4 => {
                let ip =
                    |at: usize| Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]);
                src = Some(SocketAddr::new(IpAddr::V4(ip(0)), port(body, 8)));
                dst = Some(SocketAddr::new(IpAddr::V4(ip(4)), port(body, 10)));
            }
            FAM_TCP6 => {
                let ip = |at: usize| {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(&body[at..at + 16]);
                    Ipv6Addr::from(o)
                };
                src = Some(SocketAddr::new(IpAddr::V6(ip(0)), port(body, 32)));
                dst = Some(SocketAddr::new(IpAddr::V6(ip(16)), port(body, 34)));
            }
            _ => {}
        }
        tlv_start = addr_len;
    }
    let tlv_bytes = match tlv_start {
        Some(at) => {
            check_tlvs(header, V2_FIXED_LEN + at)?;
            &body[at..]
        }
        None => &[],
    };
    Ok(Parsed::Complete(Header {
        version: Version::V2,
        header_len,
        command,
        family: fam,
        src,
        dst,
        tlv_bytes,
    }))
}

/// The big-endian port at `body[at..at + 2]`.
fn port(body: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([body[at], body[at + 1]])
}

/// Checks the TLV area `header[start..]`: every TLV inside the header, CRC32C (at most
/// one, 4 bytes, matching) and UNIQUE_ID (at most 128 bytes).
fn check_tlvs(header: &[u8], start: usize) -> Result<(), ParseError> {
    let mut at = start;
    let mut crc_at = None;
    while at < header.len() {
        let Some(&[kind, hi, lo]) = header
            .get(at..at + 3)
            .and_then(|t| <&[u8; 3]>::try_from(t).ok())
        else {
            return Err(ParseError::BadTlvLength { offset: at });
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let value_at = at + 3;
        if header.len() - value_at < len {
            return Err(ParseError::BadTlvLength { offset: at });
        }
        match kind {
            tlv_type::CRC32C => {
                if len != 4 {
                    return Err(ParseError::BadCrc32cLength { len });
                }
                if crc_at.is_some() {
                    return Err(ParseError::DuplicateCrc32c);
                }
                crc_at = Some(value_at);
            }
            tlv_type::UNIQUE_ID if len > UNIQUE_ID_MAX_LEN => {
                return Err(ParseError::UniqueIdTooLong { len });
            }
            _ => {}
        }
        at = value_at + len;
    }
    if let Some(c) = crc_at {
        let sent = u32::from_be_bytes([header[c], header[c + 1], header[c + 2], header[c + 3]]);
        // Over the header with the field zeroed, in pieces so the input is not copied.
        let computed = [&header[..c], &[0; 4], &header[c + 4..]]
            .iter()
            .fold(0, |crc, piece| crc32c::crc32c_append(crc, piece));
        if sent != computed {
            return Err(ParseError::BadCrc32c { sent, computed });
        }
    }
    Ok(())
}

/// The protocols a v1 line may announce, each with the byte that must follow it.
const V1_PROTOCOLS: [&[u8]; 3] = [b"TCP4 ", b"TCP6 ", b"UNKNOWN"];

fn parse_v1(buf: &[u8]) -> Result<Parsed<'_>, ParseError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let eol = window.iter().position(|&b| b == b'\r' || b == b'\n');
    let line = &window[..eol.unwrap_or(window.len())];
    // Checks that hold for any prefix of the line, so garbage fails before its CRLF.
    check_v1_prefix(line)?;
    let header_len = match eol {
        None if window.len() >= V1_MAX_LEN => return Err(ParseError::V1TooLong),
        None => {
            return Ok(Parsed::Incomplete {
                need: buf.len() + 1,
            });
        }
        Some(i) if window[i] == b'\n' => return Err(ParseError::BadV1LineEnding),
        // The LF would be byte 108.
        Some(i) if i + 2 > V1_MAX_LEN => return Err(ParseError::V1TooLong),
        Some(i) => match buf.get(i + 1) {
            None => return Ok(Parsed::Incomplete { need: i + 2 }),
            Some(b'\n') => i + 2,
            Some(_) => return Err(ParseError::BadV1LineEnding),
        },
    };
    // `line` is now the whole line without its CRLF; it starts with "PROXY " and one of
    // the protocol prefixes (checked above).
    if line.len() < V1_PREFIX.len() {
        return Err(ParseError::BadSignature);
    }
    let Some(rest) = line.get(V1_PREFIX.len() + 1..) else {
        return Err(ParseError::BadV1Syntax);
    };
    if rest.starts_with(b"UNKNOWN") {
        // "PROXY UNKNOWN" alone, or followed by a space and anything (ignored).
        return match rest.get(7) {
            None | Some(b' ') => Ok(Parsed::Complete(Header {
                version: Version::V1,
                header_len,
                command: Command::Proxy,
                family: FAM_UNSPEC,
                src: None,
                dst: None,
                tlv_bytes: &[],
            })),
            Some(_) => Err(ParseError::BadV1Protocol),
        };
    }
    // TCP4 or TCP6 with the space after it; anything shorter is a bad protocol.
    let v6 = match rest.get(..5) {
        Some(b"TCP4 ") => false,
        Some(b"TCP6 ") => true,
        _ => return Err(ParseError::BadV1Protocol),
    };
    let fields = &rest[5..];
    if !fields.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Err(ParseError::BadV1Syntax);
    }
    let mut parts = fields.split(|&b| b == b' ');
    let (Some(s), Some(d), Some(sp), Some(dp), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(ParseError::BadV1Syntax);
    };
    if [s, d, sp, dp].iter().any(|f| f.is_empty()) {
        return Err(ParseError::BadV1Syntax);
    }
    let (src_ip, dst_ip) = (v1_addr(s, v6)?, v1_addr(d, v6)?);
    let (src_port, dst_port) = (v1_port(sp)?, v1_port(dp)?);
    Ok(Parsed::Complete(Header {
        version: Version::V1,
        header_len,
        command: Command::Proxy,
        family: if v6 { FAM_TCP6 } else { FAM_TCP4 },
        src: Some(SocketAddr::new(src_ip, src_port)),
        dst: Some(SocketAddr::new(dst_ip, dst_port)),
        tlv_bytes: &[],
    }))
}

/// Fails if `line` (all or the start of a v1 line, without CR/LF) cannot begin a valid
/// line: `PROXY`, one space, then (a prefix of) `TCP4 `, `TCP6 ` or `UNKNOWN`.
fn check_v1_prefix(line: &[u8]) -> Result<(), ParseError> {
    let p = line.len().min(V1_PREFIX.len());
    if line[..p] != V1_PREFIX[..p] {
        return Err(ParseError::BadSignature);
    }
    match line.get(V1_PREFIX.len()) {
        None => return Ok(()),
        Some(b' ') => {}
        Some(_) => return Err(ParseError::BadV1Syntax),
    }
    let proto = &line[V1_PREFIX.len() + 1..];
    let consistent = V1_PROTOCOLS.iter().any(|want| {
        let n = proto.len().min(want.len());
        proto[..n] == want[..n]
    });
    if consistent {
        Ok(())
    } else {
        Err(ParseError::BadV1Protocol)
    }
}

/// A v1 address of the announced family (Rust's parsers reject IPv4 leading zeros).
fn v1_addr(field: &[u8], v6: bool) -> Result<IpAddr, ParseError> {
    let text = std::str::from_utf8(field).map_err(|_| ParseError::BadV1Address)?;
    if v6 {
        text.parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ParseError::BadV1Address)
    } else {
        text.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| ParseError::BadV1Address)
    }
}

/// A v1 port: 1-5 decimal digits, no leading zero (except `0` itself), at most 65535.
fn v1_port(field: &[u8]) -> Result<u16, ParseError> {
    if field.is_empty()
        || field.len() > 5
        || !field.iter().all(u8::is_ascii_digit)
        || (field.len() > 1 && field[0] == b'0')
    {
        return Err(ParseError::BadV1Port);
    }
    let n = field.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).map_err(|_| ParseError::BadV1Port)
}

#[cfg(test)]
mod tests;
