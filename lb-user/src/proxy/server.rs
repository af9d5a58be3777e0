//! The proxy path of `proxy-v2` services: accept a client connection that the sk_lookup
//! program steered to the daemon's listener, pick its backend with the service's Maglev
//! table, connect (trying the next backends in Maglev order on failure), write the PROXY
//! header before any client byte, then hand both sockets to the splice engine, which
//! moves the bytes without copying them through userspace.

use super::codec::header::{self, Tlv, canonical};
use super::codec::parse::{self, Parsed};
use super::codec::tls::{self, Peek};
use super::splice::park::Parked;
use super::splice::{self, Engine, Outcome, SpliceError, SpliceMaps};
use super::table::{ProxyTable, Target};
use crate::config::{ProxyConfig, ProxyVersion};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, timeout};
use tracing::{debug, info, warn};

/// Backends tried per connection before the client is reset.
pub const MAX_ATTEMPTS: usize = 3;
/// How long a client may take to send its PROXY header (`--accept-proxy`).
const ACCEPT_PROXY_TIMEOUT: Duration = Duration::from_secs(5);
/// With the AUTHORITY or ALPN TLV on, how long after the accept the header may wait for
/// the client's first byte when the backend connect was quicker. A TLS client sends its
/// ClientHello right behind its handshake ACK, so it is there within this time; a
/// server-first protocol (the client waits for a greeting) is delayed by at most this,
/// and only on services that ask for these TLVs.
pub const FIRST_BYTE_WAIT: Duration = Duration::from_millis(100);
/// Once a TLS ClientHello has started to arrive, how much longer the header may wait
/// for the rest of it (a TLS client speaks first, so this never delays a server-first
/// protocol).
const HELLO_GRACE: Duration = Duration::from_millis(200);

/// Proxy settings shared by every service.
#[derive(Clone, Debug)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub engine: Engine,
}

/// Counters of one backend of a proxy service.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct BackendCounters {
    pub connections: u64,
    pub active: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Counters of a proxy service.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ServiceCounters {
    pub connections: u64,
    pub active: u64,
    /// Failed or refused connections by reason.
    pub errors: BTreeMap<String, u64>,
    pub backends: BTreeMap<SocketAddr, BackendCounters>,
}

/// A proxy service as the accept path sees it.
pub struct ServiceRt {
    pub name: String,
    pub vip: SocketAddr,
    pub proxy: ProxyConfig,
    table: RwLock<Arc<ProxyTable>>,
    counters: Mutex<ServiceCounters>,
    /// Connection tasks per backend, so a drain that times out can cut them.
    tasks: Mutex<HashMap<SocketAddr, HashMap<u64, tokio::task::AbortHandle>>>,
}

impl ServiceRt {
    pub fn new(name: String, vip: SocketAddr, proxy: ProxyConfig) -> Self {
        ServiceRt {
            name,
            vip,
            proxy,
            table: RwLock::new(Arc::new(ProxyTable::default())),
            counters: Mutex::new(ServiceCounters::default()),
            tasks: Mutex::new(HashMap::new()),
        }
    }

    /// Switches to a new table; connections already proxied keep their backend.
    pub fn set_table(&self, t: ProxyTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
    }

    pub fn counters(&self) -> ServiceCounters {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Active connections to `backend`.
    pub fn active(&self, backend: SocketAddr) -> u64 {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .backends
            .get(&backend)
            .map(|b| b.active)
            .unwrap_or(0)
    }

    /// Cuts every connection to `backend` (a drain that timed out, a removal).
    pub fn cut(&self, backend: SocketAddr) -> usize {
        let tasks = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&backend)
            .unwrap_or_default();
        for t in tasks.values() {
            t.abort();
        }
        tasks.len()
    }

    /// Cuts every connection of the service (a shutdown deadline).
    pub fn cut_all(&self) -> usize {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let mut n = 0;
        for t in tasks.values().flat_map(|m| m.values()) {
            t.abort();
            n += 1;
        }
        n
    }

