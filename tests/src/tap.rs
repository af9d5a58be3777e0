//! A TAP device whose far end is the test itself: a frame written to it reaches the
//! kernel as if received on the interface, and what the kernel sends through it can be
//! read back. A test can so play a TCP peer segment by segment, e.g. to retransmit bytes
//! the kernel already has.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use crate::{netns::mac_str, sys};

/// A TAP device in the calling thread's network namespace (removed with the namespace).
pub struct Tap {
    file: File,
    pub mac: [u8; 6],
}

impl Tap {
    /// Creates TAP `name` with MAC `mac` and address `addr`/24, up, with a static
    /// neighbour entry for `peer` at `peer_mac` (the test answers no ARP) and an MTU of
    /// 9000 (a segment may carry a few pages). The calling thread must be in the
    /// namespace the device belongs in.
    pub fn new(
        name: &str,
        mac: [u8; 6],
        addr: Ipv4Addr,
        peer: Ipv4Addr,
        peer_mac: [u8; 6],
    ) -> Result<Tap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("open /dev/net/tun (needs root and CONFIG_TUN)")?;
        sys::tun_set_tap(&file, name).with_context(|| format!("TUNSETIFF {name}"))?;
        for args in [
            format!("link set {name} address {} mtu 9000 up", mac_str(mac)),
            format!("addr add {addr}/24 dev {name}"),
            format!(
                "neigh replace {peer} lladdr {} dev {name}",
                mac_str(peer_mac)
            ),
        ] {
            // A child of this thread runs in this thread's namespace.
            let out = Command::new("ip").args(args.split(' ')).output()?;
            ensure!(
                out.status.success(),
                "ip {args}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Tap { file, mac })
    }

    /// Hands `frame` (Ethernet) to the kernel as received on the device.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        (&self.file)
            .write_all(frame)
            .context("write to the TAP device")
    }

    /// The next frame the kernel sent through the device that `keep` accepts, waiting
    /// `timeout` at most.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !sys::wait_readable(&self.file, left)? {
                return Ok(None);
            }
            let n = (&self.file)
                .read(&mut buf)
                .context("read from the TAP device")?;
            if keep(&buf[..n]) {
                return Ok(Some(buf[..n].to_vec()));
            }
        }
    }
}
