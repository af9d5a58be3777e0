//! `cargo xtask run`: `lb ARGS` as root; the built-in demo when no ARGS (or `demo`) are
//! given; `demo ecmp [dsr|nat]`: several LB hosts behind ECMP.

use crate::build::{ebpf_object, lb_binary};
use crate::exec::{self, step};
use std::process::Command;

/// What `cargo xtask run ARGS` needs installed: the demos drive the test bed's tools;
/// `lb ARGS` only lb's own.
pub fn tier(args: &[String]) -> crate::setup::Tier {
    if args.is_empty() || args.first().is_some_and(|a| a == "demo") {
        crate::setup::Tier::Demo
    } else {
        crate::setup::Tier::Build
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    if let ["demo", "ecmp", rest @ ..] = words.as_slice() {
        let mode = rest.first().copied().unwrap_or("dsr");
        step(&format!(
            "running the ECMP demo in {mode} mode (namespaces: client, router, three LB hosts, three backends)"
        ));
        if !exec::is_root() {
            return exec::run(
                Command::new("sudo")
                    .arg("-E")
                    .arg(std::env::current_exe()?)
                    .args(["run", "demo", "ecmp", mode]),
            );
        }
        return lb_tests::ecmp_demo::run(&lb_binary(), &ebpf_object(), mode);
    }
    if args.is_empty() || args == ["demo"] {
        step("running the built-in demo (namespaces: client, LB, three backends)");
        if !exec::is_root() {
            return exec::run(
                Command::new("sudo")
                    .arg("-E")
                    .arg(std::env::current_exe()?)
                    .arg("run"),
            );
        }
        return lb_tests::demo::run(&lb_binary(), &ebpf_object());
    }
    let mut cmd = if exec::is_root() {
        Command::new(lb_binary())
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(lb_binary());
        c
    };
    exec::run(cmd.args(args))
}
