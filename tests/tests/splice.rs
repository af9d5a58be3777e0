//! Tests of the proxy data path's kernel programs and splice engines: `lb_splice` with
//! the sockmap engine and the splice(2) pipe engine on real TCP connections, and
//! `lb_lookup` steering a VIP:port to a listener.
//!
//! Each test builds its own network namespace, enters it on the test thread (the tokio
//! runtime's threads are started from there, so every socket lives in it), loads the
//! embedded eBPF object and works on loopback:
//!
//! ```text
//! client ──► [proxy: accepted socket] ══ splice ══ [proxy: connected socket] ──► server
//! ```
//!
//! Needs root (namespaces, BPF): without it the tests fail, never skip. They run one at
//! a time (a lock), so the memory and throughput figures they print are not disturbed by
//! each other; `cargo test -p lb-tests --test splice -- --nocapture` shows them.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::{
    EbpfLoader,
    maps::{HashMap, MapData, SockMap},
    programs::SkLookup,
};
use lb_common::maps::{VipKey, names};
use lb_tests::{
    Netns,
    packet::{Packet, decode, flags},
    tap::Tap,
};
use lb_user::proxy::splice::park::{Parked, ParkedState};
use lb_user::proxy::splice::{
    End, Engine, Outcome, SpliceError, SpliceMaps, SpliceStats, resume, splice, splice_parkable,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    runtime::Runtime,
    task::JoinHandle,
};

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// Fixture

/// One test's world: its namespace (entered), a runtime whose threads live in it, and
/// the loaded splice maps with `lb_splice` attached.
struct Bed {
    rt: Runtime,
    maps: Arc<SpliceMaps>,
    // Dropped last: the namespace outlives runtime and maps.
    _ns: Netns,
    _serial: MutexGuard<'static, ()>,
}

static SERIAL: Mutex<()> = Mutex::new(());

impl Bed {
    fn new() -> Bed {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let ns = Netns::new("splice").expect("namespace (needs root)");
        ns.enter().expect("enter the namespace");
        let object = lb_user::dataplane::object::require().expect("embedded eBPF object");
        let mut ebpf = EbpfLoader::new()
            .load(object)
            .expect("load eBPF object (needs root)");
        let maps = SpliceMaps::load(&mut ebpf).expect("lb_splice loads and attaches");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Bed {
            rt,
            maps: Arc::new(maps),
            _ns: ns,
            _serial: serial,
        }
    }

    /// Runs `f` on the runtime with a deadline, so a stuck splice fails the test.
    fn run<F: Future>(&self, secs: u64, f: F) -> F::Output {
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(secs), f)
                .await
                .expect("test timed out")
        })
    }
}

/// The four sockets of a proxied connection before the splice starts.
struct Sockets {
    client: TcpStream,
    /// The proxy's accepted socket (client side).
    front: TcpStream,
    /// The proxy's connected socket (backend side).
    back: TcpStream,
    server: TcpStream,
}

async fn sockets() -> Sockets {
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(proxy.local_addr().unwrap())
        .await
        .unwrap();
    let (front, _) = proxy.accept().await.unwrap();
    let back = TcpStream::connect(backend.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = backend.accept().await.unwrap();
    Sockets {
        client,
        front,
        back,
        server,
    }
}

type Proxy = JoinHandle<Result<SpliceStats, SpliceError>>;

fn start(
    front: TcpStream,
    back: TcpStream,
    engine: Engine,
    maps: &Arc<SpliceMaps>,
    idle: Duration,
) -> Proxy {
    let maps = maps.clone();
    tokio::spawn(async move { splice(front, back, engine, Some(&maps), idle).await })
}

/// Starts the splice at once: (client, server, proxy task).
async fn proxied(
    engine: Engine,
    maps: &Arc<SpliceMaps>,
    idle: Duration,
) -> (TcpStream, TcpStream, Proxy) {
    let s = sockets().await;
    let p = start(s.front, s.back, engine, maps, idle);
    (s.client, s.server, p)
}

async fn finished(p: Proxy) -> SpliceStats {
    tokio::time::timeout(Duration::from_secs(10), p)
        .await
        .expect("splice did not end")
        .expect("splice task")
        .expect("splice")
}

// ---------------------------------------------------------------------------------------
// Data

/// A deterministic pseudo-random stream (splitmix64), different per seed.
fn stream(seed: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    while v.len() < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// SHA-256 (hex) by coreutils' sha256sum.
fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum (coreutils)");
    let mut stdin = child.stdin.take().unwrap();
    let out = std::thread::scope(|s| {
        s.spawn(move || stdin.write_all(data).expect("feed sha256sum"));
        child.wait_with_output().expect("sha256sum output")
    });
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .expect("sha256sum printed a digest")
        .to_string()
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert_eq!(sha256(got), sha256(want), "{what}: sha256");
}

/// Writes `data` then shuts the write side down, while reading the other direction to
/// EOF: what one end of a bulk transfer does.
async fn exchange(s: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("shutdown");
        w
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.expect("read to EOF");
    let _w = writer.await.unwrap();
    got
}

async fn read_exact_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).await.expect("read_exact");
    v
}

