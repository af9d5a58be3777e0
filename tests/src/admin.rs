//! The daemon's admin side as a test drives it: HTTP requests to the admin API from
//! inside the LB namespace (curl), `lb ctl ...` run the way the daemon was started, and
//! the service/backend listing (`lb ctl list --json`) parsed and polled.

use std::fmt;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::daemon::Daemon;
use crate::netns::Netns;

/// The admin API's default address (each test's LB namespace has its own loopback).
pub const ADMIN: &str = "127.0.0.1:9100";

/// `GET http://127.0.0.1:9100/PATH` from inside `ns`; returns the status and the body.
pub fn get(ns: &Netns, path: &str) -> Result<(u16, String)> {
    get_url(ns, &format!("http://{ADMIN}{path}"))
}

/// `GET URL` from inside `ns` (curl); returns the status and the body. A connection
/// failure is an error.
pub fn get_url(ns: &Netns, url: &str) -> Result<(u16, String)> {
    curl(ns, &[], url)
}

/// curl `extra` `URL` from inside `ns` (e.g. `-X POST -H ...`, or `--unix-socket PATH`);
/// returns the status and the body. A connection failure is an error.
pub fn curl(ns: &Netns, extra: &[&str], url: &str) -> Result<(u16, String)> {
    let mut args = vec![
        "-s",
        "-S",
        "-g",
        "--max-time",
        "5",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ];
    args.extend_from_slice(extra);
    args.push(url);
    let out = ns
        .exec("curl", &args)
        .with_context(|| format!("curl {extra:?} {url} in {}", ns.name()))?;
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    let code = code
        .trim()
        .parse()
        .with_context(|| format!("GET {url}: no status in curl's output {out:?}"))?;
    Ok((code, body.to_owned()))
}

/// What `lb ctl ...` did.
pub struct CtlOutput {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    fn from(args: &[&str], out: Output) -> CtlOutput {
        CtlOutput {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl fmt::Display for CtlOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`lb {}` exited {:?}\nstdout:\n{}\nstderr:\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `lb ctl ARGS` next to the daemon, whatever its exit status.
pub fn ctl_any(d: &Daemon, args: &[&str]) -> Result<CtlOutput> {
    let mut full = vec!["ctl"];
    full.extend_from_slice(args);
    Ok(CtlOutput::from(&full, d.run_cli_any(&full)?))
}

/// Runs `lb ctl ARGS` next to the daemon; anything but exit 0 is an error carrying its
/// output and the daemon's log.
pub fn ctl(d: &Daemon, args: &[&str]) -> Result<CtlOutput> {
    let out = ctl_any(d, args)?;
    if out.code != Some(0) {
        bail!("{out}\ndaemon log:\n{}", d.log());
    }
    Ok(out)
}

/// A backend as the admin API lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendInfo {
    pub addr: String,
    pub weight: u64,
    pub state: String,
    pub active_flows: Option<u64>,
}

/// A service as the admin API lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceInfo {
    pub name: String,
    pub vip: String,
    pub backends: Vec<BackendInfo>,
}

impl ServiceInfo {
    pub fn backend(&self, addr: &str) -> Option<&BackendInfo> {
        self.backends.iter().find(|b| b.addr == addr)
    }
}

/// Parses `{"services":[{"name","vip","backends":[{"addr","weight","state",...}]}]}`.
pub fn parse_services(v: &Value) -> Result<Vec<ServiceInfo>> {
    let services = v["services"]
        .as_array()
        .with_context(|| format!("no `services` array in {v}"))?;
    let mut out = Vec::new();
    for s in services {
        let text = |v: &Value, key: &str| -> Result<String> {
            v[key]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no string `{key}` in {v}"))
        };
        let mut backends = Vec::new();
        for b in s["backends"]
            .as_array()
            .with_context(|| format!("no `backends` array in {s}"))?
        {
            backends.push(BackendInfo {
                addr: text(b, "addr")?,
                weight: b["weight"]
                    .as_u64()
                    .with_context(|| format!("no `weight` in {b}"))?,
                state: text(b, "state")?,
                active_flows: b["active_flows"].as_u64(),
            });
        }
        out.push(ServiceInfo {
            name: text(s, "name")?,
            vip: text(s, "vip")?,
            backends,
        });
    }
    Ok(out)
}

/// `lb ctl list --json`, parsed.
pub fn list(d: &Daemon) -> Result<Vec<ServiceInfo>> {
    let out = ctl(d, &["list", "--json"])?;
    let v: Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("`lb ctl list --json` printed:\n{}", out.stdout))?;
    parse_services(&v)
}

/// The service `name` from `lb ctl list --json`.
pub fn service(d: &Daemon, name: &str) -> Result<ServiceInfo> {
    list(d)?
        .into_iter()
        .find(|s| s.name == name)
        .with_context(|| format!("`lb ctl list --json` lists no service {name}"))
}

/// State of backend `addr` of `service` (`None`: not listed).
pub fn state(d: &Daemon, service_name: &str, addr: &str) -> Result<Option<String>> {
    Ok(service(d, service_name)?
        .backend(addr)
        .map(|b| b.state.clone()))
}

/// Polls `lb ctl list --json` (every 100 ms) until `check` holds for the service, at
/// most `timeout`; returns when it was first seen to hold. The error shows the last
/// listing and the daemon's log.
pub fn wait_for(
    d: &Daemon,
    service_name: &str,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&ServiceInfo) -> bool,
) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match service(d, service_name) {
            Ok(s) => {
                if check(&s) {
                    return Ok(Instant::now());
                }
                format!("{s:#?}")
            }
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "service {service_name}: not {what} within {timeout:?}; last listing:\n{last}\ndaemon log:\n{}",
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until backend `addr` of `service` is in `state`; returns when it was seen.
pub fn wait_state(
    d: &Daemon,
    service_name: &str,
    addr: &str,
    state: &str,
    timeout: Duration,
) -> Result<Instant> {
    wait_for(d, service_name, &format!("{addr} {state}"), timeout, |s| {
        s.backend(addr).is_some_and(|b| b.state == state)
    })
}

/// Waits until backend `addr` is no longer listed in `service`.
pub fn wait_gone(d: &Daemon, service_name: &str, addr: &str, timeout: Duration) -> Result<Instant> {
    wait_for(d, service_name, &format!("without {addr}"), timeout, |s| {
        s.backend(addr).is_none()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listing() {
        let v: Value = serde_json::from_str(
            r#"{"services":[{"name":"default","vip":"198.18.100.1:80","mode":"nat",
                "backends":[{"addr":"198.18.1.11:80","weight":1,"state":"up",
                  "health":{"check":"tcp"},"active_flows":3},
                  {"addr":"198.18.1.12:80","weight":0,"state":"draining","health":null,
                  "active_flows":0}]}]}"#,
        )
        .unwrap();
        let s = parse_services(&v).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "default");
        assert_eq!(
            s[0].backend("198.18.1.11:80").unwrap().active_flows,
            Some(3)
        );
        assert_eq!(s[0].backend("198.18.1.12:80").unwrap().state, "draining");
        assert!(s[0].backend("198.18.1.13:80").is_none());
        assert!(parse_services(&serde_json::json!({"services": [{"name": "x"}]})).is_err());
    }
}
