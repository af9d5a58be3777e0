//! The admin API: HTTP/1.1 on a Unix socket (`--admin-socket`, the whole API: root
//! and `--admin-group` only, by the file's mode) and on TCP (`--admin`, default
//! 127.0.0.1:9100): the read endpoints for monitoring (`/metrics`, `/health/instance`,
//! `/health/endtoend`, `GET /api/v1/...`) to anyone who reaches it, changes (`POST`)
//! only with the bearer token of `--admin-token-file`.
//!
//! Bad clients cannot take it down: bodies are capped (413), a connection lasts at most
//! [`CONN_LIFETIME`] and must send its headers within [`HEADER_TIMEOUT`], and each
//! listener serves at most [`MAX_CONNS`] connections at once (more are closed at once).

use crate::api::report::{Report, StatsError};
use crate::api::request::Command;
use crate::config::AdminToken;
use crate::control::task::Handle;
use crate::control::{Control, ControlError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// A client must have sent a request's headers this long after it began.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest an admin connection lasts, busy or idle: requests are short, and a
/// scraper that keeps its connection open reconnects.
pub const CONN_LIFETIME: Duration = Duration::from_secs(30);
/// Connections one listener serves at once.
pub const MAX_CONNS: usize = 64;

/// What a listener's clients may do.
#[derive(Clone, Debug)]
pub enum Access {
    /// The Unix socket: whoever its mode lets connect may do anything.
    Full,
    /// The TCP listener: reads for anyone; changes with the token, none without one.
    Tcp { token: Option<AdminToken> },
}

/// Serves the API on the TCP listener until the task is dropped.
pub async fn serve(listener: TcpListener, ctl: Handle, access: Access) {
    let slots = Arc::new(Semaphore::new(MAX_CONNS));
    loop {
        let (stream, _) =
            crate::net::accept(&listener, "admin API", Duration::from_millis(100)).await;
        if let Some(slot) = slot(&slots) {
            tokio::spawn(connection(stream, slot, ctl.clone(), access.clone()));
        }
    }
}

/// Serves the whole API on the Unix socket until the task is dropped.
pub async fn serve_socket(listener: UnixListener, ctl: Handle) {
    let slots = Arc::new(Semaphore::new(MAX_CONNS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(cause = %e, "admin socket accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Some(slot) = slot(&slots) {
            tokio::spawn(connection(stream, slot, ctl.clone(), Access::Full));
        }
    }
}

/// A connection slot, or `None` when all are taken (the connection is then dropped:
/// closed at once, so clients fail fast instead of queueing).
fn slot(slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    let s = slots.clone().try_acquire_owned().ok();
    if s.is_none() {
        warn!(
            max = MAX_CONNS,
            "admin API: every connection slot is taken; closing a new connection"
        );
    }
    s
}

/// Serves one connection, for at most [`CONN_LIFETIME`].
async fn connection<S>(stream: S, _slot: OwnedSemaphorePermit, ctl: Handle, access: Access)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(ctl.clone(), access.clone(), req));
    let mut builder = http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    match tokio::time::timeout(CONN_LIFETIME, conn).await {
        Ok(Err(e)) => tracing::debug!(cause = %e, "admin API connection"),
        Ok(Ok(())) => {}
        Err(_) => tracing::debug!("admin API connection closed after {CONN_LIFETIME:?}"),
    }
}

/// The answer refusing `req` over a listener with `access`, or `None` if it may go on:
/// reads always may; changes over the socket, or over TCP with the token.
fn refusal<B>(access: &Access, req: &Request<B>) -> Option<Reply> {
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    match access {
        Access::Full => None,
        Access::Tcp { .. } if reads => None,
        Access::Tcp { token: None } => Some(error(
            403,
            "changes over TCP are off: use the admin socket (lb ctl does), or start lb with --admin-token-file",
        )),
        Access::Tcp { token: Some(t) } => {
            let given = (req.headers().get(AUTHORIZATION))
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
            if given.is_some_and(|g| t.matches(g)) {
                return None;
            }
            let mut r = error(
                401,
                "changes over TCP need the admin token: Authorization: Bearer TOKEN",
            );
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            Some(r)
        }
    }
}

