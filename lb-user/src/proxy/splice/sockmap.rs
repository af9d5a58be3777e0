//! The sockmap engine: each direction is handed to the `lb_splice` sk_skb verdict once
//! its source is quiet, and back to the pipe engine for the tail after a FIN (see
//! [`sockmap_engine`] for why it starts on the pipe).

use std::{
    future::pending,
    io,
    os::fd::{AsFd, BorrowedFd},
    time::{Duration, Instant},
};

use tokio::{
    io::{Interest, Ready},
    net::TcpStream,
    time::sleep_until,
};

use super::park::{ParkSignal, SockmapState, requested};
use super::pipe::PipeDir;
use super::{
    End, Engine, PumpError, Run, Side, SpliceError, SpliceMaps, SpliceStats, error_on, failed,
    io_err, socket_error,
};
use crate::sys;

/// How often the sockmap engine reads tcp_info to see whether any byte moved (it does
/// not see the bytes itself): the idle timeout fires between `idle_timeout` and
/// `idle_timeout` + this after the last byte.
fn idle_tick(idle_timeout: Duration) -> Duration {
    (idle_timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(5))
}

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

impl Baseline {
    fn pair(&self) -> (u64, u64) {
        (self.consumed, self.written)
    }

    fn from_pair((consumed, written): (u64, u64)) -> Baseline {
        Baseline { consumed, written }
    }
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
            // The states in which the socket can be spliced in the kernel.
            sys::TcpInfo::ESTABLISHED => false,
            sys::TcpInfo::CLOSE_WAIT => true,
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

/// Where a parked sockmap connection stood, to resume it: its directions (with their
/// phase and whether they may still be hooked), how long it had been idle, and the rest.
pub(super) struct Resume {
    pub(super) up: (PipeDir, u8, bool),
    pub(super) down: (PipeDir, u8, bool),
    pub(super) idle: Duration,
    pub(super) state: SockmapState,
}

/// Where a direction of the sockmap engine stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Moved by the pipe engine: at the start (until the source is quiescent, see
    /// `sockmap_engine`), when the source could not be hooked, and for the tail after
    /// EOF (then no longer hooked).
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

impl Phase {
    fn code(self) -> u8 {
        match self {
            Phase::Pipe => 0,
            Phase::Kernel => 1,
            Phase::Tail => 2,
        }
    }

    fn from_code(code: u8) -> Phase {
        match code {
            1 => Phase::Kernel,
            2 => Phase::Tail,
            _ => Phase::Pipe,
        }
    }
}

impl MapDir {
    fn new() -> Result<MapDir, SpliceError> {
        Ok(MapDir {
            phase: Phase::Pipe,
            pipe: PipeDir::new()?,
            hookable: true,
        })
    }

    fn resume((pipe, phase, hookable): (PipeDir, u8, bool)) -> MapDir {
        MapDir {
            phase: Phase::from_code(phase),
            pipe,
            hookable,
        }
    }

    fn park(self) -> (PipeDir, u8, bool) {
        (self.pipe, self.phase.code(), self.hookable)
    }

    /// In the tail phase: whether every byte the verdict redirected is in `dst`'s send
    /// queue. The verdict is done with the source once its FIN is seen (both run under
    /// the socket lock, and every skb before the FIN was queued before it); what it did
    /// not take is still in the receive queue (the socket leaves the maps, verdict and
    /// all, when it closes: on a FIN received after our own FIN, the skb carrying that
    /// FIN stays queued). SIOCINQ counts that rest once the socket has left the maps;
    /// while it is in one it reports the sockmap's own receive queue (tcp_bpf_ioctl on
    /// 6.18), which stays empty here, so 0. Once flushed, returns how many of the
    /// source's bytes are still to forward: the received ones not yet in `dst`. That, not
    /// SIOCINQ, bounds what the pipe then reads, so a byte the kernel forwarded is never
    /// sent twice.
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
    /// Parked for an upgrade: the pair stays in the (pinned) maps for the next daemon.
    kept: bool,
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.maps.leave(self.client, self.backend);
        }
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
/// hooked: with the pipe empty every byte user space took is in the destination, so
/// the verdict's bytes queue behind them, in order. A splice that comes back empty also
/// leaves no partly read skb at the head of the receive queue; the verdict reads whole
/// skbs from there (tcp_read_skb), and `lb_splice` cuts off what the socket already
/// passed on (bytes before its `copied_seq`: an skb read partly before the hand-off, an
/// --accept-proxy header, or a retransmission overlapping received bytes), so a byte
/// still goes out once if one were there. Whatever arrives after the empty splice is
/// forwarded in order behind the bytes the pipe already delivered. A direction whose
/// source never goes quiet (its destination never drains the pipe) simply stays on the
/// pipe engine.
pub(super) async fn sockmap_engine(
    client: &TcpStream,
    backend: &TcpStream,
    maps: &SpliceMaps,
    idle_timeout: Duration,
    park: &mut ParkSignal,
    from: Option<Resume>,
) -> Result<Option<Run>, SpliceError> {
    let (cfd, bfd) = (client.as_fd(), backend.as_fd());
    let (Ok(client_cookie), Ok(backend_cookie)) =
        (sys::socket_cookie(cfd), sys::socket_cookie(bfd))
    else {
        return Ok(None);
    };
    let (mut up, mut down, idle, client_base, backend_base, mut hooked) = match from {
        Some(r) => (
            MapDir::resume(r.up),
            MapDir::resume(r.down),
            r.idle,
            Baseline::from_pair(r.state.client_base),
            Baseline::from_pair(r.state.backend_base),
            r.state.hooked,
        ),
        None => {
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
            (
                MapDir::new()?,
                MapDir::new()?,
                Duration::ZERO,
                client_base,
                backend_base,
                false,
            )
        }
    };
    let mut joined = Joined {
        maps,
        client: client_cookie,
        backend: backend_cookie,
        kept: false,
    };

    let tick = idle_tick(idle_timeout);
    let mut last_activity = activity(cfd, bfd);
    let mut last_move = Instant::now()
        .checked_sub(idle)
        .unwrap_or_else(Instant::now);
    let mut next_check = Instant::now() + tick;
    // While a direction waits in its tail, poll quickly, then back off.
    let mut tail_poll = Duration::from_millis(1);

    let ended = 'run: loop {
        if *park.borrow() {
            joined.kept = true;
            return Ok(Some(Run::Parked {
                idle: last_move.elapsed(),
                sockmap: Some((
                    SockmapState {
                        client_base: client_base.pair(),
                        backend_base: backend_base.pair(),
                        hooked,
                    },
                    [up.phase.code(), down.phase.code()],
                    [up.hookable, down.hookable],
                )),
                up: up.park().0,
                down: down.park().0,
            }));
        }
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
                        // The pipe moves what the kernel did not, and no more. The
                        // source leaves SPLICE_HOOK first, which stops its verdict: no
                        // skb can then be taken by both (the verdict would also cut
                        // what the pipe read, by copied_seq, but not run at all is
                        // simpler to trust). A socket that already left is fine.
                        maps.unhook(src_cookie);
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
            _ = requested(park) => {}
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
    Ok(Some(Run::Ended(SpliceStats {
        bytes_in: moved(&up, bfd, &backend_base),
        bytes_out: moved(&down, cfd, &client_base),
        ended,
        engine,
    })))
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
