//! `build`: the global settings (a flag over the file over the default), then the
//! services, then the checks that span services. Each step is its own function, run in
//! the order the errors are reported.

use super::file::FileConfig;
use super::flags::{FlagSettings, Layered, setting};
use super::service::services;
use super::values::{parse_duration, parse_port_range};
use super::*;
use lb_common::maglev::is_prime;
use lb_common::maps::{DEFAULT_RING_SIZE, MAX_BACKENDS, MAX_SERVICES, MAX_SNAT_ADDRS};
use lb_common::source_limit::MAX_RATE;
use std::collections::HashSet;

/// Builds the configuration from the flags and the file (with its path), if any.
pub(super) fn build(
    flags: &FlagSettings,
    file: Option<(PathBuf, FileConfig)>,
) -> Result<Config, ConfigError> {
    let (file_name, f) = match file {
        Some((path, f)) => (Some(path.display().to_string()), f),
        None => (None, FileConfig::default()),
    };
    let src = Layered::new(flags, &f, file_name);
    let mut config = globals(&src)?;
    config.services = services(&src)?;
    check_services(&config, &src)?;
    Ok(config)
}

/// Every setting but the services (left empty).
fn globals(src: &Layered<'_>) -> Result<Config, ConfigError> {
    let ifaces = ifaces(src)?;
    let xdp_mode = xdp_mode(src)?;
    let (max_flows, ring_size, max_services) = table_sizes(src)?;
    let idle_timeout = duration_setting(setting!(src, idle_timeout), DEFAULT_IDLE_TIMEOUT)?;
    let closed_timeout = duration_setting(setting!(src, closed_timeout), DEFAULT_CLOSED_TIMEOUT)?;
    let half_open_timeout =
        duration_setting(setting!(src, half_open_timeout), DEFAULT_HALF_OPEN_TIMEOUT)?;
    let snat_ips = snat_ips(src)?;
    let snat_ports = match setting!(src, snat_ports) {
        None => DEFAULT_SNAT_PORTS,
        Some((loc, s)) => parse_port_range(s).map_err(|r| ConfigError::new(loc, s, r))?,
    };
    let state_dir = state_dir(src)?;
    let admin = admin(src)?;
    let (admin_socket, admin_group, admin_token) = super::admin::admin_access(src)?;
    let drain_timeout = match setting!(src, drain_timeout) {
        None => DEFAULT_DRAIN_TIMEOUT,
        Some((loc, d)) => parse_duration(d).map_err(|r| ConfigError::new(loc, d, r))?,
    };
    let shutdown_timeout =
        duration_setting(setting!(src, shutdown_timeout), DEFAULT_SHUTDOWN_TIMEOUT)?;
    let connect_timeout =
        duration_setting(setting!(src, connect_timeout), DEFAULT_CONNECT_TIMEOUT)?;
    let (splice, max_conns) = proxy_globals(src)?;
    let (source_rate, source_burst) = source_limit(src)?;
    let (syn_cookies, syn_cookie_rate) = syn_cookies(src)?;
    let announce_table = announce_table(src)?;
    Ok(Config {
        ifaces,
        xdp_mode,
        max_flows,
        ring_size,
        max_services,
        idle_timeout,
        closed_timeout,
        half_open_timeout,
        snat_ips,
        snat_ports,
        state_dir,
        admin,
        admin_socket,
        admin_group,
        admin_token,
        drain_timeout,
        shutdown_timeout,
        connect_timeout,
        splice,
        max_conns,
        source_rate,
        source_burst,
        syn_cookies,
        syn_cookie_rate,
        announce_table,
        services: Vec::new(),
    })
}

fn ifaces(src: &Layered<'_>) -> Result<Vec<String>, ConfigError> {
    let ifaces = if !src.flags.ifaces.is_empty() {
        src.flags.ifaces.clone()
    } else {
        src.file.iface.clone()
    };
    if ifaces.is_empty() {
        return Err(ConfigError::new(
            "--iface",
            "",
            "no interface given: name the LB's interfaces with --iface (or `iface = [...]` in the config file)",
        ));
    }
    let mut seen = HashSet::new();
    for i in &ifaces {
        if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) {
            return Err(ConfigError::new("--iface", i, "not a valid interface name"));
        }
        if !seen.insert(i) {
            return Err(ConfigError::new("--iface", i, "interface given twice"));
        }
    }
    Ok(ifaces)
}

fn xdp_mode(src: &Layered<'_>) -> Result<XdpModeChoice, ConfigError> {
    let given = setting!(src, xdp_mode);
    Ok(match given {
        None => XdpModeChoice::Auto,
        Some((loc, m)) => match m {
            "auto" => XdpModeChoice::Auto,
            "native" | "driver" => XdpModeChoice::Native,
            "skb" | "generic" => XdpModeChoice::Skb,
            other => return Err(ConfigError::new(loc, other, "expected auto, native or skb")),
        },
    })
}

