//! The loss of an LB host behind ECMP (issue 14), on the test bed's ECMP fabric
//! (`lb_tests::ecmp`: a router running BIRD, three LB hosts each announcing the VIP
//! through BIRD, three backends): paced downloads and a stream of short connections
//! run while the host that carries the most downloads dies outright (its link down,
//! then its processes killed). Measured per system:
//!
//! - `flows_kept`: downloads that complete sha256-exact, percent;
//! - `conns_failed`: short connections (3 s timeout each) that failed from the death
//!   until 5 s after the router withdrew the host;
//! - `slowest_conn`: the longest successful short connection meanwhile (a SYN
//!   retransmitted after the host's loss), seconds;
//! - `withdraw`: seconds from the death until the router's route no longer names the
//!   host (BGP hold time 3 s).
//!
//! Systems: lb-dsr (ipip to the backends, which run `lb decap`), lb-nat, and the
//! stateful peer nft-fullnat (nftables DNAT + masquerade on each host, the VIP route put
//! in the announce table by hand as lb would). Everything runs on one machine, so this
//! says what survives and how long the outage is, not how throughput scales with hosts.

use crate::figure::Figure;
use crate::systems::System;
use crate::workloads::Metric;
use anyhow::{Context, Result, bail};
use lb_tests::ecmp::{self, ANNOUNCE_TABLE, Fabric, RTPROT_LB, VIP};
use lb_tests::load::{ShortConns, ShortOpts};
use std::path::Path;
use std::time::{Duration, Instant};

const HOSTS: usize = 3;
const BACKENDS: usize = 3;

/// The systems measured, in report order.
pub const SYSTEMS: [System; 3] = [System::LbDsr, System::LbNat, System::NftFullnat];

/// One system's figures.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub flows_kept: f64,
    pub conns_failed: f64,
    pub slowest_conn: f64,
    pub withdraw: f64,
}

/// How big the run is: downloads, their size and pace.
struct Size {
    downloads: usize,
    blob: u64,
    rate: u32,
}

/// 8 downloads of 8 MB at 256 KB/s (about 32 s); a quick run: 2 of 1 MB at 128 KB/s.
fn size(quick: bool) -> Size {
    if quick {
        Size {
            downloads: 2,
            blob: 1 << 20,
            rate: 128 << 10,
        }
    } else {
        Size {
            downloads: 8,
            blob: 8 << 20,
            rate: 256 << 10,
        }
    }
}

/// Measures `system` on a fabric of its own.
pub fn measure(system: System, lb_bin: &Path, object: &Path, quick: bool) -> Result<Outcome> {
    let size = size(quick);
    let mut f = Fabric::build(lb_bin, object, HOSTS, BACKENDS)?;
    let sum = f.create_blob(size.blob)?;
    match system {
        System::LbDsr => {}
        System::LbNat => f.mode_args = vec!["--mode".into(), "nat".into()],
        System::NftFullnat => {}
        other => bail!("no failover run for {}", other.name()),
    }
    for i in 0..HOSTS {
        if system == System::NftFullnat {
            start_nft(&f, i)?;
        } else {
            f.start_lb(i, &[])?;
        }
    }
    for i in 0..HOSTS {
        f.start_bird(i)?;
    }
    f.wait_next_hops(&[0, 1, 2], Duration::from_secs(20))?;

    let mut downloads = f.start_downloads(size.downloads, size.rate)?;
    let short = ShortConns::start_in(
        &f.client,
        f.dir.path(),
        ecmp::vip_addr(),
        ShortOpts {
            pause: Duration::from_millis(10),
            ..ShortOpts::default()
        },
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let dead = busiest(&f)?;
    let died = lb_tests::load::now();
    let t = Instant::now();
    f.kill_host(dead)?;
    let alive: Vec<usize> = (0..HOSTS).filter(|i| *i != dead).collect();
    f.wait_next_hops(&alive, Duration::from_secs(20))?;
    let withdraw = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(5));
    let until = lb_tests::load::now();
    let conns = short.stop()?.between(died, until);
    if conns.is_empty() {
        bail!("no short connection was made after the host died");
    }
    let conns_failed = conns.failures().len() as f64;
    let slowest_conn = conns
        .0
        .iter()
        .filter(|c| c.outcome.is_ok())
        .map(|c| c.end - c.start)
        .fold(0.0, f64::max);
    let mut kept = 0;
    for d in &mut downloads {
        let status = d.wait(Duration::from_secs(120))?;
        if status.success() && d.sha256()? == sum {
            kept += 1;
        }
    }
    Ok(Outcome {
        flows_kept: 100.0 * f64::from(kept) / size.downloads as f64,
        conns_failed,
        slowest_conn,
        withdraw,
    })
}

