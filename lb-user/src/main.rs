//! `lb`: parse flags, then run the daemon or a subcommand (`stats`, `ctl`, `decap`,
//! `down`, `completions`).

use clap::Parser;
use lb_user::api::client::ClientError;
use lb_user::cli::{Cli, Command};
use lb_user::cli::{ctl, decap, docs, down, explain, stats};
use lb_user::config::{Config, parse_duration};
use lb_user::daemon;
use std::io::IsTerminal;
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
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Some(Command::Stats {
            json,
            once,
            interval,
        }) => stats_command(json, once, &interval),
        Some(Command::Ctl(args)) => match ctl::run(&args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lb ctl: error: {e}");
                match e {
                    ClientError::BadAddr(_) | ClientError::Token(_) => ExitCode::from(EXIT_USAGE),
                    _ => ExitCode::FAILURE,
                }
            }
        },
        Some(Command::Decap(args)) => match decap::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lb decap: error: {e:#}");
                if e.is::<decap::UsageError>() {
                    ExitCode::from(EXIT_USAGE)
                } else {
                    ExitCode::FAILURE
                }
            }
        },
        Some(Command::Down { state_dir }) => match down::run(state_dir.as_deref()) {
            Ok(done) => {
                for line in done {
                    println!("{line}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lb down: error: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Explain {
            vip,
            client,
            json,
            watch,
            every,
            for_,
            admin_socket,
        }) => {
            let watching = watch.then_some(Watching {
                every,
                for_,
                admin_socket,
            });
            explain_command(&vip, &client, json, watching)
        }
        Some(Command::Completions { shell }) => {
            docs::completions(shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Some(Command::Manpages { dir }) => match docs::manpages(&dir) {
            Ok(pages) => {
                for p in pages {
                    println!("{}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lb manpages: error: {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        None => run(&cli.run),
    }
}

/// `lb explain --watch` and its options.
struct Watching {
    every: u32,
    for_: Option<String>,
    admin_socket: Option<std::path::PathBuf>,
}

fn explain_command(vip: &str, client: &str, json: bool, watching: Option<Watching>) -> ExitCode {
    let parse = |flag: &str, v: &str| {
        v.parse::<std::net::SocketAddr>().map_err(|_| {
            eprintln!("lb explain: error: {flag} {v:?}: not IP:PORT (IPv6 as [fd00::1]:80)");
            ExitCode::from(EXIT_USAGE)
        })
    };
    let (vip, client) = match (parse("--vip", vip), parse("--client", client)) {
        (Ok(v), Ok(c)) => (v, c),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let duration = match watching.as_ref().and_then(|w| w.for_.as_deref()) {
        None => None,
        Some(d) => match parse_duration(d) {
            Ok(d) => Some(d),
            Err(r) => {
                eprintln!("lb explain: error: --for {d:?}: {r}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    if let Some(w) = &watching
        && !(1..=lb_user::api::request::MAX_WATCH_EVERY).contains(&w.every)
    {
        eprintln!(
            "lb explain: error: --every {}: 1 to {}",
            w.every,
            lb_user::api::request::MAX_WATCH_EVERY
        );
        return ExitCode::from(EXIT_USAGE);
    }
    match explain::explain(vip, client) {
        Ok(e) if json => match serde_json::to_string(&e) {
            Ok(text) if watching.is_some() => println!("{text}"),
            Ok(_) => println!("{}", serde_json::to_string_pretty(&e).unwrap_or_default()),
            Err(err) => {
                eprintln!("lb explain: error: {err}");
                return ExitCode::FAILURE;
            }
        },
        Ok(e) => print!("{}", explain::render(&e)),
        Err(e) => {
            eprintln!("lb explain: error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let Some(w) = watching else {
        return ExitCode::SUCCESS;
    };
    let socket = match w.admin_socket {
        Some(p) => p,
        None => match lb_user::dataplane::runtime::netns_inode() {
            Ok(inode) => lb_user::dataplane::runtime::admin_socket_path(inode),
            Err(e) => {
                eprintln!("lb explain: error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    if let Err(e) =
        ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::Relaxed))
    {
        eprintln!("lb explain: error: installing the Ctrl-C handler: {e}");
        return ExitCode::FAILURE;
    }
    let mut out = std::io::stdout();
    let watch = explain::Watch {
        vip,
        client,
        every: w.every,
        socket,
        duration,
        json,
    };
    match explain::watch(watch, &stop, &mut out) {
        Ok(n) => {
            if !json {
                println!("{n} packets reported");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lb explain: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn stats_command(json: bool, once: bool, interval: &str) -> ExitCode {
    let interval = match parse_duration(interval) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            eprintln!("lb stats: error: --interval {interval:?}: must be longer than zero");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(r) => {
            eprintln!("lb stats: error: --interval {interval:?}: {r}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = if !json && !once && std::io::stdout().is_terminal() {
        stats::live(interval, &mut std::io::stdout())
    } else {
        stats::collect().map(|report| {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serialises")
                );
            } else {
                print!("{}", stats::render(&report));
            }
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb stats: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &lb_user::cli::RunArgs) -> ExitCode {
    let flags = args.settings();
    let cfg = match Config::from_flags(&flags) {
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
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lb: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let started = match daemon::start(cfg, flags) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("lb: error: {e}");
                return if e.is_usage() {
                    ExitCode::from(EXIT_USAGE)
                } else {
                    ExitCode::FAILURE
                };
            }
        };
        match daemon::run(started, daemon::signalled).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lb: error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
