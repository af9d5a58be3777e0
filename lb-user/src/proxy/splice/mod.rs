//! Splicing a proxied connection: once the daemon has written the PROXY header to the
//! backend, [`splice`] moves the bytes of both directions between the client socket and
//! the backend socket without any user-space buffer, until the connection ends.
//!
//! Two engines:
//! - [`Engine::Pipe`]: splice(2) socket → pipe → socket for each direction, driven by
//!   tokio readiness on non-blocking descriptors. The kernel moves page references; a
//!   1 MiB pipe per direction is the only buffer, so a fast sender is held back by TCP
//!   flow control as soon as the pipe and the receiver's socket buffers are full. Pipes
//!   left empty by a connection are kept for the next ones (see [`PIPE_POOL_MAX`]).
//! - [`Engine::Sockmap`]: the sockets enter the `SPLICE`/`SPLICE_HOOK` socket hashes and
//!   the `lb_splice` sk_skb verdict redirects every received skb to the peer's send
//!   queue, in softirq/workqueue context; user space only watches for EOF, errors and
//!   idleness. Each direction starts on the pipe engine and is handed to the kernel
//!   once its source is quiet (see `sockmap_engine` for why), and goes back to the pipe
//!   for the tail after a FIN. The kernel puts NO bound on what it queues for a slow
//!   receiver: the redirected skbs are charged to no socket (the sender's window stays
//!   open) and wait in the peer's psock queue, which has no limit; a fast sender to a
//!   slow reader grows kernel memory without limit (1.4 GiB in 3 s in tests/splice.rs),
//!   and it is also slower than the pipe engine on this kernel.
//!
//! Both engines forward bytes already queued in either socket before the hand-off (in
//! order, ahead of later bytes), forward a half-close (EOF on one side → shutdown(WR) of
//! the other once everything before it is out), turn a reset or error on one side into
//! a reset of the other (SO_LINGER 0 + close), reset both sides after `idle_timeout`
//! without a byte in either direction, and report the bytes moved each way.

mod pipe;
mod sockmap;

pub use crate::dataplane::SpliceMaps;
pub use pipe::{PIPE_POOL_MAX, PIPE_SIZE};

use std::{io, net::Shutdown, time::Duration};

use socket2::SockRef;
use tokio::{io::Interest, net::TcpStream};

use pipe::pipe_engine;
use sockmap::sockmap_engine;

/// How the bytes of a spliced connection move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// sk_skb verdict redirect between the two sockets (needs [`SpliceMaps`]).
    Sockmap,
    /// splice(2) through a pipe per direction.
    Pipe,
}

/// Why a splice ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both directions saw EOF and forwarded it; the sockets were closed normally.
    ClosedBoth,
    /// The client socket failed (a reset, or another error); the backend was reset.
    ResetByClient,
    /// The backend socket failed (a reset, or another error); the client was reset.
    ResetByBackend,
    /// No byte moved in either direction for the idle timeout; both sides were reset.
    IdleTimeout,
}

/// What a splice did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpliceStats {
    /// Bytes delivered client → backend (into the backend socket's send queue).
    pub bytes_in: u64,
    /// Bytes delivered backend → client (into the client socket's send queue).
    pub bytes_out: u64,
    pub ended: End,
    /// The engine that ran: [`Engine::Pipe`] when the sockmap engine was asked for but
    /// could not take the connection (socket map full, socket already closing, ...).
    pub engine: Engine,
}

#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error("the sockmap splice engine needs the splice maps (SpliceMaps::load)")]
    NoMaps,
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> SpliceError {
    move |source| SpliceError::Io { what, source }
}

/// Splices `client` and `backend` until the connection ends (see the module docs).
/// `maps` is required for [`Engine::Sockmap`]. Socket failures are not errors: they end
/// the splice with [`End::ResetByClient`]/[`End::ResetByBackend`]. An error means the
/// splice could not be set up or run at all; both sockets are reset before it returns.
pub async fn splice(
    client: TcpStream,
    backend: TcpStream,
    engine: Engine,
    maps: Option<&SpliceMaps>,
    idle_timeout: Duration,
) -> Result<SpliceStats, SpliceError> {
    let res = match engine {
        Engine::Pipe => pipe_engine(&client, &backend, idle_timeout).await,
        Engine::Sockmap => match maps {
            None => Err(SpliceError::NoMaps),
            Some(maps) => match sockmap_engine(&client, &backend, maps, idle_timeout).await {
                Ok(Some(stats)) => Ok(stats),
                Ok(None) => pipe_engine(&client, &backend, idle_timeout).await,
                Err(e) => Err(e),
            },
        },
    };
    match &res {
        Ok(stats) => match stats.ended {
            End::ClosedBoth => {}
            End::ResetByClient => reset(&backend),
            End::ResetByBackend => reset(&client),
            End::IdleTimeout => {
                reset(&client);
                reset(&backend);
            }
        },
        Err(_) => {
            reset(&client);
            reset(&backend);
        }
    }
    // Dropping the streams closes them: a normal close after ClosedBoth, a RST where
    // SO_LINGER 0 was set.
    res
}

/// Makes the next close send a RST and drop whatever is queued.
fn reset(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
}

fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    SockRef::from(s).shutdown(Shutdown::Write)
}

/// Which socket failed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Backend,
}

impl Side {
    fn end(self) -> End {
        match self {
            Side::Client => End::ResetByClient,
            Side::Backend => End::ResetByBackend,
        }
    }
}

/// A pending error on the socket (SO_ERROR, which clears it).
fn socket_error(s: &TcpStream) -> Option<io::Error> {
    match s.take_error() {
        Ok(e) => e,
        Err(e) => Some(e),
    }
}

/// Waits for an error on the socket (EPOLLERR). Readiness that turns out to carry no
/// pending error is cleared so the wait does not spin.
async fn error_on(s: &TcpStream) -> io::Error {
    loop {
        match s.ready(Interest::ERROR).await {
            Ok(_) => {
                if let Some(e) = socket_error(s) {
                    return e;
                }
                let _ = s.try_io(Interest::ERROR, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
            Err(e) => return e,
        }
    }
}

/// A pump failed on the direction's source or destination socket.
enum PumpError {
    Src(io::Error),
    Dst(io::Error),
}

/// The end after a socket call failed in the direction whose source is `src`.
fn failed(e: PumpError, src: Side) -> End {
    let (side, e) = match (e, src) {
        (PumpError::Src(e), s) => (s, e),
        (PumpError::Dst(e), Side::Client) => (Side::Backend, e),
        (PumpError::Dst(e), Side::Backend) => (Side::Client, e),
    };
    let who = match side {
        Side::Client => "client",
        Side::Backend => "backend",
    };
    tracing::debug!("splice: {who} socket failed: {e}");
    side.end()
}

/// Compile-time checks: the maps are shared by tasks, and a splice can be spawned.
#[allow(dead_code)]
fn assert_spawnable(maps: &'static SpliceMaps, a: TcpStream, b: TcpStream) -> impl Send {
    fn shared<T: Send + Sync>(_: &T) {}
    shared(maps);
    splice(a, b, Engine::Sockmap, Some(maps), Duration::ZERO)
}
