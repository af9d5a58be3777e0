//! What building one service's Maglev table costs (issue 5), for 10 to 10,000 backends:
//! build time, heap and balance, measured once per bench run by lb-common's
//! `maglev_cost` example in release (the daemon's code as the daemon runs it; xtask
//! itself is a debug build).

use crate::cpu;
use crate::figure::{self, Figure};
use crate::systems::System;
use crate::workloads::Metric;
use anyhow::{Context, Result, bail};
use lb_common::maglev::is_prime;
use lb_common::maps::DEFAULT_RING_SIZE;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The figures' workload name.
pub const WORKLOAD: &str = "maglev-build";
/// The backend counts issue 5 asks for.
const BACKENDS: [u32; 4] = [10, 100, 1_000, 10_000];
/// Slots per backend for a balanced table: Maglev gives each backend its share to
/// within one slot, so 100 slots each keep every share within 1% (the Maglev paper's
/// advice, ring ≥ 100 × backends).
const SLOTS_PER_BACKEND: u32 = 100;
/// Timed builds per case and their time budget per case: (builds, ms).
const FULL: (usize, u64) = (25, 3000);
/// A quick run's: the harness still makes its minimum of three builds.
const QUICK: (usize, u64) = (3, 0);

/// A figure per case: (name prefix, unit, higher is better).
const METRICS: [(&str, &str, bool); 6] = [
    ("build_time", "ms", false),
    ("peak_heap", "bytes", false),
    ("table_size", "bytes", false),
    // The fullest and the emptiest backend's slots over ring ÷ backends.
    ("balance_max", "ratio", false),
    ("balance_min", "ratio", true),
    // Slots of the other backends that change backend when one is removed, in % of
    // the ring.
    ("moved_others", "%", false),
];

/// One measured table: this many backends of weight 1 in a ring of this size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Case {
    backends: u32,
    ring_size: u32,
}

impl Case {
    /// The figure name of one of [`METRICS`] for this case, e.g.
    /// `build_time_n1000_ring100003`.
    fn metric(&self, prefix: &str) -> String {
        format!("{prefix}_n{}_ring{}", self.backends, self.ring_size)
    }

    fn ring_label(&self) -> String {
        if self.ring_size == DEFAULT_RING_SIZE {
            format!("{} (default)", self.ring_size)
        } else {
            format!("{} (≥ {SLOTS_PER_BACKEND} × backends)", self.ring_size)
        }
    }
}

/// Every backend count at the daemon's default ring size and, where that leaves fewer
/// than [`SLOTS_PER_BACKEND`] slots per backend, also at the ring an operator should
/// pick instead.
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for backends in BACKENDS {
        cases.push(Case {
            backends,
            ring_size: DEFAULT_RING_SIZE,
        });
        let balanced = balanced_ring(backends);
        if balanced > DEFAULT_RING_SIZE {
            cases.push(Case {
                backends,
                ring_size: balanced,
            });
        }
    }
    cases
}

/// The smallest prime ring with [`SLOTS_PER_BACKEND`] slots per backend.
fn balanced_ring(backends: u32) -> u32 {
    let mut n = backends * SLOTS_PER_BACKEND;
    while !is_prime(n) {
        n += 1;
    }
    n
}

