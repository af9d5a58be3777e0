//! The packet generator of the packet-rate workloads and the SYN flood: 64-byte TCP
//! frames sent from user space, [`BATCH`] to a `sendmmsg` call, through an AF_PACKET
//! raw socket on the client's veth that bypasses its qdisc ([`crate::sys::PacketSocket`]),
//! each frame with the 5-tuple of the next of N flows.
//!
//! It replaces `bench_gen`, an XDP program run with BPF_PROG_TEST_RUN in live-frames
//! mode (`BPF_F_TEST_XDP_LIVE_FRAMES`) that sent its frames with XDP_TX: this kernel
//! (6.18.44-fc-v1300) refuses live frames with EPERM. What changes for the receiver: a
//! frame reaches the LB's veth as an skb, not an XDP frame, so before an XDP program
//! there sees it the veth copies it into a buffer with XDP's headroom, on the LB's CPU.

use crate::frames::FRAME_LEN;
use crate::sys::{self, PacketSocket};
use anyhow::{Context, Result, bail};
use lb_tests::packet::{finish16, sum16};
use std::io;
use std::time::Duration;

/// Frames per `sendmmsg` call.
pub const BATCH: usize = 256;
/// Source ports per source address (1024..65024); past this many flows the source
/// address counts up too.
pub const PORTS_PER_ADDR: u32 = 64_000;
const FIRST_PORT: u32 = 1024;
/// Bytes of frames the socket may have in flight (sent, not yet freed by the receiver):
/// thousands of frames, far more than the LB's 256-frame ring holds, so the sender is
/// not held back by its socket and a frame that finds the ring full is dropped, as the
/// old generator's were.
const SNDBUF: usize = 4 << 20;
/// A send that waits this long for room in the socket's buffer fails.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

const ETH_LEN: usize = 14;
const IP_SRC: usize = ETH_LEN + 12;
const IP_CSUM: usize = ETH_LEN + 10;
const TCP: usize = ETH_LEN + 20;
const TCP_CSUM: usize = TCP + 16;

/// The frames of `flows` flows made from one template frame (Ethernet, IPv4 without
/// options, TCP; see `frames::frame`): flow `i` has source port 1024 + `i` % 64,000 and
/// source address the template's + `i` / 64,000, checksums right.
pub struct Flows {
    template: [u8; FRAME_LEN],
    flows: u32,
    src: u32,
    /// One's-complement sums of the IPv4 header and of the TCP segment with its pseudo
    /// header, without the checksums, the source address and the source port: a frame's
    /// checksums are these plus its own address and port.
    ip_sum: u32,
    tcp_sum: u32,
    next: u64,
}

impl Flows {
    pub fn new(template: &[u8], flows: u32) -> Flows {
        let mut t = [0u8; FRAME_LEN];
        t.copy_from_slice(&template[..FRAME_LEN]);
        let src = u32::from_be_bytes(t[IP_SRC..IP_SRC + 4].try_into().expect("4 bytes"));
        let mut zeroed = t;
        zeroed[IP_SRC..IP_SRC + 4].fill(0);
        zeroed[IP_CSUM..IP_CSUM + 2].fill(0);
        zeroed[TCP..TCP + 2].fill(0);
        zeroed[TCP_CSUM..TCP_CSUM + 2].fill(0);
        let ip_len = u16::from_be_bytes([t[ETH_LEN + 2], t[ETH_LEN + 3]]) as usize;
        let tcp_len = ip_len - (TCP - ETH_LEN);
        // Pseudo header: the addresses (the source's added per frame), zero and the
        // protocol, the TCP length.
        let pseudo = sum16(&zeroed[IP_SRC + 4..IP_SRC + 8], 6 + tcp_len as u32);
        Flows {
            template: t,
            flows: flows.max(1),
            src,
            ip_sum: sum16(&zeroed[ETH_LEN..TCP], 0),
            tcp_sum: sum16(&zeroed[TCP..TCP + tcp_len], pseudo),
            next: 0,
        }
    }

    /// Writes the next flow's frame into `frame`.
    pub fn fill(&mut self, frame: &mut [u8; FRAME_LEN]) {
        let i = (self.next % self.flows as u64) as u32;
        self.next += 1;
        let src = self.src.wrapping_add(i / PORTS_PER_ADDR);
        let sport = (FIRST_PORT + i % PORTS_PER_ADDR) as u16;
        let addr = (src >> 16) + (src & 0xffff);
        let ip_csum = finish16(self.ip_sum + addr);
        let tcp_csum = finish16(self.tcp_sum + addr + sport as u32);
        *frame = self.template;
        frame[IP_SRC..IP_SRC + 4].copy_from_slice(&src.to_be_bytes());
        frame[IP_CSUM..IP_CSUM + 2].copy_from_slice(&ip_csum.to_be_bytes());
        frame[TCP..TCP + 2].copy_from_slice(&sport.to_be_bytes());
        frame[TCP_CSUM..TCP_CSUM + 2].copy_from_slice(&tcp_csum.to_be_bytes());
    }

