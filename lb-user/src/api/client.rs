//! The admin API's client: one HTTP/1.1 request per call, JSON in and out, for `lb ctl`
//! and `lb stats` (blocking: they are one-shot commands).

use crate::api::report::Report;
use crate::api::request::Command;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Where the daemon's admin API is.
#[derive(Clone, Debug)]
pub enum Target {
    /// The Unix socket: the whole API.
    Socket(PathBuf),
    /// The TCP listener; changes need the token (`--admin-token-file` of the daemon).
    Tcp {
        addr: SocketAddr,
        token: Option<String>,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Socket(p) => write!(f, "{}", p.display()),
            Target::Tcp { addr, .. } => write!(f, "{addr}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--admin {0:?}: not IP:PORT")]
    BadAddr(String),
    #[error(
        "cannot reach the admin API at {at}: {source} (is lb running in this network namespace? give --admin-socket PATH if it listens elsewhere, or --admin IP:PORT)"
    )]
    Connect { at: String, source: std::io::Error },
    #[error("admin API at {at}: {source}")]
    Io { at: String, source: std::io::Error },
    #[error("admin API at {at}: unexpected response: {detail}")]
    Protocol { at: String, detail: String },
    /// The daemon refused the request; its message.
    #[error("{0}")]
    Refused(String),
    /// An argument the daemon would refuse (a malformed backend address).
    #[error("{0}")]
    Invalid(String),
    /// The token file of `lb ctl --token-file`.
    #[error("--token-file {0}")]
    Token(String),
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// The daemon's full report (`GET /api/v1/report`), for `lb stats`.
pub fn get_report(target: &Target) -> Result<Report, ClientError> {
    let v = request(target, "GET", "/api/v1/report", None)?;
    serde_json::from_value(v).map_err(|e| ClientError::Protocol {
        at: target.to_string(),
        detail: format!("report: {e}"),
    })
}

/// Sends a change request; returns the daemon's JSON answer.
pub fn send(target: &Target, cmd: &Command) -> Result<serde_json::Value, ClientError> {
    let (path, body) = cmd.to_wire();
    request(target, "POST", &path, body.as_ref())
}

/// A connected stream to the API.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn connect(target: &Target) -> Result<Box<dyn Stream>, ClientError> {
    let at = target.to_string();
    let connect = |source| ClientError::Connect {
        at: at.clone(),
        source,
    };
    let io = |source| ClientError::Io {
        at: at.clone(),
        source,
    };
    Ok(match target {
        Target::Socket(p) => {
            let s = UnixStream::connect(p).map_err(connect)?;
            s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
            Box::new(s)
        }
        Target::Tcp { addr, .. } => {
            let s = TcpStream::connect_timeout(addr, TIMEOUT).map_err(connect)?;
            s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
            Box::new(s)
        }
    })
}

/// One HTTP/1.1 request with `Connection: close`; returns the JSON body of a 2xx
/// answer, or the daemon's error message.
pub fn request(
    target: &Target,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let at = target.to_string();
    let io = |source| ClientError::Io {
        at: at.clone(),
        source,
    };
    let mut s = connect(target)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (host, auth) = match target {
        Target::Socket(_) => ("localhost".to_string(), String::new()),
        Target::Tcp { addr, token } => (
            addr.to_string(),
            token
                .as_ref()
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default(),
        ),
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-ctl\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(io)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Protocol {
            at: at.clone(),
            detail: format!("no end of headers in {} bytes", resp.len()),
        })?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Protocol {
            at: at.clone(),
            detail: format!("status line {:?}", head.lines().next().unwrap_or("")),
        })?;
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| ClientError::Protocol {
        at: at.clone(),
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
