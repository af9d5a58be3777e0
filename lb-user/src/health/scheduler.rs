//! One checker task per backend: its first check offset by a hash of its address, then
//! one check per interval, each result sent to the control plane on a channel.

use super::probe::{FailReason, check_once};
use super::spec::HealthConfig;
use lb_common::hash::fnv1a64;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// One check result of the backend `id`, as sent by a checker task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub id: u64,
    pub result: Result<(), FailReason>,
    pub latency: Duration,
}

/// A deterministic offset in `[0, interval)` derived from `key` (e.g. the backend's
/// address), so the checks of different backends are spread over the interval.
pub fn spread_delay(key: &[u8], interval: Duration) -> Duration {
    let span = interval.as_nanos();
    if span == 0 {
        return Duration::ZERO;
    }
    // FNV-1a alone varies little in its low bits for keys that differ in one byte; the
    // MurmurHash3 finalizer spreads them.
    let mut h = fnv1a64(key);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let offset = u128::from(h) % span;
    Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// Starts the checker task of backend `id`: it waits `first_delay`, then checks
/// `backend` every `spec.interval` and sends each result on `tx`. It ends when the
/// receiver is dropped or the handle is aborted.
pub fn spawn_checker(
    id: u64,
    backend: SocketAddr,
    spec: HealthConfig,
    first_delay: Duration,
    tx: UnboundedSender<CheckResult>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(first_delay) => {}
        }
        let mut ticker = tokio::time::interval(spec.interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = ticker.tick() => {}
            }
            let (result, latency) = check_once(backend, &spec).await;
            if tx
                .send(CheckResult {
                    id,
                    result,
                    latency,
                })
                .is_err()
            {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::spec::HealthCheck;
    use crate::health::test_servers::{http, http_server, silent_server, spec};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    #[test]
    fn spread_delay_is_deterministic_in_range_and_spread() {
        let interval = Duration::from_secs(5);
        let delays: Vec<Duration> = (1..=20)
            .map(|i| spread_delay(format!("10.0.0.{i}:80").as_bytes(), interval))
            .collect();
        assert!(delays.iter().all(|d| *d < interval));
        assert_eq!(delays[3], spread_delay(b"10.0.0.4:80", interval));
        let mut quarters = [0; 4];
        for d in &delays {
            quarters[(d.as_nanos() * 4 / interval.as_nanos()) as usize] += 1;
        }
        assert!(quarters.iter().all(|&q| q > 0), "{quarters:?}");
        assert_eq!(spread_delay(b"x", Duration::ZERO), Duration::ZERO);
        assert!(spread_delay(b"x", Duration::from_nanos(1)).is_zero());
    }

    #[tokio::test]
    async fn checker_reports_at_the_interval_and_a_slow_target_delays_no_other() {
        let (fast, _) = http_server("HTTP/1.1 200 OK\r\n\r\n").await;
        let slow = silent_server().await;
        let s = HealthConfig {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(80),
            ..spec(http("/"))
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let h1 = spawn_checker(1, fast, s.clone(), Duration::ZERO, tx.clone());
        let h2 = spawn_checker(2, slow, s, Duration::ZERO, tx);

        let start = Instant::now();
        let mut fast_at = Vec::new();
        let mut slow_results = Vec::new();
        while start.elapsed() < Duration::from_millis(650) {
            let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await
            else {
                continue;
            };
            match r.id {
                1 => {
                    assert_eq!(r.result, Ok(()));
                    fast_at.push(start.elapsed());
                }
                2 => slow_results.push(r.result),
                other => panic!("unexpected id {other}"),
            }
        }
        // Ticks at 0, 100, ..., 600 ms: about 7 results; loose bounds.
        assert!(
            (4..=9).contains(&fast_at.len()),
            "fast results at {fast_at:?}"
        );
        for w in fast_at.windows(2) {
            assert!(w[1] - w[0] < Duration::from_millis(250), "{fast_at:?}");
        }
        assert!(!slow_results.is_empty());
        assert!(slow_results.iter().all(|r| *r == Err(FailReason::Timeout)));

        // Dropping the receiver ends both tasks.
        drop(rx);
        tokio::time::timeout(Duration::from_secs(2), async {
            h1.await.unwrap();
            h2.await.unwrap();
        })
        .await
        .expect("checker tasks end when the receiver is dropped");
    }

    #[tokio::test]
    async fn checker_waits_its_first_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        let h = spawn_checker(
            7,
            addr,
            spec(HealthCheck::Tcp),
            Duration::from_millis(150),
            tx,
        );
        let r = rx.recv().await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert_eq!((r.id, r.result), (7, Ok(())));
        h.abort();
        assert!(h.await.unwrap_err().is_cancelled());
    }
}
