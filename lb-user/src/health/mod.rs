//! Active health checks of backends: the probe (`check_once`), the rise/fall state
//! machine (`Tracker`) and one scheduling task per backend (`spawn_checker`).
//!
//! Why it looks like this:
//! - The engine knows nothing of the maps. It reports each check result on a channel; the
//!   control plane feeds the results to a `Tracker` per backend and, on a transition,
//!   updates the backend state and rebuilds the Maglev table. That keeps the probe
//!   testable against plain sockets and the map logic testable without sockets.
//! - Every backend has its own task, so a check that hangs until its timeout never delays
//!   the checks of other backends, and the first check of each backend is offset by a
//!   hash of its key (`spread_delay`), so a service's backends are not probed in
//!   lock-step (the thundering herd that ELB and HAProxy also avoid).
//! - Semantics follow ELB/HAProxy: `fall` consecutive failures take a backend down,
//!   `rise` consecutive successes bring it back; any result of the other kind resets the
//!   streak.
//! - `CheckSpec::preamble` is the seam for PROXY-protocol services: a backend that
//!   listens with proxy_protocol rejects a connection that does not start with a PROXY
//!   header, so its checks send `proxy_v2_local_header()` first.
//! - Check sockets close with `SO_LINGER` 0 (a RST, as HAProxy does), so frequent
//!   checks leave no `TIME_WAIT` pile on the LB host. With a zero linger, `close` does
//!   not block (only a non-zero linger does, which is why tokio deprecates its setter).

pub mod histogram;

use lb_common::hash::fnv1a64;
use socket2::SockRef;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// The default range of HTTP status codes that pass a check (as ELB's "200-399").
pub const DEFAULT_HTTP_STATUS: (u16, u16) = (200, 399);

/// The most bytes read while looking for the status line of an HTTP check response.
pub const MAX_RESPONSE_HEAD: usize = 4096;

/// What a check does once connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// The connection succeeds (then it is closed).
    Tcp,
    /// `GET path` answers with a status code in `status` (inclusive range).
    Http {
        /// Request path, starting with `/`.
        path: String,
        /// `Host` header; `None` sends the checked address (`ip:port`, IPv6 in brackets).
        host: Option<String>,
        /// Passing status codes, low and high inclusive.
        status: (u16, u16),
    },
}

/// How a service's backends are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// Port to check; `None` checks the backend's own port.
    pub port: Option<u16>,
    /// Time between the starts of two checks of one backend.
    pub interval: Duration,
    /// Bound on a whole check (connect, preamble, HTTP exchange).
    pub timeout: Duration,
    /// Consecutive successes that bring a backend up.
    pub rise: u32,
    /// Consecutive failures that take a backend down.
    pub fall: u32,
    /// Bytes written right after connect, before the HTTP request (or alone for a TCP
    /// check): a PROXY protocol header for services whose backends expect one.
    pub preamble: Option<Vec<u8>>,
}

impl Default for CheckSpec {
    /// The daemon's defaults: TCP on the backend's port, every 5 s, 2 s timeout,
    /// rise 2, fall 2.
    fn default() -> Self {
        CheckSpec {
            kind: CheckKind::Tcp,
            port: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 2,
            preamble: None,
        }
    }
}

/// Why a `CheckSpec` cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("health check interval must be greater than zero")]
    ZeroInterval,
    #[error("health check timeout must be greater than zero")]
    ZeroTimeout,
    #[error("health check timeout ({timeout:?}) must be shorter than the interval ({interval:?})")]
    TimeoutNotShorter {
        timeout: Duration,
        interval: Duration,
    },
    #[error("healthy and unhealthy thresholds must be at least 1")]
    ZeroThreshold,
    #[error(
        "health check path {0:?} must start with / and contain no spaces or control characters"
    )]
    BadPath(String),
    #[error(
        "health check host {0:?} must be non-empty and contain no spaces or control characters"
    )]
    BadHost(String),
    #[error("health check status range {0}-{1} must lie within 100-599 with low <= high")]
    BadStatus(u16, u16),
}

impl CheckSpec {
    /// The address a check of backend `backend` connects to (`port` applied).
    pub fn target(&self, backend: SocketAddr) -> SocketAddr {
        SocketAddr::new(backend.ip(), self.port.unwrap_or(backend.port()))
    }

