//! TLS ClientHello peeking: the SNI and ALPN a client asks for, read from the first
//! bytes of its connection without terminating TLS, to fill the PROXY v2 AUTHORITY and
//! ALPN TLVs. The backend still terminates TLS; nothing here changes a byte.
//!
//! The daemon peeks (`MSG_PEEK`) what the client sent and calls [`peek_client_hello`]
//! until it stops answering [`Peek::NeedMore`] or its bounded wait runs out. Like the
//! PROXY parser this reads untrusted input: it never panics, never reads past `buf`,
//! never asks for more than [`MAX_PEEK_LEN`] bytes, and allocates at most one
//! ClientHello-sized buffer (only when the hello is split over several records) plus
//! the SNI and ALPN it returns. A first byte other than 0x16 (a TLS handshake record)
//! answers [`Peek::NotTls`] at once, so plaintext protocols are not delayed; a
//! server-first protocol sends nothing, which the caller's wait bounds.
//!
//! A ClientHello split across several handshake records (allowed by TLS, rare in
//! practice since hellos fit one 16 KiB record) is reassembled, up to
//! [`MAX_RECORDS`] records and [`MAX_HELLO_LEN`] bytes. It is parsed structurally
//! (RFC 8446 section 4.1.2, RFC 6066 section 3, RFC 7301 section 3.1), enough to trust
//! the two extensions it extracts; malformed hellos get a [`HelloError`] with a stable
//! [`reason`](HelloError::reason), and the connection should go on without the TLVs
//! (the backend's TLS stack is the one that rejects bad TLS).

/// TLS record content type of handshake messages.
const CONTENT_HANDSHAKE: u8 = 0x16;
/// Handshake message type of the ClientHello.
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
/// Extension numbers.
const EXT_SERVER_NAME: u16 = 0x0000;
const EXT_ALPN: u16 = 0x0010;
/// A TLS record header: type, version, length.
const RECORD_HEADER_LEN: usize = 5;
/// The largest plaintext record fragment TLS allows.
const MAX_RECORD_LEN: usize = 1 << 14;

/// The largest ClientHello accepted (handshake header included).
pub const MAX_HELLO_LEN: usize = 1 << 14;
/// The most records a ClientHello may be split over.
pub const MAX_RECORDS: usize = 32;
/// The most bytes [`peek_client_hello`] ever asks for: a peek buffer this large always
/// suffices.
pub const MAX_PEEK_LEN: usize = MAX_HELLO_LEN + MAX_RECORDS * RECORD_HEADER_LEN;

/// What the first bytes of a connection say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peek {
    /// Not enough bytes yet: wait until `need` bytes are there (a lower bound, at most
    /// [`MAX_PEEK_LEN`]) and call again.
    NeedMore {
        /// The buffer length at which peeking can make progress.
        need: usize,
    },
    /// Not a TLS handshake record: the connection is something else.
    NotTls,
    /// A TLS handshake that is not a well-formed ClientHello.
    Malformed(HelloError),
    /// A ClientHello.
    Hello {
        /// The `host_name` of the server_name extension.
        sni: Option<String>,
        /// The protocols of the ALPN extension, in the client's order.
        alpn: Vec<Vec<u8>>,
    },
}

/// Why a TLS handshake was not read as a ClientHello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// A record whose version major is not 3 (SSL 3.0 / TLS).
    #[error("TLS record version major is not 3")]
    BadRecordVersion,
    /// A handshake record of length 0 (forbidden).
    #[error("empty TLS handshake record")]
    EmptyRecord,
    /// A record over 16 KiB.
    #[error("TLS record longer than 16384 bytes")]
    RecordTooLong,
    /// A non-handshake record before the ClientHello was complete.
    #[error("non-handshake TLS record inside the ClientHello")]
    InterleavedRecord,
    /// The hello spans more than [`MAX_RECORDS`] records.
    #[error("ClientHello split over more than {MAX_RECORDS} records")]
    TooFragmented,
    /// The first handshake message is not a ClientHello.
    #[error("first TLS handshake message is not a ClientHello")]
    NotClientHello,
    /// A ClientHello over [`MAX_HELLO_LEN`].
    #[error("ClientHello longer than {MAX_HELLO_LEN} bytes")]
    HelloTooLarge,
    /// A field runs past the end of the ClientHello.
    #[error("ClientHello field runs past the end of the message")]
    Truncated,
    /// A session id over 32 bytes.
    #[error("ClientHello session id longer than 32 bytes")]
    BadSessionId,
    /// An odd or empty cipher suite list.
    #[error("ClientHello cipher suite list is empty or odd")]
    BadCipherSuites,
    /// An empty compression method list.
    #[error("ClientHello compression method list is empty")]
    BadCompression,
    /// The extension block does not end where the message does.
    #[error("ClientHello extensions do not fill the message exactly")]
    BadExtensions,
    /// server_name or ALPN twice.
    #[error("ClientHello repeats an extension")]
    DuplicateExtension,
    /// A server_name extension that is malformed or not printable ASCII.
    #[error("ClientHello server_name extension is malformed")]
    BadSni,
    /// An ALPN extension that is malformed (empty list or empty protocol name).
    #[error("ClientHello ALPN extension is malformed")]
    BadAlpn,
}