    fn error(&self, reason: &str) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *c.errors.entry(reason.to_string()).or_default() += 1;
    }

    fn with<R>(&self, f: impl FnOnce(&mut ServiceCounters) -> R) -> R {
        f(&mut self.counters.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// State shared by the listeners and the connection tasks.
pub struct Proxy {
    services: RwLock<HashMap<SocketAddr, Arc<ServiceRt>>>,
    settings: RwLock<Settings>,
    maps: Option<Arc<SpliceMaps>>,
    slots: Arc<Semaphore>,
    max_conns: u32,
    /// Random per daemon, so unique ids differ across restarts and LB hosts.
    id_prefix: u64,
    next_id: AtomicU64,
    /// Set for an upgrade: every splice parks (see `splice::park`).
    park: watch::Sender<bool>,
    /// The parked connections, for the successor.
    parked: Mutex<Vec<Parked>>,
}

impl Proxy {
    pub fn new(settings: Settings, maps: Option<Arc<SpliceMaps>>, max_conns: u32) -> Self {
        Proxy {
            services: RwLock::new(HashMap::new()),
            settings: RwLock::new(settings),
            maps,
            slots: Arc::new(Semaphore::new(max_conns as usize)),
            max_conns,
            id_prefix: random_u64(),
            next_id: AtomicU64::new(1),
            park: watch::channel(false).0,
            parked: Mutex::new(Vec::new()),
        }
    }

    /// Parks every proxied connection for a successor (an upgrade) and returns them,
    /// once none is left running. Connections still connecting to their backend park as
    /// soon as their splice starts. The accept loops must be stopped first.
    pub async fn park_all(&self) -> Vec<Parked> {
        self.park.send_replace(true);
        while self.in_use() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::mem::take(&mut *self.parked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Every service's counters, by VIP, for a successor to carry on.
    pub fn counters_by_vip(&self) -> Vec<(SocketAddr, ServiceCounters)> {
        let services = self.services.read().unwrap_or_else(|e| e.into_inner());
        services
            .iter()
            .map(|(vip, s)| (*vip, s.counters()))
            .collect()
    }

    /// Adds a predecessor's totals to the service at `vip` (not its active count: the
    /// connections it handed over count themselves here).
    pub fn carry_counters(&self, vip: SocketAddr, theirs: &ServiceCounters) {
        let Some(svc) = self.service(vip) else {
            return;
        };
        svc.with(|c| {
            c.connections += theirs.connections;
            for (reason, n) in &theirs.errors {
                *c.errors.entry(reason.clone()).or_default() += n;
            }
            for (addr, b) in &theirs.backends {
                let mine = c.backends.entry(*addr).or_default();
                mine.connections += b.connections;
                mine.bytes_in += b.bytes_in;
                mine.bytes_out += b.bytes_out;
            }
        });
    }

    /// Takes over a connection a predecessor parked: it goes on in this daemon, counted
    /// with its service and backend. One whose service this daemon does not run is reset.
    pub fn adopt(self: &Arc<Self>, parked: Parked) {
        let (vip, backend) = match (parked.client.local_addr(), parked.backend.peer_addr()) {
            (Ok(v), Ok(b)) => (canonical(v), canonical(b)),
            _ => return,
        };
        let Some(svc) = self.service(vip) else {
            warn!(vip = %vip, backend = %backend, "a handed-over connection's service is not configured here: reset");
            reset_std(parked.client);
            reset_std(parked.backend);
            return;
        };
        // Over --max-conns (a smaller limit than the predecessor's) it still goes on:
        // cutting it is what a hand-over must not do.
        let permit = self.slots.clone().try_acquire_owned().ok();
        let settings = self
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let maps = self.maps.clone();
        let park = self.park.subscribe();
        let me = self.clone();
        tokio::spawn(async move {
            let work = async move {
                splice::resume(parked, maps.as_deref(), settings.idle_timeout, park).await
            };
            me.track(&svc, backend, work).await;
            drop(permit);
        });
    }

    pub fn register(&self, svc: Arc<ServiceRt>) {
        self.services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(svc.vip, svc);
    }

    pub fn unregister(&self, vip: SocketAddr) -> Option<Arc<ServiceRt>> {
        self.services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&vip)
    }

    pub fn service(&self, vip: SocketAddr) -> Option<Arc<ServiceRt>> {
        self.services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&vip)
            .cloned()
    }

    /// Cuts every proxied connection (a shutdown deadline); returns how many.
    pub fn cut_all(&self) -> usize {
        let services = self.services.read().unwrap_or_else(|e| e.into_inner());
        services.values().map(|s| s.cut_all()).sum()
    }

    /// Applies reloaded timeouts to connections accepted from now on.
    pub fn update_timeouts(&self, connect: Duration, idle: Duration) {
        let mut s = self.settings.write().unwrap_or_else(|e| e.into_inner());
        s.connect_timeout = connect;
        s.idle_timeout = idle;
    }

    /// Connections proxied now.
    pub fn in_use(&self) -> u64 {
        self.max_conns as u64 - self.slots.available_permits() as u64
    }

    /// Accepts connections on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        // Linux copies a listener's TCP_NODELAY into each connection it accepts: set
        // once here (on a listener handed over by an older daemon too), it saves a
        // system call per connection.
        let nodelay_inherited = socket2::SockRef::from(&listener).set_nodelay(true).is_ok();
        loop {
            let (client, peer) =
                crate::net::accept(&listener, "proxy", Duration::from_millis(50)).await;
            let vip = match client.local_addr() {
                Ok(a) => canonical(a),
                Err(_) => continue,
            };
            let Some(svc) = self.service(vip) else {
                // A service removed a moment ago: its clients are reset.
                reset(client);
                continue;
            };
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                svc.error("max_conns");
                warn!(service = %svc.name, max_conns = self.max_conns, "connection limit reached: reset");
                reset(client);
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                if !nodelay_inherited {
                    let _ = client.set_nodelay(true);
                }
                me.handle(svc, client, canonical(peer), vip).await;
                drop(permit);
            });
        }
    }

    async fn handle(
        &self,
        svc: Arc<ServiceRt>,
        mut client: TcpStream,
        peer: SocketAddr,
        vip: SocketAddr,
    ) {
        svc.with(|c| c.connections += 1);
        let (src, dst) = if svc.proxy.accept_proxy {
            match read_proxy_header(&mut client).await {
                Ok(Some(addrs)) => addrs,
                Ok(None) => (peer, vip),
                Err(reason) => {
                    svc.error(&format!("accept_proxy_{reason}"));
                    warn!(service = %svc.name, client = %peer, reason, "bad PROXY header from the client: reset");
                    reset(client);
                    return;
                }
            }
        } else {
            (peer, vip)
        };
        let settings = self
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let table = svc.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        let candidates = table.candidates(src, vip, MAX_ATTEMPTS);
        if candidates.is_empty() {
            svc.error("no_backend");
            reset(client);
            return;
        }
        let want_hello = svc.proxy.tlvs.authority || svc.proxy.tlvs.alpn;
        let (connected, hello) = connect_peeking(
            &svc,
            &client,
            &candidates,
            settings.connect_timeout,
            want_hello,
        )
        .await;
        let Some((mut backend, target)) = connected else {
            warn!(service = %svc.name, client = %src, tried = candidates.len(), "no backend could be reached: reset");
            reset(client);
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let unique = unique_id(self.id_prefix, id);
        let hdr = match build_header(&svc.proxy, src, dst, &unique, hello.as_ref()) {
            Ok(h) => h,
            Err(e) => {
                svc.error("header");
                warn!(service = %svc.name, cause = %e, "cannot encode the PROXY header: reset");
                reset(client);
                reset(backend);
                return;
            }
        };
        if let Err(e) = write_header(&mut backend, &client, &hdr).await {
            svc.error("backend_write");
            warn!(service = %svc.name, backend = %target.addr, cause = %e, "writing the PROXY header: reset");
            reset(client);
            reset(backend);
            return;
        }
        if svc.proxy.tlvs.unique_id {
            info!(service = %svc.name, client = %src, backend = %target.addr, unique_id = %hex(&unique), "proxied connection");
        } else {
            debug!(service = %svc.name, client = %src, backend = %target.addr, "proxied connection");
        }
        let maps = self.maps.clone();
        let park = self.park.subscribe();
        let work = async move {
            splice::splice_parkable(
                client,
                backend,
                settings.engine,
                maps.as_deref(),
                settings.idle_timeout,
                park,
            )
            .await
        };
        svc.with(|c| c.backends.entry(target.addr).or_default().connections += 1);
        self.track(&svc, target.addr, work).await;
    }

    /// Runs a splice as its own task, so a drain timeout or shutdown can abort it,
    /// counted as active on its service and backend until it ends or is parked.
    async fn track(
        &self,
        svc: &Arc<ServiceRt>,
        backend: SocketAddr,
        work: impl Future<Output = Result<Outcome, SpliceError>> + Send + 'static,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        svc.with(|c| {
            c.active += 1;
            c.backends.entry(backend).or_default().active += 1;
        });
        let task = tokio::spawn(work);
        svc.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(backend)
            .or_default()
            .insert(id, task.abort_handle());
        let result = task.await;
        if let Some(m) = svc
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&backend)
        {
            m.remove(&id);
        }
        svc.with(|c| {
            c.active -= 1;
            let b = c.backends.entry(backend).or_default();
            b.active -= 1;
            if let Ok(Ok(Outcome::Ended(stats))) = &result {
                b.bytes_in += stats.bytes_in;
                b.bytes_out += stats.bytes_out;
            }
        });
        match result {
            Ok(Ok(Outcome::Ended(stats))) => {
                debug!(service = %svc.name, backend = %backend, bytes_in = stats.bytes_in, bytes_out = stats.bytes_out, ended = ?stats.ended, "connection ended")
            }
            Ok(Ok(Outcome::Parked(p))) => {
                debug!(service = %svc.name, backend = %backend, "connection parked for the successor");
                self.parked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(p);
            }
            Ok(Err(e)) => {
                svc.error("splice");
                warn!(service = %svc.name, backend = %backend, cause = %e, "connection failed");
            }
            Err(_) => {
                svc.error("cut");
                debug!(service = %svc.name, backend = %backend, "connection cut");
            }
        }
    }
}

