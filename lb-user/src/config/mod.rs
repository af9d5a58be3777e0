//! The validated configuration the daemon runs from, built from flags, a TOML file, or
//! both (flags override the file's global settings). Every error names where the bad
//! value came from (`--backend`, `lb.toml: service "web" backends[2]`) and the value.

use lb_common::maglev::is_prime;
use lb_common::maps::{DEFAULT_RING_SIZE, MAX_BACKENDS, MAX_SERVICES};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeChoice {
    /// Native (driver) mode, falling back to skb mode with a warning.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Skb,
}

/// Forwarding mode of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Full NAT in XDP: both directions through the LB, backends need no setup.
    Nat,
    /// The daemon terminates TCP and sends each backend a PROXY protocol header with the
    /// client's address first; the bytes then move in the kernel.
    ProxyV2,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::ProxyV2 => "proxy-v2",
        }
    }
}

/// Which PROXY protocol header a proxy service sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    V1,
    V2,
}

/// Optional PROXY v2 TLVs, each off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TlvSet {
    pub unique_id: bool,
    pub crc32c: bool,
    pub authority: bool,
    pub alpn: bool,
}

/// PROXY protocol settings of a `proxy-v2` service.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProxyConfig {
    pub version: ProxyVersion,
    pub tlvs: TlvSet,
    /// Read a PROXY header from the client first (this LB stands behind another).
    pub accept_proxy: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            version: ProxyVersion::V2,
            tlvs: TlvSet::default(),
            accept_proxy: false,
        }
    }
}

/// How a proxied connection's bytes move after the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpliceChoice {
    /// sockmap: an sk_skb program redirects each socket's data to its peer.
    Sockmap,
    /// splice(2) through a pipe.
    Pipe,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: SocketAddr,
    pub mode: Mode,
    pub backends: Vec<BackendConfig>,
    pub health: HealthConfig,
    /// Used by `proxy-v2` services only.
    pub proxy: ProxyConfig,
}

/// What a health check asks of a backend.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    /// No check: backends are always up.
    None,
    /// A TCP connect succeeds.
    Tcp,
    /// `GET path` answers with a status in `status` (inclusive).
    Http {
        path: String,
        host: Option<String>,
        status: (u16, u16),
    },
}

impl std::fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthCheck::None => f.write_str("none"),
            HealthCheck::Tcp => f.write_str("tcp"),
            HealthCheck::Http { path, .. } => write!(f, "http:{path}"),
        }
    }
}

/// A service's health check settings (ELB/HAProxy semantics: `fall` consecutive failures
/// take a backend out, `rise` consecutive successes bring it back).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HealthConfig {
    pub check: HealthCheck,
    /// Port checked instead of the backend's own.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_RISE: u32 = 2;
pub const DEFAULT_HEALTH_FALL: u32 = 2;
pub const DEFAULT_HEALTH_STATUS: (u16, u16) = (200, 399);
/// Like NLB's deregistration delay.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9100";

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: HealthCheck::Tcp,
            port: None,
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            rise: DEFAULT_HEALTH_RISE,
            fall: DEFAULT_HEALTH_FALL,
        }
    }
}

/// Everything the daemon needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub ifaces: Vec<String>,
    pub xdp_mode: XdpModeChoice,
    pub max_flows: u32,
    pub ring_size: u32,
    pub max_services: u32,
    pub idle_timeout: Duration,
    pub closed_timeout: Duration,
    /// At most one per family; unset families use the egress interface's address.
    pub snat_ips: Vec<IpAddr>,
    pub snat_ports: (u16, u16),
    /// Where to pin the flow state (bpffs), so a crashed daemon's successor keeps it.
    pub pin_dir: Option<PathBuf>,
    /// Where the admin API listens; `None` when disabled (`--admin off`).
    pub admin: Option<SocketAddr>,
    /// How long a draining backend's flows may continue before they are cut.
    pub drain_timeout: Duration,
    /// Proxy services: how long a backend connect may take before the next is tried.
    pub connect_timeout: Duration,
    pub splice: SpliceChoice,
    /// Proxy services: connections proxied at once, at most.
    pub max_conns: u32,
    pub services: Vec<ServiceConfig>,
}

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_MAX_CONNS: u32 = 65_536;
/// pipe: faster here than sockmap (README), and bounded under a slow receiver, where
/// sockmap queues without limit in the kernel.
pub const DEFAULT_SPLICE: SpliceChoice = SpliceChoice::Pipe;

pub const DEFAULT_MAX_FLOWS: u32 = 262_144;
pub const DEFAULT_MAX_SERVICES: u32 = 16;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(350);
pub const DEFAULT_CLOSED_TIMEOUT: Duration = Duration::from_secs(10);
/// Below the kernel's default ephemeral range (32768-60999), so SNAT ports never collide
/// with connections the LB host opens itself.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (10000, 32767);
pub const MAX_WEIGHT: u32 = 65535;
const MAX_RING_SIZE: u32 = 16_777_259;

