//! `--mode proxy-v2` end to end (issue 4), against receivers nobody here wrote: nginx
//! (`listen ... proxy_protocol`, HTTP, TLS and a WebSocket location) and HAProxy
//! (`accept-proxy`) must log the real client address and port of every connection, from
//! two client addresses of each family; TLS passes through to the backend's certificate;
//! a WebSocket session works; 1 GiB each way arrives sha256-exact; half-close and resets
//! propagate; a refusing or silent backend is skipped for the next one; `--accept-proxy`
//! forwards a client's PROXY header and resets a malformed one; the TLVs (AUTHORITY and
//! ALPN from the ClientHello, UNIQUE_ID, CRC32C) check out in a backend that parses the
//! raw header, and a server-first protocol gets its greeting at once; /metrics counts
//! connections and bytes.
//!
//! Root, the `lb` binary and the eBPF object, nginx, HAProxy, openssl and Debian's python3
//! with python3-websockets are required (a missing one fails); the tests run one at a
//! time (the lock in [`Bed`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use lb_tests::admin;
use lb_tests::backend_ctl;
use lb_tests::bed::Bed;
use lb_tests::netns::wait_until;
use lb_tests::pp_peers::{self, PpServer};
use lb_tests::prometheus;
use lb_tests::receivers::{self, Haproxy, Nginx, NginxEntry, NginxOpts};
use lb_tests::tls;
use lb_tests::topology::{Backend, Kind, VIP4, VIP6};
use lb_tests::{Daemon, Launch, cmd, unique};
use serde_json::Value;

/// The second client address of each family (the topology gives the client .2 / ::2).
const CLIENT2_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const CLIENT2_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
/// The LB's own addresses toward the backends: what a backend sees as the TCP peer, and
/// what it must never log as the client.
const LB_BACKSIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const LB_BACKSIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
/// Where the TLS backends are reached, and the name their certificate is for.
const TLS_HOST: &str = "registry.example";
const GIB: u64 = 1 << 30;

// ---------------------------------------------------------------------------------------
// The bed: topology, receivers, the daemon's configuration.

/// A two-armed bed with the receivers' prerequisites checked and a second client address
/// of each family.
fn bed() -> Bed {
    let bed = Bed::new(Kind::TwoArmed);
    receivers::require().unwrap_or_else(|e| panic!("{e:#}"));
    bed.topo
        .client
        .ip_batch(&format!(
            "addr add {CLIENT2_V4}/24 dev eth0\naddr add {CLIENT2_V6}/64 dev eth0 nodad\n"
        ))
        .unwrap_or_else(|e| panic!("adding the second client addresses: {e:#}"));
    bed
}

/// The two client source addresses of a family.
fn client_addrs(bed: &Bed, v6: bool) -> [IpAddr; 2] {
    if v6 {
        [IpAddr::V6(bed.topo.client_v6), IpAddr::V6(CLIENT2_V6)]
    } else {
        [IpAddr::V4(bed.topo.client_v4), IpAddr::V4(CLIENT2_V4)]
    }
}

fn vip(v6: bool, port: u16) -> SocketAddr {
    if v6 {
        SocketAddr::new(IpAddr::V6(VIP6), port)
    } else {
        SocketAddr::new(IpAddr::V4(VIP4), port)
    }
}

/// Every backend's address of a family on `port`.
fn backends(bed: &Bed, v6: bool, port: u16) -> Vec<SocketAddr> {
    bed.topo
        .backends
        .iter()
        .map(|b| {
            let ip = if v6 {
                IpAddr::V6(b.v6)
            } else {
                IpAddr::V4(b.v4)
            };
            SocketAddr::new(ip, port)
        })
        .collect()
}

/// One `[[service]]` of a proxy-v2 config file.
struct Svc<'a> {
    name: &'a str,
    vip: SocketAddr,
    backends: Vec<SocketAddr>,
    /// More `key = value` lines of the service (proxy_protocol, proxy_tlvs, ...).
    extra: &'a str,
    /// The `[service.health]` lines.
    health: &'a str,
}

