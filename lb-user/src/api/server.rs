//! The admin API: HTTP/1.1 on `--admin` (default 127.0.0.1:9100). Read endpoints for
//! monitoring (`/metrics`, `/health/instance`, `/health/endtoend`, `/api/v1/services`)
//! and POST endpoints for live changes, which `lb ctl` calls. No authentication: bind
//! it to loopback or a management network only.

use crate::api::report::{Report, StatsError};
use crate::api::request::Command;
use crate::control::task::Handle;
use crate::control::{Control, ControlError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::info;

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;
/// A client that sends nothing for this long is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, ctl: Handle) {
    loop {
        let (stream, peer) =
            crate::net::accept(&listener, "admin API", Duration::from_millis(100)).await;
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(ctl.clone(), req));
            let mut builder = http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%peer, cause = %e, "admin API connection");
            }
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(body.into()))
        .expect("static headers are valid")
}

fn json(status: u16, v: serde_json::Value) -> Reply {
    let mut text = serde_json::to_string_pretty(&v).expect("JSON values serialise");
    text.push('\n');
    reply(status, "application/json", text)
}

fn error(status: u16, msg: impl std::fmt::Display) -> Reply {
    json(status, serde_json::json!({ "error": msg.to_string() }))
}

/// The answer while the daemon shuts down and the control plane takes no more work.
fn stopping() -> Reply {
    error(503, "lb is shutting down")
}

async fn handle(ctl: Handle, req: Request<Incoming>) -> Result<Reply, std::convert::Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(error(413, format!("request body: {e}"))),
    };
    if method == Method::GET
        && (path == "/metrics" || path == "/api/v1/services" || path == "/api/v1/report")
    {
        return Ok(match report(&ctl).await {
            Ok(r) if path == "/api/v1/report" => {
                json(200, serde_json::to_value(&r).unwrap_or_default())
            }
            Ok(r) if path == "/metrics" => reply(
                200,
                crate::api::metrics::CONTENT_TYPE,
                crate::api::metrics::render(&r),
            ),
            Ok(r) => json(200, serde_json::json!({ "services": r.services })),
            Err(e @ ReportError::Stopping) => error(503, e),
            Err(e) => error(500, e),
        });
    }
    Ok(route(&ctl, &method, &path, &body).await)
}

/// Why the report could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Stats(#[from] StatsError),
    #[error("collecting the report: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("lb is shutting down")]
    Stopping,
}

/// The full report. The flow table scan runs on a blocking thread, outside the control
/// task, so a scrape never stalls health checks or live changes.
pub async fn report(ctl: &Handle) -> Result<Report, ReportError> {
    let record = ctl
        .call(|c| c.record())
        .await
        .ok_or(ReportError::Stopping)?;
    let mut r =
        tokio::task::spawn_blocking(move || crate::api::report::collect_from(&record)).await??;
    let health = ctl
        .call(|c| c.health())
        .await
        .ok_or(ReportError::Stopping)?;
    r.add_health(&health);
    Ok(r)
}

async fn route(ctl: &Handle, method: &Method, path: &str, body: &[u8]) -> Reply {
    if method == Method::POST {
        match Command::from_wire(path, body) {
            Some(Ok(cmd)) => {
                return ctl
                    .call(move |c| execute(c, cmd))
                    .await
                    .unwrap_or_else(stopping);
            }
            Some(Err(e)) => return error(e.status, e.message),
            None => {}
        }
    }
    match (method, path) {
        (&Method::GET, "/health/instance") => {
            let state = ctl.call(|c| {
                let problems = c.dataplane_mut().attachment_problems();
                (problems, c.attached())
            });
            let Some((problems, attached)) = state.await else {
                return stopping();
            };
            if problems.is_empty() {
                json(
                    200,
                    serde_json::json!({ "status": "ok", "attached": attached }),
                )
            } else {
                json(
                    503,
                    serde_json::json!({ "status": "down", "attached": attached, "problems": problems }),
                )
            }
        }
        (&Method::GET, "/health/endtoend") => {
            let Some(down) = ctl.call(|c| c.services_down()).await else {
                return stopping();
            };
            if down.is_empty() {
                json(200, serde_json::json!({ "status": "ok" }))
            } else {
                json(
                    503,
                    serde_json::json!({ "status": "down", "services_down": down }),
                )
            }
        }
        (_, "/health/instance" | "/health/endtoend" | "/metrics" | "/api/v1/services") => {
            error(405, format!("{method} is not allowed on {path}; use GET"))
        }
        _ => error(404, format!("no endpoint {method} {path}")),
    }
}

/// Runs a change request and answers with its result.
fn execute(c: &mut Control, cmd: Command) -> Reply {
    let r = match cmd {
        Command::Reload => {
            return done(
                c.reload()
                    .map(|changes| serde_json::json!({ "ok": true, "changes": changes })),
            );
        }
        Command::Add { service, backend } => c.decide(|m, _| m.add_backend(&service, &backend)),
        Command::Remove { service, addr, now } => {
            c.decide(|m, at| m.remove_backend(&service, addr, now, at))
        }
        Command::Weight {
            service,
            addr,
            weight,
        } => c.decide(|m, _| m.set_weight(&service, addr, weight)),
        Command::Drain { service, addr } => c.decide(|m, at| m.drain(&service, addr, at)),
        Command::Enable { service, addr } => c.decide(|m, _| m.enable(&service, addr)),
    };
    done(r.map(|msg| serde_json::json!({ "ok": true, "message": msg })))
}

fn done(r: Result<serde_json::Value, ControlError>) -> Reply {
    match r {
        Ok(v) => json(200, v),
        Err(e) => error(e.status(), e),
    }
}

/// Binds the admin listener (before anything is attached, so a taken port is a clean
/// start-up error).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    info!(%addr, "admin API listening");
    Ok(l)
}