    /// Checks the spec for values that would make checks meaningless or let a path or
    /// host inject bytes into the request.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.interval.is_zero() {
            return Err(SpecError::ZeroInterval);
        }
        if self.timeout.is_zero() {
            return Err(SpecError::ZeroTimeout);
        }
        if self.timeout >= self.interval {
            return Err(SpecError::TimeoutNotShorter {
                timeout: self.timeout,
                interval: self.interval,
            });
        }
        if self.rise == 0 || self.fall == 0 {
            return Err(SpecError::ZeroThreshold);
        }
        if let CheckKind::Http { path, host, status } = &self.kind {
            if !path.starts_with('/') || !is_token_text(path) {
                return Err(SpecError::BadPath(path.clone()));
            }
            if let Some(h) = host
                && (h.is_empty() || !is_token_text(h))
            {
                return Err(SpecError::BadHost(h.clone()));
            }
            let (lo, hi) = *status;
            if lo > hi || lo < 100 || hi > 599 {
                return Err(SpecError::BadStatus(lo, hi));
            }
        }
        Ok(())
    }
}

/// Printable ASCII without spaces: safe in a request line or header value.
fn is_token_text(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

/// The PROXY protocol v2 header with the LOCAL command and no addresses: what a health
/// check sends to a backend that expects PROXY protocol (the backend then uses the
/// connection's real addresses).
pub fn proxy_v2_local_header() -> Vec<u8> {
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(b"\r\n\r\n\0\r\nQUIT\n"); // signature
    h.push(0x20); // version 2, command LOCAL
    h.push(0x00); // AF_UNSPEC, UNSPEC
    h.extend_from_slice(&0u16.to_be_bytes()); // no address block
    h
}

/// Why a check failed, as an operator reads it in a log or the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The check did not finish within the timeout.
    Timeout,
    /// Nothing listens on the port (RST to the SYN).
    Refused,
    /// The backend reset the connection.
    Reset,
    /// The HTTP status code is outside the accepted range.
    Status(u16),
    /// The backend answered something that is not an HTTP status line.
    BadResponse(String),
    /// Any other socket error.
    Io(String),
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::Timeout => f.write_str("timeout"),
            FailReason::Refused => f.write_str("connection refused"),
            FailReason::Reset => f.write_str("connection reset"),
            FailReason::Status(code) => write!(f, "status {code}"),
            FailReason::BadResponse(what) => write!(f, "bad response: {what}"),
            FailReason::Io(what) => write!(f, "error: {what}"),
        }
    }
}

impl From<io::Error> for FailReason {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => FailReason::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => FailReason::Reset,
            io::ErrorKind::TimedOut => FailReason::Timeout,
            _ => FailReason::Io(e.to_string()),
        }
    }
}

/// Runs one check of the backend `backend` (its port replaced by `spec.port` if set),
/// bounded as a whole by `spec.timeout`. Returns the result and the time it took.
pub async fn check_once(
    backend: SocketAddr,
    spec: &CheckSpec,
) -> (Result<(), FailReason>, Duration) {
    let start = Instant::now();
    let target = spec.target(backend);
    let result = match tokio::time::timeout(spec.timeout, probe(target, spec)).await {
        Ok(r) => r,
        Err(_) => Err(FailReason::Timeout),
    };
    (result, start.elapsed())
}

