//! The real path of a DSR service, checked: a TCP SYN to VIP:port, encapsulated as the
//! LB's data path does it (`lb_common::encap`), sent to the backend, which must answer
//! with a SYN-ACK from the VIP. A backend that lost `lb decap` or its VIP answers
//! nothing and fails, even while its server still answers on its own address. The
//! answer comes back straight from the backend, as the service's do; a raw TCP socket,
//! open only for the probe, sees it. The half-open connection is then reset, through
//! the same encapsulation.
//!
//! Sent from user space (raw IP-in-IP sockets, a UDP socket for GUE, a packet socket for
//! l2) rather than by the XDP program: the LB host's own packets do not cross XDP.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use lb_common::encap::{GUE_LEN, IPPROTO_IPIP, IPPROTO_IPV6, gue_header};
use lb_common::maps::PROTO_TCP;
use lb_common::tcp::{ACK, RST, SYN};
use std::os::fd::AsFd;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::probe::FailReason;

/// How a DSR service's packets reach its backends, for its checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DsrPath {
    pub vip: IpAddr,
    /// `lb_common::encap::ENCAP_*`.
    pub encap: u8,
    /// GUE only, host order.
    pub gue_port: u16,
}

/// Probes `backend`'s `port` on the VIP through `path`; `Ok` on a SYN-ACK, `Refused` on
/// a RST. Unbounded in time: the caller's check timeout bounds it.
pub async fn syn_ack(backend: IpAddr, port: u16, path: &DsrPath) -> Result<(), FailReason> {
    // The LB's own address toward the backend (what its outer header carries), and a
    // local port reserved for the probe's connection by a socket bound to it.
    let source = source_toward(backend)?;
    let reserved = std::net::TcpListener::bind(SocketAddr::new(source, 0))?;
    let sport = reserved.local_addr()?.port();
    let rx = receiver(source)?;
    let isn = crate::sys::random_u32()?;
    let syn = inner_packet(source, path.vip, sport, port, isn, 0, SYN);
    send(backend, path, &syn)?;
    let answer = wait_answer(&rx, path.vip, port, sport).await?;
    if answer.flags & (SYN | ACK) == SYN | ACK {
        // Clean up the backend's half-open connection.
        let rst = inner_packet(source, path.vip, sport, port, isn.wrapping_add(1), 0, RST);
        let _ = send(backend, path, &rst);
        drop(reserved);
        return Ok(());
    }
    Err(FailReason::Refused)
}

/// The source address the kernel uses toward `dst` (a UDP connect sends nothing).
fn source_toward(dst: IpAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = if dst.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any)?;
    s.connect(SocketAddr::new(dst, 9))?;
    Ok(s.local_addr()?.ip())
}

/// A raw TCP socket of `source`'s family, which sees every TCP segment the host
/// receives while it is open.
fn receiver(source: IpAddr) -> io::Result<AsyncFd<Socket>> {
    let domain = if source.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::RAW, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    crate::sys::async_socket(s)
}

/// The answer's TCP flags.
struct Answer {
    flags: u8,
}

/// Waits for a segment from `vip`:`port` to our `sport`.
async fn wait_answer(
    rx: &AsyncFd<Socket>,
    vip: IpAddr,
    port: u16,
    sport: u16,
) -> Result<Answer, FailReason> {
    let mut buf = [0u8; 2048];
    loop {
        let mut guard = rx.readable().await?;
        let got = guard.try_io(|s| crate::sys::recv_from(s.get_ref().as_fd(), &mut buf));
        let (n, from_ip) = match got {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(e.into()),
            Err(_would_block) => continue,
        };
        let bytes = &buf[..n];
        // IPv4 raw sockets deliver the IP header too; IPv6 ones only the TCP segment.
        let tcp = match vip {
            IpAddr::V4(_) => {
                let ihl = usize::from(bytes.first().copied().unwrap_or(0) & 0x0f) * 4;
                bytes.get(ihl..).unwrap_or(&[])
            }
            IpAddr::V6(_) => bytes,
        };
        if from_ip != Some(vip) || tcp.len() < 20 {
            continue;
        }
        let (src, dst) = (
            u16::from_be_bytes([tcp[0], tcp[1]]),
            u16::from_be_bytes([tcp[2], tcp[3]]),
        );
        if src == port && dst == sport {
            return Ok(Answer { flags: tcp[13] });
        }
    }
}

