//! PROXY protocol receivers nobody here wrote, run inside the backends' namespaces: nginx
//! (`listen ... proxy_protocol`, plain HTTP, TLS, and a WebSocket location in front of a
//! python3-websockets echo server) and HAProxy (`bind ... accept-proxy`), each logging the
//! client address it was given to a file the tests parse.
//!
//! Every receiver is one process started with [`Netns::spawn`] (nginx with `master_process
//! off`, HAProxy in the foreground with `-db`), so it is killed by PID when the test stops
//! it or when its namespace is dropped, and leaves no worker behind.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::{Netns, wait_until};
use crate::sys;

/// Debian's python3, the one python3-websockets is installed for (a python3 earlier on
/// PATH, e.g. from pyenv, may lack it). The PROXY peers use it too, for one interpreter.
pub const PYTHON: &str = "/usr/bin/python3";

/// The external programs these receivers need, checked by [`require`].
pub const TOOLS: &[&str] = &["nginx", "haproxy", "openssl", "ss", "timeout"];

/// Fails naming what is missing: nginx, HAProxy, openssl, Debian's python3 with
/// python3-websockets (`cargo xtask test` installs them all).
pub fn require() -> Result<()> {
    crate::require_tools(TOOLS)?;
    if !Path::new(PYTHON).is_file() {
        bail!("{PYTHON} (Debian's python3) is missing: install python3");
    }
    let out = crate::cmd::output_any(
        std::process::Command::new(PYTHON).args(["-c", "import websockets"]),
    )?;
    if !out.status.success() {
        bail!(
            "{PYTHON} cannot import websockets (install python3-websockets): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A receiver process running in a backend's namespace.
#[derive(Debug)]
pub struct Proc {
    pub pid: u32,
    /// What it is, for messages (`nginx b1`).
    pub what: String,
    /// Its stdout and stderr.
    pub output: PathBuf,
}

impl Proc {
    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }
}

/// Starts `program args...` in `ns` with stdout and stderr into `output`.
pub fn spawn(ns: &Netns, what: &str, program: &str, args: &[&str], output: &Path) -> Result<Proc> {
    let file = File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let mut c = ns.command(program);
    c.args(args)
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file));
    let pid = ns.spawn(c).with_context(|| format!("starting {what}"))?;
    Ok(Proc {
        pid,
        what: what.to_owned(),
        output: output.to_owned(),
    })
}

/// Whether something in `ns` listens on TCP `port` (any address), per `ss`.
pub fn listening(ns: &Netns, port: u16) -> Result<bool> {
    let out = ns.exec("ss", &["-Hltn", &format!("sport = :{port}")])?;
    Ok(!out.trim().is_empty())
}

/// Waits (15 s at most) until `p` listens on every one of `ports` in `ns`; fails with its
/// output if it exits or does not get there.
pub fn wait_listening(ns: &Netns, p: &Proc, ports: &[u16], extra_log: Option<&Path>) -> Result<()> {
    let ok = wait_until(Duration::from_secs(15), || {
        if !ns.running(p.pid) {
            bail!("exited");
        }
        for port in ports {
            if !listening(ns, *port)? {
                return Ok(false);
            }
        }
        Ok(true)
    });
    if !ok {
        let extra = extra_log
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .unwrap_or_default();
        bail!(
            "{} (pid {}) in {} does not listen on {ports:?} within 15 s (running: {}); its output:\n{}\n{extra}",
            p.what,
            p.pid,
            ns.name(),
            ns.running(p.pid),
            p.output()
        );
    }
    Ok(())
}

/// Kills `p` (SIGKILL, by PID) and waits until it is gone, so its ports are closed.
pub fn stop(ns: &Netns, p: &Proc) -> Result<()> {
    sys::kill(p.pid, libc::SIGKILL).with_context(|| format!("killing {} pid {}", p.what, p.pid))?;
    if !wait_until(Duration::from_secs(5), || Ok(!ns.running(p.pid))) {
        bail!("{} pid {} survived SIGKILL", p.what, p.pid);
    }
    Ok(())
}

