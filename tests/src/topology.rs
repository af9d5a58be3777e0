//! Namespaced topologies for the LB, built on creation and torn down on drop.
//!
//! Two-armed:
//! ```text
//! client ns            LB ns                   switch ns            backend nss
//! eth0 ─── veth ─── lb0 (A)   lb1 (B) ─── veth ─── up0 ┐
//! 198.18.0.2           198.18.0.1  198.18.1.1            br0 ─ b1..b3 ─── eth0 198.18.1.11..13
//! fd00::2              fd00::1     fd00:1::1                                   fd00:1::11..13
//! ```
//! One-armed: client (198.18.1.2), LB `lb0` (198.18.1.1) and backends share br0 in the
//! switch namespace; the client routes only the VIP via the LB.
//!
//! The VIP (198.18.100.1, fd00:100::1) is configured nowhere: the client routes it to
//! the LB, whose XDP program owns it.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::client::{self, Spread};
use crate::daemon::{Daemon, Launch};
use crate::netns::Netns;
use crate::server;
use crate::xdp::XdpPass;

/// The IPv4 VIP; not configured on any interface.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// The IPv6 VIP; not configured on any interface.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
/// Port of the VIPs and of the backends' HTTP servers.
pub const PORT: u16 = 80;
/// The LB's interface toward the client (the only one when one-armed).
pub const LB_IF_A: &str = "lb0";
/// The LB's interface toward the backends, two-armed only.
pub const LB_IF_B: &str = "lb1";
/// Backend names, served as `/name`.
pub const BACKEND_NAMES: [&str; 3] = ["b1", "b2", "b3"];

/// Which shape the topology has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    OneArmed,
    TwoArmed,
}

/// Whether to attach `xdp_pass` to the LB's veth peers (needed once `lb` runs in
/// native mode; [`XdpPeers::Skip`] is for testing the topology alone).
pub enum XdpPeers<'a> {
    Attach(&'a Path),
    Skip,
}

/// One backend: its namespace, addresses and the directory its server serves.
pub struct Backend {
    pub name: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub dir: PathBuf,
    pub ns: Netns,
    /// PID of the HTTP server now serving this backend (0: none), so tests can stop,
    /// pause or replace it (see [`crate::backend_ctl`]).
    server: AtomicU32,
}

impl Backend {
    pub fn addr4(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.v4), PORT)
    }

    pub fn addr6(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.v6), PORT)
    }

    /// PID of the backend's running HTTP server, if one was started and not stopped.
    pub fn server_pid(&self) -> Option<u32> {
        match self.server.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }

    pub(crate) fn set_server_pid(&self, pid: Option<u32>) {
        self.server.store(pid.unwrap_or(0), Ordering::SeqCst);
    }

    /// The log of the server the topology started: `<temp dir>/<name>.log`.
    pub fn server_log(&self) -> PathBuf {
        self.dir.with_extension("log")
    }
}

/// A built topology. Fields drop in order: the XDP attachments first, then the
/// backends (killing their servers), then the other namespaces, then the temp dir.
pub struct Topology {
    xdp_pass: Option<XdpPass>,
    pub kind: Kind,
    pub backends: Vec<Backend>,
    pub client: Netns,
    pub lb: Netns,
    pub switch: Netns,
    /// The LB's interfaces, the one toward the client first.
    pub lb_ifaces: Vec<String>,
    /// The LB's address the client talks to (its gateway for the VIP).
    pub lb_v4: Ipv4Addr,
    pub lb_v6: Ipv6Addr,
    pub client_v4: Ipv4Addr,
    pub client_v6: Ipv6Addr,
    pub dir: TempDir,
}

impl Topology {
    /// Builds the topology with `xdp_pass` on the LB's veth peers, from the default
    /// object path ([`crate::bpf_object`]).
    pub fn new(kind: Kind) -> Result<Topology> {
        let object = crate::bpf_object()?;
        Topology::build(kind, XdpPeers::Attach(&object))
    }