/// What the client's first bytes said, for the AUTHORITY and ALPN TLVs.
#[derive(Clone, Debug, Default)]
struct Hello {
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
}

/// Connects to the first reachable candidate while, if `want_hello`, peeking at the
/// client's first bytes for a TLS ClientHello. The header never waits for client bytes
/// beyond the connect, except to finish a ClientHello that has begun to arrive.
async fn connect_peeking(
    svc: &ServiceRt,
    client: &TcpStream,
    candidates: &[Target],
    connect_timeout: Duration,
    want_hello: bool,
) -> (Option<(TcpStream, Target)>, Option<Hello>) {
    let first_byte_deadline = Instant::now() + FIRST_BYTE_WAIT;
    let connect = connect_any(svc, candidates, connect_timeout);
    tokio::pin!(connect);
    let mut peek = HelloPeek::new(want_hello);
    let connected = loop {
        tokio::select! {
            r = &mut connect => break r,
            _ = peek.step(client), if peek.pending() => {}
        }
    };
    if connected.is_some() {
        while peek.pending() && !peek.started() && Instant::now() < first_byte_deadline {
            let left = first_byte_deadline.saturating_duration_since(Instant::now());
            let _ = timeout(left, peek.step(client)).await;
        }
    }
    if connected.is_some() && peek.started() {
        let deadline = Instant::now() + HELLO_GRACE;
        while peek.pending() && Instant::now() < deadline {
            let _ = timeout(deadline - Instant::now(), peek.step(client)).await;
        }
    }
    (connected, peek.hello)
}

