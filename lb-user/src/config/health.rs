//! A service's health check from its settings as written, with the health engine's
//! defaults for what is not given.

use super::ConfigError;
use super::flags::HealthFlags;
use super::values::{parse_duration, parse_status_range};
use crate::health::spec::{
    DEFAULT_FALL, DEFAULT_HTTP_STATUS, DEFAULT_INTERVAL, DEFAULT_RISE, DEFAULT_TIMEOUT,
    HealthCheck, HealthConfig, TlsCheck,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shortest interval or timeout: shorter checks would measure the scheduler.
const MIN_CHECK_TIME: Duration = Duration::from_millis(10);

/// Validates health check settings; `loc` names a field ("check", "port", "interval",
/// "timeout", "rise", "fall", "status", "host") where the user wrote it.
pub(super) fn health(
    h: &HealthFlags,
    loc: &dyn Fn(&str) -> String,
) -> Result<HealthConfig, ConfigError> {
    let check = check_kind(h, loc)?;
    if h.port == Some(0) {
        return Err(ConfigError::new(loc("port"), "0", "not a port"));
    }
    let (interval, timeout) = timing(h, loc)?;
    Ok(HealthConfig {
        check,
        port: h.port,
        interval,
        timeout,
        rise: threshold(h.rise, DEFAULT_RISE, &|| loc("rise"))?,
        fall: threshold(h.fall, DEFAULT_FALL, &|| loc("fall"))?,
        preamble: None,
        path: None,
    })
}

/// `tcp` (the default), `none`, or `http:/PATH` or `https:/PATH` with its status range
/// and Host header (and TLS settings for https); those only with http(s).
fn check_kind(h: &HealthFlags, loc: &dyn Fn(&str) -> String) -> Result<HealthCheck, ConfigError> {
    let status = match &h.status {
        Some(st) => {
            Some(parse_status_range(st).map_err(|r| ConfigError::new(loc("status"), st, r))?)
        }
        None => None,
    };
    let check = match h.check.as_deref().map(str::trim) {
        None | Some("tcp") => HealthCheck::Tcp,
        Some("none") => HealthCheck::None,
        Some(c) if c.starts_with("http:") || c.starts_with("https:") => {
            let (scheme, path) = c.split_once(':').unwrap_or_default();
            if !path.starts_with('/') || !is_header_text(path) {
                return Err(ConfigError::new(
                    loc("check"),
                    c,
                    format!(
                        "the HTTP check path must start with / and have no spaces, e.g. {scheme}:/health/instance"
                    ),
                ));
            }
            if let Some(host) = &h.host
                && (host.is_empty() || !is_header_text(host))
            {
                return Err(ConfigError::new(
                    loc("host"),
                    host,
                    "not a valid Host header value",
                ));
            }
            HealthCheck::Http {
                path: path.to_string(),
                host: h.host.clone(),
                status: status.unwrap_or(DEFAULT_HTTP_STATUS),
                tls: (scheme == "https").then(|| tls(h, loc)).transpose()?,
            }
        }
        Some(c) => {
            return Err(ConfigError::new(
                loc("check"),
                c,
                "expected tcp, http:/PATH, https:/PATH or none",
            ));
        }
    };
    let https = matches!(check, HealthCheck::Http { tls: Some(_), .. });
    if !https {
        if let Some(v) = h.tls_verify {
            return Err(ConfigError::new(
                loc("tls_verify"),
                v.to_string(),
                "only an https check has TLS",
            ));
        }
        if let Some(ca) = &h.tls_ca {
            return Err(ConfigError::new(
                loc("tls_ca"),
                ca,
                "only an https check has TLS",
            ));
        }
    }
    if !matches!(check, HealthCheck::Http { .. }) {
        if let Some(st) = &h.status {
            return Err(ConfigError::new(
                loc("status"),
                st,
                "only an http check has a status",
            ));
        }
        if let Some(host) = &h.host {
            return Err(ConfigError::new(
                loc("host"),
                host,
                "only an http check sends a Host header",
            ));
        }
    }
    Ok(check)
}

/// An https check's TLS: verification off unless asked; a CA file only with it, read
/// now so a bad one is an error at start (or reload), not a failing check.
fn tls(h: &HealthFlags, loc: &dyn Fn(&str) -> String) -> Result<TlsCheck, ConfigError> {
    let verify = h.tls_verify.unwrap_or(false);
    let ca = match &h.tls_ca {
        None => None,
        Some(ca) if !verify => {
            return Err(ConfigError::new(
                loc("tls_ca"),
                ca,
                "a CA file is for verifying: set tls_verify too",
            ));
        }
        Some(ca) => {
            crate::health::tls::roots(Path::new(ca))
                .map_err(|r| ConfigError::new(loc("tls_ca"), ca, r))?;
            Some(PathBuf::from(ca))
        }
    };
    Ok(TlsCheck { verify, ca })
}

/// No spaces or control characters: safe in a request line or header value.
fn is_header_text(s: &str) -> bool {
    !s.chars().any(|ch| ch.is_whitespace() || ch.is_control())
}

/// The interval and the timeout, which must be shorter (its default is at most half the
/// interval).
fn timing(
    h: &HealthFlags,
    loc: &dyn Fn(&str) -> String,
) -> Result<(Duration, Duration), ConfigError> {
    let dur =
        |v: &Option<String>, field: &str, default: Duration| -> Result<Duration, ConfigError> {
            let Some(s) = v else {
                return Ok(default);
            };
            let d = parse_duration(s).map_err(|r| ConfigError::new(loc(field), s, r))?;
            if d < MIN_CHECK_TIME {
                return Err(ConfigError::new(loc(field), s, "must be at least 10ms"));
            }
            Ok(d)
        };
    let interval = dur(&h.interval, "interval", DEFAULT_INTERVAL)?;
    let timeout = dur(&h.timeout, "timeout", DEFAULT_TIMEOUT.min(interval / 2))?;
    if timeout >= interval {
        let (field, v) = match &h.timeout {
            Some(t) => ("timeout", t.clone()),
            None => ("interval", h.interval.clone().unwrap_or_default()),
        };
        return Err(ConfigError::new(
            loc(field),
            v,
            format!(
                "the health check timeout ({timeout:?}) must be shorter than its interval ({interval:?})"
            ),
        ));
    }
    Ok((interval, timeout))
}

/// A rise or fall threshold, 1-100.
fn threshold(v: Option<u32>, default: u32, loc: &dyn Fn() -> String) -> Result<u32, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if (1..=100).contains(&n) => Ok(n),
        Some(n) => Err(ConfigError::new(loc(), n.to_string(), "must be 1..=100")),
    }
}
