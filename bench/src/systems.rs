//! The systems compared, each run in turn in the LB namespace on the same VIP and the
//! same backends: lb (nat; proxy-v2 once issue 4 lands), HAProxy and nginx stream (each
//! without and with PROXY v2 toward backends that parse it), nftables DNAT, and no load
//! balancer at all (the ceiling). A new system is one more [`System`] entry and one
//! more arm in [`start`].

use crate::bed::{
    Bed, CLIENT_V4, HTTP_PORT, IPERF_PORT, LB_CPU, NGINX_STREAM_MODULE, PPS_BACKEND_PORTS,
    PPS_PORT, PROXY_PORT, Proc, VIP, check_nginx_conf, nginx_common, pinned,
};
use crate::cpu;
use anyhow::{Context, Result, bail};
use aya::programs::xdp::XdpLink;
use lb_tests::netns::wait_until;
use lb_tests::{Daemon, Launch};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum System {
    LbNat,
    LbDnat,
    LbDsr,
    LbProxyV2,
    LbProxyV2Sockmap,
    Haproxy,
    HaproxyPp2,
    Nginx,
    NginxPp,
    NftFullnat,
    NftDnat,
    NoLb,
    XdpBare,
}

/// Every system, in the order of the tables.
pub const ALL: [System; 13] = [
    System::LbNat,
    System::LbDnat,
    System::LbDsr,
    System::LbProxyV2,
    System::LbProxyV2Sockmap,
    System::Haproxy,
    System::HaproxyPp2,
    System::Nginx,
    System::NginxPp,
    System::NftFullnat,
    System::NftDnat,
    System::NoLb,
    System::XdpBare,
];

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::LbNat => "lb-nat",
            System::LbDnat => "lb-dnat",
            System::LbDsr => "lb-dsr",
            System::LbProxyV2 => "lb-proxy-v2",
            System::LbProxyV2Sockmap => "lb-proxy-v2-sockmap",
            System::Haproxy => "haproxy",
            System::HaproxyPp2 => "haproxy-pp2",
            System::Nginx => "nginx",
            System::NginxPp => "nginx-pp",
            System::NftFullnat => "nft-fullnat",
            System::NftDnat => "nft-dnat",
            System::NoLb => "no-lb",
            System::XdpBare => "xdp-bare",
        }
    }

    /// One line for the report.
    pub fn describe(self) -> &'static str {
        match self {
            System::LbNat => {
                "lb, mode nat: XDP full NAT (native mode on the LB's veths), Maglev over the 3 backends"
            }
            System::LbDnat => {
                "lb, mode dnat: XDP destination NAT (the backends see the client's address and route their replies back through the LB, which rewrites them)"
            }
            System::LbDsr => {
                "lb, mode dsr, encap l2: the client's packets go to the backends unchanged but for the MAC (the VIP is on the backends' `lo`); the replies go straight to the client over a link of their own, not through the LB host"
            }
            System::LbProxyV2 => {
                "lb, mode proxy-v2, `splice = \"pipe\"` (the default: splice(2) through a pipe), PROXY v2 header to the backends' `proxy_protocol` listeners"
            }
            System::LbProxyV2Sockmap => {
                "lb, mode proxy-v2, `splice = \"sockmap\"` (sk_skb sockmap redirect), PROXY v2 header to the backends' `proxy_protocol` listeners"
            }
            System::Haproxy => "HAProxy `mode tcp`, one thread, roundrobin over the 3 backends",
            System::HaproxyPp2 => {
                "HAProxy `mode tcp` with `send-proxy-v2` to backends' `proxy_protocol` listeners"
            }
            System::Nginx => "nginx `stream`, one worker, round robin over the 3 backends",
            System::NginxPp => {
                "nginx `stream` with `proxy_protocol on` to backends' `proxy_protocol` listeners"
            }
            System::NftFullnat => {
                "nftables full NAT, what lb's `nat` mode does: the same DNAT as nft-dnat plus `masquerade` out of the backend side, so the backends see the LB's address (conntrack)"
            }
            System::NftDnat => {
                "nftables DNAT, `numgen random mod 3` map over the 3 backends (conntrack; no SNAT)"
            }
            System::NoLb => {
                "no load balancer (the ceiling): each client thread talks to one of the 3 backends, routed by the LB namespace's kernel; iperf3 to b1"
            }
            System::XdpBare => {
                "bare XDP (the packet-rate ceiling): a program that only redirects every frame from the LB's client side to its backend side; packet-rate workloads only"
            }
        }
    }

    /// Whether the system attaches an XDP program to the LB's veths itself. The others
    /// get `bench_pass` there when a workload needs the veths' NAPI (a veth has one only
    /// with an XDP program).
    pub fn has_own_xdp(self) -> bool {
        matches!(
            self,
            System::LbNat
                | System::LbDnat
                | System::LbDsr
                | System::LbProxyV2
                | System::LbProxyV2Sockmap
                | System::XdpBare
        )
    }

    /// Whether the system sends a PROXY v2 header, so its backends are the PROXY
    /// listeners.
    pub fn sends_proxy_v2(self) -> bool {
        matches!(
            self,
            System::LbProxyV2 | System::LbProxyV2Sockmap | System::HaproxyPp2 | System::NginxPp
        )
    }

    /// One of ours (the systems the ratios are computed for).
    pub fn is_lb(self) -> bool {
        matches!(
            self,
            System::LbNat
                | System::LbDnat
                | System::LbDsr
                | System::LbProxyV2
                | System::LbProxyV2Sockmap
        )
    }

    /// The VIP the system serves. Each of lb's proxy-v2 variants has its own: its
    /// proxied connections' TIME_WAIT sockets hold VIP:port for a minute after it
    /// stops, and a user-space proxy started next could not bind it.
    pub fn vip(self) -> Ipv4Addr {
        match self {
            System::LbProxyV2 => Ipv4Addr::new(198, 18, 100, 2),
            System::LbProxyV2Sockmap => Ipv4Addr::new(198, 18, 100, 3),
            _ => VIP,
        }
    }

    /// The backend port the system forwards HTTP to.
    fn backend_http_port(self) -> u16 {
        if self.sends_proxy_v2() {
            PROXY_PORT
        } else {
            HTTP_PORT
        }
    }
}

