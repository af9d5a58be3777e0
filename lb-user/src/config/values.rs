//! Parsers of single values as written in flags or the file (durations, port ranges,
//! `IP:PORT@WEIGHT` backends, DNS names of backends, HTTP status ranges). Each returns the reason a text is
//! wrong; the caller adds where it was written.

use super::{BackendConfig, DnsQuery, MAX_WEIGHT, Mode};
use std::net::{IpAddr, SocketAddr};
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
    if let SocketAddr::V6(v6) = a
        && v6.scope_id() != 0
    {
        return Err("scoped (link-local %iface) addresses are not supported".into());
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

/// `NAME:PORT` (A and AAAA records) or `srv:NAME` (SRV records): a DNS name of 1-253
/// characters, labels of letters, digits, '-' and '_', an optional final dot.
pub fn parse_dns_query(s: &str) -> Result<DnsQuery, String> {
    if let Some(name) = s.strip_prefix("srv:") {
        check_dns_name(name)?;
        return Ok(DnsQuery::Srv { name: name.into() });
    }
    let (name, port) = s
        .rsplit_once(':')
        .ok_or("expected NAME:PORT (A and AAAA records) or srv:NAME (SRV records)")?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {port:?} is not a number 1-65535"))?;
    check_dns_name(name)?;
    Ok(DnsQuery::Host {
        name: name.into(),
        port,
    })
}

fn check_dns_name(name: &str) -> Result<(), String> {
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{name} is an address, not a name: give it with --backend (backends in the file)"
        ));
    }
    let labels = name.strip_suffix('.').unwrap_or(name);
    let ok = !labels.is_empty()
        && name.len() <= 253
        && labels.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !ok {
        return Err(format!(
            "{name:?} is not a DNS name (labels of letters, digits, '-' and '_', separated by dots)"
        ));
    }
    Ok(())
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

/// An address range: `198.18.0.0/15`, `fd00:1::/64`; a bare address is its own /32 or
/// /128. The address is the range's first (host bits cleared), so equal ranges compare
/// equal however they were written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| "not an address range (IP/LENGTH)".to_string())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("the prefix length must be 0 to {max}")),
            },
        };
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(Cidr { addr, prefix })
    }
}
