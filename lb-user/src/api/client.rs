//! The admin API's client: one HTTP/1.1 request per call, JSON in and out, for `lb ctl`
//! and `lb stats` (blocking: they are one-shot commands).

use crate::api::report::Report;
use crate::api::request::Command;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--admin {0:?}: not IP:PORT")]
    BadAddr(String),
    #[error(
        "cannot reach the admin API at {addr}: {source} (is lb running in this network namespace with --admin {addr}?)"
    )]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin API at {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin API at {addr}: unexpected response: {detail}")]
    Protocol { addr: SocketAddr, detail: String },
    /// The daemon refused the request; its message.
    #[error("{0}")]
    Refused(String),
    /// An argument the daemon would refuse (a malformed backend address).
    #[error("{0}")]
    Invalid(String),
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// The daemon's full report (`GET /api/v1/report`), for `lb stats`.
pub fn get_report(addr: SocketAddr) -> Result<Report, ClientError> {
    let v = request(addr, "GET", "/api/v1/report", None)?;
    serde_json::from_value(v).map_err(|e| ClientError::Protocol {
        addr,
        detail: format!("report: {e}"),
    })
}

/// Sends a change request; returns the daemon's JSON answer.
pub fn send(addr: SocketAddr, cmd: &Command) -> Result<serde_json::Value, ClientError> {
    let (path, body) = cmd.to_wire();
    let body = body.map(|b| serde_json::to_value(b).expect("a request body serialises"));
    request(addr, "POST", &path, body.as_ref())
}

/// One HTTP/1.1 request with `Connection: close`; returns the JSON body of a 2xx
/// answer, or the daemon's error message.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let io = |source| ClientError::Io { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|source| ClientError::Connect { addr, source })?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: lb-ctl\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(io)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Protocol {
            addr,
            detail: format!("no end of headers in {} bytes", resp.len()),
        })?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Protocol {
            addr,
            detail: format!("status line {:?}", head.lines().next().unwrap_or("")),
        })?;
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| ClientError::Protocol {
        addr,
        detail: format!("status {status}, body not JSON ({e})"),
    })?;
    if (200..300).contains(&status) {
        Ok(v)
    } else {
        Err(ClientError::Refused(
            v["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("status {status}")),
        ))
    }
}