/// The admin socket's file: bound, then open to root alone (0600) or to `group` too
/// (0660). A socket left at `path` by an earlier daemon (a crash, an upgrade's
/// predecessor, which keeps serving what it accepted) is replaced; any other file is an
/// error.
pub fn bind_socket(path: &Path, group: Option<u32>) -> std::io::Result<AdminSocketFile> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        // Only a socket is replaced: a mistyped path must not cost a file.
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is there",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Until the chmod the file has the umask's mode; connecting needs write permission,
    // which the usual umasks give the owner (root) alone.
    let l = std::os::unix::net::UnixListener::bind(path)?;
    std::os::unix::fs::chown(path, Some(0), group)?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    l.set_nonblocking(true)?;
    let inode = std::fs::metadata(path)?.ino();
    info!(path = %path.display(), mode = format!("{mode:o}"), "admin socket listening");
    Ok(AdminSocketFile {
        listener: Some(l),
        path: path.to_path_buf(),
        inode,
    })
}

/// The admin socket's listener and file; the file is removed on drop unless another
/// daemon (a successor) has put its own there.
pub struct AdminSocketFile {
    listener: Option<std::os::unix::net::UnixListener>,
    path: PathBuf,
    inode: u64,
}

impl AdminSocketFile {
    /// The listener, for the task that serves it (once).
    pub fn take_listener(&mut self) -> Option<std::os::unix::net::UnixListener> {
        self.listener.take()
    }
}

impl Drop for AdminSocketFile {
    fn drop(&mut self) {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
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

async fn handle(
    ctl: Handle,
    access: Access,
    req: Request<Incoming>,
) -> Result<Reply, std::convert::Infallible> {
    if let Some(refused) = refusal(&access, &req) {
        return Ok(refused);
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let declared =
        (req.headers().get(CONTENT_LENGTH)).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Ok(error(413, format!("request body over {MAX_BODY} bytes")));
    }
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
        Command::Watch { vip, client, every } => c.decide(|m, at| m.watch(vip, client, every, at)),
        Command::Unwatch => c.decide(|m, _| Ok(m.unwatch())),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> AdminToken {
        let dir = std::env::temp_dir().join(format!("lb-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret-token-0123456789\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let flags = crate::config::FlagSettings {
            ifaces: vec!["lb0".into()],
            vip: Some("198.18.100.1:80".into()),
            backends: vec!["198.18.1.11:80".into()],
            admin_token_file: Some(file.display().to_string()),
            ..Default::default()
        };
        let cfg = crate::config::Config::from_flags(&flags).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        cfg.admin_token.unwrap()
    }

    fn req(method: Method, auth: Option<&str>) -> Request<()> {
        let mut b = Request::builder()
            .method(method)
            .uri("/api/v1/backends/add");
        if let Some(a) = auth {
            b = b.header(AUTHORIZATION, a);
        }
        b.body(()).unwrap()
    }

    fn status(r: Option<Reply>) -> u16 {
        r.map_or(200, |reply| reply.status().as_u16())
    }

    #[test]
    fn reads_are_open_and_changes_over_tcp_need_the_token() {
        let none = Access::Tcp { token: None };
        let with = Access::Tcp {
            token: Some(token()),
        };
        assert_eq!(status(refusal(&none, &req(Method::GET, None))), 200);
        assert_eq!(status(refusal(&with, &req(Method::GET, None))), 200);
        assert_eq!(status(refusal(&none, &req(Method::POST, None))), 403);
        let right = Some("Bearer s3cret-token-0123456789");
        assert_eq!(status(refusal(&none, &req(Method::POST, right))), 403);
        assert_eq!(status(refusal(&with, &req(Method::POST, None))), 401);
        for wrong in [
            "Bearer s3cret-token-012345678",
            "Bearer s3cret-token-01234567890",
            "Basic s3cret-token-0123456789",
            "bearer s3cret-token-0123456789",
            "s3cret-token-0123456789",
        ] {
            let r = refusal(&with, &req(Method::POST, Some(wrong)));
            let reply = r.expect(wrong);
            assert_eq!(reply.status().as_u16(), 401, "{wrong}");
            assert_eq!(reply.headers()[WWW_AUTHENTICATE], "Bearer");
        }
        assert_eq!(status(refusal(&with, &req(Method::POST, right))), 200);
        assert_eq!(
            status(refusal(&Access::Full, &req(Method::POST, None))),
            200
        );
    }
}

#[cfg(test)]
mod socket_tests {
    use super::*;

    #[test]
    fn the_admin_socket_replaces_a_socket_but_never_another_file() {
        let dir = std::env::temp_dir().join(format!("lb-admin-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.sock");
        let first = bind_socket(&path, None).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // A successor binds anew; the first one's drop leaves the successor's file.
        let second = bind_socket(&path, None).unwrap();
        drop(first);
        assert!(path.exists());
        drop(second);
        assert!(!path.exists());
        let file = dir.join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        assert!(bind_socket(&file, None).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