/// What an nginx receiver serves.
#[derive(Clone, Debug, Default)]
pub struct NginxOpts {
    /// `listen PORT proxy_protocol` (IPv4 and IPv6), answering `GET /...` with the
    /// backend's name.
    pub http_port: Option<u16>,
    /// `listen PORT ssl proxy_protocol` with this certificate and key, for `registry.example`.
    pub tls: Option<(u16, PathBuf, PathBuf)>,
    /// `location /ws` proxied (with the Upgrade handshake) to a WebSocket server on
    /// 127.0.0.1:PORT.
    pub ws_upstream: Option<u16>,
    /// `listen PORT` without PROXY protocol and with a deep accept queue, answering
    /// `GET /...` with the backend's name and no access log: a backend for connection
    /// rates a python server cannot take.
    pub plain_port: Option<u16>,
    /// `listen PORT` without PROXY protocol, logging every request with the address it
    /// came from (`$remote_addr`; the PROXY fields `-`), answering `GET /name` with the
    /// backend's name, any other GET from this directory and a POST by reading the body
    /// (any size): a backend of a DSR or DNAT service, which sees the client itself.
    pub logged: Option<(u16, PathBuf)>,
}

/// A running nginx and its access log.
#[derive(Debug)]
pub struct Nginx {
    pub proc: Proc,
    pub access_log: PathBuf,
    pub error_log: PathBuf,
}

/// The access log format: space separated, one request per line; the request URI last
/// and quoted (`-` fields are empty values). IPv6 addresses contain colons, so no field
/// is `addr:port`.
const NGINX_LOG_FORMAT: &str = "pp $proxy_protocol_addr $proxy_protocol_port \
$proxy_protocol_server_addr $proxy_protocol_server_port $remote_addr $remote_port \
$server_port $scheme $status \"$request_uri\"";
/// The same fields for a server without PROXY protocol: its four are `-`.
const NGINX_PLAIN_LOG_FORMAT: &str = "pp - - - - $remote_addr $remote_port \
$server_port $scheme $status \"$request_uri\"";

/// Starts nginx in `ns` (one process, `master_process off`, in the foreground) with its
/// prefix, config and logs under `dir`, serving `name` as configured by `opts`; waits
/// until it listens.
pub fn start_nginx(ns: &Netns, dir: &Path, name: &str, opts: &NginxOpts) -> Result<Nginx> {
    std::fs::create_dir_all(dir.join("tmp"))?;
    let d = dir.display();
    let access_log = dir.join("access.log");
    let error_log = dir.join("error.log");
    let mut servers = String::new();
    let mut ports = Vec::new();
    let ws = match opts.ws_upstream {
        Some(port) => format!(
            "        location /ws {{\n\
             \x20           proxy_pass http://127.0.0.1:{port};\n\
             \x20           proxy_http_version 1.1;\n\
             \x20           proxy_set_header Upgrade $http_upgrade;\n\
             \x20           proxy_set_header Connection \"upgrade\";\n\
             \x20           proxy_read_timeout 60s;\n\
             \x20       }}\n"
        ),
        None => String::new(),
    };
    if let Some(port) = opts.http_port {
        ports.push(port);
        write!(
            servers,
            "    server {{\n\
             \x20       listen {port} proxy_protocol;\n\
             \x20       listen [::]:{port} proxy_protocol;\n\
             \x20       access_log {d}/access.log pp;\n\
             \x20       location / {{ return 200 \"{name}\\n\"; }}\n{ws}\
             \x20   }}\n"
        )?;
    }
    if let Some(port) = opts.plain_port {
        ports.push(port);
        write!(
            servers,
            "    server {{\n\
             \x20       listen {port} backlog=4096;\n\
             \x20       listen [::]:{port} backlog=4096;\n\
             \x20       location / {{ return 200 \"{name}\\n\"; }}\n\
             \x20   }}\n"
        )?;
    }
    if let Some((port, root)) = &opts.logged {
        ports.push(*port);
        write!(
            servers,
            "    server {{\n\
             \x20       listen {port} backlog=4096;\n\
             \x20       listen [::]:{port} backlog=4096;\n\
             \x20       access_log {d}/access.log plain;\n\
             \x20       client_max_body_size 0;\n\
             \x20       root {root};\n\
             \x20       location = /name {{ return 200 \"{name}\"; }}\n\
             \x20       location = /upload {{ return 200 \"{name} got it\\n\"; }}\n\
             \x20   }}\n",
            root = root.display(),
        )?;
    }
    if let Some((port, cert, key)) = &opts.tls {
        ports.push(*port);
        write!(
            servers,
            "    server {{\n\
             \x20       listen {port} ssl proxy_protocol;\n\
             \x20       listen [::]:{port} ssl proxy_protocol;\n\
             \x20       server_name registry.example;\n\
             \x20       ssl_certificate {cert};\n\
             \x20       ssl_certificate_key {key};\n\
             \x20       access_log {d}/access.log pp;\n\
             \x20       location / {{ return 200 \"{name} tls\\n\"; }}\n\
             \x20   }}\n",
            cert = cert.display(),
            key = key.display(),
        )?;
    }
    if ports.is_empty() {
        bail!("nginx for {name}: nothing to serve");
    }
    let conf = format!(
        "daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   default_type text/plain;\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {d}/tmp/body;\n\
         \x20   proxy_temp_path {d}/tmp/proxy;\n\
         \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/tmp/uwsgi;\n\
         \x20   scgi_temp_path {d}/tmp/scgi;\n\
         \x20   log_format pp '{NGINX_LOG_FORMAT}';\n\
         \x20   log_format plain '{NGINX_PLAIN_LOG_FORMAT}';\n\
         {servers}\
         }}\n"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let startup_log = dir.join("error-startup.log");
    let prefix = format!("{d}/");
    let proc = spawn(
        ns,
        &format!("nginx {name}"),
        "nginx",
        &[
            "-e",
            &startup_log.to_string_lossy(),
            "-p",
            &prefix,
            "-c",
            &conf_path.to_string_lossy(),
        ],
        &dir.join("nginx.out"),
    )?;
    wait_listening(ns, &proc, &ports, Some(&error_log))?;
    Ok(Nginx {
        proc,
        access_log,
        error_log,
    })
}

/// A log line of a receiver: the line, its space-separated fields before the first ` "`,
/// and what follows that quote.
type Tagged<'a> = (&'a str, Vec<&'a str>, &'a str);

