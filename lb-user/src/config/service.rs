//! One service from its settings as written (the `--vip` flags or a `[[service]]` table):
//! its name, VIP and mode, its backends, its PROXY protocol settings and its health check.

use super::file::FileBackend;
use super::flags::{HealthFlags, Layered, health_flag, service_flag};
use super::health::health;
use super::values::{
    backend_of, check_backend, parse_backend, parse_dns_query, parse_duration, parse_socket_addr,
};
use super::*;
use std::time::Duration;

/// A service's fields as written, from flags or the file.
struct ServiceFields<'a> {
    name: &'a str,
    vip: &'a str,
    mode: Option<&'a str>,
    encap: Option<&'a str>,
    gue_port: Option<u16>,
    slow_start: Option<&'a str>,
    backends: &'a [FileBackend],
    backends_dns: Option<&'a str>,
    dns_interval: Option<&'a str>,
    allow: &'a [String],
    deny: Option<&'a str>,
    deny_established: bool,
    proxy: ProxyFields<'a>,
}

/// PROXY protocol fields of a service as written (flags or file).
struct ProxyFields<'a> {
    version: Option<&'a str>,
    tlvs: &'a [String],
    accept_proxy: bool,
}

/// The services: the one given with `--vip`, or the file's, but not both.
pub(super) fn services(src: &Layered<'_>) -> Result<Vec<ServiceConfig>, ConfigError> {
    let flags = src.flags;
    let flag_service = flags.vip.is_some()
        || !flags.backends.is_empty()
        || flags.backend_dns.is_some()
        || flags.name.is_some()
        || flags.mode.is_some()
        || flags.encap.is_some()
        || flags.gue_port.is_some()
        || flags.proxy_protocol.is_some()
        || !flags.proxy_tlvs.is_empty()
        || flags.accept_proxy;
    let services = if flag_service {
        vec![flag_service_config(src)?]
    } else {
        file_services(src)?
    };
    if services.is_empty() {
        return Err(ConfigError::new(
            "--vip",
            "",
            "no service: give --vip and --backend (or [[service]] sections in a --config file)",
        ));
    }
    Ok(services)
}

/// The service given with `--vip` and the flags around it.
fn flag_service_config(src: &Layered<'_>) -> Result<ServiceConfig, ConfigError> {
    let flags = src.flags;
    if !src.file.service.is_empty() {
        return Err(ConfigError::new(
            "--vip",
            flags.vip.clone().unwrap_or_default(),
            "the config file already defines services: give services either with --vip/--backend or in the file, not both",
        ));
    }
    let vip = flags.vip.as_deref().ok_or_else(|| {
        ConfigError::new(
            "--vip",
            "",
            "missing: give the virtual IP and port, e.g. --vip 198.18.100.1:80",
        )
    })?;
    let backends: Vec<FileBackend> = flags
        .backends
        .iter()
        .map(|b| FileBackend::Short(b.clone()))
        .collect();
    let health = health(&flags.health, &health_flag)?;
    let fields = ServiceFields {
        name: flags.name.as_deref().unwrap_or("default"),
        vip,
        mode: flags.mode.as_deref(),
        encap: flags.encap.as_deref(),
        gue_port: flags.gue_port,
        slow_start: flags.slow_start.as_deref(),
        backends: &backends,
        backends_dns: flags.backend_dns.as_deref(),
        dns_interval: flags.dns_interval.as_deref(),
        allow: &flags.allow,
        deny: flags.deny.as_deref(),
        deny_established: flags.deny_established,
        proxy: ProxyFields {
            version: flags.proxy_protocol.as_deref(),
            tlvs: &flags.proxy_tlvs,
            accept_proxy: flags.accept_proxy,
        },
    };
    service(&fields, health, &service_flag)
}

