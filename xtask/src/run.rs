//! `cargo xtask run`: `lb ARGS` as root, or the built-in demo when no ARGS are given.

use crate::build::{ebpf_object, lb_binary};
use crate::exec::{self, step};
use std::process::Command;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if args.is_empty() {
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
