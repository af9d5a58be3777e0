//! Parking a spliced connection for an upgrade: the engine stops between two steps
//! (every splice(2) call and every map update is whole, so any await point is one) and
//! gives back its sockets, its pipes with whatever bytes they hold, and the counters and
//! flags that say where each direction stands. The old daemon sends that over the
//! hand-over socket (the descriptors with SCM_RIGHTS, the rest as JSON) and the new one
//! resumes the engine from it: no byte is lost or sent twice, and the peers see at most
//! a pause. A sockmap connection stays in the socket hashes meanwhile (they are pinned,
//! so both daemons use the same ones) and the kernel keeps redirecting its bytes.

use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Tells running engines to park: set to true once, for an upgrade.
pub type ParkSignal = watch::Receiver<bool>;

/// A signal that never fires, for splices that cannot be parked.
pub fn never() -> ParkSignal {
    let (tx, rx) = watch::channel(false);
    // Dropping the sender makes `changed` fail, which `requested` treats as "never".
    drop(tx);
    rx
}

/// Resolves once parking is asked for (at once if it already was).
pub async fn requested(park: &mut ParkSignal) {
    loop {
        if *park.borrow_and_update() {
            return;
        }
        if park.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Where one direction stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirState {
    pub queued: usize,
    pub moved: u64,
    pub eof: bool,
    pub done: bool,
    pub src_empty: bool,
    pub fin_seen: bool,
    pub read_limit: Option<u64>,
    pub cap: usize,
    /// The sockmap engine's phase of the direction: 0 pipe, 1 kernel, 2 tail.
    pub phase: u8,
    /// The sockmap engine may still hook the direction's source.
    pub hookable: bool,
}

/// What the sockmap engine knows beyond its directions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockmapState {
    /// Each socket's (consumed, written) stream positions at the hand-off to the kernel.
    pub client_base: (u64, u64),
    pub backend_base: (u64, u64),
    pub hooked: bool,
}

/// The JSON half of a parked connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedState {
    pub up: DirState,
    pub down: DirState,
    pub sockmap: Option<SockmapState>,
    /// How long the connection had been idle when it was parked.
    pub idle_ms: u64,
}

/// A direction's pipe, as it travels.
pub(super) struct PipeEnds {
    pub(super) read_end: OwnedFd,
    pub(super) write_end: OwnedFd,
    pub(super) cap: usize,
}

/// A parked connection: its sockets, its pipes and where it stood.
pub struct Parked {
    pub client: TcpStream,
    pub backend: TcpStream,
    pub(super) up_pipe: PipeEnds,
    pub(super) down_pipe: PipeEnds,
    pub state: ParkedState,
}

/// Descriptors a parked connection travels with.
pub const PARKED_FDS: usize = 6;

#[derive(Debug, thiserror::Error)]
#[error("a parked connection needs {PARKED_FDS} descriptors, got {0}")]
pub struct BadParked(usize);

impl Parked {
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.state.idle_ms)
    }

    /// The state and the descriptors, in the order [`Parked::from_parts`] takes them.
    pub fn into_parts(self) -> (ParkedState, Vec<OwnedFd>) {
        let mut state = self.state;
        state.up.cap = self.up_pipe.cap;
        state.down.cap = self.down_pipe.cap;
        let fds = vec![
            OwnedFd::from(self.client),
            OwnedFd::from(self.backend),
            self.up_pipe.read_end,
            self.up_pipe.write_end,
            self.down_pipe.read_end,
            self.down_pipe.write_end,
        ];
        (state, fds)
    }

    pub fn from_parts(state: ParkedState, fds: Vec<OwnedFd>) -> Result<Parked, BadParked> {
        let n = fds.len();
        let Ok([client, backend, ur, uw, dr, dw]) = <[OwnedFd; PARKED_FDS]>::try_from(fds) else {
            return Err(BadParked(n));
        };
        Ok(Parked {
            client: TcpStream::from(client),
            backend: TcpStream::from(backend),
            up_pipe: PipeEnds {
                read_end: ur,
                write_end: uw,
                cap: state.up.cap,
            },
            down_pipe: PipeEnds {
                read_end: dr,
                write_end: dw,
                cap: state.down.cap,
            },
            state,
        })
    }
}
