//! The admin API's change requests, defined once for the server and `lb ctl`: each
//! operation is a typed [`Command`] with one wire form (method, path, JSON body).
//! Backend addresses are parsed here, with the config file's parsers, and nowhere else.

use crate::config::{BackendConfig, parse_backend, parse_socket_addr};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Where the backend operations live: `POST {BACKENDS}{add,remove,weight,drain,enable}`.
pub const BACKENDS: &str = "/api/v1/backends/";
/// `POST`: re-read the config file.
pub const RELOAD: &str = "/api/v1/reload";
/// `POST`: report a connection's packets (`lb explain --watch`) for a while; again to
/// go on.
pub const WATCH: &str = "/api/v1/watch";
/// `POST`: stop reporting them.
pub const UNWATCH: &str = "/api/v1/watch/stop";
/// The most `every` a watch takes (one packet in a million).
pub const MAX_WATCH_EVERY: u32 = 1_000_000;

/// A change an operator asks of the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Add a backend; with a health check it gets new flows once it passes.
    Add {
        service: String,
        backend: BackendConfig,
    },
    /// Remove a backend: drain it first unless `now`.
    Remove {
        service: String,
        addr: SocketAddr,
        now: bool,
    },
    Weight {
        service: String,
        addr: SocketAddr,
        weight: u32,
    },
    Drain {
        service: String,
        addr: SocketAddr,
    },
    Enable {
        service: String,
        addr: SocketAddr,
    },
    Reload,
    /// Report the packets of `client` → `vip` (one in `every`).
    Watch {
        vip: SocketAddr,
        client: SocketAddr,
        every: u32,
    },
    Unwatch,
}

/// A watch's JSON body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchOp {
    /// `IP:PORT`.
    pub vip: String,
    /// `IP:PORT`.
    pub client: String,
    #[serde(default = "every_packet")]
    pub every: u32,
}

fn every_packet() -> u32 {
    1
}

/// A backend operation's JSON body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendOp {
    pub service: String,
    /// `IP:PORT`.
    pub addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub now: bool,
}

/// A request the server refuses before it reaches the control plane.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct BadRequest {
    pub status: u16,
    pub message: String,
}

fn bad(message: String) -> BadRequest {
    BadRequest {
        status: 400,
        message,
    }
}

/// A backend `IP:PORT` as an operator wrote it.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    parse_socket_addr(s).map_err(|r| format!("backend {s:?}: {r}"))
}

/// A backend `IP:PORT[@WEIGHT]` as an operator wrote it.
pub fn parse_spec(s: &str) -> Result<BackendConfig, String> {
    parse_backend(s).map_err(|r| format!("backend {s:?}: {r}"))
}

impl Command {
    /// The request's path and JSON body (always `POST`).
    pub fn to_wire(&self) -> (String, Option<serde_json::Value>) {
        let op = |name: &str, service: &str, addr: SocketAddr, weight, now| {
            let body = BackendOp {
                service: service.to_string(),
                addr: addr.to_string(),
                weight,
                now,
            };
            (
                format!("{BACKENDS}{name}"),
                Some(serde_json::to_value(body).expect("a request body serialises")),
            )
        };
        match self {
            Command::Add { service, backend } => {
                op("add", service, backend.addr, Some(backend.weight), false)
            }
            Command::Remove { service, addr, now } => op("remove", service, *addr, None, *now),
            Command::Weight {
                service,
                addr,
                weight,
            } => op("weight", service, *addr, Some(*weight), false),
            Command::Drain { service, addr } => op("drain", service, *addr, None, false),
            Command::Enable { service, addr } => op("enable", service, *addr, None, false),
            Command::Reload => (RELOAD.to_string(), None),
            Command::Watch { vip, client, every } => {
                let body = WatchOp {
                    vip: vip.to_string(),
                    client: client.to_string(),
                    every: *every,
                };
                let body = serde_json::to_value(body).expect("a request body serialises");
                (WATCH.to_string(), Some(body))
            }
            Command::Unwatch => (UNWATCH.to_string(), None),
        }
    }

    /// The command of a `POST` to `path` with `body`; `None` if `path` is no command.
    pub fn from_wire(path: &str, body: &[u8]) -> Option<Result<Command, BadRequest>> {
        match path {
            RELOAD => return Some(Ok(Command::Reload)),
            UNWATCH => return Some(Ok(Command::Unwatch)),
            WATCH => return Some(Self::watch(body)),
            _ => {}
        }
        let name = path.strip_prefix(BACKENDS)?;
        Some(Self::backend_op(name, body))
    }