    /// Builds the topology and starts the three backends' HTTP servers.
    pub fn build(kind: Kind, xdp: XdpPeers<'_>) -> Result<Topology> {
        crate::require_root()?;
        crate::require_tools(crate::TOOLS)?;
        let dir = TempDir::new()?;
        let client = Netns::new("client")?;
        let lb = Netns::new("lb")?;
        let switch = Netns::new("sw")?;
        let mut backends = Vec::new();
        for (i, name) in BACKEND_NAMES.iter().enumerate() {
            let host = 11 + i as u8;
            let bdir = dir.path().join(name);
            std::fs::create_dir(&bdir)?;
            std::fs::write(bdir.join("name"), name)?;
            backends.push(Backend {
                name: (*name).to_owned(),
                v4: Ipv4Addr::new(198, 18, 1, host),
                // Same digits as the IPv4 host part: fd00:1::11 next to 198.18.1.11.
                v6: Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x11 + i as u16),
                dir: bdir,
                ns: Netns::new(name)?,
                server: AtomicU32::new(0),
            });
        }

        // No DAD anywhere: addresses (and link-locals) are usable at once.
        let no_dad = [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ];
        for ns in [&client, &lb, &switch]
            .into_iter()
            .chain(backends.iter().map(|b| &b.ns))
        {
            ns.sysctl(&no_dad)?;
        }
        lb.sysctl(&["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])?;

        // The switch: a plain bridge, no STP, no multicast snooping (ND must flood).
        let mut sw = String::from(
            "link add br0 type bridge stp_state 0 mcast_snooping 0\nlink set br0 up\n",
        );
        // The client's subnet: its own (.0) in front of a two-armed LB, the backends' (.1)
        // with a one-armed one; the LB is .1 in it, the client .2.
        let net = match kind {
            Kind::TwoArmed => 0,
            Kind::OneArmed => 1,
        };
        let (lb_v4, client_v4) = (
            Ipv4Addr::new(198, 18, net, 1),
            Ipv4Addr::new(198, 18, net, 2),
        );
        let v6 = |host| Ipv6Addr::new(0xfd00, net.into(), 0, 0, 0, 0, 0, host);
        let (lb_v6, client_v6) = (v6(1), v6(2));
        let (lb_ifaces, peers, client_routes);
        match kind {
            Kind::TwoArmed => {
                lb.ip_batch(&format!(
                    "link add {LB_IF_A} type veth peer name eth0 netns {client}\n\
                     link add {LB_IF_B} type veth peer name up0 netns {switch}\n\
                     addr add {lb_v4}/24 dev {LB_IF_A}\n\
                     addr add {lb_v6}/64 dev {LB_IF_A} nodad\n\
                     addr add 198.18.1.1/24 dev {LB_IF_B}\n\
                     addr add fd00:1::1/64 dev {LB_IF_B} nodad\n\
                     link set {LB_IF_A} up\n\
                     link set {LB_IF_B} up\n",
                    client = client.name(),
                    switch = switch.name(),
                ))?;
                client_routes =
                    format!("route add default via {lb_v4}\nroute add default via {lb_v6}\n");
                sw.push_str("link set up0 master br0\nlink set up0 up\n");
                lb_ifaces = vec![LB_IF_A.to_owned(), LB_IF_B.to_owned()];
                peers = vec![(&client, "eth0"), (&switch, "up0")];
            }
            Kind::OneArmed => {
                switch.ip_batch(&format!(
                    "link add c0 type veth peer name eth0 netns {client}\n\
                     link add lbp type veth peer name {LB_IF_A} netns {lb}\n",
                    client = client.name(),
                    lb = lb.name(),
                ))?;
                lb.ip_batch(&format!(
                    "addr add {lb_v4}/24 dev {LB_IF_A}\n\
                     addr add {lb_v6}/64 dev {LB_IF_A} nodad\n\
                     link set {LB_IF_A} up\n"
                ))?;
                client_routes =
                    format!("route add {VIP4}/32 via {lb_v4}\nroute add {VIP6}/128 via {lb_v6}\n");
                for port in ["c0", "lbp"] {
                    writeln!(sw, "link set {port} master br0\nlink set {port} up").unwrap();
                }
                lb_ifaces = vec![LB_IF_A.to_owned()];
                peers = vec![(&switch, "lbp")];
            }
        }
        client.ip_batch(&format!(
            "addr add {client_v4}/24 dev eth0\n\
             addr add {client_v6}/64 dev eth0 nodad\n\
             link set eth0 up\n\
             {client_routes}"
        ))?;
        for b in &backends {
            writeln!(
                sw,
                "link add {n} type veth peer name eth0 netns {ns}\nlink set {n} master br0\nlink set {n} up",
                n = b.name,
                ns = b.ns.name()
            )
            .unwrap();
        }
        switch.ip_batch(&sw)?;
        // A switch does not filter: without this, the kernel's bridge netfilter
        // (`CONFIG_BRIDGE_NETFILTER=y` here) runs every bridged frame through the switch
        // namespace's (empty) IP hooks, work that lands on whichever CPU forwards the
        // frame, the LB's in the bench.
        switch.sysctl(&[
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        ])?;
        for b in &backends {
            b.ns.ip_batch(&format!(
                "addr add {}/24 dev eth0\n\
                 addr add {}/64 dev eth0 nodad\n\
                 link set eth0 up\n\
                 route add default via 198.18.1.1\n\
                 route add default via fd00:1::1\n",
                b.v4, b.v6
            ))?;
        }

        // Locally generated TCP over veth carries a partial checksum that a native XDP
        // redirect does not complete: send full checksums from the endpoints.
        client.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
        for b in &backends {
            b.ns.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
        }

        let xdp_pass = match xdp {
            XdpPeers::Attach(object) => {
                let mut pass = XdpPass::load(object)?;
                for (ns, iface) in &peers {
                    pass.attach(ns, iface)?;
                }
                Some(pass)
            }
            XdpPeers::Skip => None,
        };

        let topo = Topology {
            xdp_pass,
            kind,
            backends,
            client,
            lb,
            switch,
            lb_ifaces,
            lb_v4,
            lb_v6,
            client_v4,
            client_v6,
            dir,
        };
        topo.start_backends()?;
        Ok(topo)
    }

    fn start_backends(&self) -> Result<()> {
        let mut started = Vec::new();
        for b in &self.backends {
            let log = b.server_log();
            let pid = server::start(&b.ns, "::", PORT, &b.dir, &log)?;
            b.set_server_pid(Some(pid));
            started.push((b, pid, log));
        }
        for (b, pid, log) in started {
            server::wait_listening(&b.ns, pid, "127.0.0.1", PORT, &log)
                .with_context(|| format!("backend {}", b.name))?;
        }
        Ok(())
    }

    /// Whether `xdp_pass` was attached to the LB's veth peers.
    pub fn has_xdp_peers(&self) -> bool {
        self.xdp_pass.is_some()
    }

    pub fn backend(&self, name: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// `http://VIP:80/PATH` (IPv6 in brackets).
    pub fn vip_url(&self, v6: bool, path: &str) -> String {
        if v6 {
            format!("http://[{VIP6}]:{PORT}/{path}")
        } else {
            format!("http://{VIP4}:{PORT}/{path}")
        }
    }

    /// `"VIP:PORT"` for `--vip`.
    pub fn vip_arg(&self, v6: bool) -> String {
        if v6 {
            format!("[{VIP6}]:{PORT}")
        } else {
            format!("{VIP4}:{PORT}")
        }
    }

    /// `--backend` values, `ADDR:PORT@WEIGHT` (weights in backend order).
    pub fn backend_args(&self, v6: bool, weights: &[u32]) -> Vec<String> {
        self.backends
            .iter()
            .zip(weights)
            .map(|(b, w)| {
                let addr = if v6 { b.addr6() } else { b.addr4() };
                format!("{addr}@{w}")
            })
            .collect()
    }

    /// Backend name for an address as `lb stats` prints it (`198.18.1.11:80`,
    /// `[fd00:1::11]:80`).
    pub fn backend_by_addr(&self, addr: &str) -> Option<&Backend> {
        let addr: SocketAddr = addr.parse().ok()?;
        self.backends
            .iter()
            .find(|b| b.addr4() == addr || b.addr6() == addr)
    }

    /// Opens `n` short connections from the client to the VIP's `/name`.
    pub fn spread(&self, v6: bool, n: usize) -> Result<Spread> {
        client::spread(&self.client, &self.vip_url(v6, "name"), n)
    }

    /// Creates `blob` (`size` random bytes) once, served by every backend; returns its
    /// sha256.
    pub fn create_blob(&self, size: u64) -> Result<String> {
        let path = self.dir.path().join("blob");
        if !path.exists() {
            let mut src = std::fs::File::open("/dev/urandom")?;
            let mut dst = std::fs::File::create(&path)?;
            let copied = std::io::copy(&mut std::io::Read::take(&mut src, size), &mut dst)?;
            anyhow::ensure!(copied == size, "short read from /dev/urandom");
            dst.sync_all()?;
            for b in &self.backends {
                std::fs::hard_link(&path, b.dir.join("blob"))?;
            }
        }
        client::sha256_file(&path)
    }

    /// Downloads `url` in the client namespace into the temp dir; returns its sha256.
    pub fn download(&self, url: &str, max_time: Duration) -> Result<String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dest = self
            .dir
            .path()
            .join(format!("download-{}", N.fetch_add(1, Ordering::Relaxed)));
        let sum = client::download_sha256(&self.client, url, &dest, max_time);
        let _ = std::fs::remove_file(&dest);
        sum
    }

    /// Starts an HTTP server in the LB namespace on its client-side address, serving
    /// `/name` = `lb`: traffic to the LB host that is not for a VIP. Returns its URL.
    pub fn start_lb_local_server(&self, port: u16) -> Result<String> {
        let dir = self.dir.path().join("lb-local");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("name"), "lb")?;
        let log = self.dir.path().join("lb-local.log");
        let bind = self.lb_v4.to_string();
        let pid = server::start(&self.lb, &bind, port, &dir, &log)?;
        server::wait_listening(&self.lb, pid, &bind, port, &log)?;
        Ok(format!("http://{bind}:{port}/name"))
    }

