//! The daemon's life: take the data path over (from a daemon still running, see
//! [`handover`], or from the state an earlier one left), program the maps, attach, then
//! serve health checks, the admin API, reloads (SIGHUP) and neighbour upkeep until
//! SIGINT/SIGTERM or a successor's hand-over. On the way out the data path stays: it
//! forwards without a daemon until the next one adopts it (`lb down` removes it).

mod discovery;
pub mod handover;
pub mod notify;

use crate::api::report::{Report, StatsError};
use crate::api::server as admin;
use crate::config::SpliceChoice;
use crate::config::{AdminSocket, Config, FlagSettings};
use crate::control::{Control, ControlError, task};
use crate::dataplane::neigh;
use crate::dataplane::runtime::{self, RuntimeRecord};
use crate::dataplane::{Dataplane, DataplaneError, state};
use crate::health::CheckResult;
use crate::proxy::server::{Proxy, Settings};
use crate::proxy::splice::Engine;
use lb_common::counters::PASS_NO_NEIGH_IN;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tracing::{debug, error, info, warn};

/// How often drains and the no-neighbour drop counter are looked at.
const TICK: Duration = Duration::from_secs(1);
/// How often backends are pinged anyway, so their neighbour entries stay resolved.
const NEIGH_REFRESH: Duration = Duration::from_secs(30);
/// How often the announce table is read again and repaired.
const ANNOUNCE_REFRESH: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("opening the proxy listeners on loopback: {0}")]
    ProxyListen(#[source] std::io::Error),
    #[error(
        "--admin-socket {}: cannot listen: {source} (choose another path, or --admin-socket off)",
        path.display()
    )]
    AdminSocket {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("--admin {addr}: cannot listen: {source} (choose another address, or --admin off)")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error(transparent)]
    Handover(#[from] handover::HandoverError),
}

impl StartError {
    /// Whether the error is in a value the user gave (exit status 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            StartError::Admin { .. }
                | StartError::AdminSocket { .. }
                | StartError::Dataplane(
                    DataplaneError::UnknownIface { .. }
                        | DataplaneError::State(_)
                        | DataplaneError::PinnedSize { .. }
                )
                | StartError::Control(ControlError::Dataplane(DataplaneError::NoSnatSource { .. }))
        )
    }
}

/// A daemon that has attached its program and waits in [`run`].
pub struct Started {
    ctl: Control,
    admin: Option<std::net::TcpListener>,
    admin_socket: Option<admin::AdminSocketFile>,
    checks: UnboundedReceiver<CheckResult>,
    proxy: Arc<Proxy>,
    /// Where sk_lookup delivers proxy services' connections: (hand-over name, socket).
    listeners: Vec<(&'static str, std::net::TcpListener)>,
    /// The daemon this one took over from, told once this one is ready.
    predecessor: Option<handover::Predecessor>,
}

/// Removes a state directory this start created if the start fails, so a failed first
/// start leaves nothing attached; an adopted one stays as the running data path uses it.
struct FreshState(Option<std::path::PathBuf>);

impl FreshState {
    fn guard(dp: &Dataplane) -> FreshState {
        FreshState((!dp.state().adopted()).then(|| dp.state().root().to_path_buf()))
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for FreshState {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = state::remove(&dir);
        }
    }
}

/// The proxy listeners, one per family. sk_lookup assigns them connections to any
/// proxy VIP regardless of the address they are bound to; loopback keeps them from
/// being reachable otherwise. IPv6 is optional (a host may have it disabled).
fn bind_proxy_listeners() -> std::io::Result<(std::net::TcpListener, Option<std::net::TcpListener>)>
{
    let listen = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())?;
        sock.listen(4096)?;
        Ok(sock.into())
    };
    let v4 = listen("127.0.0.1:0".parse().expect("literal"))?;
    let v6 = match listen("[::1]:0".parse().expect("literal")) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(cause = %e, "no IPv6 proxy listener: IPv6 proxy services will not accept connections");
            None
        }
    };
    Ok((v4, v6))
}

/// What can be wrong with the configuration, found before a running daemon is asked to
/// step down or its data path is touched: the interfaces, and a source address toward
/// every backend without a --snat-ip of its family.
fn preflight(cfg: &Config) -> Result<(), StartError> {
    for iface in &cfg.ifaces {
        crate::dataplane::resolve_iface(iface)?;
        warn_unless_forwarding(iface, cfg);
    }
    for b in cfg.services.iter().flat_map(|s| &s.backends) {
        if !cfg
            .snat_ips
            .iter()
            .any(|ip| ip.is_ipv4() == b.addr.is_ipv4())
        {
            crate::dataplane::source_address_for(b.addr).map_err(|source| {
                ControlError::Dataplane(DataplaneError::NoSnatSource {
                    backend: b.addr,
                    source,
                })
            })?;
        }
    }
    Ok(())
}

