//! Socket helpers shared by the daemon's servers (the admin API and the proxy).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// Accepts the next connection on `listener`. An accept error (EMFILE and the like) is
/// logged as `what` and retried after `backoff`, so the server neither spins nor stops.
pub async fn accept(
    listener: &TcpListener,
    what: &str,
    backoff: Duration,
) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                warn!(cause = %e, "{what} accept");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}
