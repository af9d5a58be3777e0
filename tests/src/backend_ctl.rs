//! Faults a test inflicts on a backend, and the servers it puts back: a port that drops
//! every packet (nft, so checks time out), a closed port (server killed, connects are
//! refused), a paused server (SIGSTOP: the kernel still accepts, nothing answers), and
//! an HTTP server whose `/health/instance` answers a status read from a file.

use std::fs::File;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::wait_until;
use crate::topology::{Backend, PORT, Topology};
use crate::{cmd, server, sys};

/// Name of the nft table the faults live in (inside the backend's own namespace, so it
/// goes with the namespace).
const NFT_TABLE: &str = "lbtest_fault";

/// Drops every TCP packet to `port` arriving in the backend's namespace: connects to it
/// (health checks and client flows alike) time out.
pub fn block_port(b: &Backend, port: u16) -> Result<()> {
    let script = format!(
        "table inet {NFT_TABLE} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    tcp dport {port} drop\n  }}\n}}\n"
    );
    cmd::run_with_stdin(b.ns.command("nft").args(["-f", "-"]), &script)
        .with_context(|| format!("blocking port {port} of backend {}", b.name))
        .map(drop)
}

/// Removes what [`block_port`] added.
pub fn unblock(b: &Backend) -> Result<()> {
    b.ns.exec("nft", &["delete", "table", "inet", NFT_TABLE])
        .with_context(|| format!("unblocking backend {}", b.name))
        .map(drop)
}

/// Kills the backend's HTTP server (SIGKILL, by PID) and waits until it is gone, so its
/// port is closed and connects are refused.
pub fn stop_server(b: &Backend) -> Result<()> {
    let Some(pid) = b.server_pid() else {
        bail!("backend {} has no running server to stop", b.name);
    };
    sys::kill(pid, libc::SIGKILL).with_context(|| format!("killing server pid {pid}"))?;
    if !wait_until(Duration::from_secs(5), || Ok(!b.ns.running(pid))) {
        bail!("server pid {pid} of backend {} survived SIGKILL", b.name);
    }
    b.set_server_pid(None);
    Ok(())
}

/// Freezes (SIGSTOP) or thaws (SIGCONT) the backend's server. Frozen, the kernel still
/// completes TCP handshakes on its listening socket, but no request is answered.
pub fn pause_server(b: &Backend, paused: bool) -> Result<()> {
    let Some(pid) = b.server_pid() else {
        bail!("backend {} has no running server", b.name);
    };
    let sig = if paused { libc::SIGSTOP } else { libc::SIGCONT };
    sys::kill(pid, sig).with_context(|| format!("signalling server pid {pid}"))
}

fn next_log(topo: &Topology, b: &Backend) -> std::path::PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    topo.path(&format!(
        "{}-{}.log",
        b.name,
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Starts python's http.server for the backend again (after [`stop_server`]) and waits
/// until it answers.
pub fn start_server(topo: &Topology, b: &Backend) -> Result<()> {
    if let Some(pid) = b.server_pid() {
        bail!("backend {} already runs server pid {pid}", b.name);
    }
    let log = next_log(topo, b);
    let pid = server::start(&b.ns, "::", PORT, &b.dir, &log)?;
    b.set_server_pid(Some(pid));
    server::wait_listening(&b.ns, pid, "127.0.0.1", PORT, &log)
}

/// http.server's file serving plus `GET /health/instance`, whose status code is read
/// from STATUS_FILE at every request. Dual-stack on `::`, threaded like http.server.
/// With CERT and KEY, it speaks HTTPS.
const HEALTH_SERVER: &str = r#"
import functools, http.server, socket, ssl, sys
port, directory, status_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
tls = sys.argv[4:6]

class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path.split("?", 1)[0] != "/health/instance":
            return super().do_GET()
        try:
            with open(status_file) as f:
                code = int(f.read().strip())
        except Exception:
            code = 500
        body = b"health %d\n" % code
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

server = Server(("::", port), functools.partial(Handler, directory=directory))
if tls:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls[0], tls[1])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// Replaces the backend's server with one that also answers `GET /health/instance`
/// with the status in its status file (initially `status`); see [`set_health_status`].
pub fn start_health_server(topo: &Topology, b: &Backend, status: u16) -> Result<()> {
    if b.server_pid().is_some() {
        stop_server(b)?;
    }
    let (pid, log) = spawn_health_server(topo, b, PORT, None, status)?;
    b.set_server_pid(Some(pid));
    server::wait_listening(&b.ns, pid, "127.0.0.1", PORT, &log)?;
    let got = health_status_seen(b)?;
    if got != status {
        bail!(
            "backend {}: /health/instance answers {got}, not {status}",
            b.name
        );
    }
    Ok(())
}

/// Starts [`HEALTH_SERVER`] in the backend's namespace on `port` (HTTPS with `tls`),
/// its status file set to `status`; returns its pid and log.
fn spawn_health_server(
    topo: &Topology,
    b: &Backend,
    port: u16,
    tls: Option<&crate::tls::Cert>,
    status: u16,
) -> Result<(u32, std::path::PathBuf)> {
    let script = topo.path("health_server.py");
    if !script.exists() {
        std::fs::write(&script, HEALTH_SERVER)?;
    }
    set_health_status(topo, b, status)?;
    let log = next_log(topo, b);
    let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut c = b.ns.command("python3");
    c.arg(&script)
        .arg(port.to_string())
        .arg(&b.dir)
        .arg(health_status_file(topo, b));
    if let Some(cert) = tls {
        c.arg(&cert.cert).arg(&cert.key);
    }
    c.stdout(Stdio::from(log_file.try_clone()?))
        .stderr(Stdio::from(log_file));
    Ok((b.ns.spawn(c)?, log))
}

/// Starts, beside the backend's server, an HTTPS server on `port` with `cert` that
/// answers `GET /health/instance` with the same status file as [`start_health_server`]
/// (so [`set_health_status`] sets both), and waits until it answers `status`. It stops
/// with the backend's namespace.
pub fn start_https_health_server(
    topo: &Topology,
    b: &Backend,
    port: u16,
    cert: &crate::tls::Cert,
    status: u16,
) -> Result<()> {
    let (pid, log) = spawn_health_server(topo, b, port, Some(cert), status)?;
    let url = format!("https://127.0.0.1:{port}/health/instance");
    server::wait_answering(&b.ns, pid, &url, status, &log)
}

fn health_status_file(topo: &Topology, b: &Backend) -> std::path::PathBuf {
    topo.path(&format!("{}.health-status", b.name))
}

/// Sets the status code the backend's health server answers from now on.
pub fn set_health_status(topo: &Topology, b: &Backend, status: u16) -> Result<()> {
    let path = health_status_file(topo, b);
    // Written to a temp file and renamed: the server never reads half a number.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, status.to_string())?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// The status `/health/instance` answers inside the backend's namespace right now.
pub fn health_status_seen(b: &Backend) -> Result<u16> {
    let out = b.ns.exec(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "2",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{PORT}/health/instance"),
        ],
    )?;
    out.trim()
        .parse()
        .with_context(|| format!("curl printed {out:?} as the status"))
}
