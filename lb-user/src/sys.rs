//! The few libc calls the daemon makes directly; the only module allowed `unsafe`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;

/// Index of the interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}

/// Whether process `pid` runs: it exists (signal 0 probes without sending) and is not a
/// zombie that exited but was not reaped yet.
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 has no effect beyond the existence/permission check.
    if unsafe { libc::kill(pid as libc::pid_t, 0) } != 0 {
        return false;
    }
    // /proc/PID/stat: "PID (COMM) STATE ..."; COMM may hold spaces and parentheses.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    state != Some("Z")
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: u32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory effects in this process.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Magic number of a bpf filesystem (`statfs.f_type`).
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Filesystem type of the filesystem holding `path`.
pub fn fs_type(path: &std::path::Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: an all-zero statfs is a valid value for the kernel to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid, writable statfs for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// Mounts a new bpf filesystem on `target`.
pub fn mount_bpffs(target: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let t = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let fstype = c"bpf";
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call;
    // data is null, which mount(2) accepts for bpffs.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            t.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `bpf(2)` commands lb issues itself: aya has no call to open a pinned link of any type
/// or to replace the program of an sk_lookup link.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// Opens the bpf object (map, program or link) pinned at `path`.
pub fn bpf_obj_get(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // `union bpf_attr` for BPF_OBJ_GET: pathname, bpf_fd, file_flags (then zeroes).
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let attr = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: `attr` is a valid BPF_OBJ_GET attribute of the size passed, and its
    // pathname points to a NUL-terminated string that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            std::mem::size_of::<ObjGet>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Replaces the program of the bpf link `link` with `prog`, atomically: the hook never
/// runs without a program.
pub fn bpf_link_update(
    link: std::os::fd::BorrowedFd<'_>,
    prog: std::os::fd::BorrowedFd<'_>,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // `union bpf_attr` for BPF_LINK_UPDATE: link_fd, new_prog_fd, flags, old_prog_fd.
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: `attr` is a valid BPF_LINK_UPDATE attribute of the size passed; both
    // descriptors are open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            &attr as *const LinkUpdate,
            std::mem::size_of::<LinkUpdate>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// CLOCK_MONOTONIC in nanoseconds. The flow table's `last_seen_ns` comes from
/// `bpf_ktime_get_coarse_ns` (the same clock, up to one tick behind), so it compares
/// with this; a flow just looks up to a tick older.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call; CLOCK_MONOTONIC always
    // exists, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---------------------------------------------------------------------------------------
// Socket and pipe calls of the splice engines (proxy::splice).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `getsockopt(fd, level, name)` into a plain-data value; returns the length the kernel
/// wrote.
fn getsockopt_into<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &mut T,
) -> io::Result<usize> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a valid, writable `T` of `len` bytes for the call, `len` is a
    // valid socklen_t, and `fd` is an open descriptor borrowed for the call. `T` is
    // plain data (integers), so any bytes the kernel writes form a valid value.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *mut T).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(len as usize)
    }
}

/// The socket's cookie (`SO_COOKIE`): a 64-bit id unique for the boot, the same value
/// `bpf_get_socket_cookie` returns in the kernel.
pub fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie = 0u64;
    getsockopt_into(fd, libc::SOL_SOCKET, libc::SO_COOKIE, &mut cookie)?;
    Ok(cookie)
}

/// The calling thread's network namespace's cookie (`SO_NETNS_COOKIE`): unlike its
/// inode, never reused for another namespace until reboot.
pub fn netns_cookie() -> io::Result<u64> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
    let mut cookie = 0u64;
    getsockopt_into(
        std::os::fd::AsFd::as_fd(&sock),
        libc::SOL_SOCKET,
        libc::SO_NETNS_COOKIE,
        &mut cookie,
    )?;
    Ok(cookie)
}

/// Sets `SO_RCVLOWAT`. On TCP the kernel then checks at once whether the socket is
/// readable and, if data is queued, calls its `sk_data_ready` (tcp_set_rcvlowat →
/// tcp_data_ready), which is what makes a sockmap verdict read data queued before the
/// socket entered the map.
pub fn set_rcvlowat(fd: BorrowedFd<'_>, bytes: i32) -> io::Result<()> {
    let v: libc::c_int = bytes;
    // SAFETY: `v` is a valid c_int for the call and `fd` an open descriptor.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The fields of the kernel's `struct tcp_info` (include/uapi/linux/tcp.h) that the
/// splice engine reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// `tcpi_state`: [`TcpInfo::ESTABLISHED`], [`TcpInfo::CLOSE_WAIT`], ...
    pub state: u8,
    /// `tcpi_bytes_acked`: bytes of the send stream the peer acknowledged.
    pub bytes_acked: u64,
    /// `tcpi_bytes_received`: bytes of the receive stream that arrived in order.
    pub bytes_received: u64,
    /// `tcpi_notsent_bytes`: bytes in the send queue not sent yet.
    pub notsent_bytes: u32,
}