/// A configuration error: where, which value, what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{location}: {value:?}: {reason}")]
pub struct ConfigError {
    pub location: String,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    fn new(
        location: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        ConfigError {
            location: location.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// Settings as given on the command line; `None`/empty means "not given".
#[derive(Clone, Debug, Default)]
pub struct FlagSettings {
    pub config: Option<PathBuf>,
    pub ifaces: Vec<String>,
    pub xdp_mode: Option<String>,
    pub name: Option<String>,
    pub vip: Option<String>,
    pub mode: Option<String>,
    pub backends: Vec<String>,
    pub snat_ips: Vec<String>,
    pub snat_ports: Option<String>,
    pub max_flows: Option<u32>,
    pub ring_size: Option<u32>,
    pub max_services: Option<u32>,
    pub idle_timeout: Option<String>,
    pub closed_timeout: Option<String>,
    pub pin_dir: Option<PathBuf>,
    pub admin: Option<String>,
    pub drain_timeout: Option<String>,
    pub health: HealthFlags,
    pub connect_timeout: Option<String>,
    pub splice: Option<String>,
    pub max_conns: Option<u32>,
    pub proxy_protocol: Option<String>,
    pub proxy_tlvs: Vec<String>,
    pub accept_proxy: bool,
}

/// Health check flags of the service given with `--vip`.
#[derive(Clone, Debug, Default)]
pub struct HealthFlags {
    pub check: Option<String>,
    pub port: Option<u16>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub status: Option<String>,
    pub host: Option<String>,
}

impl HealthFlags {
    fn any(&self) -> bool {
        self.check.is_some()
            || self.port.is_some()
            || self.interval.is_some()
            || self.timeout.is_some()
            || self.rise.is_some()
            || self.fall.is_some()
            || self.status.is_some()
            || self.host.is_some()
    }
}

/// The TOML file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub iface: Vec<String>,
    pub xdp_mode: Option<String>,
    pub max_flows: Option<u32>,
    pub ring_size: Option<u32>,
    pub max_services: Option<u32>,
    pub idle_timeout: Option<String>,
    pub closed_timeout: Option<String>,
    #[serde(default)]
    pub snat_ip: Vec<String>,
    pub snat_ports: Option<String>,
    pub pin_dir: Option<PathBuf>,
    pub admin: Option<String>,
    pub drain_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub splice: Option<String>,
    pub max_conns: Option<u32>,
    #[serde(default)]
    pub service: Vec<FileService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileService {
    pub name: String,
    pub vip: String,
    pub mode: Option<String>,
    #[serde(default)]
    pub backends: Vec<FileBackend>,
    pub health: Option<FileHealth>,
    pub proxy_protocol: Option<String>,
    #[serde(default)]
    pub proxy_tlvs: Vec<String>,
    #[serde(default)]
    pub accept_proxy: bool,
}

/// A service's `[service.health]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealth {
    pub check: Option<String>,
    pub port: Option<u16>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
    pub status: Option<String>,
    pub host: Option<String>,
}

/// A backend as `"IP:PORT[@WEIGHT]"` or `{ addr = "IP:PORT", weight = N }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileBackend {
    Short(String),
    Long { addr: String, weight: Option<u32> },
}

impl Config {
    /// Builds the configuration from flags, reading `--config` if given.
    pub fn from_flags(flags: &FlagSettings) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => Some((path.clone(), read_file(path)?)),
            None => None,
        };
        build(flags, file)
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "--config",
            path.display().to_string(),
            format!("cannot read: {e}"),
        )
    })?;
    parse_file(&text)
        .map_err(|reason| ConfigError::new("--config", path.display().to_string(), reason))
}

/// Parses the TOML text of a config file (syntax and field names only).
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
}