/// Reads until EOF or error; returns the bytes and the error kind (None for EOF).
async fn read_until_end(s: &mut TcpStream) -> (Vec<u8>, Option<std::io::ErrorKind>) {
    let mut v = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (v, None),
            Ok(n) => v.extend_from_slice(&buf[..n]),
            Err(e) => return (v, Some(e.kind())),
        }
    }
}

/// Writes `data` and shuts down so that the last bytes and the FIN travel in one
/// segment (the tail is corked until the FIN joins it). The proxy's socket receiving it
/// has already sent its own FIN, so that segment closes it (FIN_WAIT2 → TIME_WAIT),
/// which takes it out of the socket maps before the verdict sees the segment's bytes:
/// the sockmap engine must still forward them.
async fn write_then_fin_in_last_segment(s: &mut TcpStream, data: &[u8]) {
    let (head, tail) = data.split_at(data.len() - 1000);
    s.write_all(head).await.unwrap();
    // Let the head leave first, so the tail is a segment of its own.
    tokio::time::sleep(Duration::from_millis(50)).await;
    socket2::SockRef::from(&*s).set_cork(true).unwrap();
    s.write_all(tail).await.unwrap();
    s.shutdown().await.unwrap();
}

fn set_rst_on_close(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Both engines

macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        mod pipe {
            $( #[test] fn $name() { super::$name(super::Engine::Pipe) } )*
        }
        mod sockmap {
            $( #[test] fn $name() { super::$name(super::Engine::Sockmap) } )*
        }
    };
}

both_engines!(
    bulk_64mib_each_way,
    bytes_before_splice_come_first_in_order,
    eof_before_splice,
    half_close_client_first,
    half_close_backend_first,
    client_reset_resets_backend,
    backend_reset_resets_client,
    idle_timeout,
    aborted_splice_resets_both_ends,
    slow_receiver_memory,
    retransmission_over_received_bytes_goes_out_once,
    parked_mid_transfer_resumes_with_every_byte_once,
);

const IDLE: Duration = Duration::from_secs(60);

fn bulk_64mib_each_way(engine: Engine) {
    let bed = Bed::new();
    let up = stream(1, 64 * MIB);
    let down = stream(2, 64 * MIB);
    let (got_up, got_down, stats) = bed.run(120, async {
        let (client, server, proxy) = proxied(engine, &bed.maps, IDLE).await;
        let c = tokio::spawn(exchange(client, up.clone()));
        let s = tokio::spawn(exchange(server, down.clone()));
        let got_down = c.await.unwrap();
        let got_up = s.await.unwrap();
        (got_up, got_down, finished(proxy).await)
    });
    assert_same("client → server", &got_up, &up);
    assert_same("server → client", &got_down, &down);
    assert_eq!(stats.ended, End::ClosedBoth);
    assert_eq!(stats.engine, engine);
    assert_eq!(stats.bytes_in, up.len() as u64);
    assert_eq!(stats.bytes_out, down.len() as u64);
}

/// Bytes queued in both proxy sockets before the splice starts are forwarded first and
/// in order; bytes the proxy itself read before (an --accept-proxy header) are not.
fn bytes_before_splice_come_first_in_order(engine: Engine) {
    let bed = Bed::new();
    const HEADER: usize = 16;
    let up = stream(3, 4 * MIB);
    let down = stream(4, 4 * MIB);
    let (got_up, got_down, stats) = bed.run(60, async {
        let mut s = sockets().await;
        // The client sends a "header" and 1 MiB, the server a 256 KiB greeting, before
        // the proxy splices. The proxy reads only the header.
        s.client.write_all(&up[..HEADER + MIB]).await.unwrap();
        s.server.write_all(&down[..256 * 1024]).await.unwrap();
        let header = read_exact_n(&mut s.front, HEADER).await;
        assert_eq!(header, up[..HEADER]);
        // Let everything land in the proxy's receive queues.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let proxy = start(s.front, s.back, engine, &bed.maps, IDLE);
        let (mut cr, mut cw) = s.client.into_split();
        let (mut sr, mut sw) = s.server.into_split();
        let (up2, down2) = (up.clone(), down.clone());
        let cwt = tokio::spawn(async move {
            cw.write_all(&up2[HEADER + MIB..]).await.unwrap();
            cw.shutdown().await.unwrap();
            cw
        });
        let swt = tokio::spawn(async move {
            sw.write_all(&down2[256 * 1024..]).await.unwrap();
            sw.shutdown().await.unwrap();
            sw
        });
        let mut got_up = Vec::new();
        sr.read_to_end(&mut got_up).await.unwrap();
        let mut got_down = Vec::new();
        cr.read_to_end(&mut got_down).await.unwrap();
        let (_cw, _sw) = (cwt.await.unwrap(), swt.await.unwrap());
        (got_up, got_down, finished(proxy).await)
    });
    assert_same("client → server", &got_up, &up[HEADER..]);
    assert_same("server → client", &got_down, &down);
    assert_eq!(stats.ended, End::ClosedBoth);
    assert_eq!(stats.bytes_in, (up.len() - HEADER) as u64);
    assert_eq!(stats.bytes_out, down.len() as u64);
}

/// The client has sent everything and its FIN before the splice starts.
fn eof_before_splice(engine: Engine) {
    let bed = Bed::new();
    let up = stream(5, 300_000);
    let down = stream(6, 2 * MIB);
    let (got_up, got_down, stats) = bed.run(60, async {
        let mut s = sockets().await;
        s.client.write_all(&up).await.unwrap();
        s.client.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let proxy = start(s.front, s.back, engine, &bed.maps, IDLE);
        let (got_up, _) = read_until_end(&mut s.server).await;
        s.server.write_all(&down).await.unwrap();
        s.server.shutdown().await.unwrap();
        let (got_down, err) = read_until_end(&mut s.client).await;
        assert_eq!(err, None);
        (got_up, got_down, finished(proxy).await)
    });
    assert_same("client → server", &got_up, &up);
    assert_same("server → client", &got_down, &down);
    assert_eq!(stats.ended, End::ClosedBoth);
    assert_eq!(stats.engine, engine);
}

/// The peer retransmits bytes the proxy already received together with new ones, in one
/// segment that starts before the proxy's `rcv_nxt` (a spurious retransmission that GRO
/// merged with new segments does exactly this; seen in a 1 GiB download under CPU
/// contention). TCP queues such a segment whole and the sockmap verdict gets it whole:
/// the overlap must not be forwarded a second time.
fn retransmission_over_received_bytes_goes_out_once(engine: Engine) {
    let bed = Bed::new();
    let tap = Tap::new("lbtap0", TAP_MAC, TAP_ADDR, PEER_ADDR, PEER_MAC).expect("TAP device");
    let data = stream(11, 9000);
    let (got, stats) = bed.run(30, async {
        let front_listener = TcpListener::bind((TAP_ADDR, 0)).await.unwrap();
        let port = front_listener.local_addr().unwrap().port();
        let peer = TapPeer::connect(tap, port);
        let (front, _) = front_listener.accept().await.unwrap();
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpStream::connect(backend.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = backend.accept().await.unwrap();
        let proxy = start(front, back, engine, &bed.maps, IDLE);
        // Time for the sockmap engine to hand the quiet client side to the kernel.
        tokio::time::sleep(Duration::from_millis(200)).await;
        peer.send(0, flags::ACK | flags::PSH, &data[..8000]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // 5000 bytes again (more than one cut of at most 4095), then 1000 new ones.
        peer.send(3000, flags::ACK | flags::PSH, &data[3000..]);
        peer.send(9000, flags::ACK | flags::FIN, &[]);
        let (got, err) = read_until_end(&mut server).await;
        assert_eq!(err, None);
        server.shutdown().await.unwrap();
        (got, finished(proxy).await)
    });
    assert_same("client → server", &got, &data);
    assert_eq!(stats.ended, End::ClosedBoth);
    assert_eq!(stats.engine, engine);
    assert_eq!(stats.bytes_in, data.len() as u64);
}

const TAP_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 1);
const TAP_MAC: [u8; 6] = [0x02, 0, 0, 0, 9, 1];
const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 2);
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 9, 2];
const PEER_PORT: u16 = 40000;
const PEER_ISN: u32 = 1_000_000;