async fn connect_any(
    svc: &ServiceRt,
    candidates: &[Target],
    connect_timeout: Duration,
) -> Option<(TcpStream, Target)> {
    for t in candidates {
        let reason = match timeout(connect_timeout, connect(t.addr)).await {
            Ok(Ok(s)) => return Some((s, *t)),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => "connect_refused",
            Ok(Err(_)) => "connect_error",
            Err(_) => "connect_timeout",
        };
        svc.error(reason);
        warn!(service = %svc.name, backend = %t.addr, reason, "backend connect failed; trying the next backend");
    }
    None
}

/// Connects to a backend with TCP_NODELAY already set, and TCP_QUICKACK off so the
/// kernel holds the handshake's last ACK back and sends it with the PROXY header that
/// follows at once (one packet fewer per connection; HAProxy's `tcp-smart-connect`).
/// The kernel leaves that mode as the handshake completes, so later data is
/// acknowledged as usual.
async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    let s = socket2::SockRef::from(&sock);
    s.set_nodelay(true)?;
    let _ = s.set_quickack(false);
    sock.connect(addr).await
}

/// Writes the PROXY header to the backend. When the client's first bytes are already
/// queued, the header goes with MSG_MORE: the kernel holds it until the splice engine's
/// first splice appends those bytes, and both leave in one segment instead of two
/// (each acknowledged by the backend).
async fn write_header(backend: &mut TcpStream, client: &TcpStream, hdr: &[u8]) -> io::Result<()> {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit()];
    let more = matches!(socket2::SockRef::from(client).peek(&mut probe), Ok(n) if n > 0);
    let flags = if more { libc::MSG_MORE } else { 0 };
    let sent = loop {
        backend.writable().await?;
        match backend.try_io(Interest::WRITABLE, || {
            socket2::SockRef::from(&*backend).send_with_flags(hdr, flags)
        }) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    // A fresh socket's send buffer holds a header (at most a few hundred bytes) at once;
    // if not, the rest goes without MSG_MORE.
    backend.write_all(&hdr[sent..]).await
}

