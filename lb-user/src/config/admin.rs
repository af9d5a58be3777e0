//! Who may use the admin API, and where: the Unix socket (the whole API, to root and
//! `--admin-group`), the TCP listener (reads to anyone who reaches it; changes only with
//! the bearer token of `--admin-token-file`).

use super::ConfigError;
use super::flags::{Layered, setting};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

/// Where the admin socket is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminSocket {
    /// `/run/lb/netns-<inode>-admin.sock`, one per network namespace, where `lb ctl` looks.
    Default,
    At(PathBuf),
    Off,
}

/// The shortest token accepted: a guessable one would open every change.
const MIN_TOKEN: usize = 16;

/// The bearer token changes over TCP need. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Whether `given` is the token, in time that does not depend on where they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(given).into()
    }
}

/// `admin_socket`, `admin_group` (its name and id) and the token from
/// `admin_token_file`.
pub(super) type AdminAccess = (AdminSocket, Option<(String, u32)>, Option<AdminToken>);

pub(super) fn admin_access(src: &Layered<'_>) -> Result<AdminAccess, ConfigError> {
    let socket = match setting!(src, admin_socket) {
        None => AdminSocket::Default,
        Some((_, "off")) => AdminSocket::Off,
        Some((loc, p)) if !Path::new(p).is_absolute() => {
            return Err(ConfigError::new(
                loc,
                p,
                "must be an absolute path (e.g. /run/lb/admin.sock), or off",
            ));
        }
        Some((_, p)) => AdminSocket::At(PathBuf::from(p)),
    };
    let group = match setting!(src, admin_group) {
        None => None,
        Some((loc, g)) => {
            let gid = crate::sys::group_id(g)
                .map_err(|e| ConfigError::new(&loc, g, format!("looking the group up: {e}")))?
                .ok_or_else(|| ConfigError::new(&loc, g, "no such group"))?;
            Some((g.to_string(), gid))
        }
    };
    if group.is_some() && socket == AdminSocket::Off {
        return Err(ConfigError::new(
            src.loc(src.flags.admin_group.is_some(), "admin_group"),
            group.as_ref().map(|g| g.0.clone()).unwrap_or_default(),
            "the admin socket is off: there is nothing for the group to use",
        ));
    }
    let token = match setting!(src, admin_token_file) {
        None => None,
        Some((loc, file)) => {
            Some(read_token(Path::new(file)).map_err(|r| ConfigError::new(loc, file, r))?)
        }
    };
    Ok((socket, group, token))
}

/// The token in `file` (surrounding whitespace trimmed), which only its owner and group
/// may read.
fn read_token(file: &Path) -> Result<AdminToken, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read it: {e}"))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(format!(
            "anyone on the host can read it (mode {:o}): chmod o-r it (e.g. 0600, owned by root)",
            meta.permissions().mode() & 0o777
        ));
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read it: {e}"))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the token must be at least {MIN_TOKEN} printable characters without spaces, e.g. from `head -c 32 /dev/urandom | base64`"
        ));
    }
    Ok(AdminToken(token.to_string()))
}
