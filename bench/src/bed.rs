//! The bench's test bed: the two-armed topology of `lb-tests` (client, LB host, switch,
//! three backends; an XDP program on each of the LB's veth peers and tx checksumming
//! off on the client's and backends' veths, for every system alike), with nginx and
//! iperf3 servers on the backends instead of the test bed's python servers, and the
//! sysctls a high connection rate needs. Processes are stopped by PID on drop and on
//! Ctrl-C.
//!
//! The LB's veth peers need an XDP program (TOOLCHAIN.md, "veth pitfalls"): the
//! client's end gets `xdp_pass`, the switch's end gets the packet-rate workloads' sink,
//! which passes everything but their frames.

use crate::cpu;
use crate::xdp::{self, BenchXdp};
use anyhow::{Context, Result, bail};
use lb_tests::Netns;
use lb_tests::bg::Bg;
use lb_tests::netns::wait_until;
use lb_tests::topology::{Kind, Topology, XdpPeers};
use lb_tests::xdp::XdpPass;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The virtual IP every load balancer serves (the topology's).
pub const VIP: Ipv4Addr = lb_tests::topology::VIP4;
/// HTTP port of the VIP and of the backends' plain listeners.
pub const HTTP_PORT: u16 = 8080;
/// The backends' listener that expects a PROXY v2 header (nginx `proxy_protocol`):
/// a missing or broken header fails the request.
pub const PROXY_PORT: u16 = 8081;
/// iperf3's port, on the VIP and on the one bulk backend.
pub const IPERF_PORT: u16 = 5201;
/// The VIP port of lb's `pps` service (and the port the ceiling's frames carry).
pub const PPS_PORT: u16 = 9000;
/// The `pps` service's backends listen (nominally: nothing answers) on these ports of
/// each backend host, so 100,000 flows find enough SNAT ports (one range per backend
/// address and port).
pub const PPS_BACKEND_PORTS: std::ops::RangeInclusive<u16> = 9000..=9003;
/// The client's address (behind the LB's client-side interface).
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The client's address on the direct return link, on the backends' segment: only
/// lb-dsr's backends route the client's address through it (their replies bypass the
/// LB host); a /32, so the client itself still reaches the backends through the LB.
pub const CLIENT_RETURN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The CPU the client's load generators are pinned to.
pub const CLIENT_CPU: &str = "0";
/// The CPU the load balancers' processes are pinned to.
pub const LB_CPU: &str = "1";
/// Size of the small static response (`/small`).
pub const SMALL_SIZE: usize = 128;
/// Size of the big file (`/big`) the download workload fetches.
pub const BIG_SIZE: usize = 64 << 20;
/// Where Debian's libnginx-mod-stream puts the stream module.
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Sysctls of every namespace that opens or accepts many short connections: a wide
/// ephemeral port range, TIME_WAIT reuse for outgoing connections, deep accept queues.
/// The LB namespace's range starts above lb's SNAT ports (10000-32767) as lb asks.
const CLIENT_SYSCTLS: &[&str] = &[
    "net.ipv4.ip_local_port_range=1024 65000",
    "net.ipv4.tcp_tw_reuse=1",
];
const LB_SYSCTLS: &[&str] = &[
    "net.ipv4.ip_local_port_range=32768 65000",
    "net.ipv4.tcp_tw_reuse=1",
    "net.core.somaxconn=8192",
    "net.ipv4.tcp_max_syn_backlog=8192",
];
const BACKEND_SYSCTLS: &[&str] = &[
    "net.core.somaxconn=8192",
    "net.ipv4.tcp_max_syn_backlog=8192",
];

/// A server or load generator started by the bench: stopped on drop with SIGTERM to its
/// PID, then SIGKILL to it and to any process it forked (nginx's workers) that is left.
pub struct Proc {
    bg: Bg,
    what: String,
}

impl Proc {
    /// Starts `cmd` with its output in `log`.
    pub fn spawn(what: &str, cmd: Command, log: &Path) -> Result<Proc> {
        let bg = Bg::spawn(cmd, log).with_context(|| format!("starting {what}"))?;
        Ok(Proc {
            bg,
            what: what.to_owned(),
        })
    }

    /// The process and its descendants.
    pub fn pids(&self) -> Vec<u32> {
        cpu::with_descendants(self.bg.pid())
    }

    pub fn running(&mut self) -> bool {
        self.bg.running()
    }

    pub fn output(&self) -> String {
        self.bg.output()
    }

    /// Fails with the output unless the process still runs.
    pub fn check_running(&mut self) -> Result<()> {
        if !self.running() {
            bail!("{} exited; its output:\n{}", self.what, self.output());
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit by itself; kills it otherwise.
    pub fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        match self.bg.wait(timeout) {
            Ok(status) => Ok(status),
            Err(e) => {
                self.stop();
                Err(e.context(format!(
                    "{} overran its time limit and was killed",
                    self.what
                )))
            }
        }
    }

    fn stop(&mut self) {
        let family = self.pids();
        let _ = self.bg.stop(Duration::from_secs(3));
        for pid in family.into_iter().skip(1) {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.bg.running() {
            self.stop();
        }
    }
}

/// `taskset -c CPU PROGRAM` inside `ns`.
pub fn pinned(ns: &Netns, cpu: &str, program: &str) -> Command {
    let mut c = ns.command("taskset");
    c.args(["-c", cpu, program]);
    c
}

/// Where the backends' servers (nginx, iperf3) run: issue 17 compares proxies with the
/// backends on the LB's CPU as well as off it, and a user-space proxy's figure depends
/// on whether the backends compete with it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendCpu {
    /// Not pinned: the scheduler places them.
    #[default]
    Any,
    /// Pinned to the LB's CPU, where the load balancer's processes run.
    Lb,
    /// Pinned off the LB's CPU: on this two-CPU machine the client's.
    Own,
}

impl BackendCpu {
    /// The CPU the backends are pinned to, if any.
    pub fn cpu(self) -> Option<&'static str> {
        match self {
            BackendCpu::Any => None,
            BackendCpu::Lb => Some(LB_CPU),
            BackendCpu::Own => Some(CLIENT_CPU),
        }
    }

    /// The layout in the report's words.
    pub fn describe(self) -> String {
        let place = match self {
            BackendCpu::Any => "are not pinned",
            BackendCpu::Lb => "are pinned to CPU 1, the LB's (`--backend-cpu lb`)",
            BackendCpu::Own => {
                "are pinned to CPU 0, off the LB's, which they share with the client (`--backend-cpu own`)"
            }
        };
        format!("the backends (nginx, 2 workers each; iperf3) {place}")
    }
}

/// `program` inside `ns`, on `cpu` if one is given.
fn placed(ns: &Netns, cpu: Option<&str>, program: &str) -> Command {
    match cpu {
        Some(cpu) => pinned(ns, cpu, program),
        None => ns.command(program),
    }
}

/// The LB's veth peers: the client's end and the switch's end (see `Topology::build`).
const CLIENT_IF: &str = "eth0";
pub const SWITCH_IF: &str = "up0";

/// The bed. Fields drop in order: the servers, the XDP programs, then the topology
/// (namespaces, temp dir).
pub struct Bed {
    servers: Vec<Proc>,
    /// `xdp_pass` on the client's end of the LB's veth.
    _pass: XdpPass,
    /// The packet-rate workloads' programs; the sink is on the switch's end.
    pub xdp: BenchXdp,
    pub topo: Topology,
    /// The body of `/small`.
    pub small: String,
    /// Where the backends' servers run.
    pub backend_cpu: BackendCpu,
    /// lb's HTTP service admits the client's address only (`--filter-flood`).
    pub flood_filtered: bool,
}

impl Bed {
    /// Builds the topology, tunes its namespaces and starts the backends' servers
    /// where `backend_cpu` says.
    pub fn new(object: &Path, backend_cpu: BackendCpu) -> Result<Bed> {
        let topo = Topology::build(Kind::TwoArmed, XdpPeers::Skip)
            .context("building the two-armed topology")?;
        let mut pass = XdpPass::load(object)?;
        pass.attach(&topo.client, CLIENT_IF)?;
        let mut xdp = BenchXdp::load(&xdp::object_path(object))?;
        xdp.attach_sink(&topo.switch, SWITCH_IF)?;
        topo.client.sysctl(CLIENT_SYSCTLS)?;
        direct_return_link(&topo)?;
        topo.lb.sysctl(LB_SYSCTLS)?;
        for b in &topo.backends {
            b.ns.sysctl(BACKEND_SYSCTLS)?;
        }
        let small: String = "lb-bench small response: "
            .chars()
            .chain(std::iter::repeat('x'))
            .take(SMALL_SIZE - 1)
            .chain(std::iter::once('\n'))
            .collect();
        let big = topo.path("big");
        write_big(&big)?;
        let mut bed = Bed {
            servers: Vec::new(),
            _pass: pass,
            xdp,
            topo,
            small,
            backend_cpu,
            flood_filtered: false,
        };
        bed.start_backends(&big)?;
        Ok(bed)
    }

    fn start_backends(&mut self, big: &Path) -> Result<()> {
        for i in 0..self.topo.backends.len() {
            let b = &self.topo.backends[i];
            let root = b.dir.clone();
            std::fs::write(root.join("small"), &self.small)?;
            let _ = std::fs::remove_file(root.join("big"));
            std::fs::hard_link(big, root.join("big"))?;
            let run = self.topo.path(&format!("nginx-{}", b.name));
            std::fs::create_dir_all(&run)?;
            let conf = run.join("nginx.conf");
            std::fs::write(&conf, backend_nginx_conf(&run, &root))?;
            check_nginx_conf(&b.ns, &conf)?;
            let mut c = placed(&b.ns, self.backend_cpu.cpu(), "nginx");
            c.arg("-c").arg(&conf);
            let p = Proc::spawn(
                &format!("nginx on backend {}", b.name),
                c,
                &run.join("out.log"),
            )?;
            self.servers.push(p);
        }
        // One iperf3 server: the bulk service has one backend, since iperf3's control
        // and data connections must meet the same server.
        let b1 = &self.topo.backends[0];
        let mut c = placed(&b1.ns, self.backend_cpu.cpu(), "iperf3");
        c.args(["-s", "-p", &IPERF_PORT.to_string()]);
        let p = Proc::spawn(
            "iperf3 server on b1",
            c,
            &self.topo.path("iperf3-server.log"),
        )?;
        self.servers.push(p);

        // Every backend answers on its plain port, and its PROXY port refuses a request
        // without a PROXY header (so a PROXY system that sends none fails loudly).
        for i in 0..self.topo.backends.len() {
            let b = &self.topo.backends[i];
            let plain = format!("http://{}:{HTTP_PORT}/small", b.v4);
            let ok = wait_until(Duration::from_secs(10), || {
                Ok(lb_tests::client::get(&self.topo.client, &plain)? == self.small.trim())
            });
            if !ok {
                for s in &mut self.servers {
                    s.check_running()?;
                }
                bail!("backend {} does not serve {plain}", b.name);
            }
            let pp = format!("http://{}:{PROXY_PORT}/small", b.v4);
            if lb_tests::client::get(&self.topo.client, &pp).is_ok() {
                bail!(
                    "backend {}'s PROXY listener {pp} answered a request without a PROXY header",
                    b.name
                );
            }
        }
        let b1 = &self.topo.backends[0];
        let filter = format!("sport = :{IPERF_PORT}");
        let ok = wait_until(Duration::from_secs(10), || {
            Ok(!b1.ns.exec("ss", &["-Hltn", &filter])?.trim().is_empty())
        });
        if !ok {
            for s in &mut self.servers {
                s.check_running()?;
            }
            bail!(
                "the iperf3 server does not listen on {}:{IPERF_PORT}",
                b1.v4
            );
        }
        Ok(())
    }

    /// Where the no-LB ceiling's client connects: backend b1, routed by the LB
    /// namespace's kernel.
    pub fn direct_backend(&self) -> Ipv4Addr {
        self.topo.backends[0].v4
    }

    /// Backend addresses on `port`.
    pub fn backend_addrs(&self, port: u16) -> Vec<SocketAddr> {
        self.topo
            .backends
            .iter()
            .map(|b| SocketAddr::new(b.v4.into(), port))
            .collect()
    }

    /// Inodes of the bed's network namespaces.
    pub fn net_inodes(&self) -> Vec<u64> {
        let t = &self.topo;
        [&t.client, &t.lb, &t.switch]
            .into_iter()
            .chain(t.backends.iter().map(|b| &b.ns))
            .filter_map(|ns| cpu::netns_inode(&ns.path()))
            .collect()
    }

    /// A file in the bed's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.topo.path(name)
    }

    /// Fails if a backend server died.
    pub fn check_servers(&mut self) -> Result<()> {
        for s in &mut self.servers {
            s.check_running()?;
        }
        Ok(())
    }
}