impl<'a> Svc<'a> {
    /// Service `name` at the VIP of the family `v6` on `port`, over every backend of
    /// that family on the same port, health checked every second.
    fn new(bed: &Bed, name: &'a str, v6: bool, port: u16) -> Svc<'a> {
        Svc {
            name,
            vip: vip(v6, port),
            backends: backends(bed, v6, port),
            extra: "",
            health: HEALTH_FAST,
        }
    }

    /// The same service for each family: `names[0]` at the IPv4 VIP, `names[1]` at the
    /// IPv6 one.
    fn pair(bed: &Bed, names: [&'a str; 2], port: u16) -> [Svc<'a>; 2] {
        [
            Svc::new(bed, names[0], false, port),
            Svc::new(bed, names[1], true, port),
        ]
    }
}

/// Health checks every second (a proxy service's check sends a PROXY LOCAL header
/// first, which the receivers must accept).
const HEALTH_FAST: &str = "check = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n";
/// No health checks: a refused backend is only skipped by the connect retry.
const HEALTH_NONE: &str = "check = \"none\"\n";

fn config(bed: &Bed, globals: &str, svcs: &[Svc<'_>]) -> String {
    let quote = |v: &[String]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = format!(
        "iface = [{}]\nxdp_mode = \"native\"\n{globals}\n",
        quote(&bed.topo.lb_ifaces)
    );
    for s in svcs {
        let b: Vec<String> = s.backends.iter().map(|a| a.to_string()).collect();
        out.push_str(&format!(
            "[[service]]\nname = \"{}\"\nvip = \"{}\"\nmode = \"proxy-v2\"\nbackends = [{}]\n{}\n[service.health]\n{}\n",
            s.name,
            s.vip,
            quote(&b),
            s.extra,
            s.health
        ));
    }
    out
}

/// Starts lb with a config file made of `globals` and `svcs`.
fn start_with_config(bed: &Bed, globals: &str, svcs: &[Svc<'_>]) -> Daemon {
    let path = bed.topo.path(&format!("{}.toml", unique("lb")));
    std::fs::write(&path, config(bed, globals, svcs)).unwrap();
    bed.start(&["--config".to_owned(), path.display().to_string()])
}

/// Starts lb with a config file of `svcs` and no other settings.
fn start_services(bed: &Bed, svcs: &[Svc<'_>]) -> Daemon {
    start_with_config(bed, "", svcs)
}

/// Starts `lb --iface ... --mode proxy-v2 --vip VIP4:PORT --backend ...(every IPv4
/// backend on `port`) --xdp-mode native EXTRA...`.
fn start_proxy(bed: &Bed, port: u16, extra: &[&str]) -> Daemon {
    let vip = vip(false, port);
    let mut a = Vec::new();
    for iface in &bed.topo.lb_ifaces {
        a.extend(["--iface".to_owned(), iface.clone()]);
    }
    a.extend([
        "--mode".to_owned(),
        "proxy-v2".to_owned(),
        "--vip".to_owned(),
        vip.to_string(),
    ]);
    for b in backends(bed, vip.is_ipv6(), port) {
        a.extend(["--backend".to_owned(), b.to_string()]);
    }
    a.extend(["--xdp-mode".to_owned(), "native".to_owned()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    bed.start(&a)
}

/// Stops the python http.servers the topology started on port 80.
fn stop_http_servers(bed: &Bed) {
    for b in &bed.topo.backends {
        if b.server_pid().is_some() {
            backend_ctl::stop_server(b).unwrap_or_else(|e| panic!("{e:#}"));
        }
    }
}

/// nginx options: HTTP with `proxy_protocol` on port 80, nothing else.
fn http_only() -> NginxOpts {
    NginxOpts {
        http_port: Some(80),
        ..NginxOpts::default()
    }
}

/// nginx on every backend, HTTP on port 80 only.
fn http_nginx(bed: &Bed) -> Vec<Nginx> {
    nginx_all(bed, &http_only())
}

/// A certificate for [`TLS_HOST`] made for this run, and nginx on every backend with
/// HTTP on port 80 and TLS with that certificate on 443.
fn tls_nginx(bed: &Bed) -> (tls::Cert, Vec<Nginx>) {
    let cert = tls::self_signed(bed.topo.dir.path(), "registry", TLS_HOST)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let opts = NginxOpts {
        tls: Some((443, cert.cert.clone(), cert.key.clone())),
        ..http_only()
    };
    let nginx = nginx_all(bed, &opts);
    (cert, nginx)
}

/// nginx in every backend (after the python servers on port 80 are stopped).
fn nginx_all(bed: &Bed, opts: &NginxOpts) -> Vec<Nginx> {
    stop_http_servers(bed);
    on_every_backend(bed, "nginx", |b, dir| {
        receivers::start_nginx(&b.ns, dir, &b.name, opts)
    })
}

/// Starts a `what` receiver on every backend with `start` (given the backend and a fresh
/// directory of its own); a failure fails the test.
fn on_every_backend<T>(
    bed: &Bed,
    what: &str,
    start: impl Fn(&Backend, &Path) -> anyhow::Result<T>,
) -> Vec<T> {
    bed.topo
        .backends
        .iter()
        .map(|b| {
            let dir = bed.topo.path(&unique(&format!("{what}-{}", b.name)));
            start(b, &dir).unwrap_or_else(|e| panic!("starting {what} in {}: {e:#}", b.name))
        })
        .collect()
}

/// The python PROXY backend in every backend on `port`.
fn pp_all(bed: &Bed, port: u16, mode: &str, args: &[&str]) -> Vec<PpServer> {
    bed.topo
        .backends
        .iter()
        .map(|b| {
            pp_peers::start_server(&b.ns, bed.topo.dir.path(), &b.name, port, mode, args)
                .unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect()
}

fn refs(v: &[PpServer]) -> Vec<&PpServer> {
    v.iter().collect()
}

/// The python client's `mode` against VIP4:`port` from the client's own address, with
/// the mode's `args`.
fn pp_to_vip(bed: &Bed, mode: &str, port: u16, args: &[&str], timeout: Duration) -> Value {
    let (vip, port) = (VIP4.to_string(), port.to_string());
    let mut all = vec![mode, &vip, &port, "-"];
    all.extend_from_slice(args);
    pp_client(bed, &all, timeout)
}

/// The record one of `servers` wrote for the client's connection `r` (found by its
/// source port), waiting up to `within` for it.
fn record_of(servers: &[PpServer], r: &Value, within: Duration) -> Value {
    let port = r["local_port"].as_u64();
    let recs = pp_peers::wait_records(&refs(servers), within, |x| {
        x.iter().any(|x| x["sport"].as_u64() == port)
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    recs.into_iter()
        .find(|x| x["sport"].as_u64() == port)
        .unwrap_or_else(|| panic!("no backend record of the connection from port {port:?}"))
}

/// The python client in the client namespace.
fn pp_client(bed: &Bed, args: &[&str], timeout: Duration) -> Value {
    pp_peers::client(&bed.topo.client, bed.topo.dir.path(), args, timeout)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn metrics(d: &Daemon, bed: &Bed) -> Vec<prometheus::Sample> {
    let (code, body) = admin::get(&bed.topo.lb, "/metrics").unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(code, 200, "/metrics answered {code}: {body}\n{}", d.log());
    prometheus::parse(&body).unwrap_or_else(|e| panic!("{e:#}\n/metrics:\n{body}"))
}

/// `lb_proxy_errors_total` summed over the series whose labels include `labels`.
fn proxy_errors(samples: &[prometheus::Sample], labels: &[(&str, &str)]) -> f64 {
    prometheus::sum(samples, "lb_proxy_errors_total", labels)
}

/// What one curl transfer did.
#[derive(Debug)]
struct Curl {
    /// curl's exit status.
    exit: Option<i32>,
    http_code: String,
    body: String,
    local_ip: IpAddr,
    local_port: u16,
    stderr: String,
}

/// Runs curl once in the client namespace: `URL`, with `args` (e.g. `--interface SRC`),
/// and reports its exit status, the status code, the body and the source address and
/// port of the connection (`%{local_ip} %{local_port}`).
fn curl(bed: &Bed, url: &str, args: &[&str]) -> Curl {
    let mut c = bed.topo.client.command("curl");
    c.args([
        "-s",
        "-S",
        "-g",
        "--connect-timeout",
        "3",
        "--max-time",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{local_ip} %{local_port}",
    ])
    .args(args)
    .arg(url);
    let line = cmd::display(&c);
    let out = cmd::output_any(&mut c).unwrap_or_else(|e| panic!("{e:#}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut f = last.split(' ');
    let http_code = f.next().unwrap_or_default().to_owned();
    let local_ip = f.next().and_then(|s| s.parse().ok());
    let local_port = f.next().and_then(|s| s.parse().ok());
    let (Some(local_ip), Some(local_port)) = (local_ip, local_port) else {
        panic!(
            "`{line}` ({}) printed no local address: {stdout:?}\n{stderr}",
            out.status
        );
    };
    Curl {
        exit: out.status.code(),
        http_code,
        body: body.to_owned(),
        local_ip,
        local_port,
        stderr,
    }
}

/// `curl URL` through the LB that must succeed with status 200.
fn curl_ok(bed: &Bed, d: &Daemon, url: &str, what: &str) -> Curl {
    let r = curl(bed, url, &[]);
    assert!(
        r.exit == Some(0) && r.http_code == "200",
        "{what}: GET {url}: {r:?}\ndaemon log:\n{}",
        d.log()
    );
    r
}

/// lb_proxy_errors_total counts some errors of `reason`.
fn counted(d: &Daemon, bed: &Bed, reason: &str) {
    let m = metrics(d, bed);
    assert!(
        proxy_errors(&m, &[("reason", reason)]) > 0.0,
        "no {reason} counted: {:?}\n{}",
        prometheus::find(&m, "lb_proxy_errors_total", &[]),
        d.log()
    );
}

/// A request made from a known source, to find in a backend's log.
#[derive(Debug)]
struct Sent {
    path: String,
    src: SocketAddr,
    vip: SocketAddr,
}

/// [`http_from`] both client addresses of the VIP's family.
fn http_from_clients(bed: &Bed, d: &Daemon, vip: SocketAddr, n: usize, tag: &str) -> Vec<Sent> {
    http_from(bed, d, vip, &client_addrs(bed, vip.is_ipv6()), n, tag)
}

/// Sends `n` HTTP requests from each of `srcs` to `vip` (path `/TAG-...`), each a new
/// connection; every one must succeed with a backend's name. Returns them.
fn http_from(
    bed: &Bed,
    d: &Daemon,
    vip: SocketAddr,
    srcs: &[IpAddr],
    n: usize,
    tag: &str,
) -> Vec<Sent> {
    let mut sent = Vec::new();
    for src in srcs {
        for _ in 0..n {
            let path = format!("/{}", unique(tag));
            let url = format!("http://{vip}{path}");
            let r = curl(bed, &url, &["--interface", &src.to_string()]);
            assert!(
                r.exit == Some(0) && r.http_code == "200" && r.body.starts_with('b'),
                "GET {url} from {src}: {r:?}\ndaemon log:\n{}",
                d.log()
            );
            assert_eq!(
                r.local_ip, *src,
                "curl did not use the source address asked for"
            );
            sent.push(Sent {
                path,
                src: SocketAddr::new(r.local_ip, r.local_port),
                vip,
            });
        }
    }
    sent
}

/// Waits (5 s) until every request of `sent` shows up in the nginx logs, then checks each
/// was logged exactly once, with the client's address and port as the PROXY address, the
/// VIP as the PROXY destination, and the LB as the TCP peer. Returns the entries per
/// backend name.
fn check_nginx(
    bed: &Bed,
    d: &Daemon,
    nginx: &[Nginx],
    sent: &[Sent],
) -> BTreeMap<String, Vec<NginxEntry>> {
    let mut per_backend = BTreeMap::new();
    let all_logged = |per: &mut BTreeMap<String, Vec<NginxEntry>>| -> bool {
        per.clear();
        for (b, n) in bed.topo.backends.iter().zip(nginx) {
            per.insert(b.name.clone(), n.entries().unwrap_or_default());
        }
        sent.iter()
            .all(|s| per.values().flatten().any(|e| e.uri == s.path))
    };
    wait_until(Duration::from_secs(5), || Ok(all_logged(&mut per_backend)));
    let dump = |per: &BTreeMap<String, Vec<NginxEntry>>| {
        let mut s = String::new();
        for (b, n) in bed.topo.backends.iter().zip(nginx) {
            s.push_str(&format!(
                "--- {} access log:\n{}\n--- error log:\n{}\n",
                b.name,
                std::fs::read_to_string(&n.access_log).unwrap_or_default(),
                n.errors()
            ));
        }
        format!("{s}parsed: {per:#?}\ndaemon log:\n{}", d.log())
    };
    for s in sent {
        let hits: Vec<(&String, &NginxEntry)> = per_backend
            .iter()
            .flat_map(|(b, es)| es.iter().map(move |e| (b, e)))
            .filter(|(_, e)| e.uri == s.path)
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "request {} from {} should be logged once by one backend: {hits:?}\n{}",
            s.path,
            s.src,
            dump(&per_backend)
        );
        let (backend, e) = hits[0];
        let dump = dump(&per_backend);
        let (client, dst) = (
            (&e.pp_addr, &e.pp_port),
            (&e.pp_server_addr, &e.pp_server_port),
        );
        assert_logged(
            backend,
            client,
            s.src,
            &format!("client of {}", s.path),
            &dump,
        );
        assert_logged(
            backend,
            dst,
            s.vip,
            &format!("destination of {}", s.path),
            &dump,
        );
        let logged: Option<IpAddr> = e.pp_addr.parse().ok();
        let peer: Option<IpAddr> = e.remote_addr.parse().ok();
        assert!(
            peer == Some(IpAddr::V4(LB_BACKSIDE_V4)) || peer == Some(IpAddr::V6(LB_BACKSIDE_V6)),
            "{backend}'s TCP peer for {} was {}, expected the LB",
            s.path,
            e.remote_addr
        );
        assert_ne!(
            logged, peer,
            "{backend} logged the LB's address as the client"
        );
    }
    per_backend
}

/// Fails unless `who` logged the address and port `logged` (as text) for the endpoint
/// `want`, the `what` of a request; `dump` is everything logged.
fn assert_logged(who: &str, logged: (&String, &String), want: SocketAddr, what: &str, dump: &str) {
    let ip: Option<IpAddr> = logged.0.parse().ok();
    assert_eq!(
        (ip, logged.1.as_str()),
        (Some(want.ip()), want.port().to_string().as_str()),
        "{who} logged {} {} as the {what}, it was {want}\n{dump}",
        logged.0,
        logged.1
    );
}

fn all_up(d: &Daemon, service: &str) {
    let s = admin::service(d, service).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        s.backends.iter().all(|b| b.state == "up"),
        "service {service}: a backend is not up (its PROXY health checks failed?): {s:#?}\ndaemon log:\n{}",
        d.log()
    );
}

// ---------------------------------------------------------------------------------------
// The tests.

/// nginx with `listen 80 proxy_protocol` logs, for requests from two IPv4 and two IPv6
/// client addresses (an IPv4 service, an IPv6 one, and an IPv6 VIP in front of IPv4
/// backends), exactly the client's address and port and the VIP, never the LB's
/// address; the backends stay up under PROXY health checks.
#[test]
fn nginx_logs_real_client_addresses() {
    let bed = bed();
    let nginx = http_nginx(&bed);
    let mixed = Svc {
        vip: vip(true, 81),
        ..Svc::new(&bed, "mixed", false, 80)
    };
    let [web4, web6] = Svc::pair(&bed, ["web4", "web6"], 80);
    let d = start_services(&bed, &[web4, web6, mixed]);
    let mut sent = http_from_clients(&bed, &d, vip(false, 80), 8, "t1v4");
    let v4_paths: BTreeSet<String> = sent.iter().map(|s| s.path.clone()).collect();
    sent.extend(http_from_clients(&bed, &d, vip(true, 80), 8, "t1v6"));
    sent.extend(http_from_clients(&bed, &d, vip(true, 81), 4, "t1mix"));
    let per = check_nginx(&bed, &d, &nginx, &sent);
    let v4_backends: Vec<&String> = per
        .iter()
        .filter(|(_, es)| es.iter().any(|e| v4_paths.contains(&e.uri)))
        .map(|(b, _)| b)
        .collect();
    assert!(
        v4_backends.len() >= 2,
        "16 IPv4 connections all went to {v4_backends:?}: Maglev over the client's port should spread them"
    );
    // Three seconds of checks (every second, each with a LOCAL header) leave all up.
    std::thread::sleep(Duration::from_secs(3));
    for s in ["web4", "web6", "mixed"] {
        all_up(&d, s);
    }
    bed.stop(d);
}

/// HAProxy with `bind :80 accept-proxy` logs (`%ci %cp %fi %fp`) the real client address
/// and port and the VIP, from two client addresses of each family.
#[test]
fn haproxy_logs_real_client_addresses() {
    let bed = bed();
    stop_http_servers(&bed);
    let haproxy: Vec<Haproxy> = on_every_backend(&bed, "haproxy", |b, dir| {
        receivers::start_haproxy(&b.ns, dir, &b.name, 80)
    });
    let d = start_services(&bed, &Svc::pair(&bed, ["web4", "web6"], 80));
    let mut sent = http_from_clients(&bed, &d, vip(false, 80), 6, "t2v4");
    sent.extend(http_from_clients(&bed, &d, vip(true, 80), 6, "t2v6"));
    let mut entries = Vec::new();
    wait_until(Duration::from_secs(5), || {
        entries = haproxy
            .iter()
            .zip(&bed.topo.backends)
            .flat_map(|(h, b)| {
                h.entries()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| (b.name.clone(), e))
            })
            .collect();
        Ok(sent
            .iter()
            .all(|s| entries.iter().any(|(_, e)| e.request.contains(&s.path))))
    });
    let dump = || {
        let mut s = String::new();
        for (h, b) in haproxy.iter().zip(&bed.topo.backends) {
            s.push_str(&format!("--- haproxy {}:\n{}\n", b.name, h.proc.output()));
        }
        format!("{s}daemon log:\n{}", d.log())
    };
    for s in &sent {
        let hits: Vec<_> = entries
            .iter()
            .filter(|(_, e)| e.request.split(' ').nth(1) == Some(s.path.as_str()))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "request {} logged {} times\n{}",
            s.path,
            hits.len(),
            dump()
        );
        let (backend, e) = hits[0];
        let who = format!("haproxy {backend}");
        let (client, frontend) = (
            (&e.client_addr, &e.client_port),
            (&e.frontend_addr, &e.frontend_port),
        );
        assert_logged(
            &who,
            client,
            s.src,
            &format!("client of {}", s.path),
            &dump(),
        );
        assert_logged(
            &who,
            frontend,
            s.vip,
            &format!("destination of {}", s.path),
            &dump(),
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    all_up(&d, "web4");
    all_up(&d, "web6");
    bed.stop(d);
}

/// TLS passes through: curl over https to the VIP (IPv4 and IPv6, two client addresses
/// each) verifies the backend's self-signed certificate for registry.example (made for
/// this run: the serial and fingerprint `openssl s_client` sees through the VIP are the
/// backend's), and nginx (`listen 443 ssl proxy_protocol`) logs the real client.
#[test]
fn tls_passthrough_to_nginx() {
    let bed = bed();
    let (cert, nginx) = tls_nginx(&bed);
    let d = start_services(&bed, &Svc::pair(&bed, ["registry4", "registry6"], 443));
    let cacert = cert.cert.to_string_lossy().into_owned();
    let mut sent = Vec::new();
    for v6 in [false, true] {
        let resolve = if v6 {
            format!("{TLS_HOST}:443:[{VIP6}]")
        } else {
            format!("{TLS_HOST}:443:{VIP4}")
        };
        for src in client_addrs(&bed, v6) {
            for _ in 0..3 {
                let path = format!("/{}", unique("t3"));
                let url = format!("https://{TLS_HOST}{path}");
                let r = curl(
                    &bed,
                    &url,
                    &[
                        "-v",
                        "--resolve",
                        &resolve,
                        "--cacert",
                        &cacert,
                        "--interface",
                        &src.to_string(),
                    ],
                );
                assert!(
                    r.exit == Some(0) && r.http_code == "200" && r.body.ends_with(" tls\n"),
                    "GET {url} via {resolve} from {src}: {r:?}\ndaemon log:\n{}",
                    d.log()
                );
                assert!(
                    r.stderr.contains(&format!("subject: CN={TLS_HOST}"))
                        && r.stderr.contains("SSL certificate verify ok"),
                    "curl did not verify the backend's certificate for {TLS_HOST}:\n{}",
                    r.stderr
                );
                sent.push(Sent {
                    path,
                    src: SocketAddr::new(r.local_ip, r.local_port),
                    vip: vip(v6, 443),
                });
            }
        }
    }
    let per = check_nginx(&bed, &d, &nginx, &sent);
    assert!(
        per.values()
            .flatten()
            .filter(|e| sent.iter().any(|s| s.path == e.uri))
            .all(|e| e.scheme == "https"),
        "the TLS requests were not all logged as https: {per:#?}"
    );

    // The certificate seen through the VIP is this run's, byte for byte.
    for target in [format!("{VIP4}:443"), format!("[{VIP6}]:443")] {
        let script = format!(
            "timeout 10 openssl s_client -connect {target} -servername {TLS_HOST} \
             -CAfile {cacert} -verify_return_error </dev/null 2>/dev/null \
             | openssl x509 -noout -serial -fingerprint -sha256"
        );
        let out = bed
            .topo
            .client
            .exec("sh", &["-c", &script])
            .unwrap_or_else(|e| {
                panic!(
                    "openssl s_client via {target}: {e:#}\ndaemon log:\n{}",
                    d.log()
                )
            });
        let (serial, fp) = tls::parse_identity(&out)
            .unwrap_or_else(|e| panic!("openssl via {target} printed {out:?}: {e:#}"));
        assert_eq!(
            (serial.trim_start_matches('0'), fp.as_str()),
            (
                cert.serial.trim_start_matches('0'),
                cert.fingerprint.as_str()
            ),
            "the certificate seen through {target} is not the backend's"
        );
    }
    bed.stop(d);
}

/// `--proxy-protocol v1`: nginx logs the real client address from the text header (two
/// client addresses); a python backend on the same service sees exactly the line
/// `PROXY TCP4 CLIENT VIP CPORT 80`.
#[test]
fn proxy_protocol_v1_to_nginx() {
    let bed = bed();
    let nginx = http_nginx(&bed);
    let d = start_proxy(&bed, 80, &["--proxy-protocol", "v1", "--health", "none"]);
    let sent = http_from_clients(&bed, &d, vip(false, 80), 6, "t4");
    check_nginx(&bed, &d, &nginx, &sent);

    // The same service, a raw receiver instead of nginx.
    for (b, n) in bed.topo.backends.iter().zip(&nginx) {
        receivers::stop(&b.ns, &n.proc).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let pp = pp_all(&bed, 80, "http", &[]);
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(curl_ok(
            &bed,
            &d,
            &format!("http://{VIP4}/t4raw"),
            "v1 to python",
        ));
    }
    let recs = pp_peers::wait_records(&refs(&pp), Duration::from_secs(5), |r| {
        r.iter().filter(|r| r["command"] == "PROXY").count() >= seen.len()
    })
    .unwrap();
    for r in &seen {
        let want = format!("PROXY TCP4 {} {VIP4} {} 80", r.local_ip, r.local_port);
        assert!(
            recs.iter()
                .any(|rec| rec["version"] == 1 && rec["line"] == want.as_str()),
            "no backend received the v1 line {want:?}; records: {recs:#?}\ndaemon log:\n{}",
            d.log()
        );
    }
    bed.stop(d);
}

/// The four TLVs, read from the raw header by a python backend that terminates TLS:
/// AUTHORITY is the SNI curl sent, ALPN the first protocol curl offered (`h2` by default,
/// `http/1.1` with --http1.1), UNIQUE_ID 1-128 bytes and different per connection,
/// CRC32C valid (recomputed in python over the header with the field zeroed). The
/// health check's header is a v2 LOCAL one.
#[test]
fn tlvs_from_the_client_hello() {
    let bed = bed();
    let cert = tls::self_signed(bed.topo.dir.path(), "registry", TLS_HOST)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (c, k) = (
        cert.cert.to_string_lossy().into_owned(),
        cert.key.to_string_lossy().into_owned(),
    );
    let pp = pp_all(&bed, 443, "https", &[&c, &k]);
    let d = start_proxy(
        &bed,
        443,
        &[
            "--proxy-tlv-authority",
            "--proxy-tlv-alpn",
            "--proxy-tlv-unique-id",
            "--proxy-tlv-crc32c",
            "--health",
            "tcp",
            "--health-interval",
            "1s",
        ],
    );
    let resolve = format!("{TLS_HOST}:443:{VIP4}");
    let mut sent = Vec::new();
    for (alpn_flag, expect) in [(None, "h2"), (Some("--http1.1"), "http/1.1")] {
        for _ in 0..3 {
            let mut args = vec!["--resolve", &resolve, "--cacert", &c];
            args.extend(alpn_flag);
            let r = curl(&bed, &format!("https://{TLS_HOST}/t5"), &args);
            assert!(
                r.exit == Some(0) && r.http_code == "200",
                "https through the TLV service: {r:?}\ndaemon log:\n{}",
                d.log()
            );
            sent.push((SocketAddr::new(r.local_ip, r.local_port), expect));
        }
    }
    let recs = pp_peers::wait_records(&refs(&pp), Duration::from_secs(5), |r| {
        sent.iter().all(|(src, _)| {
            r.iter()
                .any(|x| x["sport"].as_u64() == Some(u64::from(src.port())))
        })
    })
    .unwrap();
    let mut ids = BTreeSet::new();
    for (src, alpn) in &sent {
        let rec = recs
            .iter()
            .find(|x| x["command"] == "PROXY" && x["sport"].as_u64() == Some(u64::from(src.port())))
            .unwrap_or_else(|| {
                panic!(
                    "no record of the connection from {src}: {recs:#?}\n{}",
                    d.log()
                )
            });
        let ctx = format!("connection from {src}: {rec:#}\ndaemon log:\n{}", d.log());
        assert!(rec.get("error").is_none(), "backend error: {ctx}");
        assert_eq!(rec["version"], 2, "{ctx}");
        assert_eq!(
            rec["src"].as_str(),
            Some(src.ip().to_string().as_str()),
            "{ctx}"
        );
        assert_eq!(
            rec["dst"].as_str(),
            Some(VIP4.to_string().as_str()),
            "{ctx}"
        );
        assert_eq!(rec["dport"], 443, "{ctx}");
        assert_eq!(
            rec["sni"].as_str(),
            Some(TLS_HOST),
            "the backend saw another SNI: {ctx}"
        );
        let authority = pp_peers::tlv(rec, 0x02).map(|t| t.1);
        assert_eq!(authority.as_deref(), Some(TLS_HOST), "AUTHORITY TLV: {ctx}");
        let got_alpn = pp_peers::tlv(rec, 0x01).map(|t| t.1);
        assert_eq!(got_alpn.as_deref(), Some(*alpn), "ALPN TLV: {ctx}");
        let (uid, _) =
            pp_peers::tlv(rec, 0x05).unwrap_or_else(|| panic!("no UNIQUE_ID TLV: {ctx}"));
        let uid_len = uid.len() / 2;
        assert!(
            (1..=128).contains(&uid_len),
            "UNIQUE_ID of {uid_len} bytes: {ctx}"
        );
        assert!(ids.insert(uid.clone()), "UNIQUE_ID {uid} repeated: {ctx}");
        assert!(pp_peers::tlv(rec, 0x03).is_some(), "no CRC32C TLV: {ctx}");
        assert_eq!(
            rec["crc32c_ok"], true,
            "CRC32C does not match the header: {ctx}"
        );
    }
    let local = pp_peers::wait_records(&refs(&pp), Duration::from_secs(5), |r| {
        r.iter().any(|x| x["command"] == "LOCAL")
    })
    .unwrap();
    let hc: Vec<&Value> = local.iter().filter(|x| x["command"] == "LOCAL").collect();
    assert!(
        !hc.is_empty() && hc.iter().all(|x| x["version"] == 2),
        "the health checks should send a PROXY v2 LOCAL header: {local:#?}"
    );
    all_up(&d, "default");
    bed.stop(d);
}

/// With the ClientHello TLVs on, a server-first protocol (the backend greets right after
/// the header) gets its greeting without sending a byte, at once; a plaintext client-first
/// request passes too, with UNIQUE_ID and CRC32C but no AUTHORITY or ALPN.
#[test]
fn tlvs_never_delay_a_server_first_protocol() {
    let bed = bed();
    let greet = pp_all(&bed, 2525, "greet", &[]);
    let http = pp_all(&bed, 8080, "http", &[]);
    let tlvs = "proxy_tlvs = [\"authority\", \"alpn\", \"unique-id\", \"crc32c\"]\n";
    let with_tlvs = |name, port| Svc {
        extra: tlvs,
        health: HEALTH_NONE,
        ..Svc::new(&bed, name, false, port)
    };
    let d = start_services(&bed, &[with_tlvs("smtp", 2525), with_tlvs("plain", 8080)]);
    let mut ports = Vec::new();
    for _ in 0..5 {
        let r = pp_to_vip(&bed, "greet", 2525, &[], Duration::from_secs(10));
        assert_eq!(
            r["ok"],
            true,
            "server-first through the LB: {r:#}\n{}",
            d.log()
        );
        assert_eq!(r["greeting"], "220 ready\r\n", "{r:#}");
        let secs = r["secs"].as_f64().unwrap_or(f64::MAX);
        assert!(
            secs < 0.5,
            "the greeting came {secs} s after the connect: the LB waited for a ClientHello"
        );
        assert_eq!(r["echo"], "QUIT\r\n", "{r:#}");
        ports.push(r["local_port"].as_u64().unwrap());
    }
    let recs =
        pp_peers::wait_records(&refs(&greet), Duration::from_secs(5), |r| r.len() >= 5).unwrap();
    for p in &ports {
        let rec = recs
            .iter()
            .find(|x| x["sport"].as_u64() == Some(*p))
            .unwrap_or_else(|| panic!("no record of port {p}: {recs:#?}"));
        assert!(
            pp_peers::tlv(rec, 0x02).is_none(),
            "AUTHORITY without a ClientHello: {rec:#}"
        );
        assert!(
            pp_peers::tlv(rec, 0x01).is_none(),
            "ALPN without a ClientHello: {rec:#}"
        );
        assert!(pp_peers::tlv(rec, 0x05).is_some(), "no UNIQUE_ID: {rec:#}");
        assert_eq!(rec["crc32c_ok"], true, "{rec:#}");
    }

    let r = curl_ok(&bed, &d, &format!("http://{VIP4}:8080/plain"), "plain");
    let recs =
        pp_peers::wait_records(&refs(&http), Duration::from_secs(5), |r| !r.is_empty()).unwrap();
    let rec = recs
        .iter()
        .find(|x| x["sport"].as_u64() == Some(u64::from(r.local_port)))
        .unwrap_or_else(|| panic!("no record of the plain request: {recs:#?}"));
    assert_eq!(rec["request"], "GET /plain HTTP/1.1", "{rec:#}");
    assert!(
        pp_peers::tlv(rec, 0x02).is_none(),
        "AUTHORITY for plaintext: {rec:#}"
    );
    assert_eq!(rec["crc32c_ok"], true, "{rec:#}");
    bed.stop(d);
}

/// A WebSocket session through the VIP (IPv4 and IPv6): python3-websockets' client
/// exchanges 100 messages and a 256 KiB binary one with a python3-websockets echo server
/// behind nginx (`listen 80 proxy_protocol`, Upgrade proxied), which logs the client.
#[test]
fn websocket_session() {
    let bed = bed();
    let ws_port = 8765;
    let _ws = on_every_backend(&bed, "ws", |b, dir| {
        receivers::start_ws_echo(&b.ns, dir, &b.name, ws_port)
    });
    let nginx = nginx_all(
        &bed,
        &NginxOpts {
            ws_upstream: Some(ws_port),
            ..http_only()
        },
    );
    let d = start_services(&bed, &Svc::pair(&bed, ["ws4", "ws6"], 80));
    let script = bed.topo.path("ws_client.py");
    std::fs::write(&script, receivers::WS_CLIENT).unwrap();
    let mut sent = Vec::new();
    for v6 in [false, true] {
        for src in client_addrs(&bed, v6) {
            let path = format!("/ws?{}", unique("t6"));
            let url = format!("ws://{}{path}", vip(v6, 80));
            let mut c = bed.topo.client.command("timeout");
            c.args(["-s", "KILL", "90", receivers::PYTHON])
                .arg(&script)
                .args([&url, &src.to_string(), "100"]);
            let out = cmd::output_any(&mut c).unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let words: Vec<&str> = text.split_whitespace().collect();
            assert!(
                out.status.success()
                    && words.first() == Some(&"ok")
                    && words.get(1) == Some(&"100"),
                "websocket client to {url} from {src}: {} {text}{}\ndaemon log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                d.log()
            );
            let local: SocketAddr = SocketAddr::new(
                words[2].parse().unwrap_or_else(|_| panic!("{text}")),
                words[3].parse().unwrap_or_else(|_| panic!("{text}")),
            );
            sent.push(Sent {
                path,
                src: local,
                vip: vip(v6, 80),
            });
        }
    }
    let per = check_nginx(&bed, &d, &nginx, &sent);
    for e in per.values().flatten() {
        if sent.iter().any(|s| s.path == e.uri) {
            assert_eq!(e.status, "101", "the WebSocket upgrade was logged as {e:?}");
        }
    }
    bed.stop(d);
}

/// The bulk transfer services: `up` (port 9000, to sinks) and `down` (port 9001, from
/// sources), unchecked.
fn transfer_services(bed: &Bed) -> [Svc<'static>; 2] {
    [
        Svc {
            health: HEALTH_NONE,
            ..Svc::new(bed, "up", false, 9000)
        },
        Svc {
            health: HEALTH_NONE,
            ..Svc::new(bed, "down", false, 9001)
        },
    ]
}

/// 1 GiB up and 1 GiB down through the VIP, with each splice engine: the backend's
/// sha256 of what it received is the client's of what it sent, and the reverse; each
/// direction within 120 s; lb_proxy_bytes_total counts them.
#[test]
fn one_gib_each_way_sha256_exact() {
    let bed = bed();
    let total = GIB.to_string();
    let _sink = pp_all(&bed, 9000, "sink", &[]);
    let source = pp_all(&bed, 9001, "source", &[&total]);
    for engine in ["sockmap", "pipe"] {
        let d = start_with_config(
            &bed,
            &format!("splice = \"{engine}\"\n"),
            &transfer_services(&bed),
        );
        let up = pp_to_vip(&bed, "upload", 9000, &[&total], Duration::from_secs(120));
        let ctx =
            |what: &str, r: &Value| format!("{engine}: {what}: {r:#}\ndaemon log:\n{}", d.log());
        assert_eq!(up["ok"], true, "{}", ctx("upload", &up));
        let want = format!("{} {GIB}", up["sha256"].as_str().unwrap_or("?"));
        assert_eq!(
            up["reply"].as_str(),
            Some(want.as_str()),
            "{}",
            ctx("upload: the backend received something else", &up)
        );
        eprintln!(
            "{engine}: 1 GiB up in {:.2} s",
            up["secs"].as_f64().unwrap_or(0.0)
        );

        let down = pp_to_vip(&bed, "download", 9001, &[], Duration::from_secs(120));
        assert_eq!(down["ok"], true, "{}", ctx("download", &down));
        assert_eq!(
            down["received"].as_u64(),
            Some(GIB),
            "{}",
            ctx("download size", &down)
        );
        let rec = &record_of(&source, &down, Duration::from_secs(10));
        assert_eq!(
            rec["sha256"],
            down["sha256"],
            "{}",
            ctx("download: the client received something else", rec)
        );
        eprintln!(
            "{engine}: 1 GiB down in {:.2} s",
            down["secs"].as_f64().unwrap_or(0.0)
        );

        let mut m = Vec::new();
        let counted = wait_until(Duration::from_secs(5), || {
            m = metrics(&d, &bed);
            Ok(prometheus::sum(
                &m,
                "lb_proxy_bytes_total",
                &[("service", "up"), ("direction", "in")],
            ) >= GIB as f64
                && prometheus::sum(
                    &m,
                    "lb_proxy_bytes_total",
                    &[("service", "down"), ("direction", "out")],
                ) >= GIB as f64)
        });
        assert!(
            counted,
            "{engine}: lb_proxy_bytes_total should count 1 GiB in (client to backend) for `up` and out for `down`: {:?}",
            prometheus::find(&m, "lb_proxy_bytes_total", &[])
        );
        d.stop(&bed.topo.lb)
            .unwrap_or_else(|e| panic!("{engine}: {e:#}"));
    }
}

/// Half-close both ways and reset propagation, with each splice engine:
/// - the client sends 256 KiB and shuts its write side: the backend sees EOF, then
///   replies 1 MiB and closes; the client gets all of it, then EOF;
/// - the backend sends and shuts its write side first: the client gets EOF and can still
///   send, and the backend receives that;
/// - the client resets (SO_LINGER 0): the backend sees a reset or EOF within a second;
/// - the backend resets: the client sees ECONNRESET within a second.
#[test]
fn half_close_and_resets_propagate() {
    let bed = bed();
    let hc = pp_all(&bed, 9100, "halfclose", &[]);
    let srvhalf = pp_all(&bed, 9101, "srvhalf", &[]);
    let watch = pp_all(&bed, 9102, "watch", &[]);
    let rst = pp_all(&bed, 9103, "rst", &[]);
    for engine in ["sockmap", "pipe"] {
        let svcs: Vec<Svc> = [
            ("hc", 9100),
            ("srvhalf", 9101),
            ("watch", 9102),
            ("rst", 9103),
        ]
        .into_iter()
        .map(|(name, port)| Svc {
            health: HEALTH_NONE,
            ..Svc::new(&bed, name, false, port)
        })
        .collect();
        let d = start_with_config(&bed, &format!("splice = \"{engine}\"\n"), &svcs);
        let ctx =
            |what: &str, r: &Value| format!("{engine}: {what}: {r:#}\ndaemon log:\n{}", d.log());
        // An event a peer saw (stamp `seen`) within a second of the other's action
        // (stamp `done`).
        let prompt = |what: &str, done: &Value, seen: &Value, rec: &Value| {
            let lag = seen.as_f64().unwrap() - done.as_f64().unwrap();
            assert!(
                lag < 1.0,
                "{}",
                ctx(&format!("{what} after {lag:.3} s"), rec)
            );
        };

        // Client half-close.
        let r = pp_to_vip(
            &bed,
            "halfclose",
            9100,
            &["262144"],
            Duration::from_secs(20),
        );
        assert_eq!(r["ok"], true, "{}", ctx("client half-close", &r));
        assert_eq!(
            r["reply_ok"],
            true,
            "{}",
            ctx("the reply after the client's FIN", &r)
        );
        let rec = &record_of(&hc, &r, Duration::from_secs(5));
        assert_eq!(
            rec["received"],
            262144,
            "{}",
            ctx("backend side of the half-close", rec)
        );
        assert_eq!(
            rec["sha256"],
            r["sha256"],
            "{}",
            ctx("backend side of the half-close", rec)
        );
        assert!(
            rec.get("error").is_none(),
            "{}",
            ctx("backend side of the half-close", rec)
        );

        // Backend half-close.
        let r = pp_to_vip(&bed, "srvhalf", 9101, &[], Duration::from_secs(20));
        assert_eq!(r["ok"], true, "{}", ctx("backend half-close", &r));
        assert_eq!(r["got"], "bye\n", "{}", ctx("backend half-close", &r));
        let rec = &record_of(&srvhalf, &r, Duration::from_secs(5));
        assert_eq!(
            rec["after"],
            "after the backend's FIN\n",
            "{}",
            ctx("the client's bytes after the backend's FIN", rec)
        );

        // Client reset.
        let r = pp_to_vip(&bed, "rst_client", 9102, &[], Duration::from_secs(10));
        assert_eq!(r["ok"], true, "{}", ctx("client reset", &r));
        // The backend records the connection when it sees its end.
        let rec = &record_of(&watch, &r, Duration::from_secs(5));
        assert!(
            rec["outcome"] == "reset" || rec["outcome"] == "eof",
            "{}",
            ctx("backend after the client's reset", rec)
        );
        assert_eq!(
            rec["received"],
            5,
            "{}",
            ctx("backend after the client's reset", rec)
        );
        prompt(
            "the backend saw the client's reset",
            &r["t_rst"],
            &rec["t_event"],
            rec,
        );

        // Backend reset.
        let r = pp_to_vip(&bed, "rst_wait", 9103, &[], Duration::from_secs(10));
        assert_eq!(r["ok"], true, "{}", ctx("backend reset", &r));
        assert_eq!(
            r["outcome"],
            "reset",
            "{}",
            ctx("the client after the backend's reset", &r)
        );
        let rec = &record_of(&rst, &r, Duration::from_secs(5));
        prompt(
            "the client saw the backend's reset",
            &rec["t_rst"],
            &r["t_event"],
            &r,
        );
        d.stop(&bed.topo.lb)
            .unwrap_or_else(|e| panic!("{engine}: {e:#}"));
    }
}

/// /metrics: lb_proxy_connections_total per service and backend adds up to the
/// connections made and matches, backend by backend, what the nginx logs show;
/// lb_proxy_bytes_total grows with a request in both directions; no connection stays
/// active; promtool accepts the exposition.
#[test]
fn proxy_metrics_count_connections_and_bytes() {
    let bed = bed();
    let nginx = http_nginx(&bed);
    let d = start_proxy(&bed, 80, &["--health-interval", "1s"]);
    const N: usize = 30;
    let sent = http_from(
        &bed,
        &d,
        vip(false, 80),
        &client_addrs(&bed, false)[..1],
        N,
        "t11",
    );
    let per = check_nginx(&bed, &d, &nginx, &sent);
    let mut m = Vec::new();
    let settled = wait_until(Duration::from_secs(5), || {
        m = metrics(&d, &bed);
        Ok(
            prometheus::sum(&m, "lb_proxy_connections_total", &[("service", "default")])
                >= N as f64
                && prometheus::sum(&m, "lb_proxy_active_connections", &[]) == 0.0,
        )
    });
    let dump = |m: &[prometheus::Sample]| {
        format!(
            "{:?}\n{:?}\ndaemon log:\n{}",
            prometheus::find(m, "lb_proxy_connections_total", &[]),
            prometheus::find(m, "lb_proxy_active_connections", &[]),
            d.log()
        )
    };
    assert!(
        settled,
        "connections not all counted, or some still active: {}",
        dump(&m)
    );
    assert_eq!(
        prometheus::sum(&m, "lb_proxy_connections_total", &[("service", "default")]),
        N as f64,
        "{N} connections made: {}",
        dump(&m)
    );
    assert_eq!(
        prometheus::sum(
            &m,
            "lb_proxy_accepted_connections_total",
            &[("service", "default")]
        ),
        N as f64,
        "{N} client connections accepted: {:?}",
        prometheus::find(&m, "lb_proxy_accepted_connections_total", &[])
    );
    for b in &bed.topo.backends {
        let logged = per[&b.name]
            .iter()
            .filter(|e| sent.iter().any(|s| s.path == e.uri))
            .count();
        let counted = prometheus::sum(
            &m,
            "lb_proxy_connections_total",
            &[("service", "default"), ("backend", &b.addr4().to_string())],
        );
        assert_eq!(
            counted,
            logged as f64,
            "backend {}: nginx logged {logged} requests, lb counted {counted}: {}",
            b.name,
            dump(&m)
        );
    }
    let bytes = |m: &[prometheus::Sample], dir: &str| {
        prometheus::sum(
            m,
            "lb_proxy_bytes_total",
            &[("service", "default"), ("direction", dir)],
        )
    };
    let (in0, out0) = (bytes(&m, "in"), bytes(&m, "out"));
    assert!(
        in0 > 0.0 && out0 > 0.0,
        "lb_proxy_bytes_total: {:?}",
        prometheus::find(&m, "lb_proxy_bytes_total", &[])
    );
    let long_path = format!("/{}", "x".repeat(4000));
    let r = curl(&bed, &format!("http://{VIP4}{long_path}"), &[]);
    assert!(r.exit == Some(0) && r.http_code == "200", "{r:?}");
    let grew = wait_until(Duration::from_secs(5), || {
        let m = metrics(&d, &bed);
        Ok(bytes(&m, "in") >= in0 + 4000.0 && bytes(&m, "out") > out0)
    });
    assert!(
        grew,
        "lb_proxy_bytes_total did not grow by the 4 kB request: {:?}",
        prometheus::find(&metrics(&d, &bed), "lb_proxy_bytes_total", &[])
    );
    let (_, body) = admin::get(&bed.topo.lb, "/metrics").unwrap();
    prometheus::promtool_check(&body).unwrap_or_else(|e| panic!("{e:#}"));
    bed.stop(d);
}

/// `n` requests to `url`; each must succeed (status 200). Returns (body, seconds) each.
fn requests(bed: &Bed, d: &Daemon, url: &str, n: usize, what: &str) -> Vec<(String, f64)> {
    (0..n)
        .map(|_| {
            let t = std::time::Instant::now();
            let r = curl_ok(bed, d, url, what);
            (r.body.trim().to_owned(), t.elapsed().as_secs_f64())
        })
        .collect()
}

/// With no health checks (so only the connect retry can help): a backend whose server is
/// gone (connects refused) and one whose port drops everything (connects time out after
/// --connect-timeout 1s) are skipped for the next backend in Maglev order, and every
/// connection succeeds on the third, counted as connect_refused / connect_timeout; with
/// every backend refusing, the client is reset within a second.
#[test]
fn refusing_or_silent_backend_is_skipped() {
    let bed = bed();
    let nginx = http_nginx(&bed);
    let d = start_proxy(&bed, 80, &["--health", "none", "--connect-timeout", "1s"]);
    let url = format!("http://{VIP4}/t9");
    let before = requests(&bed, &d, &url, 30, "all up");
    let names: BTreeSet<&str> = before.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(
        names.len(),
        3,
        "30 connections did not reach all three backends: {before:?}"
    );

    let (b2, b3) = (bed.backend("b2"), bed.backend("b3"));
    receivers::stop(&b2.ns, &nginx[1].proc).unwrap();
    let got = requests(&bed, &d, &url, 45, "b2 refusing");
    assert!(
        got.iter().all(|(b, _)| b == "b1" || b == "b3"),
        "with b2 refusing: {got:?}"
    );
    counted(&d, &bed, "connect_refused");

    backend_ctl::block_port(b3, 80).unwrap();
    let got = requests(&bed, &d, &url, 30, "b2 refusing, b3 silent");
    backend_ctl::unblock(b3).unwrap();
    assert!(
        got.iter().all(|(b, _)| b == "b1"),
        "with b2 refusing and b3 silent: {got:?}"
    );
    let slow = got.iter().filter(|(_, s)| *s >= 0.9).count();
    assert!(
        slow > 0 && got.iter().all(|(_, s)| *s < 1.0 + 2.0),
        "connections whose first choice was b3 should wait --connect-timeout (1 s) once: {got:?}"
    );
    counted(&d, &bed, "connect_timeout");

    receivers::stop(&bed.backend("b1").ns, &nginx[0].proc).unwrap();
    receivers::stop(&b3.ns, &nginx[2].proc).unwrap();
    for _ in 0..5 {
        let r = pp_to_vip(&bed, "reset_check", 80, &[], Duration::from_secs(10));
        assert_eq!(r["ok"], true, "{r:#}");
        let secs = r["secs"].as_f64().unwrap_or(f64::MAX);
        assert!(
            r["outcome"] == "reset" && secs < 1.0,
            "with every backend refusing the client should be reset at once: {r:#}\ndaemon log:\n{}",
            d.log()
        );
    }
    // The reset may reach curl before it sees its connect complete (exit 7) or after
    // (exit 56); either way it has no local address to report, so run it bare.
    let out = cmd::output_any(bed.topo.client.command("curl").args([
        "-s",
        "--connect-timeout",
        "3",
        "--max-time",
        "10",
        &url,
    ]))
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        matches!(out.status.code(), Some(7) | Some(56)),
        "curl with every backend refusing: {:?} {} (expected exit 7 or 56: connection reset)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    bed.stop(d);
}

/// `--accept-proxy`: the client's own v2 (IPv4, IPv6) or v1 header names the client the
/// backend logs; a malformed header resets the connection and is counted under its
/// accept_proxy_* reason and logged.
#[test]
fn accept_proxy_forwards_the_original_client() {
    let bed = bed();
    let nginx = http_nginx(&bed);
    let edges = Svc::pair(&bed, ["edge4", "edge6"], 80).map(|s| Svc {
        extra: "accept_proxy = true\n",
        ..s
    });
    let d = start_services(&bed, &edges);
    let request =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n");
    let claims: [(SocketAddr, bool); 3] = [
        ("198.18.77.7:1234".parse().unwrap(), true),
        ("198.18.77.8:4321".parse().unwrap(), false),
        ("[fd00:77::7]:1235".parse().unwrap(), true),
    ];
    let mut sent = Vec::new();
    for (claimed, v2) in claims {
        let path = format!("/{}", unique("t10"));
        let to = vip(claimed.is_ipv6(), 80);
        let mut bytes = if v2 {
            pp_peers::v2_header(claimed, to).unwrap()
        } else {
            pp_peers::v1_header(claimed, to).unwrap()
        };
        bytes.extend_from_slice(request(&path).as_bytes());
        let r = pp_client(
            &bed,
            &[
                "raw",
                &to.ip().to_string(),
                "80",
                "-",
                &pp_peers::hex(&bytes),
            ],
            Duration::from_secs(10),
        );
        assert!(
            r["outcome"] == "response"
                && r["response"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("HTTP/1.1 200"),
            "request with a {} header claiming {claimed}: {r:#}\ndaemon log:\n{}",
            if v2 { "v2" } else { "v1" },
            d.log()
        );
        sent.push(Sent {
            path,
            src: claimed,
            vip: to,
        });
    }
    check_nginx(&bed, &d, &nginx, &sent);

    let mut bad_version =
        pp_peers::v2_header("198.18.77.9:1".parse().unwrap(), vip(false, 80)).unwrap();
    bad_version[12] = 0x31;
    let malformed: [(&str, Vec<u8>); 3] = [
        ("bad_signature", Vec::new()),
        ("bad_version", bad_version),
        (
            "bad_v1_address",
            b"PROXY TCP4 198.18.77.300 198.18.100.1 1 80\r\n".to_vec(),
        ),
    ];
    for (reason, header) in malformed {
        let label = format!("accept_proxy_{reason}");
        let before = proxy_errors(&metrics(&d, &bed), &[("reason", &label)]);
        let path = format!("/{}", unique("t10bad"));
        let mut bytes = header;
        bytes.extend_from_slice(request(&path).as_bytes());
        let r = pp_to_vip(
            &bed,
            "raw",
            80,
            &[&pp_peers::hex(&bytes)],
            Duration::from_secs(10),
        );
        assert_eq!(
            r["outcome"],
            "reset",
            "a {reason} header should get the connection reset: {r:#}\ndaemon log:\n{}",
            d.log()
        );
        let mut after = before;
        wait_until(Duration::from_secs(3), || {
            after = proxy_errors(&metrics(&d, &bed), &[("reason", &label)]);
            Ok(after >= before + 1.0)
        });
        assert_eq!(
            after,
            before + 1.0,
            "lb_proxy_errors_total{{reason=\"{label}\"}} went from {before} to {after}: {:?}",
            prometheus::find(&metrics(&d, &bed), "lb_proxy_errors_total", &[])
        );
        assert!(
            !d.log_lines_with(&[reason]).is_empty()
                || !d.log_lines_with(&["accept", "proxy"]).is_empty(),
            "the daemon log does not mention the {reason} header:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            nginx.iter().all(|n| n
                .entries()
                .unwrap_or_default()
                .iter()
                .all(|e| e.uri != path)),
            "the request behind a {reason} header reached a backend"
        );
    }
    bed.stop(d);
}

/// The receivers themselves, without lb: hand-made PROXY headers sent straight from the
/// client to each backend (routed through the LB namespace, no VIP) are logged as the
/// address they claim by nginx (HTTP and TLS), HAProxy and the python backend, whose
/// CRC32C check accepts a valid checksum and rejects a wrong one. A failure here is the
/// test bed's, not lb's.
#[test]
fn receivers_accept_hand_made_headers() {
    let bed = bed();
    let (cert, nginx) = tls_nginx(&bed);
    let b1 = bed.backend("b1");
    let hap = receivers::start_haproxy(&b1.ns, &bed.topo.path("hap-ctl"), "b1", 8081)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let pp = pp_peers::start_server(&b1.ns, bed.topo.dir.path(), "b1", 8082, "http", &[])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let to = |port| SocketAddr::new(IpAddr::V4(b1.v4), port);
    let claimed: SocketAddr = "198.18.77.7:1234".parse().unwrap();
    let req = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let send = |port: u16, header: Vec<u8>, path: &str| {
        let mut bytes = header;
        bytes.extend_from_slice(req(path).as_bytes());
        pp_client(
            &bed,
            &[
                "raw",
                &b1.v4.to_string(),
                &port.to_string(),
                "-",
                &pp_peers::hex(&bytes),
            ],
            Duration::from_secs(10),
        )
    };
    // The raw client's report shows an HTTP 200; `log` is the receiver's, for a failure.
    let answered = |r: &Value, log: String| {
        let response = r["response"].as_str().unwrap_or("");
        assert!(response.starts_with("HTTP/1.1 200"), "{r:#}\n{log}");
    };
    // nginx, v2 and v1.
    for v2 in [true, false] {
        let header = if v2 {
            pp_peers::v2_header(claimed, to(80)).unwrap()
        } else {
            pp_peers::v1_header(claimed, to(80)).unwrap()
        };
        let r = send(80, header, "/ctl-nginx");
        answered(&r, nginx[0].errors());
    }
    let e: Vec<NginxEntry> = nginx[0].entries().unwrap();
    assert_eq!(e.len(), 2, "{e:?}\n{}", nginx[0].errors());
    assert!(
        e.iter()
            .all(|e| e.pp_addr == "198.18.77.7" && e.pp_port == "1234"),
        "{e:?}"
    );
    // HAProxy.
    let r = send(
        8081,
        pp_peers::v2_header(claimed, to(8081)).unwrap(),
        "/ctl-hap",
    );
    answered(&r, hap.proc.output());
    assert!(
        wait_until(Duration::from_secs(5), || Ok(
            hap.entries()?
                .iter()
                .any(|e| e.client_addr == "198.18.77.7" && e.client_port == "1234")
        )),
        "haproxy log:\n{}",
        hap.proc.output()
    );
    // The python backend: a header with a valid CRC32C TLV, then a broken one.
    let with_crc = |crc: Option<u32>| {
        let mut h = pp_peers::v2_header(claimed, to(8082)).unwrap();
        let mut tlv = vec![0x03, 0, 4, 0, 0, 0, 0];
        tlv.extend_from_slice(&[0x05, 0, 2, 0xab, 0xcd]);
        h.extend_from_slice(&tlv);
        let len = u16::from_be_bytes([h[14], h[15]]) + tlv.len() as u16;
        h[14..16].copy_from_slice(&len.to_be_bytes());
        let value = crc.unwrap_or_else(|| crc32c(&h));
        h[16 + 12 + 3..16 + 12 + 7].copy_from_slice(&value.to_be_bytes());
        h
    };
    send(8082, with_crc(None), "/ctl-good");
    send(8082, with_crc(Some(0x1234_5678)), "/ctl-bad");
    let recs = pp_peers::wait_records(&[&pp], Duration::from_secs(5), |r| r.len() >= 2).unwrap();
    let good = recs
        .iter()
        .find(|r| r["request"] == "GET /ctl-good HTTP/1.1")
        .unwrap();
    let bad = recs
        .iter()
        .find(|r| r["request"] == "GET /ctl-bad HTTP/1.1")
        .unwrap();
    assert_eq!(good["crc32c_ok"], true, "{good:#}");
    assert_eq!(good["src"], "198.18.77.7", "{good:#}");
    assert_eq!(
        pp_peers::tlv(good, 0x05).map(|t| t.0).as_deref(),
        Some("abcd")
    );
    assert_eq!(bad["crc32c_ok"], false, "{bad:#}");
    // nginx over TLS behind a header: curl's own `--haproxy-protocol` (v1).
    let r = curl(
        &bed,
        &format!("https://{TLS_HOST}/ctl-tls"),
        &[
            "--haproxy-protocol",
            "--resolve",
            &format!("{TLS_HOST}:443:{}", b1.v4),
            "--cacert",
            &cert.cert.to_string_lossy(),
        ],
    );
    assert!(
        r.exit == Some(0) && r.body == "b1 tls\n",
        "{r:?}\n{}",
        nginx[0].errors()
    );
    let tls_entry = wait_until(Duration::from_secs(5), || {
        Ok(nginx[0]
            .entries()?
            .iter()
            .any(|e| e.uri == "/ctl-tls" && e.scheme == "https"))
    });
    assert!(tls_entry, "{:?}", nginx[0].entries());
}

/// CRC32C (Castagnoli), bitwise, for the control test's hand-made header.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & 0u32.wrapping_sub(crc & 1));
        }
    }
    !crc
}

/// SIGTERM in proxy-v2 mode: no new connection is accepted, but the proxied ones go on
/// until they end (a paced download completes, sha256-exact) within `--shutdown-timeout`;
/// past it the daemon cuts what is left and exits.
#[test]
fn sigterm_lets_proxied_connections_finish_within_the_shutdown_timeout() {
    let bed = bed();
    // 3 MiB at 1 MiB/s: about 3 s, well inside a 30 s deadline.
    let size = (3u64 << 20).to_string();
    let source = pp_all(&bed, 9001, "source", &[&size]);
    let mut d = start_proxy(
        &bed,
        9001,
        &["--health", "none", "--shutdown-timeout", "30s"],
    );
    let (down, late) = std::thread::scope(|s| {
        let download = s.spawn(|| {
            pp_to_vip(
                &bed,
                "download",
                9001,
                &["1048576"],
                Duration::from_secs(60),
            )
        });
        std::thread::sleep(Duration::from_secs(1));
        d.signal(libc::SIGTERM).unwrap_or_else(|e| panic!("{e:#}"));
        std::thread::sleep(Duration::from_millis(300));
        // While it drains, the daemon takes no new connection.
        let late = pp_to_vip(&bed, "reset_check", 9001, &[], Duration::from_secs(10));
        (download.join().expect("download thread"), late)
    });
    assert_eq!(
        down["ok"],
        true,
        "download across SIGTERM: {down:#}\n{}",
        d.log()
    );
    assert_eq!(down["received"].as_u64(), Some(3 << 20), "{down:#}");
    let rec = record_of(&source, &down, Duration::from_secs(10));
    assert_eq!(
        rec["sha256"], down["sha256"],
        "the client received something else"
    );
    assert_ne!(
        late["outcome"], "data",
        "a connection after SIGTERM was served: {late:#}"
    );
    let status = d
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "lb exited with {status}:\n{}", d.log());
    d.expect_log(&["waiting for proxied connections to end"]);

    // A deadline shorter than the download: cut at the deadline, then the daemon exits.
    let mut d = start_proxy(
        &bed,
        9001,
        &["--health", "none", "--shutdown-timeout", "1s"],
    );
    let (down, exited_after) = std::thread::scope(|s| {
        let download =
            s.spawn(|| pp_to_vip(&bed, "download", 9001, &["262144"], Duration::from_secs(60)));
        std::thread::sleep(Duration::from_secs(1));
        let t = std::time::Instant::now();
        d.signal(libc::SIGTERM).unwrap_or_else(|e| panic!("{e:#}"));
        let status = d
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(status.success(), "lb exited with {status}:\n{}", d.log());
        (download.join().expect("download thread"), t.elapsed())
    });
    assert!(
        exited_after >= Duration::from_millis(900) && exited_after < Duration::from_secs(5),
        "lb exited {exited_after:?} after SIGTERM, the deadline was 1 s:\n{}",
        d.log()
    );
    assert_eq!(
        down["ok"], false,
        "the download outlived the deadline: {down:#}"
    );
    assert!(down["received"].as_u64().unwrap_or(0) < 3 << 20, "{down:#}");
    d.expect_log(&["cutting the proxied connections still open"]);
}

/// How long the new daemon of an upgrade has to be ready while the transfers run.
const NEW_READY_WITHIN: Duration = Duration::from_secs(35);
/// The bound on the upgrade's stream of short connections, should nothing stop it.
const SHORT_FOR_AT_MOST: Duration = Duration::from_secs(150);

/// Sets the flag when dropped, on a panic too.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An upgrade in `proxy-v2` mode, with each splice engine: a second lb started beside
/// the running one takes over. A 1 GiB upload and a 1 GiB download, paced to last
/// across it, arrive sha256-exact; short connections made throughout are all served
/// (none refused while the listeners change hands); and the old daemon exits while the
/// transfers still run, so they were handed over, not waited for. Both daemons run
/// through `nsenter`, so they share the host's bpffs, where the state lives.
#[test]
fn upgrade_hands_every_proxied_connection_over() {
    let bed = bed();
    let gib = GIB.to_string();
    // 24 MiB/s: each transfer lasts about 43 s, longer than the new daemon may take to
    // load and verify its programs while they run on a busy two-CPU machine (up to 10 s
    // seen, over 20 s once); it has `NEW_READY_WITHIN`.
    let rate = (24u64 << 20).to_string();
    let _sink = pp_all(&bed, 9000, "sink", &[]);
    let source = pp_all(&bed, 9001, "source", &[&gib]);
    for engine in ["sockmap", "pipe"] {
        let path = bed.topo.path(&format!("{}.toml", unique("lb")));
        let svcs = transfer_services(&bed);
        std::fs::write(
            &path,
            config(&bed, &format!("splice = \"{engine}\"\n"), &svcs),
        )
        .unwrap();
        let args = ["--config".to_owned(), path.display().to_string()];
        let mut old = bed.start_via(Launch::Nsenter, &args);
        let stop_short = std::sync::atomic::AtomicBool::new(false);
        let (up, down, short, old_gone_at, new) = std::thread::scope(|s| {
            let up = s.spawn(|| {
                let r = pp_to_vip(
                    &bed,
                    "upload",
                    9000,
                    &[&gib, &rate],
                    Duration::from_secs(90),
                );
                (r, std::time::Instant::now())
            });
            let down = s.spawn(|| {
                let r = pp_to_vip(&bed, "download", 9001, &[&rate], Duration::from_secs(90));
                (r, std::time::Instant::now())
            });
            let short = s.spawn(|| {
                let mut results = Vec::new();
                let began = std::time::Instant::now();
                while !stop_short.load(std::sync::atomic::Ordering::Relaxed)
                    && began.elapsed() < SHORT_FOR_AT_MOST
                {
                    results.push(pp_to_vip(
                        &bed,
                        "upload",
                        9000,
                        &["1000"],
                        Duration::from_secs(10),
                    ));
                }
                results
            });
            // A panic below (a daemon not ready, the old one not gone) must still end the
            // short connections, or the scope waits for them.
            let _stop = StopOnDrop(&stop_short);
            std::thread::sleep(Duration::from_secs(2));
            let new = bed.start_within(Launch::Nsenter, &args, NEW_READY_WITHIN);
            let status = old
                .wait_exit(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("{engine}: the old daemon did not go: {e:#}"));
            let old_gone_at = std::time::Instant::now();
            assert!(
                status.success(),
                "{engine}: old daemon: {status}\n{}",
                old.log()
            );
            old.superseded();
            std::thread::sleep(Duration::from_secs(1));
            stop_short.store(true, std::sync::atomic::Ordering::Relaxed);
            (
                up.join().expect("upload thread"),
                down.join().expect("download thread"),
                short.join().expect("short connections thread"),
                old_gone_at,
                new,
            )
        });
        let ctx = |what: &str, r: &Value| {
            format!(
                "{engine}: {what}: {r:#}\nold daemon:\n{}\nnew daemon:\n{}",
                old.log(),
                new.log()
            )
        };
        let (up, up_end) = up;
        let (down, down_end) = down;
        assert_eq!(up["ok"], true, "{}", ctx("upload", &up));
        assert_eq!(
            up["reply"].as_str(),
            Some(format!("{} {GIB}", up["sha256"].as_str().unwrap_or("?")).as_str()),
            "{}",
            ctx("upload: the backend received something else", &up)
        );
        assert_eq!(down["ok"], true, "{}", ctx("download", &down));
        assert_eq!(
            down["received"].as_u64(),
            Some(GIB),
            "{}",
            ctx("download", &down)
        );
        let rec = record_of(&source, &down, Duration::from_secs(10));
        assert_eq!(
            rec["sha256"],
            down["sha256"],
            "{}",
            ctx("download: the client received something else", &rec)
        );
        assert!(
            old_gone_at < up_end && old_gone_at < down_end,
            "{engine}: the old daemon outlived the transfers (upload {:.1} s, download {:.1} s): they were not handed over\nold daemon:\n{}\nnew daemon:\n{}",
            up["secs"].as_f64().unwrap_or(0.0),
            down["secs"].as_f64().unwrap_or(0.0),
            old.log(),
            new.log()
        );
        old.expect_log(&["handed the proxied connections over"]);
        let took = new.log_lines_with(&["took over the proxied connections"]);
        let n: u64 = took
            .iter()
            .filter_map(|l| l.split("connections=").nth(1))
            .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        assert!(
            n >= 2,
            "{engine}: the new daemon took over {n} connections, not both transfers: {took:?}\n{}",
            new.log()
        );
        assert!(
            short.len() >= 10,
            "{engine}: only {} short connections",
            short.len()
        );
        let failed: Vec<&Value> = short.iter().filter(|r| r["ok"] != true).collect();
        assert!(
            failed.is_empty(),
            "{engine}: {} of {} short connections failed across the upgrade: {failed:#?}\n{}",
            failed.len(),
            short.len(),
            new.log()
        );
        new.stop(&bed.topo.lb)
            .unwrap_or_else(|e| panic!("{engine}: {e:#}"));
    }
}
