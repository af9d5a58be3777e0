//! The pipe engine: splice(2) socket → pipe → socket for each direction, driven by tokio
//! readiness, with a pool of empty pipes. The sockmap engine also uses its directions
//! for the start of a connection and the tail after a FIN.

use std::{
    future::pending,
    io,
    os::fd::{AsFd, OwnedFd},
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::{io::Interest, net::TcpStream, time::sleep_until};

use super::park::{DirState, ParkSignal, PipeEnds, requested};
use super::{
    End, Engine, PumpError, Run, Side, SpliceError, SpliceStats, error_on, failed, io_err,
    shutdown_write,
};
use crate::sys;

/// Capacity asked for each direction's pipe (the kernel may round it up, or refuse more
/// than /proc/sys/fs/pipe-max-size without CAP_SYS_RESOURCE: then the default stays).
pub const PIPE_SIZE: usize = 1 << 20;

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
pub(super) struct PipeDir {
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
    pub(super) done: bool,
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
    pub(super) read_limit: Option<u64>,
}

impl Drop for PipeDir {
    /// The byte count is exact (every splice reports what it moved), so `queued == 0`
    /// means the pipe is empty and can serve another connection; one that still holds
    /// bytes (a reset or cut connection) is closed, which frees them.
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take()
            && self.queued == 0
        {
            pipe.recycle();
        }
    }
}

impl PipeDir {
    pub(super) fn new() -> Result<PipeDir, SpliceError> {
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

    /// Gives up the pipe, with whatever it holds, and says where the direction stands
    /// (for an upgrade, see `park`).
    pub(super) fn park(mut self) -> (DirState, PipeEnds) {
        let pipe = self
            .pipe
            .take()
            .expect("a direction has its pipe until dropped");
        let state = DirState {
            queued: self.queued,
            moved: self.moved,
            eof: self.eof,
            done: self.done,
            src_empty: self.src_empty,
            fin_seen: self.fin_seen,
            read_limit: self.read_limit,
            cap: pipe.cap,
            phase: 0,
            hookable: false,
        };
        let ends = PipeEnds {
            read_end: pipe.read_end,
            write_end: pipe.write_end,
            cap: pipe.cap,
        };
        (state, ends)
    }

    /// The direction a parked one described, over its pipe.
    pub(super) fn resume(state: &DirState, ends: PipeEnds) -> PipeDir {
        PipeDir {
            pipe: Some(Pipe {
                read_end: ends.read_end,
                write_end: ends.write_end,
                cap: ends.cap,
            }),
            queued: state.queued,
            moved: state.moved,
            eof: state.eof,
            done: state.done,
            src_empty: state.src_empty,
            fin_seen: state.fin_seen,
            read_limit: state.read_limit,
        }
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
    pub(super) fn quiescent(&self) -> bool {
        self.src_empty && self.queued == 0 && !self.eof
    }

    /// Moves what can move now without blocking; true if anything moved.
    ///
    /// Readiness rule: a splice from the socket into a pipe that still holds bytes may
    /// fail with EAGAIN because the pipe's slots are full (one per skb fragment), not
    /// because the socket is empty, so it runs outside tokio's readiness tracking and
    /// never clears the socket's read readiness. Only with an empty pipe does EAGAIN
    /// prove the socket empty; that attempt goes through `try_io`, which clears it.
    pub(super) fn pump(&mut self, src: &TcpStream, dst: &TcpStream) -> Result<bool, PumpError> {
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
    pub(super) async fn wait(&self, src: &TcpStream, dst: &TcpStream) -> io::Result<bool> {
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

/// The pipe engine, from the start or from a parked connection's directions (`from`,
/// with how long the connection had been idle); parks when `park` fires.
pub(super) async fn pipe_engine(
    client: &TcpStream,
    backend: &TcpStream,
    idle_timeout: Duration,
    park: &mut ParkSignal,
    from: Option<(PipeDir, PipeDir, Duration)>,
) -> Result<Run, SpliceError> {
    let (mut up, mut down, idle) = match from {
        Some(dirs) => dirs,
        None => (PipeDir::new()?, PipeDir::new()?, Duration::ZERO),
    };
    let mut last_move = Instant::now()
        .checked_sub(idle)
        .unwrap_or_else(Instant::now);
    let ended = loop {
        if *park.borrow() {
            return Ok(Run::Parked {
                up,
                down,
                idle: last_move.elapsed(),
                sockmap: None,
            });
        }
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
            _ = requested(park) => {}
        }
    };
    Ok(Run::Ended(SpliceStats {
        bytes_in: up.moved,
        bytes_out: down.moved,
        ended,
        engine: Engine::Pipe,
    }))
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
