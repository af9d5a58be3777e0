//! The few system calls the bench needs that neither aya nor std wraps: the bench's only
//! unsafe code.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// Not in the `libc` crate for this target: `linux/if_packet.h`, `asm-generic/socket.h`.
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const SO_SNDBUFFORCE: libc::c_int = 32;

/// An AF_PACKET raw socket bound to one interface for sending whole Ethernet frames:
/// the packet-rate workloads' and the SYN flood's generator.
///
/// It bypasses the interface's qdisc (`PACKET_QDISC_BYPASS`): a frame goes straight to
/// the driver's transmit, as the old XDP generator's XDP_TX did, so on a veth a frame
/// that finds the peer's receive ring full is dropped, not queued.
pub struct PacketSocket {
    fd: OwnedFd,
    // Rebuilt for every call, kept to reuse their allocations.
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl PacketSocket {
    /// A socket on interface `ifindex` of the calling thread's namespace. It takes no
    /// frames in (protocol 0), so receiving costs nothing; `sndbuf` bytes of frames may be
    /// in flight before a send blocks, at most `timeout` (then it fails with
    /// `WouldBlock`).
    pub fn open(ifindex: u32, sndbuf: usize, timeout: std::time::Duration) -> io::Result<Self> {
        // SAFETY: plain system call with constant arguments; the descriptor it returns
        // is owned by nothing else.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor just returned by socket(2), owned only here.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        setsockopt(&fd, libc::SOL_PACKET, PACKET_QDISC_BYPASS, &one)?;
        // FORCE: above the `wmem_max` sysctl (the bench runs as root).
        let bytes = libc::c_int::try_from(sndbuf).unwrap_or(libc::c_int::MAX);
        setsockopt(&fd, libc::SOL_SOCKET, SO_SNDBUFFORCE, &bytes)?;
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)?;
        let addr = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: 0,
            sll_ifindex: ifindex as i32,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: `addr` is a valid `sockaddr_ll` of the length passed, read by the
        // kernel during the call only.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket {
            fd,
            iovecs: Vec::new(),
            headers: Vec::new(),
        })
    }

    /// Sends `frames` (each a whole Ethernet frame) in one `sendmmsg` call, out of the
    /// bound interface. Returns how many went before the first that failed (the kernel
    /// reports only that count, not the failure, once one went); fails only if the first
    /// did (ENOBUFS: the driver dropped it, e.g. a veth whose peer's ring is full).
    pub fn send<F: AsRef<[u8]>>(&mut self, frames: &[F]) -> io::Result<usize> {
        self.iovecs.clear();
        self.iovecs.extend(frames.iter().map(|f| libc::iovec {
            iov_base: f.as_ref().as_ptr() as *mut libc::c_void,
            iov_len: f.as_ref().len(),
        }));
        self.headers.clear();
        for iov in &mut self.iovecs {
            // SAFETY: `mmsghdr` is plain data for which all zeroes is a valid value (no
            // address, no control data, no flags).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            self.headers.push(h);
        }
        let n = libc::c_uint::try_from(self.headers.len()).unwrap_or(libc::c_uint::MAX);
        // SAFETY: every header points to one iovec in `self.iovecs`, and every iovec to
        // a frame borrowed from `frames`, all alive and unmoved for the whole call; the
        // kernel reads the frames and writes only the headers' `msg_len`.
        let rc = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), self.headers.as_mut_ptr(), n, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed, which is the type the
    // option (`name`) takes; the kernel only reads it during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The index of interface `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated string for the whole call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i)
}
