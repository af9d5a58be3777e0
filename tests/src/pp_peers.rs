//! PROXY protocol peers written for the tests, in python (Debian's, see
//! [`crate::receivers::PYTHON`]): a backend that reads and checks the header byte by byte
//! (both versions, every TLV, the CRC32C recomputed independently of lb's code) and then
//! plays one of several roles (HTTP, HTTPS, a server-first greeting, a sink or a source
//! of bulk data, half-close and reset behaviour), and a client for the same roles. Both
//! report in JSON; the backend appends one record per connection to a file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::netns::{Netns, wait_until};
use crate::receivers::{self, PYTHON, Proc};

/// Python both peers use (written before each script): `chunks` yields what a socket
/// receives until EOF, `sink` counts and hashes it; `stream` sends TOTAL bytes of random 1 MiB blocks, each stamped
/// with its index (reordered, repeated or lost blocks change the hash), and returns the
/// sha256 of what it sent.
const SHARED: &str = r#"
import hashlib, os, struct

def chunks(s):
    while True:
        d = s.recv(65536)
        if not d:
            return
        yield d

def sink(s):
    # Receives until EOF into one buffer; returns the byte count and their sha256.
    h, n = hashlib.sha256(), 0
    buf = bytearray(1 << 20)
    mv = memoryview(buf)
    while True:
        k = s.recv_into(buf)
        if not k:
            return n, h.hexdigest()
        h.update(mv[:k])
        n += k

def stream(send, total):
    h = hashlib.sha256()
    block = bytearray(os.urandom(1 << 20))
    i, left = 0, total
    while left > 0:
        block[0:8] = struct.pack("!Q", i)
        piece = memoryview(block)[:min(left, len(block))]
        h.update(piece)
        send(piece)
        left -= len(piece)
        i += 1
    return h.hexdigest()
"#;

/// The backend: `pp_server.py NAME PORT MODE RECORDS [ARGS...]`, dual-stack on `::`.
/// Every connection first has its PROXY header read exactly (never a byte more, so what
/// follows is the client's), then MODE runs; one JSON record per connection is appended
/// to RECORDS when it ends: the header's fields, its TLVs, whether its CRC32C matched,
/// times (`t_accept`, `t_header`, ...), what the mode saw, or `error`.
const SERVER: &str = r#"
import hashlib, json, os, socket, ssl, struct, sys, threading, time

name, port, mode, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
args = sys.argv[5:]
SIG = b"\r\n\r\n\x00\r\nQUIT\n"
lock = threading.Lock()

def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF

assert crc32c(b"123456789") == 0xE3069283

def record(rec):
    rec["backend"] = name
    with lock:
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")

def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        c = s.recv(n - len(buf))
        if not c:
            raise EOFError("EOF after %d of %d bytes" % (len(buf), n))
        buf += c
    return buf

def ntop(fam, b):
    return socket.inet_ntop(fam, b)

def read_header(s):
    head = recv_exact(s, 5)
    if head == b"PROXY":
        line = head
        while not line.endswith(b"\r\n"):
            if len(line) >= 107:
                raise ValueError("v1 line too long: %r" % line)
            line += recv_exact(s, 1)
        text = line[:-2].decode("ascii")
        parts = text.split(" ")
        rec = {"version": 1, "raw": line.hex(), "line": text, "tlvs": [], "crc32c_ok": None}
        if len(parts) == 6 and parts[1] in ("TCP4", "TCP6"):
            rec.update(command="PROXY", family=parts[1], src=parts[2], dst=parts[3],
                       sport=int(parts[4]), dport=int(parts[5]))
        else:
            rec.update(command=parts[1] if len(parts) > 1 else "?")
        return rec
    if head != SIG[:5]:
        raise ValueError("no PROXY header, starts with %r" % head)
    hdr = head + recv_exact(s, 11)
    if hdr[:12] != SIG:
        raise ValueError("bad v2 signature %r" % hdr[:12])
    vc, fam = hdr[12], hdr[13]
    ln = struct.unpack("!H", hdr[14:16])[0]
    body = recv_exact(s, ln)
    full = hdr + body
    rec = {"version": vc >> 4, "command": {0: "LOCAL", 1: "PROXY"}.get(vc & 15, str(vc & 15)),
           "family": fam, "raw": full.hex()}
    # TCP4 and TCP6: (address family, address length); the ports follow the addresses.
    families = {0x11: (socket.AF_INET, 4), 0x21: (socket.AF_INET6, 16)}
    off = 0
    if fam in families:
        af, alen = families[fam]
        off = 2 * alen + 4
        if ln < off:
            raise ValueError("address block of %d bytes for family 0x%02x" % (ln, fam))
        rec.update(src=ntop(af, body[0:alen]), dst=ntop(af, body[alen:2 * alen]))
        rec["sport"], rec["dport"] = struct.unpack("!HH", body[2 * alen:off])
    elif fam != 0:
        raise ValueError("family/transport 0x%02x" % fam)
    tlvs, crc = [], None
    while off < ln:
        if off + 3 > ln:
            raise ValueError("TLV header at %d runs past the end (%d)" % (off, ln))
        t = body[off]
        l = struct.unpack("!H", body[off + 1:off + 3])[0]
        v = body[off + 3:off + 3 + l]
        if len(v) != l:
            raise ValueError("TLV 0x%02x value runs past the end" % t)
        tlvs.append({"type": t, "len": l, "hex": v.hex(), "text": v.decode("utf-8", "replace")})
        if t == 3:
            z = bytearray(full)
            pos = 16 + off + 3
            z[pos:pos + l] = bytes(l)
            got = crc32c(bytes(z))
            crc = (l == 4 and got == struct.unpack("!I", v)[0])
            rec["crc32c_computed"] = "%08x" % got
        off += 3 + l
    rec["tlvs"], rec["crc32c_ok"] = tlvs, crc
    return rec