/// The harness binary. With `--no-build` it must have been built before, as `lb`
/// must; checked at the start of a run rather than after it.
pub fn harness() -> Result<PathBuf> {
    let path = lb_tests::workspace_root().join("target/release/examples/maglev_cost");
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p lb-common --features std --example maglev_cost` (`cargo xtask bench` without --no-build does)",
            path.display(),
        );
    }
    Ok(path)
}

/// The Maglev figures of the run. Run after the network workloads, once the test bed is
/// gone, so the builds have the machine to themselves; a failure is a `failed` figure
/// (listed under the report's failures), not an absent one.
pub fn figures(quick: bool, notes: &mut Vec<String>) -> Vec<Figure> {
    eprintln!("bench: Maglev table build cost, {} cases", cases().len());
    match measure(quick, notes) {
        Ok(measured) => measured.iter().flat_map(Measured::figures).collect(),
        Err(e) => {
            eprintln!("bench: the Maglev build cost failed: {e:#}");
            vec![Figure {
                system: System::LbNat,
                workload: WORKLOAD.to_owned(),
                metric: Metric {
                    name: "build_time",
                    unit: "ms",
                    higher_is_better: false,
                },
                status: format!("failed: {e:#}"),
                median: None,
                min: None,
                max: None,
                repeats: 0,
                discarded: 0,
            }]
        }
    }
}

fn measure(quick: bool, notes: &mut Vec<String>) -> Result<Vec<Measured>> {
    let harness = harness()?;
    let cases = cases();
    let (repeats, max_ms) = if quick { QUICK } else { FULL };
    let (quiet, busy) = cpu::quiet(Duration::from_millis(300), cpu::MAX_IDLE_BUSY)?;
    if !quiet {
        notes.push(format!(
            "the Maglev build times were measured on a busy machine ({:.0}% of CPU time busy just before)",
            busy * 100.0
        ));
    }
    let out = lb_tests::cmd::run(
        Command::new(&harness)
            .args(["--repeats", &repeats.to_string()])
            .args(["--max-ms", &max_ms.to_string()])
            .args(
                cases
                    .iter()
                    .map(|c| format!("{}:{}", c.backends, c.ring_size)),
            ),
    )
    .context("running the Maglev cost harness")?;
    parse(&out, &cases).context("reading the Maglev cost harness's output")
}

/// What the harness printed for one case (see lb-common/examples/maglev_cost.rs).
#[derive(Clone, Debug, PartialEq)]
struct Measured {
    case: Case,
    build_ms: Vec<f64>,
    peak_heap_bytes: f64,
    table_bytes: f64,
    slots_min: f64,
    slots_max: f64,
    moved_other_slots: f64,
}

/// The harness's JSON lines, which must be the `cases` asked for, in order.
fn parse(out: &str, cases: &[Case]) -> Result<Vec<Measured>> {
    let measured = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_line(l).with_context(|| format!("line {l:?}")))
        .collect::<Result<Vec<_>>>()?;
    let got: Vec<Case> = measured.iter().map(|m| m.case).collect();
    if got != cases {
        bail!("measured {got:?}, not the cases asked for, {cases:?}");
    }
    Ok(measured)
}

fn parse_line(line: &str) -> Result<Measured> {
    let v: serde_json::Value = serde_json::from_str(line).context("not JSON")?;
    let num = |key: &str| {
        v[key]
            .as_f64()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .with_context(|| format!("no number `{key}`"))
    };
    let int = |key: &str| {
        v[key]
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .with_context(|| format!("no count `{key}`"))
    };
    let build_ms: Vec<f64> = v["build_ms"]
        .as_array()
        .context("no list `build_ms`")?
        .iter()
        .map(|t| t.as_f64().filter(|t| t.is_finite() && *t >= 0.0))
        .collect::<Option<_>>()
        .context("`build_ms` holds something else than times")?;
    if build_ms.is_empty() {
        bail!("no timed build");
    }
    Ok(Measured {
        case: Case {
            backends: int("backends")?,
            ring_size: int("ring_size")?,
        },
        build_ms,
        peak_heap_bytes: num("peak_heap_bytes")?,
        table_bytes: num("table_bytes")?,
        slots_min: num("slots_min")?,
        slots_max: num("slots_max")?,
        moved_other_slots: num("moved_other_slots")?,
    })
}

impl Measured {
    fn figures(&self) -> Vec<Figure> {
        let fair = self.case.ring_size as f64 / self.case.backends as f64;
        let single = [
            self.peak_heap_bytes,
            self.table_bytes,
            self.slots_max / fair,
            self.slots_min / fair,
            self.moved_other_slots / self.case.ring_size as f64 * 100.0,
        ];
        let min = self.build_ms.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.build_ms.iter().copied().fold(0.0, f64::max);
        let mut values = vec![(
            figure::median(&self.build_ms),
            min,
            max,
            self.build_ms.len(),
        )];
        values.extend(single.iter().map(|&v| (v, v, v, 1)));
        METRICS
            .iter()
            .zip(values)
            .map(
                |(&(prefix, unit, higher_is_better), (median, min, max, repeats))| Figure {
                    system: System::LbNat,
                    workload: WORKLOAD.to_owned(),
                    metric: Metric {
                        // Leaked: `Metric` names are `&'static str`, and a run makes a
                        // few dozen of these once.
                        name: Box::leak(self.case.metric(prefix).into_boxed_str()),
                        unit,
                        higher_is_better,
                    },
                    status: "ok".to_owned(),
                    median: Some(median),
                    min: Some(min),
                    max: Some(max),
                    repeats,
                    discarded: 0,
                },
            )
            .collect()
    }
}