/// A TCP client played segment by segment through a TAP device, so it can send what no
/// socket would on demand. It never acknowledges what the proxy sends it.
struct TapPeer {
    tap: Tap,
    port: u16,
    /// The proxy's next sequence number (what we acknowledge).
    ack: u32,
}

impl TapPeer {
    /// The three-way handshake with a listener on TAP_ADDR:`port`.
    fn connect(tap: Tap, port: u16) -> TapPeer {
        let mut peer = TapPeer { tap, port, ack: 0 };
        peer.send_raw(PEER_ISN, flags::SYN, &[]);
        let syn_ack = peer
            .tap
            .recv_matching(Duration::from_secs(5), |f| {
                decode(f).is_ok_and(|p| {
                    p.sport == port
                        && p.dport == PEER_PORT
                        && p.flags & (flags::SYN | flags::ACK) == flags::SYN | flags::ACK
                })
            })
            .expect("read the TAP device")
            .expect("a SYN-ACK from the listener");
        peer.ack = decode(&syn_ack).unwrap().seq.wrapping_add(1);
        peer.send(0, flags::ACK, &[]);
        peer
    }

    /// Sends `payload` at stream offset `offset` (0 = the first data byte).
    fn send(&self, offset: u32, tcp_flags: u8, payload: &[u8]) {
        self.send_raw(
            PEER_ISN.wrapping_add(1).wrapping_add(offset),
            tcp_flags,
            payload,
        );
    }