/// An IP packet from `src`:`sport` to `dst`:`dport` carrying a bare TCP segment (an MSS
/// option on a SYN), checksums filled in.
fn inner_packet(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(24);
    tcp.extend(sport.to_be_bytes());
    tcp.extend(dport.to_be_bytes());
    tcp.extend(seq.to_be_bytes());
    tcp.extend(ack.to_be_bytes());
    let syn = flags & SYN != 0;
    tcp.push(if syn { 6 << 4 } else { 5 << 4 });
    tcp.push(flags);
    tcp.extend(if syn { 64240u16 } else { 0 }.to_be_bytes());
    tcp.extend([0, 0, 0, 0]);
    if syn {
        tcp.extend([2, 4, 0x05, 0x5c]); // MSS 1372: fits any encapsulation on 1500
    }
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend(s.octets());
            pseudo.extend(d.octets());
            pseudo.extend([0, PROTO_TCP]);
            pseudo.extend((tcp.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend(s.octets());
            pseudo.extend(d.octets());
            pseudo.extend((tcp.len() as u32).to_be_bytes());
            pseudo.extend([0, 0, 0, PROTO_TCP]);
        }
        _ => unreachable!("the source is of the VIP's family"),
    }
    pseudo.extend(&tcp);
    let c = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ip.extend([0x45, 0]);
            ip.extend(((20 + tcp.len()) as u16).to_be_bytes());
            ip.extend([0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0]);
            ip.extend(s.octets());
            ip.extend(d.octets());
            let c = checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ip.extend((6u32 << 28).to_be_bytes());
            ip.extend((tcp.len() as u16).to_be_bytes());
            ip.extend([PROTO_TCP, 64]);
            ip.extend(s.octets());
            ip.extend(d.octets());
        }
        _ => unreachable!("the source is of the VIP's family"),
    }
    ip.extend(tcp);
    ip
}

/// The Internet checksum of `b`.
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends `inner` to `backend` the way the service's packets go.
fn send(backend: IpAddr, path: &DsrPath, inner: &[u8]) -> io::Result<()> {
    use lb_common::encap::{ENCAP_GUE, ENCAP_IPIP};
    match path.encap {
        ENCAP_IPIP => {
            let (domain, proto) = if backend.is_ipv4() {
                (Domain::IPV4, IPPROTO_IPIP)
            } else {
                (Domain::IPV6, IPPROTO_IPV6)
            };
            let s = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(proto))))?;
            s.send_to(inner, &SockAddr::from(SocketAddr::new(backend, 0)))?;
        }
        ENCAP_GUE => {
            let inner_proto = if backend.is_ipv4() {
                IPPROTO_IPIP
            } else {
                IPPROTO_IPV6
            };
            let mut msg = Vec::with_capacity(GUE_LEN + inner.len());
            msg.extend(gue_header(inner_proto));
            msg.extend(inner);
            let any: SocketAddr = if backend.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            UdpSocket::bind(any)?.send_to(&msg, SocketAddr::new(backend, path.gue_port))?;
        }
        _ => send_l2(backend, inner)?,
    }
    Ok(())
}

/// `l2`: the packet as it is, to the backend's MAC on the interface that reaches it.
fn send_l2(backend: IpAddr, inner: &[u8]) -> io::Result<()> {
    let (ifindex, mac) = neighbour(backend)?;
    let ether: u16 = if backend.is_ipv4() { 0x0800 } else { 0x86dd };
    let s = Socket::new(
        Domain::PACKET,
        Type::DGRAM,
        Some(Protocol::from(i32::from(ether.to_be()))),
    )?;
    crate::sys::send_packet(s.as_fd(), ifindex, ether, mac, inner)?;
    Ok(())
}

/// The interface and MAC of `addr`'s neighbour entry (the daemon keeps the backends'
/// warm), from `ip -j neigh`.
fn neighbour(addr: IpAddr) -> io::Result<(u32, [u8; 6])> {
    let out = crate::iproute::ip(&["-j", "neigh", "show", &addr.to_string()])
        .map_err(io::Error::other)?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| io::Error::other(format!("ip -j neigh: {e}")))?;
    let entry = v
        .as_array()
        .and_then(|a| a.iter().find(|e| e["lladdr"].is_string()))
        .ok_or_else(|| io::Error::other(format!("no neighbour entry for {addr}")))?;
    let dev = entry["dev"].as_str().unwrap_or_default();
    let ifindex = crate::sys::ifindex(dev)?;
    let mut mac = [0u8; 6];
    let text = entry["lladdr"].as_str().unwrap_or_default();
    for (m, part) in mac.iter_mut().zip(text.split(':')) {
        *m = u8::from_str_radix(part, 16).map_err(|_| io::Error::other("bad lladdr"))?;
    }
    Ok((ifindex, mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inner_syn_has_valid_checksums() {
        let p = inner_packet(
            "198.18.1.1".parse().unwrap(),
            "198.18.100.1".parse().unwrap(),
            40000,
            80,
            7,
            0,
            SYN,
        );
        assert_eq!(p.len(), 44);
        assert_eq!(checksum(&p[..20]), 0, "IPv4 header");
        let mut pseudo = p[12..20].to_vec();
        pseudo.extend([0, PROTO_TCP, 0, 24]);
        pseudo.extend(&p[20..]);
        assert_eq!(checksum(&pseudo), 0, "TCP");
        assert_eq!(p[20 + 13], SYN);
    }
}
