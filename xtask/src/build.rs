//! Builds the eBPF object with Debian's rustc-web (build-std=core for bpfel), then the
//! `lb` binary in release, which embeds the object (lb-user/build.rs); for the bench,
//! the Maglev cost harness and the bench itself.

use crate::exec::{self, root, step};
use crate::setup::EBPF_RUSTC;
use std::path::PathBuf;
use std::process::Command;

/// Where the eBPF object lands.
pub fn ebpf_object() -> PathBuf {
    root().join("target/bpf/bpfel-unknown-none/release/lb-ebpf")
}

/// The release daemon.
pub fn lb_binary() -> PathBuf {
    root().join("target/release/lb")
}

/// The bench (bench/, a debug build like xtask's: it drives the systems it measures).
pub fn bench_binary() -> PathBuf {
    root().join("target/debug/lb-bench")
}

/// The release build of the harness, whose build time and heap figures the bench
/// reports (timing a debug build would say nothing about the daemon).
const MAGLEV_COST_BUILD: &[&str] = &[
    "build",
    "--release",
    "-p",
    "lb-common",
    "--features",
    "std",
    "--example",
    "maglev_cost",
];

pub fn ebpf() -> anyhow::Result<()> {
    step("building the eBPF object (lb-ebpf, bpfel-unknown-none)");
    exec::run(
        Command::new("cargo")
            .current_dir(root())
            .env_remove("RUSTFLAGS")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env("RUSTC", EBPF_RUSTC)
            .env("RUSTC_BOOTSTRAP", "1")
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "-Cdebuginfo=2\x1f-Clink-arg=--btf",
            )
            .args([
                "build",
                "-p",
                "lb-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
            ])
            .arg("--target-dir")
            .arg(root().join("target/bpf")),
    )
}

pub fn lb() -> anyhow::Result<()> {
    step("building lb (release)");
    exec::run(
        Command::new("cargo")
            .current_dir(root())
            .env("LB_EBPF_OBJECT", ebpf_object())
            .args(["build", "--release", "-p", "lb-user", "--bin", "lb"]),
    )
}

pub fn maglev_cost() -> anyhow::Result<()> {
    step("building the Maglev cost harness (lb-common example maglev_cost, release)");
    exec::run(
        Command::new("cargo")
            .current_dir(root())
            .args(MAGLEV_COST_BUILD),
    )
}

pub fn bench() -> anyhow::Result<()> {
    step("building the bench (lb-bench)");
    exec::run(
        Command::new("cargo")
            .current_dir(root())
            .args(["build", "-p", "lb-bench"]),
    )
}

pub fn all() -> anyhow::Result<()> {
    ebpf()?;
    lb()?;
    eprintln!("built {} (eBPF object embedded)", lb_binary().display());
    Ok(())
}