/// The report's section on the Maglev figures: a row per case, then how to read them
/// and which ring size to pick. Empty when nothing was measured (the report's failures
/// say why).
pub fn markdown(figures: &[Figure]) -> String {
    let get = |case: &Case, prefix: &str| {
        let name = case.metric(prefix);
        figures
            .iter()
            .find(|f| f.workload == WORKLOAD && f.metric.name == name && f.ok())
    };
    let mut rows = String::new();
    for case in cases() {
        let Some(time) = get(&case, "build_time") else {
            continue;
        };
        let value = |prefix: &str| get(&case, prefix).and_then(|f| f.median);
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "–".into());
        writeln!(
            rows,
            "| {} | {} | {} ({}–{}) | {} | {} | {} | {} / {} | {} |",
            case.backends,
            case.ring_label(),
            figure::num(time.median.unwrap_or(0.0)),
            figure::num(time.min.unwrap_or(0.0)),
            figure::num(time.max.unwrap_or(0.0)),
            time.repeats,
            or_dash(value("peak_heap").map(bytes)),
            or_dash(value("table_size").map(bytes)),
            or_dash(value("balance_max").map(|v| format!("{v:.2}"))),
            or_dash(value("balance_min").map(|v| format!("{v:.2}"))),
            or_dash(value("moved_others").map(|v| format!("{v:.2}%"))),
        )
        .unwrap();
    }
    if rows.is_empty() {
        return rows;
    }
    let mut s = String::new();
    let w = &mut s;
    writeln!(w, "\n## Maglev table build\n").unwrap();
    writeln!(
        w,
        "| backends | ring size | build ms, median (min–max) | builds | peak heap | table | fullest / emptiest backend vs fair share | others' slots moved when one goes |\n|---|---|---|---|---|---|---|---|"
    )
    .unwrap();
    w.push_str(&rows);
    writeln!(
        w,
        "\n- build: lb-common's `build_table` (what the daemon runs for a service whenever its backends change), release build, backends of weight 1 at distinct addresses; median (min–max) of the timed builds after one untimed one. Peak heap: the most heap one build holds beyond what was held before, its table included. Table: the table's bytes, which the daemon writes into the kernel's `MAGLEV` array.\n\
         - fullest / emptiest: the slots (the share of new flows) of the fullest and the emptiest backend over ring ÷ backends. Maglev gives backends of equal weight their share to within one slot, so shares spread by about backends ÷ ring: keeping them within 1% takes a ring of at least {SLOTS_PER_BACKEND} × backends, as the Maglev paper advises.\n\
         - others' slots moved: when the middle backend of the set is removed, the slots of the other backends that change backend anyway, in % of the ring (new flows moved needlessly; the removed backend's own 1/N move by necessity, and established flows keep their backend through the flow table).\n\
         - ring size to pick: the default {DEFAULT_RING_SIZE} keeps shares within 1% up to {} backends in a service; above that, set `--ring-size` (`ring_size` in the config file) to a prime of at least {SLOTS_PER_BACKEND} × the largest service's backends, e.g. {} for 1,000 and {} for 10,000. The kernel array holds two tables of that size, 4 bytes a slot, for every service the daemon is sized for (`--max-services`), allocated at start: lower `--max-services` with a large ring.",
        DEFAULT_RING_SIZE / SLOTS_PER_BACKEND,
        balanced_ring(1_000),
        balanced_ring(10_000),
    )
    .unwrap();
    s
}

