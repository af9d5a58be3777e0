//! Prometheus on the test side: a parser of the text exposition format (to compare the
//! daemon's `/metrics` with what the test did), `promtool check metrics`, and a real
//! Prometheus server scraping the daemon from inside the LB namespace.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::bg::Bg;
use crate::netns::{Netns, wait_until};
use crate::{admin, cmd};

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the sample lines of a text-format exposition (comments are skipped).
pub fn parse(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).with_context(|| format!("line {}: {line:?}", i + 1))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .context("no value")?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let consumed = loop {
            // Skip separators.
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let Some(&(start, c)) = chars.peek() else {
                bail!("unterminated label set");
            };
            if c == '}' {
                break start + 1;
            }
            let mut key_end = start;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    key_end = i;
                    break;
                }
            }
            let key = after[start..key_end].trim().to_owned();
            if !matches!(chars.next(), Some((_, '"'))) {
                bail!("label {key}: value not quoted");
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => bail!("label {key}: dangling escape"),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                bail!("label {key}: unterminated value");
            }
            labels.insert(key, value);
        };
        rest = &after[consumed..];
    }
    let value = rest.split_whitespace().next().context("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().with_context(|| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// The samples named `name` whose labels include every `(key, value)` of `labels`.
pub fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
        .collect()
}

/// The value of the one sample matching `name` and `labels`; an error if there is none
/// or several.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    match find(samples, name, labels).as_slice() {
        [one] => Ok(one.value),
        [] => bail!("no sample {name} with labels {labels:?}"),
        many => bail!(
            "{} samples {name} match labels {labels:?}: {many:?}",
            many.len()
        ),
    }
}

/// Sum of the samples matching `name` and `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels).iter().map(|s| s.value).sum()
}

/// Runs `promtool check metrics` on `text`; an error carries everything it reported
/// (it exits non-zero on any lint problem).
pub fn promtool_check(text: &str) -> Result<()> {
    cmd::run_with_stdin(Command::new("promtool").args(["check", "metrics"]), text).map(drop)
}

/// A Prometheus server running in a namespace, scraping `targets` every second, with its
/// storage in a directory of the test. Killed by PID on drop.
pub struct PromServer {
    bg: Bg,
    listen: String,
}

impl PromServer {
    /// Starts `prometheus` in `ns` listening on `127.0.0.1:port`, and waits until it is
    /// ready (`/-/ready`, 30 s at most). `dir` holds its config and storage.
    pub fn start(ns: &Netns, dir: &std::path::Path, port: u16, targets: &[&str]) -> Result<Self> {
        let config = dir.join("prometheus.yml");
        let data = dir.join("prometheus-data");
        std::fs::create_dir_all(&data)?;
        let targets = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: lb\n    static_configs:\n      - targets: [{targets}]\n"
            ),
        )?;
        let listen = format!("127.0.0.1:{port}");
        let mut c = ns.command("prometheus");
        c.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={listen}"));
        let mut bg = Bg::spawn(c, &dir.join("prometheus.log"))?;
        let url = format!("http://{listen}/-/ready");
        let ready = wait_until(Duration::from_secs(30), || {
            if !bg.running() {
                bail!("exited");
            }
            Ok(admin::get_url(ns, &url)?.0 == 200)
        });
        if !ready {
            bail!(
                "prometheus (running: {}) not ready at {url} within 30 s; its log:\n{}",
                bg.running(),
                bg.output()
            );
        }
        Ok(PromServer { bg, listen })
    }

    /// Runs an instant query; returns each result's labels and value.
    pub fn query(&self, ns: &Netns, query: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let out = ns
            .exec(
                "curl",
                &[
                    "-s",
                    "-S",
                    "-f",
                    "--max-time",
                    "5",
                    "-G",
                    "--data-urlencode",
                    &format!("query={query}"),
                    &format!("http://{}/api/v1/query", self.listen),
                ],
            )
            .with_context(|| format!("querying prometheus for {query}"))?;
        let v: Value = serde_json::from_str(&out)
            .with_context(|| format!("prometheus answered {query} with:\n{out}"))?;
        if v["status"] != "success" {
            bail!("prometheus query {query} failed: {v}");
        }
        let mut results = Vec::new();
        for r in v["data"]["result"]
            .as_array()
            .with_context(|| format!("no data.result in {v}"))?
        {
            let labels = r["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let value: f64 = r["value"][1]
                .as_str()
                .with_context(|| format!("no value in {r}"))?
                .parse()
                .with_context(|| format!("bad value in {r}"))?;
            results.push((labels, value));
        }
        Ok(results)
    }

    /// Polls `query` (every 500 ms, at most `timeout`) until `check` accepts its
    /// results; returns them.
    pub fn wait_query(
        &mut self,
        ns: &Netns,
        query: &str,
        timeout: Duration,
        mut check: impl FnMut(&[(BTreeMap<String, String>, f64)]) -> bool,
    ) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.query(ns, query);
            if let Ok(r) = &last
                && check(r)
            {
                return Ok(r.clone());
            }
            if Instant::now() >= deadline {
                bail!(
                    "prometheus query {query}: no acceptable answer within {timeout:?}; last: {last:?}\nits log:\n{}",
                    self.bg.output()
                );
            }
            if !self.bg.running() {
                bail!("prometheus exited; its log:\n{}", self.bg.output());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Stops the server (by PID) and checks it exits.
    pub fn stop(mut self) -> Result<()> {
        self.bg.stop(Duration::from_secs(10)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exposition() {
        let text = r#"# HELP lb_up Whether lb runs.
# TYPE lb_up gauge
lb_up 1
lb_backend_new_flows_total{service="web",backend="198.18.1.11:80"} 42
lb_backend_new_flows_total{service="web",backend="[fd00:1::11]:80"} 8 1700000000000
lb_health_check_duration_seconds_bucket{service="web",backend="198.18.1.11:80",le="+Inf"} 3
weird{a="x\"y\\z\n",b="",} +Inf
"#;
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(value(&s, "lb_up", &[]).unwrap(), 1.0);
        assert_eq!(
            sum(&s, "lb_backend_new_flows_total", &[("service", "web")]),
            50.0
        );
        assert_eq!(
            value(
                &s,
                "lb_backend_new_flows_total",
                &[("backend", "[fd00:1::11]:80")]
            )
            .unwrap(),
            8.0
        );
        assert!(value(&s, "lb_backend_new_flows_total", &[]).is_err());
        assert_eq!(s[4].labels["a"], "x\"y\\z\n");
        assert_eq!(s[4].labels["b"], "");
        assert!(s[4].value.is_infinite());
        assert!(parse("x{a=\"1\" 2").is_err());
        assert!(parse("x{a=1} 2").is_err());
    }
}