    fn watch(body: &[u8]) -> Result<Command, BadRequest> {
        let op: WatchOp = serde_json::from_slice(body).map_err(|e| {
            bad(format!(
                "body must be JSON like {{\"vip\":\"198.18.100.1:80\",\"client\":\"198.18.0.2:41000\"}}: {e}"
            ))
        })?;
        let vip = parse_socket_addr(&op.vip).map_err(|r| bad(format!("vip {:?}: {r}", op.vip)))?;
        let client = parse_socket_addr(&op.client)
            .map_err(|r| bad(format!("client {:?}: {r}", op.client)))?;
        if vip.is_ipv4() != client.is_ipv4() {
            return Err(bad(
                "vip and client are of different address families".into()
            ));
        }
        if !(1..=MAX_WATCH_EVERY).contains(&op.every) {
            return Err(bad(format!("every: 1 to {MAX_WATCH_EVERY}")));
        }
        Ok(Command::Watch {
            vip,
            client,
            every: op.every,
        })
    }

    fn backend_op(name: &str, body: &[u8]) -> Result<Command, BadRequest> {
        let op: BackendOp = serde_json::from_slice(body).map_err(|e| {
            bad(format!(
                "body must be JSON like {{\"service\":\"web\",\"addr\":\"198.18.1.11:80\"}}: {e}"
            ))
        })?;
        let service = op.service;
        let addr = || parse_addr(&op.addr).map_err(bad);
        Ok(match name {
            "add" => {
                let spec = match op.weight {
                    Some(w) => format!("{}@{w}", op.addr),
                    None => op.addr.clone(),
                };
                let backend = parse_spec(&spec).map_err(bad)?;
                Command::Add { service, backend }
            }
            "remove" => Command::Remove {
                service,
                addr: addr()?,
                now: op.now,
            },
            "weight" => {
                let weight = op.weight.ok_or_else(|| bad("weight: missing".into()))?;
                Command::Weight {
                    service,
                    addr: addr()?,
                    weight,
                }
            }
            "drain" => Command::Drain {
                service,
                addr: addr()?,
            },
            "enable" => Command::Enable {
                service,
                addr: addr()?,
            },
            other => {
                return Err(BadRequest {
                    status: 404,
                    message: format!("no backend operation {other:?}"),
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(c: Command) {
        let (path, body) = c.to_wire();
        let body = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        assert_eq!(Command::from_wire(&path, &body), Some(Ok(c)), "{path}");
    }

    #[test]
    fn every_command_survives_the_wire() {
        let addr: SocketAddr = "[fd00::10]:80".parse().unwrap();
        let service = "web".to_string();
        roundtrip(Command::Add {
            service: service.clone(),
            backend: BackendConfig { addr, weight: 3 },
        });
        roundtrip(Command::Remove {
            service: service.clone(),
            addr,
            now: true,
        });
        roundtrip(Command::Weight {
            service: service.clone(),
            addr,
            weight: 0,
        });
        roundtrip(Command::Drain {
            service: service.clone(),
            addr,
        });
        roundtrip(Command::Enable { service, addr });
        roundtrip(Command::Reload);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let refused = |path: &str, body: &str| {
            Command::from_wire(path, body.as_bytes())
                .expect("a command path")
                .expect_err(body)
        };
        let e = refused(
            "/api/v1/backends/add",
            r#"{"service":"web","addr":"198.18.1.14:http"}"#,
        );
        assert_eq!(e.status, 400);
        assert!(
            e.message.starts_with("backend \"198.18.1.14:http\": "),
            "{e}"
        );
        let e = refused(
            "/api/v1/backends/add",
            r#"{"service":"web","addr":"198.18.1.14:80","weight":70000}"#,
        );
        assert_eq!(
            e.message,
            "backend \"198.18.1.14:80@70000\": weight 70000 is above 65535"
        );
        let e = refused(
            "/api/v1/backends/weight",
            r#"{"service":"web","addr":"198.18.1.14:80"}"#,
        );
        assert_eq!((e.status, e.message.as_str()), (400, "weight: missing"));
        let e = refused(
            "/api/v1/backends/stop",
            r#"{"service":"web","addr":"198.18.1.14:80"}"#,
        );
        assert_eq!(
            (e.status, e.message.as_str()),
            (404, "no backend operation \"stop\"")
        );
        let e = refused("/api/v1/backends/drain", r#"{"service":"web"}"#);
        assert_eq!(e.status, 400);
        assert!(e.message.starts_with("body must be JSON like"), "{e}");
        assert_eq!(Command::from_wire("/api/v1/other", b""), None);
    }
}