/// Incremental ClientHello peek: never consumes client bytes.
struct HelloPeek {
    want: bool,
    done: bool,
    seen: usize,
    buf: Vec<u8>,
    hello: Option<Hello>,
}

impl HelloPeek {
    fn new(want: bool) -> Self {
        HelloPeek {
            want,
            done: !want,
            seen: 0,
            buf: Vec::new(),
            hello: None,
        }
    }

    fn pending(&self) -> bool {
        self.want && !self.done
    }

    /// Whether client bytes have arrived (so it is a client-first protocol).
    fn started(&self) -> bool {
        self.seen > 0
    }

    async fn step(&mut self, client: &TcpStream) {
        if self.buf.is_empty() {
            self.buf = vec![0; tls::MAX_PEEK_LEN];
        }
        let n = match client.peek(&mut self.buf).await {
            Ok(0) | Err(_) => {
                self.done = true;
                return;
            }
            Ok(n) => n,
        };
        if n == self.seen {
            // No new bytes since the last look; peek would return at once again.
            tokio::time::sleep(Duration::from_millis(2)).await;
            return;
        }
        self.seen = n;
        match tls::peek_client_hello(&self.buf[..n]) {
            Peek::NeedMore { .. } if n < self.buf.len() => {}
            Peek::Hello { sni, alpn } => {
                self.hello = Some(Hello {
                    sni,
                    alpn: alpn.into_iter().next(),
                });
                self.done = true;
            }
            _ => self.done = true,
        }
    }
}

/// Reads a PROXY v1/v2 header from the client and consumes exactly its bytes. `None`
/// for a LOCAL (or address-less) header: use the connection's own endpoints.
async fn read_proxy_header(
    client: &mut TcpStream,
) -> Result<Option<(SocketAddr, SocketAddr)>, &'static str> {
    let deadline = Instant::now() + ACCEPT_PROXY_TIMEOUT;
    let mut buf = vec![0u8; 256];
    let mut seen = 0;
    loop {
        let n = match timeout(
            deadline.saturating_duration_since(Instant::now()),
            client.peek(&mut buf),
        )
        .await
        {
            Err(_) => return Err("timeout"),
            Ok(Err(_)) => return Err("read_error"),
            Ok(Ok(0)) => return Err("closed"),
            Ok(Ok(n)) => n,
        };
        match parse::parse(&buf[..n]) {
            Err(e) => return Err(e.reason()),
            Ok(Parsed::Complete(h)) => {
                let len = h.header_len;
                let addrs = match (h.src, h.dst) {
                    (Some(s), Some(d)) => Some((canonical(s), canonical(d))),
                    _ => None,
                };
                let mut sink = vec![0u8; len];
                // The bytes are already queued (peeked), so this does not block.
                client
                    .read_exact(&mut sink)
                    .await
                    .map_err(|_| "read_error")?;
                return Ok(addrs);
            }
            Ok(Parsed::Incomplete { need }) => {
                if need > buf.len() {
                    buf.resize(need.min(header::V2_MAX_LEN), 0);
                } else if n == seen {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                seen = n;
            }
        }
    }
}

