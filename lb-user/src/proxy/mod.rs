//! `proxy-v2` services: the daemon accepts each client connection (steered to it by
//! the `lb_lookup` sk_lookup program, [`route`] makes the VIP local), picks the backend
//! with the kernel path's Maglev table ([`table`]), writes a PROXY protocol header
//! ([`header`]) and hands both sockets to a splice engine ([`splice`]) that moves the
//! bytes without copying them through userspace ([`server`] ties these together).
//!
//! The byte-level parts touch no socket, which keeps them unit-testable and fuzzable
//! (`fuzz/`): the encoder, the `--accept-proxy` parser for untrusted input ([`parse`]),
//! the CRC32C of the checksum TLV ([`crc32c`]) and the TLS ClientHello peek that fills
//! the AUTHORITY and ALPN TLVs without terminating TLS ([`tls`]).

pub mod crc32c;
pub mod header;
pub mod parse;
pub mod route;
pub mod server;
pub mod splice;
pub mod table;
pub mod tls;
