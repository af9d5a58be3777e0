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

use std::{
    future::pending,
    io,
    net::Shutdown,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::Mutex,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{MapData, MapError, SockHash},
    programs::{ProgramError, SkSkb, sk_skb::SkSkbLink},
};
use lb_common::maps::names;
use socket2::SockRef;
use tokio::{
    io::{Interest, Ready},
    net::TcpStream,
    time::sleep_until,
};

use crate::sys;

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
    #[error("eBPF object has no {0}")]
    Missing(&'static str),
    #[error("splice maps: {0}")]
    Map(#[from] MapError),
    #[error("lb_splice program: {0}")]
    Program(#[from] ProgramError),
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

/// Capacity asked for each direction's pipe (the kernel may round it up, or refuse more
/// than /proc/sys/fs/pipe-max-size without CAP_SYS_RESOURCE: then the default stays).
pub const PIPE_SIZE: usize = 1 << 20;

/// The sockmap engine's socket hashes, shared by all splice tasks, and the attachment of
/// `lb_splice` to `SPLICE_HOOK` (detached when this is dropped).
///
/// `SPLICE` maps a socket's cookie to its PEER and is only the redirect target;
/// `SPLICE_HOOK` maps a cookie to the socket itself and carries the verdict program.
/// A pair is joined by filling `SPLICE` first and hooking second, so the verdict never
/// runs for a socket whose peer entry is missing (it would drop the bytes).
pub struct SpliceMaps {
    maps: Mutex<Maps>,
    _link: SkSkbLink,
}

struct Maps {
    peers: SockHash<MapData, u64>,
    hook: SockHash<MapData, u64>,
}

impl SpliceMaps {
    /// Takes `SPLICE` and `SPLICE_HOOK` out of `ebpf`, loads `lb_splice` and attaches it
    /// to `SPLICE_HOOK`. Call once per loaded object; the returned value owns the maps
    /// and the attachment, so `ebpf` may be dropped afterwards. Size the maps (two
    /// entries per connection; default 131072) with `EbpfLoader::set_max_entries`.
    pub fn load(ebpf: &mut Ebpf) -> Result<SpliceMaps, SpliceError> {
        let hook: SockHash<MapData, u64> = ebpf
            .take_map(names::SPLICE_HOOK)
            .ok_or(SpliceError::Missing("map SPLICE_HOOK"))?
            .try_into()?;
        let peers: SockHash<MapData, u64> = ebpf
            .take_map(names::SPLICE)
            .ok_or(SpliceError::Missing("map SPLICE"))?
            .try_into()?;
        let prog: &mut SkSkb = ebpf
            .program_mut(names::PROG_SPLICE)
            .ok_or(SpliceError::Missing("program lb_splice"))?
            .try_into()?;
        prog.load()?;
        let id = prog.attach(hook.fd())?;
        let link = prog.take_link(id)?;
        Ok(SpliceMaps {
            maps: Mutex::new(Maps { peers, hook }),
            _link: link,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters here (every entry is keyed by a unique cookie): go on.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters the pair in `SPLICE` (each socket under its peer's cookie). Hooks nothing
    /// yet: on error the maps are as before.
    fn pair(
        &self,
        client: BorrowedFd<'_>,
        client_cookie: u64,
        backend: BorrowedFd<'_>,
        backend_cookie: u64,
    ) -> Result<(), MapError> {
        let mut m = self.lock();
        m.peers.insert(client_cookie, backend, 0)?;
        if let Err(e) = m.peers.insert(backend_cookie, client, 0) {
            let _ = m.peers.remove(&client_cookie);
            return Err(e);
        }
        Ok(())
    }

    /// Enters a paired socket in `SPLICE_HOOK`: from now on the verdict redirects what it
    /// receives to its peer.
    fn hook(&self, socket: BorrowedFd<'_>, cookie: u64) -> Result<(), MapError> {
        self.lock().hook.insert(cookie, socket, 0)
    }

    /// Removes the pair's entries (missing ones are fine: closing a socket removes it
    /// from every socket map by itself).
    fn leave(&self, client_cookie: u64, backend_cookie: u64) {
        let mut m = self.lock();
        for c in [client_cookie, backend_cookie] {
            let _ = m.hook.remove(&c);
        }
        for c in [client_cookie, backend_cookie] {
            let _ = m.peers.remove(&c);
        }
    }
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

/// How often the sockmap engine reads tcp_info to see whether any byte moved (it does
/// not see the bytes itself): the idle timeout fires between `idle_timeout` and
/// `idle_timeout` + this after the last byte.
fn idle_tick(idle_timeout: Duration) -> Duration {
    (idle_timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(5))
}

// ---------------------------------------------------------------------------------------
// Pipe engine

/// A non-blocking pipe sized for splicing.
struct Pipe {
    read_end: OwnedFd,
    write_end: OwnedFd,
    cap: usize,
}

/// Empty pipes kept for the next connections, at most this many: a new pipe costs four
/// syscalls (pipe2, F_SETPIPE_SZ, two closes at the end), a pooled one none. Each pooled
/// pipe holds two descriptors and its slot array (no data pages: it is empty), and as
/// many as two per connection in flight are in use, so 256 covers a burst of 128 new
/// connections at a time.
pub const PIPE_POOL_MAX: usize = 256;

/// The pool (HAProxy keeps one the same way). A pipe enters it only empty, so a reused
/// pipe never carries a byte from one connection into another.
static PIPE_POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

impl Pipe {
    /// A pipe from the pool, or a new one.
    fn take() -> Result<Pipe, SpliceError> {
        let pooled = PIPE_POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match pooled {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    fn new() -> Result<Pipe, SpliceError> {
        let (read_end, write_end) = sys::pipe_nonblocking().map_err(io_err("pipe2"))?;
        // Without CAP_SYS_RESOURCE the kernel caps the size at pipe-max-size (1 MiB by
        // default); keep the default (64 KiB) if even that is refused.
        let cap = sys::set_pipe_size(write_end.as_fd(), PIPE_SIZE)
            .unwrap_or(65536)
            .max(4096);
        Ok(Pipe {
            read_end,
            write_end,
            cap,
        })
    }

    /// Gives back a pipe for reuse if the kernel says it is empty (closes it otherwise,
    /// or if the pool is full). The kernel's count, not ours: a byte left behind would
    /// reach the next connection's peer.
    fn recycle(self) {
        if !matches!(sys::socket_inq(self.read_end.as_fd()), Ok(0)) {
            return;
        }
        let mut pool = PIPE_POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < PIPE_POOL_MAX {
            pool.push(self);
        }
    }
}

/// One direction of the pipe engine: `src` socket → pipe → `dst` socket.
struct PipeDir {
    /// Always Some until the direction is dropped (then it goes back to the pool if it
    /// is empty).
    pipe: Option<Pipe>,
    /// Bytes in the pipe.
    queued: usize,
    /// Bytes spliced into `dst`.
    moved: u64,
    /// `src` reached EOF.
    eof: bool,
    /// EOF forwarded: `dst` is shut down for writing.
    done: bool,
    /// The last pump found `src` empty with the pipe empty.
    src_empty: bool,
    /// `src`'s readiness reported its FIN (EPOLLRDHUP): the bytes queued before it are
    /// the last ones, so a pump that reads some reads on to the EOF and sends them with
    /// the FIN in one segment.
    fin_seen: bool,
    /// At most this many more bytes are read from `src`, then it counts as at EOF. Set
    /// for the sockmap engine's tail: the kernel may leave an skb it already redirected
    /// (the one carrying the FIN) in the receive queue, and those bytes must not go out
    /// twice.
    read_limit: Option<u64>,
}

impl Drop for PipeDir {
    /// The byte count is exact (every splice reports what it moved), so `queued == 0`
    /// means the pipe is empty and can serve another connection; one that still holds
    /// bytes (a reset or cut connection) is closed, which frees them.
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            if self.queued == 0 {
                pipe.recycle();
            }
        }
    }
}

/// A pump failed on the direction's source or destination socket.
enum PumpError {
    Src(io::Error),
    Dst(io::Error),
}

impl PipeDir {
    fn new() -> Result<PipeDir, SpliceError> {
        Ok(PipeDir {
            pipe: Some(Pipe::take()?),
            queued: 0,
            moved: 0,
            eof: false,
            done: false,
            src_empty: false,
            fin_seen: false,
            read_limit: None,
        })
    }

    /// Room for the next splice from `src`: the pipe's, within `read_limit`.
    fn room(&self, cap: usize) -> usize {
        let room = cap - self.queued;
        self.read_limit.map_or(room, |left| {
            room.min(usize::try_from(left).unwrap_or(usize::MAX))
        })
    }

    /// Counts `n` bytes read from `src` into the pipe (fields, not `&mut self`: the
    /// caller holds the pipe borrowed).
    fn read(queued: &mut usize, read_limit: &mut Option<u64>, n: usize) {
        *queued += n;
        if let Some(left) = read_limit {
            *left = left.saturating_sub(n as u64);
        }
    }

    /// Nothing of `src` is in flight here, and no skb of `src` is partly read: the last
    /// splice from it, with the pipe empty, found nothing (and a splice only stops
    /// inside an skb when it runs out of length or pipe room).
    fn quiescent(&self) -> bool {
        self.src_empty && self.queued == 0 && !self.eof
    }

    /// Moves what can move now without blocking; true if anything moved.
    ///
    /// Readiness rule: a splice from the socket into a pipe that still holds bytes may
    /// fail with EAGAIN because the pipe's slots are full (one per skb fragment), not
    /// because the socket is empty, so it runs outside tokio's readiness tracking and
    /// never clears the socket's read readiness. Only with an empty pipe does EAGAIN
    /// prove the socket empty; that attempt goes through `try_io`, which clears it.
    fn pump(&mut self, src: &TcpStream, dst: &TcpStream) -> Result<bool, PumpError> {
        if self.done {
            return Ok(false);
        }
        let Some(pipe) = &self.pipe else {
            return Ok(false);
        };
        let mut moved = false;
        self.src_empty = false;
        if !self.eof && self.read_limit == Some(0) {
            // Everything the source sent has been forwarded; what its receive queue
            // still shows went out already.
            self.eof = true;
            moved = true;
        }
        if !self.eof && self.queued < pipe.cap {
            let room = self.room(pipe.cap);
            let splice_in = || sys::splice(src.as_fd(), pipe.write_end.as_fd(), room, false);
            let r = if self.queued == 0 {
                src.try_io(Interest::READABLE, splice_in)
            } else {
                splice_in()
            };
            match r {
                Ok(0) => {
                    self.eof = true;
                    moved = true;
                }
                Ok(n) => {
                    Self::read(&mut self.queued, &mut self.read_limit, n);
                    moved = true;
                    let room = self.room(pipe.cap);
                    if self.fin_seen && room > 0 {
                        // Outside readiness tracking, as above (the pipe is not empty).
                        // An error shows again on the next pump.
                        match sys::splice(src.as_fd(), pipe.write_end.as_fd(), room, false) {
                            Ok(0) => self.eof = true,
                            Ok(n) => Self::read(&mut self.queued, &mut self.read_limit, n),
                            Err(_) => {}
                        }
                    }
                    if self.read_limit == Some(0) {
                        self.eof = true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.src_empty = self.queued == 0;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => moved = true,
                Err(e) => return Err(PumpError::Src(e)),
            }
        }
        if self.queued > 0 {
            // The pipe holds bytes, so EAGAIN here can only mean dst's buffer is full.
            // After the EOF, SPLICE_F_MORE holds the last bytes back for the FIN that
            // shutdown(WR) adds right after (one segment, not two); the shutdown sends
            // whatever is held.
            let queued = self.queued;
            let more = self.eof;
            match dst.try_io(Interest::WRITABLE, || {
                sys::splice(pipe.read_end.as_fd(), dst.as_fd(), queued, more)
            }) {
                Ok(n) => {
                    self.queued -= n;
                    self.moved += n as u64;
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => moved = true,
                Err(e) => return Err(PumpError::Dst(e)),
            }
        }
        if self.eof && self.queued == 0 {
            shutdown_write(dst).map_err(PumpError::Dst)?;
            self.done = true;
            moved = true;
        }
        Ok(moved)
    }

    /// Waits until `pump` may make progress again (after it made none); true if `src`'s
    /// readiness reported its FIN (set `fin_seen`).
    async fn wait(&self, src: &TcpStream, dst: &TcpStream) -> io::Result<bool> {
        if self.done {
            pending::<()>().await;
        }
        if self.queued > 0 {
            dst.writable().await.map(|()| false)
        } else if !self.eof {
            src.ready(Interest::READABLE)
                .await
                .map(|r| r.is_read_closed())
        } else {
            Ok(false)
        }
    }
}

async fn pipe_engine(
    client: &TcpStream,
    backend: &TcpStream,
    idle_timeout: Duration,
) -> Result<SpliceStats, SpliceError> {
    let mut up = PipeDir::new()?;
    let mut down = PipeDir::new()?;
    let mut last_move = Instant::now();
    let ended = loop {
        let moved_up = match up.pump(client, backend) {
            Ok(m) => m,
            Err(e) => break failed(e, Side::Client),
        };
        let moved_down = match down.pump(backend, client) {
            Ok(m) => m,
            Err(e) => break failed(e, Side::Backend),
        };
        if up.done && down.done {
            break End::ClosedBoth;
        }
        if moved_up || moved_down {
            last_move = Instant::now();
            // Yield to other tasks now and then: a busy pair never returns Pending.
            tokio::task::consume_budget().await;
            continue;
        }
        tokio::select! {
            r = up.wait(client, backend) => up.fin_seen |= r.map_err(io_err("socket readiness"))?,
            r = down.wait(backend, client) => down.fin_seen |= r.map_err(io_err("socket readiness"))?,
            _ = error_on(client) => break End::ResetByClient,
            _ = error_on(backend) => break End::ResetByBackend,
            _ = sleep_until((last_move + idle_timeout).into()) => break End::IdleTimeout,
        }
    };
    Ok(SpliceStats {
        bytes_in: up.moved,
        bytes_out: down.moved,
        ended,
        engine: Engine::Pipe,
    })
}

// ---------------------------------------------------------------------------------------
// Sockmap engine

/// TCP states (include/net/tcp_states.h) in which the socket can be spliced.
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE_WAIT: u8 = 8;

/// A socket's stream positions at the hand-off, read before it enters the maps.
#[derive(Clone, Copy)]
struct Baseline {
    /// Data bytes received and already read by user space (e.g. an --accept-proxy
    /// header): not to be forwarded.
    consumed: u64,
    /// Bytes written into the socket so far (acknowledged + still in the send queue):
    /// user space's own writes, e.g. the PROXY header.
    written: u64,
}

/// Data bytes the socket has received: `tcpi_bytes_received` counts a received FIN
/// as one byte (measured on 6.18: 110 data bytes + FIN read 111).
fn received_data(info: &sys::TcpInfo, fin: bool) -> u64 {
    info.bytes_received.saturating_sub(fin as u64)
}

/// Bytes written into the socket: acknowledged + in the send queue. Read in this order
/// (tcp_info first) the sum can only lag behind the truth, never run ahead of it.
fn written(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let info = sys::tcp_info(fd)?;
    let outq = sys::socket_outq(fd)?;
    Ok(info.bytes_acked + outq as u64)
}

/// The socket's baseline, or None if it is in no state to be spliced in the kernel.
/// tcp_info and the queue sizes come from separate calls: a snapshot counts only when
/// tcp_info did not change around the queue reads (nothing arrived or was acked).
fn baseline(fd: BorrowedFd<'_>) -> io::Result<Option<Baseline>> {
    for _ in 0..64 {
        let before = sys::tcp_info(fd)?;
        let inq = sys::socket_inq(fd)? as u64;
        let outq = sys::socket_outq(fd)? as u64;
        let after = sys::tcp_info(fd)?;
        if before != after {
            continue;
        }
        let fin = match before.state {
            TCP_ESTABLISHED => false,
            TCP_CLOSE_WAIT => true,
            _ => return Ok(None),
        };
        return Ok(Some(Baseline {
            consumed: received_data(&before, fin).saturating_sub(inq),
            written: before.bytes_acked + outq,
        }));
    }
    Ok(None)
}

/// Bytes forwarded into `dst` since the hand-off, pipe and kernel alike.
fn forwarded(dst: BorrowedFd<'_>, base: &Baseline) -> io::Result<u64> {
    Ok(written(dst)?.saturating_sub(base.written))
}

/// Where a direction of the sockmap engine stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Moved by the pipe engine: at the start (until the source's receive queue holds no
    /// partly read skb, see `sockmap_engine`), when the source could not be hooked, and
    /// for the tail after EOF.
    Pipe,
    /// The source is hooked: the verdict redirects its bytes to the destination.
    Kernel,
    /// The source sent FIN while hooked: waiting until the redirected bytes have left
    /// for the destination, then the pipe engine moves any rest and forwards the EOF.
    Tail,
}

/// One direction of the sockmap engine.
struct MapDir {
    phase: Phase,
    pipe: PipeDir,
    /// The source may still move to the kernel (not once it has been there).
    hookable: bool,
}

impl MapDir {
    fn new() -> Result<MapDir, SpliceError> {
        Ok(MapDir {
            phase: Phase::Pipe,
            pipe: PipeDir::new()?,
            hookable: true,
        })
    }

    /// In the tail phase: whether every byte the verdict redirected is in `dst`'s send
    /// queue. The verdict is done with the source once its FIN is seen (both run under
    /// the socket lock, and every skb before the FIN was queued before it); what it did
    /// not take is still in the receive queue (the socket leaves the maps, verdict and
    /// all, when it closes: on a FIN received after our own FIN, the skb carrying that
    /// FIN stays queued). SIOCINQ counts that rest either way (0 while still hooked).
    /// Once flushed, returns how many of the source's bytes are still to forward: the
    /// received ones not yet in `dst`. That, not SIOCINQ, bounds what the pipe then
    /// reads, so a byte the kernel forwarded is never sent twice.
    fn tail_flushed(
        &self,
        src: &TcpStream,
        src_base: &Baseline,
        dst: &TcpStream,
        dst_base: &Baseline,
    ) -> Result<Option<u64>, PumpError> {
        let info = sys::tcp_info(src.as_fd()).map_err(PumpError::Src)?;
        let rest = sys::socket_inq(src.as_fd()).map_err(PumpError::Src)? as u64;
        let to_forward = received_data(&info, true).saturating_sub(src_base.consumed);
        let done = forwarded(dst.as_fd(), dst_base).map_err(PumpError::Dst)?;
        Ok((done + rest >= to_forward).then(|| to_forward.saturating_sub(done)))
    }

    /// Waits until the direction may make progress or its source has news.
    async fn wait(&self, src: &TcpStream, dst: &TcpStream) -> io::Result<Option<Event>> {
        match self.phase {
            Phase::Pipe => self.pipe.wait(src, dst).await.map(|_| None),
            Phase::Kernel => socket_event(src).await.map(Some),
            Phase::Tail => pending().await,
        }
    }
}

/// Removes the pair from the maps however the engine ends (also when its future is
/// dropped).
struct Joined<'a> {
    maps: &'a SpliceMaps,
    client: u64,
    backend: u64,
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        self.maps.leave(self.client, self.backend);
    }
}

/// What a hooked socket's readiness says.
enum Event {
    /// Bytes arrived (and were redirected by the verdict): nothing to do.
    Data,
    /// The peer's FIN.
    Eof,
    /// A reset or another error.
    Failed,
}

/// Waits for the next event on a hooked socket. Readability also fires whenever the
/// verdict has consumed data (the kernel signals the reader after each batch); those
/// wake-ups are cleared and reported as `Data`.
async fn socket_event(s: &TcpStream) -> io::Result<Event> {
    let ready: Ready = s.ready(Interest::READABLE | Interest::ERROR).await?;
    if ready.is_error() || ready.is_read_closed() {
        if socket_error(s).is_some() {
            return Ok(Event::Failed);
        }
        if ready.is_read_closed() {
            return Ok(Event::Eof);
        }
    }
    // Clear the readiness this event reported (only if no newer event came since).
    // One interest per call: tokio's try_io ignores a combined interest.
    for interest in [Interest::READABLE, Interest::ERROR] {
        let _ = s.try_io(interest, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
    }
    Ok(Event::Data)
}

/// The sockmap engine; Ok(None) when it could not take the pair and left both sockets
/// untouched (the caller falls back to the pipe engine).
///
/// Each direction starts on the pipe engine and moves to the kernel when its source is
/// quiescent: its pipe is empty and a splice from it found nothing. Only then is it
/// hooked, because the verdict reads whole skbs from the head of the receive queue
/// (tcp_read_skb) and ignores how much of the first one user space already read: an
/// skb partly read before the hand-off (an --accept-proxy header, a read that stopped
/// mid-skb) would be forwarded whole, its first bytes twice (seen on 6.18). A splice
/// that comes back empty leaves no partly read skb, and whatever arrives after it is
/// whole skbs, which the verdict forwards in order behind the bytes the pipe already
/// delivered. A direction whose source never goes quiet (its destination never drains
/// the pipe) simply stays on the pipe engine.
async fn sockmap_engine(
    client: &TcpStream,
    backend: &TcpStream,
    maps: &SpliceMaps,
    idle_timeout: Duration,
) -> Result<Option<SpliceStats>, SpliceError> {
    let (cfd, bfd) = (client.as_fd(), backend.as_fd());
    let (Ok(client_cookie), Ok(backend_cookie)) =
        (sys::socket_cookie(cfd), sys::socket_cookie(bfd))
    else {
        return Ok(None);
    };
    let (Some(client_base), Some(backend_base)) = (
        baseline(cfd).map_err(io_err("client tcp_info"))?,
        baseline(bfd).map_err(io_err("backend tcp_info"))?,
    ) else {
        return Ok(None);
    };
    if let Err(e) = maps.pair(cfd, client_cookie, bfd, backend_cookie) {
        tracing::debug!("sockmap splice unavailable ({e}); using the pipe engine");
        return Ok(None);
    }
    let _joined = Joined {
        maps,
        client: client_cookie,
        backend: backend_cookie,
    };

    let mut up = MapDir::new()?;
    let mut down = MapDir::new()?;
    let tick = idle_tick(idle_timeout);
    let mut last_activity = activity(cfd, bfd);
    let mut last_move = Instant::now();
    let mut next_check = Instant::now() + tick;
    // While a direction waits in its tail, poll quickly, then back off.
    let mut tail_poll = Duration::from_millis(1);
    // Whether a socket was hooked (else the pipe engine did all the work).
    let mut hooked = false;

    let ended = 'run: loop {
        let mut moved = false;
        for (dir, src, src_base, src_cookie, dst, dst_base, side) in [
            (
                &mut up,
                client,
                &client_base,
                client_cookie,
                backend,
                &backend_base,
                Side::Client,
            ),
            (
                &mut down,
                backend,
                &backend_base,
                backend_cookie,
                client,
                &client_base,
                Side::Backend,
            ),
        ] {
            match dir.phase {
                Phase::Pipe => {
                    match dir.pipe.pump(src, dst) {
                        Ok(m) => moved |= m,
                        Err(e) => break 'run failed(e, side),
                    }
                    if dir.hookable && dir.pipe.quiescent() {
                        dir.hookable = false;
                        if maps.hook(src.as_fd(), src_cookie).is_ok() {
                            dir.phase = Phase::Kernel;
                            hooked = true;
                            // Whole skbs may have arrived since the empty splice, and
                            // the verdict only runs from the socket's data_ready
                            // callback. Setting SO_RCVLOWAT calls it at once if data
                            // is queued (tcp_set_rcvlowat → tcp_data_ready): the verdict
                            // then takes the queue from its head, in order.
                            sys::set_rcvlowat(src.as_fd(), 1).map_err(io_err("SO_RCVLOWAT"))?;
                        }
                    }
                }
                Phase::Kernel => {}
                Phase::Tail => match dir.tail_flushed(src, src_base, dst, dst_base) {
                    Ok(Some(missing)) => {
                        // The pipe moves what the kernel did not, and no more.
                        dir.pipe.read_limit = Some(missing);
                        dir.phase = Phase::Pipe;
                        moved = true;
                    }
                    Ok(None) => {}
                    Err(e) => break 'run failed(e, side),
                },
            }
        }
        if up.pipe.done && down.pipe.done {
            break End::ClosedBoth;
        }
        if moved {
            last_move = Instant::now();
            tokio::task::consume_budget().await;
            continue;
        }
        let wake = if up.phase == Phase::Tail || down.phase == Phase::Tail {
            let w = Instant::now() + tail_poll;
            tail_poll = (tail_poll * 2).min(Duration::from_millis(50));
            w.min(next_check)
        } else {
            tail_poll = Duration::from_millis(1);
            next_check
        };
        tokio::select! {
            ev = up.wait(client, backend) => match ev.map_err(io_err("client readiness"))? {
                None | Some(Event::Data) => {}
                Some(Event::Eof) => up.phase = Phase::Tail,
                Some(Event::Failed) => break End::ResetByClient,
            },
            ev = down.wait(backend, client) => match ev.map_err(io_err("backend readiness"))? {
                None | Some(Event::Data) => {}
                Some(Event::Eof) => down.phase = Phase::Tail,
                Some(Event::Failed) => break End::ResetByBackend,
            },
            _ = error_on(client) => break End::ResetByClient,
            _ = error_on(backend) => break End::ResetByBackend,
            _ = sleep_until(wake.into()) => {}
        }
        let now = Instant::now();
        if now >= next_check {
            next_check = now + tick;
            let a = activity(cfd, bfd);
            if a != last_activity {
                // Something moved since the last check: count it as now.
                last_activity = a;
                last_move = now;
            }
            if now.duration_since(last_move) >= idle_timeout {
                break End::IdleTimeout;
            }
        }
    };
    // Bytes forwarded each way; a FIN we sent counts one in the send sequence.
    let moved = |dir: &MapDir, dst: BorrowedFd<'_>, base: &Baseline| {
        forwarded(dst, base)
            .map(|n| n.saturating_sub(dir.pipe.done as u64))
            .unwrap_or(0)
    };
    let engine = if hooked {
        Engine::Sockmap
    } else {
        Engine::Pipe
    };
    Ok(Some(SpliceStats {
        bytes_in: moved(&up, bfd, &backend_base),
        bytes_out: moved(&down, cfd, &client_base),
        ended,
        engine,
    }))
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

/// A number that changes whenever a byte arrives at or is acknowledged by either socket
/// (None when tcp_info fails, which then counts as a change only once).
fn activity(client: BorrowedFd<'_>, backend: BorrowedFd<'_>) -> Option<u64> {
    let c = sys::tcp_info(client).ok()?;
    let b = sys::tcp_info(backend).ok()?;
    Some(
        c.bytes_received
            .wrapping_add(c.bytes_acked)
            .wrapping_add(b.bytes_received)
            .wrapping_add(b.bytes_acked),
    )
}

/// Compile-time checks: the maps are shared by tasks, and a splice can be spawned.
#[allow(dead_code)]
fn assert_spawnable(maps: &'static SpliceMaps, a: TcpStream, b: TcpStream) -> impl Send {
    fn shared<T: Send + Sync>(_: &T) {}
    shared(maps);
    splice(a, b, Engine::Sockmap, Some(maps), Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pooled_bytes() -> Vec<usize> {
        PIPE_POOL
            .lock()
            .unwrap()
            .iter()
            .map(|p| sys::socket_inq(p.read_end.as_fd()).unwrap())
            .collect()
    }

    #[test]
    fn a_pipe_that_holds_bytes_is_closed_not_pooled() {
        // A direction cut with bytes still in its pipe (a reset connection).
        let mut left = PipeDir::new().unwrap();
        let pipe = left.pipe.as_ref().unwrap();
        let mut w = std::fs::File::from(pipe.write_end.try_clone().unwrap());
        w.write_all(b"the last connection's bytes").unwrap();
        left.queued = 27;
        drop(left);
        // One that ended empty goes back.
        drop(PipeDir::new().unwrap());
        // Other tests share the pool, but whatever is in it must be empty.
        let pooled = pooled_bytes();
        assert!(pooled.iter().all(|&n| n == 0), "{pooled:?}");
    }
}