/// When SYN cookies answer: the mode and, for `auto`, the rate that turns them on.
fn syn_cookies(src: &Layered<'_>) -> Result<(SynCookies, u32), ConfigError> {
    let mode = match setting!(src, syn_cookies) {
        None => SynCookies::Auto,
        Some((loc, m)) => match m {
            "auto" => SynCookies::Auto,
            "always" => SynCookies::Always,
            "off" => SynCookies::Off,
            other => return Err(ConfigError::new(loc, other, "expected auto, always or off")),
        },
    };
    let (flags, f) = (src.flags, src.file);
    let rate = flags
        .syn_cookie_rate
        .or(f.syn_cookie_rate)
        .unwrap_or(DEFAULT_SYN_COOKIE_RATE);
    if rate == 0 {
        return Err(ConfigError::new(
            src.loc(flags.syn_cookie_rate.is_some(), "syn_cookie_rate"),
            "0",
            "must be at least 1 SYN a second (for cookies on every SYN, use --syn-cookies always)",
        ));
    }
    Ok((mode, rate))
}

/// The routing table VIP routes are kept in. Tables 253-255 are the kernel's own
/// (default, main, local): a VIP route there would steer the host's own traffic.
fn announce_table(src: &Layered<'_>) -> Result<Option<u32>, ConfigError> {
    let (flags, f) = (src.flags, src.file);
    let Some(table) = flags.announce_table.or(f.announce_table) else {
        return Ok(None);
    };
    if !(1..=252).contains(&table) {
        return Err(ConfigError::new(
            src.loc(flags.announce_table.is_some(), "announce_table"),
            table.to_string(),
            "expected a table from 1 to 252 (0 and 253-255 are the kernel's own)",
        ));
    }
    Ok(Some(table))
}

/// Where the ring size was set, for errors about it.
fn ring_loc(src: &Layered<'_>) -> String {
    src.loc(src.flags.ring_size.is_some(), "ring_size")
}

/// The map sizes: flow table entries, Maglev ring size, service slots.
fn table_sizes(src: &Layered<'_>) -> Result<(u32, u32, u32), ConfigError> {
    let (flags, f) = (src.flags, src.file);
    let max_flows = flags.max_flows.or(f.max_flows).unwrap_or(DEFAULT_MAX_FLOWS);
    if max_flows == 0 {
        return Err(ConfigError::new(
            src.loc(flags.max_flows.is_some(), "max_flows"),
            "0",
            "the flow table needs at least one entry",
        ));
    }
    let ring_size = flags.ring_size.or(f.ring_size).unwrap_or(DEFAULT_RING_SIZE);
    if !is_prime(ring_size) || ring_size > MAX_RING_SIZE {
        return Err(ConfigError::new(
            ring_loc(src),
            ring_size.to_string(),
            format!("the Maglev ring size must be a prime up to {MAX_RING_SIZE} (e.g. 65537)"),
        ));
    }
    let max_services = flags
        .max_services
        .or(f.max_services)
        .unwrap_or(DEFAULT_MAX_SERVICES);
    if max_services == 0 || max_services > MAX_SERVICES {
        return Err(ConfigError::new(
            src.loc(flags.max_services.is_some(), "max_services"),
            max_services.to_string(),
            format!("must be 1..={MAX_SERVICES}"),
        ));
    }
    let table_entries = max_services as u64 * 2 * ring_size as u64;
    if table_entries > u32::MAX as u64 / 4 {
        return Err(ConfigError::new(
            ring_loc(src),
            ring_size.to_string(),
            format!("ring size × 2 × max services ({table_entries}) is too large"),
        ));
    }
    Ok((max_flows, ring_size, max_services))
}

fn snat_ips(src: &Layered<'_>) -> Result<Vec<IpAddr>, ConfigError> {
    let (given, loc): (&[String], String) = if !src.flags.snat_ips.is_empty() {
        (&src.flags.snat_ips, "--snat-ip".into())
    } else {
        (&src.file.snat_ip, src.at("snat_ip"))
    };
    let mut snat_ips: Vec<IpAddr> = Vec::new();
    for s in given {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| ConfigError::new(loc.clone(), s, "not an IP address"))?;
        let same_family = snat_ips.iter().filter(|o| o.is_ipv4() == ip.is_ipv4());
        if same_family.clone().any(|o| *o == ip) {
            return Err(ConfigError::new(loc.clone(), s, "given twice"));
        }
        if same_family.count() >= MAX_SNAT_ADDRS as usize {
            return Err(ConfigError::new(
                loc.clone(),
                s,
                format!("at most {MAX_SNAT_ADDRS} SNAT addresses per address family"),
            ));
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(ConfigError::new(
                loc.clone(),
                s,
                "must be a unicast address of this host",
            ));
        }
        snat_ips.push(ip);
    }
    Ok(snat_ips)
}

