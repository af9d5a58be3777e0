//! `cargo xtask`: the project's build, run and test recipes, so that a fresh machine
//! needs nothing done by hand (see ../shared/TOOLCHAIN.md for why each step exists).

mod bench;
mod build;
mod exec;
mod package;
mod run;
mod setup;
mod test;

use clap::{Parser, Subcommand};
use setup::Tier;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test lb")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain if missing (nothing the tests use), build the eBPF object,
    /// then `lb` in release.
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
    /// Build the Debian package target/debian/lb_VERSION_ARCH.deb (binary, unit,
    /// /etc/lb/lb.toml, man pages, completions, examples).
    Package {
        /// Package the `lb` already built instead of building it first.
        #[arg(long)]
        no_build: bool,
    },
    /// Only install what building, testing and the bench need (apt packages,
    /// bpf-linker).
    Setup,
    /// Benchmark lb against HAProxy, nginx stream, nftables DNAT and no LB
    /// (results in bench/results/; `cargo xtask bench --help` lists its flags).
    #[command(disable_help_flag = true)]
    Bench {
        /// The bench's flags (--quick, --only, --systems, --secs, --repeats, --out,
        /// --no-build).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Build => {
            setup::ensure(Tier::Build)?;
            build::all()?;
        }
        Cmd::Run { args } => {
            setup::ensure(run::tier(&args))?;
            build::all()?;
            run::run(&args)?;
        }
        Cmd::Test { args } => {
            setup::ensure(Tier::Test)?;
            test::all(&args)?;
        }
        Cmd::Package { no_build } => {
            if !no_build {
                setup::ensure(Tier::Build)?;
                build::all()?;
            }
            let deb = package::build()?;
            println!("{}", deb.display());
        }
        Cmd::Setup => setup::ensure(Tier::Test)?,
        Cmd::Bench { args } => bench::run(&args)?,
    }
    Ok(())
}
