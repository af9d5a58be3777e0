//! `lb ctl`: operator commands sent to the daemon's admin API, so operators need no curl.

use crate::api::client::{ClientError, request};
use crate::cli::{CtlArgs, CtlCommand};
use std::fmt::Write as _;
use std::net::ToSocketAddrs;

/// Runs one `lb ctl` command and returns what to print.
pub fn run(args: &CtlArgs) -> Result<String, ClientError> {
    let addr = args
        .admin
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ClientError::BadAddr(args.admin.clone()))?;
    let op = |name: &str, body: serde_json::Value| -> Result<String, ClientError> {
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
                    ClientError::Refused(format!(
                        "backend {backend:?}: weight {w:?} is not a number"
                    ))
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
