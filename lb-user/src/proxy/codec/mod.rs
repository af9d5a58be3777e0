//! The byte-level parts of the proxy path. They touch no socket, which keeps them
//! unit-testable and fuzzable (`fuzz/`): the PROXY header encoder ([`header`]), the
//! `--accept-proxy` parser for untrusted input ([`parse`]) and the TLS ClientHello peek
//! that fills the AUTHORITY and ALPN TLVs without terminating TLS ([`tls`]). The checksum
//! TLV's CRC32C comes from the `crc32c` crate (the CPU's CRC instructions).

pub mod header;
pub mod parse;
pub mod tls;