/// The check itself, unbounded in time (`check_once` bounds it).
async fn probe(target: SocketAddr, spec: &CheckSpec) -> Result<(), FailReason> {
    let mut stream = connect(target).await?;
    if let Some(preamble) = spec.preamble.as_deref().filter(|p| !p.is_empty()) {
        stream.write_all(preamble).await?;
    }
    match &spec.kind {
        CheckKind::Tcp => {
            if spec.preamble.as_deref().is_some_and(|p| !p.is_empty()) {
                // A RST now could discard the preamble before the backend reads it and
                // make a PROXY-protocol backend log an error: close with a FIN instead.
                SockRef::from(&stream).set_linger(None)?;
                stream.shutdown().await?;
            }
            Ok(())
        }
        CheckKind::Http { path, host, status } => {
            let host = match host {
                Some(h) => h.clone(),
                None => host_of(target),
            };
            if !path.starts_with('/') || !is_token_text(path) || !is_token_text(&host) {
                return Err(FailReason::Io(format!(
                    "invalid check request (path {path:?}, host {host:?})"
                )));
            }
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-health-check\r\n\
                 Accept: */*\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await?;
            let code = read_status(&mut stream).await?;
            if (status.0..=status.1).contains(&code) {
                Ok(())
            } else {
                Err(FailReason::Status(code))
            }
        }
    }
}

/// Connects with `SO_LINGER` 0 set, so dropping the stream resets the connection.
async fn connect(target: SocketAddr) -> Result<TcpStream, FailReason> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    SockRef::from(&socket).set_linger(Some(Duration::ZERO))?;
    Ok(socket.connect(target).await?)
}

/// The default `Host` header: `ip:port`, an IPv6 address in brackets (without a zone).
fn host_of(target: SocketAddr) -> String {
    match target.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", target.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", target.port()),
    }
}

/// Reads until the end of the status line (at most `MAX_RESPONSE_HEAD` bytes) and
/// returns its status code.
async fn read_status(stream: &mut TcpStream) -> Result<u16, FailReason> {
    let mut buf = vec![0u8; MAX_RESPONSE_HEAD];
    let mut len = 0;
    loop {
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            return parse_status_line(&buf[..end]);
        }
        if len == buf.len() {
            return Err(FailReason::BadResponse(format!(
                "no status line in the first {MAX_RESPONSE_HEAD} bytes"
            )));
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(FailReason::BadResponse(if len == 0 {
                "connection closed without a response".into()
            } else {
                "connection closed within the status line".into()
            }));
        }
        len += n;
    }
}

/// Parses `HTTP/1.x NNN reason` (the line without its `\n`).
fn parse_status_line(line: &[u8]) -> Result<u16, FailReason> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let bad = || {
        let shown: String = String::from_utf8_lossy(&line[..line.len().min(64)])
            .chars()
            .map(|c| if c.is_control() { '.' } else { c })
            .collect();
        FailReason::BadResponse(format!("not an HTTP status line: {shown:?}"))
    };
    let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(bad)?;
    // One version digit, a space, three digits, then a space or the end.
    if rest.len() < 5 || !rest[0].is_ascii_digit() || rest[1] != b' ' {
        return Err(bad());
    }
    let code = &rest[2..5];
    if !code.iter().all(u8::is_ascii_digit) || rest.get(5).is_some_and(|&b| b != b' ') {
        return Err(bad());
    }
    let code = code
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&code) {
        return Err(bad());
    }
    Ok(code)
}

/// A health state change reported by `Tracker::record`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// The rise/fall state machine of one backend (ELB/HAProxy semantics): an up backend
/// goes down after `fall` consecutive failures, a down (or initial) one comes up after
/// `rise` consecutive successes; a result of the other kind resets the streak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    up: bool,
    rise: u32,
    fall: u32,
    successes: u32,
    failures: u32,
}

impl Tracker {
    /// A tracker starting `up` or not; thresholds of 0 count as 1.
    pub fn new(up: bool, rise: u32, fall: u32) -> Self {
        Tracker {
            up,
            rise: rise.max(1),
            fall: fall.max(1),
            successes: 0,
            failures: 0,
        }
    }

    /// Whether the backend is currently considered healthy.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Consecutive successes so far (0 after a failure).
    pub fn successes(&self) -> u32 {
        self.successes
    }

    /// Consecutive failures so far (0 after a success).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records one check result; returns the transition it causes, if any.
    pub fn record(&mut self, ok: bool) -> Option<Transition> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= self.rise {
                self.up = true;
                return Some(Transition::Up);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= self.fall {
                self.up = false;
                return Some(Transition::Down);
            }
        }
        None
    }
}

/// One check result of the backend `id`, as sent by a checker task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub id: u64,
    pub result: Result<(), FailReason>,
    pub latency: Duration,
}

/// A deterministic offset in `[0, interval)` derived from `key` (e.g. the backend's
/// address), so the checks of different backends are spread over the interval.
pub fn spread_delay(key: &[u8], interval: Duration) -> Duration {
    let span = interval.as_nanos();
    if span == 0 {
        return Duration::ZERO;
    }
    // FNV-1a alone varies little in its low bits for keys that differ in one byte; the
    // MurmurHash3 finalizer spreads them.
    let mut h = fnv1a64(key);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let offset = u128::from(h) % span;
    Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// Starts the checker task of backend `id`: it waits `first_delay`, then checks
/// `backend` every `spec.interval` and sends each result on `tx`. It ends when the
/// receiver is dropped or the handle is aborted.
pub fn spawn_checker(
    id: u64,
    backend: SocketAddr,
    spec: CheckSpec,
    first_delay: Duration,
    tx: UnboundedSender<CheckResult>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(first_delay) => {}
        }
        let mut ticker = tokio::time::interval(spec.interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = ticker.tick() => {}
            }
            let (result, latency) = check_once(backend, &spec).await;
            if tx
                .send(CheckResult {
                    id,
                    result,
                    latency,
                })
                .is_err()
            {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddrV6};
    use std::sync::{Arc, Mutex};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    fn spec(kind: CheckKind) -> CheckSpec {
        CheckSpec {
            kind,
            timeout: Duration::from_secs(2),
            ..CheckSpec::default()
        }
    }

    fn http(path: &str) -> CheckKind {
        CheckKind::Http {
            path: path.into(),
            host: None,
            status: DEFAULT_HTTP_STATUS,
        }
    }

    /// Bytes a test server received on each connection.
    type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

    /// An HTTP server on 127.0.0.1 that reads each connection up to the end of a request
    /// head, records the bytes and answers `response`.
    async fn http_server(response: &'static str) -> (SocketAddr, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock().unwrap().push(got);
                    let _ = s.write_all(response.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (addr, seen)
    }

    /// A server that accepts connections and never answers (keeps them open).
    async fn silent_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (s, _) = listener.accept().await.unwrap();
                held.push(s);
            }
        });
        addr
    }

    /// A loopback port with nothing listening.
    async fn free_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    #[test]
    fn proxy_v2_local_header_matches_the_spec() {
        assert_eq!(
            proxy_v2_local_header(),
            [
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // sig
                0x20, // version 2 (high nibble), command LOCAL (0)
                0x00, // UNSPEC
                0x00, 0x00, // length 0
            ]
        );
    }

    #[test]
    fn fail_reasons_read_well() {
        assert_eq!(FailReason::Timeout.to_string(), "timeout");
        assert_eq!(FailReason::Refused.to_string(), "connection refused");
        assert_eq!(FailReason::Reset.to_string(), "connection reset");
        assert_eq!(FailReason::Status(503).to_string(), "status 503");
        assert_eq!(
            FailReason::BadResponse("x".into()).to_string(),
            "bad response: x"
        );
        assert_eq!(FailReason::Io("y".into()).to_string(), "error: y");
    }

    #[test]
    fn tracker_goes_down_after_fall_failures() {
        let mut t = Tracker::new(true, 2, 3);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(Transition::Down));
        assert!(!t.is_up());
        assert_eq!(t.record(false), None, "no repeated transition");
    }

    #[test]
    fn tracker_comes_up_after_rise_successes() {
        let mut t = Tracker::new(false, 2, 2);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Transition::Up));
        assert!(t.is_up());
        assert_eq!(t.record(true), None);
    }

    #[test]
    fn tracker_streaks_reset_on_the_other_result() {
        let mut t = Tracker::new(true, 2, 2);
        for _ in 0..10 {
            assert_eq!(t.record(false), None);
            assert_eq!(t.record(true), None);
        }
        assert!(t.is_up());
        assert_eq!(t.record(false), None);
        assert_eq!(t.failures(), 1);
        assert_eq!(t.record(false), Some(Transition::Down));
        // Down: a success then a failure resets the rise streak.
        assert_eq!(t.record(true), None);
        assert_eq!(t.successes(), 1);
        assert_eq!(t.record(false), None);
        assert_eq!(t.successes(), 0);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Transition::Up));
    }

    #[test]
    fn tracker_thresholds_of_one_and_zero() {
        let mut t = Tracker::new(true, 1, 1);
        assert_eq!(t.record(false), Some(Transition::Down));
        assert_eq!(t.record(true), Some(Transition::Up));
        let mut z = Tracker::new(false, 0, 0);
        assert_eq!(z.record(true), Some(Transition::Up));
        assert_eq!(z.record(false), Some(Transition::Down));
    }

    #[test]
    fn spread_delay_is_deterministic_in_range_and_spread() {
        let interval = Duration::from_secs(5);
        let delays: Vec<Duration> = (1..=20)
            .map(|i| spread_delay(format!("10.0.0.{i}:80").as_bytes(), interval))
            .collect();
        assert!(delays.iter().all(|d| *d < interval));
        assert_eq!(delays[3], spread_delay(b"10.0.0.4:80", interval));
        let mut quarters = [0; 4];
        for d in &delays {
            quarters[(d.as_nanos() * 4 / interval.as_nanos()) as usize] += 1;
        }
        assert!(quarters.iter().all(|&q| q > 0), "{quarters:?}");
        assert_eq!(spread_delay(b"x", Duration::ZERO), Duration::ZERO);
        assert!(spread_delay(b"x", Duration::from_nanos(1)).is_zero());
    }

    #[test]
    fn spec_validation() {
        assert_eq!(CheckSpec::default().validate(), Ok(()));
        let mut s = spec(http("/health"));
        s.timeout = s.interval;
        assert!(matches!(
            s.validate(),
            Err(SpecError::TimeoutNotShorter { .. })
        ));
        let s = spec(http("health"));
        assert!(matches!(s.validate(), Err(SpecError::BadPath(_))));
        let s = spec(http("/a\r\nX: y"));
        assert!(matches!(s.validate(), Err(SpecError::BadPath(_))));
        let s = spec(CheckKind::Http {
            path: "/".into(),
            host: None,
            status: (400, 200),
        });
        assert_eq!(s.validate(), Err(SpecError::BadStatus(400, 200)));
        let s = CheckSpec {
            rise: 0,
            ..CheckSpec::default()
        };
        assert_eq!(s.validate(), Err(SpecError::ZeroThreshold));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Ok(503));
        assert!(parse_status_line(b"HTTP/1.1 20 OK").is_err());
        assert!(parse_status_line(b"HTTP/1.1 2000 OK").is_err());
        assert!(parse_status_line(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_status_line(b"HTTP/1.1 099 x").is_err());
    }

    #[test]
    fn host_header_brackets_ipv6_without_zone() {
        let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 8080, 0, 3));
        assert_eq!(host_of(v6), "[::1]:8080");
        assert_eq!(host_of("10.1.2.3:80".parse().unwrap()), "10.1.2.3:80");
    }

    #[tokio::test]
    async fn tcp_check_passes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (r, latency) = check_once(addr, &spec(CheckKind::Tcp)).await;
        assert_eq!(r, Ok(()));
        assert!(latency < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn tcp_check_refused() {
        let addr = free_port().await;
        let (r, _) = check_once(addr, &spec(CheckKind::Tcp)).await;
        assert_eq!(r, Err(FailReason::Refused));
    }

    #[tokio::test]
    async fn check_uses_the_health_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let health = listener.local_addr().unwrap();
        let backend = free_port().await;
        let s = CheckSpec {
            port: Some(health.port()),
            ..spec(CheckKind::Tcp)
        };
        assert_eq!(check_once(backend, &s).await.0, Ok(()));
        assert_eq!(
            check_once(backend, &spec(CheckKind::Tcp)).await.0,
            Err(FailReason::Refused)
        );
    }

    #[tokio::test]
    async fn http_check_times_out_on_a_silent_server() {
        let addr = silent_server().await;
        let s = CheckSpec {
            timeout: Duration::from_millis(200),
            ..spec(http("/health"))
        };
        let (r, latency) = check_once(addr, &s).await;
        assert_eq!(r, Err(FailReason::Timeout));
        assert!(latency >= Duration::from_millis(200), "{latency:?}");
        assert!(latency < Duration::from_secs(2), "{latency:?}");
    }

    #[tokio::test]
    async fn http_200_passes_and_sends_the_request() {
        let (addr, seen) = http_server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let (r, _) = check_once(addr, &spec(http("/health/instance"))).await;
        assert_eq!(r, Ok(()));
        let req = String::from_utf8(seen.lock().unwrap()[0].clone()).unwrap();
        assert!(
            req.starts_with("GET /health/instance HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains(&format!("\r\nHost: {addr}\r\n")), "{req}");
        assert!(req.contains("\r\nUser-Agent: lb-health-check\r\n"), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
    }

    #[tokio::test]
    async fn http_host_header_from_spec() {
        let (addr, seen) = http_server("HTTP/1.1 204 No Content\r\n\r\n").await;
        let s = spec(CheckKind::Http {
            path: "/".into(),
            host: Some("web.example".into()),
            status: DEFAULT_HTTP_STATUS,
        });
        assert_eq!(check_once(addr, &s).await.0, Ok(()));
        let req = String::from_utf8(seen.lock().unwrap()[0].clone()).unwrap();
        assert!(req.contains("\r\nHost: web.example\r\n"), "{req}");
    }

    #[tokio::test]
    async fn http_503_fails_with_its_status() {
        let (addr, _) = http_server("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let (r, _) = check_once(addr, &spec(http("/health"))).await;
        assert_eq!(r, Err(FailReason::Status(503)));
    }

    #[tokio::test]
    async fn http_status_range_is_inclusive() {
        let (addr, _) = http_server("HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n").await;
        let range = |lo, hi| {
            spec(CheckKind::Http {
                path: "/".into(),
                host: None,
                status: (lo, hi),
            })
        };
        assert_eq!(check_once(addr, &range(200, 399)).await.0, Ok(()));
        assert_eq!(check_once(addr, &range(302, 302)).await.0, Ok(()));
        assert_eq!(
            check_once(addr, &range(200, 299)).await.0,
            Err(FailReason::Status(302))
        );
    }

    #[tokio::test]
    async fn http_garbage_and_silent_close_are_bad_responses() {
        let (addr, _) = http_server("SSH-2.0-OpenSSH_9.2\r\n").await;
        let (r, _) = check_once(addr, &spec(http("/"))).await;
        assert!(matches!(r, Err(FailReason::BadResponse(_))), "{r:?}");
        let (addr, _) = http_server("").await;
        let (r, _) = check_once(addr, &spec(http("/"))).await;
        assert!(matches!(r, Err(FailReason::BadResponse(_))), "{r:?}");
    }

    #[tokio::test]
    async fn http_preamble_comes_first() {
        let (addr, seen) = http_server("HTTP/1.1 200 OK\r\n\r\n").await;
        let s = CheckSpec {
            preamble: Some(proxy_v2_local_header()),
            ..spec(http("/health"))
        };
        assert_eq!(check_once(addr, &s).await.0, Ok(()));
        let got = seen.lock().unwrap()[0].clone();
        assert_eq!(&got[..16], proxy_v2_local_header().as_slice());
        assert!(got[16..].starts_with(b"GET /health HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn tcp_preamble_arrives() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let s = CheckSpec {
            preamble: Some(proxy_v2_local_header()),
            ..spec(CheckKind::Tcp)
        };
        assert_eq!(check_once(addr, &s).await.0, Ok(()));
        assert_eq!(server.await.unwrap(), proxy_v2_local_header());
    }

    #[tokio::test]
    async fn checker_reports_at_the_interval_and_a_slow_target_delays_no_other() {
        let (fast, _) = http_server("HTTP/1.1 200 OK\r\n\r\n").await;
        let slow = silent_server().await;
        let s = CheckSpec {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(80),
            ..spec(http("/"))
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let h1 = spawn_checker(1, fast, s.clone(), Duration::ZERO, tx.clone());
        let h2 = spawn_checker(2, slow, s, Duration::ZERO, tx);

        let start = Instant::now();
        let mut fast_at = Vec::new();
        let mut slow_results = Vec::new();
        while start.elapsed() < Duration::from_millis(650) {
            let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await
            else {
                continue;
            };
            match r.id {
                1 => {
                    assert_eq!(r.result, Ok(()));
                    fast_at.push(start.elapsed());
                }
                2 => slow_results.push(r.result),
                other => panic!("unexpected id {other}"),
            }
        }
        // Ticks at 0, 100, ..., 600 ms: about 7 results; loose bounds.
        assert!(
            (4..=9).contains(&fast_at.len()),
            "fast results at {fast_at:?}"
        );
        for w in fast_at.windows(2) {
            assert!(w[1] - w[0] < Duration::from_millis(250), "{fast_at:?}");
        }
        assert!(!slow_results.is_empty());
        assert!(slow_results.iter().all(|r| *r == Err(FailReason::Timeout)));

        // Dropping the receiver ends both tasks.
        drop(rx);
        tokio::time::timeout(Duration::from_secs(2), async {
            h1.await.unwrap();
            h2.await.unwrap();
        })
        .await
        .expect("checker tasks end when the receiver is dropped");
    }

    #[tokio::test]
    async fn checker_waits_its_first_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        let h = spawn_checker(
            7,
            addr,
            spec(CheckKind::Tcp),
            Duration::from_millis(150),
            tx,
        );
        let r = rx.recv().await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert_eq!((r.id, r.result), (7, Ok(())));
        h.abort();
        assert!(h.await.unwrap_err().is_cancelled());
    }
}