/// The file's `[[service]]` tables; health flags do not apply to them.
fn file_services(src: &Layered<'_>) -> Result<Vec<ServiceConfig>, ConfigError> {
    let h = &src.flags.health;
    if h.any() {
        return Err(ConfigError::new(
            "--health",
            h.check.clone().unwrap_or_default(),
            "health check flags apply to the service given with --vip; set `[service.health]` per service in the config file",
        ));
    }
    if let Some(s) = &src.flags.slow_start {
        return Err(ConfigError::new(
            "--slow-start",
            s,
            "applies to the service given with --vip; set slow_start per service in the config file",
        ));
    }
    let f = src.flags;
    let access_flag = (f.allow.first().map(|a| ("--allow", a.as_str())))
        .or(f.deny.as_deref().map(|d| ("--deny", d)))
        .or(f.deny_established.then_some(("--deny-established", "")));
    if let Some((flag, value)) = access_flag {
        return Err(ConfigError::new(
            flag,
            value,
            "applies to the service given with --vip; set allow, deny and deny_established per service in the config file",
        ));
    }
    if let Some(s) = &src.flags.dns_interval {
        return Err(ConfigError::new(
            "--dns-interval",
            s,
            "applies to the service given with --vip and --backend-dns; set dns_interval per service in the config file",
        ));
    }
    let mut services = Vec::new();
    for (i, s) in src.file.service.iter().enumerate() {
        let loc = |field: &str| src.at(&format!("service[{i}] ({}) {field}", s.name));
        let written = s.health.as_ref().map(HealthFlags::from).unwrap_or_default();
        let health = health(&written, &|field: &str| {
            let name = match field {
                "rise" => "healthy_threshold",
                "fall" => "unhealthy_threshold",
                other => other,
            };
            loc(&format!("health.{name}"))
        })?;
        let fields = ServiceFields {
            name: &s.name,
            vip: &s.vip,
            mode: s.mode.as_deref(),
            encap: s.encap.as_deref(),
            gue_port: s.gue_port,
            slow_start: s.slow_start.as_deref(),
            backends: &s.backends,
            backends_dns: s.backends_dns.as_deref(),
            dns_interval: s.dns_interval.as_deref(),
            allow: &s.allow,
            deny: s.deny.as_deref(),
            deny_established: s.deny_established,
            proxy: ProxyFields {
                version: s.proxy_protocol.as_deref(),
                tlvs: &s.proxy_tlvs,
                accept_proxy: s.accept_proxy,
            },
        };
        services.push(service(&fields, health, &loc)?);
    }
    Ok(services)
}

/// Validates one service; `loc` names a field where the user wrote it.
fn service(
    s: &ServiceFields<'_>,
    health: HealthConfig,
    loc: &dyn Fn(&str) -> String,
) -> Result<ServiceConfig, ConfigError> {
    let name = s.name;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ConfigError::new(
            loc("name"),
            name,
            "use 1-64 characters of letters, digits, '-', '_', '.'",
        ));
    }
    let vip = parse_socket_addr(s.vip).map_err(|r| ConfigError::new(loc("vip"), s.vip, r))?;
    let mode = match s.mode.unwrap_or("nat") {
        "nat" => Mode::Nat,
        "proxy-v2" => Mode::ProxyV2,
        "dsr" => Mode::Dsr,
        "dnat" => Mode::Dnat,
        other => {
            return Err(ConfigError::new(
                loc("mode"),
                other,
                "unknown forwarding mode (available: nat, proxy-v2, dsr, dnat)",
            ));
        }
    };
    let proxy = proxy_config(mode, &s.proxy, loc)?;
    let encap = encap(mode, s, loc)?;
    let dns = dns_backends(s, loc)?;
    let access = access(s, vip, loc)?;
    let backends = backends(name, vip, mode, s.backends, dns.is_some(), loc)?;
    let slow_start = match s.slow_start {
        None => Duration::ZERO,
        Some(d) => parse_duration(d).map_err(|r| ConfigError::new(loc("slow_start"), d, r))?,
    };
    if slow_start > MAX_SLOW_START {
        return Err(ConfigError::new(
            loc("slow_start"),
            s.slow_start.unwrap_or_default(),
            format!("at most {MAX_SLOW_START:?}"),
        ));
    }
    Ok(ServiceConfig {
        name: name.to_string(),
        vip,
        mode,
        encap,
        backends,
        health,
        proxy,
        slow_start,
        dns,
        access,
    })
}

