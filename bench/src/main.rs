//! The bench, run by `cargo xtask bench` (which builds lb first and runs this as root):
//! lb against the load balancers a user would pick instead (HAProxy, nginx stream,
//! nftables DNAT) and against no load balancer, on the same namespaces, backends and
//! clients, in one run (issue 5). Writes `bench/results/<date>-<host>.{jsonl,md,png}`.
//!
//! Modules, lowest first (each uses only those before it): `cpu`, `cost`, `sys`, `xdp`
//! (the bench's XDP programs), `frames` (the generator's template frames), `sender` (the
//! packet generator: an AF_PACKET sender), `bed`,
//! `systems`, `napi`, `pps`, `clients` (wrk, iperf3), `flood` (the SYN flood), `churn`
//! (the connection-state workloads), `workloads`, `figure`, `maglev`, `path_cost` (the
//! XDP program's ns per packet on each path), `failover` (an LB host dies behind ECMP),
//! `report`; this file runs the plan.

// The system calls aya has no wrapper for are the only unsafe code, in `sys`.
#![deny(unsafe_code)]

mod bed;
mod churn;
mod clients;
mod cost;
mod cpu;
mod failover;
mod figure;
mod flood;
mod frames;
mod maglev;
mod napi;
mod path_cost;
mod pps;
mod report;
mod runtime;
mod sender;
mod sys;
mod systems;
mod workloads;
mod xdp;

use anyhow::{Context, Result, bail};
use bed::Bed;
use clap::Parser;
use cpu::MAX_IDLE_BUSY;
use figure::{Figure, median, num, outliers};
use report::Meta;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use systems::{Availability, System};
use workloads::{Metric, Sample, Workload};

#[derive(Parser, Clone, Debug)]
#[command(
    name = "cargo xtask bench",
    bin_name = "cargo xtask bench",
    about = "Benchmark lb against HAProxy, nginx stream, nftables (DNAT, full NAT) and no LB (results in bench/results/)"
)]
struct Opts {
    /// A short run for the smoke test: 1 s per run (conn-sustained 2 s after 1 s of
    /// warm-up, synflood 1 s per phase), one repeat.
    #[arg(long)]
    pub quick: bool,
    /// Only these workloads (comma-separated): conn, keepalive, bulk1, bulk4, download,
    /// pps-1, pps-1k, pps-100k, conn-sustained, synflood, failover (an LB host dies
    /// behind ECMP: lb-dsr, lb-nat, nft-fullnat on a fabric of their own).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Only these systems (comma-separated): lb-nat, lb-proxy-v2, lb-proxy-v2-sockmap,
    /// haproxy, haproxy-pp2, nginx, nginx-pp, nft-fullnat, nft-dnat, no-lb, xdp-bare.
    #[arg(long, value_delimiter = ',')]
    pub systems: Vec<String>,
    /// Measured seconds per run (default 30 after 5 of warm-up, conn-sustained 30 after
    /// 10, synflood 30 per phase after 10; 1 without warm-up with --quick).
    #[arg(long)]
    pub secs: Option<u32>,
    /// Runs per figure (default 3; 1 with --quick).
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Where the results go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Where the backends' servers run: `any` (not pinned), `lb` (on the LB's CPU) or
    /// `own` (off it, on the client's CPU on this two-CPU machine).
    #[arg(long, value_enum, default_value_t)]
    pub backend_cpu: bed::BackendCpu,
    /// lb's HTTP service admits only the client's address, so a SYN flood's spoofed
    /// SYNs are dropped by its security group at the least cost an LB can drop them:
    /// `synflood`'s ratio is then the most this machine allows any LB.
    #[arg(long)]
    pub filter_flood: bool,
    /// Skip installing and building: use the built `lb` ($LB_BIN or target/release/lb)
    /// and eBPF object ($LB_EBPF_OBJECT or the default path), as the smoke test does.
    /// (`cargo xtask bench` acts on it; the bench itself always uses those.)
    #[arg(long)]
    pub no_build: bool,
}

fn main() -> Result<()> {
    let opts = Opts::parse();
    let (lb, object) = (lb_tests::lb_bin()?, lb_tests::bpf_object()?);
    // Run at the end of the bench: a missing harness fails now, not after an hour of
    // runs.
    maglev::harness()?;
    run(&opts, &lb, &object)
}