/// Whether a system can run on this build.
pub enum Availability {
    Ready,
    NotBuilt(String),
}

/// lb's config file for `system`: the HTTP service over the three backends and the
/// bulk (iperf3) service over b1.
fn lb_config(system: System, bed: &Bed) -> String {
    let (mode, splice) = match system {
        System::LbProxyV2 => ("proxy-v2", Some("pipe")),
        System::LbProxyV2Sockmap => ("proxy-v2", Some("sockmap")),
        System::LbDnat => ("dnat", None),
        System::LbDsr => ("dsr", None),
        _ => ("nat", None),
    };
    // The bulk service is full NAT except where the mode forwards bytes another way.
    let bulk_mode = match system {
        System::LbDnat | System::LbDsr => mode,
        _ => "nat",
    };
    let list = |addrs: Vec<SocketAddr>| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = String::new();
    let ifaces = bed
        .topo
        .lb_ifaces
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    writeln!(s, "iface = [{ifaces}]").unwrap();
    writeln!(s, "xdp_mode = \"native\"").unwrap();
    // lb's own timeouts: a closed flow's SNAT port goes back as soon as the backend
    // would take a new SYN on it, so the closed timeout does not bound the rate.
    writeln!(s, "admin = \"127.0.0.1:9100\"").unwrap();
    if let Some(engine) = splice {
        writeln!(s, "splice = \"{engine}\"").unwrap();
    }
    for (name, port, addrs) in [
        (
            "web",
            HTTP_PORT,
            bed.backend_addrs(system.backend_http_port()),
        ),
        (
            "bulk",
            IPERF_PORT,
            bed.backend_addrs(IPERF_PORT)[..1].to_vec(),
        ),
    ] {
        writeln!(
            s,
            "\n[[service]]\nname = \"{name}\"\nvip = \"{}:{port}\"\nmode = \"{}\"{}\nbackends = [{}]",
            system.vip(),
            if name == "bulk" { bulk_mode } else { mode },
            if system == System::LbDsr {
                "\nencap = \"l2\""
            } else {
                ""
            },
            list(addrs)
        )
        .unwrap();
        if name == "web" && bed.flood_filtered {
            // `--filter-flood`: only the client may open connections, so the flood's
            // SYNs are dropped at the security group, before any flow lookup or cookie.
            writeln!(s, "allow = [\"{CLIENT_V4}/32\"]").unwrap();
        }
    }
    if system == System::LbNat {
        // The packet-rate workloads' service: nothing listens behind it (the sink drops
        // its frames on the way), so no health check; 3 hosts x 4 ports, so 100,000
        // flows find SNAT ports.
        let backends: Vec<SocketAddr> = PPS_BACKEND_PORTS
            .flat_map(|port| bed.backend_addrs(port))
            .collect();
        writeln!(
            s,
            "\n[[service]]\nname = \"pps\"\nvip = \"{}:{PPS_PORT}\"\nmode = \"nat\"\nbackends = [{}]\n\n[service.health]\ncheck = \"none\"",
            system.vip(),
            list(backends)
        )
        .unwrap();
    }
    s
}

