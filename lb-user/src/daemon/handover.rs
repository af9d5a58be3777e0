//! The upgrade hand-over: a daemon started while another runs in the same network
//! namespace takes the data path over instead of fighting for it. The running daemon
//! listens on a Unix socket next to its runtime record; the new one, once its programs
//! passed the verifier, asks it to step down. The old one stops its checks and its
//! accept loops and hands over its listening sockets (the proxy listeners and the admin
//! API) with SCM_RIGHTS, so no connection waiting in their queues is refused. Once the
//! new one is ready, the old one parks every proxied connection and hands each over too
//! (sockets, pipes and where the splice stood, see `proxy::splice::park`), then exits,
//! touching no map. Messages are one JSON value per datagram of a SOCK_SEQPACKET socket.

use serde::{Deserialize, Serialize};
use socket2::{Domain, SockAddr, Socket, Type};
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::control::CheckTotals;
use crate::dataplane::runtime::RUN_DIR;
use crate::proxy::server::ServiceCounters;
use crate::proxy::splice::park::{PARKED_FDS, Parked, ParkedState};
use crate::sys;

/// How long each side waits for the other's next message.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the new daemon waits for the old one's parked connections: parking waits
/// for connections still connecting to their backend (up to 3 attempts of
/// --connect-timeout).
const PARK_TIMEOUT: Duration = Duration::from_secs(60);

/// Names of the sockets a hand-over carries, in the order of their descriptors.
pub const PROXY_V4: &str = "proxy-v4";
pub const PROXY_V6: &str = "proxy-v6";
pub const ADMIN: &str = "admin";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    Takeover {
        pid: u32,
        state_dir: PathBuf,
        /// The state directory's (device, inode) as the new daemon sees it: the same
        /// path on another bpf filesystem (a private mount of `ip netns exec`) is not
        /// the same state.
        state_id: Option<(u64, u64)>,
    },
    Handed {
        pid: u32,
        sockets: Vec<String>,
    },
    Refused {
        reason: String,
    },
    Done,
    /// A parked proxied connection; its descriptors ride along.
    Conn {
        state: ParkedState,
    },
    /// The proxy services' counters, by VIP, and the backends' check totals, to carry on.
    Counters {
        services: Vec<(std::net::SocketAddr, ServiceCounters)>,
        #[serde(default)]
        checks: Vec<CheckTotals>,
    },
    /// No more connections.
    End,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error(
        "another lb (pid {pid}) runs in this network namespace and offers no hand-over ({path} is missing): stop it first"
    )]
    NoSocket { pid: u32, path: PathBuf },
    #[error("the running lb (pid {pid}) refused to hand over: {reason}")]
    Refused { pid: u32, reason: String },
    #[error("handing over through {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("handing over through {path}: unexpected message {got}")]
    Protocol { path: PathBuf, got: String },
}

/// The hand-over socket of the network namespace with inode `netns_inode`.
pub fn socket_path(netns_inode: u64) -> PathBuf {
    Path::new(RUN_DIR).join(format!("netns-{netns_inode}.sock"))
}

fn send(sock: BorrowedFd<'_>, msg: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let text = serde_json::to_vec(msg).map_err(io::Error::other)?;
    sys::send_with_fds(sock, &text, fds)
}

/// The largest message: room for the biggest `Counters` message (one service's counters,
/// or a chunk of check totals).
const MAX_MESSAGE: usize = 256 << 10;
/// Backends' check totals per `Counters` message.
const CHECKS_PER_MESSAGE: usize = 32;

fn recv(sock: BorrowedFd<'_>) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, fds) = sys::recv_with_fds(sock, &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..n]).map_err(io::Error::other)?;
    Ok(Some((msg, fds)))
}

