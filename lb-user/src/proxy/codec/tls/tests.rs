use super::*;

// Real ClientHellos, captured on this machine (OpenSSL 3.0): python3's ssl module
// writing to a memory BIO (SNI registry.example, ALPN h2 + http/1.1; no SNI and no
// ALPN; TLS 1.2 only), `curl -k --resolve curl.registry.example:PORT:127.0.0.1
// https://curl.registry.example:PORT/`, and `openssl s_client -servername
// s-client.example -alpn h2,spdy/3.1,http/1.1` against a socket that recorded them.
const PY_SNI_ALPN: &str = concat!(
    "1603010200010001fc03030fc292b1d7735d3bae2205f46272e7019483809d21573f75abc3b07e4784a230209f814cbc",
    "c2b0c00cb8fa6b23154f595804c8b229c9ad9b19ea3bc002268c756e0024130213031301c02cc030c02bc02fcca9cca8",
    "c024c028c023c027009f009e006b006700ff0100018f00000015001300001072656769737472792e6578616d706c6500",
    "0b000403000102000a00160014001d0017001e0019001801000101010201030104002300000010000e000c0268320868",
    "7474702f312e310016000000170000000d002a0028040305030603080708080809080a080b0804080508060401050106",
    "01030303010302040205020602002b00050403040303002d00020101003300260024001d00207db0e29dc4f375660ea8",
    "bc6cf8762c33d08ac0f3d1dad1f2cc522cd50ebfcc60001500cb00000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "00000000000000000000000000000000000000000000000000000000000000000000000000",
);
const PY_NO_SNI: &str = concat!(
    "1603010200010001fc0303e70a8b5c48b10072ebb9cbb17135cbae51f2ff786bae7d893cc0e13c6ead726b20192da70f",
    "74e180beba3362ea85cc411cd02f259d3482248468f754bdb1901af20024130213031301c02cc030c02bc02fcca9cca8",
    "c024c028c023c027009f009e006b006700ff0100018f000b000403000102000a00160014001d0017001e001900180100",
    "0101010201030104002300000016000000170000000d002a0028040305030603080708080809080a080b080408050806",
    "040105010601030303010302040205020602002b00050403040303002d00020101003300260024001d00209f82713d88",
    "6ac5a323c87fd3557e012a497393f3344b1de0d37015b3468cac0c001500f60000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "00000000000000000000000000000000000000000000000000000000000000000000000000",
);
const PY_TLS12: &str = concat!(
    "16030100c2010000be03034852b55fc4623fd6927995040c53a00155e60280f91e072198d4153154d4385400001ec02c",
    "c030c02bc02fcca9cca8c024c028c023c027009f009e006b006700ff0100007700000012001000000d746c7331322e65",
    "78616d706c65000b000403000102000a000c000a001d0017001e00190018002300000010000b000908687474702f312e",
    "310016000000170000000d002a0028040305030603080708080809080a080b0804080508060401050106010303030103",
    "02040205020602",
);
const CURL: &str = concat!(
    "1603010200010001fc0303c223d14871316ad61828d7be8147d73de47db5143117d507b53b4c03eb422196203b91ebea",
    "6133eea33ee4e19087de32482d1c6e800121e107ba99c2132670b740003e130213031301c02cc030009fcca9cca8ccaa",
    "c02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff01000175",
    "0000001a00180000156375726c2e72656769737472792e6578616d706c65000b000403000102000a00160014001d0017",
    "001e00190018010001010102010301040010000e000c02683208687474702f312e31001600000017000000310000000d",
    "002a0028040305030603080708080809080a080b080408050806040105010601030303010302040205020602002b0009",
    "080304030303020301002d00020101003300260024001d0020f9f8637faa24fed28ca535d70a389442ba736916b1ca18",
    "4cc612ec52156e3458001500a80000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "00000000000000000000000000000000000000000000000000000000000000000000000000",
);
const S_CLIENT: &str = concat!(
    "1603010158010001540303948facd15653b9c4ed8254a8a1256dc16df241387f93300f8d114c04d2a1a30320afad464c",
    "6ceb61c4cbf24cd8283bcd88040fd496ed6053cbcdf84eb6d59fd879003e130213031301c02cc030009fcca9cca8ccaa",
    "c02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff010000cd",
    "000000150013000010732d636c69656e742e6578616d706c65000b000403000102000a00160014001d0017001e001900",
    "18010001010102010301040023000000100017001502683208737064792f332e3108687474702f312e31001600000017",
    "0000000d002a0028040305030603080708080809080a080b080408050806040105010601030303010302040205020602",
    "002b0009080304030303020301002d00020101003300260024001d002096b82907db8ad5591bb9fa4e254c22e5fdb95e",
    "b7790fa2ad3d31e6340cba4c4f",
);

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A captured hello: where it came from, its bytes, its SNI and ALPN.
type Capture = (
    &'static str,
    Vec<u8>,
    Option<&'static str>,
    Vec<&'static [u8]>,
);