/// The lines of a receiver's log that start with `tag`, split as [`Tagged`]; a line
/// without a quoted field is an error.
fn tagged_lines<'a>(text: &'a str, tag: &'a str) -> impl Iterator<Item = Result<Tagged<'a>>> {
    text.lines()
        .filter(move |l| l.starts_with(tag))
        .map(|line| {
            let (head, quoted) = line
                .split_once(" \"")
                .with_context(|| format!("no quoted field in log line {line:?}"))?;
            Ok((line, head.split(' ').collect(), quoted))
        })
}

/// One request as an nginx receiver logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxEntry {
    /// `$proxy_protocol_addr` and `$proxy_protocol_port`: the client the header named.
    pub pp_addr: String,
    pub pp_port: String,
    /// `$proxy_protocol_server_addr` and `_port`: the destination the header named.
    pub pp_server_addr: String,
    pub pp_server_port: String,
    /// `$remote_addr` and `$remote_port`: the TCP peer (the LB).
    pub remote_addr: String,
    pub remote_port: String,
    /// `$server_port`: the port nginx accepted the connection on.
    pub server_port: String,
    /// `$scheme` (`http` or `https`), `$status` and the request URI.
    pub scheme: String,
    pub status: String,
    pub uri: String,
}

/// Parses the `pp ...` lines of an access log in [`NGINX_LOG_FORMAT`].
pub fn parse_nginx_log(text: &str) -> Result<Vec<NginxEntry>> {
    let mut out = Vec::new();
    for tagged in tagged_lines(text, "pp ") {
        let (line, f, uri) = tagged?;
        let uri = uri
            .strip_suffix('"')
            .with_context(|| format!("unterminated URI in nginx log line {line:?}"))?;
        let [
            _,
            pp_addr,
            pp_port,
            pp_server_addr,
            pp_server_port,
            remote_addr,
            remote_port,
            server_port,
            scheme,
            status,
        ] = f.as_slice()
        else {
            bail!("nginx log line {line:?} has {} fields, not 10", f.len());
        };
        out.push(NginxEntry {
            pp_addr: pp_addr.to_string(),
            pp_port: pp_port.to_string(),
            pp_server_addr: pp_server_addr.to_string(),
            pp_server_port: pp_server_port.to_string(),
            remote_addr: remote_addr.to_string(),
            remote_port: remote_port.to_string(),
            server_port: server_port.to_string(),
            scheme: scheme.to_string(),
            status: status.to_string(),
            uri: uri.to_owned(),
        });
    }
    Ok(out)
}

