//! Loopback servers and checks the health engine's tests check against.

use super::spec::{DEFAULT_HTTP_STATUS, HealthCheck, HealthConfig};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A check of `check` with the default timing.
pub fn spec(check: HealthCheck) -> HealthConfig {
    HealthConfig {
        check,
        timeout: Duration::from_secs(2),
        ..HealthConfig::default()
    }
}

/// An http check of `path` with the default status range.
pub fn http(path: &str) -> HealthCheck {
    HealthCheck::Http {
        path: path.into(),
        host: None,
        status: DEFAULT_HTTP_STATUS,
        tls: None,
    }
}

/// Bytes a test server received on each connection.
pub type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

/// An HTTP server on 127.0.0.1 that reads each connection up to the end of a request
/// head, records the bytes and answers `response`.
pub async fn http_server(response: &'static str) -> (SocketAddr, Seen) {
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
pub async fn silent_server() -> SocketAddr {
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
pub async fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}