/// Every real hello with the SNI and ALPN it carries.
fn real() -> Vec<Capture> {
    vec![
        (
            "python",
            unhex(PY_SNI_ALPN),
            Some("registry.example"),
            vec![b"h2", b"http/1.1"],
        ),
        ("python no sni", unhex(PY_NO_SNI), None, vec![]),
        (
            "python tls1.2",
            unhex(PY_TLS12),
            Some("tls12.example"),
            vec![b"http/1.1"],
        ),
        (
            "curl",
            unhex(CURL),
            Some("curl.registry.example"),
            vec![b"h2", b"http/1.1"],
        ),
        (
            "s_client",
            unhex(S_CLIENT),
            Some("s-client.example"),
            vec![b"h2", b"spdy/3.1", b"http/1.1"],
        ),
    ]
}

fn hello_of(sni: Option<&str>, alpn: &[&[u8]]) -> Peek {
    Peek::Hello {
        sni: sni.map(str::to_owned),
        alpn: alpn.iter().map(|p| p.to_vec()).collect(),
    }
}

/// The handshake message (without record header) of a single-record hello.
fn message(record: &[u8]) -> &[u8] {
    &record[RECORD_HEADER_LEN..]
}

/// `msg` split into records of the given sizes (the last takes the rest).
fn records(msg: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = msg;
    for (i, &n) in sizes.iter().enumerate() {
        let n = if i + 1 == sizes.len() {
            rest.len()
        } else {
            n.min(rest.len())
        };
        let (frag, tail) = rest.split_at(n);
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(frag.len() as u16).to_be_bytes());
        out.extend_from_slice(frag);
        rest = tail;
    }
    out
}

/// A synthetic ClientHello record with these extensions (None: no extension block).
fn build(exts: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x11; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    if let Some(exts) = exts {
        let mut block = Vec::new();
        for (kind, data) in exts {
            block.extend_from_slice(&kind.to_be_bytes());
            block.extend_from_slice(&(data.len() as u16).to_be_bytes());
            block.extend_from_slice(data);
        }
        body.extend_from_slice(&(block.len() as u16).to_be_bytes());
        body.extend_from_slice(&block);
    }
    let mut msg = vec![0x01];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    records(&msg, &[msg.len()])
}