impl Nginx {
    /// The requests logged so far.
    pub fn entries(&self) -> Result<Vec<NginxEntry>> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        parse_nginx_log(&text)
    }

    /// nginx's error log (startup problems, broken PROXY headers).
    pub fn errors(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

/// A running HAProxy and the file its log goes to.
#[derive(Debug)]
pub struct Haproxy {
    pub proc: Proc,
}

/// Starts HAProxy in `ns` in the foreground (`-db`): an HTTP frontend on `port` (IPv4
/// and IPv6) with `accept-proxy`, answering every request itself with `name`, logging
/// `%ci %cp %fi %fp "request line"` (raw, to stdout, which goes to a file).
pub fn start_haproxy(ns: &Netns, dir: &Path, name: &str, port: u16) -> Result<Haproxy> {
    std::fs::create_dir_all(dir)?;
    let conf = format!(
        "global\n\
         \x20   log stdout format raw local0\n\
         \x20   maxconn 1000\n\
         defaults\n\
         \x20   mode http\n\
         \x20   log global\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 30s\n\
         \x20   timeout server 30s\n\
         \x20   option dontlognull\n\
         frontend fe\n\
         \x20   bind :::{port} v4v6 accept-proxy\n\
         \x20   log-format \"hap %ci %cp %fi %fp %{{+Q}}r\"\n\
         \x20   http-request return status 200 content-type text/plain string \"{name}\\n\"\n"
    );
    let conf_path = dir.join("haproxy.cfg");
    std::fs::write(&conf_path, conf)?;
    let proc = spawn(
        ns,
        &format!("haproxy {name}"),
        "haproxy",
        &["-db", "-f", &conf_path.to_string_lossy()],
        &dir.join("haproxy.log"),
    )?;
    wait_listening(ns, &proc, &[port], None)?;
    Ok(Haproxy { proc })
}

/// One request as HAProxy logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaproxyEntry {
    /// `%ci %cp`: the client (from the PROXY header with accept-proxy).
    pub client_addr: String,
    pub client_port: String,
    /// `%fi %fp`: the frontend address (the header's destination).
    pub frontend_addr: String,
    pub frontend_port: String,
    /// The request line, e.g. `GET /x HTTP/1.1`.
    pub request: String,
}

/// Parses the `hap ...` lines of HAProxy's log.
pub fn parse_haproxy_log(text: &str) -> Result<Vec<HaproxyEntry>> {
    tagged_lines(text, "hap ")
        .map(|tagged| {
            let (line, f, req) = tagged?;
            let [_, ci, cp, fi, fp] = f.as_slice() else {
                bail!("haproxy log line {line:?} has {} fields, not 5", f.len());
            };
            Ok(HaproxyEntry {
                client_addr: ci.to_string(),
                client_port: cp.to_string(),
                frontend_addr: fi.to_string(),
                frontend_port: fp.to_string(),
                request: req.trim_end_matches('"').to_owned(),
            })
        })
        .collect()
}

impl Haproxy {
    pub fn entries(&self) -> Result<Vec<HaproxyEntry>> {
        parse_haproxy_log(&self.proc.output())
    }
}

/// A WebSocket echo server (python3-websockets, asyncio API as in Debian's 10.x) on
/// 127.0.0.1:PORT.
const WS_SERVER: &str = r#"
import asyncio, sys, websockets
port = int(sys.argv[1])
async def echo(ws, path=None):
    async for m in ws:
        await ws.send(m)
async def main():
    async with websockets.serve(echo, "127.0.0.1", port, max_size=4 * 1024 * 1024):
        print("listening", port, flush=True)
        await asyncio.Future()
asyncio.run(main())
"#;

