//! Test bed for lb: network namespaces joined by veths and a bridge, real HTTP backends
//! (python's http.server), a real client (curl) and the `lb` daemon started inside the
//! LB's namespace. Everything built here tears itself down on drop, and on Ctrl-C for
//! the demo (see [`cleanup`]).
//!
//! Network rules: traffic stays between namespaces created here; addresses come only
//! from 198.18.0.0/15 and fd00::/8; the host's interfaces and routes are never touched.
#![deny(unsafe_code)]

pub mod admin;
pub mod backend_ctl;
pub mod bed;
pub mod bg;
pub mod cleanup;
pub mod client;
pub mod cmd;
pub mod daemon;
pub mod demo;
pub mod differential;
pub mod dns;
pub mod dsr_backend;
pub mod ecmp;
pub mod ecmp_demo;
pub mod encap;
pub mod flood;
pub mod load;
pub mod netns;
pub mod packet;
pub mod pp_peers;
pub mod prometheus;
pub mod receivers;
pub mod server;
pub mod sys;
pub mod tap;
pub mod test_run;
pub mod tls;
pub mod topology;
pub mod xdp;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Result, bail};

pub use daemon::{Daemon, Launch};
pub use netns::Netns;
pub use topology::{Kind, Topology};

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate sits inside the workspace")
        .to_path_buf()
}

/// Path of the `lb` binary: `$LB_BIN`, else `<workspace>/target/release/lb`. Fails with a
/// hint when it does not exist: tests never skip.
pub fn lb_bin() -> Result<PathBuf> {
    existing(
        "LB_BIN",
        workspace_root().join("target/release/lb"),
        "build it with `cargo build --release -p lb-user` (after `cargo xtask build`)",
    )
}

/// Path of the eBPF object: `$LB_EBPF_OBJECT`, else
/// `<workspace>/target/bpf/bpfel-unknown-none/release/lb-ebpf`.
pub fn bpf_object() -> Result<PathBuf> {
    existing(
        "LB_EBPF_OBJECT",
        workspace_root().join("target/bpf/bpfel-unknown-none/release/lb-ebpf"),
        "build it with `cargo xtask build`",
    )
}

fn existing(var: &str, default: PathBuf, hint: &str) -> Result<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    if !path.is_file() {
        bail!(
            "{} not found (set ${var} to override): {hint}",
            path.display()
        );
    }
    Ok(path)
}

/// `TAG-PID-N`: a name no other test of any run on this host has (file names, paths).
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The value of a test bed step, or a test failure showing the whole error chain.
pub fn must<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Fails unless we are root: the test bed creates namespaces and attaches XDP programs.
pub fn require_root() -> Result<()> {
    if !sys::is_root() {
        bail!("the lb end-to-end tests need root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN)");
    }
    Ok(())
}

/// Fails naming the first of the given external tools that is not on PATH.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in tools {
        if !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()) {
            bail!("required tool `{tool}` is not on PATH");
        }
    }
    Ok(())
}

/// Every external tool the test bed runs.
pub const TOOLS: &[&str] = &[
    "ip",
    "nsenter",
    "ethtool",
    "curl",
    "python3",
    "sha256sum",
    "nstat",
    // Faults: a backend port that drops every packet.
    "nft",
    // Metrics: the linter and a real server scraping the daemon.
    "promtool",
    "prometheus",
];
