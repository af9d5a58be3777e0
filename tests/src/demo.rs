//! The built-in demo behind `cargo xtask run`: a two-armed topology, lb balancing three
//! HTTP backends, a bounded burst of connections and how they spread; then one backend
//! stops, the health check takes it out while traffic goes on, and it comes back.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::client::Spread;
use crate::daemon::Launch;
use crate::topology::{Kind, Topology, XdpPeers};

/// Connections in the IPv4 burst.
const BURST_V4: usize = 300;
/// Connections in the IPv6 burst.
const BURST_V6: usize = 90;
/// Weights of b1, b2, b3 in the IPv4 service.
const WEIGHTS_V4: [u32; 3] = [1, 2, 1];
/// Weights of b1, b2, b3 in the IPv6 service.
const WEIGHTS_V6: [u32; 3] = [1, 1, 1];
/// Connections sent while a backend is down, and after it is back.
const BURST_FAILOVER: usize = 100;
/// The backend the demo stops halfway.
const STOPPED: usize = 1;
/// Health checks of the demo: every second, down after 2 failures, up after 2 passes.
const HEALTH: &str = "[service.health]\ncheck = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n";

/// Runs the demo: builds the topology, starts `lb_bin` with a built-in config, sends a
/// burst, prints the spread and `lb stats`, stops lb and tears everything down. Ctrl-C
/// at any point cleans up and exits 130.
pub fn run(lb_bin: &Path, bpf_object: &Path) -> Result<()> {
    crate::cleanup::install_ctrlc_handler()?;
    let started = Instant::now();

    step("building a two-armed topology: client ↔ lb0 [LB] lb1 ↔ bridge ↔ b1, b2, b3");
    let topo = Topology::build(Kind::TwoArmed, XdpPeers::Attach(bpf_object))?;
    println!(
        "   namespaces: client {}, LB {}, switch {}, backends {}",
        topo.client.name(),
        topo.lb.name(),
        topo.switch.name(),
        topo.backends
            .iter()
            .map(|b| b.ns.name())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "   backends serve HTTP on {} / {}, port 80",
        topo.backends[0].v4, topo.backends[0].v6
    );

    let config = config_toml(&topo);
    let config_path = topo.path("lb.toml");
    std::fs::write(&config_path, &config)?;
    step(&format!(
        "starting lb in the LB namespace with this config:\n{config}"
    ));
    let args = vec![
        "--config".to_owned(),
        config_path.to_string_lossy().into_owned(),
    ];
    let daemon = topo
        .spawn_lb(lb_bin, Launch::Nsenter, &args, "lb.log")?
        .ready(&topo.lb)?;
    println!(
        "   lb is ready (pid {}), XDP attached to {:?}",
        daemon.pid(),
        topo.lb_ifaces
    );

    step(&format!(
        "sending {BURST_V4} short HTTP connections to {} from the client",
        topo.vip_url(false, "name")
    ));
    let v4 = topo.spread(false, BURST_V4)?;
    print_spread(&v4, &WEIGHTS_V4);

    step(&format!(
        "sending {BURST_V6} short HTTP connections to {}",
        topo.vip_url(true, "name")
    ));
    let v6 = topo.spread(true, BURST_V6)?;
    print_spread(&v6, &WEIGHTS_V6);

    let b = &topo.backends[STOPPED];
    let addr4 = b.addr4().to_string();
    step(&format!(
        "stopping {}'s HTTP server ({addr4}): its health check (tcp, every 1 s, down after 2 failures) must take it out",
        b.name
    ));
    let stopped_at = Instant::now();
    crate::backend_ctl::stop_server(b)?;
    crate::admin::wait_state(&daemon, "web4", &addr4, "down", Duration::from_secs(10))?;
    println!(
        "   {} is down after {:.1} s",
        b.name,
        stopped_at.elapsed().as_secs_f64()
    );
    step(&format!(
        "sending {BURST_FAILOVER} connections while {} is down",
        b.name
    ));
    let down = topo.spread(false, BURST_FAILOVER)?;
    print_spread(&down, &WEIGHTS_V4);
    anyhow::ensure!(
        down.count(&b.name) == 0,
        "{} connections went to the stopped backend",
        down.count(&b.name)
    );

    step(&format!("starting {}'s server again", b.name));
    let back_at = Instant::now();
    crate::backend_ctl::start_server(&topo, b)?;
    crate::admin::wait_state(&daemon, "web4", &addr4, "up", Duration::from_secs(10))?;
    println!(
        "   {} is up again after {:.1} s (2 passed checks)",
        b.name,
        back_at.elapsed().as_secs_f64()
    );
    let back = topo.spread(false, BURST_FAILOVER)?;
    print_spread(&back, &WEIGHTS_V4);

    step("lb ctl list");
    match daemon.run_cli(&["ctl", "list"]) {
        Ok(out) => println!("{out}"),
        Err(e) => println!("   `lb ctl list` failed: {e:#}"),
    }

    step("lb stats");
    match daemon.run_cli(&["stats"]) {
        Ok(out) => println!("{out}"),
        Err(e) => println!("   `lb stats` failed: {e:#}"),
    }

    step("stopping lb (SIGTERM) and tearing the topology down");
    daemon.stop(&topo.lb).context("stopping lb")?;
    drop(topo);
    let failed = v4.failures + v6.failures + down.failures + back.failures;
    println!(
        "done in {:.1} s: {} of {} connections answered",
        started.elapsed().as_secs_f64(),
        v4.total_ok() + v6.total_ok() + down.total_ok() + back.total_ok(),
        BURST_V4 + BURST_V6 + 2 * BURST_FAILOVER
    );
    anyhow::ensure!(failed == 0, "{failed} connections through the VIPs failed");
    Ok(())
}

fn step(what: &str) {
    println!("==> {what}");
}

/// The demo's config: the IPv4 and IPv6 VIPs over the same three backends.
fn config_toml(topo: &Topology) -> String {
    let list = |v6: bool, weights: &[u32]| {
        topo.backend_args(v6, weights)
            .iter()
            .map(|b| format!("\"{b}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "iface = [{ifaces}]\nxdp_mode = \"native\"\n\n\
         [[service]]\nname = \"web4\"\nvip = \"{vip4}\"\nbackends = [{b4}]\n{HEALTH}\n\
         [[service]]\nname = \"web6\"\nvip = \"{vip6}\"\nbackends = [{b6}]\n{HEALTH}",
        ifaces = topo
            .lb_ifaces
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", "),
        vip4 = topo.vip_arg(false),
        vip6 = topo.vip_arg(true),
        b4 = list(false, &WEIGHTS_V4),
        b6 = list(true, &WEIGHTS_V6),
    )
}

/// A small bar table: backend, weight, connections, share.
fn print_spread(spread: &Spread, weights: &[u32; 3]) {
    const WIDTH: usize = 40;
    let total = spread.total_ok().max(1);
    let sum: u32 = weights.iter().sum();
    println!("   backend  weight  conns  share  expected");
    for (name, w) in crate::topology::BACKEND_NAMES.iter().zip(weights) {
        let n = spread.count(name);
        let bar = "█".repeat(n * WIDTH / total);
        println!(
            "   {name:<7}  {w:>6}  {n:>5}  {:>4.1}%  {:>7.1}%  {bar}",
            spread.share(name),
            100.0 * f64::from(*w) / f64::from(sum)
        );
    }
    if spread.failures > 0 {
        println!("   failed: {} {:?}", spread.failures, spread.errors);
    }
}
