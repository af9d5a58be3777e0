//! Traffic that runs while a test changes the LB: a stream of short connections (a python
//! client recording every connection's start, end and outcome) and long-lived,
//! rate-limited downloads (another python client). Both run in the client namespace in the background,
//! bounded in count and time.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::bg::Bg;
use crate::netns::{Netns, wait_until};
use crate::topology::{PORT, Topology, VIP4, VIP6};
use crate::unique;

/// Seconds since the Unix epoch, the clock the short-connection client stamps with.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The client: sequential connections to HOST:PORT, each `GET PATH` over HTTP/1.0 (so a
/// new TCP connection every time), one record line per connection:
/// `START END ok BODY` or `START END fail WHAT`, a connection failing after TIMEOUT
/// seconds without connecting or without an answer. Stops after MAX connections, MAX_SECS
/// seconds, or when STOP_FILE exists.
const SHORT_CLIENT: &str = r#"
import os, socket, sys, time
host, port, path, out, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
max_n, max_secs, pause, timeout = int(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8]), float(sys.argv[9])
deadline = time.monotonic() + max_secs
req = ("GET %s HTTP/1.0\r\nHost: vip\r\n\r\n" % path).encode()
with open(out, "w", buffering=1) as f:
    n = 0
    while n < max_n and time.monotonic() < deadline and not os.path.exists(stop):
        n += 1
        t0 = time.time()
        try:
            s = socket.create_connection((host, port), timeout=timeout)
            try:
                s.settimeout(timeout)
                s.sendall(req)
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            finally:
                s.close()
            head, _, body = data.partition(b"\r\n\r\n")
            parts = head.split(b" ", 2)
            status = parts[1].decode() if len(parts) > 1 else "none"
            body = body.decode(errors="replace").strip()
            if status == "200" and body and " " not in body:
                res = "ok " + body
            else:
                res = "fail status=%s body=%r" % (status, body[:40])
        except Exception as e:
            res = "fail %s: %s" % (type(e).__name__, str(e).replace("\n", " "))
        f.write("%.6f %.6f %s\n" % (t0, time.time(), res))
        time.sleep(pause)
"#;

/// One short connection as the client saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Conn {
    /// When the connection attempt started and the exchange ended, Unix seconds.
    pub start: f64,
    pub end: f64,
    /// Ok(backend name served as `/name`) or Err(what went wrong).
    pub outcome: std::result::Result<String, String>,
}

/// Records of short connections, with the queries tests make of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conns(pub Vec<Conn>);

impl Conns {
    /// Parses the client's record lines.
    pub fn parse(text: &str) -> Result<Conns> {
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut it = line.splitn(4, ' ');
            let (Some(start), Some(end), Some(kind)) = (it.next(), it.next(), it.next()) else {
                bail!("bad record line {line:?}");
            };
            let rest = it.next().unwrap_or_default().to_owned();
            let start: f64 = start
                .parse()
                .with_context(|| format!("bad start in {line:?}"))?;
            let end: f64 = end
                .parse()
                .with_context(|| format!("bad end in {line:?}"))?;
            let outcome = match kind {
                "ok" => Ok(rest),
                "fail" => Err(rest),
                _ => bail!("bad record line {line:?}"),
            };
            out.push(Conn {
                start,
                end,
                outcome,
            });
        }
        Ok(Conns(out))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The connections whose attempt started at or after `t` (Unix seconds) and before
    /// `until`.
    pub fn between(&self, t: f64, until: f64) -> Conns {
        Conns(
            self.0
                .iter()
                .filter(|c| c.start >= t && c.start < until)
                .cloned()
                .collect(),
        )
    }

    /// The connections started at or after `t`.
    pub fn since(&self, t: f64) -> Conns {
        self.between(t, f64::INFINITY)
    }

    pub fn failures(&self) -> Vec<&Conn> {
        self.0.iter().filter(|c| c.outcome.is_err()).collect()
    }

    /// Successful connections per backend name.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in &self.0 {
            if let Ok(b) = &c.outcome {
                *m.entry(b.clone()).or_default() += 1;
            }
        }
        m
    }

    pub fn count(&self, backend: &str) -> usize {
        self.counts().get(backend).copied().unwrap_or(0)
    }

    /// Share of `backend` among the successful connections, percent.
    pub fn share(&self, backend: &str) -> f64 {
        let ok: usize = self.counts().values().sum();
        if ok == 0 {
            return 0.0;
        }
        100.0 * self.count(backend) as f64 / ok as f64
    }
}

impl fmt::Display for Conns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failures = self.failures();
        write!(f, "{} connections: ", self.len())?;
        for (b, n) in self.counts() {
            write!(f, "{b}={n} ({:.1}%) ", self.share(&b))?;
        }
        write!(f, "failed={}", failures.len())?;
        for c in failures.iter().take(5) {
            write!(
                f,
                "\n  failed at {:.3}..{:.3}: {}",
                c.start,
                c.end,
                c.outcome.as_ref().err().map(String::as_str).unwrap_or("")
            )?;
        }
        Ok(())
    }
}