fn seqpacket() -> io::Result<Socket> {
    let s = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
    s.set_read_timeout(Some(REPLY_TIMEOUT))?;
    s.set_write_timeout(Some(REPLY_TIMEOUT))?;
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// The new daemon's side.

/// A running daemon that answered on the hand-over socket.
pub struct Predecessor {
    sock: Socket,
    path: PathBuf,
    pub pid: u32,
}

/// The counters a predecessor carries over: the proxy services' (by VIP) and the
/// backends' check totals.
pub struct Carried {
    pub services: Vec<(std::net::SocketAddr, ServiceCounters)>,
    pub checks: Vec<CheckTotals>,
}

/// What the predecessor handed over.
pub struct Handed {
    pub proxy_v4: Option<TcpListener>,
    pub proxy_v6: Option<TcpListener>,
    pub admin: Option<TcpListener>,
    /// Told [`Successor::done`] once this daemon is ready.
    pub from: Predecessor,
}

/// The daemon running in this network namespace, if one does (`record_pid`: the pid its
/// runtime record names, if that process is alive).
pub fn predecessor(
    netns_inode: u64,
    record_pid: Option<u32>,
) -> Result<Option<Predecessor>, HandoverError> {
    let path = socket_path(netns_inode);
    let Some(pid) = record_pid else {
        // A socket left by a daemon that is gone.
        let _ = std::fs::remove_file(&path);
        return Ok(None);
    };
    let io = |source| HandoverError::Io {
        path: path.clone(),
        source,
    };
    let sock = seqpacket().map_err(io)?;
    match sock.connect(&SockAddr::unix(&path).map_err(io)?) {
        Ok(()) => Ok(Some(Predecessor { sock, path, pid })),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(HandoverError::NoSocket { pid, path })
        }
        Err(e) => Err(io(e)),
    }
}