/// The host that carries the most of the downloads: the one whose interface receives
/// the most packets in a second (requests and ACKs in every mode, and the replies in
/// the NAT ones).
fn busiest(f: &Fabric) -> Result<usize> {
    let rx = |i: usize| -> Result<u64> {
        let out = f.hosts[i].ns.ip("-j -s link show eth0")?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .with_context(|| format!("no rx packets in {out}"))
    };
    let before = (0..HOSTS).map(rx).collect::<Result<Vec<_>>>()?;
    std::thread::sleep(Duration::from_secs(1));
    let after = (0..HOSTS).map(rx).collect::<Result<Vec<_>>>()?;
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    (0..HOSTS)
        .max_by_key(|i| delta[*i])
        .filter(|i| delta[*i] > 0)
        .with_context(|| format!("no host forwards anything: {delta:?}"))
}

/// nftables full NAT on host `i`, as the single-host bench's nft-fullnat, and the VIP's
/// route in the announce table (what lb would keep there).
fn start_nft(f: &Fabric, i: usize) -> Result<()> {
    let ns = &f.hosts[i].ns;
    let map = (0..BACKENDS)
        .map(|b| format!("{b} : {}", ecmp::backend_addr(b)))
        .collect::<Vec<_>>()
        .join(", ");
    let rules = format!(
        "table ip lbfailover {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n\
         \x20   ip daddr {VIP} tcp dport {port} dnat to numgen random mod {BACKENDS} map {{ {map} }}\n  }}\n\
         \x20 chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ct status dnat oifname \"eth0\" masquerade\n  }}\n}}\n",
        port = ecmp::PORT
    );
    let path = f.path(&format!("{}.nft", f.hosts[i].name));
    std::fs::write(&path, rules)?;
    ns.exec("nft", &["-f", &path.to_string_lossy()])?;
    ns.ip(&format!(
        "route replace {VIP}/32 dev lo table {ANNOUNCE_TABLE} proto {RTPROT_LB}"
    ))?;
    Ok(())
}

/// The report's workload name of these figures.
pub const WORKLOAD: &str = "failover";

const METRICS: [Metric; 4] = [
    Metric {
        name: "flows_kept",
        unit: "%",
        higher_is_better: true,
    },
    Metric {
        name: "conns_failed",
        unit: "conns",
        higher_is_better: false,
    },
    Metric {
        name: "slowest_conn",
        unit: "s",
        higher_is_better: false,
    },
    Metric {
        name: "withdraw",
        unit: "s",
        higher_is_better: false,
    },
];

/// Measures every system of `systems` that has a failover run (a quick run: lb-dsr
/// only), one run each, and returns their figures (a failed run as failed figures).
pub fn figures(systems: &[System], lb_bin: &Path, object: &Path, quick: bool) -> Vec<Figure> {
    let mut out = Vec::new();
    for s in SYSTEMS
        .into_iter()
        .filter(|s| systems.contains(s) && (!quick || *s == System::LbDsr))
    {
        eprintln!(
            "bench: failover of {} (an LB host dies behind ECMP)",
            s.name()
        );
        let measured = measure(s, lb_bin, object, quick);
        if let Err(e) = &measured {
            eprintln!("bench: failover of {} failed: {e:#}", s.name());
        }
        for m in METRICS {
            let v = measured.as_ref().ok().map(|o| match m.name {
                "flows_kept" => o.flows_kept,
                "conns_failed" => o.conns_failed,
                "slowest_conn" => o.slowest_conn,
                _ => o.withdraw,
            });
            out.push(Figure {
                system: s,
                workload: WORKLOAD.to_owned(),
                metric: m,
                status: match &measured {
                    Ok(_) => "ok".to_owned(),
                    Err(e) => format!("failed: {e:#}"),
                },
                median: v,
                min: v,
                max: v,
                repeats: usize::from(v.is_some()),
                discarded: 0,
            });
        }
    }
    out
}

/// The report's section: a row per system.
pub fn markdown(figures: &[Figure]) -> String {
    let mut rows = String::new();
    for s in SYSTEMS {
        let get = |name: &str| {
            figures
                .iter()
                .find(|f| f.workload == WORKLOAD && f.system == s && f.metric.name == name)
        };
        let Some(first) = get("flows_kept") else {
            continue;
        };
        if !first.ok() {
            rows.push_str(&format!("| {} | failed | | | |\n", s.name()));
            continue;
        }
        let v = |name: &str| get(name).and_then(|f| f.median).unwrap_or(f64::NAN);
        rows.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} |\n",
            s.name(),
            v("flows_kept"),
            v("conns_failed"),
            v("slowest_conn"),
            v("withdraw")
        ));
    }
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "\n## Failover: an LB host dies behind ECMP (issue 14)\n\n\
         Three LB hosts announce the VIP through BIRD to a router that spreads flows over them \
         (ECMP); paced downloads and a stream of short connections (3 s timeout each) run while \
         the host carrying the most of them loses its link and its processes are killed. One \
         run per system.\n\n\
         | system | long flows kept (%) | short conns failed | slowest short conn (s) | router withdrew the host after (s) |\n\
         |---|---|---|---|---|\n{rows}"
    )
}