impl TcpInfo {
    /// `TCP_ESTABLISHED` of include/net/tcp_states.h.
    pub const ESTABLISHED: u8 = 1;
    /// `TCP_CLOSE_WAIT`: the peer's FIN arrived.
    pub const CLOSE_WAIT: u8 = 8;
}

/// The kernel's `struct tcp_info` up to `tcpi_min_rtt` (Linux 4.6+), laid out as in
/// include/uapi/linux/tcp.h; the kernel copies min(our size, its size).
#[repr(C)]
#[derive(Clone, Copy)]
struct RawTcpInfo {
    state: u8,
    _u8s: [u8; 7],
    _u32s: [u32; 23],
    _total_retrans: u32,
    _pacing_rate: u64,
    _max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
    _segs_out: u32,
    _segs_in: u32,
    notsent_bytes: u32,
    _min_rtt: u32,
}
const _: () = assert!(std::mem::offset_of!(RawTcpInfo, bytes_acked) == 120);
const _: () = assert!(std::mem::offset_of!(RawTcpInfo, bytes_received) == 128);
const _: () = assert!(std::mem::offset_of!(RawTcpInfo, notsent_bytes) == 144);

/// `getsockopt(TCP_INFO)`. The kernel takes the socket lock while filling it, so the
/// fields are one consistent snapshot.
pub fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<TcpInfo> {
    // SAFETY: RawTcpInfo is plain integers, for which all-zero is a valid value.
    let mut raw: RawTcpInfo = unsafe { std::mem::zeroed() };
    let len = getsockopt_into(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut raw)?;
    if len < std::mem::size_of::<RawTcpInfo>() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("TCP_INFO returned {len} bytes: kernel older than 4.6"),
        ));
    }
    Ok(TcpInfo {
        state: raw.state,
        bytes_acked: raw.bytes_acked,
        bytes_received: raw.bytes_received,
        notsent_bytes: raw.notsent_bytes,
    })
}

/// `ioctl(fd, request)` returning the int the kernel writes.
fn ioctl_int(fd: BorrowedFd<'_>, request: libc::Ioctl) -> io::Result<usize> {
    let mut v: libc::c_int = 0;
    // SAFETY: both requests used here (FIONREAD/SIOCINQ and TIOCOUTQ/SIOCOUTQ) write
    // one int through the pointer, which is valid and writable for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut v as *mut libc::c_int) };
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v.max(0) as usize)
    }
}

/// Bytes in the socket's receive queue not read yet (`SIOCINQ`; a FIN is not counted).
pub fn socket_inq(fd: BorrowedFd<'_>) -> io::Result<usize> {
    ioctl_int(fd, libc::FIONREAD)
}

/// Bytes in the TCP send queue: not sent yet plus sent but not acknowledged
/// (`SIOCOUTQ`; a queued FIN counts as one).
pub fn socket_outq(fd: BorrowedFd<'_>) -> io::Result<usize> {
    ioctl_int(fd, libc::TIOCOUTQ)
}