/// A run more than this far off the median of its repeats is thrown away and redone.
const OUTLIER: f64 = 0.25;
/// Passes of re-runs for thrown-away runs, at most.
const EXTRA_PASSES: usize = 3;
/// A cell that failed this often is reported as failed.
const MAX_ERRORS: usize = 2;
/// How long a whole run may wait for the machine to become quiet, in all.
const QUIET_BUDGET: Duration = Duration::from_secs(1200);

/// What became of one (system, workload).
struct Cell {
    /// Why it is not measured, if it is not (`not built yet ...`, `n/a: ...`).
    skip: Option<String>,
    samples: Vec<Sample>,
    /// Thrown-away runs, with why.
    discarded: Vec<String>,
    errors: Vec<String>,
}

impl Cell {
    fn valid(&self) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.disturbed.is_none())
            .collect()
    }

    fn failed(&self) -> bool {
        self.errors.len() >= MAX_ERRORS
    }

    fn wants_run(&self, repeats: usize) -> bool {
        self.skip.is_none() && !self.failed() && self.valid().len() < repeats
    }
}

/// lb_xdp's cost per packet under a workload's traffic (`runtime`).
const XDP_NS: Metric = Metric {
    name: "xdp_ns_per_packet",
    unit: "ns",
    higher_is_better: false,
};

/// Figures measured once, outside the workloads.
#[derive(Default)]
struct Extras {
    /// Kernel memory per lb flow, in bytes, or why it could not be read.
    flow_bytes: Option<Result<f64, String>>,
}

struct Plan {
    systems: Vec<System>,
    workloads: Vec<Workload>,
    /// Whether the failover runs (`--only` empty or naming `failover`).
    failover: bool,
    secs: u32,
    /// `--secs`, if given: it overrides every workload's own length.
    given_secs: Option<u32>,
    repeats: usize,
    quick: bool,
    /// What is left of [`QUIET_BUDGET`].
    patience: std::cell::Cell<Duration>,
}

/// What every session of a run uses and fills in.
struct Runs<'a> {
    bed: Bed,
    /// The copy of `lb` in the bed.
    lb_bin: &'a Path,
    plan: &'a Plan,
    cells: BTreeMap<(System, Workload), Cell>,
    extras: Extras,
}