    fn send_raw(&self, seq: u32, tcp_flags: u8, payload: &[u8]) {
        let mut p = Packet::tcp(
            PEER_ADDR.into(),
            PEER_PORT,
            TAP_ADDR.into(),
            self.port,
            tcp_flags,
        );
        p.eth_src = PEER_MAC;
        p.eth_dst = self.tap.mac;
        p.seq = seq;
        p.ack = self.ack;
        p.payload = payload.to_vec();
        self.tap.send(&p.build()).expect("write to the TAP device");
    }
}

/// Which end shuts down its write side first.
#[derive(Clone, Copy)]
enum First {
    Client,
    Server,
}

/// The client shuts down its write side; the server sees EOF, then still sends a reply
/// the client receives, then closes.
fn half_close_client_first(engine: Engine) {
    half_close(engine, First::Client);
}

/// The server shuts down its write side first (server-first protocol with a goodbye);
/// the client still sends, then closes.
fn half_close_backend_first(engine: Engine) {
    half_close(engine, First::Server);
}

/// One end sends and shuts down; the other sees all of it and EOF, then still sends its
/// own data, which arrives whole, then closes.
fn half_close(engine: Engine, first: First) {
    let bed = Bed::new();
    let (first_data, second_data) = match first {
        First::Client => (stream(7, MIB), stream(8, 3 * MIB)),
        First::Server => (stream(9, MIB), stream(10, 3 * MIB)),
    };
    let (got_first, got_second, stats) = bed.run(60, async {
        let (client, server, proxy) = proxied(engine, &bed.maps, IDLE).await;
        let (mut closer, mut other) = match first {
            First::Client => (client, server),
            First::Server => (server, client),
        };
        closer.write_all(&first_data).await.unwrap();
        closer.shutdown().await.unwrap();
        // The other end gets the data and EOF before it sends anything.
        let (got_first, err) = read_until_end(&mut other).await;
        assert_eq!(err, None, "the other end's read ends with EOF");
        write_then_fin_in_last_segment(&mut other, &second_data).await;
        let (got_second, err) = read_until_end(&mut closer).await;
        assert_eq!(err, None, "the first closer's read ends with EOF");
        (got_first, got_second, finished(proxy).await)
    });
    assert_same("before the first FIN", &got_first, &first_data);
    assert_same("after the first FIN", &got_second, &second_data);
    assert_eq!(stats.ended, End::ClosedBoth);
}