fn sni_ext(names: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (ty, name) in names {
        list.push(*ty);
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut data = (list.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    data
}

fn alpn_ext(protos: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for p in protos {
        list.push(p.len() as u8);
        list.extend_from_slice(p);
    }
    let mut data = (list.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    data
}

fn malformed(buf: &[u8]) -> HelloError {
    match peek_client_hello(buf) {
        Peek::Malformed(e) => e,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn real_hellos() {
    for (name, bytes, sni, alpn) in real() {
        assert_eq!(peek_client_hello(&bytes), hello_of(sni, &alpn), "{name}");
        // Bytes after the hello (early data, a second message) do not matter.
        let mut more = bytes.clone();
        more.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0xAA]);
        assert_eq!(
            peek_client_hello(&more),
            hello_of(sni, &alpn),
            "{name} + more"
        );
    }
}

#[test]
fn every_prefix_needs_more() {
    for (name, bytes, ..) in real() {
        for k in 0..bytes.len() {
            match peek_client_hello(&bytes[..k]) {
                Peek::NeedMore { need } => {
                    assert!(
                        need > k && need <= bytes.len(),
                        "{name} prefix {k}: need {need}"
                    )
                }
                other => panic!("{name} prefix {k}: {other:?}"),
            }
        }
    }
}

#[test]
fn split_over_records() {
    for (name, bytes, sni, alpn) in real() {
        let msg = message(&bytes);
        let want = hello_of(sni, &alpn);
        for sizes in [
            &[1, 1][..],
            &[4, 100],
            &[3, 1, 2, 50, 60],
            &[msg.len() - 1, 1],
        ] {
            let split = records(msg, sizes);
            assert_eq!(peek_client_hello(&split), want, "{name} {sizes:?}");
            for k in 0..split.len() {
                assert!(
                    matches!(peek_client_hello(&split[..k]), Peek::NeedMore { need } if need > k),
                    "{name} {sizes:?} prefix {k}"
                );
            }
        }
        // Up to 32 records are put back together; 33 are refused.
        let even = |n: usize| vec![msg.len().div_ceil(n); n];
        assert_eq!(
            peek_client_hello(&records(msg, &even(MAX_RECORDS))),
            want,
            "{name}"
        );
        let tiny = records(msg, &[1; MAX_RECORDS + 1]);
        assert_eq!(malformed(&tiny), HelloError::TooFragmented, "{name}");
    }
}

#[test]
fn not_tls() {
    for buf in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n",
        &[0x80, 0x2e, 0x01, 0x00, 0x02], // SSLv2-compatible hello
        &[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28], // an alert
        &[0x17],
    ] {
        assert_eq!(peek_client_hello(buf), Peek::NotTls, "{buf:?}");
    }
    assert_eq!(peek_client_hello(&[]), Peek::NeedMore { need: 1 });
}

#[test]
fn record_header_errors() {
    let good = unhex(PY_TLS12);
    let mut v = good.clone();
    v[1] = 0x02;
    assert_eq!(malformed(&v), HelloError::BadRecordVersion);
    // Caught as soon as the byte is there.
    assert_eq!(malformed(&v[..2]), HelloError::BadRecordVersion);
    let mut v = good.clone();
    v[3..5].copy_from_slice(&[0, 0]);
    assert_eq!(malformed(&v), HelloError::EmptyRecord);
    let mut v = good.clone();
    v[3..5].copy_from_slice(&0x4001u16.to_be_bytes());
    assert_eq!(malformed(&v[..5]), HelloError::RecordTooLong);
    // The hello continues in a record that is not a handshake one.
    let msg = message(&good);
    let mut v = records(msg, &[10, msg.len()]);
    v[15] = 0x17;
    assert_eq!(malformed(&v), HelloError::InterleavedRecord);
    assert_eq!(malformed(&v[..16]), HelloError::InterleavedRecord);
    let mut v = records(msg, &[10, msg.len()]);
    v[16] = 0x04;
    assert_eq!(malformed(&v), HelloError::BadRecordVersion);
}

#[test]
fn handshake_header_errors() {
    let good = unhex(PY_TLS12);
    let mut v = good.clone();
    v[5] = 0x02; // ServerHello
    assert_eq!(malformed(&v), HelloError::NotClientHello);
    assert_eq!(malformed(&v[..6]), HelloError::NotClientHello);
    // Declared longer than the bound: refused before waiting for it.
    let mut v = good.clone();
    v[6..9].copy_from_slice(&[0x00, 0x40, 0x00]); // 16384 + 4 > bound
    assert_eq!(malformed(&v[..9]), HelloError::HelloTooLarge);
    let mut v = good.clone();
    v[6..9].copy_from_slice(&[0xff, 0xff, 0xff]);
    assert_eq!(malformed(&v), HelloError::HelloTooLarge);
    // Declared 1 byte longer than the record: the rest must come in another record.
    let mut v = good.clone();
    let len = u32::from_be_bytes([0, v[6], v[7], v[8]]) + 1;
    v[6..9].copy_from_slice(&len.to_be_bytes()[1..]);
    assert_eq!(peek_client_hello(&v), Peek::NeedMore { need: v.len() + 5 });
    // Declared 1 byte shorter: the last extension is cut.
    let mut v = good.clone();
    let len = u32::from_be_bytes([0, v[6], v[7], v[8]]) - 1;
    v[6..9].copy_from_slice(&len.to_be_bytes()[1..]);
    assert_eq!(malformed(&v), HelloError::BadExtensions);
}

#[test]
fn largest_hello_fits_the_peek_bound() {
    // A hello of exactly MAX_HELLO_LEN bytes (a big padding extension, 21) in two
    // records.
    let fixed = build(Some(&[(21, vec![])])).len() - RECORD_HEADER_LEN;
    let pad = MAX_HELLO_LEN - fixed;
    let exact = build(Some(&[(21, vec![0; pad])]));
    let msg = &exact[RECORD_HEADER_LEN..];
    assert_eq!(msg.len(), MAX_HELLO_LEN);
    let split = records(msg, &[MAX_RECORD_LEN, 1]);
    assert!(split.len() <= MAX_PEEK_LEN);
    assert_eq!(peek_client_hello(&split), hello_of(None, &[]));
    let over = build(Some(&[(21, vec![0; pad + 1])]));
    let split = records(&over[RECORD_HEADER_LEN..], &[MAX_RECORD_LEN, 2]);
    assert_eq!(malformed(&split), HelloError::HelloTooLarge);
}

#[test]
fn synthetic_hellos() {
    assert_eq!(peek_client_hello(&build(None)), hello_of(None, &[]));
    assert_eq!(peek_client_hello(&build(Some(&[]))), hello_of(None, &[]));
    let v = build(Some(&[
        (0xff01, vec![0]),
        (EXT_SERVER_NAME, sni_ext(&[(0, b"a.example")])),
        (EXT_ALPN, alpn_ext(&[b"h2"])),
    ]));
    assert_eq!(peek_client_hello(&v), hello_of(Some("a.example"), &[b"h2"]));
    // Unknown name types are skipped.
    let v = build(Some(&[(
        EXT_SERVER_NAME,
        sni_ext(&[(7, b"x"), (0, b"b.example")]),
    )]));
    assert_eq!(peek_client_hello(&v), hello_of(Some("b.example"), &[]));
    let v = build(Some(&[(EXT_SERVER_NAME, sni_ext(&[(7, b"x")]))]));
    assert_eq!(peek_client_hello(&v), hello_of(None, &[]));
}

#[test]
fn extension_errors() {
    type Ext = (u16, Vec<u8>);
    let cases: Vec<(Vec<Ext>, HelloError)> = vec![
        (
            vec![
                (EXT_SERVER_NAME, sni_ext(&[(0, b"a")])),
                (EXT_SERVER_NAME, sni_ext(&[(0, b"b")])),
            ],
            HelloError::DuplicateExtension,
        ),
        (
            vec![
                (EXT_ALPN, alpn_ext(&[b"h2"])),
                (EXT_ALPN, alpn_ext(&[b"h2"])),
            ],
            HelloError::DuplicateExtension,
        ),
        (
            vec![(EXT_SERVER_NAME, sni_ext(&[(0, b"a b")]))],
            HelloError::BadSni,
        ),
        (
            vec![(EXT_SERVER_NAME, sni_ext(&[(0, b"a\x00")]))],
            HelloError::BadSni,
        ),
        (
            vec![(EXT_SERVER_NAME, sni_ext(&[(0, "é".as_bytes())]))],
            HelloError::BadSni,
        ),
        (
            vec![(EXT_SERVER_NAME, sni_ext(&[(0, b"")]))],
            HelloError::BadSni,
        ),
        (
            vec![(EXT_SERVER_NAME, sni_ext(&[(0, b"a"), (0, b"b")]))],
            HelloError::BadSni,
        ),
        (vec![(EXT_SERVER_NAME, sni_ext(&[]))], HelloError::BadSni),
        (vec![(EXT_SERVER_NAME, vec![])], HelloError::BadSni),
        (
            vec![(EXT_SERVER_NAME, vec![0, 4, 0, 0, 9, b'a'])],
            HelloError::BadSni,
        ),
        (
            vec![(EXT_SERVER_NAME, vec![0, 1, 0, 0])],
            HelloError::BadSni,
        ),
        (vec![(EXT_ALPN, alpn_ext(&[]))], HelloError::BadAlpn),
        (
            vec![(EXT_ALPN, alpn_ext(&[b"h2", b""]))],
            HelloError::BadAlpn,
        ),
        (
            vec![(EXT_ALPN, vec![0, 3, 5, b'h', b'2'])],
            HelloError::BadAlpn,
        ),
        (
            vec![(EXT_ALPN, vec![0, 3, 2, b'h', b'2', 0])],
            HelloError::BadAlpn,
        ),
        (vec![(EXT_ALPN, vec![0])], HelloError::BadAlpn),
    ];
    for (exts, want) in cases {
        assert_eq!(malformed(&build(Some(&exts))), want, "{exts:?}");
    }
}

#[test]
fn body_errors() {
    let good = build(Some(&[(EXT_SERVER_NAME, sni_ext(&[(0, b"a")]))]));
    // Offsets in the record: 5 record header, 4 handshake header, 2 version,
    // 32 random, then session id length at 43.
    let body = 9;
    let mut v = good.clone();
    v[body + 34] = 33;
    assert_eq!(malformed(&v), HelloError::BadSessionId);
    let mut v = good.clone();
    v[body + 35..body + 37].copy_from_slice(&[0, 3]);
    assert_eq!(malformed(&v), HelloError::BadCipherSuites);
    let mut v = good.clone();
    v[body + 35..body + 37].copy_from_slice(&[0, 0]);
    assert_eq!(malformed(&v), HelloError::BadCipherSuites);
    let mut v = good.clone();
    v[body + 39] = 0;
    assert_eq!(malformed(&v), HelloError::BadCompression);
    // The extension block's length disagrees with the message.
    let mut v = good.clone();
    v[body + 42] += 1;
    assert_eq!(malformed(&v), HelloError::BadExtensions);
    let mut v = good.clone();
    v[body + 42] -= 1;
    assert_eq!(malformed(&v), HelloError::BadExtensions);
    // A hello cut inside its fixed fields (message length shortened to match).
    for cut in [1, 10, 34, 36, 38, 40] {
        let mut msg = good[5..9 + cut].to_vec();
        msg[1..4].copy_from_slice(&(cut as u32).to_be_bytes()[1..]);
        let rec = records(&msg, &[msg.len()]);
        assert_eq!(malformed(&rec), HelloError::Truncated, "cut {cut}");
    }
}

#[test]
fn corrupted_real_hellos_never_panic() {
    for (name, bytes, ..) in real() {
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut v = bytes.clone();
                v[i] ^= 1 << bit;
                match peek_client_hello(&v) {
                    Peek::NeedMore { need } => {
                        assert!(need > v.len() && need <= MAX_PEEK_LEN, "{name} {i}.{bit}")
                    }
                    Peek::NotTls => assert_eq!(i, 0),
                    Peek::Malformed(e) => assert!(!e.reason().is_empty()),
                    Peek::Hello { .. } => {}
                }
            }
        }
    }
}

