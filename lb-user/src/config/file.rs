//! The TOML file's shape (syntax and field names only: values stay text until `build`
//! checks them, so the file and the flags share one set of checks and messages).

use super::ConfigError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

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
    pub half_open_timeout: Option<String>,
    #[serde(default)]
    pub snat_ip: Vec<String>,
    pub snat_ports: Option<String>,
    /// `pin_dir` is the name releases before the state directory used.
    #[serde(alias = "pin_dir")]
    pub state_dir: Option<PathBuf>,
    pub admin: Option<String>,
    pub admin_socket: Option<String>,
    pub admin_group: Option<String>,
    pub admin_token_file: Option<String>,
    pub drain_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub splice: Option<String>,
    pub max_conns: Option<u32>,
    pub source_rate: Option<u32>,
    pub source_burst: Option<u32>,
    pub syn_cookies: Option<String>,
    pub syn_cookie_rate: Option<u32>,
    pub announce_table: Option<u32>,
    #[serde(default)]
    pub service: Vec<FileService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileService {
    pub name: String,
    pub vip: String,
    pub mode: Option<String>,
    pub encap: Option<String>,
    pub gue_port: Option<u16>,
    pub slow_start: Option<String>,
    #[serde(default)]
    pub backends: Vec<FileBackend>,
    pub backends_dns: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    pub deny: Option<String>,
    #[serde(default)]
    pub deny_established: bool,
    pub dns_interval: Option<String>,
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
    pub tls_verify: Option<bool>,
    pub tls_ca: Option<String>,
}

/// A backend as `"IP:PORT[@WEIGHT]"` or `{ addr = "IP:PORT", weight = N }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileBackend {
    Short(String),
    Long { addr: String, weight: Option<u32> },
}

pub(super) fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
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