fn build(flags: &FlagSettings, file: Option<(PathBuf, FileConfig)>) -> Result<Config, ConfigError> {
    let fname = file.as_ref().map(|(p, _)| p.display().to_string());
    let f = file.map(|(_, f)| f).unwrap_or_default();
    let at = |field: &str| match &fname {
        Some(n) => format!("{n}: {field}"),
        None => field.to_string(),
    };

    let ifaces = if !flags.ifaces.is_empty() {
        flags.ifaces.clone()
    } else {
        f.iface.clone()
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

    let xdp_mode = match flags
        .xdp_mode
        .as_deref()
        .map(|m| ("--xdp-mode".to_string(), m))
        .or(f.xdp_mode.as_deref().map(|m| (at("xdp_mode"), m)))
    {
        None => XdpModeChoice::Auto,
        Some((loc, m)) => match m {
            "auto" => XdpModeChoice::Auto,
            "native" | "driver" => XdpModeChoice::Native,
            "skb" | "generic" => XdpModeChoice::Skb,
            other => return Err(ConfigError::new(loc, other, "expected auto, native or skb")),
        },
    };

    let max_flows = flags.max_flows.or(f.max_flows).unwrap_or(DEFAULT_MAX_FLOWS);
    if max_flows == 0 {
        return Err(ConfigError::new(
            flag_or(flags.max_flows.is_some(), "--max-flows", at("max_flows")),
            "0",
            "the flow table needs at least one entry",
        ));
    }
    let ring_size = flags.ring_size.or(f.ring_size).unwrap_or(DEFAULT_RING_SIZE);
    let ring_loc = flag_or(flags.ring_size.is_some(), "--ring-size", at("ring_size"));
    if !is_prime(ring_size) || ring_size > MAX_RING_SIZE {
        return Err(ConfigError::new(
            ring_loc,
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
            flag_or(
                flags.max_services.is_some(),
                "--max-services",
                at("max_services"),
            ),
            max_services.to_string(),
            format!("must be 1..={MAX_SERVICES}"),
        ));
    }
    let table_entries = max_services as u64 * 2 * ring_size as u64;
    if table_entries > u32::MAX as u64 / 4 {
        return Err(ConfigError::new(
            ring_loc,
            ring_size.to_string(),
            format!("ring size × 2 × max services ({table_entries}) is too large"),
        ));
    }

    let idle_timeout = duration_setting(
        flags.idle_timeout.as_deref(),
        "--idle-timeout",
        f.idle_timeout.as_deref(),
        at("idle_timeout"),
        DEFAULT_IDLE_TIMEOUT,
    )?;
    let closed_timeout = duration_setting(
        flags.closed_timeout.as_deref(),
        "--closed-timeout",
        f.closed_timeout.as_deref(),
        at("closed_timeout"),
        DEFAULT_CLOSED_TIMEOUT,
    )?;

    let (snat_src, snat_loc): (&[String], String) = if !flags.snat_ips.is_empty() {
        (&flags.snat_ips, "--snat-ip".into())
    } else {
        (&f.snat_ip, at("snat_ip"))
    };
    let mut snat_ips: Vec<IpAddr> = Vec::new();
    for s in snat_src {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| ConfigError::new(snat_loc.clone(), s, "not an IP address"))?;
        if snat_ips.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
            return Err(ConfigError::new(
                snat_loc.clone(),
                s,
                "one SNAT address per address family",
            ));
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(ConfigError::new(
                snat_loc.clone(),
                s,
                "must be a unicast address of this host",
            ));
        }
        snat_ips.push(ip);
    }
    let snat_ports = match flags
        .snat_ports
        .as_deref()
        .map(|s| ("--snat-ports".to_string(), s))
        .or(f.snat_ports.as_deref().map(|s| (at("snat_ports"), s)))
    {
        None => DEFAULT_SNAT_PORTS,
        Some((loc, s)) => parse_port_range(s).map_err(|r| ConfigError::new(loc, s, r))?,
    };

    let pin_dir = flags.pin_dir.clone().or(f.pin_dir.clone());
    if let Some(dir) = &pin_dir {
        if !dir.is_absolute() {
            let loc = flag_or(flags.pin_dir.is_some(), "--pin-dir", at("pin_dir"));
            return Err(ConfigError::new(
                loc,
                dir.display().to_string(),
                "must be an absolute path, e.g. /sys/fs/bpf/lb",
            ));
        }
    }
    let admin = match flags
        .admin
        .as_deref()
        .map(|a| ("--admin".to_string(), a))
        .or(f.admin.as_deref().map(|a| (at("admin"), a)))
    {
        None => Some(DEFAULT_ADMIN.parse().expect("literal")),
        Some((_, "off")) => None,
        Some((loc, a)) => Some(a.trim().parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                loc,
                a,
                "expected IP:PORT for the admin API (e.g. 127.0.0.1:9100), or off",
            )
        })?),
    };
    let drain_timeout = match flags
        .drain_timeout
        .as_deref()
        .map(|d| ("--drain-timeout".to_string(), d))
        .or(f.drain_timeout.as_deref().map(|d| (at("drain_timeout"), d)))
    {
        None => DEFAULT_DRAIN_TIMEOUT,
        Some((loc, d)) => parse_duration(d).map_err(|r| ConfigError::new(loc, d, r))?,
    };

    let connect_timeout = duration_setting(
        flags.connect_timeout.as_deref(),
        "--connect-timeout",
        f.connect_timeout.as_deref(),
        at("connect_timeout"),
        DEFAULT_CONNECT_TIMEOUT,
    )?;
    let splice = match flags
        .splice
        .as_deref()
        .map(|v| ("--splice".to_string(), v))
        .or(f.splice.as_deref().map(|v| (at("splice"), v)))
    {
        None => DEFAULT_SPLICE,
        Some((_, "sockmap")) => SpliceChoice::Sockmap,
        Some((_, "pipe")) => SpliceChoice::Pipe,
        Some((loc, v)) => return Err(ConfigError::new(loc, v, "expected sockmap or pipe")),
    };
    let max_conns = flags.max_conns.or(f.max_conns).unwrap_or(DEFAULT_MAX_CONNS);
    if max_conns == 0 || max_conns > 1_000_000 {
        return Err(ConfigError::new(
            flag_or(flags.max_conns.is_some(), "--max-conns", at("max_conns")),
            max_conns.to_string(),
            "must be 1..=1000000",
        ));
    }

    let flag_service = flags.vip.is_some()
        || !flags.backends.is_empty()
        || flags.name.is_some()
        || flags.mode.is_some()
        || flags.proxy_protocol.is_some()
        || !flags.proxy_tlvs.is_empty()
        || flags.accept_proxy;
    let mut services = Vec::new();
    if flag_service {
        if !f.service.is_empty() {
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
        let health = health_config(&flags.health, &|field: &str| match field {
            "check" => "--health".to_string(),
            "rise" => "--healthy-threshold".to_string(),
            "fall" => "--unhealthy-threshold".to_string(),
            other => format!("--health-{other}"),
        })?;
        let proxy = ProxyFields {
            version: flags.proxy_protocol.as_deref(),
            tlvs: &flags.proxy_tlvs,
            accept_proxy: flags.accept_proxy,
        };
        services.push(service(
            flags.name.as_deref().unwrap_or("default"),
            vip,
            flags.mode.as_deref(),
            &backends,
            health,
            &proxy,
            &|field: &str| match field {
                "proxy_protocol" => "--proxy-protocol".to_string(),
                "proxy_tlvs" => "--proxy-tlv-*".to_string(),
                "accept_proxy" => "--accept-proxy".to_string(),
                other => format!("--{other}"),
            },
        )?);
    } else {
        if flags.health.any() {
            return Err(ConfigError::new(
                "--health",
                flags.health.check.clone().unwrap_or_default(),
                "health check flags apply to the service given with --vip; set `[service.health]` per service in the config file",
            ));
        }
        for (i, s) in f.service.iter().enumerate() {
            let loc = |field: &str| at(&format!("service[{i}] ({}) {field}", s.name));
            let h = s.health.as_ref();
            let hf = HealthFlags {
                check: h.and_then(|h| h.check.clone()),
                port: h.and_then(|h| h.port),
                interval: h.and_then(|h| h.interval.clone()),
                timeout: h.and_then(|h| h.timeout.clone()),
                rise: h.and_then(|h| h.healthy_threshold),
                fall: h.and_then(|h| h.unhealthy_threshold),
                status: h.and_then(|h| h.status.clone()),
                host: h.and_then(|h| h.host.clone()),
            };
            let health = health_config(&hf, &|field: &str| {
                let name = match field {
                    "rise" => "healthy_threshold",
                    "fall" => "unhealthy_threshold",
                    other => other,
                };
                loc(&format!("health.{name}"))
            })?;
            let proxy = ProxyFields {
                version: s.proxy_protocol.as_deref(),
                tlvs: &s.proxy_tlvs,
                accept_proxy: s.accept_proxy,
            };
            services.push(service(
                &s.name,
                &s.vip,
                s.mode.as_deref(),
                &s.backends,
                health,
                &proxy,
                &loc,
            )?);
        }
    }
    if services.is_empty() {
        return Err(ConfigError::new(
            "--vip",
            "",
            "no service: give --vip and --backend (or [[service]] sections in a --config file)",
        ));
    }
    if services.len() > max_services as usize {
        return Err(ConfigError::new(
            at("service"),
            services.len().to_string(),
            format!("more services than --max-services ({max_services})"),
        ));
    }
    let mut vips = HashSet::new();
    let mut names = HashSet::new();
    let mut total_backends = 0usize;
    for s in &services {
        if !vips.insert(s.vip) {
            return Err(ConfigError::new(
                at("vip"),
                s.vip.to_string(),
                "two services use the same VIP and port",
            ));
        }
        if !names.insert(s.name.clone()) {
            return Err(ConfigError::new(
                at("name"),
                &s.name,
                "two services have the same name",
            ));
        }
        if s.backends.len() as u64 >= ring_size as u64 {
            return Err(ConfigError::new(
                ring_loc.clone(),
                ring_size.to_string(),
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
            at("backends"),
            total_backends.to_string(),
            format!("at most {MAX_BACKENDS} backends in all"),
        ));
    }
    Ok(Config {
        ifaces,
        xdp_mode,
        max_flows,
        ring_size,
        max_services,
        idle_timeout,
        closed_timeout,
        snat_ips,
        snat_ports,
        pin_dir,
        admin,
        drain_timeout,
        connect_timeout,
        splice,
        max_conns,
        services,
    })
}

/// PROXY protocol fields of a service as written (flags or file).
struct ProxyFields<'a> {
    version: Option<&'a str>,
    tlvs: &'a [String],
    accept_proxy: bool,
}