fn run(opts: &Opts, lb_bin: &Path, object: &Path) -> Result<()> {
    let started = Instant::now();
    let plan = plan(opts)?;
    preflight()?;
    lb_tests::cleanup::install_ctrlc_handler()?;
    let deadline = started
        + if plan.quick {
            Duration::from_secs(150)
        } else {
            Duration::from_secs(60 * 60)
        };

    eprintln!("\n==> bench: building the namespaces, backends (nginx, iperf3)");
    let mut bed = Bed::new(object, opts.backend_cpu)?;
    bed.flood_filtered = opts.filter_flood;
    // A copy, so a rebuild of target/release/lb during the run changes nothing measured.
    let identity = lb_identity(lb_bin);
    // The failover runs after the bed is gone, with the binary it was copied from.
    let lb_original = lb_bin.to_path_buf();
    let lb_copy = bed.path("lb");
    std::fs::copy(lb_bin, &lb_copy)
        .with_context(|| format!("copying {} to {}", lb_bin.display(), lb_copy.display()))?;
    let lb_bin = lb_copy.as_path();
    let mut states: Vec<(System, String)> = Vec::new();
    let mut cells: BTreeMap<(System, Workload), Cell> = BTreeMap::new();
    for &s in &plan.systems {
        let state = match systems::availability(s, &bed, lb_bin)? {
            Availability::Ready => "ok".to_owned(),
            Availability::NotBuilt(why) => why,
        };
        for &w in &plan.workloads {
            let skip = if state != "ok" {
                Some(state.clone())
            } else {
                w.not_applicable(s).map(str::to_owned)
            };
            cells.insert(
                (s, w),
                Cell {
                    skip,
                    samples: Vec::new(),
                    discarded: Vec::new(),
                    errors: Vec::new(),
                },
            );
        }
        if state != "ok" {
            eprintln!("bench: {}: {state}", s.name());
        }
        states.push((s, state));
    }

    // For lb_xdp's ns per packet under each workload (`runtime`).
    let _stats = runtime::StatsOn::new()?;
    let mut runs = Runs {
        bed,
        lb_bin,
        plan: &plan,
        cells,
        extras: Extras::default(),
    };
    // Rounds: every system in turn, one run of each workload, `repeats` times, so a
    // slow drift of the machine spreads over all systems alike.
    for round in 1..=plan.repeats {
        for &s in &plan.systems {
            session(&mut runs, s, &format!("round {round}/{}", plan.repeats))?;
        }
    }
    // Runs that were disturbed or are outliers are thrown away and redone.
    // Not in a quick run: it reports what it saw, disturbed or not.
    let passes = if plan.quick { 0 } else { EXTRA_PASSES };
    for pass in 1..=passes {
        for c in runs.cells.values_mut() {
            drop_outliers(c);
        }
        let again: Vec<System> = plan
            .systems
            .iter()
            .copied()
            .filter(|s| {
                plan.workloads
                    .iter()
                    .any(|w| runs.cells[&(*s, *w)].wants_run(plan.repeats))
            })
            .collect();
        if again.is_empty() || Instant::now() >= deadline {
            break;
        }
        for s in again {
            session(&mut runs, s, &format!("re-run pass {pass}"))?;
        }
    }
    let Runs {
        bed, cells, extras, ..
    } = runs;
    drop(bed);
    let mut notes = vec![identity];
    if opts.filter_flood {
        notes.push(format!(
            "`--filter-flood`: lb's HTTP service admits {} only (`allow`), so the SYN flood is dropped by its security group before any flow lookup or cookie; `synflood`'s ratio is then the most this machine allows an LB (the allowlist applies to every workload of the run, whose lb figures include its check)",
            bed::CLIENT_V4
        ));
    }
    let mut figures = figures(&plan, &cells, &extras, &mut notes);
    if plan.failover {
        figures.extend(failover::figures(
            &plan.systems,
            &lb_original,
            object,
            plan.quick,
        ));
    }
    let meta = Meta {
        date: today(),
        host: short_host(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpu: cpu_model(),
        command: command_line(),
        secs: plan.secs,
        repeats: plan.repeats,
        elapsed_secs: started.elapsed().as_secs_f64(),
        systems: states,
        workloads: plan.workloads.clone(),
        backend_cpu: opts.backend_cpu,
        flood_filtered: opts.filter_flood,
        notes,
    };
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let base = opts.out.join(format!("{}-{}", meta.date, meta.host));
    let (jsonl, md, png) = (
        base.with_extension("jsonl"),
        base.with_extension("md"),
        base.with_extension("png"),
    );
    report::write_jsonl(&jsonl, &figures)?;
    let text = report::markdown(&meta, &figures);
    std::fs::write(&md, &text).with_context(|| format!("writing {}", md.display()))?;
    let chart = if report::chart(&png, &meta, &figures)? {
        format!(" and {}", png.display())
    } else {
        // A chart from an earlier run of the day would read as this one's.
        let _ = std::fs::remove_file(&png);
        " (no chart: lb-nat has no peer's figures in this run)".to_owned()
    };
    println!("{text}");
    eprintln!(
        "bench: wrote {} and {}{chart} in {:.0} s",
        jsonl.display(),
        md.display(),
        meta.elapsed_secs
    );
    let failed: Vec<String> = cells
        .iter()
        .filter(|(_, c)| c.skip.is_none() && c.samples.is_empty())
        .map(|((s, w), c)| format!("{} {}: {}", s.name(), w.name(), c.errors.join("; ")))
        .collect();
    if !failed.is_empty() {
        bail!("some runs failed:\n{}", failed.join("\n"));
    }
    Ok(())
}

fn plan(opts: &Opts) -> Result<Plan> {
    let systems = select(&opts.systems, &systems::ALL, System::name, "system")?;
    let failover = opts.only.is_empty() || opts.only.iter().any(|w| w == failover::WORKLOAD);
    let only: Vec<String> = opts
        .only
        .iter()
        .filter(|w| *w != failover::WORKLOAD)
        .cloned()
        .collect();
    let workloads = if only.is_empty() && !opts.only.is_empty() {
        Vec::new()
    } else {
        select(&only, &workloads::ALL, Workload::name, "workload")?
    };
    // The default measured seconds of the workloads without their own (`durations`).
    let (secs, repeats) = if opts.quick {
        (1, 1)
    } else {
        (workloads::DEFAULT_SECS.1, 3)
    };
    Ok(Plan {
        systems,
        workloads,
        failover,
        secs: opts.secs.unwrap_or(secs).clamp(1, 600),
        given_secs: opts.secs.map(|s| s.clamp(1, 600)),
        repeats: opts.repeats.unwrap_or(repeats).clamp(1, 20),
        quick: opts.quick,
        patience: std::cell::Cell::new(if opts.quick {
            Duration::ZERO
        } else {
            QUIET_BUDGET
        }),
    })
}

/// The entries of `all` that `names` names, all of them when it names none; an
/// unknown name fails with the list of known ones.
fn select<T: Copy>(
    names: &[String],
    all: &[T],
    name: fn(T) -> &'static str,
    what: &str,
) -> Result<Vec<T>> {
    if names.is_empty() {
        return Ok(all.to_vec());
    }
    names
        .iter()
        .map(|n| {
            all.iter()
                .copied()
                .find(|&x| name(x) == n)
                .with_context(|| {
                    let known: Vec<&str> = all.iter().map(|&x| name(x)).collect();
                    format!("unknown {what} `{n}` ({what}s: {})", known.join(", "))
                })
        })
        .collect()
}

/// Everything the bench runs must be there: a missing tool fails the run (and the
/// smoke test) with its name.
fn preflight() -> Result<()> {
    lb_tests::require_root()?;
    lb_tests::require_tools(lb_tests::TOOLS)?;
    lb_tests::require_tools(&[
        "wrk", "iperf3", "haproxy", "nginx", "nft", "taskset", "ss", "getconf",
    ])
    .context("the bench's tools are missing: `cargo xtask setup` installs them")?;
    for (file, package) in [
        (bed::NGINX_STREAM_MODULE, "libnginx-mod-stream"),
        (report::FONT, "fonts-dejavu-core"),
    ] {
        if !Path::new(file).is_file() {
            bail!("{file} is missing (Debian package {package}; `cargo xtask setup` installs it)");
        }
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!("the bench pins the client and the LB to different CPUs: it needs 2 CPUs");
    }
    Ok(())
}

/// Starts `system`, runs each selected workload that still wants a run once, stops it.
fn session(runs: &mut Runs, system: System, label: &str) -> Result<()> {
    let Runs {
        bed,
        lb_bin,
        plan,
        cells,
        extras,
    } = runs;
    let (lb_bin, plan): (&Path, &Plan) = (lb_bin, plan);
    let todo: Vec<Workload> = plan
        .workloads
        .iter()
        .copied()
        .filter(|w| cells[&(system, *w)].wants_run(plan.repeats))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    eprintln!("bench: {label}: {}", system.name());
    let mut running = match systems::start(system, bed, lb_bin) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: {} did not start: {e:#}", system.name());
            for w in todo {
                if let Some(c) = cells.get_mut(&(system, w)) {
                    c.errors.push(format!("did not start: {e:#}"));
                }
            }
            return Ok(());
        }
    };
    if let (Some(pid), None, System::LbNat) = (running.daemon_pid(), &extras.flow_bytes, system) {
        extras.flow_bytes = Some(cost::flow_bytes(pid).map_err(|e| format!("{e:#}")));
    }
    if !plan.quick && system != System::XdpBare {
        // Warm-up, not recorded: caches, conntrack, the backends' first workers.
        let _ = workloads::run(Workload::KeepAlive, bed, &mut running, (0, 1));
    }
    // lb_xdp's own run-time statistics around each run of lb-nat, and the bare
    // redirect's around each of xdp-bare (the floor lb_xdp's figure stands on).
    let lb_pid = running.daemon_pid();
    let xdp_stats = || {
        let runs = match (system, lb_pid) {
            (System::LbNat, Some(pid)) => runtime::lb_xdp(pid),
            (System::XdpBare, _) => runtime::bare_redirect(),
            _ => return None,
        };
        runs.map_err(|e| eprintln!("bench: {}'s run-time statistics: {e:#}", system.name()))
            .ok()
    };
    for w in todo {
        let busy = wait_quiet(plan)?;
        let before = xdp_stats();
        let result = workloads::run(
            w,
            bed,
            &mut running,
            w.durations(plan.given_secs, plan.quick),
        )
        .map(|mut sample| {
            sample.xdp_ns = before
                .zip(xdp_stats())
                .and_then(|(b, a)| a.per_run_since(b));
            sample
        });
        let c = cells.get_mut(&(system, w)).expect("every cell exists");
        match result {
            Ok(mut sample) => {
                if sample.disturbed.is_none() {
                    sample.disturbed = busy;
                }
                let primary = w.metrics()[0];
                eprintln!(
                    "bench:   {:<9} {} {}{}",
                    w.name(),
                    num(sample.values[0]),
                    primary.unit,
                    sample
                        .disturbed
                        .as_deref()
                        .map(|d| format!(" (disturbed: {d}; will run again)"))
                        .unwrap_or_default()
                );
                if let Some(d) = &sample.disturbed {
                    c.discarded.push(d.clone());
                }
                c.samples.push(sample);
            }
            Err(e) => {
                eprintln!("bench:   {:<9} failed: {e:#}", w.name());
                c.errors.push(format!("{e:#}"));
                // The system may be broken: start it afresh next time.
                break;
            }
        }
    }
    if let Err(e) = running.stop(bed) {
        eprintln!("bench: stopping {}: {e:#}", system.name());
        for w in &plan.workloads {
            if let Some(c) = cells.get_mut(&(system, *w))
                && c.skip.is_none()
            {
                c.errors.push(format!("stopping: {e:#}"));
            }
        }
    }
    Ok(())
}