impl HelloError {
    /// A stable short name for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            HelloError::BadRecordVersion => "bad_record_version",
            HelloError::EmptyRecord => "empty_record",
            HelloError::RecordTooLong => "record_too_long",
            HelloError::InterleavedRecord => "interleaved_record",
            HelloError::TooFragmented => "too_fragmented",
            HelloError::NotClientHello => "not_client_hello",
            HelloError::HelloTooLarge => "hello_too_large",
            HelloError::Truncated => "truncated_hello",
            HelloError::BadSessionId => "bad_session_id",
            HelloError::BadCipherSuites => "bad_cipher_suites",
            HelloError::BadCompression => "bad_compression",
            HelloError::BadExtensions => "bad_extensions",
            HelloError::DuplicateExtension => "duplicate_extension",
            HelloError::BadSni => "bad_sni",
            HelloError::BadAlpn => "bad_alpn",
        }
    }
}

/// Reads the ClientHello at the start of `buf` (what the client sent so far).
pub fn peek_client_hello(buf: &[u8]) -> Peek {
    match buf.first() {
        None => return Peek::NeedMore { need: 1 },
        Some(&CONTENT_HANDSHAKE) => {}
        Some(_) => return Peek::NotTls,
    }
    match reassemble(buf) {
        Err(Stop::NeedMore(need)) => Peek::NeedMore { need },
        Err(Stop::Malformed(e)) => Peek::Malformed(e),
        Ok(Message::Whole(msg)) => hello(msg),
        Ok(Message::Joined(msg)) => hello(&msg),
    }
}

/// Why [`reassemble`] stopped.
enum Stop {
    NeedMore(usize),
    Malformed(HelloError),
}

/// The handshake message: borrowed when it sits in one record, copied when split.
enum Message<'a> {
    Whole(&'a [u8]),
    Joined(Vec<u8>),
}

/// Finds the complete ClientHello message (4-byte handshake header included) in the
/// handshake records at the start of `buf`, checking each record header on the way.
fn reassemble(buf: &[u8]) -> Result<Message<'_>, Stop> {
    // Fragments (start, end) of `buf` holding handshake bytes, and their total length.
    let mut frags = [(0usize, 0usize); MAX_RECORDS];
    let mut nfrags = 0;
    let mut have = 0usize;
    // Total message length, once its header has been seen.
    let mut total: Option<usize> = None;
    let mut pos = 0usize;
    loop {
        if nfrags == MAX_RECORDS {
            return Err(Stop::Malformed(HelloError::TooFragmented));
        }
        // The record header, as far as it is there.
        let header = &buf[pos..buf.len().min(pos + RECORD_HEADER_LEN)];
        if let Some(&ty) = header.first()
            && ty != CONTENT_HANDSHAKE
        {
            return Err(Stop::Malformed(HelloError::InterleavedRecord));
        }
        if let Some(&major) = header.get(1)
            && major != 3
        {
            return Err(Stop::Malformed(HelloError::BadRecordVersion));
        }
        let &[_, _, _, hi, lo] = header else {
            return Err(Stop::NeedMore(pos + RECORD_HEADER_LEN));
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 {
            return Err(Stop::Malformed(HelloError::EmptyRecord));
        }
        if len > MAX_RECORD_LEN {
            return Err(Stop::Malformed(HelloError::RecordTooLong));
        }
        let start = pos + RECORD_HEADER_LEN;
        let end = start + len;
        let avail_end = buf.len().min(end);
        let have_before = have;
        frags[nfrags] = (start, avail_end);
        nfrags += 1;
        have += avail_end - start;

        // Check the handshake header as soon as its bytes are in.
        let byte_at = |i: usize| -> u8 {
            let mut skip = i;
            for &(s, e) in &frags[..nfrags] {
                if skip < e - s {
                    return buf[s + skip];
                }
                skip -= e - s;
            }
            0 // not reached: callers ask only for i < have
        };
        if have >= 1 && byte_at(0) != HANDSHAKE_CLIENT_HELLO {
            return Err(Stop::Malformed(HelloError::NotClientHello));
        }
        if total.is_none() && have >= 4 {
            let body = usize::from(byte_at(1)) << 16
                | usize::from(byte_at(2)) << 8
                | usize::from(byte_at(3));
            let t = 4 + body;
            if t > MAX_HELLO_LEN {
                return Err(Stop::Malformed(HelloError::HelloTooLarge));
            }
            total = Some(t);
        }
        if let Some(t) = total
            && have >= t
        {
            if nfrags == 1 {
                return Ok(Message::Whole(&buf[start..start + t]));
            }
            let mut joined = Vec::with_capacity(t);
            for &(s, e) in &frags[..nfrags] {
                let want = (t - joined.len()).min(e - s);
                joined.extend_from_slice(&buf[s..s + want]);
            }
            return Ok(Message::Joined(joined));
        }
        if avail_end < end {
            // Ask for the bytes of this record the message still needs, not the whole
            // record: a late record may declare 16 KiB that the hello does not use, and
            // asking for it would break the MAX_PEEK_LEN bound.
            let still = total.unwrap_or(4) - have_before;
            return Err(Stop::NeedMore(end.min(start + still)));
        }
        pos = end;
    }
}

