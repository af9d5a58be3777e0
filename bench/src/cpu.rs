//! CPU accounting for the bench: machine-wide times from /proc/stat (softirq, where the
//! kernel load balancers do their work and where no process is charged; steal, which
//! betrays a disturbed run) and the CPU time of the LB's own processes.

use anyhow::{Context, Result};
use std::time::{Duration, Instant};

/// Clock ticks per second of /proc times (USER_HZ; 100 on every Linux we run on, read
/// from `getconf` once anyway).
pub fn ticks_per_sec() -> f64 {
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The aggregate `cpu` line of /proc/stat, in ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stat {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl Stat {
    pub fn read() -> Result<Stat> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        parse_stat(&text, "cpu").context("no `cpu` line in /proc/stat")
    }

    /// The line of one CPU (`cpu0`, `cpu1`, ...).
    pub fn read_cpu(cpu: &str) -> Result<Stat> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        parse_stat(&text, &format!("cpu{cpu}"))
            .with_context(|| format!("no `cpu{cpu}` line in /proc/stat"))
    }

    pub fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }

    /// Ticks in which a CPU did something.
    pub fn busy(&self) -> u64 {
        self.total() - self.idle - self.iowait
    }

    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &Stat) -> Stat {
        Stat {
            user: self.user.saturating_sub(earlier.user),
            nice: self.nice.saturating_sub(earlier.nice),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            iowait: self.iowait.saturating_sub(earlier.iowait),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}

/// The /proc/stat line whose first field is `name`.
fn parse_stat(text: &str, name: &str) -> Option<Stat> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(Stat {
        user: at(0),
        nice: at(1),
        system: at(2),
        idle: at(3),
        iowait: at(4),
        irq: at(5),
        softirq: at(6),
        steal: at(7),
    })
}

/// utime + stime (all threads) of `pid`, in ticks; 0 when it is gone.
pub fn process_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_process_ticks(&s))
        .unwrap_or(0)
}

fn parse_process_ticks(stat: &str) -> Option<u64> {
    // "pid (comm) state ppid ..." : comm may hold spaces, so count fields after ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state=0, ppid=1, ..., utime=11, stime=12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The parent PID of `pid`, if it runs.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` and every process descending from it (nginx's workers, say).
pub fn with_descendants(pid: u32) -> Vec<u32> {
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| Some((p, parent(p)?)))
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(all.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found
}

/// The inode of a network namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`).
pub fn netns_inode(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// CPU ticks used so far by the processes that are not the bench's: user processes
/// (kernel threads left out: ksoftirqd does the bench's own softirq work) outside the
/// namespaces `ours`, other than this process. Their growth during a run means
/// something else competed for the CPUs (a build started meanwhile, say).
pub fn foreign_ticks(ours: &[u64]) -> u64 {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            // Kernel threads have an empty command line.
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
        })
        .filter(|pid| {
            netns_inode(std::path::Path::new(&format!("/proc/{pid}/ns/net")))
                .is_some_and(|ino| !ours.contains(&ino))
        })
        .map(process_ticks)
        .sum()
}

/// The first three fields of /proc/loadavg and the running/total field, as printed.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Above this share of all CPU time busy before a run, the machine is not quiet.
pub const MAX_IDLE_BUSY: f64 = 0.25;

/// Whether the machine is quiet enough to start a run: over `window`, at most
/// `max_busy` of all CPU time was busy and nothing was stolen. Returns the busy
/// fraction seen.
pub fn quiet(window: Duration, max_busy: f64) -> Result<(bool, f64)> {
    let a = Stat::read()?;
    std::thread::sleep(window);
    let d = Stat::read()?.since(&a);
    let total = d.total().max(1) as f64;
    let busy = d.busy() as f64 / total;
    let steal = d.steal as f64 / total;
    Ok((busy <= max_busy && steal <= 0.02, busy))
}

/// CPU counters at one instant: the machine's, those of the LB's processes and those
/// of processes that are not the bench's.
pub struct Snap {
    stat: Stat,
    lb_ticks: u64,
    foreign_ticks: u64,
    pub at: Instant,
}

pub fn snap(pids: &[u32], ours: &[u64]) -> Result<Snap> {
    Ok(Snap {
        stat: Stat::read()?,
        lb_ticks: pids.iter().map(|p| process_ticks(*p)).sum(),
        foreign_ticks: foreign_ticks(ours),
        at: Instant::now(),
    })
}

/// Share of all CPU time that processes other than the bench's may take during a run
/// before it counts as disturbed.
const MAX_FOREIGN: f64 = 0.05;

/// CPU spent between two snapshots: (LB processes, softirq) in seconds, and whether
/// the hypervisor stole a noticeable share or other processes competed.
pub fn spent(a: &Snap, b: &Snap) -> (f64, f64, Option<String>) {
    let hz = ticks_per_sec();
    let d = b.stat.since(&a.stat);
    let steal = d.steal as f64 / d.total().max(1) as f64;
    let foreign = b.foreign_ticks.saturating_sub(a.foreign_ticks) as f64 / d.total().max(1) as f64;
    let disturbed = if steal > 0.02 {
        Some(format!("{:.0}% of CPU time stolen", steal * 100.0))
    } else if foreign > MAX_FOREIGN {
        Some(format!(
            "other processes took {:.0}% of CPU time during the run",
            foreign * 100.0
        ))
    } else {
        None
    };
    (
        b.lb_ticks.saturating_sub(a.lb_ticks) as f64 / hz,
        d.softirq as f64 / hz,
        disturbed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  10 1 20 300 4 0 7 2 0 0\ncpu0 5 0 10 150 2 0 3 1 0 0\n";
        assert_eq!(parse_stat(text, "cpu0").unwrap().idle, 150);
        assert!(parse_stat(text, "cpu1").is_none());
        let s = parse_stat(text, "cpu").unwrap();
        assert_eq!(s.softirq, 7);
        assert_eq!(s.steal, 2);
        assert_eq!(s.total(), 344);
        assert_eq!(s.busy(), 40);
    }

    #[test]
    fn parses_process_ticks_with_spaces_in_comm() {
        let stat = "42 (nginx: worker) S 41 41 41 0 -1 4194624 100 0 0 0 17 5 0 0 20 0 1 0";
        assert_eq!(parse_process_ticks(stat), Some(22));
    }
}