/// Bounds and pace of a short-connection stream.
#[derive(Clone, Copy, Debug)]
pub struct ShortOpts {
    pub max_conns: usize,
    pub max_time: Duration,
    /// Pause after each connection.
    pub pause: Duration,
    /// How long a connection may take to connect, and then to answer: one without an
    /// answer by then is a failure.
    pub timeout: Duration,
}

impl Default for ShortOpts {
    fn default() -> Self {
        ShortOpts {
            max_conns: 20_000,
            max_time: Duration::from_secs(120),
            pause: Duration::from_millis(20),
            timeout: Duration::from_secs(3),
        }
    }
}

/// A stream of short connections from the client to the VIP's `/name`, running in the
/// background until [`ShortConns::stop`] (or its bounds).
pub struct ShortConns {
    bg: Bg,
    records: PathBuf,
    stop: PathBuf,
}

/// `python3 DIR/NAME HOST PORT` in `client`, the script `text` written there first.
fn script_client(
    client: &Netns,
    dir: &Path,
    name: &str,
    text: &str,
    host: &str,
    port: u16,
) -> Result<Command> {
    let script = dir.join(name);
    if !script.exists() {
        std::fs::write(&script, text)?;
    }
    let mut c = client.command("python3");
    c.arg(&script).arg(host).arg(port.to_string());
    Ok(c)
}

impl ShortConns {
    pub fn start(topo: &Topology, v6: bool, opts: ShortOpts) -> Result<ShortConns> {
        let host = if v6 { VIP6.into() } else { VIP4.into() };
        ShortConns::start_in(
            &topo.client,
            topo.dir.path(),
            SocketAddr::new(host, PORT),
            opts,
        )
    }

    /// As [`ShortConns::start`], from `client` to `server`, its files in `dir`.
    pub fn start_in(
        client: &Netns,
        dir: &Path,
        server: SocketAddr,
        opts: ShortOpts,
    ) -> Result<ShortConns> {
        let tag = unique("short");
        let records = dir.join(format!("{tag}.records"));
        let stop = dir.join(format!("{tag}.stop"));
        let host = server.ip().to_string();
        let mut c = script_client(
            client,
            dir,
            "short_client.py",
            SHORT_CLIENT,
            &host,
            server.port(),
        )?;
        c.arg("/name")
            .arg(&records)
            .arg(&stop)
            .arg(opts.max_conns.to_string())
            .arg(format!("{:.3}", opts.max_time.as_secs_f64()))
            .arg(format!("{:.3}", opts.pause.as_secs_f64()))
            .arg(format!("{:.3}", opts.timeout.as_secs_f64()));
        let bg = Bg::spawn(c, &dir.join(format!("{tag}.out")))?;
        Ok(ShortConns { bg, records, stop })
    }

    /// The connections recorded so far.
    pub fn snapshot(&self) -> Result<Conns> {
        let text = std::fs::read_to_string(&self.records).unwrap_or_default();
        // The last line may be half written.
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        Conns::parse(complete)
    }

    /// Waits until at least `n` connections are recorded (at most `timeout`).
    pub fn wait_for(&mut self, n: usize, timeout: Duration) -> Result<Conns> {
        let ok = wait_until(timeout, || Ok(self.snapshot()?.len() >= n));
        let got = self.snapshot()?;
        if !ok {
            bail!(
                "the short-connection client recorded {} connections, not {n}, within {timeout:?} (running: {}); its output:\n{}",
                got.len(),
                self.bg.running(),
                self.bg.output()
            );
        }
        Ok(got)
    }

    /// Stops the client after its current connection and returns every record.
    pub fn stop(mut self) -> Result<Conns> {
        std::fs::write(&self.stop, "")?;
        let status = self.bg.wait(Duration::from_secs(10))?;
        if !status.success() {
            bail!(
                "the short-connection client failed ({status}): {}",
                self.bg.output()
            );
        }
        self.snapshot()
    }
}