/// Starts the WebSocket echo server in `ns` on 127.0.0.1:`port`.
pub fn start_ws_echo(ns: &Netns, dir: &Path, name: &str, port: u16) -> Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let script = dir.join("ws_echo.py");
    std::fs::write(&script, WS_SERVER)?;
    let p = spawn(
        ns,
        &format!("websocket echo {name}"),
        PYTHON,
        &[&script.to_string_lossy(), &port.to_string()],
        &dir.join("ws_echo.out"),
    )?;
    wait_listening(ns, &p, &[port], None)?;
    Ok(p)
}

/// The WebSocket client: connects to URL (source address SRC unless `-`), sends N text
/// messages of growing size and one 256 KiB binary message, each must come back
/// unchanged; prints `ok N LOCAL_ADDR LOCAL_PORT` or the error (exit 1).
pub const WS_CLIENT: &str = r#"
import asyncio, os, sys, websockets
url, src, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
async def main():
    kw = {"open_timeout": 5, "max_size": 4 * 1024 * 1024}
    if src != "-":
        kw["local_addr"] = (src, 0)
    async with websockets.connect(url, **kw) as ws:
        local = ws.local_address
        for i in range(n):
            msg = "message %d %s" % (i, "x" * i)
            await ws.send(msg)
            back = await asyncio.wait_for(ws.recv(), 5)
            if back != msg:
                raise Exception("message %d came back as %r" % (i, back[:80]))
        blob = os.urandom(256 * 1024)
        await ws.send(blob)
        back = await asyncio.wait_for(ws.recv(), 10)
        if back != blob:
            raise Exception("the 256 KiB binary message came back different")
    print("ok", n, local[0], local[1], flush=True)
try:
    asyncio.run(asyncio.wait_for(main(), 60))
except Exception as e:
    print("error %s: %s" % (type(e).__name__, e), flush=True)
    sys.exit(1)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nginx_lines() {
        let log = "pp 198.18.0.3 40312 198.18.100.1 80 198.18.1.1 51000 80 http 200 \"/a?b\"\n\
                   pp fd00::3 40313 fd00:100::1 80 fd00:1::1 51001 80 https 200 \"/x y\"\n\
                   other line\n";
        let entry = |fields: [&str; 10]| {
            let [pa, pp, sa, sp, ra, rp, port, scheme, status, uri] = fields.map(String::from);
            NginxEntry {
                pp_addr: pa,
                pp_port: pp,
                pp_server_addr: sa,
                pp_server_port: sp,
                remote_addr: ra,
                remote_port: rp,
                server_port: port,
                scheme,
                status,
                uri,
            }
        };
        let v4 = "198.18.0.3 40312 198.18.100.1 80 198.18.1.1 51000 80 http 200 /a?b";
        let v6 = "fd00::3 40313 fd00:100::1 80 fd00:1::1 51001 80 https 200 /x";
        let fields = |s: &'static str| -> [&str; 10] {
            s.split(' ').collect::<Vec<_>>().try_into().unwrap()
        };
        let mut want = [entry(fields(v4)), entry(fields(v6))];
        want[1].uri = "/x y".into();
        assert_eq!(parse_nginx_log(log).unwrap(), want);
        assert!(parse_nginx_log("pp 1 2 3 \"/\"\n").is_err());
        assert!(parse_nginx_log("pp 1 2 3 4 5 6 7 8 9\n").is_err(), "no URI");
    }

    #[test]
    fn parses_haproxy_lines() {
        let log = "hap 198.18.0.2 40000 198.18.100.1 80 \"GET /h1 HTTP/1.1\"\n\
                   [WARNING] something\n";
        let want = HaproxyEntry {
            client_addr: "198.18.0.2".into(),
            client_port: "40000".into(),
            frontend_addr: "198.18.100.1".into(),
            frontend_port: "80".into(),
            request: "GET /h1 HTTP/1.1".into(),
        };
        assert_eq!(parse_haproxy_log(log).unwrap(), [want]);
        assert!(parse_haproxy_log("hap 1 2 3 4\n").is_err(), "no request");
        assert!(
            parse_haproxy_log("hap 1 2 \"GET /\"\n").is_err(),
            "3 fields"
        );
    }
}
