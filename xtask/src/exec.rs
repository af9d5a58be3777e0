//! Running commands with the failing command named in the error.

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `cmd` with inherited stdio; an error names the command and its exit status.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its output whatever the status.
pub fn output(cmd: &mut Command) -> anyhow::Result<Output> {
    let shown = format!("{cmd:?}");
    cmd.output().with_context(|| format!("starting {shown}"))
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Whether we run as root (the data path needs it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A banner for a long step, so a newcomer sees what is happening.
pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}
