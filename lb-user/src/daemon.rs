//! The daemon's life: program the maps, attach, keep neighbours resolved, and on
//! SIGINT/SIGTERM detach and remove what it created.

use crate::config::Config;
use crate::dataplane::{Dataplane, DataplaneError};
use crate::neigh;
use crate::runtime::{RuntimeRecord, netns_inode};
use lb_common::stats::DROP_NO_NEIGH;
use std::net::IpAddr;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

/// How often the daemon looks at the no-neighbour drop counter.
const NEIGH_CHECK: Duration = Duration::from_secs(1);
/// How often backends are pinged anyway, so their neighbour entries stay resolved.
const NEIGH_REFRESH: Duration = Duration::from_secs(30);

/// Loads, programs and attaches the data path; nothing is left attached on error.
pub fn start(cfg: &Config) -> Result<Dataplane, DataplaneError> {
    let mut dp = Dataplane::load(cfg)?;
    dp.program(cfg)?;
    neigh::warm(&backend_ips(&dp));
    dp.attach(&cfg.ifaces, cfg.xdp_mode)?;
    Ok(dp)
}

fn backend_ips(dp: &Dataplane) -> Vec<IpAddr> {
    dp.services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.addr.ip()))
        .collect()
}

/// Runs until SIGINT or SIGTERM, then detaches.
pub async fn run(dp: Dataplane) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // Without a handler SIGHUP would kill the daemon; reloading comes with live changes.
    let mut sighup = signal(SignalKind::hangup())?;
    let record = RuntimeRecord {
        pid: std::process::id(),
        netns_inode: netns_inode()?,
        maps: dp.map_ids(),
        attachments: dp.attachments.clone(),
        services: dp.services.clone(),
    };
    let record_path = record.write()?;
    let ifaces: Vec<String> = dp
        .attachments
        .iter()
        .map(|a| format!("{}:{}", a.iface, a.mode))
        .collect();
    info!(services = dp.services.len(), ifaces = %ifaces.join(","), record = %record_path.display(), "ready");

    let backends = backend_ips(&dp);
    let mut check = tokio::time::interval(NEIGH_CHECK);
    let mut last_refresh = tokio::time::Instant::now();
    let mut no_neigh = dp.counter(DROP_NO_NEIGH);
    let signal_name = loop {
        tokio::select! {
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = sighup.recv() => {
                warn!("SIGHUP: configuration reload is not supported yet; restart lb to apply a new configuration");
            }
            _ = check.tick() => {
                let now = dp.counter(DROP_NO_NEIGH);
                if now != no_neigh || last_refresh.elapsed() >= NEIGH_REFRESH {
                    if now != no_neigh {
                        warn!(dropped = now - no_neigh, "packets dropped for unresolved backend neighbours; resolving");
                    }
                    no_neigh = now;
                    last_refresh = tokio::time::Instant::now();
                    neigh::warm(&backends);
                }
            }
        }
    };
    info!(signal = signal_name, "shutting down");
    dp.shutdown();
    if let Err(e) = std::fs::remove_file(&record_path) {
        warn!(path = %record_path.display(), cause = %e, "removing runtime record");
    }
    info!("stopped");
    Ok(())
}
