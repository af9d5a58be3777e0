//! The client side: real curl in the client namespace.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd;
use crate::netns::Netns;

/// URLs per curl invocation: each is a fresh TCP connection (`Connection: close`).
const BATCH: usize = 50;
/// Standard deviations of a binomial share that [`Spread::check_weights`]'s tolerance
/// must span.
const SIGMAS: f64 = 4.5;

/// How `n` short connections were answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spread {
    /// Responses per backend name (the body of `/name`).
    pub counts: BTreeMap<String, usize>,
    /// Connections that failed or did not answer 200.
    pub failures: usize,
    /// A few failure descriptions, for messages.
    pub errors: Vec<String>,
}

impl Spread {
    pub fn total_ok(&self) -> usize {
        self.counts.values().sum()
    }

    pub fn count(&self, name: &str) -> usize {
        self.counts.get(name).copied().unwrap_or(0)
    }

    /// Share of `name` among successful responses, in percent.
    pub fn share(&self, name: &str) -> f64 {
        let total = self.total_ok();
        if total == 0 {
            return 0.0;
        }
        100.0 * self.count(name) as f64 / total as f64
    }

    /// Checks every backend's share against its weight within `tolerance_pp`
    /// percentage points; the error lists the whole spread.
    ///
    /// Client ports are random, so a share is a binomial sample: the sample must be
    /// large enough that `tolerance_pp` is [`SIGMAS`] standard deviations of every
    /// expected share, or the check would fail now and then on a correct LB. Too
    /// small a sample is an error of the test.
    pub fn check_weights(&self, weights: &[(&str, u32)], tolerance_pp: f64) -> Result<()> {
        let sum: u32 = weights.iter().map(|(_, w)| w).sum();
        let n = self.total_ok() as f64;
        let mut bad = Vec::new();
        for (name, weight) in weights {
            let p = f64::from(*weight) / f64::from(sum);
            let sigma_pp = 100.0 * (p * (1.0 - p) / n).sqrt();
            if tolerance_pp < SIGMAS * sigma_pp {
                bail!(
                    "{n} connections are too few to check {name}'s share within ±{tolerance_pp} points: one standard deviation is {sigma_pp:.2}"
                );
            }
            let expected = 100.0 * p;
            let got = self.share(name);
            if (got - expected).abs() > tolerance_pp {
                bad.push(format!(
                    "{name}: {got:.1}% (expected {expected:.1}% ± {tolerance_pp})"
                ));
            }
        }
        if let Some(other) = self
            .counts
            .keys()
            .find(|k| !weights.iter().any(|(n, _)| n == k))
        {
            bad.push(format!("unexpected responder {other:?}"));
        }
        if !bad.is_empty() {
            bail!("spread off its weights: {}; spread: {self}", bad.join(", "));
        }
        Ok(())
    }

    fn add_output(&mut self, out: &str) {
        for line in out.lines() {
            // Each transfer prints its body (the backend name, no newline) then " CODE\n".
            let (body, code) = line.rsplit_once(' ').unwrap_or(("", line));
            if code == "200" && !body.is_empty() {
                *self.counts.entry(body.to_owned()).or_default() += 1;
            } else {
                self.fail(format!("http_code={code} body={body:?}"));
            }
        }
    }

    fn fail(&mut self, what: String) {
        self.failures += 1;
        if self.errors.len() < 5 {
            self.errors.push(what);
        }
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total_ok();
        for (name, n) in &self.counts {
            write!(f, "{name}={n} ({:.1}%) ", self.share(name))?;
        }
        write!(f, "ok={total} failed={}", self.failures)?;
        if !self.errors.is_empty() {
            write!(f, " first errors: {:?}", self.errors)?;
        }
        Ok(())
    }
}

