//! Several LB hosts behind one router, as an operator runs them for high availability:
//! each host runs `lb --announce-table` and BIRD with the shipped
//! `dist/bird/lb-host.conf`; the router runs BIRD with `dist/bird/router.conf`, which
//! merges the hosts' announcements into one multipath route (ECMP, hashed on ports).
//! Backends run `lb decap` and an HTTP server on the VIP.
//!
//! ```text
//! client ── router ── switch (bridge) ─┬─ lb1, lb2, lb3   (198.18.1.11-13)
//! 198.18.0.2  .0.1 / .1.1              └─ b1, b2, b3      (198.18.1.21-23)
//! ```
//!
//! The fabric behind the router has an MTU of 1600, so a full-size client segment
//! still fits once the LB host wraps it in IP-in-IP (the usual jumbo frames of a data
//! centre); the router's links stay at 1500.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bed::FAST_HEALTH;
use crate::bg::Bg;
use crate::daemon::{Daemon, Launch};
use crate::load::SlowDownload;
use crate::netns::{Netns, wait_until};
use crate::topology::TempDir;
use crate::xdp::XdpPass;
use crate::{client, server};

/// The VIP every host serves, and its port.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const PORT: u16 = 80;
/// The kernel table lb keeps the VIP routes in, on every host.
pub const ANNOUNCE_TABLE: u32 = 100;
/// The route protocol number of lb's routes there.
pub use lb_user::announce::RTPROT_LB;
/// The router's address on the fabric (the LB hosts' BGP peer) and toward the client.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// MTU of the fabric behind the router (LB hosts, switch, backends).
const FABRIC_MTU: u32 = 1600;

/// The LB host `i` (0-based): name and fabric address (the router's `lbN` peers).
pub fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 11 + i as u8)
}

/// The backend `i`'s address.
pub fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 21 + i as u8)
}

/// The VIP's URL for `path`.
pub fn url(path: &str) -> String {
    format!("http://{VIP}:{PORT}/{path}")
}

/// BIRD running in a namespace, its control socket in the fabric's directory; killed
/// on drop.
pub struct Bird {
    bg: Bg,
    socket: PathBuf,
    ns: String,
}

impl Bird {
    /// Starts `bird -f -c CONF` in `ns`.
    pub fn start(ns: &Netns, conf: &Path, dir: &Path, name: &str) -> Result<Bird> {
        let socket = dir.join(format!("{name}.ctl"));
        let mut c = ns.command("bird");
        c.arg("-f")
            .arg("-c")
            .arg(conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join(format!("{name}.pid")));
        let bg = Bg::spawn(c, &dir.join(format!("{name}.out")))?;
        Ok(Bird {
            bg,
            socket,
            ns: ns.name().to_owned(),
        })
    }

    /// `birdc ARGS` on this BIRD's socket.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        crate::cmd::run(
            std::process::Command::new("ip")
                .args(["netns", "exec", &self.ns, "birdc", "-s"])
                .arg(&self.socket)
                .args(args),
        )
    }

    /// SIGKILL: the host dies, its BGP sessions with it (no notification is sent).
    pub fn kill(&mut self) -> Result<()> {
        self.bg.signal(libc::SIGKILL)?;
        self.bg.wait(Duration::from_secs(5)).map(drop)
    }

    pub fn output(&self) -> String {
        self.bg.output()
    }
}

/// One LB host: lb and BIRD while they run, and its namespace (dropped in this order:
/// lb takes its data path down inside the namespace).
pub struct Host {
    pub lb: Option<Daemon>,
    /// A killed lb, kept so that dropping it takes the data path it left down (unless a
    /// new lb adopted it).
    dead: Option<Daemon>,
    pub bird: Option<Bird>,
    pub name: String,
    pub addr: Ipv4Addr,
    pub ns: Netns,
    /// lb's starts so far, to name each one's log.
    starts: u32,
}

