//! Feeds arbitrary bytes to the ClientHello peek: it must never panic, never ask for more
//! than its bound, and a prefix must either need more or end the way the whole does.
#![no_main]

use lb_user::proxy::codec::tls::{MAX_PEEK_LEN, Peek, peek_client_hello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = peek_client_hello(data);
    match &whole {
        Peek::NeedMore { need } => assert!(*need > data.len() && *need <= MAX_PEEK_LEN),
        Peek::NotTls => assert_ne!(data.first(), Some(&0x16)),
        Peek::Malformed(e) => assert!(!e.reason().is_empty()),
        Peek::Hello { sni, alpn } => {
            if let Some(s) = sni {
                assert!(!s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()));
            }
            assert!(alpn.iter().all(|p| !p.is_empty() && p.len() < 256));
        }
    }
    if !data.is_empty() && !matches!(whole, Peek::NotTls) {
        assert_eq!(data.first(), Some(&0x16));
    }
    let len = data.len();
    for k in [0, 1, 5, 9, len / 2, len.saturating_sub(1)] {
        if k >= len {
            continue;
        }
        match peek_client_hello(&data[..k]) {
            Peek::NeedMore { need } => assert!(need > k && need <= MAX_PEEK_LEN),
            p => assert_eq!(p, whole, "prefix {k}"),
        }
    }
});
