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
        // --all-targets: libs, bins, integration tests and examples; no doc tests (we
        // have none, and their empty "0 passed" lines would close the run).
        // --no-fail-fast: a failing binary does not hide how the others fare.
        .args([
            "test",
            "--no-fail-fast",
            "--workspace",
            "--all-targets",
            "--features",
            "lb-common/std",
        ]);
    if !exec::is_root() {
        cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
    }
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    let (passed, failed) = run_counting(&mut cmd)?;
    println!("\nall test binaries: {passed} passed, {failed} failed");
    if failed > 0 {
        anyhow::bail!("{failed} tests failed");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up the "test result:" lines.
fn run_counting(cmd: &mut Command) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let shown = format!("{cmd:?}");
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let (mut passed, mut failed) = (0, 0);
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        anyhow::bail!("{shown} failed: {status} ({passed} passed, {failed} failed)");
    }
    Ok((passed, failed))
}

/// The number just before `word` in a cargo "test result" line.
fn count_before(line: &str, word: &str) -> u64 {
    line.split(';')
        .find_map(|part| part.trim().strip_suffix(word.trim()))
        .and_then(|n| n.trim().rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_come_from_cargo_result_lines() {
        let line =
            "ok. 14 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.32s";
        assert_eq!(super::count_before(line, " passed"), 14);
        assert_eq!(super::count_before(line, " failed"), 2);
    }
}
