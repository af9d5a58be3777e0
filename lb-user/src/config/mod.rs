//! The validated configuration the daemon runs from, built from flags, a TOML file, or
//! both (flags override the file's global settings). Every error names where the bad
//! value came from (`--backend[2]`, `lb.toml: service[0] (web) backend[2]`) and the value.
//!
//! - `file`: the TOML file's shape; `flags`: the command line's settings and how they
//!   layer over the file; `values`: parsers of single values.
//! - `build` (the global settings, then each service in `service` with its health check
//!   in `health`) turns them into the types below.

mod admin;
mod build;
mod file;
mod flags;
mod health;
mod service;
#[cfg(test)]
mod tests;
mod values;

pub use admin::{AdminSocket, AdminToken};
pub use file::{FileBackend, FileConfig, FileHealth, FileService, parse_file};
pub use flags::{FlagSettings, HealthFlags};
pub use values::{
    Cidr, check_backend, parse_backend, parse_dns_query, parse_duration, parse_port_range,
    parse_socket_addr, parse_status_range,
};

use crate::health::HealthConfig;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
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

impl XdpModeChoice {
    /// Whether an attachment in `mode` ("native" or "skb") satisfies this choice.
    pub fn accepts(self, mode: &str) -> bool {
        match self {
            XdpModeChoice::Auto => true,
            XdpModeChoice::Native => mode == "native",
            XdpModeChoice::Skb => mode == "skb",
        }
    }
}

/// When `nat` services' new flows are opened by SYN cookie (the XDP SYN proxy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SynCookies {
    /// When a VIP's SYNs go unanswered (no completed handshake) faster than
    /// `syn_cookie_rate` a second.
    Auto,
    /// For every new flow.
    Always,
    /// Never: every SYN makes a half-open flow.
    Off,
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
    /// Direct server return: the client's packet, encapsulated ([`Encap`]), to a
    /// backend that decapsulates it (`lb decap`) and answers the client directly.
    Dsr,
    /// Destination NAT: the client's address reaches the backend, whose replies are
    /// routed back through the LB.
    Dnat,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::ProxyV2 => "proxy-v2",
            Mode::Dsr => "dsr",
            Mode::Dnat => "dnat",
        }
    }

    /// Whether the backend sees the VIP's port (nothing rewrites it on the way).
    pub fn keeps_port(self) -> bool {
        self == Mode::Dsr
    }

    /// Whether the backend's replies cross the LB (and so its out-direction counters move).
    pub fn replies_through_lb(self) -> bool {
        self != Mode::Dsr
    }
}

/// How a dsr service's packets reach the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EncapKind {
    Ipip,
    Gue,
    L2,
}

impl EncapKind {
    /// The data path's `lb_common::encap::ENCAP_*` value.
    pub fn wire(self) -> u8 {
        use lb_common::encap as e;
        match self {
            EncapKind::Ipip => e::ENCAP_IPIP,
            EncapKind::Gue => e::ENCAP_GUE,
            EncapKind::L2 => e::ENCAP_L2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EncapKind::Ipip => "ipip",
            EncapKind::Gue => "gue",
            EncapKind::L2 => "l2",
        }
    }
}

/// A dsr service's encapsulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Encap {
    pub kind: EncapKind,
    /// The backends' GUE port (`gue` only; 0 otherwise).
    pub gue_port: u16,
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
    /// `dsr` services only.
    pub encap: Option<Encap>,
    pub backends: Vec<BackendConfig>,
    pub health: HealthConfig,
    /// Used by `proxy-v2` services only.
    pub proxy: ProxyConfig,
    /// A backend that comes (back) into the table takes a share growing from nothing to
    /// its weight over this time (HAProxy's `slowstart`); zero: its full share at once.
    pub slow_start: Duration,
    /// Backends found in DNS, beside `backends`.
    pub dns: Option<DnsBackends>,
    /// Who may open flows to it.
    pub access: AccessConfig,
}

/// A service's source allowlist (`--allow`, `allow = [...]`), enforced in XDP before any
/// state is created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessConfig {
    /// The ranges whose sources may open flows; empty: everyone may. Of the VIP's
    /// family, sorted, none twice.
    pub allow: Vec<Cidr>,
    /// Refused segments are answered with a TCP RST (`deny = "reset"`), not dropped.
    pub reset: bool,
    /// A source outside the list loses its flows too (`deny_established`), not only
    /// the chance to open new ones.
    pub cut_established: bool,
}

/// The most ranges one service's allowlist holds.
pub const MAX_ALLOW_PER_SERVICE: usize = 1024;

/// A service's backends found in DNS (`--backend-dns`, `backends_dns`): looked up again
/// and again; addresses that appear join as added backends, ones that vanish drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsBackends {
    pub query: DnsQuery,
    /// How often to look again; `None`: when the answer's TTL runs out, bounded to
    /// [`DNS_INTERVAL_BOUNDS`].
    pub interval: Option<Duration>,
}

/// The shortest and longest time between two lookups when the TTL sets it.
pub const DNS_INTERVAL_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(60));

