//! `lb`: parse flags, then run the daemon or a client subcommand.

use clap::Parser;
use lb_user::cli::{Cli, Command};
use lb_user::config::Config;
use lb_user::dataplane::DataplaneError;
use lb_user::{daemon, stats};
use std::process::ExitCode;

/// Exit status for invalid flags or configuration (as clap uses for bad flags).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LB_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Command::Stats { json }) => match stats::collect() {
            Ok(report) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).expect("report serialises")
                    );
                } else {
                    print!("{}", stats::render(&report));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lb stats: error: {e}");
                ExitCode::FAILURE
            }
        },
        None => run(&cli.run),
    }
}

fn run(args: &lb_user::cli::RunArgs) -> ExitCode {
    let cfg = match Config::from_flags(&args.settings()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lb: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.check {
        println!("{cfg:#?}");
        return ExitCode::SUCCESS;
    }
    let dp = match daemon::start(&cfg) {
        Ok(dp) => dp,
        // A named interface or pin directory that is unusable is a bad flag value.
        Err(
            e @ (DataplaneError::UnknownIface { .. }
            | DataplaneError::Pin(_)
            | DataplaneError::PinnedSize { .. }),
        ) => {
            eprintln!("lb: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            eprintln!("lb: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lb: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(daemon::run(dp)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