fn proxy_config(
    mode: Mode,
    p: &ProxyFields<'_>,
    loc: &dyn Fn(&str) -> String,
) -> Result<ProxyConfig, ConfigError> {
    if mode == Mode::Nat {
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

/// Validates health check settings; `loc` names a field ("check", "port", "interval",
/// "timeout", "rise", "fall", "status", "host") where the user wrote it.
fn health_config(
    h: &HealthFlags,
    loc: &dyn Fn(&str) -> String,
) -> Result<HealthConfig, ConfigError> {
    let mut status = None;
    if let Some(st) = &h.status {
        status = Some(parse_status_range(st).map_err(|r| ConfigError::new(loc("status"), st, r))?);
    }
    let check = match h.check.as_deref().map(str::trim) {
        None | Some("tcp") => HealthCheck::Tcp,
        Some("none") => HealthCheck::None,
        Some(c) if c.starts_with("http:") => {
            let path = &c["http:".len()..];
            if !path.starts_with('/')
                || path.chars().any(|ch| ch.is_whitespace() || ch.is_control())
            {
                return Err(ConfigError::new(
                    loc("check"),
                    c,
                    "the HTTP check path must start with / and have no spaces, e.g. http:/health/instance",
                ));
            }
            if let Some(host) = &h.host {
                if host.is_empty() || host.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                    return Err(ConfigError::new(
                        loc("host"),
                        host,
                        "not a valid Host header value",
                    ));
                }
            }
            HealthCheck::Http {
                path: path.to_string(),
                host: h.host.clone(),
                status: status.unwrap_or(DEFAULT_HEALTH_STATUS),
            }
        }
        Some(c) => {
            return Err(ConfigError::new(
                loc("check"),
                c,
                "expected tcp, http:/PATH or none",
            ));
        }
    };
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
    if h.port == Some(0) {
        return Err(ConfigError::new(loc("port"), "0", "not a port"));
    }
    let dur =
        |v: &Option<String>, field: &str, default: Duration| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(s) => {
                    let d = parse_duration(s).map_err(|r| ConfigError::new(loc(field), s, r))?;
                    if d < Duration::from_millis(10) {
                        return Err(ConfigError::new(loc(field), s, "must be at least 10ms"));
                    }
                    Ok(d)
                }
            }
        };
    let interval = dur(&h.interval, "interval", DEFAULT_HEALTH_INTERVAL)?;
    let timeout = dur(
        &h.timeout,
        "timeout",
        DEFAULT_HEALTH_TIMEOUT.min(interval / 2),
    )?;
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
    let threshold = |v: Option<u32>, field: &str, default: u32| -> Result<u32, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) if (1..=100).contains(&n) => Ok(n),
            Some(n) => Err(ConfigError::new(
                loc(field),
                n.to_string(),
                "must be 1..=100",
            )),
        }
    };
    Ok(HealthConfig {
        check,
        port: h.port,
        interval,
        timeout,
        rise: threshold(h.rise, "rise", DEFAULT_HEALTH_RISE)?,
        fall: threshold(h.fall, "fall", DEFAULT_HEALTH_FALL)?,
    })
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

