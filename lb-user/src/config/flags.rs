//! Settings as given on the command line, and how they layer over the file: a flag wins
//! over the file's value, which wins over the default, and an error names whichever the
//! user wrote (`--max-flows` or `lb.toml: max_flows`).

use super::file::{FileConfig, FileHealth};
use std::path::PathBuf;

/// Settings as given on the command line; `None`/empty means "not given".
#[derive(Clone, Debug, Default)]
pub struct FlagSettings {
    pub config: Option<PathBuf>,
    pub ifaces: Vec<String>,
    pub xdp_mode: Option<String>,
    pub name: Option<String>,
    pub vip: Option<String>,
    pub mode: Option<String>,
    pub encap: Option<String>,
    pub gue_port: Option<u16>,
    pub slow_start: Option<String>,
    pub backends: Vec<String>,
    pub backend_dns: Option<String>,
    pub allow: Vec<String>,
    pub deny: Option<String>,
    pub deny_established: bool,
    pub dns_interval: Option<String>,
    pub snat_ips: Vec<String>,
    pub snat_ports: Option<String>,
    pub max_flows: Option<u32>,
    pub ring_size: Option<u32>,
    pub max_services: Option<u32>,
    pub idle_timeout: Option<String>,
    pub closed_timeout: Option<String>,
    pub half_open_timeout: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub admin: Option<String>,
    pub admin_socket: Option<String>,
    pub admin_group: Option<String>,
    pub admin_token_file: Option<String>,
    pub drain_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub health: HealthFlags,
    pub connect_timeout: Option<String>,
    pub splice: Option<String>,
    pub max_conns: Option<u32>,
    pub source_rate: Option<u32>,
    pub source_burst: Option<u32>,
    pub syn_cookies: Option<String>,
    pub syn_cookie_rate: Option<u32>,
    pub announce_table: Option<u32>,
    pub proxy_protocol: Option<String>,
    pub proxy_tlvs: Vec<String>,
    pub accept_proxy: bool,
}

/// Health check settings as written: the flags of the service given with `--vip`, or a
/// service's `[service.health]` table.
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
    pub tls_verify: Option<bool>,
    pub tls_ca: Option<String>,
}

impl HealthFlags {
    /// Whether any health flag was given.
    pub fn any(&self) -> bool {
        self.check.is_some()
            || self.port.is_some()
            || self.interval.is_some()
            || self.timeout.is_some()
            || self.rise.is_some()
            || self.fall.is_some()
            || self.status.is_some()
            || self.host.is_some()
            || self.tls_verify.is_some()
            || self.tls_ca.is_some()
    }
}

/// The global settings' sources, in the order they win.
pub(super) struct Layered<'a> {
    pub flags: &'a FlagSettings,
    pub file: &'a FileConfig,
    /// The file's path as shown in errors; `None` without a file.
    file_name: Option<String>,
}

impl<'a> Layered<'a> {
    pub fn new(flags: &'a FlagSettings, file: &'a FileConfig, file_name: Option<String>) -> Self {
        Layered {
            flags,
            file,
            file_name,
        }
    }

    /// Where the file's `field` is: `lb.toml: field`.
    pub fn at(&self, field: &str) -> String {
        match &self.file_name {
            Some(n) => format!("{n}: {field}"),
            None => field.to_string(),
        }
    }

    /// Where the global setting `field` was given: its flag (`--max-flows` for
    /// `max_flows`) or the file's field.
    pub fn loc(&self, from_flag: bool, field: &str) -> String {
        if from_flag {
            format!("--{}", field.replace('_', "-"))
        } else {
            self.at(field)
        }
    }

    /// The text given for the global setting `field` with the flag, else in the file,
    /// with where it came from.
    pub fn text<'v>(
        &self,
        field: &str,
        flag: Option<&'v str>,
        file: Option<&'v str>,
    ) -> Option<(String, &'v str)> {
        match (flag, file) {
            (Some(v), _) => Some((self.loc(true, field), v)),
            (None, Some(v)) => Some((self.at(field), v)),
            (None, None) => None,
        }
    }
}

/// [`Layered::text`] of a global setting that flags and file both name `$field`.
macro_rules! setting {
    ($src:expr, $field:ident) => {
        $src.text(
            stringify!($field),
            $src.flags.$field.as_deref(),
            $src.file.$field.as_deref(),
        )
    };
}
pub(super) use setting;

/// The flag that sets a field of the `--vip` service.
pub(super) fn service_flag(field: &str) -> String {
    match field {
        "proxy_protocol" => "--proxy-protocol".to_string(),
        "proxy_tlvs" => "--proxy-tlv-*".to_string(),
        "accept_proxy" => "--accept-proxy".to_string(),
        "backends_dns" => "--backend-dns".to_string(),
        "allow" => "--allow".to_string(),
        other => format!("--{}", other.replace('_', "-")),
    }
}

/// The flag that sets a health setting of the `--vip` service.
pub(super) fn health_flag(field: &str) -> String {
    match field {
        "check" => "--health".to_string(),
        "rise" => "--healthy-threshold".to_string(),
        "fall" => "--unhealthy-threshold".to_string(),
        other => format!("--health-{}", other.replace('_', "-")),
    }
}

impl From<&FileHealth> for HealthFlags {
    /// The table's settings under the names the flags use.
    fn from(h: &FileHealth) -> Self {
        HealthFlags {
            check: h.check.clone(),
            port: h.port,
            interval: h.interval.clone(),
            timeout: h.timeout.clone(),
            rise: h.healthy_threshold,
            fall: h.unhealthy_threshold,
            status: h.status.clone(),
            host: h.host.clone(),
            tls_verify: h.tls_verify,
            tls_ca: h.tls_ca.clone(),
        }
    }
}
