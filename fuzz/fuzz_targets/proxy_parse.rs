//! Feeds arbitrary bytes to the `--accept-proxy` parser: it must never panic, and what it
//! accepts must be consistent (lengths within the input and the spec's bounds, prefixes
//! incomplete or failing the same way, accepted headers re-encoding to the same thing).
#![no_main]

use lb_user::proxy::codec::header::{
    Tlv, V1_MAX_LEN, V2_MAX_LEN, canonical, encode_v1, encode_v2, tlv_type,
};
use lb_user::proxy::codec::parse::{ParseError, Parsed, Version, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    match &whole {
        Ok(Parsed::Incomplete { need }) => {
            assert!(*need > data.len() && *need <= V2_MAX_LEN, "need {need}");
        }
        Err(e) => assert!(ParseError::REASONS.contains(&e.reason())),
        Ok(Parsed::Complete(h)) => {
            let max = match h.version {
                Version::V1 => V1_MAX_LEN,
                Version::V2 => V2_MAX_LEN,
            };
            assert!(h.header_len <= data.len() && h.header_len <= max);
            assert_eq!(h.src.is_some(), h.dst.is_some());
            // The header alone parses the same; bytes after it do not matter.
            let alone = parse(&data[..h.header_len]);
            assert_eq!(alone.as_ref(), Ok(&Parsed::Complete(h.clone())));

            if let (Some(src), Some(dst)) = (h.src, h.dst) {
                // Re-encode the addresses and TLVs; the result must parse back to them.
                let tlvs: Vec<Tlv<'_>> = h
                    .tlvs()
                    .map(|t| match t.kind {
                        tlv_type::CRC32C => Tlv::Crc32c,
                        kind => Tlv::Other { kind, value: t.value },
                    })
                    .collect();
                if let Ok(again) = encode_v2(src, dst, &tlvs) {
                    let Ok(Parsed::Complete(h2)) = parse(&again) else {
                        panic!("re-encoded header does not parse: {again:?}");
                    };
                    assert_eq!(h2.src.map(canonical), Some(canonical(src)));
                    assert_eq!(h2.dst.map(canonical), Some(canonical(dst)));
                    let kinds = |h: &lb_user::proxy::codec::parse::Header<'_>| {
                        h.tlvs()
                            .filter(|t| t.kind != tlv_type::CRC32C)
                            .map(|t| (t.kind, t.value.to_vec()))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(kinds(&h2), kinds(h));
                }
                let line = encode_v1(src, dst);
                let Ok(Parsed::Complete(h1)) = parse(line.as_bytes()) else {
                    panic!("v1 of parsed addresses does not parse: {line:?}");
                };
                assert_eq!(h1.src.map(canonical), Some(canonical(src)));
                assert_eq!(h1.dst.map(canonical), Some(canonical(dst)));
            }
        }
    }
    // Monotonic: a prefix is incomplete or ends the way the whole input does. Checking
    // every prefix is quadratic; a few cut points catch the off-by-ones.
    let len = data.len();
    for k in [0, 1, len / 3, len / 2, len.saturating_sub(2), len.saturating_sub(1)] {
        if k >= len {
            continue;
        }
        match (parse(&data[..k]), &whole) {
            (Ok(Parsed::Incomplete { need }), _) => assert!(need > k && need <= V2_MAX_LEN),
            (Ok(Parsed::Complete(p)), Ok(Parsed::Complete(w))) => assert_eq!(&p, w),
            (Err(p), Err(w)) => assert_eq!(&p, w),
            (p, w) => panic!("prefix {k} gives {p:?}, the whole {w:?}"),
        }
    }
});
