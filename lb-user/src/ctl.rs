//! `lb ctl`: a small HTTP client of the daemon's admin API, so operators need no curl.

use crate::cli::{CtlArgs, CtlCommand};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
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
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one `lb ctl` command and returns what to print.
pub fn run(args: &CtlArgs) -> Result<String, CtlError> {
    let addr = args
        .admin
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| CtlError::BadAddr(args.admin.clone()))?;
    let op = |name: &str, body: serde_json::Value| -> Result<String, CtlError> {
        let v = request(
            addr,
            "POST",
            &format!("/api/v1/backends/{name}"),
            Some(&body),
        )?;
        Ok(v["message"].as_str().unwrap_or("ok").to_string() + "\n")
    };
    match &args.command {
        CtlCommand::List { json } => {
            let v = request(addr, "GET", "/api/v1/services", None)?;
            if *json {
                Ok(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n")
            } else {
                Ok(render_list(&v))
            }
        }
        CtlCommand::Add { service, backend } => {
            let (a, w) = match backend.rsplit_once('@') {
                Some((a, w)) => (a.to_string(), Some(w)),
                None => (backend.clone(), None),
            };
            let mut body = serde_json::json!({ "service": service, "addr": a });
            if let Some(w) = w {
                let w: u32 = w.parse().map_err(|_| {
                    CtlError::Refused(format!("backend {backend:?}: weight {w:?} is not a number"))
                })?;
                body["weight"] = w.into();
            }
            op("add", body)
        }
        CtlCommand::Remove {
            service,
            backend,
            now,
        } => op(
            "remove",
            serde_json::json!({ "service": service, "addr": backend, "now": now }),
        ),
        CtlCommand::Weight {
            service,
            backend,
            weight,
        } => op(
            "weight",
            serde_json::json!({ "service": service, "addr": backend, "weight": weight }),
        ),
        CtlCommand::Drain { service, backend } => op(
            "drain",
            serde_json::json!({ "service": service, "addr": backend }),
        ),
        CtlCommand::Enable { service, backend } => op(
            "enable",
            serde_json::json!({ "service": service, "addr": backend }),
        ),
        CtlCommand::Reload => {
            let v = request(addr, "POST", "/api/v1/reload", None)?;
            let mut out = String::from("configuration reloaded\n");
            for c in v["changes"].as_array().into_iter().flatten() {
                let _ = writeln!(out, "  {}", c.as_str().unwrap_or_default());
            }
            Ok(out)
        }
    }
}

/// The daemon's full report (`GET /api/v1/report`), for `lb stats`.
pub fn get_report(addr: SocketAddr) -> Result<crate::stats::Report, CtlError> {
    let v = request(addr, "GET", "/api/v1/report", None)?;
    serde_json::from_value(v).map_err(|e| CtlError::Protocol {
        addr,
        detail: format!("report: {e}"),
    })
}

/// One HTTP/1.1 request with `Connection: close`; returns the JSON body of a 2xx
/// answer, or the daemon's error message.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, CtlError> {
    let io = |source| CtlError::Io { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|source| CtlError::Connect { addr, source })?;
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
        .ok_or_else(|| CtlError::Protocol {
            addr,
            detail: format!("no end of headers in {} bytes", resp.len()),
        })?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| CtlError::Protocol {
            addr,
            detail: format!("status line {:?}", head.lines().next().unwrap_or("")),
        })?;
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| CtlError::Protocol {
        addr,
        detail: format!("status {status}, body not JSON ({e})"),
    })?;
    if (200..300).contains(&status) {
        Ok(v)
    } else {
        Err(CtlError::Refused(
            v["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("status {status}")),
        ))
    }
}

/// The service list as a table.
fn render_list(v: &serde_json::Value) -> String {
    let mut out = String::new();
    for s in v["services"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "service {} {} [{}]",
            s["name"].as_str().unwrap_or("?"),
            s["vip"].as_str().unwrap_or("?"),
            s["mode"].as_str().unwrap_or("?")
        );
        let _ = writeln!(
            out,
            "  {:<42} {:>6} {:>9} {:>8} {:>10}  health",
            "backend", "weight", "state", "active", "new flows"
        );
        for b in s["backends"].as_array().into_iter().flatten() {
            let health = match b["health"].as_object() {
                None => "not checked".to_string(),
                Some(h) => {
                    let check = h.get("check").and_then(|c| c.as_str()).unwrap_or("?");
                    match h.get("reason").and_then(|r| r.as_str()) {
                        Some(r) => format!("{check}, last failure: {r}"),
                        None => check.to_string(),
                    }
                }
            };
            let _ = writeln!(
                out,
                "  {:<42} {:>6} {:>9} {:>8} {:>10}  {health}",
                b["addr"].as_str().unwrap_or("?"),
                b["weight"].to_string(),
                b["state"].as_str().unwrap_or("?"),
                b["active_flows"].to_string(),
                b["counters"]["new_flows"].to_string(),
            );
        }
    }
    out
}