def read_request(s, rec):
    data = b""
    while b"\r\n\r\n" not in data:
        c = s.recv(65536)
        if not c:
            raise EOFError("EOF in the request (%d bytes)" % len(data))
        data += c
        if len(data) > 65536:
            raise ValueError("request too long")
    rec["request"] = data.split(b"\r\n", 1)[0].decode(errors="replace")

def answer(s, body):
    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
              b"Connection: close\r\n\r\n%s" % (len(body), body))

def mode_http(c, rec):
    read_request(c, rec)
    answer(c, (name + "\n").encode())

def mode_https(c, rec):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args[0], args[1])
    ctx.set_alpn_protocols(["http/1.1"])
    def sni(sslobj, server_name, context):
        rec["sni"] = server_name
    ctx.sni_callback = sni
    t = ctx.wrap_socket(c, server_side=True)
    rec["alpn_selected"] = t.selected_alpn_protocol()
    read_request(t, rec)
    answer(t, (name + " tls\n").encode())
    t.close()

def mode_greet(c, rec):
    c.sendall(b"220 ready\r\n")
    rec["t_greeting"] = time.time()
    n = 0
    for d in chunks(c):
        n += len(d)
        c.sendall(d)
    rec["echoed"] = n

def mode_sink(c, rec):
    n, digest = sink(c)
    rec["received"], rec["sha256"] = n, digest
    c.sendall(b"%s %d\n" % (digest.encode(), n))

def mode_source(c, rec):
    total = int(args[0])
    rec["sha256"] = stream(c.sendall, total)
    rec["sent"] = total
    c.shutdown(socket.SHUT_WR)
    while c.recv(65536):
        pass

REPLY = bytes(range(256)) * 4096

def mode_halfclose(c, rec):
    h, n = hashlib.sha256(), 0
    for d in chunks(c):
        h.update(d)
        n += len(d)
    rec["t_eof"] = time.time()
    rec["received"], rec["sha256"] = n, h.hexdigest()
    c.sendall(b"got %d %s\n" % (n, h.hexdigest().encode()) + REPLY)
    rec["t_reply_sent"] = time.time()
    c.close()

def mode_srvhalf(c, rec):
    c.sendall(b"bye\n")
    c.shutdown(socket.SHUT_WR)
    rec["t_shut"] = time.time()
    rec["after"] = b"".join(chunks(c)).decode(errors="replace")

def mode_watch(c, rec):
    n = 0
    while True:
        try:
            d = c.recv(65536)
        except ConnectionResetError:
            rec["outcome"] = "reset"
            break
        except socket.timeout:
            rec["outcome"] = "timeout"
            break
        if not d:
            rec["outcome"] = "eof"
            break
        n += len(d)
        rec["t_data"] = time.time()
    rec["t_event"] = time.time()
    rec["received"] = n

def mode_rst(c, rec):
    d = c.recv(65536)
    rec["received"] = len(d)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rec["t_rst"] = time.time()
    c.close()