/// The whole fabric. Fields drop in order: the hosts (lb, then `lb down`), the XDP
/// passes, `lb decap`, the backends (their servers), the router's BIRD, the other
/// namespaces, then the directory.
pub struct Fabric {
    pub hosts: Vec<Host>,
    /// Held for its attachments on the switch's LB-host ports.
    _xdp_pass: XdpPass,
    /// `lb decap` of each backend.
    backend_procs: Vec<Bg>,
    pub backends: Vec<Netns>,
    pub router_bird: Option<Bird>,
    pub client: Netns,
    pub router: Netns,
    pub switch: Netns,
    lb_bin: PathBuf,
    /// How every host forwards: `--mode dsr --encap ipip` unless changed before the
    /// hosts start.
    pub mode_args: Vec<String>,
    pub dir: TempDir,
}

impl Fabric {
    /// Builds the namespaces and links, and starts the backends (`lb decap`, HTTP
    /// server) and the router's BIRD. No LB host runs anything yet
    /// ([`Fabric::start_host`]).
    pub fn build(
        lb_bin: &Path,
        bpf_object: &Path,
        hosts: usize,
        backends: usize,
    ) -> Result<Fabric> {
        crate::require_root()?;
        crate::require_tools(crate::TOOLS)?;
        crate::require_tools(&["bird", "birdc"])?;
        let dir = TempDir::new()?;
        let client = Netns::new("client")?;
        let router = Netns::new("router")?;
        let switch = Netns::new("sw")?;
        let host_ns = (0..hosts)
            .map(|i| Netns::new(&format!("lb{}", i + 1)))
            .collect::<Result<Vec<_>>>()?;
        let backend_ns = (0..backends)
            .map(|i| Netns::new(&format!("b{}", i + 1)))
            .collect::<Result<Vec<_>>>()?;

        router.sysctl(&[
            "net.ipv4.ip_forward=1",
            "net.ipv4.fib_multipath_hash_policy=1",
        ])?;
        router.ip_batch(&format!(
            "link add c0 type veth peer name eth0 netns {client}\n\
             link add r0 type veth peer name rt netns {switch}\n\
             addr add {ROUTER_CLIENT_SIDE}/24 dev c0\n\
             addr add {ROUTER}/24 dev r0\n\
             link set c0 up\n\
             link set r0 up\n",
            client = client.name(),
            switch = switch.name(),
        ))?;
        client.ip_batch(&format!(
            "addr add {CLIENT}/24 dev eth0\n\
             link set eth0 up\n\
             route add default via {ROUTER_CLIENT_SIDE}\n"
        ))?;
        let mut sw = String::from(
            "link add br0 type bridge stp_state 0 mcast_snooping 0\nlink set br0 up\nlink set rt master br0\nlink set rt up\n",
        );
        let fabric_links = host_ns
            .iter()
            .enumerate()
            .map(|(i, ns)| (format!("lbp{}", i + 1), ns, host_addr(i)))
            .chain(
                backend_ns
                    .iter()
                    .enumerate()
                    .map(|(i, ns)| (format!("bp{}", i + 1), ns, backend_addr(i))),
            );
        // lb asks the kernel's FIB for next hops, which needs forwarding on.
        for ns in &host_ns {
            ns.sysctl(&["net.ipv4.ip_forward=1"])?;
        }
        let mut ends = Vec::new();
        for (port, ns, addr) in fabric_links {
            writeln!(
                sw,
                "link add {port} mtu {FABRIC_MTU} type veth peer name eth0 netns {ns}\n\
                 link set {port} master br0\n\
                 link set {port} up",
                ns = ns.name()
            )?;
            ends.push((ns, addr));
        }
        switch.ip_batch(&sw)?;
        for (ns, addr) in ends {
            ns.ip_batch(&format!(
                "addr add {addr}/24 dev eth0\n\
                 link set eth0 mtu {FABRIC_MTU}\n\
                 link set eth0 up\n\
                 route add default via {ROUTER}\n"
            ))?;
        }
        // Full checksums from the endpoints: a native XDP redirect does not complete a
        // partial one.
        client.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
        for ns in &backend_ns {
            ns.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
        }
        // lb sends out of the interface a frame came in on (XDP_TX): the switch-side
        // peer must run XDP to take it.
        let mut xdp_pass = XdpPass::load(bpf_object)?;
        for i in 0..hosts {
            xdp_pass.attach(&switch, &format!("lbp{}", i + 1))?;
        }

        let mut fabric = Fabric {
            hosts: host_ns
                .into_iter()
                .enumerate()
                .map(|(i, ns)| Host {
                    dead: None,
                    name: format!("lb{}", i + 1),
                    addr: host_addr(i),
                    ns,
                    lb: None,
                    bird: None,
                    starts: 0,
                })
                .collect(),
            _xdp_pass: xdp_pass,
            backends: backend_ns,
            backend_procs: Vec::new(),
            router_bird: None,
            client,
            router,
            switch,
            lb_bin: lb_bin.to_owned(),
            mode_args: ["--mode", "dsr", "--encap", "ipip"]
                .map(String::from)
                .to_vec(),
            dir,
        };
        fabric.start_backends()?;
        let conf = fabric.path("router.conf");
        std::fs::write(&conf, router_conf(hosts)?)?;
        fabric.router_bird = Some(Bird::start(
            &fabric.router,
            &conf,
            fabric.dir.path(),
            "router-bird",
        )?);
        Ok(fabric)
    }