impl Predecessor {
    /// Asks the running daemon to step down and hand over its sockets.
    pub fn take_over(self, state_dir: &Path) -> Result<Handed, HandoverError> {
        let io = |source| HandoverError::Io {
            path: self.path.clone(),
            source,
        };
        let ask = Message::Takeover {
            pid: std::process::id(),
            state_dir: state_dir.to_path_buf(),
            state_id: dir_id(state_dir),
        };
        send(self.sock.as_fd(), &ask, &[]).map_err(io)?;
        let (msg, fds) = recv(self.sock.as_fd()).map_err(io)?.ok_or_else(|| {
            io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the running lb closed the socket",
            ))
        })?;
        let sockets = match msg {
            Message::Handed { sockets, .. } => sockets,
            Message::Refused { reason } => {
                return Err(HandoverError::Refused {
                    pid: self.pid,
                    reason,
                });
            }
            other => {
                return Err(HandoverError::Protocol {
                    path: self.path.clone(),
                    got: format!("{other:?}"),
                });
            }
        };
        let mut handed = Handed {
            proxy_v4: None,
            proxy_v6: None,
            admin: None,
            from: self,
        };
        for (name, fd) in sockets.iter().zip(fds) {
            let l = Some(TcpListener::from(fd));
            match name.as_str() {
                PROXY_V4 => handed.proxy_v4 = l,
                PROXY_V6 => handed.proxy_v6 = l,
                ADMIN => handed.admin = l,
                _ => {}
            }
        }
        Ok(handed)
    }

    /// Tells the old daemon that this one is ready: it may hand over its proxied
    /// connections and go.
    pub fn done(&self) -> io::Result<()> {
        send(self.sock.as_fd(), &Message::Done, &[])
    }

    /// Receives the old daemon's parked connections (blocking), giving each to `adopt`,
    /// and its counters, giving them to `carry`; returns how many connections came.
    pub fn receive_connections(
        self,
        mut adopt: impl FnMut(Parked),
        mut carry: impl FnMut(Carried),
    ) -> io::Result<usize> {
        self.sock.set_read_timeout(Some(PARK_TIMEOUT))?;
        let mut n = 0;
        loop {
            match recv(self.sock.as_fd())? {
                Some((Message::Conn { state }, fds)) => {
                    let parked = Parked::from_parts(state, fds).map_err(io::Error::other)?;
                    adopt(parked);
                    n += 1;
                }
                Some((Message::Counters { services, checks }, _)) => {
                    carry(Carried { services, checks })
                }
                Some((Message::End, _)) | None => return Ok(n),
                Some((other, _)) => {
                    return Err(io::Error::other(format!("unexpected message {other:?}")));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The running daemon's side.

/// The hand-over socket a running daemon listens on.
pub struct Listener {
    sock: Socket,
    path: PathBuf,
    /// Inode of the socket file this listener bound, to tell it from a successor's.
    inode: u64,
}

/// A successor's request to take over.
pub struct Request {
    sock: Socket,
    pub pid: u32,
    pub state_dir: PathBuf,
    state_id: Option<(u64, u64)>,
}

/// A directory's (device, inode).
fn dir_id(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// A successor that received the sockets.
pub struct Successor {
    sock: Socket,
    pub pid: u32,
}

impl Listener {
    /// Listens on the namespace's hand-over socket, replacing a stale one.
    pub fn bind(netns_inode: u64) -> io::Result<Listener> {
        let path = socket_path(netns_inode);
        std::fs::create_dir_all(RUN_DIR)?;
        let _ = std::fs::remove_file(&path);
        let sock = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
        sock.bind(&SockAddr::unix(&path)?)?;
        sock.listen(4)?;
        let inode = std::fs::metadata(&path)?.ino();
        Ok(Listener { sock, path, inode })
    }

    /// Waits for the next well-formed request (blocking).
    pub fn accept(&self) -> io::Result<Request> {
        loop {
            let (conn, _) = self.sock.accept()?;
            conn.set_read_timeout(Some(REPLY_TIMEOUT))?;
            conn.set_write_timeout(Some(REPLY_TIMEOUT))?;
            if let Ok(Some((
                Message::Takeover {
                    pid,
                    state_dir,
                    state_id,
                },
                _,
            ))) = recv(conn.as_fd())
            {
                return Ok(Request {
                    sock: conn,
                    pid,
                    state_dir,
                    state_id,
                });
            }
        }
    }

    /// Removes the socket's path if it is still this listener's (a successor binds its
    /// own once it runs).
    pub fn remove_if_ours(&self) {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Request {
    /// Why this daemon, running the data path of state directory `ours`, cannot hand it
    /// to the requester, if it cannot.
    pub fn mismatch(&self, ours: &Path) -> Option<String> {
        if self.state_dir != ours {
            return Some(format!(
                "it runs the data path of state directory {}, not {}: two data paths cannot share the interfaces; stop it first, or give the same --state-dir",
                ours.display(),
                self.state_dir.display()
            ));
        }
        if self.state_id.is_none() || self.state_id != dir_id(ours) {
            return Some(format!(
                "the new lb sees another bpf filesystem at {} (`ip netns exec` gives each process a private one): an upgrade needs both daemons on the same state; start lb with `nsenter --net=/run/netns/NAME`, or give --state-dir on a bpffs mounted outside /sys",
                ours.display()
            ));
        }
        None
    }

    pub fn refuse(self, reason: &str) {
        let _ = send(
            self.sock.as_fd(),
            &Message::Refused {
                reason: reason.to_string(),
            },
            &[],
        );
    }

    /// Hands over `sockets` (name, descriptor).
    pub fn hand_over(self, sockets: &[(&str, BorrowedFd<'_>)]) -> io::Result<Successor> {
        let msg = Message::Handed {
            pid: std::process::id(),
            sockets: sockets.iter().map(|(n, _)| n.to_string()).collect(),
        };
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
        send(self.sock.as_fd(), &msg, &fds)?;
        Ok(Successor {
            sock: self.sock,
            pid: self.pid,
        })
    }
}

impl Successor {
    /// Waits (blocking) until the successor says it is ready: true, or it failed or
    /// went away first: false.
    pub fn wait_done(&self, timeout: Duration) -> bool {
        let _ = self.sock.set_read_timeout(Some(timeout));
        matches!(recv(self.sock.as_fd()), Ok(Some((Message::Done, _))))
    }

    /// Hands over the parked connections and the proxy counters (blocking); returns how
    /// many connections went. One that cannot be sent is reset by dropping it here.
    pub fn send_connections(self, parked: Vec<Parked>, carried: Carried) -> io::Result<usize> {
        let mut sent = 0;
        for p in parked {
            let (state, fds) = p.into_parts();
            debug_assert_eq!(fds.len(), PARKED_FDS);
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            send(self.sock.as_fd(), &Message::Conn { state }, &borrowed)?;
            sent += 1;
        }
        // One service's counters, or a chunk of check totals, per message: a datagram
        // has a bound (MAX_MESSAGE here, the socket buffer in the kernel).
        for service in carried.services {
            let msg = Message::Counters {
                services: vec![service],
                checks: Vec::new(),
            };
            send(self.sock.as_fd(), &msg, &[])?;
        }
        for chunk in carried.checks.chunks(CHECKS_PER_MESSAGE) {
            let msg = Message::Counters {
                services: Vec::new(),
                checks: chunk.to_vec(),
            };
            send(self.sock.as_fd(), &msg, &[])?;
        }
        send(self.sock.as_fd(), &Message::End, &[])?;
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A connected pair: the new daemon's end and the running daemon's.
    fn pair() -> (Predecessor, Socket) {
        let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        let pred = Predecessor {
            sock: a,
            path: PathBuf::from("test"),
            pid: 1,
        };
        (pred, b)
    }

    /// The running daemon's side of one hand-over, on a thread: the request it saw.
    fn serve(
        sock: Socket,
        sockets: Vec<(&'static str, TcpListener)>,
        refuse: bool,
    ) -> std::thread::JoinHandle<(PathBuf, bool)> {
        std::thread::spawn(move || {
            let Some((
                Message::Takeover {
                    pid,
                    state_dir,
                    state_id,
                },
                _,
            )) = recv(sock.as_fd()).unwrap()
            else {
                panic!("no takeover request");
            };
            assert_eq!(pid, std::process::id());
            let req = Request {
                sock,
                pid,
                state_dir: state_dir.clone(),
                state_id,
            };
            if refuse {
                req.refuse("not today");
                return (state_dir, false);
            }
            let fds: Vec<(&str, BorrowedFd<'_>)> =
                sockets.iter().map(|(n, l)| (*n, l.as_fd())).collect();
            let successor = req.hand_over(&fds).unwrap();
            let done = successor.wait_done(Duration::from_secs(5));
            if done {
                let c = ServiceCounters {
                    connections: 7,
                    ..Default::default()
                };
                let carried = Carried {
                    services: vec![("198.18.0.10:80".parse().unwrap(), c)],
                    checks: Vec::new(),
                };
                successor.send_connections(Vec::new(), carried).unwrap();
            }
            (state_dir, done)
        })
    }

    #[test]
    fn listening_sockets_cross_over_and_keep_their_queue() {
        let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").unwrap();
        let (proxy_addr, admin_addr) = (proxy.local_addr().unwrap(), admin.local_addr().unwrap());
        // A connection waiting in the proxy listener's queue before the hand-over.
        let mut early = std::net::TcpStream::connect(proxy_addr).unwrap();
        early.write_all(b"hi").unwrap();
        let (pred, theirs) = pair();
        let old = serve(theirs, vec![(PROXY_V4, proxy), (ADMIN, admin)], false);
        let handed = pred.take_over(Path::new("/sys/fs/bpf/lb/x")).unwrap();
        let v4 = handed.proxy_v4.expect("proxy listener handed over");
        assert_eq!(v4.local_addr().unwrap(), proxy_addr);
        assert_eq!(
            handed.admin.as_ref().unwrap().local_addr().unwrap(),
            admin_addr
        );
        assert!(handed.proxy_v6.is_none());
        let (mut conn, _) = v4.accept().unwrap();
        let mut buf = [0u8; 2];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        handed.from.done().unwrap();
        let mut carried = Vec::new();
        let n = handed
            .from
            .receive_connections(
                |_| {},
                |c| carried.extend(c.services.iter().map(|(vip, c)| (*vip, c.connections))),
            )
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(carried, [("198.18.0.10:80".parse().unwrap(), 7)]);
        let (dir, done) = old.join().unwrap();
        assert_eq!(dir, Path::new("/sys/fs/bpf/lb/x"));
        assert!(done, "the old daemon did not hear it may go");
    }

    #[test]
    fn a_refusal_carries_its_reason() {
        let (pred, theirs) = pair();
        let old = serve(theirs, Vec::new(), true);
        match pred.take_over(Path::new("/d")) {
            Err(HandoverError::Refused { pid: 1, reason }) => assert_eq!(reason, "not today"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("taken over despite the refusal"),
        }
        old.join().unwrap();
    }

    #[test]
    fn a_successor_that_goes_away_is_not_ready() {
        let (pred, theirs) = pair();
        let old = serve(theirs, Vec::new(), false);
        let handed = pred.take_over(Path::new("/d")).unwrap();
        drop(handed);
        let (_, done) = old.join().unwrap();
        assert!(!done);
    }

    #[test]
    fn only_the_same_state_directory_on_the_same_filesystem_is_handed_over() {
        let dir = std::env::temp_dir();
        let req = |state_dir: &Path, state_id| Request {
            sock: Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap().0,
            pid: 1,
            state_dir: state_dir.to_path_buf(),
            state_id,
        };
        assert_eq!(req(&dir, dir_id(&dir)).mismatch(&dir), None);
        let other = req(Path::new("/sys/fs/bpf/elsewhere"), dir_id(&dir)).mismatch(&dir);
        assert!(other.is_some_and(|r| r.contains("--state-dir")));
        // The same path, but another filesystem's directory (a private bpffs).
        let private = req(&dir, Some((u64::MAX, 1))).mismatch(&dir);
        assert!(private.is_some_and(|r| r.contains("nsenter")));
        assert!(req(&dir, None).mismatch(&dir).is_some());
    }

    #[test]
    fn many_backends_check_totals_cross_in_chunks() {
        let (pred, theirs) = pair();
        let old = std::thread::spawn(move || {
            let Some((
                Message::Takeover {
                    pid,
                    state_dir,
                    state_id,
                },
                _,
            )) = recv(theirs.as_fd()).unwrap()
            else {
                panic!("no takeover request");
            };
            let req = Request {
                sock: theirs,
                pid,
                state_dir,
                state_id,
            };
            let successor = req.hand_over(&[]).unwrap();
            assert!(successor.wait_done(Duration::from_secs(5)));
            let checks = (0..3000u16)
                .map(|i| CheckTotals {
                    service: format!("service-{}", i % 16),
                    addr: std::net::SocketAddr::from(([198, 18, 1, (i % 250) as u8], 1000 + i)),
                    passed: u64::from(i),
                    failed: 1,
                    latency: Default::default(),
                })
                .collect();
            successor
                .send_connections(
                    Vec::new(),
                    Carried {
                        services: Vec::new(),
                        checks,
                    },
                )
                .unwrap();
        });
        let handed = pred.take_over(Path::new("/d")).unwrap();
        handed.from.done().unwrap();
        let mut got = Vec::new();
        handed
            .from
            .receive_connections(|_| {}, |c| got.extend(c.checks))
            .unwrap();
        old.join().unwrap();
        assert_eq!(got.len(), 3000);
        assert_eq!(
            got.iter().map(|c| c.passed).sum::<u64>(),
            (0..3000u64).sum::<u64>()
        );
    }
}
