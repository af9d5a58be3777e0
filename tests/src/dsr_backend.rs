//! A backend of a DSR service as an operator sets one up: `lb decap` on its interface
//! (which also puts the VIPs on `lo`), and nginx on the VIP's port logging the address
//! every request came from.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::receivers::{self, Nginx, NginxOpts};
use crate::topology::Backend;

/// `lb decap` running in a backend's namespace; SIGKILLed if dropped while running.
pub struct Decap {
    child: Child,
    log: std::path::PathBuf,
}

impl Decap {
    /// Starts `lb decap --iface eth0 ARGS` in `ns` and waits (10 s at most) until the
    /// first VIP is on `lo`, which it adds once its program is attached.
    pub fn start(
        ns: &Netns,
        lb: &Path,
        args: &[&str],
        first_vip: &str,
        log: &Path,
    ) -> Result<Decap> {
        let out = std::fs::File::create(log)?;
        let mut cmd: Command = ns.command(&lb.to_string_lossy());
        cmd.args(["decap", "--iface", "eth0"]).args(args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("starting lb decap")?;
        crate::cleanup::add_pid(child.id());
        let mut d = Decap {
            child,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = d.child.try_wait()? {
                bail!(
                    "lb decap exited ({status}) before it was ready:\n{}",
                    d.log()
                );
            }
            if ns
                .exec("ip", &["-o", "addr", "show", "dev", "lo"])?
                .contains(first_vip)
            {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!(
                    "lb decap did not put {first_vip} on lo within 10 s:\n{}",
                    d.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then its exit status (10 s at most).
    pub fn stop(mut self) -> Result<(ExitStatus, String)> {
        crate::sys::kill(self.child.id(), libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, self.log()));
            }
            if Instant::now() > deadline {
                bail!(
                    "lb decap did not exit within 10 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Decap {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// nginx on `port` in backend `b`'s namespace: `/name` answers its name, other paths
/// serve its directory, and its access log has every request's client address.
pub fn start_nginx(b: &Backend, port: u16) -> Result<Nginx> {
    let dir = b.dir.with_extension("nginx");
    let opts = NginxOpts {
        logged: Some((port, b.dir.clone())),
        ..NginxOpts::default()
    };
    receivers::start_nginx(&b.ns, &dir, &b.name, &opts)
}
