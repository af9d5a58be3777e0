//! `lb ctl`: operator commands sent to the daemon's admin API, so operators need no curl.

use crate::api::client::{ClientError, Target, request, send};
use crate::api::request::{Command, parse_addr, parse_spec};
use crate::cli::{CtlArgs, CtlCommand};
use std::fmt::Write as _;
use std::net::ToSocketAddrs;

/// Runs one `lb ctl` command and returns what to print.
pub fn run(args: &CtlArgs) -> Result<String, ClientError> {
    let addr = &target(args)?;
    let backend = |s: &str| parse_addr(s).map_err(ClientError::Invalid);
    let cmd = match &args.command {
        CtlCommand::List { json } => {
            let v = request(addr, "GET", "/api/v1/services", None)?;
            return Ok(if *json {
                serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
            } else {
                render_list(&v)
            });
        }
        CtlCommand::Add { service, backend } => Command::Add {
            service: service.clone(),
            backend: parse_spec(backend).map_err(ClientError::Invalid)?,
        },
        CtlCommand::Remove {
            service,
            backend: b,
            now,
        } => Command::Remove {
            service: service.clone(),
            addr: backend(b)?,
            now: *now,
        },
        CtlCommand::Weight {
            service,
            backend: b,
            weight,
        } => Command::Weight {
            service: service.clone(),
            addr: backend(b)?,
            weight: *weight,
        },
        CtlCommand::Drain {
            service,
            backend: b,
        } => Command::Drain {
            service: service.clone(),
            addr: backend(b)?,
        },
        CtlCommand::Enable {
            service,
            backend: b,
        } => Command::Enable {
            service: service.clone(),
            addr: backend(b)?,
        },
        CtlCommand::Reload => Command::Reload,
    };
    let v = send(addr, &cmd)?;
    if cmd == Command::Reload {
        let mut out = String::from("configuration reloaded\n");
        for c in v["changes"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  {}", c.as_str().unwrap_or_default());
        }
        return Ok(out);
    }
    Ok(v["message"].as_str().unwrap_or("ok").to_string() + "\n")
}

/// The admin API `args` name: TCP with `--admin` (and the token of `--token-file`), else
/// the admin socket, by default the one of this network namespace's daemon.
fn target(args: &CtlArgs) -> Result<Target, ClientError> {
    if let Some(a) = &args.admin {
        let addr = (a.to_socket_addrs().ok())
            .and_then(|mut a| a.next())
            .ok_or_else(|| ClientError::BadAddr(a.clone()))?;
        let token = match &args.token_file {
            None => None,
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| ClientError::Token(format!("{}: {e}", f.display())))?
                    .trim()
                    .to_string(),
            ),
        };
        return Ok(Target::Tcp { addr, token });
    }
    let path = match &args.admin_socket {
        Some(p) => p.clone(),
        None => {
            let inode = crate::dataplane::runtime::netns_inode()
                .map_err(|e| ClientError::Invalid(e.to_string()))?;
            crate::dataplane::runtime::admin_socket_path(inode)
        }
    };
    Ok(Target::Socket(path))
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
