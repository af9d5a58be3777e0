//! One check of one backend: a TCP connect, then the preamble and, for an http check, a
//! `GET` whose response status must lie in the spec's range (hyper's HTTP/1 client over
//! the connection the probe opened).
//!
//! Check sockets close with `SO_LINGER` 0 (a RST, as HAProxy does), so frequent checks
//! leave no `TIME_WAIT` pile on the LB host. With a zero linger, `close` does not block
//! (only a non-zero linger does, which is why tokio deprecates its setter).

use super::spec::{HealthCheck, HealthConfig};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use socket2::SockRef;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// The most bytes buffered while reading a check's response head (hyper's minimum): a
/// health endpoint's head is a few hundred bytes.
const MAX_RESPONSE_BUF: usize = 8192;

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
    /// The backend answered something that is not an HTTP response.
    BadResponse(String),
    /// The TLS handshake of an https check failed (or its certificate did not verify).
    Tls(String),
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
            FailReason::Tls(what) => write!(f, "tls: {what}"),
            FailReason::Io(what) => write!(f, "error: {what}"),
        }
    }
}

impl From<&io::Error> for FailReason {
    fn from(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => FailReason::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => FailReason::Reset,
            io::ErrorKind::TimedOut => FailReason::Timeout,
            _ => FailReason::Io(e.to_string()),
        }
    }
}

impl From<io::Error> for FailReason {
    fn from(e: io::Error) -> Self {
        FailReason::from(&e)
    }
}

impl From<hyper::Error> for FailReason {
    /// A socket error under the HTTP exchange keeps its own name ("connection reset").
    fn from(e: hyper::Error) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<io::Error>() {
                return FailReason::from(io);
            }
            cause = c.source();
        }
        if e.is_incomplete_message() || e.is_canceled() {
            FailReason::BadResponse("connection closed without a response".into())
        } else if e.is_parse() {
            FailReason::BadResponse(format!("not an HTTP response: {e}"))
        } else {
            FailReason::Io(e.to_string())
        }
    }
}

