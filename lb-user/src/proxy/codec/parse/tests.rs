use super::*;
use crate::fuzz::Rng;
use crate::proxy::codec::header::{Tlv, encode_v1, encode_v2, encode_v2_local};
use crc32c::crc32c;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn complete(buf: &[u8]) -> Header<'_> {
    match parse(buf) {
        Ok(Parsed::Complete(h)) => h,
        other => panic!("expected Complete for {buf:?}, got {other:?}"),
    }
}

fn err(buf: &[u8]) -> ParseError {
    match parse(buf) {
        Err(e) => e,
        other => panic!("expected an error for {buf:?}, got {other:?}"),
    }
}

/// A v2 header from its parts, length computed.
fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(ver_cmd);
    h.push(fam);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

const V4_BODY: [u8; 12] = [10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0x01, 0xBB];

/// Asserts the monotonicity property on `buf`: every prefix is Incomplete (asking
/// for more than it has, within the bounds) or fails like the whole.
fn check_prefixes(buf: &[u8]) {
    let whole = parse(buf);
    for k in 0..buf.len() {
        match (parse(&buf[..k]), &whole) {
            (Ok(Parsed::Incomplete { need }), _) => {
                assert!(need > k && need <= V2_MAX_LEN, "prefix {k} need {need}")
            }
            (Ok(Parsed::Complete(h)), Ok(Parsed::Complete(w))) => assert_eq!(&h, w),
            (Err(e), Err(w)) => assert_eq!(&e, w, "prefix {k} of {buf:?}"),
            (p, w) => panic!("prefix {k}: {p:?}, whole: {w:?}"),
        }
    }
}

#[test]
fn v1_spec_example() {
    let buf = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
    let h = complete(buf);
    assert_eq!(h.version, Version::V1);
    assert_eq!(h.command, Command::Proxy);
    assert_eq!(h.family, 0x11);
    assert_eq!(h.header_len, 47);
    assert_eq!(&buf[h.header_len..], b"GET / HTTP/1.1\r\n");
    assert_eq!(h.src, Some(sa("192.168.0.1:56324")));
    assert_eq!(h.dst, Some(sa("192.168.0.11:443")));
    assert_eq!(h.tlvs().count(), 0);
    check_prefixes(buf);
}

#[test]
fn v1_spec_maximum_lines() {
    let v4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    assert_eq!(complete(v4).header_len, 56);
    let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let v6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
    assert_eq!(v6.len(), 104);
    let h = complete(v6.as_bytes());
    assert_eq!(
        h.src,
        Some(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from([0xff; 16])),
            65535
        ))
    );
    let unknown = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
    assert_eq!(unknown.len(), V1_MAX_LEN);
    let h = complete(unknown.as_bytes());
    assert_eq!((h.src, h.dst, h.family), (None, None, 0));
    assert_eq!(complete(b"PROXY UNKNOWN\r\n").header_len, 15);
    check_prefixes(unknown.as_bytes());
    // One byte more and the CRLF is out of reach.
    let long = format!("PROXY UNKNOWN {f} {f} 65535 655350\r\n");
    assert_eq!(err(long.as_bytes()), ParseError::V1TooLong);
    check_prefixes(long.as_bytes());
    let no_crlf = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 200]].concat();
    assert_eq!(err(&no_crlf[..107]), ParseError::V1TooLong);
    assert!(matches!(
        parse(&no_crlf[..106]),
        Ok(Parsed::Incomplete { need: 107 })
    ));
}

#[test]
fn v1_unknown_ignores_the_rest() {
    let lines: [&[u8]; 4] = [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY UNKNOWN whatever \xff\x00 bytes\r\n",
        b"PROXY UNKNOWN \r\n",
    ];
    for line in lines {
        let h = complete(line);
        assert_eq!((h.command, h.src, h.dst), (Command::Proxy, None, None));
        assert_eq!(h.header_len, line.len());
    }
    assert_eq!(err(b"PROXY UNKNOWNX\r\n"), ParseError::BadV1Protocol);
}