/// Waits until the machine is quiet, within what is left of the run's patience;
/// returns why the run is disturbed if it did not become quiet.
fn wait_quiet(plan: &Plan) -> Result<Option<String>> {
    let window = Duration::from_millis(if plan.quick { 100 } else { 300 });
    let load = cpu::loadavg();
    let started = Instant::now();
    let mut busy;
    loop {
        let (ok, b) = cpu::quiet(window, MAX_IDLE_BUSY)?;
        if ok {
            break Ok(None);
        }
        busy = b;
        let waited = started.elapsed();
        if waited >= plan.patience.get() {
            break Ok(Some(format!(
                "machine busy before the run ({:.0}% of CPU, loadavg {load})",
                busy * 100.0
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    .inspect(|_| {
        plan.patience
            .set(plan.patience.get().saturating_sub(started.elapsed()));
    })
}

/// Moves the runs of `c` whose first figure is an outlier among the valid runs to the
/// disturbed ones.
fn drop_outliers(c: &mut Cell) {
    let idx: Vec<usize> = c
        .samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.disturbed.is_none())
        .map(|(i, _)| i)
        .collect();
    let primary: Vec<f64> = idx.iter().map(|&i| c.samples[i].values[0]).collect();
    let m = if primary.is_empty() {
        0.0
    } else {
        median(&primary)
    };
    for o in outliers(&primary, OUTLIER) {
        let s = &mut c.samples[idx[o]];
        let why = format!(
            "{} is more than {:.0}% off the median {}",
            num(s.values[0]),
            OUTLIER * 100.0,
            num(m)
        );
        c.discarded.push(why.clone());
        s.disturbed = Some(why);
    }
}

fn figures(
    plan: &Plan,
    cells: &BTreeMap<(System, Workload), Cell>,
    extras: &Extras,
    notes: &mut Vec<String>,
) -> Vec<Figure> {
    let mut out = Vec::new();
    let (mut discarded, mut all_disturbed) = (0, Vec::new());
    for &s in &plan.systems {
        for &w in &plan.workloads {
            let c = &cells[&(s, w)];
            let mut used: Vec<&Sample> = c.valid();
            if used.is_empty() && c.skip.is_none() && !c.failed() && !c.samples.is_empty() {
                // Never quiet: report the disturbed runs rather than nothing, and say so.
                used = c.samples.iter().collect();
                all_disturbed.push(format!("{} {}", s.name(), w.name()));
            }
            discarded += c.discarded.len();
            for (i, &metric) in w.metrics().iter().enumerate() {
                let status = if let Some(skip) = &c.skip {
                    skip.clone()
                } else if used.is_empty() {
                    format!(
                        "failed: {}",
                        c.errors.last().map_or("no run", String::as_str)
                    )
                } else {
                    "ok".to_owned()
                };
                let vals: Vec<f64> = used.iter().map(|s| s.values[i]).collect();
                let ok = status == "ok";
                out.push(Figure {
                    system: s,
                    workload: w.name().to_owned(),
                    metric,
                    status,
                    median: ok.then(|| median(&vals)),
                    min: ok.then(|| vals.iter().copied().fold(f64::INFINITY, f64::min)),
                    max: ok.then(|| vals.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
                    repeats: vals.len(),
                    discarded: c.discarded.len(),
                });
            }
            let xdp_ns: Vec<f64> = used.iter().filter_map(|s| s.xdp_ns).collect();
            if !xdp_ns.is_empty() {
                out.push(Figure {
                    system: s,
                    workload: w.name().to_owned(),
                    metric: XDP_NS,
                    status: "ok".to_owned(),
                    median: Some(median(&xdp_ns)),
                    min: Some(xdp_ns.iter().copied().fold(f64::INFINITY, f64::min)),
                    max: Some(xdp_ns.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
                    repeats: xdp_ns.len(),
                    discarded: c.discarded.len(),
                });
            }
        }
    }
    if out.iter().any(|f| f.metric.name == XDP_NS.name) {
        notes.push(format!(
            "{}: lb_xdp's mean ns per packet over each lb-nat run, warm-up included, by the \
             kernel's run-time statistics (kernel.bpf_stats_enabled=1 for the bench); for \
             xdp-bare, its program's (a redirect and nothing else): the floor any XDP \
             program's figure here stands on, the statistics' own two clock reads included",
            XDP_NS.name
        ));
    }
    if discarded > 0 {
        notes.push(format!(
            "{discarded} runs were disturbed or outliers{}",
            if plan.quick {
                " (a quick run does not run them again)"
            } else {
                "; they were thrown away and run again"
            }
        ));
    }
    if !all_disturbed.is_empty() {
        notes.push(format!(
            "**every run of these was disturbed, and their figures use them anyway**: {}",
            all_disturbed.join(", ")
        ));
    }
    // A figure that could not be measured in this run.
    let todo = |workload: &str, metric: Metric, why: &str| Figure {
        system: System::LbNat,
        workload: workload.to_owned(),
        metric,
        status: format!("todo: {why}"),
        median: None,
        min: None,
        max: None,
        repeats: 0,
        discarded: 0,
    };
    let metric = |name, unit, higher_is_better| Metric {
        name,
        unit,
        higher_is_better,
    };
    out.extend(maglev::figures(plan.quick, notes));
    out.extend(path_cost::figures(plan.quick, notes));
    let flow_metric = metric("memory_per_flow", "bytes", false);
    match &extras.flow_bytes {
        Some(Ok(bytes)) => out.push(Figure {
            system: System::LbNat,
            workload: "flow-table".to_owned(),
            metric: flow_metric,
            status: "ok".to_owned(),
            median: Some(*bytes),
            min: Some(*bytes),
            max: Some(*bytes),
            repeats: 1,
            discarded: 0,
        }),
        Some(Err(e)) => out.push(Figure {
            status: format!("failed: {e}"),
            ..todo("flow-table", flow_metric, "")
        }),
        None => out.push(todo(
            "flow-table",
            flow_metric,
            "kernel memory per flow (lb-nat did not run)",
        )),
    }
    out
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "undated".into())
}

fn short_host() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h = h.trim().split('.').next().unwrap_or("").to_owned();
    let h: String = h
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    if h.is_empty() { "host".into() } else { h }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The bench command as a reader would type it again: without `--out`, whose directory
/// is this machine's and does not change a figure.
fn command_line() -> String {
    format!(
        "cargo xtask bench {}",
        shareable(std::env::args().skip(1)).join(" ")
    )
}

/// `args` without `--out DIR` (or `--out=DIR`).
fn shareable(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        if a == "--out" {
            args.next();
        } else if !a.starts_with("--out=") {
            out.push(a);
        }
    }
    out
}

/// Which lb was measured: the source commit of the tree the binary was built in (and
/// whether that tree had changes) and the binary's build time.
fn lb_identity(lb_bin: &Path) -> String {
    let tree = lb_bin
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(lb_tests::workspace_root);
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(&tree)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    // Changes to the code `lb` is built from; results files and the like do not count.
    let dirty = !git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "lb-user",
        "lb-ebpf",
        "lb-common",
        "Cargo.lock",
    ])
    .is_empty();
    let built = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .arg("-r")
        .arg(lb_bin)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    // Inside the workspace the path is given from its root: the report names no
    // directory of this machine.
    let root = lb_tests::workspace_root();
    let root = root.canonicalize().unwrap_or(root);
    let shown = lb_bin
        .canonicalize()
        .ok()
        .and_then(|p| p.strip_prefix(&root).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| lb_bin.to_path_buf());
    format!(
        "lb: `{}` built {built}, source at commit {commit}{}",
        shown.display(),
        if dirty {
            " (with uncommitted changes in the tree)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::shareable;

    #[test]
    fn the_command_line_leaves_out_the_output_directory() {
        let args = [
            "--no-build",
            "--out",
            "/somewhere",
            "--only",
            "pps-1",
            "--out=/else",
        ];
        assert_eq!(
            shareable(args.iter().map(|a| a.to_string())),
            ["--no-build", "--only", "pps-1"]
        );
    }
}