/// The source allowlist: ranges of the VIP's family (a bare address is one host), none
/// twice; what a refused source gets; whether it loses its flows too.
fn access(
    s: &ServiceFields<'_>,
    vip: SocketAddr,
    loc: &dyn Fn(&str) -> String,
) -> Result<AccessConfig, ConfigError> {
    let mut allow: Vec<Cidr> = Vec::new();
    for (i, text) in s.allow.iter().enumerate() {
        let at = || loc(&format!("allow[{i}]"));
        let c: Cidr = text.parse().map_err(|r| ConfigError::new(at(), text, r))?;
        if c.addr.is_ipv4() != vip.is_ipv4() {
            return Err(ConfigError::new(
                at(),
                text,
                format!(
                    "the VIP {vip} is of the other family: its clients cannot come from this range"
                ),
            ));
        }
        if allow.contains(&c) {
            return Err(ConfigError::new(
                at(),
                text,
                "range given twice in this service",
            ));
        }
        allow.push(c);
    }
    if allow.len() > MAX_ALLOW_PER_SERVICE {
        return Err(ConfigError::new(
            loc("allow"),
            format!("{} ranges", allow.len()),
            format!("at most {MAX_ALLOW_PER_SERVICE} per service"),
        ));
    }
    allow.sort();
    let reset = match s.deny {
        None | Some("drop") => false,
        Some("reset") => true,
        Some(other) => {
            return Err(ConfigError::new(
                loc("deny"),
                other,
                "expected drop (the default) or reset",
            ));
        }
    };
    if allow.is_empty() && (s.deny.is_some() || s.deny_established) {
        let field = if s.deny.is_some() {
            "deny"
        } else {
            "deny_established"
        };
        return Err(ConfigError::new(
            loc(field),
            s.deny.unwrap_or("true"),
            "applies to sources outside an allowlist: give allow ranges (--allow) too",
        ));
    }
    Ok(AccessConfig {
        allow,
        reset,
        cut_established: s.deny_established,
    })
}

/// Backends from DNS: the name to look up and how often.
fn dns_backends(
    s: &ServiceFields<'_>,
    loc: &dyn Fn(&str) -> String,
) -> Result<Option<DnsBackends>, ConfigError> {
    let Some(q) = s.backends_dns else {
        if let Some(i) = s.dns_interval {
            return Err(ConfigError::new(
                loc("dns_interval"),
                i,
                "a DNS interval needs backends from DNS (backends_dns, --backend-dns)",
            ));
        }
        return Ok(None);
    };
    let query = parse_dns_query(q).map_err(|r| ConfigError::new(loc("backends_dns"), q, r))?;
    let interval = match s.dns_interval {
        None => None,
        Some(i) => {
            let d = parse_duration(i).map_err(|r| ConfigError::new(loc("dns_interval"), i, r))?;
            if d < DNS_INTERVAL_BOUNDS.0 || d > MAX_DNS_INTERVAL {
                return Err(ConfigError::new(
                    loc("dns_interval"),
                    i,
                    format!(
                        "between {:?} and {MAX_DNS_INTERVAL:?}",
                        DNS_INTERVAL_BOUNDS.0
                    ),
                ));
            }
            Some(d)
        }
    };
    Ok(Some(DnsBackends { query, interval }))
}

/// A service's backends: at least one unless DNS gives them, each usable for the VIP,
/// none twice, not all of weight 0.
fn backends(
    name: &str,
    vip: SocketAddr,
    mode: Mode,
    written: &[FileBackend],
    from_dns: bool,
    loc: &dyn Fn(&str) -> String,
) -> Result<Vec<BackendConfig>, ConfigError> {
    if written.is_empty() {
        if from_dns {
            return Ok(Vec::new());
        }
        return Err(ConfigError::new(
            loc("backend"),
            "",
            format!(
                "service {name} has no backend: give at least one IP:PORT[@WEIGHT], or a DNS name (--backend-dns, backends_dns)"
            ),
        ));
    }
    let mut out: Vec<BackendConfig> = Vec::new();
    for (i, b) in written.iter().enumerate() {
        let bloc = loc(&format!("backend[{i}]"));
        let (text, parsed) = match b {
            FileBackend::Short(s) => (s, parse_backend(s)),
            FileBackend::Long { addr, weight } => (addr, backend_of(addr, *weight)),
        };
        let be = parsed
            .and_then(|be| check_backend(vip, mode, &be).map(|()| be))
            .map_err(|r| ConfigError::new(bloc.clone(), text, r))?;
        if out.iter().any(|o| o.addr == be.addr) {
            return Err(ConfigError::new(
                bloc,
                text,
                "backend given twice in this service",
            ));
        }
        out.push(be);
    }
    if out.iter().all(|b| b.weight == 0) {
        return Err(ConfigError::new(
            loc("backend"),
            "",
            format!("every backend of service {name} has weight 0"),
        ));
    }
    Ok(out)
}