#[test]
fn v1_tcp6() {
    let h = complete(b"PROXY TCP6 2001:db8::1 ::ffff:c0a8:1 1 65535\r\n");
    assert_eq!(h.family, 0x21);
    assert_eq!(h.src, Some(sa("[2001:db8::1]:1")));
    assert_eq!(h.dst, Some(sa("[::ffff:192.168.0.1]:65535")));
    // Upper case hex is allowed too.
    assert!(
        complete(b"PROXY TCP6 2001:DB8::1 ::1 1 2\r\n")
            .src
            .is_some()
    );
}

#[test]
fn v1_errors() {
    let cases: &[(ParseError, &[&[u8]])] = &[
        (
            ParseError::BadV1LineEnding,
            &[
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
                b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n",
            ],
        ),
        (
            ParseError::BadV1Syntax,
            &[b"PROXY\r\n", b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n"],
        ),
        (
            ParseError::BadV1Protocol,
            &[
                b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                b"PROXY \r\n",
                b"PROXY TCP\r\n",
                b"PROXY TCP4\r\n",
                b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
                b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            ],
        ),
        (
            ParseError::BadV1Syntax,
            &[
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
                b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
                b"PROXY TCP4 \r\n",
                b"PROXY TCP4 1.2.3.4 5.6.7.8\t1 2\r\n",
                b"PROXY TCP4 1.2.3.\xc3\xa9 5.6.7.8 1 2\r\n",
            ],
        ),
        (
            ParseError::BadV1Address,
            &[
                b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
                b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
                b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
                b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
                b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
                b"PROXY TCP6 ::1%eth0 ::1 1 2\r\n",
                b"PROXY TCP6 [::1] ::1 1 2\r\n",
                b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
            ],
        ),
        (
            ParseError::BadV1Port,
            &[
                b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -1\r\n",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999999\r\n",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 0x10\r\n",
            ],
        ),
        (ParseError::BadSignature, &[b"PROXX TCP4", b"PRO\r\n"]),
    ];
    for (want, bufs) in cases {
        for buf in *bufs {
            assert_eq!(err(buf), *want, "{}", String::from_utf8_lossy(buf));
            check_prefixes(buf);
        }
    }
    // Port 0 and leading-zero-free ports are fine.
    let h = complete(b"PROXY TCP4 0.0.0.0 5.6.7.8 0 10\r\n");
    assert_eq!(h.src, Some(sa("0.0.0.0:0")));
    assert_eq!(h.dst, Some(sa("5.6.7.8:10")));
}

#[test]
fn v1_garbage_fails_before_crlf() {
    // The parser does not wait for a CRLF to reject what cannot become a header.
    assert_eq!(err(b"PROXY HTTP/1.1"), ParseError::BadV1Protocol);
    assert_eq!(err(b"PROXY TCP5"), ParseError::BadV1Protocol);
    assert_eq!(err(b"PROXY_"), ParseError::BadV1Syntax);
    assert_eq!(err(b"POST / HTTP/1.1"), ParseError::BadSignature);
    assert!(matches!(
        parse(b"PROXY TCP4 1.2.3"),
        Ok(Parsed::Incomplete { need: 17 })
    ));
    assert!(matches!(parse(b"PRO"), Ok(Parsed::Incomplete { need: 4 })));
}

#[test]
fn signature_detection() {
    assert_eq!(parse(b""), Ok(Parsed::Incomplete { need: 1 }));
    for first in [b'G', 0x16, 0x00, b'p', b'\n', 0xff] {
        assert_eq!(err(&[first]), ParseError::BadSignature);
    }
    for k in 1..16 {
        assert_eq!(
            parse(&encode_v2_local()[..k]),
            Ok(Parsed::Incomplete { need: 16 }),
            "{k}"
        );
    }
    assert_eq!(err(b"\r\n\r\n\0\r\nQUIX"), ParseError::BadSignature);
    assert_eq!(err(b"\r\nGET"), ParseError::BadSignature);
}

#[test]
fn v2_tcp4() {
    let buf = v2(0x21, 0x11, &V4_BODY);
    let h = complete(&buf);
    assert_eq!(h.version, Version::V2);
    assert_eq!(
        (h.command, h.family, h.header_len),
        (Command::Proxy, 0x11, 28)
    );
    assert_eq!(h.src, Some(sa("10.0.0.1:12345")));
    assert_eq!(h.dst, Some(sa("10.0.0.2:443")));
    assert_eq!(h.tlvs().count(), 0);
    check_prefixes(&buf);
}

#[test]
fn v2_tcp6() {
    let mut body = vec![0u8; 36];
    body[15] = 1;
    body[16] = 0xfe;
    body[17] = 0x80;
    body[31] = 2;
    body[32..36].copy_from_slice(&[0, 80, 0x1f, 0x90]);
    let buf = v2(0x21, 0x21, &body);
    let h = complete(&buf);
    assert_eq!(h.src, Some(sa("[::1]:80")));
    assert_eq!(h.dst, Some(sa("[fe80::2]:8080")));
    check_prefixes(&buf);
}

#[test]
fn v2_local_skips_everything() {
    let local = encode_v2_local();
    let h = complete(&local);
    assert_eq!(
        (h.command, h.src, h.dst, h.header_len),
        (Command::Local, None, None, 16)
    );
    // Receivers must use the length, not assume 0, and ignore the block.
    let buf = v2(0x20, 0x11, &[0xAB; 7]);
    let h = complete(&buf);
    assert_eq!(
        (h.command, h.src, h.header_len, h.tlvs().count()),
        (Command::Local, None, 23, 0)
    );
    // Even a junk "TLV area" is not looked at.
    let buf = v2(0x20, 0x00, &[0x03, 0x00, 0x04, 1, 2, 3, 4, 0xff]);
    assert_eq!(complete(&buf).header_len, 24);
}

#[test]
fn v2_other_families_fall_back_to_no_addresses() {
    for (fam, addr_len) in [(0x12u8, 12usize), (0x22, 36), (0x31, 216), (0x32, 216)] {
        let mut body = vec![0x55; addr_len];
        body.extend_from_slice(&[0x02, 0x00, 0x01, b'a']);
        let buf = v2(0x21, fam, &body);
        let h = complete(&buf);
        assert_eq!((h.src, h.dst, h.family), (None, None, fam));
        // TLVs after a known address block are still read.
        assert_eq!(h.authority(), Some(&b"a"[..]));
        assert_eq!(
            err(&v2(0x21, fam, &vec![0; addr_len - 1])),
            ParseError::TruncatedAddresses {
                len: addr_len - 1,
                need: addr_len
            }
        );
    }
    // No defined address block: the body is opaque.
    for fam in [0x00u8, 0x01, 0x02, 0x10, 0x20, 0x30] {
        let buf = v2(0x21, fam, &[0xff; 5]);
        let h = complete(&buf);
        assert_eq!((h.src, h.dst, h.tlvs().count()), (None, None, 0));
    }
}

#[test]
fn v2_header_errors_fail_early() {
    let mut base = v2(0x21, 0x11, &V4_BODY);
    for ver in [0x00u8, 0x10, 0x30, 0xf0] {
        base[12] = ver | 1;
        assert_eq!(err(&base[..13]), ParseError::BadVersion(ver >> 4));
        assert_eq!(err(&base), ParseError::BadVersion(ver >> 4));
    }
    base[12] = 0x22;
    assert_eq!(err(&base[..13]), ParseError::BadCommand(2));
    base[12] = 0x2f;
    assert_eq!(err(&base), ParseError::BadCommand(0xf));
    base[12] = 0x21;
    base[13] = 0x41;
    assert_eq!(err(&base[..14]), ParseError::BadFamily(4));
    base[13] = 0x13;
    assert_eq!(err(&base[..14]), ParseError::BadTransport(3));
    // LOCAL is checked the same way: the spec says reject unassigned values.
    base[12] = 0x20;
    assert_eq!(err(&base), ParseError::BadTransport(3));
    // A short address block is caught at 16 bytes, before waiting for the rest.
    let buf = v2(0x21, 0x11, &V4_BODY[..11]);
    assert_eq!(
        err(&buf[..16]),
        ParseError::TruncatedAddresses { len: 11, need: 12 }
    );
    let buf = v2(0x21, 0x21, &[0; 35]);
    assert_eq!(
        err(&buf),
        ParseError::TruncatedAddresses { len: 35, need: 36 }
    );
}

#[test]
fn v2_incomplete_asks_for_the_whole_header() {
    let buf = encode_v2(sa("10.0.0.1:1"), sa("10.0.0.2:2"), &[Tlv::Noop(1000)]).unwrap();
    for k in 16..buf.len() {
        assert_eq!(parse(&buf[..k]), Ok(Parsed::Incomplete { need: buf.len() }));
    }
    // The largest header announces the largest need.
    let mut max = v2(0x21, 0x11, &V4_BODY);
    max[14..16].copy_from_slice(&[0xff, 0xff]);
    assert_eq!(parse(&max), Ok(Parsed::Incomplete { need: V2_MAX_LEN }));
}

#[test]
fn v2_tlvs() {
    let mut body = V4_BODY.to_vec();
    body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
    body.extend_from_slice(&[0x02, 0x00, 0x03, b'a', b'.', b'b']);
    body.extend_from_slice(&[0x04, 0x00, 0x00]);
    body.extend_from_slice(&[0x05, 0x00, 0x01, 0x07]);
    body.extend_from_slice(&[0xEE, 0x00, 0x00]);
    let buf = v2(0x21, 0x11, &body);
    let h = complete(&buf);
    let kinds: Vec<u8> = h.tlvs().map(|t| t.kind).collect();
    assert_eq!(kinds, [0x01, 0x02, 0x04, 0x05, 0xEE]);
    assert_eq!(h.alpn(), Some(&b"h2"[..]));
    assert_eq!(h.authority(), Some(&b"a.b"[..]));
    assert_eq!(h.unique_id(), Some(&[7u8][..]));
    assert_eq!(h.tlv(0xEE), Some(&[][..]));
    assert_eq!(h.tlv(0x30), None);
    assert_eq!(h.crc32c(), None);
    check_prefixes(&buf);
}

#[test]
fn v2_tlv_errors() {
    let with = |tlvs: &[u8]| v2(0x21, 0x11, &[&V4_BODY[..], tlvs].concat());
    let cases: &[(&[u8], ParseError)] = &[
        (&[0x01], ParseError::BadTlvLength { offset: 28 }),
        (&[0x01, 0x00], ParseError::BadTlvLength { offset: 28 }),
        (&[0x01, 0x00, 0x01], ParseError::BadTlvLength { offset: 28 }),
        (
            &[0x01, 0x00, 0x02, b'h'],
            ParseError::BadTlvLength { offset: 28 },
        ),
        (
            &[0x04, 0x00, 0x00, 0x01, 0xff, 0xff],
            ParseError::BadTlvLength { offset: 31 },
        ),
        (
            &[0x03, 0x00, 0x03, 0, 0, 0],
            ParseError::BadCrc32cLength { len: 3 },
        ),
        (
            &[0x03, 0x00, 0x05, 0, 0, 0, 0, 0],
            ParseError::BadCrc32cLength { len: 5 },
        ),
        (&[0x05, 0x00, 0x81], ParseError::BadTlvLength { offset: 28 }),
    ];
    for (tlvs, want) in cases {
        let buf = with(tlvs);
        assert_eq!(err(&buf), *want, "{tlvs:?}");
        check_prefixes(&buf);
    }
    let mut uid = vec![0x05, 0x00, 0x81];
    uid.extend_from_slice(&[0; 129]);
    assert_eq!(err(&with(&uid)), ParseError::UniqueIdTooLong { len: 129 });
    uid[2] = 0x80;
    uid.pop();
    assert_eq!(
        complete(&with(&uid)).unique_id().map(<[u8]>::len),
        Some(128)
    );
}

#[test]
fn v2_crc32c() {
    let good = encode_v2(
        sa("10.0.0.1:1"),
        sa("10.0.0.2:2"),
        &[Tlv::Authority("x"), Tlv::Crc32c],
    )
    .unwrap();
    let h = complete(&good);
    let at = good.len() - 4;
    let sent = u32::from_be_bytes(good[at..].try_into().unwrap());
    assert_eq!(h.crc32c(), Some(sent));
    let mut zeroed = good.clone();
    zeroed[at..].fill(0);
    assert_eq!(sent, crc32c(&zeroed));

    let mut bad = good.clone();
    bad[at + 3] ^= 0x80;
    assert_eq!(
        err(&bad),
        ParseError::BadCrc32c {
            sent: sent ^ 0x80,
            computed: sent
        }
    );
    // Any change to what it covers is caught (here a port byte).
    let mut bad = good.clone();
    bad[27] ^= 1;
    assert_eq!(err(&bad).reason(), "bad_crc32c");
    // Client data after the header is not covered.
    let mut more = good.clone();
    more.extend_from_slice(b"hello");
    assert_eq!(complete(&more).header_len, good.len());

    // Two CRC TLVs, even both right, are refused.
    let mut body = V4_BODY.to_vec();
    body.extend_from_slice(&[0x03, 0, 4, 0, 0, 0, 0, 0x03, 0, 4, 0, 0, 0, 0]);
    assert_eq!(err(&v2(0x21, 0x11, &body)), ParseError::DuplicateCrc32c);
}

#[test]
fn v2_crc32c_hand_computed() {
    // A header assembled by hand, its CRC computed by this test over the bytes with
    // the field zeroed, independently of the encoder.
    let mut buf = v2(
        0x21,
        0x11,
        &[&V4_BODY[..], &[0x03, 0x00, 0x04, 0, 0, 0, 0]].concat(),
    );
    let crc = crc32c(&buf);
    let n = buf.len();
    buf[n - 4..].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(complete(&buf).crc32c(), Some(crc));
    // Little-endian storage (a classic mistake) is refused.
    buf[n - 4..].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(err(&buf).reason(), "bad_crc32c");
}

#[test]
fn reasons_are_stable_and_distinct() {
    let all = [
        ParseError::BadSignature,
        ParseError::BadVersion(0),
        ParseError::BadCommand(0),
        ParseError::BadFamily(0),
        ParseError::BadTransport(0),
        ParseError::TruncatedAddresses { len: 0, need: 0 },
        ParseError::BadTlvLength { offset: 0 },
        ParseError::BadCrc32cLength { len: 0 },
        ParseError::DuplicateCrc32c,
        ParseError::BadCrc32c {
            sent: 0,
            computed: 0,
        },
        ParseError::UniqueIdTooLong { len: 0 },
        ParseError::V1TooLong,
        ParseError::BadV1LineEnding,
        ParseError::BadV1Syntax,
        ParseError::BadV1Protocol,
        ParseError::BadV1Address,
        ParseError::BadV1Port,
    ];
    let names: Vec<_> = all.iter().map(ParseError::reason).collect();
    assert_eq!(names, ParseError::REASONS);
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), all.len());
    assert_eq!(
        ParseError::BadCrc32c {
            sent: 1,
            computed: 2
        }
        .to_string(),
        "PROXY v2 CRC32C mismatch: header says 0x00000001, content is 0x00000002"
    );
}