MODES = {"http": mode_http, "https": mode_https, "greet": mode_greet, "sink": mode_sink,
         "source": mode_source, "halfclose": mode_halfclose, "srvhalf": mode_srvhalf, "watch": mode_watch,
         "rst": mode_rst}

def handle(c, peer):
    rec = {"peer": peer[0].removeprefix("::ffff:"), "peer_port": peer[1], "t_accept": time.time()}
    try:
        c.settimeout(30)
        rec.update(read_header(c))
        rec["t_header"] = time.time()
        if rec["command"] == "PROXY":
            MODES[mode](c, rec)
    except Exception as e:
        rec["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        rec["t_end"] = time.time()
        try:
            c.close()
        except Exception:
            pass
        record(rec)

if mode not in MODES:
    sys.exit("unknown mode " + mode)
ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("::", port))
ls.listen(128)
print("listening", port, flush=True)
while True:
    c, peer = ls.accept()
    threading.Thread(target=handle, args=(c, peer), daemon=True).start()
"#;

/// The client: `pp_client.py MODE HOST PORT SRC [ARGS...]` (SRC `-`: any source
/// address). Prints one JSON object; `local` and `local_port` are the client's side of
/// the connection. Modes:
/// - `greet`: sends nothing, waits (3 s) for the server's first line (`greeting`,
///   `secs` after the connect), then sends a line and checks it echoes.
/// - `upload N`: sends N bytes (the same stamped stream as the backend's source), shuts
///   its write side, returns the backend's reply (`reply`) and its own `sha256`.
/// - `download`: reads until EOF: `received`, `sha256`.
/// - `halfclose N`: sends N random bytes, shuts its write side, reads the whole reply
///   until EOF and checks it (`reply_ok`), with `t_shut` and `t_eof`.
/// - `srvhalf`: reads until the backend's EOF (`got`), then still sends a line and shuts
///   its write side (the backend records it as `after`).
/// - `rst_client`: sends `hello`, waits 0.5 s, closes with SO_LINGER 0 (a RST), `t_rst`.
/// - `rst_wait`: sends `hello`, waits (5 s) for what comes back: `outcome` is `reset`,
///   `eof`, `data` or `timeout`, `t_event`.
/// - `raw HEX`: sends the bytes HEX (a PROXY header and a request), reads until EOF:
///   `outcome` (`response`, `reset`, `eof`, `timeout`), `response` (the first bytes).
/// - `reset_check`: sends nothing, waits (3 s): `outcome` (`reset`, `eof`, `data`,
///   `timeout`, `refused`) and `secs` since the connect started.
const CLIENT: &str = r#"
import binascii, hashlib, json, os, socket, struct, sys, time

mode, host, port, src = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
args = sys.argv[5:]
res = {"mode": mode}

def connect():
    t = time.time()
    s = socket.create_connection((host, port), timeout=5,
                                 source_address=None if src == "-" else (src, 0))
    res["t_connected"] = time.time()
    res["connect_secs"] = res["t_connected"] - t
    l = s.getsockname()
    res["local"], res["local_port"] = l[0], l[1]
    return s

def read_all(s, limit=1 << 24):
    data = b""
    for d in chunks(s):
        data += d
        if len(data) > limit:
            raise ValueError("more than %d bytes" % limit)
    return data

REPLY = bytes(range(256)) * 4096