/// Whether `system` exists in this build. lb's proxy-v2 mode is looked for by asking
/// `lb --check` to accept a config that uses it, so the entry turns itself on when
/// issue 4 lands.
pub fn availability(system: System, bed: &Bed, lb_bin: &Path) -> Result<Availability> {
    if !matches!(system, System::LbProxyV2 | System::LbProxyV2Sockmap) {
        return Ok(Availability::Ready);
    }
    let conf = bed.path(&format!("{}-check.toml", system.name()));
    std::fs::write(&conf, lb_config(system, bed))?;
    let out = lb_tests::cmd::output_any(
        bed.topo
            .lb
            .command(&lb_bin.to_string_lossy())
            .arg("--config")
            .arg(&conf)
            .arg("--check"),
    )?;
    if out.status.success() {
        return Ok(Availability::Ready);
    }
    let why = String::from_utf8_lossy(&out.stderr);
    let why = why.lines().last().unwrap_or("").trim();
    // Without the temp file's path: "lb: error: /tmp/.../x.toml: service[0] ...".
    let conf_text = format!("{}: ", conf.display());
    let why = why.split_once(&conf_text).map_or(why, |(_, rest)| rest);
    Ok(Availability::NotBuilt(format!(
        "not built yet (issue 4): `lb --check` rejects its config: {why}"
    )))
}

/// A system running in the LB namespace. Dropping it stops it and undoes its setup
/// (VIP on loopback, nftables table).
pub struct Running {
    pub system: System,
    daemon: Option<Daemon>,
    procs: Vec<Proc>,
    vip_on_lo: bool,
    /// lb-dsr: the backends' namespaces, where the VIP is on `lo`, ARP for it is quiet
    /// and the client is routed over the direct return link.
    dsr_backends: Vec<String>,
    nft_table: bool,
    /// The LB namespace's name (the topology owns the namespace).
    ns: String,
    /// The bare XDP program's attachment (detached on drop).
    xdp_link: Option<XdpLink>,
}