/// A dsr service's encapsulation (default ipip); no other mode may name one.
fn encap(
    mode: Mode,
    s: &ServiceFields<'_>,
    loc: &dyn Fn(&str) -> String,
) -> Result<Option<Encap>, ConfigError> {
    if mode != Mode::Dsr {
        if let Some(e) = s.encap {
            return Err(ConfigError::new(
                loc("encap"),
                e,
                "an encapsulation needs mode dsr",
            ));
        }
        if let Some(p) = s.gue_port {
            return Err(ConfigError::new(
                loc("gue_port"),
                p.to_string(),
                "a GUE port needs mode dsr with encap gue",
            ));
        }
        return Ok(None);
    }
    let kind = match s.encap.unwrap_or("ipip") {
        "ipip" => EncapKind::Ipip,
        "gue" => EncapKind::Gue,
        "l2" => EncapKind::L2,
        other => {
            return Err(ConfigError::new(
                loc("encap"),
                other,
                "unknown encapsulation (available: ipip, gue, l2)",
            ));
        }
    };
    let gue_port = match (kind, s.gue_port) {
        (EncapKind::Gue, None) => lb_common::encap::DEFAULT_GUE_PORT,
        (EncapKind::Gue, Some(0)) => {
            return Err(ConfigError::new(
                loc("gue_port"),
                "0",
                "use a port from 1 to 65535",
            ));
        }
        (EncapKind::Gue, Some(p)) => p,
        (_, Some(p)) => {
            return Err(ConfigError::new(
                loc("gue_port"),
                p.to_string(),
                "a GUE port needs encap gue",
            ));
        }
        (_, None) => 0,
    };
    Ok(Some(Encap { kind, gue_port }))
}

/// A service's PROXY protocol settings: only a `proxy-v2` service may have any.
fn proxy_config(
    mode: Mode,
    p: &ProxyFields<'_>,
    loc: &dyn Fn(&str) -> String,
) -> Result<ProxyConfig, ConfigError> {
    if mode != Mode::ProxyV2 {
        let given = p
            .version
            .map(|v| ("proxy_protocol", v.to_string()))
            .or_else(|| {
                p.tlvs
                    .first()
                    .map(|t| ("proxy_tlvs", t.clone()))
                    .or(p.accept_proxy.then(|| ("accept_proxy", "true".to_string())))
            });
        if let Some((field, v)) = given {
            return Err(ConfigError::new(
                loc(field),
                v,
                "PROXY protocol settings need mode proxy-v2",
            ));
        }
        return Ok(ProxyConfig::default());
    }
    let version = match p.version {
        None | Some("v2") | Some("2") => ProxyVersion::V2,
        Some("v1") | Some("1") => ProxyVersion::V1,
        Some(v) => {
            return Err(ConfigError::new(
                loc("proxy_protocol"),
                v,
                "expected v1 or v2",
            ));
        }
    };
    let mut tlvs = TlvSet::default();
    for t in p.tlvs {
        let flag = match t.as_str() {
            "unique-id" => &mut tlvs.unique_id,
            "crc32c" => &mut tlvs.crc32c,
            "authority" => &mut tlvs.authority,
            "alpn" => &mut tlvs.alpn,
            other => {
                return Err(ConfigError::new(
                    loc("proxy_tlvs"),
                    other,
                    "expected unique-id, crc32c, authority or alpn",
                ));
            }
        };
        *flag = true;
    }
    if version == ProxyVersion::V1 && tlvs != TlvSet::default() {
        return Err(ConfigError::new(
            loc("proxy_tlvs"),
            p.tlvs.join(","),
            "TLVs exist in PROXY protocol v2 only",
        ));
    }
    Ok(ProxyConfig {
        version,
        tlvs,
        accept_proxy: p.accept_proxy,
    })
}
