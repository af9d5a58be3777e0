//! The byte-level parts of the proxy path. They touch no socket, which keeps them
//! unit-testable and fuzzable (`fuzz/`): the PROXY header encoder ([`header`]), the
//! `--accept-proxy` parser for untrusted input ([`parse`]), the CRC32C of the checksum
//! TLV ([`crc32c`]) and the TLS ClientHello peek that fills the AUTHORITY and ALPN TLVs
//! without terminating TLS ([`tls`]).

pub mod crc32c;
pub mod header;
pub mod parse;
pub mod tls;