/// The longest `dns_interval`.
pub const MAX_DNS_INTERVAL: Duration = Duration::from_secs(3600);

/// What to look up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsQuery {
    /// `NAME:PORT`: every A and AAAA record of `name` is a backend on `port`, weight 1.
    Host { name: String, port: u16 },
    /// `srv:NAME`: the SRV records of `name` of the lowest priority; each target's
    /// addresses are backends on the record's port with the record's weight.
    Srv { name: String },
}

impl std::fmt::Display for DnsQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsQuery::Host { name, port } => write!(f, "{name}:{port}"),
            DnsQuery::Srv { name } => write!(f, "srv:{name}"),
        }
    }
}

/// The longest `slow_start`.
pub const MAX_SLOW_START: Duration = Duration::from_secs(3600);

/// Like NLB's deregistration delay.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9100";

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
    /// How long a flow whose handshake is not complete may stay idle (and hold its
    /// SNAT port).
    pub half_open_timeout: Duration,
    /// Up to `MAX_SNAT_ADDRS` per family, each backend's own first; an unset family uses
    /// the egress interface's address.
    pub snat_ips: Vec<IpAddr>,
    pub snat_ports: (u16, u16),
    /// The bpffs directory of the data path's state (`None`: the default for this network
    /// namespace, see `dataplane::state`).
    pub state_dir: Option<PathBuf>,
    /// Where the admin API listens; `None` when disabled (`--admin off`).
    pub admin: Option<SocketAddr>,
    /// Where the admin socket is (the whole API, to root and `admin_group`).
    pub admin_socket: AdminSocket,
    /// The group (name, id) the admin socket is also open to (mode 0660).
    pub admin_group: Option<(String, u32)>,
    /// The bearer token that changes over the TCP listener need; `None`: no changes
    /// over TCP.
    pub admin_token: Option<AdminToken>,
    /// How long a draining backend's flows may continue before they are cut.
    pub drain_timeout: Duration,
    /// On SIGINT/SIGTERM, how long proxied connections may go on before the daemon exits.
    pub shutdown_timeout: Duration,
    /// Proxy services: how long a backend connect may take before the next is tried.
    pub connect_timeout: Duration,
    pub splice: SpliceChoice,
    /// Proxy services: connections proxied at once, at most.
    pub max_conns: u32,
    /// New flows a second one source (IPv4 address, IPv6 /64) may open; 0 = no limit.
    pub source_rate: u32,
    /// How many new flows a source may open at once before `source_rate` applies.
    pub source_burst: u32,
    pub syn_cookies: SynCookies,
    /// With `SynCookies::Auto`: SYNs a second one VIP may get before its new flows are
    /// opened by cookie.
    pub syn_cookie_rate: u32,
    /// The kernel routing table that holds a route for each VIP lb can serve, for a
    /// routing daemon to announce; `None`: no announcing.
    pub announce_table: Option<u32>,
    pub services: Vec<ServiceConfig>,
}

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_MAX_CONNS: u32 = 65_536;
/// pipe: faster here than sockmap (README), and bounded under a slow receiver, where
/// sockmap queues without limit in the kernel.
pub const DEFAULT_SPLICE: SpliceChoice = SpliceChoice::Pipe;

pub const DEFAULT_MAX_FLOWS: u32 = 262_144;
/// Unanswered SYNs a second: real clients answer theirs whatever their rate, so this
/// is far above what they leave (a lost SYN-ACK, a client gone mid-handshake) and far
/// below a flood, of which a loaded LB may take in only a few tens of thousands a
/// second (`lb_common::syn_proxy::SynRate`).
pub const DEFAULT_SYN_COOKIE_RATE: u32 = 5_000;
pub const DEFAULT_MAX_SERVICES: u32 = 16;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(350);
pub const DEFAULT_CLOSED_TIMEOUT: Duration = Duration::from_secs(10);
/// Long enough for a client's SYN retransmissions at 1 and 3 s to find their flow, short
/// enough that SYNs nobody completes (a flood, a vanished client) give their SNAT ports
/// back within seconds; conntrack's SYN states wait 60-120 s.
pub const DEFAULT_HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(5);
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

impl Config {
    /// Whether a service forwards in DNAT mode (its replies come back to any port).
    pub fn has_dnat(&self) -> bool {
        self.services.iter().any(|s| s.mode == Mode::Dnat)
    }

    /// Builds the configuration from flags, reading `--config` if given.
    /// The configuration of file `text` (named `name` in errors) under `flags`, as
    /// [`Config::from_flags`] builds it from a file it reads.
    pub fn from_text(
        text: &str,
        name: &std::path::Path,
        flags: &FlagSettings,
    ) -> Result<Config, ConfigError> {
        let file = file::parse_file(text)
            .map_err(|r| ConfigError::new("--config", name.display().to_string(), r))?;
        build::build(flags, Some((name.to_path_buf(), file)))
    }

    pub fn from_flags(flags: &FlagSettings) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => Some((path.clone(), file::read_file(path)?)),
            None => None,
        };
        build::build(flags, file)
    }
}