impl Running {
    /// PIDs whose CPU time is the LB's own (with descendants): the daemon or proxy.
    pub fn lb_pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.procs.iter().flat_map(|p| p.pids()).collect();
        if let Some(d) = &self.daemon {
            v.extend(cpu::with_descendants(d.pid()));
        }
        v
    }

    /// The lb daemon's PID, for lb systems.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|d| d.pid())
    }

    /// lb's global counter `name` (from `lb stats --json`) for lb systems; `None` for
    /// the others, which have none.
    pub fn lb_counter(&self, name: &str) -> Result<Option<u64>> {
        let Some(d) = &self.daemon else {
            return Ok(None);
        };
        let stats = d.stats_json()?;
        stats["counters"][name]
            .as_u64()
            .with_context(|| format!("no counter `{name}` in `lb stats --json`: {stats}"))
            .map(Some)
    }

    /// Fails if the system's process died.
    pub fn check(&mut self) -> Result<()> {
        for p in &mut self.procs {
            p.check_running()?;
        }
        if let Some(d) = &mut self.daemon
            && !d.is_running()
        {
            bail!("lb exited; its log:\n{}", d.log());
        }
        Ok(())
    }

    /// Where the client connects: one HTTP address per client thread (the
    /// workloads' `CLIENT_THREADS`), and iperf3's. Through a load balancer
    /// every thread goes to the VIP; without one (the ceiling), thread i goes straight
    /// to backend i, so the ceiling has the same three backends as everyone else.
    pub fn targets(&self, bed: &Bed) -> (Vec<SocketAddr>, SocketAddr) {
        if self.system == System::NoLb {
            (
                bed.backend_addrs(HTTP_PORT),
                SocketAddr::new(bed.direct_backend().into(), IPERF_PORT),
            )
        } else {
            (
                vec![SocketAddr::new(self.system.vip().into(), HTTP_PORT); bed.topo.backends.len()],
                SocketAddr::new(self.system.vip().into(), IPERF_PORT),
            )
        }
    }

    /// Stops the system, checking that lb exits cleanly and detaches.
    pub fn stop(mut self, bed: &Bed) -> Result<()> {
        if let Some(d) = self.daemon.take() {
            d.stop(&bed.topo.lb)?;
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.xdp_link.take();
        self.daemon.take();
        self.procs.clear();
        if self.vip_on_lo {
            let _ = ip(
                &self.ns,
                &["addr", "del", &format!("{VIP}/32"), "dev", "lo"],
            );
        }
        for ns in self.dsr_backends.drain(..) {
            let _ = ip(&ns, &["addr", "del", &format!("{VIP}/32"), "dev", "lo"]);
            let _ = ip(&ns, &["route", "del", &format!("{CLIENT_V4}/32")]);
            let _ = lb_tests::cmd::run(std::process::Command::new("ip").args([
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-q",
                "-w",
                DSR_ARP_UNDO[0],
                DSR_ARP_UNDO[1],
                DSR_ARP_UNDO[2],
                DSR_ARP_UNDO[3],
            ]));
        }
        if self.nft_table {
            let _ = lb_tests::cmd::run(std::process::Command::new("ip").args([
                "netns", "exec", &self.ns, "nft", "delete", "table", "ip", "lbbench",
            ]));
        }
    }
}

/// `ip -n NS ARGS...`.
fn ip(ns: &str, args: &[&str]) -> Result<String> {
    lb_tests::cmd::run(std::process::Command::new("ip").args(["-n", ns]).args(args))
}

