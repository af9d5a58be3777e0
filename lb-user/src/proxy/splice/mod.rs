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

pub mod park;
mod pipe;
mod sockmap;

pub use crate::dataplane::SpliceMaps;
pub use pipe::{PIPE_POOL_MAX, PIPE_SIZE};

use std::{io, net::Shutdown, time::Duration};

use socket2::SockRef;
use tokio::{io::Interest, net::TcpStream};

use park::{ParkSignal, Parked, ParkedState, SockmapState};
use pipe::{PipeDir, pipe_engine};
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

/// How an engine's run ended: the connection ended, or it was parked for an upgrade.
enum Run {
    Ended(SpliceStats),
    Parked {
        up: PipeDir,
        down: PipeDir,
        idle: Duration,
        /// The sockmap engine's state, and its directions' phases and hookability.
        sockmap: Option<(SockmapState, [u8; 2], [bool; 2])>,
    },
}

/// How a parkable splice ended.
pub enum Outcome {
    Ended(SpliceStats),
    /// Parked for an upgrade (see [`park`]): the sockets and pipes, untouched.
    Parked(Parked),
}

#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error("the sockmap splice engine needs the splice maps (SpliceMaps::load)")]
    NoMaps,
    #[error("a parked sockmap connection could not be resumed (its sockets are gone)")]
    NotResumed,
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
    match splice_parkable(client, backend, engine, maps, idle_timeout, park::never()).await? {
        Outcome::Ended(stats) => Ok(stats),
        Outcome::Parked(_) => unreachable!("park::never() does not fire"),
    }
}

/// As [`splice`], but parks the connection when `park` fires (see [`park`]).
pub async fn splice_parkable(
    client: TcpStream,
    backend: TcpStream,
    engine: Engine,
    maps: Option<&SpliceMaps>,
    idle_timeout: Duration,
    mut park: ParkSignal,
) -> Result<Outcome, SpliceError> {
    let cut = ResetIfCut(&client, &backend);
    let res = match engine {
        Engine::Pipe => pipe_engine(&client, &backend, idle_timeout, &mut park, None).await,
        Engine::Sockmap => match maps {
            None => Err(SpliceError::NoMaps),
            Some(maps) => {
                match sockmap_engine(&client, &backend, maps, idle_timeout, &mut park, None).await {
                    Ok(Some(run)) => Ok(run),
                    Ok(None) => pipe_engine(&client, &backend, idle_timeout, &mut park, None).await,
                    Err(e) => Err(e),
                }
            }
        },
    };
    cut.disarm();
    finish(client, backend, res)
}

/// Resumes a connection another daemon parked, on the engine it was parked from (the
/// sockmap engine needs `maps`), until it ends or is parked again.
pub async fn resume(
    parked: Parked,
    maps: Option<&SpliceMaps>,
    idle_timeout: Duration,
    mut park: ParkSignal,
) -> Result<Outcome, SpliceError> {
    let Parked {
        client,
        backend,
        up_pipe,
        down_pipe,
        state,
    } = parked;
    let io = io_err("resuming a parked connection");
    client.set_nonblocking(true).map_err(io)?;
    backend
        .set_nonblocking(true)
        .map_err(io_err("resuming a parked connection"))?;
    let client = TcpStream::from_std(client).map_err(io_err("resuming a parked connection"))?;
    let backend = TcpStream::from_std(backend).map_err(io_err("resuming a parked connection"))?;
    let cut = ResetIfCut(&client, &backend);
    let idle = Duration::from_millis(state.idle_ms);
    let up = PipeDir::resume(&state.up, up_pipe);
    let down = PipeDir::resume(&state.down, down_pipe);
    let res = match (state.sockmap, maps) {
        (None, _) => {
            pipe_engine(
                &client,
                &backend,
                idle_timeout,
                &mut park,
                Some((up, down, idle)),
            )
            .await
        }
        (Some(_), None) => Err(SpliceError::NoMaps),
        (Some(sm), Some(maps)) => {
            let from = sockmap::Resume {
                up: (up, state.up.phase, state.up.hookable),
                down: (down, state.down.phase, state.down.hookable),
                idle,
                state: sm,
            };
            match sockmap_engine(&client, &backend, maps, idle_timeout, &mut park, Some(from)).await
            {
                Ok(Some(run)) => Ok(run),
                Ok(None) => Err(SpliceError::NotResumed),
                Err(e) => Err(e),
            }
        }
    };
    cut.disarm();
    finish(client, backend, res)
}

/// Resets both sockets of a splice dropped before it ended (its task aborted: a drain
/// timeout, a shutdown deadline), so both ends learn at once that it is over instead of
/// an orphaned socket trickling out what it still holds. It borrows the splice's own
/// streams: the borrow makes it drop before them (SO_LINGER 0 set, then the close
/// sends the RST), with no descriptor of its own to open and close per connection.
struct ResetIfCut<'a>(&'a TcpStream, &'a TcpStream);

impl ResetIfCut<'_> {
    /// The run ended or parked by itself: [`finish`] decides how the sockets close.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for ResetIfCut<'_> {
    fn drop(&mut self) {
        reset(self.0);
        reset(self.1);
    }
}

/// Ends a run: resets what the end calls for, or hands back a parked connection whole.
fn finish(
    client: TcpStream,
    backend: TcpStream,
    res: Result<Run, SpliceError>,
) -> Result<Outcome, SpliceError> {
    match res {
        Ok(Run::Parked {
            up,
            down,
            idle,
            sockmap,
        }) => {
            let (mut up_state, up_pipe) = up.park();
            let (mut down_state, down_pipe) = down.park();
            let sockmap = sockmap.map(|(sm, phases, hookable)| {
                (up_state.phase, down_state.phase) = (phases[0], phases[1]);
                (up_state.hookable, down_state.hookable) = (hookable[0], hookable[1]);
                sm
            });
            let io = io_err("parking a connection");
            Ok(Outcome::Parked(Parked {
                client: client.into_std().map_err(io)?,
                backend: backend.into_std().map_err(io_err("parking a connection"))?,
                up_pipe,
                down_pipe,
                state: ParkedState {
                    up: up_state,
                    down: down_state,
                    sockmap,
                    idle_ms: idle.as_millis() as u64,
                },
            }))
        }
        Ok(Run::Ended(stats)) => {
            match stats.ended {
                End::ClosedBoth => {}
                End::ResetByClient => reset(&backend),
                End::ResetByBackend => reset(&client),
                End::IdleTimeout => {
                    reset(&client);
                    reset(&backend);
                }
            }
            // Dropping the streams closes them: a normal close after ClosedBoth, a RST
            // where SO_LINGER 0 was set.
            Ok(Outcome::Ended(stats))
        }
        Err(e) => {
            reset(&client);
            reset(&backend);
            Err(e)
        }
    }
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