/// A bounds-checked reader over a ClientHello.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if self.rest.len() < n {
            return Err(HelloError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, HelloError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, HelloError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a 1-byte length prefix.
    fn vec8(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a 2-byte length prefix.
    fn vec16(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Parses a complete ClientHello message (handshake header included).
fn hello(msg: &[u8]) -> Peek {
    match parse_hello(msg) {
        Ok((sni, alpn)) => Peek::Hello { sni, alpn },
        Err(e) => Peek::Malformed(e),
    }
}

type Extracted = (Option<String>, Vec<Vec<u8>>);

fn parse_hello(msg: &[u8]) -> Result<Extracted, HelloError> {
    // The 4-byte handshake header was checked by `reassemble`.
    let mut r = Reader {
        rest: msg.get(4..).ok_or(HelloError::Truncated)?,
    };
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    let session_id_len = r.u8()?;
    if session_id_len > 32 {
        return Err(HelloError::BadSessionId);
    }
    r.take(usize::from(session_id_len))?;
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::BadCipherSuites);
    }
    if r.vec8()?.is_empty() {
        return Err(HelloError::BadCompression);
    }
    let (mut sni, mut alpn) = (None, None);
    if r.rest.is_empty() {
        // No extensions at all (pre-TLS 1.2 style): nothing to extract.
        return Ok((None, Vec::new()));
    }
    let exts = r.vec16().map_err(|_| HelloError::BadExtensions)?;
    if !r.rest.is_empty() {
        return Err(HelloError::BadExtensions);
    }
    let mut r = Reader { rest: exts };
    while !r.rest.is_empty() {
        let kind = r.u16().map_err(|_| HelloError::BadExtensions)?;
        let data = r.vec16().map_err(|_| HelloError::BadExtensions)?;
        match kind {
            EXT_SERVER_NAME => {
                if sni.is_some() {
                    return Err(HelloError::DuplicateExtension);
                }
                sni = Some(server_name(data)?);
            }
            EXT_ALPN => {
                if alpn.is_some() {
                    return Err(HelloError::DuplicateExtension);
                }
                alpn = Some(protocols(data)?);
            }
            _ => {}
        }
    }
    Ok((sni.flatten(), alpn.unwrap_or_default()))
}

/// The host_name of a server_name extension (RFC 6066 section 3), if it has one.
fn server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader { rest: data };
    let list = r.vec16().map_err(|_| HelloError::BadSni)?;
    if !r.rest.is_empty() || list.is_empty() {
        return Err(HelloError::BadSni);
    }
    let mut r = Reader { rest: list };
    let mut host = None;
    while !r.rest.is_empty() {
        let name_type = r.u8().map_err(|_| HelloError::BadSni)?;
        let name = r.vec16().map_err(|_| HelloError::BadSni)?;
        // Type 0 is host_name; others (none are defined) are skipped.
        if name_type == 0 {
            if host.is_some() || name.is_empty() || !name.iter().all(u8::is_ascii_graphic) {
                return Err(HelloError::BadSni);
            }
            // ASCII graphic bytes are valid UTF-8.
            host = Some(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(host)
}

/// The protocol names of an ALPN extension (RFC 7301 section 3.1).
fn protocols(data: &[u8]) -> Result<Vec<Vec<u8>>, HelloError> {
    let mut r = Reader { rest: data };
    let list = r.vec16().map_err(|_| HelloError::BadAlpn)?;
    if !r.rest.is_empty() || list.is_empty() {
        return Err(HelloError::BadAlpn);
    }
    let mut r = Reader { rest: list };
    let mut out = Vec::new();
    while !r.rest.is_empty() {
        let name = r.vec8().map_err(|_| HelloError::BadAlpn)?;
        if name.is_empty() {
            return Err(HelloError::BadAlpn);
        }
        out.push(name.to_vec());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
