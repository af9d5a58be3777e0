//! The control plane's error, with the HTTP status the admin API answers it with.

use crate::config::ConfigError;
use crate::dataplane::DataplaneError;

/// An error of a control operation.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no service named {0:?}")]
    NoService(String),
    #[error("service {service:?} has no backend {addr}")]
    NoBackend { service: String, addr: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    NeedsRestart(String),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("routing a proxy VIP to this host: {0}")]
    Route(String),
    #[error("keeping the announce table: {0}")]
    Announce(#[from] crate::announce::AnnounceError),
}

impl ControlError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ControlError::NoService(_) | ControlError::NoBackend { .. } => 404,
            ControlError::Invalid(_) | ControlError::Config(_) | ControlError::NeedsRestart(_) => {
                400
            }
            ControlError::Conflict(_) => 409,
            ControlError::Dataplane(_) | ControlError::Route(_) | ControlError::Announce(_) => 500,
        }
    }
}
