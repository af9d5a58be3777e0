//! systemd's readiness protocol (sd_notify): with `Type=notify`, systemd waits for
//! `READY=1` before it considers lb started, which lb sends once the data path is
//! attached. Without `NOTIFY_SOCKET` (not under systemd) nothing is sent.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use tracing::warn;

/// Sends `state` (e.g. "READY=1") to systemd if it asked for notifications.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let sent = (|| -> std::io::Result<()> {
        // A leading '@' names a socket in the abstract namespace.
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None => SocketAddr::from_pathname(&path)?,
        };
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        warn!(socket = %path, cause = %e, "notifying systemd");
    }
}