fn build_header(
    p: &ProxyConfig,
    src: SocketAddr,
    dst: SocketAddr,
    unique: &[u8],
    hello: Option<&Hello>,
) -> Result<Vec<u8>, header::EncodeError> {
    if p.version == ProxyVersion::V1 {
        return Ok(header::encode_v1(src, dst).into_bytes());
    }
    let mut tlvs = Vec::new();
    if p.tlvs.unique_id {
        tlvs.push(Tlv::UniqueId(unique));
    }
    if let Some(h) = hello {
        if p.tlvs.authority
            && let Some(sni) = &h.sni
        {
            tlvs.push(Tlv::Authority(sni));
        }
        if p.tlvs.alpn
            && let Some(a) = &h.alpn
        {
            tlvs.push(Tlv::Alpn(a));
        }
    }
    if p.tlvs.crc32c {
        tlvs.push(Tlv::Crc32c);
    }
    header::encode_v2(src, dst, &tlvs)
}

/// 16 bytes: the daemon's random prefix, then the connection's sequence number.
fn unique_id(prefix: u64, id: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&prefix.to_be_bytes());
    out[8..].copy_from_slice(&id.to_be_bytes());
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    u64::from_ne_bytes(b) ^ std::process::id() as u64
}

/// Closes with a RST (SO_LINGER 0), as a refused or failed connection should end.
pub fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

