//! Installs what building and testing need, idempotently: Debian's rustc-web with its
//! library source (the eBPF compiler, see TOOLCHAIN.md), the LLVM of the same major
//! version, bpf-linker built against it, and the tools the tests drive.

use crate::exec::{self, step};
use anyhow::{Context, bail};
use std::process::Command;

/// Packages for the eBPF build (the LLVM dev package is added once rustc-web tells its
/// LLVM major version).
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Tools the tests and the demo drive.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "curl",
    "python3",
    "bpftool",
    "procps",
    "util-linux",
    "kmod",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian's rustc-web installs here (sysroot /usr).
pub const EBPF_RUSTC: &str = "/usr/bin/rustc";

pub fn ensure() -> anyhow::Result<()> {
    let mut wanted: Vec<String> = BUILD_PACKAGES
        .iter()
        .chain(TEST_PACKAGES)
        .map(|s| s.to_string())
        .collect();
    apt_install(&wanted)?;
    let llvm = llvm_major()?;
    wanted = vec![format!("llvm-{llvm}-dev"), format!("libpolly-{llvm}-dev")];
    apt_install(&wanted)?;
    ensure_bpf_linker(llvm)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_install(pkgs: &[String]) -> anyhow::Result<()> {
    let missing: Vec<&String> = pkgs.iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !exec::is_root() {
        bail!(
            "missing Debian packages {missing:?}: run as root (sudo -E cargo xtask ...) or install them"
        );
    }
    step(&format!(
        "installing Debian packages {missing:?} (once per machine)"
    ));
    exec::run(Command::new("apt-get").args(["update", "-q"]))?;
    exec::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.iter().map(|s| s.as_str())),
    )
}

/// LLVM major version of rustc-web, which bpf-linker must match.
fn llvm_major() -> anyhow::Result<String> {
    let out = exec::output(Command::new(EBPF_RUSTC).arg("-vV"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("LLVM version:"))
        .with_context(|| format!("{EBPF_RUSTC} -vV printed no LLVM version"))?;
    let version = line.trim_start_matches("LLVM version:").trim();
    Ok(version.split('.').next().unwrap_or(version).to_string())
}

fn ensure_bpf_linker(llvm: String) -> anyhow::Result<()> {
    let have = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string());
    if have
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    step(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (about a minute, once per machine)"
    ));
    let llvm_bin = format!("/usr/lib/llvm-{llvm}/bin");
    let path = format!("{llvm_bin}:{}", std::env::var("PATH").unwrap_or_default());
    exec::run(Command::new("cargo").env("PATH", path).args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--no-default-features",
        "--features",
        &format!("llvm-{llvm}"),
    ]))
}
