//! Real HTTP servers for backends: python's threaded `http.server`, one per namespace.

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::{Netns, wait_until};

/// Starts `python3 -m http.server PORT --bind ADDR --directory DIR` in `ns`, logging to
/// `log`. Binding `::` serves IPv4 and IPv6 (python's CLI sets up a dual-stack socket).
/// Does not wait: call [`wait_listening`].
pub fn start(ns: &Netns, bind: &str, port: u16, dir: &Path, log: &Path) -> Result<u32> {
    let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = ns.command("python3");
    cmd.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        bind,
        "--directory",
    ])
    .arg(dir)
    .stdout(Stdio::from(log_file.try_clone()?))
    .stderr(Stdio::from(log_file));
    ns.spawn(cmd)
}

/// Waits until the server `pid` in `ns` answers `GET /name` on `url_host:port` from
/// inside `ns`; fails with the server's log otherwise.
pub fn wait_listening(ns: &Netns, pid: u32, url_host: &str, port: u16, log: &Path) -> Result<()> {
    wait_answering(ns, pid, &format!("http://{url_host}:{port}/name"), 200, log)
}

/// Waits (15 s at most) until the server `pid` in `ns` answers `GET url` from inside
/// `ns` with `status` (an https server's certificate is not checked); fails with the
/// server's log otherwise.
pub fn wait_answering(ns: &Netns, pid: u32, url: &str, status: u16, log: &Path) -> Result<()> {
    let mut seen = String::new();
    let ok = wait_until(Duration::from_secs(15), || {
        if !ns.running(pid) {
            bail!("exited");
        }
        let out = crate::cmd::output_any(ns.command("curl").args([
            "-s",
            "-g",
            "-k",
            "-o",
            "/dev/null",
            "--max-time",
            "1",
            "-w",
            "%{http_code}",
            url,
        ]))?;
        seen = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(seen == status.to_string())
    });
    if !ok {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        bail!(
            "server (pid {pid}) in {} did not answer {url} with {status} within 15 s (last {seen:?}, running: {}); its log:\n{log}",
            ns.name(),
            ns.running(pid)
        );
    }
    Ok(())
}