/// A pipe with both ends non-blocking and close-on-exec: (read end, write end).
pub fn pipe_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: `fds` is a valid, writable array of two ints for the call.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets the pipe's capacity (`F_SETPIPE_SZ`); returns the capacity the kernel chose (a
/// power of two pages, at least `bytes`, capped by /proc/sys/fs/pipe-max-size unless
/// CAP_SYS_RESOURCE).
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory of ours.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes as libc::c_int) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// `splice(2)` of up to `len` bytes from `from` to `to` (one of them a pipe), with
/// `SPLICE_F_MOVE | SPLICE_F_NONBLOCK`, at the descriptors' current positions, and
/// `SPLICE_F_MORE` if `more` (into a TCP socket: MSG_MORE, more data follows). Returns
/// the bytes moved; 0 means end of file on `from`; `WouldBlock` when nothing can move
/// now (also decided by the sockets' own O_NONBLOCK).
pub fn splice(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    len: usize,
    more: bool,
) -> io::Result<usize> {
    let flags =
        libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK | if more { libc::SPLICE_F_MORE } else { 0 };
    // SAFETY: null offsets mean "current position"; no memory of ours is passed.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Raises the soft limit of open files to the hard limit (as HAProxy does at start):
/// every proxied connection holds two sockets and two pipes. Returns the new limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through the valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads one valid rlimit; raising the soft limit up to the
        // hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// The reader of the XDP program's log records (see `ebpf_log`).
pub type EbpfLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Registers `logger`'s ring buffer with the current tokio runtime's reactor, so a task
/// can wait for records. Must be called inside a runtime.
pub fn async_ebpf_logger(logger: EbpfLogger) -> io::Result<tokio::io::unix::AsyncFd<EbpfLogger>> {
    // SAFETY: the logger owns its ring buffer map's descriptor, which stays open until
    // the logger is dropped, and its `as_raw_fd` always returns that descriptor.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(io::Error::from)
}

// ---------------------------------------------------------------------------------------
// Passing descriptors over a Unix socket (SCM_RIGHTS), for the upgrade hand-over.

/// Most descriptors one message carries.
pub const MAX_PASSED_FDS: usize = 8;

/// Sends `data` with `fds` attached (SCM_RIGHTS) on the Unix stream socket `sock`.
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_PASSED_FDS || data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad message to pass descriptors with",
        ));
    }
    let raw: Vec<libc::c_int> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr is a valid empty one; the fields set below point to live
    // buffers of the lengths given.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `control` is CMSG_SPACE(payload) bytes, so the first header and its
        // `payload` bytes of data fit; CMSG_FIRSTHDR of such a msghdr is non-null.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                payload as usize,
            );
        }
    }
    // SAFETY: `msg` describes live buffers (data, control) for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
    }
    Ok(())
}

/// Receives one message of at most `buf.len()` bytes and the descriptors attached to it.
/// Returns the byte count (0: the peer closed) and the descriptors, owned.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let payload = (MAX_PASSED_FDS * std::mem::size_of::<libc::c_int>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as in `send_with_fds`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` describes live, writable buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` up to msg_controllen with well-formed headers;
    // CMSG_FIRSTHDR/CMSG_NXTHDR walk them within it, and each SCM_RIGHTS header carries
    // (cmsg_len - CMSG_LEN(0)) / sizeof(int) new descriptors that this process now owns.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors were cut off (MSG_CTRUNC)"));
    }
    Ok((n as usize, fds))
}

/// Four random bytes from the kernel (`getrandom`), e.g. a TCP initial sequence number.
pub fn random_u32() -> io::Result<u32> {
    let mut b = [0u8; 4];
    // SAFETY: `b` is 4 writable bytes, the length given.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 4 {
        Ok(u32::from_ne_bytes(b))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `recvfrom(2)` on a non-blocking socket: the bytes read into `buf` and the sender's
/// IP address (a raw IPv6 socket gives it only there).
pub fn recv_from(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<std::net::IpAddr>)> {
    // SAFETY: an all-zero `sockaddr_storage` is valid.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `buf` is writable for its length, `from` for `len` bytes; the fd is open.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&mut from as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let ip = match i32::from(from.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`.
            let a =
                unsafe { &*(&from as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a `sockaddr_in6`.
            let a =
                unsafe { &*(&from as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr).into())
        }
        _ => None,
    };
    Ok((n as usize, ip))
}

/// Sends `data` on a `SOCK_DGRAM` packet socket to `mac` on interface `ifindex`, as
/// ether type `ether`.
pub fn send_packet(
    fd: BorrowedFd<'_>,
    ifindex: u32,
    ether: u16,
    mac: [u8; 6],
    data: &[u8],
) -> io::Result<()> {
    // SAFETY: an all-zero `sockaddr_ll` is valid; the fields set below complete it.
    let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = ether.to_be();
    ll.sll_ifindex = ifindex as i32;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&mac);
    // SAFETY: `data` is readable for its length, `ll` is a valid `sockaddr_ll` of the
    // length given; the fd is open.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            0,
            (&ll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Registers `socket` with the current tokio runtime's reactor, for reading. Must be
/// called inside a runtime.
pub fn async_socket(
    socket: socket2::Socket,
) -> io::Result<tokio::io::unix::AsyncFd<socket2::Socket>> {
    // SAFETY: the socket owns its descriptor, which stays open until it is dropped, and
    // its `as_raw_fd` always returns that descriptor.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE)
    }
    .map_err(io::Error::from)
}

/// The id of group `name` (`getgrnam_r`: /etc/group or whatever NSS names); `None` if
/// there is no such group.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in group name"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero `group` is valid (null pointers, zero id); getgrnam_r fills it.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `c` is NUL-terminated, `buf` is
    // writable for its length, `grp` and `found` are live locals.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!found.is_null()).then_some(grp.gr_gid))
}