/// Runs one check of the backend `backend` (its port replaced by `spec.port` if set),
/// bounded as a whole by `spec.timeout`. Returns the result and the time it took.
pub async fn check_once(
    backend: SocketAddr,
    spec: &HealthConfig,
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
async fn probe(target: SocketAddr, spec: &HealthConfig) -> Result<(), FailReason> {
    if spec.check == HealthCheck::None {
        return Ok(());
    }
    if let Some(path) = &spec.path {
        // The service's own path first: the encapsulated SYN to VIP:port.
        super::path::syn_ack(target.ip(), target.port(), path).await?;
    }
    let mut stream = connect(target).await?;
    let preamble = spec.preamble.as_deref().filter(|p| !p.is_empty());
    if let Some(preamble) = preamble {
        stream.write_all(preamble).await?;
    }
    match &spec.check {
        HealthCheck::None => Ok(()),
        HealthCheck::Tcp => {
            if preamble.is_some() {
                // A RST now could discard the preamble before the backend reads it and
                // make a PROXY-protocol backend log an error: close with a FIN instead.
                SockRef::from(&stream).set_linger(None)?;
                stream.shutdown().await?;
            }
            Ok(())
        }
        HealthCheck::Http {
            path,
            host,
            status,
            tls,
        } => {
            let sni = host.as_deref();
            let host = host.clone().unwrap_or_else(|| host_of(target));
            let request = Request::get(path.as_str())
                .header(HOST, &host)
                .header(USER_AGENT, "lb-health-check")
                .header(ACCEPT, "*/*")
                .header(CONNECTION, "close")
                .body(Empty::new())
                .map_err(|_| {
                    FailReason::Io(format!(
                        "invalid check request (path {path:?}, host {host:?})"
                    ))
                })?;
            let response = match tls {
                None => exchange(stream, request).await?,
                Some(tls) => {
                    let stream = super::tls::connect(stream, target, sni, tls).await?;
                    exchange(stream, request).await?
                }
            };
            let code = response.status().as_u16();
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

/// Sends `request` on `stream` and returns the response head (the body is not read: the
/// status decides, and dropping the connection resets it).
///
/// The connection is driven here rather than in a task of its own, so a check that times
/// out drops the socket with it.
async fn exchange<S>(
    stream: S,
    request: Request<Empty<Bytes>>,
) -> Result<Response<hyper::body::Incoming>, FailReason>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::Builder::new()
        // As the hand-written request had them; some backends match header names exactly.
        .title_case_headers(true)
        .max_buf_size(MAX_RESPONSE_BUF)
        .handshake(TokioIo::new(stream))
        .await?;
    let mut response = std::pin::pin!(sender.send_request(request));
    let ended = {
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            biased;
            r = &mut response => return Ok(r?),
            r = &mut conn => r,
        }
        // The connection is dropped here, so the request cannot wait on it any more.
    };
    // The connection ended first: the request's own error says why, unless it only
    // says that the connection went away.
    match (response.await, ended) {
        (Ok(r), _) => Ok(r),
        (Err(e), Err(conn_error)) if e.is_canceled() => Err(conn_error.into()),
        (Err(e), _) => Err(e.into()),
    }
}

/// The default `Host` header: `ip:port`, an IPv6 address in brackets (without a zone).
fn host_of(target: SocketAddr) -> String {
    match target.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", target.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", target.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::spec::DEFAULT_HTTP_STATUS;
    use crate::health::test_servers::{free_port, http, http_server, silent_server, spec};
    use std::net::{Ipv6Addr, SocketAddrV6};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A PROXY v2 LOCAL header, as a proxy service's checks send first.
    const PREAMBLE: [u8; 16] = *b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

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
    fn host_header_brackets_ipv6_without_zone() {
        let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 8080, 0, 3));
        assert_eq!(host_of(v6), "[::1]:8080");
        assert_eq!(host_of("10.1.2.3:80".parse().unwrap()), "10.1.2.3:80");
    }

    #[tokio::test]
    async fn tcp_check_passes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (r, latency) = check_once(addr, &spec(HealthCheck::Tcp)).await;
        assert_eq!(r, Ok(()));
        assert!(latency < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn tcp_check_refused() {
        let addr = free_port().await;
        let (r, _) = check_once(addr, &spec(HealthCheck::Tcp)).await;
        assert_eq!(r, Err(FailReason::Refused));
    }

    #[tokio::test]
    async fn check_uses_the_health_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let health = listener.local_addr().unwrap();
        let backend = free_port().await;
        let s = HealthConfig {
            port: Some(health.port()),
            ..spec(HealthCheck::Tcp)
        };
        assert_eq!(check_once(backend, &s).await.0, Ok(()));
        assert_eq!(
            check_once(backend, &spec(HealthCheck::Tcp)).await.0,
            Err(FailReason::Refused)
        );
    }

    #[tokio::test]
    async fn http_check_times_out_on_a_silent_server() {
        let addr = silent_server().await;
        let s = HealthConfig {
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
        let s = spec(HealthCheck::Http {
            path: "/".into(),
            host: Some("web.example".into()),
            status: DEFAULT_HTTP_STATUS,
            tls: None,
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
            spec(HealthCheck::Http {
                path: "/".into(),
                host: None,
                status: (lo, hi),
                tls: None,
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
        let s = HealthConfig {
            preamble: Some(PREAMBLE.to_vec()),
            ..spec(http("/health"))
        };
        assert_eq!(check_once(addr, &s).await.0, Ok(()));
        let got = seen.lock().unwrap()[0].clone();
        assert_eq!(&got[..16], PREAMBLE.as_slice());
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
        let s = HealthConfig {
            preamble: Some(PREAMBLE.to_vec()),
            ..spec(HealthCheck::Tcp)
        };
        assert_eq!(check_once(addr, &s).await.0, Ok(()));
        assert_eq!(server.await.unwrap(), PREAMBLE.to_vec());
    }

    /// A server that answers each connection with `response` (if any), then reports
    /// how the client closed: `Ok(bytes after the response)` for a FIN, the error for a
    /// reset.
    async fn closing_server(
        response: &'static [u8],
    ) -> (SocketAddr, tokio::task::JoinHandle<io::Result<usize>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            if !response.is_empty() {
                let _ = s.read(&mut buf).await?;
                s.write_all(response).await?;
            }
            let mut n = 0;
            loop {
                match s.read(&mut buf).await? {
                    0 => return Ok(n),
                    m => n += m,
                }
            }
        });
        (addr, server)
    }

    #[tokio::test]
    async fn check_sockets_close_with_a_reset() {
        let (addr, server) = closing_server(b"").await;
        assert_eq!(check_once(addr, &spec(HealthCheck::Tcp)).await.0, Ok(()));
        let closed = server.await.unwrap().unwrap_err();
        assert_eq!(closed.kind(), io::ErrorKind::ConnectionReset);

        let (addr, server) = closing_server(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").await;
        assert_eq!(check_once(addr, &spec(http("/"))).await.0, Ok(()));
        let closed = server.await.unwrap().unwrap_err();
        assert_eq!(closed.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn http_reset_by_the_backend_is_named() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        });
        let (r, _) = check_once(addr, &spec(http("/"))).await;
        assert_eq!(r, Err(FailReason::Reset));
        assert_eq!(r.unwrap_err().to_string(), "connection reset");
    }

    #[tokio::test]
    async fn no_check_passes_without_connecting() {
        let addr = free_port().await;
        assert_eq!(check_once(addr, &spec(HealthCheck::None)).await.0, Ok(()));
    }
}
