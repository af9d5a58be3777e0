//! `cargo xtask run -- demo ecmp [nat|dsr]`: three LB hosts behind a router running
//! ECMP (see [`crate::ecmp`]). Connections spread over the hosts; paced downloads run
//! while one host dies outright and comes back; the demo prints what each download
//! got. In dsr mode every download completes; in nat mode those whose path crossed
//! the dead host, or moved when it came back, break (their translation lived on one
//! host): the README's "which modes survive the loss of a host" comes from here.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::ecmp::{self, Fabric};

const HOSTS: usize = 3;
const DOWNLOADS: usize = 8;
/// 8 MB at 256 KB/s: about 32 s, longer than the loss and return of a host.
const BLOB: u64 = 8 << 20;
const RATE: u32 = 256 << 10;
const BURST: usize = 300;
const CONVERGE: Duration = Duration::from_secs(20);

/// Runs the demo with lb in `mode` (`dsr` or `nat`). Fails if a connection that began
/// with every host up fails, or, in dsr mode, if a download does not complete exactly.
pub fn run(lb_bin: &Path, bpf_object: &Path, mode: &str) -> Result<()> {
    crate::cleanup::install_ctrlc_handler()?;
    let started = Instant::now();
    step(
        "building: client ── router (BIRD, ECMP) ── switch ── lb1, lb2, lb3 (lb + BIRD), b1, b2, b3 (lb decap + HTTP)",
    );
    let mut f = Fabric::build(lb_bin, bpf_object, HOSTS, 3)?;
    f.mode_args = match mode {
        "dsr" => f.mode_args.clone(),
        "nat" => vec!["--mode".into(), "nat".into()],
        other => bail!("demo ecmp: unknown mode {other:?} (expected dsr or nat)"),
    };
    let sum = f.create_blob(BLOB)?;
    step(&format!(
        "starting lb on every host: `lb {}`",
        f.lb_args(&[]).join(" ")
    ));
    for i in 0..HOSTS {
        f.start_lb(i, &[])?;
    }
    step(
        "starting BIRD on every host (dist/bird/lb-host.conf) and waiting for the router's ECMP route",
    );
    let t = Instant::now();
    for i in 0..HOSTS {
        f.start_bird(i)?;
    }
    f.wait_next_hops(&[0, 1, 2], CONVERGE)?;
    println!(
        "   after {:.1} s: {}",
        t.elapsed().as_secs_f64(),
        f.router
            .ip(&format!("route show {}", ecmp::VIP))?
            .trim()
            .replace('\n', "\n   ")
    );

    step(&format!("{BURST} connections from the client"));
    burst(&f, BURST)?;

    step(&format!(
        "{DOWNLOADS} paced downloads of 8 MB (about 32 s each)"
    ));
    let mut downloads = f.start_downloads(DOWNLOADS, RATE)?;
    std::thread::sleep(Duration::from_secs(2));
    let active = f.active_flows()?;
    let dead = (0..HOSTS).max_by_key(|i| active[*i]).unwrap_or(0);
    step(&format!(
        "lb{} dies (link down, then lb and BIRD SIGKILLed); flows per host were {active:?}",
        dead + 1
    ));
    f.kill_host(dead)?;
    let t = Instant::now();
    let alive: Vec<usize> = (0..HOSTS).filter(|i| *i != dead).collect();
    f.wait_next_hops(&alive, CONVERGE)?;
    println!(
        "   the router withdrew lb{} after {:.1} s (BGP hold time 3 s)",
        dead + 1,
        t.elapsed().as_secs_f64()
    );
    step(&format!(
        "{} connections with lb{} gone",
        BURST / 2,
        dead + 1
    ));
    burst(&f, BURST / 2)?;

    step(&format!(
        "lb{} comes back: link up, lb (adopting its pinned data path), BIRD",
        dead + 1
    ));
    f.revive_link(dead)?;
    f.start_host(dead, &[])?;
    let t = Instant::now();
    f.wait_next_hops(&[0, 1, 2], CONVERGE)?;
    println!(
        "   announced again after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    burst(&f, BURST)?;

    step("waiting for the downloads");
    let mut exact = 0;
    for (i, d) in downloads.iter_mut().enumerate() {
        let status = d.wait(Duration::from_secs(120))?;
        let ok = status.success() && d.sha256()? == sum;
        exact += usize::from(ok);
        println!(
            "   download {}: {}",
            i + 1,
            if ok {
                "complete, sha256-exact".to_string()
            } else {
                d.output().trim().to_string()
            }
        );
    }
    println!(
        "done in {:.1} s: mode {mode}, {exact} of {DOWNLOADS} downloads complete through the loss and return of lb{}",
        started.elapsed().as_secs_f64(),
        dead + 1
    );
    if mode == "dsr" && exact != DOWNLOADS {
        bail!("in dsr mode every download must survive the loss of a host");
    }
    Ok(())
}

/// `n` connections; prints the new flows each host opened and the backends' shares.
fn burst(f: &Fabric, n: usize) -> Result<()> {
    let before = f.new_flows()?;
    let spread = ecmp::spread(f, n)?;
    let after = f.new_flows()?;
    let per_host: Vec<String> = after
        .iter()
        .zip(&before)
        .enumerate()
        .map(|(i, (a, b))| format!("lb{} {}", i + 1, a.saturating_sub(*b)))
        .collect();
    println!("   new flows per host: {}", per_host.join(", "));
    println!("   {spread}");
    if spread.failures > 0 {
        bail!("{} of {n} connections failed", spread.failures);
    }
    Ok(())
}

fn step(what: &str) {
    println!("==> {what}");
}