#[test]
fn mini_fuzz_mutated_hellos() {
    // Deterministic stand-in for `cargo fuzz` in plain `cargo test` (xorshift64*):
    // mutate real hellos (single or split over records) and check the invariants of
    // fuzz/fuzz_targets/client_hello.rs.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut seeds: Vec<Vec<u8>> = real().into_iter().map(|c| c.1).collect();
    let split: Vec<Vec<u8>> = seeds
        .iter()
        .map(|s| records(message(s), &[7, 90, 3]))
        .collect();
    seeds.extend(split);
    let mut hellos = 0;
    for _ in 0..20_000 {
        let mut v = seeds[next() as usize % seeds.len()].clone();
        for _ in 0..=next() % 3 {
            let len = v.len();
            let at = next() as usize % len.max(1);
            match next() % 5 {
                0 if len > 0 => v[at] ^= 1 << (next() % 8),
                1 if len > 0 => v[at] = next() as u8,
                2 => v.truncate(at),
                3 if len > 0 => {
                    v.remove(at);
                }
                _ => v.insert(at, next() as u8),
            }
        }
        let whole = peek_client_hello(&v);
        match &whole {
            Peek::NeedMore { need } => assert!(*need > v.len() && *need <= MAX_PEEK_LEN),
            Peek::NotTls => assert_ne!(v.first(), Some(&0x16)),
            Peek::Malformed(_) => {}
            Peek::Hello { sni, alpn } => {
                hellos += 1;
                assert!(sni.iter().all(|s| s.bytes().all(|b| b.is_ascii_graphic())));
                assert!(alpn.iter().all(|p| !p.is_empty()));
            }
        }
        for k in [0, 1, 5, 9, v.len() / 2, v.len().saturating_sub(1)] {
            if k < v.len() {
                match peek_client_hello(&v[..k]) {
                    Peek::NeedMore { need } => assert!(need > k),
                    p => assert_eq!(p, whole, "prefix {k} of {v:?}"),
                }
            }
        }
    }
    assert!(hellos > 1000, "{hellos}");
}