/// The kernel's FIB lookup from XDP refuses to name a next hop for packets that came in
/// on an interface without forwarding: every forwarded packet would be dropped (`no
/// route toward the next hop`). Warned, not refused: a proxy-only LB needs none.
fn warn_unless_forwarding(iface: &str, cfg: &Config) {
    let (v4, v6) = cfg.services.iter().fold((false, false), |(v4, v6), s| {
        (v4 || s.vip.is_ipv4(), v6 || s.vip.is_ipv6())
    });
    for (on, fam) in [(v4, "ipv4"), (v6, "ipv6")] {
        let path = format!("/proc/sys/net/{fam}/conf/{iface}/forwarding");
        if on && std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
            warn!(
                iface,
                "forwarding is off ({path} is 0): the XDP program cannot forward packets that arrive here; enable it (sysctl -w net.{fam}.conf.all.forwarding=1)"
            );
        }
    }
}

/// Loads and verifies the programs, takes over from a daemon still running here (only
/// once nothing can fail before it), binds the admin API, programs the data path (over
/// what an earlier daemon left) and attaches it. Must run inside the tokio runtime
/// (health checks are tasks). A failed first start leaves nothing attached; a failed
/// start over a running or left data path leaves it as it was.
pub fn start(cfg: Config, flags: FlagSettings) -> Result<Started, StartError> {
    // Each proxied connection holds 6 descriptors (2 sockets, 2 pipes of 2 ends), and
    // the pool of idle pipes up to 2 per pipe.
    let wanted =
        u64::from(cfg.max_conns) * 6 + 2 * crate::proxy::splice::PIPE_POOL_MAX as u64 + 1024;
    match crate::sys::raise_nofile_limit() {
        Ok(limit)
            if limit < wanted
                && cfg
                    .services
                    .iter()
                    .any(|s| s.mode == crate::config::Mode::ProxyV2) =>
        {
            warn!(
                limit,
                max_conns = cfg.max_conns,
                "the open-file limit is below what --max-conns needs ({wanted}); raise it (LimitNOFILE= in the systemd unit, ulimit -Hn) or lower --max-conns"
            )
        }
        Ok(_) => {}
        Err(e) => warn!(cause = %e, "raising the open-file limit"),
    }
    preflight(&cfg)?;
    let inode = runtime::netns_inode()?;
    let running = RuntimeRecord::read(&runtime::record_path(inode))
        .ok()
        .map(|r| r.pid)
        .filter(|pid| *pid != std::process::id() && crate::sys::process_alive(*pid))
        // A record left by a daemon that died, its pid since reused: not an lb.
        .filter(|pid| same_program(*pid));
    let predecessor = handover::predecessor(inode, running)?;
    let mut dp = Dataplane::load(&cfg)?;
    let fresh = FreshState::guard(&dp);
    dp.carry_old_flows(false);
    if dp.state().adopted() && predecessor.is_none() {
        warn!(
            state_dir = %dp.state().root().display(),
            "no daemon ran this data path since the last one stopped: it kept forwarding, and backends' health states were frozen meanwhile"
        );
    }
    let handed = match predecessor {
        Some(p) => {
            info!(pid = p.pid, "taking over from pid {}", p.pid);
            Some(p.take_over(dp.state().root())?)
        }
        None => None,
    };
    let (mut handed_admin, mut handed_v4, mut handed_v6, predecessor) = match handed {
        Some(h) => (h.admin, h.proxy_v4, h.proxy_v6, Some(h.from)),
        None => (None, None, None, None),
    };
    let admin = match cfg.admin {
        Some(addr) => match handed_admin.take() {
            Some(l) if l.local_addr().is_ok_and(|a| a == addr) => Some(l),
            _ => Some(admin::bind(addr).map_err(|source| StartError::Admin { addr, source })?),
        },
        None => None,
    };
    let socket_path = match &cfg.admin_socket {
        AdminSocket::Off => None,
        AdminSocket::Default => Some(runtime::admin_socket_path(runtime::netns_inode()?)),
        AdminSocket::At(p) => Some(p.clone()),
    };
    let admin_socket = match socket_path {
        Some(path) => Some(
            admin::bind_socket(&path, cfg.admin_group.as_ref().map(|(_, gid)| *gid))
                .map_err(|source| StartError::AdminSocket { path, source })?,
        ),
        None => None,
    };
    dp.program_globals(&cfg)?;
    let (v4, v6) = match handed_v4.take() {
        Some(v4) => (v4, handed_v6.take()),
        None => bind_proxy_listeners().map_err(StartError::ProxyListen)?,
    };
    dp.attach_lookup(&v4, v6.as_ref())?;
    let engine = match cfg.splice {
        SpliceChoice::Sockmap => Engine::Sockmap,
        SpliceChoice::Pipe => Engine::Pipe,
    };
    // The splice maps are pinned and shared with the daemon before and after this one,
    // so a sockmap connection handed over in an upgrade goes on whatever engine this
    // daemon starts new ones on: a pipe-engine daemon sets them up too, if it can.
    let maps = match engine {
        Engine::Sockmap => Some(Arc::new(dp.splice_maps()?)),
        Engine::Pipe => match dp.splice_maps() {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                debug!(cause = %e, "no splice maps: sockmap connections of an upgrade cannot be taken over");
                None
            }
        },
    };
    let proxy = Arc::new(Proxy::new(
        Settings {
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.idle_timeout,
            engine,
        },
        maps,
        cfg.max_conns,
    ));
    let (tx, checks) = unbounded_channel();
    let (ifaces, mode) = (cfg.ifaces.clone(), cfg.xdp_mode);
    let mut ctl = Control::new(dp, cfg, flags, tx, proxy.clone())?;
    ctl.dataplane_mut().attach(&ifaces, mode)?;
    // The flows the replaced program opened or changed since the first carry.
    ctl.dataplane_mut().carry_old_flows(true);
    fresh.disarm();
    let mut listeners = vec![(handover::PROXY_V4, v4)];
    listeners.extend(v6.map(|l| (handover::PROXY_V6, l)));
    Ok(Started {
        ctl,
        admin,
        admin_socket,
        checks,
        proxy,
        listeners,
        predecessor,
    })
}

