//! `proxy-v2` services: the daemon accepts each client connection (steered to it by
//! the `lb_lookup` sk_lookup program, [`route`] makes the VIP local), picks the backend
//! with the kernel path's Maglev table ([`table`]), writes a PROXY protocol header
//! ([`codec::header`]) and hands both sockets to a splice engine ([`splice`]) that moves
//! the bytes without copying them through userspace ([`server`] ties these together).

pub mod codec;
pub mod route;
pub mod server;
pub mod splice;
pub mod table;