    /// A path in the fabric's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Each backend: `lb decap` for the VIP from the LB hosts, and an HTTP server on
    /// port 80 (its directory has `name` and, once made, `blob`).
    fn start_backends(&mut self) -> Result<()> {
        let vip = VIP.to_string();
        let froms: Vec<String> = (0..self.hosts.len())
            .map(|i| format!("{}/32", host_addr(i)))
            .collect();
        for (i, ns) in self.backends.iter().enumerate() {
            let name = format!("b{}", i + 1);
            let mut c = ns.command(&self.lb_bin.to_string_lossy());
            c.args(["decap", "--iface", "eth0", "--vip", &vip]);
            for f in &froms {
                c.args(["--from", f]);
            }
            let decap = Bg::spawn(c, &self.dir.path().join(format!("decap-{name}.log")))?;
            self.backend_procs.push(decap);
            let root = self.path(&name);
            std::fs::create_dir_all(&root)?;
            std::fs::write(root.join("name"), &name)?;
            let log = self.path(&format!("{name}.log"));
            let pid = server::start(ns, "0.0.0.0", PORT, &root, &log)?;
            server::wait_listening(ns, pid, "127.0.0.1", PORT, &log)
                .with_context(|| format!("backend {name}"))?;
        }
        for (i, ns) in self.backends.iter().enumerate() {
            let on_lo = wait_until(Duration::from_secs(10), || {
                Ok(ns
                    .exec("ip", &["-o", "addr", "show", "dev", "lo"])?
                    .contains(&vip))
            });
            if !on_lo {
                bail!(
                    "lb decap on b{} did not put the VIP on lo within 10 s:\n{}",
                    i + 1,
                    self.backend_procs[i].output()
                );
            }
        }
        Ok(())
    }

    /// A random file of `size` bytes served as `/blob` by every backend; its sha256.
    pub fn create_blob(&self, size: u64) -> Result<String> {
        let path = self.path("blob");
        let mut src = std::fs::File::open("/dev/urandom")?;
        let mut dst = std::fs::File::create(&path)?;
        let copied = std::io::copy(&mut std::io::Read::take(&mut src, size), &mut dst)?;
        anyhow::ensure!(copied == size, "short read from /dev/urandom");
        for i in 0..self.backends.len() {
            std::fs::hard_link(&path, self.path(&format!("b{}/blob", i + 1)))?;
        }
        client::sha256_file(&path)
    }

