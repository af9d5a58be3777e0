//! iproute2's `ip`, which lb runs for the few routes and addresses it keeps (proxy VIPs'
//! local routes, announced VIP routes, `lb decap`'s VIPs on `lo`, neighbour lookups):
//! the tool operators read the result with, and the kernel's netlink rules applied
//! exactly as they expect.

use std::process::Command;

/// A failed `ip` command: what it was given and what it said.
#[derive(Debug, thiserror::Error)]
#[error("`ip {args}`: {detail}")]
pub struct IpError {
    args: String,
    detail: String,
}

impl IpError {
    /// Whether `ip` failed because the routing table it was to read does not exist yet
    /// (the kernel creates one with its first route).
    pub fn is_no_table(&self) -> bool {
        self.detail.contains("FIB table does not exist")
    }

    /// Whether `ip` failed because what it was to remove is not there.
    pub fn is_absent(&self) -> bool {
        [
            "No such process",
            "not found",
            "Cannot assign requested address",
        ]
        .iter()
        .any(|m| self.detail.contains(m))
    }
}

/// Runs `ip ARGS` and returns its standard output.
pub fn ip<S: AsRef<str>>(args: &[S]) -> Result<String, IpError> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let failed = |detail: String| IpError {
        args: args.join(" "),
        detail,
    };
    let out = Command::new("ip")
        .args(&args)
        .output()
        .map_err(|e| failed(format!("cannot run ip (iproute2): {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}