/// Opens `n` short connections (each a new TCP connection) from `client` to `url`,
/// which must answer with a backend name, and counts the answers. Bounded: at most
/// `n` connections, each with a 5 s limit, and 60 s overall.
pub fn spread(client: &Netns, url: &str, n: usize) -> Result<Spread> {
    let mut spread = Spread::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut left = n;
    while left > 0 {
        if Instant::now() >= deadline {
            for _ in 0..left {
                spread.fail("not attempted: 60 s budget used up".into());
            }
            break;
        }
        let batch = left.min(BATCH);
        let mut c = client.command("curl");
        c.args([
            "-s",
            "-g",
            "-H",
            "Connection: close",
            "--connect-timeout",
            "3",
            "--max-time",
            "5",
            "-w",
            " %{http_code}\\n",
        ]);
        for _ in 0..batch {
            c.arg(url);
        }
        // curl goes on after a failed transfer and exits with the last error; the
        // per-transfer status line is what counts.
        let out = cmd::output_any(&mut c)?;
        let before = spread.total_ok() + spread.failures;
        spread.add_output(&String::from_utf8_lossy(&out.stdout));
        let seen = spread.total_ok() + spread.failures - before;
        for _ in seen..batch {
            spread.fail(format!(
                "curl printed no status (exit {}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        left -= batch;
    }
    Ok(spread)
}

/// `curl -sSgf` from `client`: fails on an HTTP error, gives up after 3 s to connect and
/// `max_time` in all; `more` goes before the URL. Returns curl's stdout.
fn curl(client: &Netns, url: &str, max_time: Duration, more: &[&str]) -> Result<String> {
    let secs = max_time.as_secs().max(1).to_string();
    let mut args = vec!["-sSgf", "--connect-timeout", "3", "--max-time", &secs];
    args.extend_from_slice(more);
    args.push(url);
    client.exec("curl", &args)
}

/// Fetches `url` once from `client` and returns the body (trimmed).
pub fn get(client: &Netns, url: &str) -> Result<String> {
    Ok(curl(client, url, Duration::from_secs(5), &[])?
        .trim()
        .to_owned())
}

/// Downloads `url` from `client` into `dest` (at most `max_time`) and returns the
/// file's sha256 (hex).
pub fn download_sha256(
    client: &Netns,
    url: &str,
    dest: &Path,
    max_time: Duration,
) -> Result<String> {
    let dest_str = dest.to_string_lossy();
    curl(client, url, max_time, &["-o", &dest_str])
        .with_context(|| format!("downloading {url}"))?;
    sha256_file(dest)
}

/// sha256 (hex) of a file, with `sha256sum` (fast even in a debug build).
pub fn sha256_file(path: &Path) -> Result<String> {
    let out = cmd::run(std::process::Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("sha256sum printed nothing for {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_curl_status_lines() {
        let mut s = Spread::default();
        s.add_output("b1 200\nb2 200\n 000\nb1 200\nnot found 404\n");
        assert_eq!(s.count("b1"), 2);
        assert_eq!(s.count("b2"), 1);
        assert_eq!(s.failures, 2);
        assert_eq!(s.total_ok(), 3);
    }

    #[test]
    fn checks_weights() {
        let mut s = Spread::default();
        s.counts.insert("b1".into(), 200);
        s.counts.insert("b2".into(), 400);
        s.counts.insert("b3".into(), 200);
        s.check_weights(&[("b1", 1), ("b2", 2), ("b3", 1)], 8.0)
            .unwrap();
        let err = s
            .check_weights(&[("b1", 1), ("b2", 1), ("b3", 1)], 8.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("b2: 50.0%"), "{err}");
        s.counts.insert("b4".into(), 1);
        assert!(
            s.check_weights(&[("b1", 1), ("b2", 2), ("b3", 1)], 8.0)
                .is_err()
        );
    }

    #[test]
    fn too_small_a_sample_for_the_tolerance_is_an_error() {
        let mut s = Spread::default();
        s.counts.insert("b1".into(), 150);
        s.counts.insert("b2".into(), 150);
        let err = s
            .check_weights(&[("b1", 1), ("b2", 1)], 8.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("300 connections are too few"), "{err}");
        s.check_weights(&[("b1", 1), ("b2", 1)], 15.0).unwrap();
    }
}