/// The slow client: `GET PATH` over HTTP/1.0, then reads the body at RATE bytes/s into
/// DEST through a small receive buffer, so the TCP flow itself is slow and steady (curl's
/// --limit-rate reads in bursts whatever the kernel buffered). Prints `done STATUS
/// LENGTH` and exits 0 when the whole body arrived, else prints the error and exits 1.
/// A silent connection fails after 10 s; the whole run after MAX_SECS.
const SLOW_CLIENT: &str = r#"
import socket, sys, time
host, port, path, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rate, max_secs = int(sys.argv[5]), float(sys.argv[6])
start = time.monotonic()
got = 0
try:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.settimeout(3)
    s.connect((host, port))
    s.settimeout(10)
    s.sendall(("GET %s HTTP/1.0\r\nHost: vip\r\n\r\n" % path).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise Exception("connection closed in the response header")
        head += chunk
    head, _, body = head.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    status = int(lines[0].split(" ")[1])
    length = None
    for l in lines[1:]:
        k, _, v = l.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    if status != 200 or length is None:
        raise Exception("response %r" % lines)
    with open(dest, "wb") as f:
        while True:
            if body:
                f.write(body)
                f.flush()
                got += len(body)
            if got >= length:
                break
            if time.monotonic() - start > max_secs:
                raise Exception("not done after %s s" % max_secs)
            wait = start + got / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            body = s.recv(4096)
            if not body:
                raise Exception("connection closed after %d of %d bytes" % (got, length))
    s.close()
    print("done", status, length, flush=True)
except Exception as e:
    print("error after %d bytes, %.3f s: %s: %s" % (got, time.monotonic() - start, type(e).__name__, e), flush=True)
    sys.exit(1)
"#;

/// A long-lived flow: a download from the VIP at a limited rate (see `SLOW_CLIENT`).
pub struct SlowDownload {
    bg: Bg,
    dest: PathBuf,
    marker: String,
}

impl SlowDownload {
    /// Starts downloading `/PATH` (e.g. `blob`) through the VIP at `rate` bytes/s, for
    /// at most `max_time`. The request carries a unique query string, so the backend
    /// that serves it can be found in the servers' logs ([`Self::backend`]).
    pub fn start(
        topo: &Topology,
        v6: bool,
        path: &str,
        rate: u32,
        max_time: Duration,
    ) -> Result<SlowDownload> {
        let host = if v6 { VIP6.into() } else { VIP4.into() };
        let url = SocketAddr::new(host, PORT);
        SlowDownload::start_in(&topo.client, topo.dir.path(), url, path, rate, max_time)
    }

    /// As [`SlowDownload::start`], from `client` to `server`, its files in `dir`.
    pub fn start_in(
        client: &Netns,
        dir: &Path,
        server: SocketAddr,
        path: &str,
        rate: u32,
        max_time: Duration,
    ) -> Result<SlowDownload> {
        let marker = unique("slow");
        let dest = dir.join(format!("{marker}.download"));
        let host = server.ip().to_string();
        let mut c = script_client(
            client,
            dir,
            "slow_client.py",
            SLOW_CLIENT,
            &host,
            server.port(),
        )?;
        c.arg(format!("/{path}?{marker}"))
            .arg(&dest)
            .arg(rate.to_string())
            .arg(max_time.as_secs_f64().to_string());
        let bg = Bg::spawn(c, &dir.join(format!("{marker}.out")))?;
        Ok(SlowDownload { bg, dest, marker })
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        std::fs::metadata(&self.dest).map(|m| m.len()).unwrap_or(0)
    }

    pub fn running(&mut self) -> bool {
        self.bg.running()
    }

    /// Waits for the download to end (at most `timeout`) and returns its exit status.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.bg.wait(timeout)
    }

    /// What the client printed (`done ...` or the error).
    pub fn output(&self) -> String {
        self.bg.output()
    }

    /// sha256 of what was downloaded.
    pub fn sha256(&self) -> Result<String> {
        crate::client::sha256_file(&self.dest)
    }

    /// Waits until a backend's server has logged this download's request and returns
    /// the backend's name (at most `timeout`).
    pub fn backend(&self, topo: &Topology, timeout: Duration) -> Result<String> {
        let mut found = Vec::new();
        wait_until(timeout, || {
            found = served_by(topo, &self.marker)?;
            Ok(!found.is_empty())
        });
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => bail!(
                "no backend logged the request {} within {timeout:?}; the client said: {}",
                self.marker,
                self.output()
            ),
            many => bail!("several backends logged {}: {many:?}", self.marker),
        }
    }
}

/// Names of the backends whose server logs (`<name>*.log` in the topology's temp dir)
/// mention `marker`.
pub fn served_by(topo: &Topology, marker: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for b in &topo.backends {
        for entry in std::fs::read_dir(topo.dir.path())? {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with(&b.name)
                && file.ends_with(".log")
                && std::fs::read_to_string(entry.path())
                    .unwrap_or_default()
                    .contains(marker)
                && !names.contains(&b.name)
            {
                names.push(b.name.clone());
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records() {
        let c = Conns::parse(
            "10.5 10.6 ok b1\n11.0 11.2 ok b2\n12.0 15.0 fail TimeoutError: timed out\n13.0 13.1 ok b1\n",
        )
        .unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(c.count("b1"), 2);
        assert_eq!(c.failures().len(), 1);
        assert_eq!(c.0[2].outcome, Err("TimeoutError: timed out".to_owned()));
        assert_eq!(c.since(11.0).len(), 3);
        assert_eq!(c.between(11.0, 13.0).len(), 2);
        assert!((c.share("b1") - 200.0 / 3.0).abs() < 1e-9);
        assert!(Conns::parse("1 2 maybe x\n").is_err());
    }
}
