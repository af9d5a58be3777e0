//! `cargo xtask`: the project's build, run and test recipes, so that a fresh machine
//! needs nothing done by hand (see ../shared/TOOLCHAIN.md for why each step exists).

mod bench;
mod build;
mod exec;
mod run;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test lb")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain if missing, build the eBPF object, then `lb` in release.
    Build,
    /// Build, then run `lb ARGS` as root; with no ARGS, run the built-in demo.
    Run {
        /// Arguments for `lb`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Everything: formatting, lints, unit tests, eBPF program tests, end-to-end tests.
    Test {
        /// Passed to the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Only install what building and testing need (apt packages, bpf-linker).
    Setup,
    /// Benchmark lb against HAProxy, nginx stream, nftables DNAT and no LB
    /// (results in bench/results/).
    Bench(bench::Opts),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Build => {
            setup::ensure()?;
            build::all()?;
        }
        Cmd::Run { args } => {
            setup::ensure()?;
            build::all()?;
            run::run(&args)?;
        }
        Cmd::Test { args } => {
            setup::ensure()?;
            test::all(&args)?;
        }
        Cmd::Setup => setup::ensure()?,
        Cmd::Bench(opts) => {
            if !opts.no_build {
                setup::ensure()?;
                build::all()?;
                build::maglev_cost()?;
            }
            if !exec::is_root() {
                // Built above: the root half only measures.
                let mut args: Vec<String> = std::env::args().skip(1).collect();
                if !opts.no_build {
                    args.push("--no-build".into());
                }
                return exec::run(
                    std::process::Command::new("sudo")
                        .arg("-E")
                        .arg(std::env::current_exe()?)
                        .args(args),
                );
            }
            let (lb, object) = if opts.no_build {
                (lb_tests::lb_bin()?, lb_tests::bpf_object()?)
            } else {
                (build::lb_binary(), build::ebpf_object())
            };
            // Run at the end of the bench: a missing harness fails now, not after an
            // hour of runs.
            bench::maglev::harness()?;
            bench::run(&opts, &lb, &object)?;
        }
    }
    Ok(())
}