/// Whether process `pid` runs the same program as this one (by `comm`, the executable's
/// name), or one called `lb`.
fn same_program(pid: u32) -> bool {
    let comm = |p: &str| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    let theirs = comm(&pid.to_string());
    let theirs = theirs.trim();
    !theirs.is_empty() && (theirs == comm("self").trim() || theirs == "lb")
}

/// The daemon's usual end: the next SIGINT or SIGTERM, by name. Without the handlers
/// (`run` installs them before it serves) it never resolves, and
/// the default actions of the signals end the process.
pub async fn signalled() -> &'static str {
    let (Ok(mut sigint), Ok(mut sigterm)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        error!("cannot install the SIGINT/SIGTERM handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = sigint.recv() => "SIGINT",
        _ = sigterm.recv() => "SIGTERM",
    }
}

/// Why the daemon stops serving.
enum Stop {
    /// A signal, by name.
    Signal(&'static str),
    /// A successor asked to take over.
    Handover(handover::Request),
}

/// Runs until `shutdown` resolves (with what asked for it, for the log) or a successor
/// takes over, then stops accepting, lets proxied connections finish (within
/// `shutdown_timeout` after a signal, for as long as they last after a hand-over; a
/// `shutdown` cuts them at once), and returns, leaving the data path running.
pub async fn run<F, S>(started: Started, shutdown: S) -> anyhow::Result<()>
where
    F: Future<Output = &'static str>,
    S: Fn() -> F,
{
    let Started {
        mut ctl,
        admin,
        mut admin_socket,
        mut checks,
        proxy,
        listeners,
        predecessor,
    } = started;
    // Kept to hand them to a successor: the tasks own their own descriptors.
    let mut sockets: Vec<(&'static str, std::net::TcpListener)> = Vec::new();
    let mut proxy_tasks = Vec::new();
    for (name, l) in listeners {
        sockets.push((name, l.try_clone()?));
        proxy_tasks.push(tokio::spawn(
            proxy.clone().serve(tokio::net::TcpListener::from_std(l)?),
        ));
    }
    let mut sighup = signal(SignalKind::hangup())?;
    // The admin API (and a predecessor's carried check totals) reach the control plane
    // through `jobs`, run by the loop below.
    let (handle, mut jobs) = task::channel();
    let mut discovery = discovery::Discovery::default();
    discovery.sync(&ctl.config().services, &handle);
    let socket_task = match admin_socket.as_mut().and_then(|s| s.take_listener()) {
        Some(l) => Some(tokio::spawn(admin::serve_socket(
            tokio::net::UnixListener::from_std(l)?,
            handle.clone(),
        ))),
        None => None,
    };
    let admin_task = match admin {
        Some(l) => {
            sockets.push((handover::ADMIN, l.try_clone()?));
            Some(tokio::spawn(admin::serve(
                tokio::net::TcpListener::from_std(l)?,
                handle.clone(),
                admin::Access::Tcp {
                    token: ctl.config().admin_token.clone(),
                },
            )))
        }
        None => None,
    };
    let (handover_tx, mut handovers) = unbounded_channel();
    let handover_listener = match handover::Listener::bind(runtime::netns_inode()?) {
        Ok(l) => {
            let l = Arc::new(l);
            let accepting = l.clone();
            std::thread::spawn(move || {
                while let Ok(req) = accepting.accept() {
                    if handover_tx.send(req).is_err() {
                        break;
                    }
                }
            });
            Some(l)
        }
        Err(e) => {
            warn!(cause = %e, "no hand-over socket: an upgrade cannot take over from this daemon");
            None
        }
    };
    ctl.write_record();
    let ifaces = ctl.attached();
    let record = ctl
        .record_path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    info!(services = ctl.config().services.len(), ifaces = %ifaces.join(","), record = %record, "ready");
    notify::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    if let Some(p) = predecessor {
        let pid = p.pid;
        match p.done() {
            Ok(()) => {
                info!(pid, "took over from pid {pid}");
                // Its proxied connections come next, parked; each goes on here.
                let (proxy, rt) = (proxy.clone(), tokio::runtime::Handle::current());
                let control = handle.clone();
                tokio::task::spawn_blocking(move || {
                    let _rt = rt.enter();
                    let received = p.receive_connections(
                        |parked| proxy.adopt(parked),
                        |carried| {
                            for (vip, counters) in &carried.services {
                                proxy.carry_counters(*vip, counters);
                            }
                            let checks = carried.checks;
                            // The check totals belong to the control plane: a job.
                            rt.block_on(control.call(move |ctl| ctl.carry_check_totals(&checks)));
                        },
                    );
                    match received {
                        Ok(n) => info!(
                            pid,
                            connections = n,
                            "took over the proxied connections of pid {pid}"
                        ),
                        Err(e) => error!(pid, cause = %e, "taking over the proxied connections"),
                    }
                });
            }
            Err(e) => warn!(pid, cause = %e, "telling the previous daemon it may go"),
        }
    }

    // Only now: a predecessor kept its routes up to date until it let go.
    if let Err(e) = ctl.start_announcing() {
        error!(cause = %e, "cannot keep the announce table; VIPs stay as they were there");
    }
    let mut tick = tokio::time::interval(TICK);
    let mut last_refresh = tokio::time::Instant::now();
    let mut last_announce = tokio::time::Instant::now();
    let mut no_neigh = ctl.dataplane().counter(PASS_NO_NEIGH_IN);
    // Counts of the flows of draining backends: the flow table scan runs on a blocking
    // thread while the loop goes on; one scan at a time.
    let (flows_tx, mut flows_rx) = tokio::sync::mpsc::channel(1);
    let mut scanning = false;
    let stop = shutdown();
    tokio::pin!(stop);
    let why = loop {
        tokio::select! {
            why = &mut stop => break Stop::Signal(why),
            Some(req) = handovers.recv() => {
                if let Some(reason) = req.mismatch(ctl.dataplane().state().root()) {
                    warn!(pid = req.pid, "refusing a hand-over: {reason}");
                    req.refuse(&reason);
                    continue;
                }
                break Stop::Handover(req);
            }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading the configuration");
                // Logged (applied or rejected) by reload itself.
                let _ = ctl.reload();
            }
            Some(r) = checks.recv() => {
                if let Err(e) = ctl.on_check(r) {
                    error!(cause = %e, "applying a health check result");
                }
            }
            Some(job) = jobs.recv() => job(&mut ctl),
            Some(scan) = flows_rx.recv() => {
                scanning = false;
                let scan: Result<Result<Report, StatsError>, _> = scan;
                match scan {
                    Ok(Ok(report)) => {
                        if let Err(e) = ctl.advance_drains(&report.active_flows()) {
                            error!(cause = %e, "advancing drains");
                        }
                    }
                    Ok(Err(e)) => error!(cause = %e, "counting the flows of draining backends"),
                    Err(e) => error!(cause = %e, "counting the flows of draining backends"),
                }
            }
            _ = tick.tick() => {
                if let Some(record) = ctl.drains_pending().filter(|_| !scanning) {
                    scanning = true;
                    let tx = flows_tx.clone();
                    tokio::spawn(async move {
                        let scan = tokio::task::spawn_blocking(move || crate::api::report::collect_from(&record)).await;
                        let _ = tx.send(scan).await;
                    });
                }
                if let Err(e) = ctl.advance_slow_start() {
                    error!(cause = %e, "advancing slow starts");
                }
                if let Err(e) = ctl.expire_watch() {
                    error!(cause = %e, "ending a watch");
                }
                // A reload may have changed what to look up in DNS.
                discovery.sync(&ctl.config().services, &handle);
                if last_announce.elapsed() >= ANNOUNCE_REFRESH {
                    last_announce = tokio::time::Instant::now();
                    ctl.refresh_announcements();
                }
                let now = ctl.dataplane().counter(PASS_NO_NEIGH_IN);
                if now != no_neigh || last_refresh.elapsed() >= NEIGH_REFRESH {
                    if now != no_neigh {
                        warn!(dropped = now - no_neigh, "packets to backends with no neighbour entry handed to the kernel; resolving");
                    }
                    no_neigh = now;
                    last_refresh = tokio::time::Instant::now();
                    neigh::warm(&ctl.backend_ips());
                }
            }
        }
    };
    notify::notify("STOPPING=1");
    if let Some(t) = admin_task {
        t.abort();
    }
    if let Some(t) = socket_task {
        t.abort();
    }
    for t in proxy_tasks {
        t.abort();
    }
    // A stop gives proxied connections the shutdown timeout; after a hand-over nothing
    // cuts them but a signal (their successor serves everything new meanwhile).
    let deadline = match &why {
        Stop::Signal(_) => ctl.config().shutdown_timeout,
        Stop::Handover(_) => Duration::MAX,
    };
    match why {
        Stop::Signal(name) => info!(
            signal = name,
            "shutting down, leaving the data path running: programs stay attached and flows forwarded until the next lb adopts them (`lb down` removes them)"
        ),
        Stop::Handover(req) => {
            let pid = req.pid;
            let fds: Vec<(&str, std::os::fd::BorrowedFd<'_>)> = sockets
                .iter()
                .map(|(n, l)| (*n, std::os::fd::AsFd::as_fd(l)))
                .collect();
            match req.hand_over(&fds) {
                Ok(successor) => {
                    info!(
                        pid,
                        "handed over to pid {pid}: its programs replace this daemon's in the links"
                    );
                    let ready = tokio::task::spawn_blocking(move || {
                        successor
                            .wait_done(Duration::from_secs(120))
                            .then_some(successor)
                    })
                    .await
                    .ok()
                    .flatten();
                    match ready {
                        Some(successor) => {
                            let parked = proxy.park_all().await;
                            let carried = handover::Carried {
                                services: proxy.counters_by_vip(),
                                checks: ctl.check_totals(),
                            };
                            let sent = tokio::task::spawn_blocking(move || {
                                successor.send_connections(parked, carried)
                            })
                            .await;
                            match sent {
                                Ok(Ok(n)) => info!(
                                    pid,
                                    connections = n,
                                    "handed the proxied connections over to pid {pid}"
                                ),
                                Ok(Err(e)) => {
                                    error!(pid, cause = %e, "handing the proxied connections over: the rest are reset")
                                }
                                Err(e) => {
                                    error!(pid, cause = %e, "handing the proxied connections over")
                                }
                            }
                        }
                        None => error!(
                            pid,
                            "the new lb (pid {pid}) did not become ready after taking over: the data path runs as it left it, and this daemon serves its proxied connections to their end; start lb again"
                        ),
                    }
                }
                Err(e) => error!(pid, cause = %e, "handing the sockets over"),
            }
        }
    }
    drop(sockets);
    let cut = tokio::select! {
        finished = proxied_connections_end(&proxy, deadline) => (!finished).then_some("the shutdown timeout"),
        why = shutdown() => Some(why),
    };
    if let Some(why) = cut {
        warn!(
            connections = proxy.cut_all(),
            cause = why,
            "cutting the proxied connections still open"
        );
        // The aborted tasks reset their sockets as they are dropped.
        proxied_connections_end(&proxy, Duration::from_secs(1)).await;
    }
    ctl.leave();
    if let Some(l) = handover_listener {
        l.remove_if_ours();
    }
    info!("stopped");
    Ok(())
}

/// Waits until no proxied connection is left (true) or `deadline` has passed (false).
async fn proxied_connections_end(proxy: &Proxy, deadline: Duration) -> bool {
    let open = proxy.in_use();
    if open == 0 {
        return true;
    }
    info!(
        connections = open,
        ?deadline,
        "waiting for proxied connections to end"
    );
    let until = tokio::time::Instant::now().checked_add(deadline);
    while proxy.in_use() > 0 {
        if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}
