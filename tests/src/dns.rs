//! A real DNS server for the discovery tests: dnsmasq in one of the bed's namespaces,
//! answering only for the names of a hosts file and the SRV records it is given (no
//! upstream, not the host's /etc/hosts), with a TTL of 1 s; and a namespace's resolver
//! configuration pointing at it (`/etc/netns/NAME/resolv.conf`, which `ip netns exec`
//! mounts over /etc/resolv.conf for the processes it starts).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::bg::Bg;
use crate::{Netns, cleanup};

/// The zone every test name is in; names of it that the server does not know are
/// answered NXDOMAIN, not forwarded.
pub const ZONE: &str = "lb.test";

/// dnsmasq, serving `hosts` (address, name) and SRV records until stopped or dropped.
pub struct DnsServer {
    bg: Bg,
    hosts: PathBuf,
    pub addr: IpAddr,
}

impl DnsServer {
    /// Starts dnsmasq in `ns` on `addr`:53, its files in `dir`. `srv` are dnsmasq
    /// `--srv-host` values: `_http._tcp.lb.test,b1.lb.test,80,PRIORITY,WEIGHT`.
    pub fn start(
        ns: &Netns,
        addr: IpAddr,
        dir: &Path,
        hosts: &[(IpAddr, &str)],
        srv: &[&str],
    ) -> Result<DnsServer> {
        crate::require_tools(&["dnsmasq"])?;
        let file = dir.join(format!("dns-hosts-{addr}"));
        write_hosts(&file, hosts)?;
        let mut cmd = ns.command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--pid-file=",
            "--bind-interfaces",
            "--log-queries",
            "--log-facility=-",
            "--local-ttl=1",
        ])
        .arg(format!("--local=/{ZONE}/"))
        .arg(format!("--listen-address={addr}"))
        .arg(format!("--addn-hosts={}", file.display()));
        for s in srv {
            cmd.arg(format!("--srv-host={s}"));
        }
        let bg = Bg::spawn(cmd, &dir.join(format!("dnsmasq-{addr}.log")))?;
        let server = DnsServer {
            bg,
            hosts: file,
            addr,
        };
        // Ready once it listens on port 53.
        let listening = crate::netns::wait_until(Duration::from_secs(5), || {
            let out = ns.exec("ss", &["-Hlun", "sport", "=", ":53"])?;
            Ok(out.contains(&addr.to_string()))
        });
        if !listening {
            anyhow::bail!(
                "dnsmasq does not listen on {addr}:53; its log:\n{}",
                server.log()
            );
        }
        Ok(server)
    }

    /// Answers with `hosts` from now on: the file is rewritten and dnsmasq told (SIGHUP).
    pub fn set_hosts(&mut self, hosts: &[(IpAddr, &str)]) -> Result<()> {
        write_hosts(&self.hosts, hosts)?;
        self.bg.signal(libc::SIGHUP)
    }

    /// Stops answering (the process ends; queries meet a closed port).
    pub fn stop(&mut self) -> Result<()> {
        self.bg.stop(Duration::from_secs(2)).map(drop)
    }

    /// What dnsmasq logged (every query, with `--log-queries`).
    pub fn log(&self) -> String {
        self.bg.output()
    }
}

fn write_hosts(file: &Path, hosts: &[(IpAddr, &str)]) -> Result<()> {
    let mut text = String::new();
    for (ip, name) in hosts {
        let _ = writeln!(text, "{ip} {name}");
    }
    std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))
}

/// A namespace's `/etc/netns/NAME/resolv.conf` naming one server; removed on drop (and
/// on Ctrl-C).
pub struct ResolvConf {
    dir: PathBuf,
}

impl ResolvConf {
    /// Processes started in `ns` with `ip netns exec` from now on resolve through
    /// `server`, one try of a second per query.
    pub fn point(ns: &Netns, server: IpAddr) -> Result<ResolvConf> {
        let dir = Path::new("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        cleanup::add_dir(dir.clone());
        let conf = ResolvConf { dir };
        let file = conf.dir.join("resolv.conf");
        std::fs::write(
            &file,
            format!("nameserver {server}\nsearch {ZONE}\noptions timeout:1 attempts:1\n"),
        )
        .with_context(|| format!("writing {}", file.display()))?;
        Ok(conf)
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        cleanup::yield_to_handler();
        let _ = std::fs::remove_dir_all(&self.dir);
        cleanup::remove_dir(&self.dir);
    }
}