fn state_dir(src: &Layered<'_>) -> Result<Option<PathBuf>, ConfigError> {
    let state_dir = src.flags.state_dir.clone().or(src.file.state_dir.clone());
    if let Some(dir) = &state_dir
        && !dir.is_absolute()
    {
        return Err(ConfigError::new(
            src.loc(src.flags.state_dir.is_some(), "state_dir"),
            dir.display().to_string(),
            "must be an absolute path, e.g. /sys/fs/bpf/lb",
        ));
    }
    Ok(state_dir)
}

fn admin(src: &Layered<'_>) -> Result<Option<SocketAddr>, ConfigError> {
    let given = setting!(src, admin);
    Ok(match given {
        None => Some(DEFAULT_ADMIN.parse().expect("literal")),
        Some((_, "off")) => None,
        Some((loc, a)) => Some(a.trim().parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                loc,
                a,
                "expected IP:PORT for the admin API (e.g. 127.0.0.1:9100), or off",
            )
        })?),
    })
}

/// The proxy engine's settings: how bytes move and how many connections at most.
fn proxy_globals(src: &Layered<'_>) -> Result<(SpliceChoice, u32), ConfigError> {
    let (flags, f) = (src.flags, src.file);
    let splice = match setting!(src, splice) {
        None => DEFAULT_SPLICE,
        Some((_, "sockmap")) => SpliceChoice::Sockmap,
        Some((_, "pipe")) => SpliceChoice::Pipe,
        Some((loc, v)) => return Err(ConfigError::new(loc, v, "expected sockmap or pipe")),
    };
    let max_conns = flags.max_conns.or(f.max_conns).unwrap_or(DEFAULT_MAX_CONNS);
    if max_conns == 0 || max_conns > 1_000_000 {
        return Err(ConfigError::new(
            src.loc(flags.max_conns.is_some(), "max_conns"),
            max_conns.to_string(),
            "must be 1..=1000000",
        ));
    }
    Ok((splice, max_conns))
}

/// The per-source new-flow limit: (rate, burst); rate 0 is off, the burst defaults to
/// the rate (at least 1).
fn source_limit(src: &Layered<'_>) -> Result<(u32, u32), ConfigError> {
    let (flags, f) = (src.flags, src.file);
    let rate = flags.source_rate.or(f.source_rate).unwrap_or(0);
    if rate > MAX_RATE {
        return Err(ConfigError::new(
            src.loc(flags.source_rate.is_some(), "source_rate"),
            rate.to_string(),
            format!("must be 0 (no limit) up to {MAX_RATE} new flows a second per source"),
        ));
    }
    let burst = match flags.source_burst.or(f.source_burst) {
        None => rate.max(1),
        Some(b) => {
            let loc = src.loc(flags.source_burst.is_some(), "source_burst");
            if b == 0 || b > MAX_RATE {
                return Err(ConfigError::new(
                    loc,
                    b.to_string(),
                    format!("must be 1..={MAX_RATE} new flows"),
                ));
            }
            if rate == 0 {
                return Err(ConfigError::new(
                    loc,
                    b.to_string(),
                    "a burst needs a source rate: set --source-rate (source_rate in the file) too",
                ));
            }
            b
        }
    };
    Ok((rate, burst))
}

/// A duration that must be longer than zero; `given` is the text and where it came from.
fn duration_setting(
    given: Option<(String, &str)>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some((loc, s)) = given else {
        return Ok(default);
    };
    let d = parse_duration(s).map_err(|r| ConfigError::new(loc.clone(), s, r))?;
    if d.is_zero() {
        return Err(ConfigError::new(loc, s, "must be longer than zero"));
    }
    Ok(d)
}

/// What no single service can check: the number of services and backends against the
/// table sizes, and VIPs and names unique.
fn check_services(config: &Config, src: &Layered<'_>) -> Result<(), ConfigError> {
    let services = &config.services;
    if services.len() > config.max_services as usize {
        return Err(ConfigError::new(
            src.at("service"),
            services.len().to_string(),
            format!(
                "more services than --max-services ({})",
                config.max_services
            ),
        ));
    }
    let mut vips = HashSet::new();
    let mut names = HashSet::new();
    let mut total_backends = 0usize;
    for s in services {
        if !vips.insert(s.vip) {
            return Err(ConfigError::new(
                src.at("vip"),
                s.vip.to_string(),
                "two services use the same VIP and port",
            ));
        }
        if !names.insert(s.name.clone()) {
            return Err(ConfigError::new(
                src.at("name"),
                &s.name,
                "two services have the same name",
            ));
        }
        if s.backends.len() as u64 >= config.ring_size as u64 {
            return Err(ConfigError::new(
                ring_loc(src),
                config.ring_size.to_string(),
                format!(
                    "service {} has {} backends; the ring must be larger (ideally 100×)",
                    s.name,
                    s.backends.len()
                ),
            ));
        }
        total_backends += s.backends.len();
    }
    if total_backends > MAX_BACKENDS as usize {
        return Err(ConfigError::new(
            src.at("backends"),
            total_backends.to_string(),
            format!("at most {MAX_BACKENDS} backends in all"),
        ));
    }
    Ok(())
}