    /// lb's arguments on every host: the same service, so the same Maglev table.
    pub fn lb_args(&self, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "--iface",
            "eth0",
            "--xdp-mode",
            "native",
            "--vip",
            &format!("{VIP}:{PORT}"),
            "--announce-table",
            &ANNOUNCE_TABLE.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(self.mode_args.iter().cloned());
        for i in 0..self.backends.len() {
            a.extend(["--backend".into(), format!("{}:{PORT}", backend_addr(i))]);
        }
        // Checks every second, down after 2 failures, up after 2 passes.
        a.extend(FAST_HEALTH.iter().map(|s| s.to_string()));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Starts lb (with [`Fabric::lb_args`] and `extra`), then BIRD, on host `i`.
    pub fn start_host(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        self.start_lb(i, extra)?;
        self.start_bird(i)
    }

    /// Starts lb on host `i` and waits until it is ready. A daemon that ran there
    /// before (stopped or killed) left the data path for this one to adopt.
    pub fn start_lb(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        let args = self.lb_args(extra);
        let h = &mut self.hosts[i];
        for mut old in h.lb.take().into_iter().chain(h.dead.take()) {
            old.superseded();
        }
        h.starts += 1;
        let log = self
            .dir
            .path()
            .join(format!("{}-lb-{}.log", h.name, h.starts));
        let d = Daemon::start(
            &h.ns,
            &self.lb_bin,
            Launch::Nsenter,
            &args,
            &["eth0".to_string()],
            &log,
        )?;
        h.lb = Some(d);
        Ok(())
    }

    /// Starts BIRD on host `i` with the shipped `dist/bird/lb-host.conf`, its address
    /// set.
    pub fn start_bird(&mut self, i: usize) -> Result<()> {
        let h = &self.hosts[i];
        let conf = self.dir.path().join(format!("{}-bird.conf", h.name));
        std::fs::write(&conf, host_conf(h.addr)?)?;
        let bird = Bird::start(&h.ns, &conf, self.dir.path(), &format!("{}-bird", h.name))?;
        self.hosts[i].bird = Some(bird);
        Ok(())
    }

    /// Restarts lb on host `i` as an operator does: SIGTERM (the data path stays), then
    /// a new daemon.
    pub fn restart_lb(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        let h = &mut self.hosts[i];
        if let Some(d) = h.lb.as_mut() {
            d.signal(libc::SIGTERM)?;
            let status = d.wait_exit(Duration::from_secs(10))?;
            anyhow::ensure!(status.success(), "lb on {} exited with {status}", h.name);
        }
        self.start_lb(i, extra)
    }

    /// Host `i` dies as a host that loses power: its link goes down first, so nothing
    /// it says afterwards (BIRD's sockets closing) reaches the router, which notices
    /// only when the hold time expires; then lb and BIRD are SIGKILLed. Its programs
    /// stay attached (pinned), as they would on a host whose daemon crashed.
    pub fn kill_host(&mut self, i: usize) -> Result<()> {
        let h = &mut self.hosts[i];
        h.ns.ip("link set eth0 down")?;
        if let Some(mut d) = h.lb.take() {
            d.kill_hard()?;
            h.dead = Some(d);
        }
        if let Some(b) = h.bird.as_mut() {
            b.kill()?;
        }
        Ok(())
    }

    /// Host `i`'s link comes back with its network configuration (the kernel dropped the
    /// default route with the link), as after a reboot; lb and BIRD are started next.
    pub fn revive_link(&self, i: usize) -> Result<()> {
        self.hosts[i]
            .ns
            .ip_batch(&format!(
                "link set eth0 up
route replace default via {ROUTER}
"
            ))
            .map(drop)
    }

    /// The LB hosts the router's route to the VIP goes through, by address (none when
    /// it has no route).
    pub fn next_hops(&self) -> Result<Vec<Ipv4Addr>> {
        let out = self
            .router
            .ip(&format!("-j -4 route show {VIP}/32"))
            .context("reading the router's route to the VIP")?;
        Ok(parse_next_hops(&out))
    }

    /// Waits until the router's route to the VIP goes through exactly `hosts`; returns
    /// how long that took.
    pub fn wait_next_hops(&self, hosts: &[usize], timeout: Duration) -> Result<Duration> {
        let mut want: Vec<Ipv4Addr> = hosts.iter().map(|i| host_addr(*i)).collect();
        want.sort();
        let start = Instant::now();
        let mut last = Vec::new();
        if wait_until(timeout, || {
            last = self.next_hops()?;
            last.sort();
            Ok(last == want)
        }) {
            return Ok(start.elapsed());
        }
        bail!(
            "the router's route to {VIP} goes through {last:?}, not {want:?}, after {timeout:?}\n{}",
            self.diagnostics()
        )
    }

    /// The VIP routes in host `i`'s announce table.
    pub fn announced(&self, i: usize) -> Result<String> {
        self.hosts[i]
            .ns
            .ip(&format!("route show table {ANNOUNCE_TABLE}"))
    }

    /// New flows each host's lb has opened, by host (0 for a host not running lb).
    pub fn new_flows(&self) -> Result<Vec<u64>> {
        self.service_figure("new_flows", |s| &s["counters"]["new_flows"])
    }

    /// Active flows in each host's flow table, by host (0 for a host not running lb).
    pub fn active_flows(&self) -> Result<Vec<u64>> {
        self.service_figure("active_flows", |s| &s["active_flows"])
    }

    /// A figure of the service in each host's `lb stats --json`, by host.
    fn service_figure(
        &self,
        name: &str,
        get: impl Fn(&serde_json::Value) -> &serde_json::Value,
    ) -> Result<Vec<u64>> {
        self.hosts
            .iter()
            .map(|h| match &h.lb {
                Some(d) => {
                    let s = d.stats_json()?;
                    get(&s["services"][0])
                        .as_u64()
                        .with_context(|| format!("no {name} in {}'s stats: {s}", h.name))
                }
                None => Ok(0),
            })
            .collect()
    }

    /// Starts `n` paced downloads of `/blob` at `rate` bytes/s (two minutes at most).
    pub fn start_downloads(&self, n: usize, rate: u32) -> Result<Vec<SlowDownload>> {
        (0..n)
            .map(|_| {
                SlowDownload::start_in(
                    &self.client,
                    self.dir.path(),
                    vip_addr(),
                    "blob",
                    rate,
                    Duration::from_secs(120),
                )
            })
            .collect()
    }

    /// What the router and each host's BIRD and lb say, for a failure message.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        if let Some(b) = &self.router_bird {
            let _ = writeln!(
                s,
                "router BIRD:\n{}\n{}",
                b.birdc(&["show", "protocols"])
                    .unwrap_or_else(|e| e.to_string()),
                b.output()
            );
        }
        let _ = writeln!(
            s,
            "router routes:\n{}",
            self.router.ip("route").unwrap_or_else(|e| e.to_string())
        );
        for (i, h) in self.hosts.iter().enumerate() {
            let _ = writeln!(
                s,
                "{}: announce table: {}",
                h.name,
                self.announced(i).unwrap_or_else(|e| e.to_string())
            );
            if let Some(b) = &h.bird {
                let _ = writeln!(s, "{} BIRD output:\n{}", h.name, b.output());
            }
            if let Some(d) = &h.lb {
                let _ = writeln!(s, "{} lb log:\n{}", h.name, d.log());
            }
        }
        s
    }
}