try:
    if mode == "greet":
        s = connect()
        s.settimeout(3)
        data = b""
        while b"\r\n" not in data:
            d = s.recv(4096)
            if not d:
                raise EOFError("EOF before the greeting (got %r)" % data)
            data += d
        res["secs"] = time.time() - res["t_connected"]
        res["greeting"] = data.decode(errors="replace")
        s.sendall(b"QUIT\r\n")
        s.shutdown(socket.SHUT_WR)
        res["echo"] = read_all(s).decode(errors="replace")
    elif mode == "upload":
        # ARGS: BYTES [BYTES_PER_SECOND] to send no faster than that (a long-lived flow).
        s = connect()
        s.settimeout(60)
        n = int(args[0])
        t = time.time()
        send = s.sendall
        if len(args) > 1:
            rate, sent = int(args[1]), [0]
            def send(piece):
                s.sendall(piece)
                sent[0] += len(piece)
                time.sleep(max(0.0, t + sent[0] / rate - time.time()))
        res["sha256"] = stream(send, n)
        res["sent"] = n
        s.shutdown(socket.SHUT_WR)
        res["reply"] = read_all(s).decode(errors="replace").strip()
        res["secs"] = time.time() - t
    elif mode == "download":
        # ARGS: [BYTES_PER_SECOND] to read no faster than that (a long-lived flow).
        s = connect()
        s.settimeout(60)
        t = time.time()
        if args:
            rate, h, n = int(args[0]), hashlib.sha256(), 0
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            res["received"] = 0
            for d in chunks(s):
                h.update(d)
                n += len(d)
                res["received"] = n
                time.sleep(max(0.0, t + n / rate - time.time()))
            digest = h.hexdigest()
        else:
            n, digest = sink(s)
        res["received"], res["sha256"], res["secs"] = n, digest, time.time() - t
    elif mode == "halfclose":
        s = connect()
        s.settimeout(10)
        data = os.urandom(int(args[0]))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        res["t_shut"] = time.time()
        res["sent"], res["sha256"] = len(data), hashlib.sha256(data).hexdigest()
        reply = read_all(s)
        res["t_eof"] = time.time()
        head, _, rest = reply.partition(b"\n")
        res["reply_head"] = head.decode(errors="replace")
        res["reply_len"] = len(reply)
        res["reply_ok"] = (head == b"got %d %s" % (len(data), res["sha256"].encode())
                           and rest == REPLY)
    elif mode == "srvhalf":
        s = connect()
        s.settimeout(10)
        res["got"] = read_all(s).decode(errors="replace")
        res["t_eof"] = time.time()
        time.sleep(0.2)
        s.sendall(b"after the backend's FIN\n")
        s.shutdown(socket.SHUT_WR)
        res["rest"] = read_all(s).decode(errors="replace")
    elif mode == "rst_client":
        s = connect()
        s.sendall(b"hello")
        time.sleep(0.5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        res["t_rst"] = time.time()
        s.close()
    elif mode == "rst_wait":
        s = connect()
        s.sendall(b"hello")
        s.settimeout(5)
        try:
            d = s.recv(65536)
            res["outcome"] = "data" if d else "eof"
            if d:
                res["data"] = d.decode(errors="replace")
        except ConnectionResetError:
            res["outcome"] = "reset"
        except socket.timeout:
            res["outcome"] = "timeout"
        res["t_event"] = time.time()
    elif mode == "raw":
        s = connect()
        s.settimeout(5)
        s.sendall(binascii.unhexlify(args[0]))
        data = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    res["outcome"] = "response" if data else "eof"
                    break
                data += d
        except ConnectionResetError:
            res["outcome"] = "reset"
        except socket.timeout:
            res["outcome"] = "timeout"
        res["response"] = data[:400].decode(errors="replace")
    elif mode == "reset_check":
        t = time.time()
        try:
            s = connect()
            s.settimeout(3)
            d = s.recv(65536)
            res["outcome"] = "data" if d else "eof"
        except ConnectionResetError:
            res["outcome"] = "reset"
        except ConnectionRefusedError:
            res["outcome"] = "refused"
        except socket.timeout:
            res["outcome"] = "timeout"
        res["secs"] = time.time() - t
    else:
        raise ValueError("unknown mode " + mode)
    res["ok"] = True
except Exception as e:
    res["ok"] = False
    res["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(res), flush=True)
"#;

fn script(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.exists() {
        std::fs::write(&path, format!("{SHARED}{text}"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(path)
}

/// A running python PROXY backend and the file its records go to.
#[derive(Debug)]
pub struct PpServer {
    pub proc: Proc,
    pub records: PathBuf,
}

/// Starts the python PROXY backend `name` in `ns` on `port` in `mode` (`http`, `https
/// CERT KEY`, `greet`, `sink`, `source N`, `halfclose`, `srvhalf`, `watch`, `rst`), with its
/// script and files in `dir`; waits until it listens.
pub fn start_server(
    ns: &Netns,
    dir: &Path,
    name: &str,
    port: u16,
    mode: &str,
    args: &[&str],
) -> Result<PpServer> {
    let path = script(dir, "pp_server.py", SERVER)?;
    let records = dir.join(format!("pp-{name}-{port}.jsonl"));
    let _ = std::fs::remove_file(&records);
    let port_s = port.to_string();
    let path_s = path.to_string_lossy();
    let records_s = records.to_string_lossy();
    let mut full = vec![&*path_s, name, &port_s, mode, &*records_s];
    full.extend_from_slice(args);
    let proc = receivers::spawn(
        ns,
        &format!("python PROXY backend {name}:{port} ({mode})"),
        PYTHON,
        &full,
        &dir.join(format!("pp-{name}-{port}.out")),
    )?;
    receivers::wait_listening(ns, &proc, &[port], None)?;
    Ok(PpServer { proc, records })
}

impl PpServer {
    /// The records of the connections that ended so far.
    pub fn records(&self) -> Result<Vec<Value>> {
        parse_records(&std::fs::read_to_string(&self.records).unwrap_or_default())
    }

    /// Records of connections whose header said PROXY (not a health check's LOCAL).
    pub fn proxied(&self) -> Result<Vec<Value>> {
        Ok(self
            .records()?
            .into_iter()
            .filter(|r| r["command"] == "PROXY")
            .collect())
    }
}

/// Parses JSON lines.
pub fn parse_records(text: &str) -> Result<Vec<Value>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad record {l:?}")))
        .collect()
}

/// Records of every server in `servers` (all backends of a test), polled until `check`
/// holds for them or `timeout` passes; returns the last ones read.
pub fn wait_records(
    servers: &[&PpServer],
    timeout: Duration,
    mut check: impl FnMut(&[Value]) -> bool,
) -> Result<Vec<Value>> {
    let mut last = Vec::new();
    wait_until(timeout, || {
        last.clear();
        for s in servers {
            last.extend(s.records()?);
        }
        Ok(check(&last))
    });
    Ok(last)
}

/// Runs the python client in `ns` (`timeout` bounds it: killed after, by the `timeout`
/// program) and returns its JSON report.
pub fn client(ns: &Netns, dir: &Path, args: &[&str], timeout: Duration) -> Result<Value> {
    let path = script(dir, "pp_client.py", CLIENT)?;
    let secs = timeout.as_secs().max(1).to_string();
    let mut c = ns.command("timeout");
    c.args(["-s", "KILL", &secs, PYTHON]).arg(&path).args(args);
    let line = crate::cmd::display(&c);
    let out = crate::cmd::output_any(&mut c)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| {
        format!(
            "`{line}` ({}) printed no JSON report:\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A PROXY v2 header (command PROXY, TCP, no TLVs) for `src` → `dst` of one family.
pub fn v2_header(src: SocketAddr, dst: SocketAddr) -> Result<Vec<u8>> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
        }
        _ => bail!("v2_header: {src} and {dst} differ in family"),
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    Ok(h)
}

/// A PROXY v1 line for `src` → `dst` of one family.
pub fn v1_header(src: SocketAddr, dst: SocketAddr) -> Result<Vec<u8>> {
    let proto = match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => "TCP4",
        (SocketAddr::V6(_), SocketAddr::V6(_)) => "TCP6",
        _ => bail!("v1_header: {src} and {dst} differ in family"),
    };
    Ok(format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of the first TLV of `type_` in a record, as (hex, text).
pub fn tlv(rec: &Value, type_: u64) -> Option<(String, String)> {
    rec["tlvs"].as_array()?.iter().find_map(|t| {
        (t["type"].as_u64() == Some(type_)).then(|| {
            (
                t["hex"].as_str().unwrap_or_default().to_owned(),
                t["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_headers() {
        let src: SocketAddr = "198.18.77.7:1234".parse().unwrap();
        let dst: SocketAddr = "198.18.100.1:80".parse().unwrap();
        let h = v2_header(src, dst).unwrap();
        assert_eq!(h.len(), 16 + 12);
        assert_eq!(
            hex(&h),
            "0d0a0d0a000d0a515549540a2111000cc6124d07c612640104d20050"
        );
        assert_eq!(
            v1_header(src, dst).unwrap(),
            b"PROXY TCP4 198.18.77.7 198.18.100.1 1234 80\r\n"
        );
        let src6: SocketAddr = "[fd00::7]:1".parse().unwrap();
        assert!(v2_header(src6, dst).is_err());
        let dst6: SocketAddr = "[fd00:100::1]:80".parse().unwrap();
        assert_eq!(v2_header(src6, dst6).unwrap().len(), 16 + 36);
    }

    #[test]
    fn finds_tlvs() {
        let rec: Value =
            serde_json::from_str(r#"{"tlvs":[{"type":2,"len":3,"hex":"616263","text":"abc"}]}"#)
                .unwrap();
        assert_eq!(tlv(&rec, 2), Some(("616263".into(), "abc".into())));
        assert_eq!(tlv(&rec, 1), None);
    }
}
