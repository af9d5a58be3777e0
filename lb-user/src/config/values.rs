//! Parsers of single values as written in flags or the file (durations, port ranges,
//! `IP:PORT@WEIGHT` backends, HTTP status ranges). Each returns the reason a text is
//! wrong; the caller adds where it was written.

use super::{BackendConfig, MAX_WEIGHT, Mode};
use std::net::SocketAddr;
use std::time::Duration;

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a duration like 350s, 5m, 1h or 500ms".to_string())?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if d > Duration::from_secs(7 * 24 * 3600) {
        return Err("longer than a week".into());
    }
    Ok(d)
}

/// `LOW-HIGH`, 1024 ≤ LOW ≤ HIGH ≤ 65535, at least 64 ports.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected a range LOW-HIGH, e.g. 10000-32767")?;
    let lo: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not a port"))?;
    let hi: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} is not a port"))?;
    if lo < 1024 || hi < lo || (hi - lo) < 63 {
        return Err("need 1024 ≤ LOW ≤ HIGH and at least 64 ports".into());
    }
    Ok((lo, hi))
}

/// `200` or `200-399`: HTTP status codes 100-599.
pub fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let code = |t: &str| -> Result<u16, String> {
        match t.trim().parse::<u16>() {
            Ok(c) if (100..=599).contains(&c) => Ok(c),
            _ => Err(format!("{t:?} is not an HTTP status code (100-599)")),
        }
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (code(a)?, code(b)?),
        None => {
            let c = code(s)?;
            (c, c)
        }
    };
    if hi < lo {
        return Err("the range must be LOW-HIGH with LOW ≤ HIGH".into());
    }
    Ok((lo, hi))
}

/// `IP:PORT`, IPv6 as `[IP]:PORT`; port 1-65535.
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s
        .trim()
        .parse()
        .map_err(|_| "not IP:PORT (write IPv6 as [fd00::10]:80)".to_string())?;
    if a.port() == 0 {
        return Err("port 0 is not a service port".into());
    }
    if let SocketAddr::V6(v6) = a {
        if v6.scope_id() != 0 {
            return Err("scoped (link-local %iface) addresses are not supported".into());
        }
    }
    Ok(a)
}

/// `IP:PORT[@WEIGHT]`, weight 0-65535, default 1.
pub fn parse_backend(s: &str) -> Result<BackendConfig, String> {
    let (addr, weight) = match s.rsplit_once('@') {
        Some((a, w)) => {
            let w: u32 = w
                .parse()
                .map_err(|_| format!("weight {w:?} is not a whole number 0-{MAX_WEIGHT}"))?;
            (a, check_weight(w)?)
        }
        None => (s, 1),
    };
    Ok(BackendConfig {
        addr: parse_socket_addr(addr)?,
        weight,
    })
}

/// The file's long form of a backend, `{ addr = "IP:PORT", weight = N }`; weight default 1.
pub fn backend_of(addr: &str, weight: Option<u32>) -> Result<BackendConfig, String> {
    let addr = parse_socket_addr(addr)?;
    Ok(BackendConfig {
        addr,
        weight: check_weight(weight.unwrap_or(1))?,
    })
}

fn check_weight(w: u32) -> Result<u32, String> {
    if w > MAX_WEIGHT {
        return Err(format!("weight {w} is above {MAX_WEIGHT}"));
    }
    Ok(w)
}

/// Whether a backend can serve the VIP: a unicast address, of the VIP's family unless
/// proxied (a proxy may connect to either family; the header says what the client
/// used), on the VIP's port in dsr mode (nothing rewrites the packet).
pub fn check_backend(vip: SocketAddr, mode: Mode, be: &BackendConfig) -> Result<(), String> {
    if mode != Mode::ProxyV2 && be.addr.is_ipv4() != vip.is_ipv4() {
        return Err(format!(
            "address family differs from the VIP {vip} ({} does not translate between IPv4 and IPv6)",
            mode.name()
        ));
    }
    if mode.keeps_port() && be.addr.port() != vip.port() {
        return Err(format!(
            "port {} differs from the VIP's {}: in dsr mode the backend receives the client's packet unchanged, so it must listen on the VIP's port",
            be.addr.port(),
            vip.port()
        ));
    }
    if be.addr.ip().is_unspecified() || be.addr.ip().is_multicast() || be.addr.ip().is_loopback() {
        return Err("a backend must be a unicast address reachable from the LB host".into());
    }
    Ok(())
}
