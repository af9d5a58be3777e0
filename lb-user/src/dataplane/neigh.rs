//! Neighbour warm-up. The XDP program forwards with the MAC addresses the kernel's
//! neighbour table knows (bpf_fib_lookup); a packet that meets an unresolved next hop is
//! handed to the TC program, which sends it through the kernel's neighbour resolution
//! (`passed_no_neighbour_in`/`_out`): correct, but slower than XDP. So the daemon resolves
//! the backends ahead of traffic: an ICMP echo to each makes the kernel ARP/ND for it, and
//! it warms again when `passed_no_neighbour_in` moves.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use tracing::debug;

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// Sends one ICMP echo request to each address. Best effort: failures are logged at debug
/// level (a backend that does not answer is the health checker's business, not ours).
pub fn warm(addrs: &[IpAddr]) {
    for ip in addrs {
        if let Err(e) = ping(*ip) {
            debug!(backend = %ip, cause = %e, "neighbour warm-up ping failed");
        }
    }
}

fn ping(ip: IpAddr) -> std::io::Result<()> {
    let (domain, proto, kind) = match ip {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, ICMP_ECHO_REQUEST),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, ICMPV6_ECHO_REQUEST),
    };
    let sock = Socket::new(domain, Type::RAW, Some(proto))?;
    sock.set_nonblocking(true)?;
    let mut msg = [kind, 0, 0, 0, 0x6c, 0x62, 0, 1];
    if ip.is_ipv4() {
        // ICMPv6 raw sockets get their checksum from the kernel; ICMPv4 ones do not.
        let sum = internet_checksum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    sock.send_to(&msg, &SockAddr::from(SocketAddr::new(ip, 0)))?;
    Ok(())
}

/// RFC 1071 checksum.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    #[test]
    fn checksum_of_an_echo_request_verifies() {
        let mut msg = [8u8, 0, 0, 0, 0x6c, 0x62, 0, 1];
        let sum = super::internet_checksum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(super::internet_checksum(&msg), 0);
    }
}
