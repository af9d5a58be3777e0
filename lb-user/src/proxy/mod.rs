//! PROXY protocol support for `proxy-v2` services, as pure byte-level code: the header
//! encoder ([`header`]), the `--accept-proxy` parser for untrusted input ([`parse`]),
//! the CRC32C its checksum TLV needs ([`crc32c`]) and the TLS ClientHello peek that
//! fills the AUTHORITY and ALPN TLVs without terminating TLS ([`tls`]).
//!
//! Nothing here touches a socket: the daemon feeds these functions the bytes it peeked
//! or is about to write, which keeps them unit-testable and fuzzable (`fuzz/`).

pub mod crc32c;
pub mod header;
pub mod parse;
pub mod route;
pub mod splice;
pub mod table;
pub mod tls;