#[test]
fn fuzz_regression_late_big_record_within_peek_bound() {
    // Found by `cargo fuzz run client_hello -- -max_len=20000`: 29 one-byte records,
    // then one declaring 16384 bytes. Asking for that whole record would exceed
    // MAX_PEEK_LEN; only the bytes the hello needs are asked for.
    let crash = unhex(concat!(
        "16037a0001011603ff00010016037a00010116037a0001011603ff00010016037a00010116037a0001011603ff000100",
        "16037a00010116037a0001011603ff00010016037a0001011603ff00010016037a0001011603ff00010016037a000101",
        "16033200010016037a00010116039a0001011603ff00010016037a0001011603ff0001001603ff00010016037a000101",
        "1603ff00010016037a00010116033200010016037a00010116037a0001011603ff4000010016037a0001011603ff0001",
        "0016037a010816030100c2010000be030348927995040c53a00155e60280f91e072198d4153154d4385400001ec02cc0",
        "30c02bc02fcca9cca8c024c028c058c027009f009e006b006700ff010000770000001200100000000000ff0100007a00",
        "01011603ff00010016037a00010116037a0001011603ff00010016037a00010116037a0003011603ff00010016037a20",
        "010116037a0001011603ff00010016037affffff00100000000000000000000000000000000001030303010402050206",
        "02",
    ));
    match peek_client_hello(&crash) {
        Peek::NeedMore { need } => assert!(need > crash.len() && need <= MAX_PEEK_LEN),
        other => panic!("{other:?}"),
    }
    // The same shape built from a real hello: 31 one-byte records, then the rest of
    // the message in a record padded to 16 KiB.
    let real = unhex(PY_SNI_ALPN);
    let msg = message(&real);
    let mut v = records(&msg[..31], &[1; 31]);
    v.extend_from_slice(&[0x16, 0x03, 0x01, 0x40, 0x00]);
    let tail_at = v.len();
    v.extend_from_slice(&msg[31..]);
    v.resize(tail_at + MAX_RECORD_LEN, 0);
    assert!(v.len() > MAX_PEEK_LEN);
    for k in 0..v.len() {
        match peek_client_hello(&v[..k]) {
            Peek::NeedMore { need } => {
                assert!(need > k && need <= MAX_PEEK_LEN && need <= tail_at + msg.len() - 31)
            }
            p => {
                assert!(k >= tail_at + msg.len() - 31, "{k}: {p:?}");
                assert_eq!(p, hello_of(Some("registry.example"), &[b"h2", b"http/1.1"]));
            }
        }
    }
}

#[test]
fn reasons_are_distinct() {
    let all = [
        HelloError::BadRecordVersion,
        HelloError::EmptyRecord,
        HelloError::RecordTooLong,
        HelloError::InterleavedRecord,
        HelloError::TooFragmented,
        HelloError::NotClientHello,
        HelloError::HelloTooLarge,
        HelloError::Truncated,
        HelloError::BadSessionId,
        HelloError::BadCipherSuites,
        HelloError::BadCompression,
        HelloError::BadExtensions,
        HelloError::DuplicateExtension,
        HelloError::BadSni,
        HelloError::BadAlpn,
    ];
    let mut names: Vec<_> = all.iter().map(HelloError::reason).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all.len());
    assert!(
        names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    );
}