fn client_reset_resets_backend(engine: Engine) {
    let stats = reset_reaches_the_other_end(engine, First::Client);
    assert_eq!(stats.ended, End::ResetByClient);
    assert_eq!((stats.bytes_in, stats.bytes_out), (5, 5));
}

fn backend_reset_resets_client(engine: Engine) {
    let stats = reset_reaches_the_other_end(engine, First::Server);
    assert_eq!(stats.ended, End::ResetByBackend);
    assert_eq!((stats.bytes_in, stats.bytes_out), (5, 5));
}

/// A proxied connection that has carried a ping one way and a pong back:
/// (client, server, proxy).
async fn ping_pong(engine: Engine, maps: &Arc<SpliceMaps>) -> (TcpStream, TcpStream, Proxy) {
    let (mut client, mut server, proxy) = proxied(engine, maps, IDLE).await;
    client.write_all(b"ping!").await.unwrap();
    assert_eq!(read_exact_n(&mut server, 5).await, b"ping!");
    server.write_all(b"pong!").await.unwrap();
    assert_eq!(read_exact_n(&mut client, 5).await, b"pong!");
    (client, server, proxy)
}

/// After a ping and a pong, `first` closes with a RST (linger 0): the other end's read
/// fails with a reset, and the splice ends.
fn reset_reaches_the_other_end(engine: Engine, first: First) -> SpliceStats {
    let bed = Bed::new();
    bed.run(30, async {
        let (client, server, proxy) = ping_pong(engine, &bed.maps).await;
        let (resetter, mut other) = match first {
            First::Client => (client, server),
            First::Server => (server, client),
        };
        set_rst_on_close(&resetter);
        drop(resetter);
        let (_, err) = read_until_end(&mut other).await;
        assert_eq!(
            err,
            Some(std::io::ErrorKind::ConnectionReset),
            "the other end sees the reset"
        );
        finished(proxy).await
    })
}

/// Traffic keeps the connection alive; silence for the idle timeout resets both sides.
fn idle_timeout(engine: Engine) {
    let bed = Bed::new();
    let idle = Duration::from_millis(400);
    let (stats, quiet_for) = bed.run(30, async {
        let (mut client, mut server, proxy) = proxied(engine, &bed.maps, idle).await;
        // A byte every 150 ms for 1.2 s: longer than the timeout in total, never idle.
        for _ in 0..8 {
            client.write_all(b"x").await.unwrap();
            assert_eq!(read_exact_n(&mut server, 1).await, b"x");
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert!(!proxy.is_finished(), "timed out while traffic flowed");
        }
        let quiet = Instant::now();
        let (_, err) = read_until_end(&mut client).await;
        let quiet_for = quiet.elapsed();
        assert_eq!(err, Some(std::io::ErrorKind::ConnectionReset));
        let (_, err) = read_until_end(&mut server).await;
        assert_eq!(err, Some(std::io::ErrorKind::ConnectionReset));
        (finished(proxy).await, quiet_for)
    });
    assert_eq!(stats.ended, End::IdleTimeout);
    assert_eq!(stats.bytes_in, 8);
    // The last byte moved up to 150 ms before `quiet` started.
    assert!(
        quiet_for >= idle - Duration::from_millis(160) && quiet_for < idle * 3,
        "reset after {quiet_for:?} of silence (timeout {idle:?})"
    );
}

/// A splice whose task is aborted mid-connection (what a drain timeout or a shutdown
/// deadline does) resets both ends: each one's read fails with a reset at once, rather
/// than ending in a FIN as if the other side had finished.
fn aborted_splice_resets_both_ends(engine: Engine) {
    let bed = Bed::new();
    bed.run(30, async {
        let (mut client, mut server, proxy) = ping_pong(engine, &bed.maps).await;
        proxy.abort();
        assert!(
            proxy.await.unwrap_err().is_cancelled(),
            "the splice was still running when aborted"
        );
        for (who, end) in [("client", &mut client), ("server", &mut server)] {
            let (rest, err) = read_until_end(end).await;
            assert!(rest.is_empty(), "{who} got {} more bytes", rest.len());
            assert_eq!(
                err,
                Some(std::io::ErrorKind::ConnectionReset),
                "the {who} sees a reset"
            );
        }
    });
}

/// Memory figures: MemAvailable and the TCP socket memory from /proc/net/sockstat.
fn memory() -> (i64, i64) {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    let avail_kib: i64 = m
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    let tcp_pages: i64 = s
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    (avail_kib / 1024, tcp_pages * 4096 / MIB as i64)
}