/// Valid headers to mutate: v1 and v2, both families, with TLVs and CRC32C.
fn seeds() -> Vec<Vec<u8>> {
    let (a, b) = (sa("192.168.0.1:56324"), sa("192.168.0.11:443"));
    let (c, d) = (sa("[2001:db8::1]:1"), sa("[ffff::ffff]:65535"));
    vec![
        encode_v2_local(),
        encode_v2(a, b, &[]).unwrap(),
        encode_v2(c, d, &[]).unwrap(),
        encode_v2(a, d, &[Tlv::Crc32c]).unwrap(),
        encode_v2(
            a,
            b,
            &[
                Tlv::Alpn(b"h2"),
                Tlv::Authority("registry.example"),
                Tlv::UniqueId(&[9; 16]),
                Tlv::Crc32c,
            ],
        )
        .unwrap(),
        encode_v2(
            c,
            b,
            &[
                Tlv::Noop(3),
                Tlv::Other {
                    kind: 0x20,
                    value: &[1, 0, 0, 0, 0],
                },
            ],
        )
        .unwrap(),
        v2(0x21, 0x31, &[0x41; 216]),
        encode_v1(a, b).into_bytes(),
        encode_v1(c, d).into_bytes(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        b"PROXY UNKNOWN ffff:f::f ffff:f::f 65535 65535\r\n".to_vec(),
    ]
}

/// The invariants every input must satisfy; `seed` is the unmutated header.
fn check_invariants(buf: &[u8]) {
    match parse(buf) {
        Ok(Parsed::Incomplete { need }) => {
            assert!(
                need > buf.len() && need <= V2_MAX_LEN,
                "need {need} for {buf:?}"
            )
        }
        Ok(Parsed::Complete(h)) => {
            assert!(h.header_len <= buf.len() && h.header_len >= 15);
            assert!(
                h.header_len
                    <= if h.version == Version::V1 {
                        V1_MAX_LEN
                    } else {
                        V2_MAX_LEN
                    }
            );
            assert_eq!(h.src.is_some(), h.dst.is_some());
            // The TLV iterator covers the validated area exactly.
            let covered: usize = h.tlvs().map(|t| 3 + t.value.len()).sum();
            assert_eq!(covered, h.tlv_bytes.len());
            // Whatever parsed re-encodes into a header that parses to the same
            // addresses.
            if let (Some(s), Some(d)) = (h.src, h.dst) {
                let again = encode_v2(s, d, &[Tlv::Crc32c]).unwrap();
                let Ok(Parsed::Complete(h2)) = parse(&again) else {
                    panic!("re-encode of {buf:?}")
                };
                assert_eq!(
                    h2.src.map(super::super::header::canonical),
                    Some(super::super::header::canonical(s))
                );
                assert_eq!(
                    h2.dst.map(super::super::header::canonical),
                    Some(super::super::header::canonical(d))
                );
                let line = encode_v1(s, d);
                let Ok(Parsed::Complete(h1)) = parse(line.as_bytes()) else {
                    panic!("v1 of {buf:?}")
                };
                assert_eq!(h1.header_len, line.len());
            }
            // Bytes after the header never change it.
            let mut more = buf[..h.header_len].to_vec();
            more.push(0x42);
            let Ok(Parsed::Complete(h3)) = parse(&more) else {
                panic!("suffix changed {buf:?}")
            };
            assert_eq!(h3.header_len, h.header_len);
        }
        Err(e) => assert!(ParseError::REASONS.contains(&e.reason())),
    }
}

#[test]
fn mini_fuzz_mutated_headers() {
    // Deterministic stand-in for `cargo fuzz` in plain `cargo test`: mutate valid
    // headers (bit flips, byte sets, inserts, deletes, truncation, length-field
    // edits, splices) and check the invariants plus prefix monotonicity.
    let seeds = seeds();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut outcomes = [0usize; 3];
    for iter in 0..100_000 {
        let mut buf = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(4) {
            let len = buf.len();
            match rng.below(8) {
                0 if len > 0 => buf[rng.below(len)] ^= 1 << rng.below(8),
                1 if len > 0 => buf[rng.below(len)] = rng.next_u64() as u8,
                2 => buf.insert(rng.below(len + 1), rng.next_u64() as u8),
                3 if len > 0 => {
                    buf.remove(rng.below(len));
                }
                4 => buf.truncate(rng.below(len + 1)),
                // The v2 length field and TLV lengths are the interesting bytes.
                5 if len >= 16 => buf[14 + rng.below(2)] = rng.next_u64() as u8,
                6 if len > 28 => {
                    let at = 16 + rng.below(len - 16);
                    buf[at] = [0, 1, 3, 4, 5, 0xff][rng.below(6)];
                }
                _ => {
                    let other = &seeds[rng.below(seeds.len())];
                    let from = rng.below(other.len());
                    let at = rng.below(len + 1);
                    buf.splice(at..at, other[from..].iter().copied().take(rng.below(40)));
                }
            }
        }
        check_invariants(&buf);
        // Prefix monotonicity is costlier: check a sample of inputs, all prefixes.
        if iter % 64 == 0 {
            check_prefixes(&buf);
        }
        outcomes[match parse(&buf) {
            Ok(Parsed::Incomplete { .. }) => 0,
            Ok(Parsed::Complete(_)) => 1,
            Err(_) => 2,
        }] += 1;
    }
    // The mutations reach all three outcomes, not just errors.
    assert!(outcomes.iter().all(|&n| n > 1000), "{outcomes:?}");
}

#[test]
fn mini_fuzz_random_bytes() {
    // Random bytes with the right first byte, so both parsers get exercised.
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let len = rng.below(120);
        let mut buf: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if let Some(first) = buf.first_mut() {
            *first = [b'\r', b'P', 0x16][rng.below(3)];
        }
        if buf.len() >= 12 && rng.below(2) == 0 {
            buf[..12].copy_from_slice(&V2_SIGNATURE);
        }
        if buf.len() >= 6 && buf[0] == b'P' && rng.below(2) == 0 {
            buf[..6].copy_from_slice(b"PROXY ");
        }
        check_invariants(&buf);
    }
}