fn write_big(path: &Path) -> Result<()> {
    // Pseudo-random bytes (xorshift), so nothing on the way could compress them.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = Vec::with_capacity(BIG_SIZE);
    while buf.len() < BIG_SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, &buf).with_context(|| format!("writing {}", path.display()))
}

/// `nginx -t` of a config, so a bad one fails with nginx's own words.
pub fn check_nginx_conf(ns: &Netns, conf: &Path) -> Result<()> {
    let out = lb_tests::cmd::output_any(ns.command("nginx").arg("-t").arg("-c").arg(conf))?;
    if !out.status.success() {
        bail!(
            "nginx -t -c {} failed:\n{}",
            conf.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Directives every nginx the bench runs shares: foreground, a pid file and temp paths
/// in the bench's temp dir, no access log.
pub fn nginx_common(run: &Path, workers: u32) -> String {
    let r = run.display();
    format!(
        "daemon off;\nmaster_process on;\nworker_processes {workers};\nuser root;\n\
         pid {r}/nginx.pid;\nerror_log {r}/error.log warn;\nworker_rlimit_nofile 16384;\n\
         events {{ worker_connections 8192; }}\n"
    )
}

/// A backend: `/small` and `/big` from `root` on the plain port and on the PROXY port.
/// Two workers, so one backend alone (the no-LB ceiling) can use both CPUs.
fn backend_nginx_conf(run: &Path, root: &Path) -> String {
    let r = run.display();
    let mut s = nginx_common(run, 2);
    write!(
        s,
        "http {{\n  access_log off;\n  default_type application/octet-stream;\n\
         \x20 client_body_temp_path {r}/body;\n  proxy_temp_path {r}/proxy;\n\
         \x20 fastcgi_temp_path {r}/fastcgi;\n  uwsgi_temp_path {r}/uwsgi;\n\
         \x20 scgi_temp_path {r}/scgi;\n\
         \x20 sendfile on;\n  tcp_nopush on;\n  tcp_nodelay on;\n\
         \x20 keepalive_timeout 60s;\n  keepalive_requests 1000000;\n\
         \x20 server {{\n    listen {HTTP_PORT} backlog=8192;\n\
         \x20   listen {PROXY_PORT} proxy_protocol backlog=8192;\n\
         \x20   root {};\n  }}\n}}\n",
        root.display()
    )
    .expect("writing to a String");
    s
}

/// A second link from the client to the backends' switch (`eth1`, `CLIENT_RETURN_V4`),
/// for replies that must not cross the LB host (lb-dsr). The client accepts them on it:
/// reverse-path filtering is off there (their source, the VIP, is routed via the LB).
fn direct_return_link(topo: &Topology) -> Result<()> {
    topo.switch.ip_batch(&format!(
        "link add cret type veth peer name eth1 netns {client}\n\
         link set cret master br0\n\
         link set cret up\n",
        client = topo.client.name(),
    ))?;
    topo.client.ip_batch(&format!(
        "addr add {CLIENT_RETURN_V4}/32 dev eth1\nlink set eth1 up\n"
    ))?;
    topo.client.sysctl(&[
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        "net.ipv4.conf.eth1.rp_filter=0",
    ])?;
    topo.client.exec("ethtool", &["-K", "eth1", "tx", "off"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn backend_conf_has_both_listeners() {
        let s = super::backend_nginx_conf("/tmp/r".as_ref(), "/tmp/root".as_ref());
        assert!(s.contains("listen 8080 backlog=8192;"), "{s}");
        assert!(
            s.contains("listen 8081 proxy_protocol backlog=8192;"),
            "{s}"
        );
        assert!(s.contains("root /tmp/root;"), "{s}");
        assert_eq!(s.matches('{').count(), s.matches('}').count(), "{s}");
    }
}