fn reset_std(s: std::net::TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlvSet;

    #[test]
    fn header_has_the_enabled_tlvs_in_order() {
        let p = ProxyConfig {
            version: ProxyVersion::V2,
            tlvs: TlvSet {
                unique_id: true,
                crc32c: true,
                authority: true,
                alpn: true,
            },
            accept_proxy: false,
        };
        let hello = Hello {
            sni: Some("registry.example".into()),
            alpn: Some(b"h2".to_vec()),
        };
        let src: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let dst: SocketAddr = "198.18.100.1:443".parse().unwrap();
        let h = build_header(&p, src, dst, &unique_id(7, 9), Some(&hello)).unwrap();
        let Ok(Parsed::Complete(parsed)) = parse::parse(&h) else {
            panic!("our own header does not parse");
        };
        assert_eq!((parsed.src, parsed.dst), (Some(src), Some(dst)));
        assert_eq!(parsed.authority(), Some(&b"registry.example"[..]));
        assert_eq!(parsed.alpn(), Some(&b"h2"[..]));
        assert_eq!(parsed.unique_id(), Some(&unique_id(7, 9)[..]));
        assert!(parsed.crc32c().is_some());
        // Without a hello, no AUTHORITY or ALPN.
        let h = build_header(&p, src, dst, &unique_id(7, 9), None).unwrap();
        let Ok(Parsed::Complete(parsed)) = parse::parse(&h) else {
            panic!()
        };
        assert_eq!(parsed.authority(), None);
        let v1 = ProxyConfig {
            version: ProxyVersion::V1,
            ..p
        };
        assert_eq!(
            build_header(&v1, src, dst, &[], None).unwrap(),
            b"PROXY TCP4 198.18.0.2 198.18.100.1 40000 443\r\n"
        );
    }

    #[test]
    fn unique_ids_differ_per_connection() {
        assert_ne!(unique_id(1, 1), unique_id(1, 2));
        assert_ne!(unique_id(1, 1), unique_id(2, 1));
    }

    /// `serve` sets TCP_NODELAY on the listener only: the kernel must copy it into the
    /// connections it accepts (and leave it off where the listener has it off).
    #[tokio::test]
    async fn accepted_connections_inherit_the_listeners_nodelay() {
        for nodelay in [true, false] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            socket2::SockRef::from(&l).set_nodelay(nodelay).unwrap();
            let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (accepted, _) = l.accept().await.unwrap();
            assert_eq!(accepted.nodelay().unwrap(), nodelay);
        }
    }

    /// `serve` turns TCP_NODELAY on on the listener it is given (off, as a listener
    /// handed over by an older daemon may be), so its connections inherit it.
    #[tokio::test]
    async fn serve_sets_nodelay_on_its_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        socket2::SockRef::from(&listener)
            .set_nodelay(false)
            .unwrap();
        let probe = std::os::fd::AsFd::as_fd(&listener)
            .try_clone_to_owned()
            .unwrap();
        let (_proxy, _svc, vip) = proxy_on(listener, 4).await;
        let mut c = TcpStream::connect(vip).await.unwrap();
        echo_once(&mut c).await.unwrap();
        assert!(socket2::SockRef::from(&probe).nodelay().unwrap());
    }

    /// A backend on loopback that reads the PROXY header, then echoes.
    async fn echo_backend() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut hdr = [0u8; 16];
                    if s.read_exact(&mut hdr).await.is_err() {
                        return;
                    }
                    let len = u16::from_be_bytes([hdr[14], hdr[15]]) as usize;
                    let mut rest = vec![0u8; len];
                    if s.read_exact(&mut rest).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// A proxy on loopback (no sk_lookup needed: the service's VIP is the listener's
    /// own address) in front of one echo backend.
    async fn proxy(max_conns: u32) -> (Arc<Proxy>, Arc<ServiceRt>, SocketAddr) {
        proxy_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), max_conns).await
    }

    /// [`proxy`] serving `listener`.
    async fn proxy_on(
        listener: TcpListener,
        max_conns: u32,
    ) -> (Arc<Proxy>, Arc<ServiceRt>, SocketAddr) {
        let backend = echo_backend().await;
        let vip = listener.local_addr().unwrap();
        let proxy = Arc::new(Proxy::new(
            Settings {
                connect_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(30),
                engine: Engine::Pipe,
            },
            None,
            max_conns,
        ));
        let svc = Arc::new(ServiceRt::new("web".into(), vip, ProxyConfig::default()));
        let table = lb_common::maglev::build_table(
            &[lb_common::maglev::MaglevBackend {
                key: 1,
                weight: 1,
                id: 7,
            }],
            251,
        );
        svc.set_table(ProxyTable::new(table, [(7, backend)].into_iter().collect()));
        proxy.register(svc.clone());
        tokio::spawn(proxy.clone().serve(listener));
        (proxy, svc, vip)
    }

    async fn echo_once(s: &mut TcpStream) -> io::Result<()> {
        s.write_all(b"ping").await?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await?;
        assert_eq!(&b, b"ping");
        Ok(())
    }

    #[tokio::test]
    async fn max_conns_resets_the_connection_over_the_limit_and_counts_it() {
        let (proxy, svc, vip) = proxy(2).await;
        let mut a = TcpStream::connect(vip).await.unwrap();
        let mut b = TcpStream::connect(vip).await.unwrap();
        echo_once(&mut a).await.unwrap();
        echo_once(&mut b).await.unwrap();
        assert_eq!(proxy.in_use(), 2);
        // The third is accepted by the kernel, then reset by the daemon.
        let mut c = TcpStream::connect(vip).await.unwrap();
        let third = timeout(Duration::from_secs(5), echo_once(&mut c)).await;
        assert!(matches!(third, Ok(Err(_))), "over the limit: {third:?}");
        assert_eq!(svc.counters().errors.get("max_conns"), Some(&1));
        // A slot frees when a connection ends.
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.in_use() > 1 {
            assert!(
                Instant::now() < deadline,
                "the closed connection's slot was not freed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut d = TcpStream::connect(vip).await.unwrap();
        echo_once(&mut d).await.unwrap();
        echo_once(&mut b).await.unwrap();
        let c = svc.counters();
        // The one reset over the limit never reached the accept path's count.
        assert_eq!((c.connections, c.active), (3, 2), "{c:?}");
    }

    #[tokio::test]
    async fn an_empty_table_resets_and_counts_no_backend() {
        let (_proxy, svc, vip) = proxy(8).await;
        svc.set_table(ProxyTable::default());
        let mut c = TcpStream::connect(vip).await.unwrap();
        let r = timeout(Duration::from_secs(5), echo_once(&mut c)).await;
        assert!(matches!(r, Ok(Err(_))), "{r:?}");
        assert_eq!(svc.counters().errors.get("no_backend"), Some(&1));
    }
}
