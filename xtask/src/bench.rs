//! `cargo xtask bench`: builds what the bench measures, then runs the bench itself (the
//! `lb-bench` crate in bench/) as root, with the flags it was given.

use crate::build;
use crate::exec::{self, step};
use crate::setup;
use std::process::Command;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let help = args.iter().any(|a| a == "--help" || a == "-h");
    // `--no-build` is the bench's flag too (its `--help` says what it means); xtask is
    // the one that acts on it.
    let build = !help && !args.iter().any(|a| a == "--no-build");
    if build {
        setup::ensure(setup::Tier::Test)?;
        build::all()?;
        build::maglev_cost()?;
    }
    build::bench()?;
    let bench = build::bench_binary();
    let mut cmd = if exec::is_root() || help {
        Command::new(bench)
    } else {
        step("running the bench as root (sudo -E)");
        let mut c = Command::new("sudo");
        c.arg("-E").arg(bench);
        c
    };
    if build {
        // What was just built, whatever $LB_BIN and $LB_EBPF_OBJECT say.
        cmd.env("LB_BIN", build::lb_binary())
            .env("LB_EBPF_OBJECT", build::ebpf_object());
    }
    exec::run(cmd.args(args))
}