    /// `TcpInCsumErrors` of the client and every backend, nonzero ones only, as
    /// `(namespace role, count)`: a NAT that gets checksums wrong shows up here before
    /// connections fail.
    pub fn tcp_csum_errors(&self) -> Result<Vec<(String, u64)>> {
        let mut bad = Vec::new();
        let nss = std::iter::once(("client", &self.client))
            .chain(self.backends.iter().map(|b| (b.name.as_str(), &b.ns)));
        for (role, ns) in nss {
            let n = *ns
                .nstat()?
                .get("TcpInCsumErrors")
                .with_context(|| format!("no TcpInCsumErrors in the nstat of {role}"))?;
            if n > 0 {
                bad.push((role.to_owned(), n));
            }
        }
        Ok(bad)
    }

    /// Starts `lb ARGS` (the binary at `bin`) in the LB namespace over the LB's
    /// interfaces, its output in `log` in the topology's directory, without waiting (then
    /// [`Daemon::ready`] for the usual start).
    pub fn spawn_lb(
        &self,
        bin: &Path,
        launch: Launch,
        args: &[String],
        log: &str,
    ) -> Result<Daemon> {
        Daemon::spawn(
            &self.lb,
            launch,
            bin,
            args,
            &self.lb_ifaces,
            &self.path(log),
        )
    }

    /// A path in the topology's temp dir (removed on drop).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A temp directory removed on drop (and on Ctrl-C, via the cleanup registry).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> Result<TempDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "lb-tests-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        crate::cleanup::add_dir(path.clone());
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        crate::cleanup::yield_to_handler();
        let _ = std::fs::remove_dir_all(&self.path);
        crate::cleanup::remove_dir(&self.path);
    }
}