/// A sender as fast as it can go and a receiver reading 64 KiB every 10 ms (≈6 MB/s)
/// for 3 s: how much does the path hold? The pipe engine is bounded by the socket
/// buffers and the pipe; the sockmap engine is not (printed, not asserted). All bytes
/// still arrive intact once the receiver drains.
fn slow_receiver_memory(engine: Engine) {
    let bed = Bed::new();
    let chunk = stream(11, MIB);
    let (max_in_flight, report) = bed.run(60, async {
        let (client, mut server, proxy) = proxied(engine, &bed.maps, IDLE).await;
        let (mem0, tcp0) = memory();
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (sent, stop, chunk) = (sent.clone(), stop.clone(), chunk.clone());
            tokio::spawn(async move {
                let mut client = client;
                while !stop.load(Ordering::Relaxed) {
                    let n = client.write(&chunk).await.expect("client write");
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                client.shutdown().await.unwrap();
                client
            })
        };
        let mut received = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut report = String::new();
        let mut max_in_flight = 0u64;
        let t0 = Instant::now();
        let mut next_sample = Duration::from_millis(500);
        while t0.elapsed() < Duration::from_secs(3) {
            let n = server.read(&mut buf).await.unwrap();
            received += n as u64;
            tokio::time::sleep(Duration::from_millis(10)).await;
            if t0.elapsed() >= next_sample {
                next_sample += Duration::from_millis(500);
                let (mem, tcp) = memory();
                let in_flight = sent.load(Ordering::Relaxed) - received;
                max_in_flight = max_in_flight.max(in_flight);
                report += &format!(
                    "  t={:.1}s sent {} MiB received {} MiB in flight {} MiB; MemAvailable {:+} MiB; TCP mem {:+} MiB\n",
                    t0.elapsed().as_secs_f64(),
                    sent.load(Ordering::Relaxed) >> 20,
                    received >> 20,
                    in_flight >> 20,
                    mem - mem0,
                    tcp - tcp0,
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        // Drain at full speed and check every byte (the sender repeats `chunk`, and
        // every write of a partial chunk restarts it, so check the total only).
        let (rest, err) = read_until_end(&mut server).await;
        assert_eq!(err, None);
        received += rest.len() as u64;
        let client = writer.await.unwrap();
        assert_eq!(received, sent.load(Ordering::Relaxed), "every byte arrives");
        drop(client);
        drop(server);
        let stats = finished(proxy).await;
        assert_eq!(stats.bytes_in, received);
        (max_in_flight, report)
    });
    println!("{engine:?} engine, fast sender → receiver at ≈6 MB/s:\n{report}");
    if engine == Engine::Pipe {
        assert!(
            max_in_flight < 128 * MIB as u64,
            "pipe engine held {} MiB",
            max_in_flight >> 20
        );
    }
}

// ---------------------------------------------------------------------------------------
// Engine-specific

/// Without maps the sockmap engine is refused (and both sockets are reset).
#[test]
fn sockmap_without_maps_is_an_error() {
    let bed = Bed::new();
    bed.run(10, async {
        let s = sockets().await;
        let r = splice(s.front, s.back, Engine::Sockmap, None, IDLE).await;
        assert!(matches!(r, Err(SpliceError::NoMaps)), "{r:?}");
    });
}

// ---------------------------------------------------------------------------------------
// lb_lookup

/// With `lb_lookup` attached to the namespace, connections to VIP:443 (v4 and v6, no
/// address configured, only a local route) land on listeners bound to loopback port 0,
/// and the accepted socket's local address is the VIP; other ports are untouched.
#[test]
fn lookup_steers_vip_to_listener() {
    let bed = Bed::new();
    let ns = &bed._ns;
    ns.ip("route add local 198.18.200.1/32 dev lo table local")
        .unwrap();
    ns.ip("-6 route add local fd00:200::1/128 dev lo table local")
        .unwrap();
    let object = lb_user::dataplane::object::require().unwrap();
    let mut ebpf = EbpfLoader::new().load(object).expect("load eBPF object");
    let prog: &mut SkLookup = ebpf
        .program_mut(names::PROG_LOOKUP)
        .expect("lb_lookup in object")
        .try_into()
        .expect("lb_lookup is sk_lookup");
    prog.load().expect("lb_lookup passes the verifier");
    prog.attach(std::fs::File::open(ns.path()).expect("namespace file"))
        .expect("attach lb_lookup to the netns");
    let mut vips: HashMap<MapData, VipKey, u32> = ebpf
        .take_map(names::PROXY_VIPS)
        .unwrap()
        .try_into()
        .unwrap();
    let mut listeners: SockMap<MapData> = ebpf
        .take_map(names::PROXY_LISTENERS)
        .unwrap()
        .try_into()
        .unwrap();
    let vip4: SocketAddr = "198.18.200.1:443".parse().unwrap();
    let vip6: SocketAddr = "[fd00:200::1]:443".parse().unwrap();
    bed.run(30, async {
        let l4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l6 = TcpListener::bind("[::1]:0").await.unwrap();
        listeners.set(0, &l4, 0).expect("listener 0");
        listeners.set(1, &l6, 0).expect("listener 1");
        for (vip, index) in [(vip4, 0u32), (vip6, 1)] {
            vips.insert(VipKey::from_socket_addr(vip), index, 0)
                .unwrap();
        }
        for (vip, listener) in [(vip4, &l4), (vip6, &l6)] {
            let mut client = TcpStream::connect(vip)
                .await
                .unwrap_or_else(|e| panic!("connect {vip}: {e}"));
            let (mut accepted, peer) = listener.accept().await.unwrap();
            assert_eq!(accepted.local_addr().unwrap(), vip, "accepted for the VIP");
            assert_eq!(peer, client.local_addr().unwrap());
            client.write_all(b"hi").await.unwrap();
            assert_eq!(read_exact_n(&mut accepted, 2).await, b"hi");
        }
        // A port without an entry gets the regular lookup: nobody listens there.
        for vip in [vip4, vip6] {
            let other = SocketAddr::new(vip.ip(), 444);
            let e = TcpStream::connect(other).await.expect_err("nobody listens");
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{other}");
        }
        // Nor is the listener's own address affected.
        let direct = TcpStream::connect(l4.local_addr().unwrap()).await.unwrap();
        let (_a, peer) = l4.accept().await.unwrap();
        assert_eq!(peer, direct.local_addr().unwrap());
    });
}

// ---------------------------------------------------------------------------------------
// Throughput

/// Busy and total jiffies of all CPUs (/proc/stat), and this process's CPU time.
fn cpu() -> (u64, u64, Duration) {
    let s = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    let total: u64 = f.iter().sum();
    let idle = f[3] + f[4];
    // SAFETY: rusage is plain integers, for which all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (total - idle, total, tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// Moves `len` bytes one way over a fresh connection (direct, or through the proxy with
/// `engine`) and returns (MB/s, process CPU seconds, all-CPU busy seconds).
async fn one_way(
    engine: Option<Engine>,
    maps: &Arc<SpliceMaps>,
    len: usize,
    upload: bool,
) -> (f64, f64, f64) {
    let (client, server, proxy) = match engine {
        Some(engine) => {
            let (c, s, p) = proxied(engine, maps, IDLE).await;
            (c, s, Some(p))
        }
        None => {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            (c, s, None)
        }
    };
    let (mut tx, mut rx) = if upload {
        (client, server)
    } else {
        (server, client)
    };
    let hz = 100.0; // USER_HZ
    let (busy0, _, proc0) = cpu();
    let t0 = Instant::now();
    let writer = tokio::spawn(async move {
        let buf = vec![0x5au8; 4 * MIB];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            tx.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        tx.shutdown().await.unwrap();
        tx
    });
    let mut buf = vec![0u8; 4 * MIB];
    let mut got = 0usize;
    loop {
        let n = rx.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    let (busy1, _, proc1) = cpu();
    assert_eq!(got, len);
    let tx = writer.await.unwrap();
    drop(tx);
    drop(rx);
    if let Some(p) = proxy {
        finished(p).await;
    }
    (
        len as f64 / secs / 1e6,
        (proc1 - proc0).as_secs_f64(),
        (busy1 - busy0) as f64 / hz,
    )
}

/// 1 GiB one way, each direction, directly and through each engine. Prints MB/s, the
/// process's CPU time (client + server + proxy, excluding kernel work done in softirq
/// or workqueue context) and the busy time of all CPUs (everything), as the median of
/// `LB_BENCH_ROUNDS` runs (default 1; loopback figures on a small VM vary a lot).
#[test]
fn throughput_1gib() {
    let bed = Bed::new();
    let len = 1 << 30;
    let rounds: usize = std::env::var("LB_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut lines = String::new();
    bed.run(300 * rounds as u64, async {
        for (name, engine) in [
            ("direct (no proxy)", None),
            ("pipe", Some(Engine::Pipe)),
            ("sockmap", Some(Engine::Sockmap)),
        ] {
            for upload in [true, false] {
                let mut runs = Vec::new();
                for _ in 0..rounds {
                    runs.push(one_way(engine, &bed.maps, len, upload).await);
                }
                runs.sort_by(|a, b| a.0.total_cmp(&b.0));
                let (mbs, proc_cpu, all_cpu) = runs[runs.len() / 2];
                let spread = if rounds > 1 {
                    format!(" (runs {:.0}..{:.0})", runs[0].0, runs[runs.len() - 1].0)
                } else {
                    String::new()
                };
                lines += &format!(
                    "  {name:18} {:8}: {mbs:6.0} MB/s{spread}, process CPU {proc_cpu:5.2} s, all CPUs busy {all_cpu:5.2} s\n",
                    if upload { "upload" } else { "download" },
                );
            }
        }
    });
    println!("1 GiB over loopback, one stream, median of {rounds}:\n{lines}");
}

/// Sends a parked connection through a Unix socket the way an upgrade does (the state as
/// JSON, the descriptors with SCM_RIGHTS) and takes it back on the other end: what the
/// new daemon gets.
fn through_unix_socket(parked: Parked) -> Parked {
    use std::os::fd::AsFd;
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let (state, fds) = parked.into_parts();
    let json = serde_json::to_vec(&state).unwrap();
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    lb_user::sys::send_with_fds(a.as_fd(), &json, &borrowed).unwrap();
    // The old daemon closes its descriptors; the connection lives on in the new one's.
    drop(fds);
    let mut buf = vec![0u8; 4096];
    let (n, got) = lb_user::sys::recv_with_fds(b.as_fd(), &mut buf).unwrap();
    let state: ParkedState = serde_json::from_slice(&buf[..n]).unwrap();
    Parked::from_parts(state, got).unwrap()
}

/// An upgrade parks a busy connection (both directions mid-transfer, pipes holding
/// bytes, a sockmap pair redirecting in the kernel) and the next daemon resumes it from
/// what was handed over, five times over: every byte arrives once and in order, and the
/// byte counts and engine carry across.
fn parked_mid_transfer_resumes_with_every_byte_once(engine: Engine) {
    let bed = Bed::new();
    let up = stream(11, 64 * MIB);
    let down = stream(12, 64 * MIB);
    let (got_up, got_down, stats, parks) = bed.run(120, async {
        let s = sockets().await;
        let c = tokio::spawn(exchange(s.client, up.clone()));
        let srv = tokio::spawn(exchange(s.server, down.clone()));
        let maps = bed.maps.clone();
        let (mut tx, rx) = tokio::sync::watch::channel(false);
        let mut run = {
            let maps = maps.clone();
            tokio::spawn(async move {
                splice_parkable(s.front, s.back, engine, Some(&maps), IDLE, rx).await
            })
        };
        let mut parks = 0;
        let stats = loop {
            if parks < 5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tx.send_replace(true);
            }
            match run.await.unwrap().expect("splice") {
                Outcome::Ended(stats) => break stats,
                Outcome::Parked(p) => {
                    parks += 1;
                    let p = through_unix_socket(p);
                    let (next_tx, next_rx) = tokio::sync::watch::channel(false);
                    tx = next_tx;
                    let maps = maps.clone();
                    run = tokio::spawn(async move { resume(p, Some(&maps), IDLE, next_rx).await });
                }
            }
        };
        let got_down = c.await.unwrap();
        let got_up = srv.await.unwrap();
        (got_up, got_down, stats, parks)
    });
    assert!(
        parks >= 3,
        "parked only {parks} times before the transfer ended"
    );
    assert_same("client → server", &got_up, &up);
    assert_same("server → client", &got_down, &down);
    assert_eq!(stats.ended, End::ClosedBoth);
    assert_eq!(stats.engine, engine);
    assert_eq!(stats.bytes_in, up.len() as u64);
    assert_eq!(stats.bytes_out, down.len() as u64);
}