/// Starts `system` in the LB namespace and waits until the VIP serves `/small`.
pub fn start(system: System, bed: &mut Bed, lb_bin: &Path) -> Result<Running> {
    let ns = bed.topo.lb.name().to_owned();
    let mut r = Running {
        system,
        daemon: None,
        procs: Vec::new(),
        vip_on_lo: false,
        dsr_backends: Vec::new(),
        nft_table: false,
        ns,
        xdp_link: None,
    };
    let tag = system.name();
    match system {
        System::LbNat
        | System::LbDnat
        | System::LbDsr
        | System::LbProxyV2
        | System::LbProxyV2Sockmap => {
            if system == System::LbDsr {
                dsr_backends(&mut r, bed)?;
            }
            let conf = bed.path(&format!("{tag}.toml"));
            std::fs::write(&conf, lb_config(system, bed))?;
            let args = vec!["--config".to_owned(), conf.to_string_lossy().into_owned()];
            let log = bed.path(&format!("{tag}.log"));
            // Started on the LB's CPU, as HAProxy and nginx are (`taskset -c`): the
            // daemon sizes its runtime to the CPUs it may use, one worker thread here.
            // Pinned only after its start, it ran two on that one CPU.
            let d = std::thread::scope(|s| {
                s.spawn(|| {
                    lb_tests::sys::pin_to_cpu(LB_CPU.parse().expect("a CPU number"))
                        .context("pinning the thread that starts lb")?;
                    Daemon::start(
                        &bed.topo.lb,
                        lb_bin,
                        Launch::Nsenter,
                        &args,
                        &bed.topo.lb_ifaces,
                        &log,
                    )
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the thread starting lb panicked"))?
            })?;
            // Every thread of the daemon, as started (the data path runs in softirq).
            lb_tests::cmd::run(std::process::Command::new("taskset").args([
                "-a",
                "-p",
                "-c",
                LB_CPU,
                &d.pid().to_string(),
            ]))?;
            r.daemon = Some(d);
        }
        System::Haproxy | System::HaproxyPp2 => {
            add_vip(&mut r)?;
            let conf = bed.path(&format!("{tag}.cfg"));
            std::fs::write(&conf, haproxy_conf(system, bed))?;
            let out = lb_tests::cmd::output_any(
                bed.topo
                    .lb
                    .command("haproxy")
                    .arg("-c")
                    .arg("-f")
                    .arg(&conf),
            )?;
            if !out.status.success() {
                bail!(
                    "haproxy -c -f {} failed:\n{}{}",
                    conf.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let mut c = pinned(&bed.topo.lb, LB_CPU, "haproxy");
            c.arg("-db").arg("-f").arg(&conf);
            r.procs
                .push(Proc::spawn(tag, c, &bed.path(&format!("{tag}.log")))?);
        }
        System::Nginx | System::NginxPp => {
            add_vip(&mut r)?;
            let run = bed.path(tag);
            std::fs::create_dir_all(&run)?;
            let conf = run.join("nginx.conf");
            std::fs::write(&conf, nginx_stream_conf(system, bed, &run))?;
            check_nginx_conf(&bed.topo.lb, &conf)?;
            let mut c = pinned(&bed.topo.lb, LB_CPU, "nginx");
            c.arg("-c").arg(&conf);
            r.procs.push(Proc::spawn(tag, c, &run.join("out.log"))?);
        }
        System::NftDnat | System::NftFullnat => {
            let conf = bed.path(&format!("{tag}.nft"));
            std::fs::write(&conf, nft_conf(bed, system == System::NftFullnat))?;
            r.nft_table = true;
            bed.topo
                .lb
                .exec("nft", &["-f", &conf.to_string_lossy()])
                .with_context(|| format!("loading the nftables rules of {tag}"))?;
        }
        System::NoLb => {}
        System::XdpBare => {
            let link = bed.xdp.attach_redirect(
                &bed.topo.lb,
                lb_tests::topology::LB_IF_A,
                lb_tests::topology::LB_IF_B,
            )?;
            r.xdp_link = Some(link);
            // It serves no connections: nothing to wait for.
            return Ok(r);
        }
    }
    wait_serving(&mut r, bed)?;
    Ok(r)
}

/// What lb-dsr's backends need, as an operator of `--encap l2` sets it up: the VIP on
/// `lo`, no ARP answers for it, and (the bench's own) the replies to the client over the
/// direct return link rather than through the LB host.
const DSR_ARP: [&str; 4] = [
    "net.ipv4.conf.all.arp_ignore=1",
    "net.ipv4.conf.all.arp_announce=2",
    "net.ipv4.conf.eth0.arp_ignore=1",
    "net.ipv4.conf.eth0.arp_announce=2",
];
const DSR_ARP_UNDO: [&str; 4] = [
    "net.ipv4.conf.all.arp_ignore=0",
    "net.ipv4.conf.all.arp_announce=0",
    "net.ipv4.conf.eth0.arp_ignore=0",
    "net.ipv4.conf.eth0.arp_announce=0",
];

fn dsr_backends(r: &mut Running, bed: &Bed) -> Result<()> {
    for b in &bed.topo.backends {
        let ns = b.ns.name().to_owned();
        r.dsr_backends.push(ns.clone());
        b.ns.sysctl(&DSR_ARP)?;
        ip(&ns, &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        ip(
            &ns,
            &[
                "route",
                "add",
                &format!("{}/32", crate::bed::CLIENT_V4),
                "via",
                &crate::bed::CLIENT_RETURN_V4.to_string(),
            ],
        )?;
    }
    Ok(())
}

fn add_vip(r: &mut Running) -> Result<()> {
    ip(&r.ns, &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
    r.vip_on_lo = true;
    Ok(())
}

/// Waits (10 s at most) until `/small` comes back through the system.
fn wait_serving(r: &mut Running, bed: &Bed) -> Result<()> {
    let (http, _) = r.targets(bed);
    let url = format!("http://{}/small", http[0]);
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        r.check()?;
        match lb_tests::client::get(&bed.topo.client, &url) {
            Ok(body) => Ok(body == bed.small.trim()),
            Err(e) => {
                last = format!("{e:#}");
                Ok(false)
            }
        }
    });
    if !ok {
        r.check()?;
        bail!(
            "{} does not serve {url} within 10 s: {last}",
            r.system.name()
        );
    }
    Ok(())
}

fn haproxy_conf(system: System, bed: &Bed) -> String {
    let pp = if system.sends_proxy_v2() {
        " send-proxy-v2"
    } else {
        ""
    };
    let mut s = String::from(
        "global\n  nbthread 1\n  maxconn 8000\n\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\n",
    );
    writeln!(
        s,
        "frontend web\n  bind {VIP}:{HTTP_PORT} backlog 8192\n  default_backend web\n\nbackend web\n  balance roundrobin"
    )
    .unwrap();
    for (i, a) in bed
        .backend_addrs(system.backend_http_port())
        .iter()
        .enumerate()
    {
        writeln!(s, "  server b{} {a} check inter 5s{pp}", i + 1).unwrap();
    }
    writeln!(
        s,
        "\nfrontend bulk\n  bind {VIP}:{IPERF_PORT}\n  default_backend bulk\n\nbackend bulk\n  server b1 {} check inter 5s",
        bed.backend_addrs(IPERF_PORT)[0]
    )
    .unwrap();
    s
}

fn nginx_stream_conf(system: System, bed: &Bed, run: &Path) -> String {
    let mut s = format!("load_module {NGINX_STREAM_MODULE};\n");
    s.push_str(&nginx_common(run, 1));
    s.push_str("stream {\n  upstream web {\n");
    for a in bed.backend_addrs(system.backend_http_port()) {
        writeln!(s, "    server {a};").unwrap();
    }
    let pp = if system.sends_proxy_v2() {
        "    proxy_protocol on;\n"
    } else {
        ""
    };
    writeln!(
        s,
        "  }}\n  server {{\n    listen {VIP}:{HTTP_PORT} backlog=8192;\n    proxy_pass web;\n{pp}  }}\n\
         \x20 upstream bulk {{\n    server {};\n  }}\n  server {{\n    listen {VIP}:{IPERF_PORT};\n    proxy_pass bulk;\n  }}\n}}",
        bed.backend_addrs(IPERF_PORT)[0]
    )
    .unwrap();
    s
}

/// The nftables table: DNAT of the VIP's ports to the backends and, for full NAT,
/// masquerade of those connections out of the backend side (lb `nat` mode's SNAT).
fn nft_conf(bed: &Bed, full_nat: bool) -> String {
    let map = bed
        .backend_addrs(HTTP_PORT)
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{i} : {}", a.ip()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table ip lbbench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n\
         \x20   ip daddr {VIP} tcp dport {HTTP_PORT} dnat to numgen random mod 3 map {{ {map} }}\n\
         \x20   ip daddr {VIP} tcp dport {IPERF_PORT} dnat to {}\n\
         \x20   ip daddr {VIP} tcp dport {PPS_PORT} dnat to numgen random mod 3 map {{ {map} }}\n  }}\n{snat}}}\n",
        bed.backend_addrs(IPERF_PORT)[0].ip(),
        snat = if full_nat {
            format!(
                "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n\
                 \x20   ct status dnat oifname \"{}\" masquerade\n  }}\n",
                lb_tests::topology::LB_IF_B
            )
        } else {
            String::new()
        }
    )
}