/// The next hops of `ip -j route show` output: the `gateway` of a single-path route,
/// or each of `nexthops`.
pub fn parse_next_hops(json: &str) -> Vec<Ipv4Addr> {
    let Ok(serde_json::Value::Array(routes)) = serde_json::from_str(json.trim()) else {
        return Vec::new();
    };
    let gw = |v: &serde_json::Value| v["gateway"].as_str().and_then(|g| g.parse().ok());
    routes
        .iter()
        .flat_map(|r| match r["nexthops"].as_array() {
            Some(hops) => hops.iter().filter_map(gw).collect::<Vec<_>>(),
            None => gw(r).into_iter().collect(),
        })
        .collect()
}

/// The shipped file `dist/bird/NAME`.
fn shipped(name: &str) -> Result<String> {
    let path = crate::workspace_root().join("dist/bird").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `text` with `define NAME = ...;` set to `value`; fails if the file has no such line.
fn define(text: &str, name: &str, value: &str) -> Result<String> {
    let prefix = format!("define {name} =");
    let mut found = false;
    let out = text
        .lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                found = true;
                format!("{prefix} {value};")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    if !found {
        bail!("no `{prefix}` line to set");
    }
    Ok(out + "\n")
}

/// The shipped LB host configuration for the host at `addr`.
pub fn host_conf(addr: Ipv4Addr) -> Result<String> {
    let c = shipped("lb-host.conf")?;
    let c = define(&c, "HOST_ADDR", &addr.to_string())?;
    let c = define(&c, "ROUTER_ADDR", &ROUTER.to_string())?;
    define(&c, "ANNOUNCE_TABLE", &ANNOUNCE_TABLE.to_string())
}

/// The shipped router configuration, which peers with hosts 198.18.1.11-13; fewer hosts
/// here means fewer sessions.
pub fn router_conf(hosts: usize) -> Result<String> {
    let c = define(&shipped("router.conf")?, "ROUTER_ADDR", &ROUTER.to_string())?;
    let mut out = String::new();
    for l in c.lines() {
        let extra_host = (hosts..3).any(|i| l.contains(&format!("neighbor {} ", host_addr(i))));
        if !extra_host {
            out.push_str(l);
            out.push('\n');
        }
    }
    for i in 3..hosts {
        writeln!(
            out,
            "protocol bgp lb{} from lb_host {{ neighbor {} as HOSTS_AS; }}",
            i + 1,
            host_addr(i)
        )?;
    }
    Ok(out)
}

/// The client's view of one connection: which backend answered `/name`.
pub fn spread(fabric: &Fabric, n: usize) -> Result<client::Spread> {
    client::spread(&fabric.client, &url("name"), n)
}

/// Where a flow from the client reaches the VIP's port.
pub fn vip_addr() -> SocketAddr {
    SocketAddr::new(VIP.into(), PORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_of_single_and_multipath_routes() {
        let multi = r#"[{"dst":"198.18.100.1","protocol":"bird","metric":32,"flags":[],
            "nexthops":[{"gateway":"198.18.1.11","dev":"r0","weight":1,"flags":[]},
                        {"gateway":"198.18.1.13","dev":"r0","weight":1,"flags":[]}]}]"#;
        assert_eq!(parse_next_hops(multi), vec![host_addr(0), host_addr(2)]);
        let single = r#"[{"dst":"198.18.100.1","gateway":"198.18.1.12","dev":"r0","flags":[]}]"#;
        assert_eq!(parse_next_hops(single), vec![host_addr(1)]);
        assert!(parse_next_hops("[]").is_empty());
    }

    #[test]
    fn the_shipped_configs_take_the_fabrics_addresses() {
        let h = host_conf(host_addr(1)).unwrap();
        assert!(h.contains("define HOST_ADDR = 198.18.1.12;"), "{h}");
        assert!(h.contains("define ANNOUNCE_TABLE = 100;"), "{h}");
        let r = router_conf(2).unwrap();
        assert!(r.contains("neighbor 198.18.1.12 "), "{r}");
        assert!(!r.contains("neighbor 198.18.1.13 "), "{r}");
        assert!(define("x\n", "NOPE", "1").is_err());
    }
}
