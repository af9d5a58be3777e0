//! The only module with `unsafe`: thin wrappers over the few libc calls the test bed
//! needs (entering a namespace, signalling a process by PID, checking for root, pinning
//! a thread to its CPU, creating and polling a TAP device).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Moves the calling thread into the network namespace at `path` (e.g. /run/netns/NAME).
/// Only the calling thread changes namespace; callers use a dedicated thread.
pub fn enter_netns(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: `file` is an open namespace file descriptor for the whole call; setns only
    // changes the calling thread's network namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to `pid`. A process that is already gone is not an error.
pub fn kill(pid: u32, signal: i32) -> io::Result<()> {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pid out of range",
        ));
    };
    if pid <= 0 {
        // kill(0 or negative) signals process groups: never what we mean.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pid must be positive",
        ));
    }
    // SAFETY: kill has no memory-safety preconditions; `pid` is positive, so exactly one
    // process is addressed, never a group.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(err);
    }
    Ok(())
}

/// Whether `pid` names a live process: it exists (signal 0 probes without signalling)
/// and is not a zombie waiting to be reaped.
pub fn alive(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; no memory is involved.
    let exists = raw > 0 && unsafe { libc::kill(raw, 0) } == 0;
    exists && !zombie(pid)
}

fn zombie(pid: u32) -> bool {
    // /proc/PID/stat is "pid (comm) STATE ..."; comm may contain spaces, so split after ')'.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Keeps the calling thread on the CPU it runs on now. BPF_PROG_TEST_RUN runs the program
/// on the caller's CPU, so per-CPU state (the next-hop cache) is then seen run after run.
pub fn stay_on_this_cpu() -> io::Result<()> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        return Err(io::Error::last_os_error());
    }
    pin_to_cpu(cpu as usize)
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is beyond CPU_SETSIZE"),
        ));
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it (`cpu` is
    // below CPU_SETSIZE), and sched_setaffinity only reads it for the given size.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of_val(&set), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches `file` (an open /dev/net/tun) to a new TAP device named `name` that carries
/// Ethernet frames without the packet-information prefix.
pub fn tun_set_tap(file: &File, name: &str) -> io::Result<()> {
    // struct ifreq: the name (16 bytes, NUL-terminated), then the flags (a short) in a
    // union padded to 24 bytes.
    let mut req = [0u8; 40];
    let bytes = name.as_bytes();
    if bytes.len() >= 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    req[..bytes.len()].copy_from_slice(bytes);
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: `req` is a 40-byte buffer laid out as struct ifreq and lives for the whole
    // call; TUNSETIFF reads the name and flags from it and writes the final name back
    // into its first 16 bytes. `file` is open for the whole call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, req.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to `timeout` for `file` to be readable; false on timeout.
pub fn wait_readable(file: &File, timeout: std::time::Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd for the whole call and `file` stays open.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc > 0)
}
