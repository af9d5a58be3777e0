//! What `lb_xdp` costs per packet under a workload's real traffic (issue 17): the
//! kernel's own run-time statistics of the daemon's program (`run_time_ns / run_cnt`
//! in `bpftool prog show`, counted while `kernel.bpf_stats_enabled` is 1), read before
//! and after each run of `lb-nat`. Unlike `path_cost`'s BPF_PROG_TEST_RUN figures these
//! cover every packet the workload sends, with warm caches, on whichever CPU received
//! it (the report's pinning note says which); they include the workload's warm-up,
//! which is the same traffic.

use anyhow::{Context, Result, bail};
use lb_common::maps::names;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Keeps the kernel's BPF run-time statistics on while it lives; puts the setting back
/// as it was when dropped.
pub struct StatsOn {
    before: String,
}

impl StatsOn {
    pub fn new() -> Result<StatsOn> {
        let before = std::fs::read_to_string(SYSCTL)
            .with_context(|| format!("reading {SYSCTL}"))?
            .trim()
            .to_owned();
        std::fs::write(SYSCTL, "1").with_context(|| format!("writing 1 to {SYSCTL}"))?;
        Ok(StatsOn { before })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(SYSCTL, &self.before) {
            eprintln!("bench: putting {SYSCTL} back to {}: {e}", self.before);
        }
    }
}

/// Run time and runs of a program, as the kernel counted them so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runs {
    pub ns: u64,
    pub count: u64,
}

impl Runs {
    /// Mean ns per run since `before`, if the program ran at all in between.
    pub fn per_run_since(self, before: Runs) -> Option<f64> {
        let count = self.count.checked_sub(before.count)?;
        let ns = self.ns.checked_sub(before.ns)?;
        (count > 0).then(|| ns as f64 / count as f64)
    }
}

/// `lb_xdp`'s statistics of the daemon `pid`, summed over every `lb_xdp` it holds (one
/// program serves all its interfaces; one it loaded again would be another).
pub fn lb_xdp(pid: u32) -> Result<Runs> {
    held_runs(pid, names::PROG_LB)
}

/// `bench_redirect`'s statistics, which the bench itself loads: the floor of the
/// figure above, what a program that only redirects costs on this host, the two clock
/// reads the statistics add to every run included.
pub fn bare_redirect() -> Result<Runs> {
    held_runs(std::process::id(), "bench_redirect")
}

fn held_runs(pid: u32, name: &str) -> Result<Runs> {
    let ids = crate::cost::held_ids(pid, "prog")?;
    let out =
        lb_tests::cmd::run(std::process::Command::new("bpftool").args(["-j", "prog", "show"]))?;
    sum_runs(&out, &ids, name)
}

fn sum_runs(bpftool_json: &str, ids: &[u64], name: &str) -> Result<Runs> {
    let progs: serde_json::Value =
        serde_json::from_str(bpftool_json).context("parsing `bpftool -j prog show`")?;
    let progs = progs
        .as_array()
        .context("`bpftool -j prog show` is not a list")?;
    let mut runs = Runs { ns: 0, count: 0 };
    let mut found = false;
    for p in progs
        .iter()
        .filter(|p| p["name"] == name && p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
    {
        found = true;
        // Absent until the program first runs with the statistics on.
        runs.ns += p["run_time_ns"].as_u64().unwrap_or(0);
        runs.count += p["run_cnt"].as_u64().unwrap_or(0);
    }
    if !found {
        bail!("no program {name} among the programs {ids:?}");
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_daemons_copies_of_the_program() {
        let json = r#"[
          {"id":1,"name":"lb_xdp","run_time_ns":3000,"run_cnt":20},
          {"id":2,"name":"lb_xdp","run_time_ns":999,"run_cnt":9},
          {"id":3,"name":"lb_xdp","run_time_ns":1000,"run_cnt":5},
          {"id":4,"name":"lb_direct","run_time_ns":7,"run_cnt":1},
          {"id":5,"name":"lb_xdp"}
        ]"#;
        let r = sum_runs(json, &[1, 3, 4, 5], "lb_xdp").unwrap();
        assert_eq!(
            r,
            Runs {
                ns: 4000,
                count: 25
            }
        );
        assert!(sum_runs(json, &[4], "lb_xdp").is_err());
    }

    #[test]
    fn per_run_is_the_mean_of_what_ran_in_between() {
        let before = Runs {
            ns: 1000,
            count: 10,
        };
        let after = Runs {
            ns: 4000,
            count: 30,
        };
        assert_eq!(after.per_run_since(before), Some(150.0));
        assert_eq!(before.per_run_since(before), None);
        // Counters that went back: another program, not a measure.
        assert_eq!(before.per_run_since(after), None);
    }
}
