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

/// Whether process `pid` exists (signal 0 probes without sending).
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 has no effect beyond the existence/permission check.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}
