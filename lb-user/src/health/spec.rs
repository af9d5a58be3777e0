//! How a service's backends are checked: the one model of a health check, built by
//! `config` from flags or the file and run by the checker tasks, with its defaults.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Time between the starts of two checks of one backend.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Bound on one check; at most half the interval when the interval is set shorter.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Consecutive passed checks that bring a backend up.
pub const DEFAULT_RISE: u32 = 2;
/// Consecutive failed checks that take a backend down.
pub const DEFAULT_FALL: u32 = 2;
/// HTTP status codes that pass an http check (as ELB's "200-399").
pub const DEFAULT_HTTP_STATUS: (u16, u16) = (200, 399);

/// What a check asks of a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheck {
    /// No check: backends are always up.
    None,
    /// A TCP connect succeeds (then the connection is closed).
    Tcp,
    /// `GET path` answers with a status code in `status`.
    Http {
        /// Request path, starting with `/`.
        path: String,
        /// `Host` header; `None` sends the checked address (`ip:port`, IPv6 in brackets).
        host: Option<String>,
        /// Passing status codes, low and high inclusive.
        status: (u16, u16),
        /// `https:` checks: the request goes over TLS.
        tls: Option<TlsCheck>,
    },
}

/// The TLS of an `https:` check. As an NLB target group's, the backend's certificate
/// is not verified unless asked (backends often have self-signed or internal ones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsCheck {
    /// Verify the certificate chain and name (the name is the `Host` header's host, else
    /// the backend's address).
    pub verify: bool,
    /// The CA certificates (PEM) to verify against; `None`: the system's
    /// (`/etc/ssl/certs/ca-certificates.crt`).
    pub ca: Option<std::path::PathBuf>,
}

impl fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthCheck::None => f.write_str("none"),
            HealthCheck::Tcp => f.write_str("tcp"),
            HealthCheck::Http {
                path, tls: None, ..
            } => write!(f, "http:{path}"),
            HealthCheck::Http {
                path, tls: Some(_), ..
            } => write!(f, "https:{path}"),
        }
    }
}

/// A service's health check (ELB/HAProxy semantics: `fall` consecutive failures take a
/// backend out, `rise` consecutive successes bring it back).
#[derive(Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub check: HealthCheck,
    /// Port checked instead of the backend's own.
    pub port: Option<u16>,
    /// Time between the starts of two checks of one backend.
    pub interval: Duration,
    /// Bound on a whole check (connect, preamble, HTTP exchange).
    pub timeout: Duration,
    /// Consecutive successes that bring a backend up.
    pub rise: u32,
    /// Consecutive failures that take a backend down.
    pub fall: u32,
    /// Bytes written right after connect, before the HTTP request (or alone for a TCP
    /// check): the PROXY header a proxy service's backends expect. Not a setting: the
    /// control plane fills it in from the service's PROXY protocol version.
    pub preamble: Option<Vec<u8>>,
    /// A DSR service's path to its backends: each check first proves it (a SYN through
    /// the encapsulation to VIP:port, see `path`). Not a setting either.
    pub path: Option<super::path::DsrPath>,
}

impl Default for HealthConfig {
    /// TCP on the backend's own port with the default timing, like an NLB.
    fn default() -> Self {
        HealthConfig {
            check: HealthCheck::Tcp,
            port: None,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            preamble: None,
            path: None,
        }
    }
}

impl fmt::Debug for HealthConfig {
    /// The settings; the preamble only when set, so `lb --check` shows what the user
    /// configured (the preamble is never configured).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HealthConfig");
        d.field("check", &self.check)
            .field("port", &self.port)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("rise", &self.rise)
            .field("fall", &self.fall);
        if let Some(p) = &self.preamble {
            d.field("preamble", p);
        }
        if let Some(p) = &self.path {
            d.field("path", p);
        }
        d.finish()
    }
}

impl HealthConfig {
    /// The address a check of `backend` connects to (`port` applied).
    pub fn target(&self, backend: SocketAddr) -> SocketAddr {
        SocketAddr::new(backend.ip(), self.port.unwrap_or(backend.port()))
    }

    /// Whether backends are checked at all.
    pub fn is_checked(&self) -> bool {
        self.check != HealthCheck::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_print_as_written_in_the_config() {
        assert_eq!(HealthCheck::None.to_string(), "none");
        assert_eq!(HealthCheck::Tcp.to_string(), "tcp");
        let http = HealthCheck::Http {
            path: "/health".into(),
            host: None,
            status: DEFAULT_HTTP_STATUS,
            tls: None,
        };
        assert_eq!(http.to_string(), "http:/health");
    }

    #[test]
    fn target_applies_the_health_port() {
        let backend: SocketAddr = "198.18.1.11:80".parse().unwrap();
        let mut s = HealthConfig::default();
        assert_eq!(s.target(backend), backend);
        s.port = Some(8080);
        assert_eq!(s.target(backend), "198.18.1.11:8080".parse().unwrap());
    }
}