fn flag_or(from_flag: bool, flag: &str, file_loc: String) -> String {
    if from_flag {
        flag.to_string()
    } else {
        file_loc
    }
}

fn duration_setting(
    flag: Option<&str>,
    flag_name: &str,
    file: Option<&str>,
    file_loc: String,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let (loc, s) = match (flag, file) {
        (Some(s), _) => (flag_name.to_string(), s),
        (None, Some(s)) => (file_loc, s),
        (None, None) => return Ok(default),
    };
    let d = parse_duration(s).map_err(|r| ConfigError::new(loc.clone(), s, r))?;
    if d.is_zero() {
        return Err(ConfigError::new(loc, s, "must be longer than zero"));
    }
    Ok(d)
}

fn service(
    name: &str,
    vip: &str,
    mode: Option<&str>,
    backends: &[FileBackend],
    health: HealthConfig,
    proxy: &ProxyFields<'_>,
    loc: &dyn Fn(&str) -> String,
) -> Result<ServiceConfig, ConfigError> {
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
    let vip_addr = parse_socket_addr(vip).map_err(|r| ConfigError::new(loc("vip"), vip, r))?;
    let mode = match mode.unwrap_or("nat") {
        "nat" => Mode::Nat,
        "proxy-v2" => Mode::ProxyV2,
        other => {
            return Err(ConfigError::new(
                loc("mode"),
                other,
                "unknown forwarding mode (available: nat, proxy-v2)",
            ));
        }
    };
    let proxy = proxy_config(mode, proxy, loc)?;
    if backends.is_empty() {
        return Err(ConfigError::new(
            loc("backend"),
            "",
            format!("service {name} has no backend: give at least one IP:PORT[@WEIGHT]"),
        ));
    }
    let mut out: Vec<BackendConfig> = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        let bloc = loc(&format!("backend[{i}]"));
        let (text, parsed) = match b {
            FileBackend::Short(s) => (s.clone(), parse_backend(s)),
            FileBackend::Long { addr, weight } => (
                addr.clone(),
                parse_socket_addr(addr).and_then(|a| {
                    let w = weight.unwrap_or(1);
                    if w > MAX_WEIGHT {
                        Err(format!("weight {w} is above {MAX_WEIGHT}"))
                    } else {
                        Ok(BackendConfig { addr: a, weight: w })
                    }
                }),
            ),
        };
        let be = parsed.map_err(|r| ConfigError::new(bloc.clone(), &text, r))?;
        check_backend(vip_addr, mode, &be).map_err(|r| ConfigError::new(bloc.clone(), &text, r))?;
        if out.iter().any(|o| o.addr == be.addr) {
            return Err(ConfigError::new(
                bloc,
                &text,
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
    Ok(ServiceConfig {
        name: name.to_string(),
        vip: vip_addr,
        mode,
        backends: out,
        health,
        proxy,
    })
}

/// Whether a backend can serve the VIP: a unicast address, of the VIP's family in NAT
/// mode (a proxy may connect to either family; the header says what the client used).
pub fn check_backend(vip: SocketAddr, mode: Mode, be: &BackendConfig) -> Result<(), String> {
    if mode == Mode::Nat && be.addr.is_ipv4() != vip.is_ipv4() {
        return Err(format!(
            "address family differs from the VIP {vip} (NAT does not translate between IPv4 and IPv6)"
        ));
    }
    if be.addr.ip().is_unspecified() || be.addr.ip().is_multicast() || be.addr.ip().is_loopback() {
        return Err("a backend must be a unicast address reachable from the LB host".into());
    }
    Ok(())
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
            if w > MAX_WEIGHT {
                return Err(format!("weight {w} is above {MAX_WEIGHT}"));
            }
            (a, w)
        }
        None => (s, 1),
    };
    Ok(BackendConfig {
        addr: parse_socket_addr(addr)?,
        weight,
    })
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

/// `350s`, `5m`, `1h`, `500ms`, or a bare number of seconds.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[(&str, &str)]) -> FlagSettings {
        let mut f = FlagSettings::default();
        for (k, v) in args {
            let v = v.to_string();
            match *k {
                "iface" => f.ifaces.push(v),
                "vip" => f.vip = Some(v),
                "backend" => f.backends.push(v),
                "name" => f.name = Some(v),
                "mode" => f.mode = Some(v),
                "xdp-mode" => f.xdp_mode = Some(v),
                "snat-ip" => f.snat_ips.push(v),
                "snat-ports" => f.snat_ports = Some(v),
                "idle-timeout" => f.idle_timeout = Some(v),
                "closed-timeout" => f.closed_timeout = Some(v),
                "max-flows" => f.max_flows = Some(v.parse().unwrap()),
                "ring-size" => f.ring_size = Some(v.parse().unwrap()),
                "max-services" => f.max_services = Some(v.parse().unwrap()),
                "pin-dir" => f.pin_dir = Some(PathBuf::from(v)),
                "admin" => f.admin = Some(v),
                "drain-timeout" => f.drain_timeout = Some(v),
                "health" => f.health.check = Some(v),
                "health-port" => f.health.port = Some(v.parse().unwrap()),
                "health-interval" => f.health.interval = Some(v),
                "health-timeout" => f.health.timeout = Some(v),
                "healthy-threshold" => f.health.rise = Some(v.parse().unwrap()),
                "unhealthy-threshold" => f.health.fall = Some(v.parse().unwrap()),
                "health-status" => f.health.status = Some(v),
                "health-host" => f.health.host = Some(v),
                "proxy-protocol" => f.proxy_protocol = Some(v),
                "proxy-tlv" => f.proxy_tlvs.push(v),
                "accept-proxy" => f.accept_proxy = v == "true",
                "connect-timeout" => f.connect_timeout = Some(v),
                "splice" => f.splice = Some(v),
                "max-conns" => f.max_conns = Some(v.parse().unwrap()),
                other => panic!("unknown test flag {other}"),
            }
        }
        f
    }

    const BASE: &[(&str, &str)] = &[
        ("iface", "lb0"),
        ("vip", "198.18.100.1:80"),
        ("backend", "198.18.1.11:80"),
        ("backend", "198.18.1.12:80@2"),
    ];

    fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut all = BASE.to_vec();
        all.extend_from_slice(extra);
        build(&flags(&all), None)
    }

    fn err(extra: &[(&str, &str)]) -> ConfigError {
        with(extra).expect_err("config should be rejected")
    }

    #[test]
    fn flags_build_a_service_with_defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.ifaces, vec!["lb0"]);
        assert_eq!(c.xdp_mode, XdpModeChoice::Auto);
        assert_eq!(c.max_flows, DEFAULT_MAX_FLOWS);
        assert_eq!(c.ring_size, 65537);
        assert_eq!(c.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(c.snat_ports, DEFAULT_SNAT_PORTS);
        assert_eq!(c.services.len(), 1);
        let s = &c.services[0];
        assert_eq!(s.name, "default");
        assert_eq!(s.mode, Mode::Nat);
        assert_eq!(
            s.backends[1],
            BackendConfig {
                addr: "198.18.1.12:80".parse().unwrap(),
                weight: 2
            }
        );
    }

    #[test]
    fn ipv6_addresses_use_brackets() {
        let f = flags(&[
            ("iface", "lb0"),
            ("vip", "[fd00:100::1]:443"),
            ("backend", "[fd00:1::11]:443@3"),
        ]);
        let c = build(&f, None).unwrap();
        assert_eq!(c.services[0].backends[0].weight, 3);
        let e = build(
            &flags(&[
                ("iface", "lb0"),
                ("vip", "fd00:100::1:443"),
                ("backend", "[fd00:1::11]:443"),
            ]),
            None,
        )
        .unwrap_err();
        assert_eq!(e.location, "--vip");
        assert!(e.reason.contains("[fd00::10]:80"), "{e}");
    }

    #[test]
    fn every_bad_flag_is_named_with_its_value() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (&[("backend", "198.18.1.13")], "--backend[2]", "198.18.1.13"),
            (
                &[("backend", "198.18.1.13:80@x")],
                "--backend[2]",
                "198.18.1.13:80@x",
            ),
            (
                &[("backend", "198.18.1.13:80@70000")],
                "--backend[2]",
                "198.18.1.13:80@70000",
            ),
            (
                &[("backend", "198.18.1.11:80")],
                "--backend[2]",
                "198.18.1.11:80",
            ),
            (
                &[("backend", "[fd00::1]:80")],
                "--backend[2]",
                "[fd00::1]:80",
            ),
            (
                &[("backend", "127.0.0.1:80")],
                "--backend[2]",
                "127.0.0.1:80",
            ),
            (
                &[("backend", "198.18.1.13:0")],
                "--backend[2]",
                "198.18.1.13:0",
            ),
            (&[("mode", "dsr")], "--mode", "dsr"),
            (&[("name", "bad name")], "--name", "bad name"),
            (&[("xdp-mode", "turbo")], "--xdp-mode", "turbo"),
            (&[("iface", "lb0")], "--iface", "lb0"),
            (&[("iface", "a/b")], "--iface", "a/b"),
            (&[("snat-ip", "nope")], "--snat-ip", "nope"),
            (
                &[("snat-ip", "198.18.0.1"), ("snat-ip", "198.18.0.2")],
                "--snat-ip",
                "198.18.0.2",
            ),
            (&[("snat-ip", "0.0.0.0")], "--snat-ip", "0.0.0.0"),
            (&[("snat-ports", "80-90")], "--snat-ports", "80-90"),
            (&[("snat-ports", "20000")], "--snat-ports", "20000"),
            (
                &[("idle-timeout", "5 parsecs")],
                "--idle-timeout",
                "5 parsecs",
            ),
            (&[("idle-timeout", "0s")], "--idle-timeout", "0s"),
            (&[("closed-timeout", "9d")], "--closed-timeout", "9d"),
            (&[("max-flows", "0")], "--max-flows", "0"),
            (&[("ring-size", "65536")], "--ring-size", "65536"),
            (&[("max-services", "0")], "--max-services", "0"),
            (&[("max-services", "9999")], "--max-services", "9999"),
            (
                &[("pin-dir", "sys/fs/bpf/lb")],
                "--pin-dir",
                "sys/fs/bpf/lb",
            ),
        ];
        for (extra, location, value) in cases {
            let e = err(extra);
            assert_eq!(e.location, *location, "{extra:?}: {e}");
            assert_eq!(e.value, *value, "{extra:?}: {e}");
            let shown = e.to_string();
            assert!(shown.contains(location) && shown.contains(value), "{shown}");
        }
    }

    #[test]
    fn missing_pieces_are_reported() {
        let e = build(
            &flags(&[("vip", "198.18.100.1:80"), ("backend", "198.18.1.11:80")]),
            None,
        )
        .unwrap_err();
        assert_eq!(e.location, "--iface");
        let e = build(
            &flags(&[("iface", "lb0"), ("backend", "198.18.1.11:80")]),
            None,
        )
        .unwrap_err();
        assert_eq!(e.location, "--vip");
        let e = build(
            &flags(&[("iface", "lb0"), ("vip", "198.18.100.1:80")]),
            None,
        )
        .unwrap_err();
        assert!(e.reason.contains("no backend"), "{e}");
        let e = build(&flags(&[("iface", "lb0")]), None).unwrap_err();
        assert!(e.reason.contains("no service"), "{e}");
        let e = build(
            &flags(&[
                ("iface", "lb0"),
                ("vip", "198.18.100.1:80"),
                ("backend", "198.18.1.11:80@0"),
            ]),
            None,
        )
        .unwrap_err();
        assert!(e.reason.contains("weight 0"), "{e}");
    }

    #[test]
    fn ring_must_be_larger_than_the_backend_set() {
        let e = err(&[("ring-size", "2")]);
        assert_eq!(e.location, "--ring-size");
        assert!(e.reason.contains("backends"), "{e}");
        assert!(with(&[("ring-size", "7")]).is_ok());
    }

    const FILE: &str = r#"