    /// The source address of the last flow (the highest).
    #[cfg(test)]
    pub fn last_source(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(self.src.wrapping_add((self.flows - 1) / PORTS_PER_ADDR))
    }
}

/// What some sends did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Count {
    /// Frames the generator sent.
    pub sent: u64,
    /// Of them, frames the interface took (on a veth: put in the peer's receive ring);
    /// the rest it dropped (the ring was full).
    pub taken: u64,
}

/// The generator: a raw socket on one interface and the flows it cycles through.
pub struct Generator {
    socket: PacketSocket,
    flows: Flows,
    batch: Vec<[u8; FRAME_LEN]>,
}

impl Generator {
    /// A generator on `iface` of the calling thread's namespace, cycling through
    /// `flows` flows made from `template`.
    pub fn open(iface: &str, template: &[u8], flows: u32) -> Result<Generator> {
        let ifindex = sys::ifindex(iface).with_context(|| format!("no interface {iface}"))?;
        let socket = PacketSocket::open(ifindex, SNDBUF, SEND_TIMEOUT)
            .with_context(|| format!("an AF_PACKET socket on {iface}"))?;
        Ok(Generator {
            socket,
            flows: Flows::new(template, flows),
            batch: vec![[0; FRAME_LEN]; BATCH],
        })
    }

    /// Sends `n` frames, the next flows', in calls of [`BATCH`] at full speed.
    pub fn send(&mut self, n: u64) -> Result<Count> {
        let mut count = Count::default();
        while count.sent < n {
            let k = (n - count.sent).min(BATCH as u64) as usize;
            for f in &mut self.batch[..k] {
                self.flows.fill(f);
            }
            let mut at = 0;
            while at < k {
                // A call stops at the first frame the interface dropped: that frame
                // counts as sent, and the next call starts after it.
                match self.socket.send(&self.batch[at..k]) {
                    Ok(m) => {
                        count.taken += m as u64;
                        at += m + usize::from(at + m < k);
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => at += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => bail!(
                        "the generator's socket had no room for {} s: frames sent are not freed",
                        SEND_TIMEOUT.as_secs()
                    ),
                    Err(e) => return Err(e).context("sendmmsg on the generator's socket"),
                }
            }
            count.sent += k as u64;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{ACK, SYN, frame};
    use lb_tests::packet::decode;
    use std::net::Ipv4Addr;

    fn flows(src: Ipv4Addr, flags: u8, n: u32) -> Flows {
        let macs = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let t = frame(macs, src, Ipv4Addr::new(198, 18, 100, 1), 9000, flags);
        Flows::new(&t, n)
    }

    #[test]
    fn every_flow_has_its_tuple_and_right_checksums() {
        let mut f = flows(Ipv4Addr::new(198, 18, 128, 0), SYN, 3 * PORTS_PER_ADDR);
        let mut frame = [0u8; FRAME_LEN];
        let mut seen = std::collections::HashSet::new();
        for i in 0..3 * PORTS_PER_ADDR + 2 {
            f.fill(&mut frame);
            // The kit's decoder verifies the IPv4 and TCP checksums.
            let p = decode(&frame).unwrap_or_else(|e| panic!("flow {i}: {e}"));
            let want_src = Ipv4Addr::new(
                198,
                18,
                128,
                (i % (3 * PORTS_PER_ADDR) / PORTS_PER_ADDR) as u8,
            );
            assert_eq!(p.src, std::net::IpAddr::V4(want_src), "flow {i}");
            assert_eq!(p.sport as u32, FIRST_PORT + i % PORTS_PER_ADDR, "flow {i}");
            assert_eq!((p.dport, p.flags), (9000, SYN));
            seen.insert((p.src, p.sport));
        }
        assert_eq!(seen.len(), 3 * PORTS_PER_ADDR as usize);
        assert_eq!(f.last_source(), Ipv4Addr::new(198, 18, 128, 2));
    }

    #[test]
    fn one_flow_repeats_the_template() {
        let mut f = flows(Ipv4Addr::new(198, 18, 0, 2), ACK, 1);
        let (mut a, mut b) = ([0u8; FRAME_LEN], [0u8; FRAME_LEN]);
        f.fill(&mut a);
        f.fill(&mut b);
        assert_eq!(a, b);
        assert_eq!(a, f.template, "flow 0 is the template's own");
    }
}