/// Bytes with a binary unit and three significant digits.
fn bytes(b: f64) -> String {
    const KIB: f64 = 1024.0;
    if b >= KIB * KIB {
        format!("{} MiB", figure::num(b / (KIB * KIB)))
    } else if b >= KIB {
        format!("{} KiB", figure::num(b / KIB))
    } else {
        format!("{} B", figure::num(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE_10: &str = r#"{"backends":10,"ring_size":65537,"build_ms":[1.8,1.7,5.8],"peak_heap_bytes":262724,"table_bytes":262148,"slots_min":6553,"slots_max":6554,"removed_slots":6553,"moved_other_slots":110}"#;
    const LINE_10000: &str = r#"{"backends":10000,"ring_size":1000003,"build_ms":[84.2,47.5,52.4],"peak_heap_bytes":4582156,"table_bytes":4000012,"slots_min":100,"slots_max":101,"removed_slots":100,"moved_other_slots":834}"#;

    fn case(backends: u32, ring_size: u32) -> Case {
        Case {
            backends,
            ring_size,
        }
    }

    #[test]
    fn small_rings_get_a_balanced_one_too() {
        assert_eq!(DEFAULT_RING_SIZE, 65537, "update the cases below");
        assert_eq!(
            cases(),
            [
                case(10, 65537),
                case(100, 65537),
                case(1000, 65537),
                case(1000, 100003),
                case(10000, 65537),
                case(10000, 1000003),
            ]
        );
        assert_eq!(balanced_ring(1), 101);
    }

    #[test]
    fn parses_the_harness_output() {
        let cases = [case(10, 65537), case(10000, 1000003)];
        let out = format!("{LINE_10}\n\n{LINE_10000}\n");
        let m = parse(&out, &cases).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].case, cases[0]);
        assert_eq!(m[0].build_ms, [1.8, 1.7, 5.8]);
        assert_eq!(m[1].peak_heap_bytes, 4582156.0);
        assert_eq!(m[1].moved_other_slots, 834.0);
    }

    #[test]
    fn rejects_output_that_is_not_the_cases_asked_for() {
        let cases = [case(10, 65537), case(10000, 1000003)];
        // A case missing, or in another order.
        assert!(parse(LINE_10, &cases).is_err());
        let swapped = format!("{LINE_10000}\n{LINE_10}");
        assert!(parse(&swapped, &cases).is_err());
        // Not JSON, a field missing, no timed build, a time that is not one.
        let e = parse("oops", &cases[..1]).unwrap_err();
        assert!(format!("{e:#}").contains("\"oops\""), "{e:#}");
        let e = parse(&LINE_10.replace("\"slots_max\"", "\"x\""), &cases[..1]).unwrap_err();
        assert!(format!("{e:#}").contains("slots_max"), "{e:#}");
        assert!(parse(&LINE_10.replace("[1.8,1.7,5.8]", "[]"), &cases[..1]).is_err());
        assert!(parse(&LINE_10.replace("1.7", "\"1.7\""), &cases[..1]).is_err());
    }

    #[test]
    fn figures_per_case() {
        let m = parse_line(LINE_10).unwrap();
        let f = m.figures();
        assert_eq!(f.len(), METRICS.len());
        assert!(f.iter().all(|f| f.ok() && f.workload == WORKLOAD));
        let time = &f[0];
        assert_eq!(time.metric.name, "build_time_n10_ring65537");
        assert_eq!(
            (time.median, time.min, time.max, time.repeats),
            (Some(1.8), Some(1.7), Some(5.8), 3)
        );
        let by_name = |n: &str| f.iter().find(|f| f.metric.name == n).unwrap();
        let fair = 65537.0 / 10.0;
        assert_eq!(
            by_name("balance_max_n10_ring65537").median,
            Some(6554.0 / fair)
        );
        assert_eq!(
            by_name("balance_min_n10_ring65537").median,
            Some(6553.0 / fair)
        );
        let moved = by_name("moved_others_n10_ring65537").median.unwrap();
        assert!((moved - 110.0 / 65537.0 * 100.0).abs() < 1e-12);
    }

    #[test]
    fn report_section_has_a_row_per_measured_case() {
        let mut figures = parse_line(LINE_10).unwrap().figures();
        figures.extend(parse_line(LINE_10000).unwrap().figures());
        let md = markdown(&figures);
        assert!(md.contains("## Maglev table build"), "{md}");
        assert!(
            md.contains("| 10 | 65537 (default) | 1.80 (1.70–5.80) | 3 | 257 KiB | 256 KiB | 1.00 / 1.00 | 0.17% |"),
            "{md}"
        );
        assert!(
            md.contains("| 10000 | 1000003 (≥ 100 × backends) | 52.4 (47.5–84.2) | 3 | 4.37 MiB | 3.81 MiB | 1.01 / 1.00 | 0.08% |"),
            "{md}"
        );
        assert!(
            md.contains("100003 for 1,000 and 1000003 for 10,000"),
            "{md}"
        );
        // Nothing measured: no section (the failure is listed with the others).
        let mut failed = figures[0].clone();
        failed.status = "failed: the harness crashed".into();
        assert!(markdown(&[failed]).is_empty());
    }
}