iface = ["lb0", "lb1"]
xdp_mode = "native"
max_flows = 1000
idle_timeout = "5m"
snat_ip = ["198.18.1.1"]

[[service]]
name = "web4"
vip = "198.18.100.1:80"
backends = ["198.18.1.11:80", "198.18.1.12:80@2", { addr = "198.18.1.13:80", weight = 3 }]

[[service]]
name = "web6"
vip = "[fd00:100::1]:80"
mode = "nat"
backends = ["[fd00:1::11]:80"]
"#;

    fn from_text(text: &str, f: &FlagSettings) -> Result<Config, ConfigError> {
        let file = parse_file(text).map_err(|r| ConfigError::new("--config", "lb.toml", r))?;
        build(f, Some((PathBuf::from("lb.toml"), file)))
    }

    #[test]
    fn config_file_builds_many_services_and_flags_override_globals() {
        let c = from_text(FILE, &FlagSettings::default()).unwrap();
        assert_eq!(c.ifaces, vec!["lb0", "lb1"]);
        assert_eq!(c.xdp_mode, XdpModeChoice::Native);
        assert_eq!(c.max_flows, 1000);
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[0].backends[2].weight, 3);
        assert_eq!(c.services[1].vip, "[fd00:100::1]:80".parse().unwrap());
        let c = from_text(
            FILE,
            &flags(&[("iface", "eth9"), ("xdp-mode", "skb"), ("max-flows", "5")]),
        )
        .unwrap();
        assert_eq!(
            (c.ifaces, c.xdp_mode, c.max_flows),
            (vec!["eth9".to_string()], XdpModeChoice::Skb, 5)
        );
    }

    #[test]
    fn config_file_errors_name_the_file_service_and_field() {
        let bad_backend = FILE.replace("198.18.1.12:80@2", "198.18.1.12:http");
        let e = from_text(&bad_backend, &FlagSettings::default()).unwrap_err();
        assert_eq!(e.location, "lb.toml: service[0] (web4) backend[1]");
        assert_eq!(e.value, "198.18.1.12:http");
        let dup = FILE
            .replace("[fd00:100::1]:80", "198.18.100.1:80")
            .replace("[fd00:1::11]:80", "198.18.1.14:80");
        let e = from_text(&dup, &FlagSettings::default()).unwrap_err();
        assert!(e.reason.contains("same VIP"), "{e}");
        let unknown = FILE.replace("max_flows", "max_flow");
        let e = from_text(&unknown, &FlagSettings::default()).unwrap_err();
        assert!(e.reason.contains("max_flow"), "{e}");
        let e = from_text("iface = 3", &FlagSettings::default()).unwrap_err();
        assert_eq!(e.location, "--config");
        let e = from_text(
            FILE,
            &flags(&[("vip", "198.18.100.9:80"), ("backend", "198.18.1.11:80")]),
        )
        .unwrap_err();
        assert!(e.reason.contains("not both"), "{e}");
        let mode = FILE.replace("mode = \"nat\"", "mode = \"dsr\"");
        let e = from_text(&mode, &FlagSettings::default()).unwrap_err();
        assert_eq!(
            (e.location.as_str(), e.value.as_str()),
            ("lb.toml: service[1] (web6) mode", "dsr")
        );
    }

    #[test]
    fn unreadable_config_file_is_named() {
        let f = FlagSettings {
            config: Some(PathBuf::from("/nonexistent/lb.toml")),
            ..Default::default()
        };
        let e = Config::from_flags(&f).unwrap_err();
        assert_eq!(
            (e.location.as_str(), e.value.as_str()),
            ("--config", "/nonexistent/lb.toml")
        );
    }

    #[test]
    fn durations_and_port_ranges() {
        assert_eq!(parse_duration("350s"), Ok(Duration::from_secs(350)));
        assert_eq!(parse_duration("350"), Ok(Duration::from_secs(350)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("s").is_err() && parse_duration("1y").is_err());
        assert_eq!(parse_port_range("10000-32767"), Ok((10000, 32767)));
        assert!(parse_port_range("2000-1000").is_err());
        assert!(parse_port_range("1000-2000").is_err());
    }

    #[test]
    fn health_defaults_are_tcp_like_an_nlb() {
        let c = with(&[]).unwrap();
        let h = &c.services[0].health;
        assert_eq!(h.check, HealthCheck::Tcp);
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_secs(5), Duration::from_secs(2))
        );
        assert_eq!((h.rise, h.fall), (2, 2));
        assert_eq!(c.admin, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.drain_timeout, Duration::from_secs(300));
    }

    #[test]
    fn http_health_flags_are_parsed() {
        let c = with(&[
            ("health", "http:/health/instance"),
            ("health-status", "200-299"),
            ("health-host", "registry.example"),
            ("health-port", "8080"),
            ("health-interval", "1s"),
            ("health-timeout", "500ms"),
            ("healthy-threshold", "3"),
            ("unhealthy-threshold", "4"),
            ("admin", "off"),
            ("drain-timeout", "0s"),
        ])
        .unwrap();
        let h = &c.services[0].health;
        assert_eq!(
            h.check,
            HealthCheck::Http {
                path: "/health/instance".into(),
                host: Some("registry.example".into()),
                status: (200, 299)
            }
        );
        assert_eq!(h.port, Some(8080));
        assert_eq!((h.rise, h.fall), (3, 4));
        assert_eq!(h.timeout, Duration::from_millis(500));
        assert_eq!(c.admin, None);
        assert_eq!(c.drain_timeout, Duration::ZERO);
    }

    #[test]
    fn bad_health_settings_name_the_flag() {
        for (extra, loc) in [
            (vec![("health", "udp")], "--health"),
            (vec![("health", "http:health")], "--health"),
            (
                vec![("health-interval", "1s"), ("health-timeout", "1s")],
                "--health-timeout",
            ),
            (
                vec![("health", "http:/h"), ("health-status", "700")],
                "--health-status",
            ),
            (vec![("health-status", "200")], "--health-status"),
            (vec![("unhealthy-threshold", "0")], "--unhealthy-threshold"),
            (vec![("admin", "localhost")], "--admin"),
            (vec![("drain-timeout", "soon")], "--drain-timeout"),
        ] {
            let e = err(&extra);
            assert_eq!(e.location, loc, "{extra:?}: {e}");
        }
    }

    #[test]
    fn file_health_table_is_per_service() {
        let text = r#"
iface = ["lb0"]
admin = "127.0.0.1:9200"
drain_timeout = "30s"
[[service]]
name = "registry"
vip = "198.18.100.1:443"
backends = ["198.18.1.11:443"]
[service.health]
check = "http:/health/instance"
port = 8080
interval = "2s"
timeout = "1s"
healthy_threshold = 3
unhealthy_threshold = 5
[[service]]
name = "ws"
vip = "198.18.100.2:80"
backends = ["198.18.1.12:80"]
"#;
        let file = parse_file(text).unwrap();
        let c = build(
            &FlagSettings::default(),
            Some((PathBuf::from("lb.toml"), file)),
        )
        .unwrap();
        assert_eq!(c.admin, Some("127.0.0.1:9200".parse().unwrap()));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        let h = &c.services[0].health;
        assert!(matches!(h.check, HealthCheck::Http { .. }));
        assert_eq!((h.port, h.rise, h.fall), (Some(8080), 3, 5));
        assert_eq!(c.services[1].health, HealthConfig::default());

        let bad = parse_file(&text.replace("unhealthy_threshold = 5", "unhealthy_threshold = 0"))
            .unwrap();
        let e = build(
            &FlagSettings::default(),
            Some((PathBuf::from("lb.toml"), bad)),
        )
        .unwrap_err();
        assert_eq!(
            e.location,
            "lb.toml: service[0] (registry) health.unhealthy_threshold"
        );
        let mut flags = FlagSettings::default();
        flags.health.check = Some("tcp".into());
        let e = build(
            &flags,
            Some((PathBuf::from("lb.toml"), parse_file(text).unwrap())),
        )
        .unwrap_err();
        assert_eq!(e.location, "--health");
    }

    #[test]
    fn proxy_services_take_proxy_settings() {
        let c = with(&[
            ("mode", "proxy-v2"),
            ("proxy-tlv", "unique-id"),
            ("proxy-tlv", "authority"),
            ("accept-proxy", "true"),
            ("connect-timeout", "1s"),
            ("splice", "pipe"),
            ("max-conns", "100"),
        ])
        .unwrap();
        let s = &c.services[0];
        assert_eq!(s.mode, Mode::ProxyV2);
        assert_eq!(s.proxy.version, ProxyVersion::V2);
        assert!(s.proxy.tlvs.unique_id && s.proxy.tlvs.authority && !s.proxy.tlvs.crc32c);
        assert!(s.proxy.accept_proxy);
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.splice, SpliceChoice::Pipe);
        assert_eq!(c.max_conns, 100);
        // A proxy may reach a backend of the other family; NAT may not.
        let mixed = [("vip", "[fd00:100::1]:80")];
        assert!(with(&[mixed[0], ("mode", "proxy-v2")]).is_ok());
        assert_eq!(err(&mixed).location, "--backend[0]");
    }

    #[test]
    fn proxy_settings_are_checked() {
        assert_eq!(
            err(&[("proxy-protocol", "v2")]).location,
            "--proxy-protocol"
        );
        assert_eq!(
            err(&[("mode", "proxy-v2"), ("proxy-protocol", "v3")]).location,
            "--proxy-protocol"
        );
        let e = err(&[
            ("mode", "proxy-v2"),
            ("proxy-protocol", "v1"),
            ("proxy-tlv", "crc32c"),
        ]);
        assert_eq!(e.location, "--proxy-tlv-*");
        assert_eq!(err(&[("splice", "copy")]).location, "--splice");
        assert_eq!(err(&[("max-conns", "0")]).location, "--max-conns");
    }
}
