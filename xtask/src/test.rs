//! `cargo xtask test`: the README's test command and what CI runs. Formatting and lints
//! of the host crates, then the eBPF object and `lb`, then every test: unit tests,
//! BPF_PROG_TEST_RUN tests of the XDP program, end-to-end tests in network namespaces.
//! Tests needing root are run as root (via `sudo -E` when we are not).

use crate::build::{self, ebpf_object, lb_binary};
use crate::exec::{self, root, step};
use std::process::Command;

pub fn all(args: &[String]) -> anyhow::Result<()> {
    step("checking formatting (cargo fmt --check)");
    exec::run(
        Command::new("cargo")
            .current_dir(root())
            .args(["fmt", "--all", "--check"]),
    )?;
    build::all()?;
    step("linting host crates (cargo clippy --all-targets -- -D warnings)");
    exec::run(
        Command::new("cargo")
            .current_dir(root())
            .env("LB_EBPF_OBJECT", ebpf_object())
            .args([
                "clippy",
                "--all-targets",
                "--features",
                "lb-common/std",
                "--",
                "-D",
                "warnings",
            ]),
    )?;
    step("running unit, eBPF program and end-to-end tests (as root)");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .env("LB_EBPF_OBJECT", ebpf_object())
        .env("LB_BIN", lb_binary())
        .args(["test", "--workspace", "--features", "lb-common/std"]);
    if !exec::is_root() {
        cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
    }
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    exec::run(&mut cmd)
}
