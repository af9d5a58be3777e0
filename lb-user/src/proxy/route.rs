//! Local delivery of proxy VIPs. The kernel hands a packet to a socket only when the
//! routing table says its destination is local; a `local` route for the VIP in table
//! `local` (AnyIP) says so without putting the address on an interface, where it would
//! answer ARP and show in `ip addr`. The sk_lookup program then picks the daemon's
//! socket. The daemon adds the routes at start (or when a proxy service appears) and
//! removes them when it stops.

use crate::iproute::{IpError, ip};
use std::net::IpAddr;

pub type RouteError = IpError;

fn route_args(verb: &str, vip: IpAddr) -> Vec<String> {
    let (fam, prefix) = match vip {
        IpAddr::V4(_) => ("-4", 32),
        IpAddr::V6(_) => ("-6", 128),
    };
    [
        fam,
        "route",
        verb,
        "local",
        &format!("{vip}/{prefix}"),
        "dev",
        "lo",
        "table",
        "local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Makes the kernel deliver packets for `vip` locally. Idempotent.
pub fn add_local(vip: IpAddr) -> Result<(), RouteError> {
    ip(&route_args("replace", vip)).map(drop)
}

/// Removes what [`add_local`] added; a route already gone is fine.
pub fn remove_local(vip: IpAddr) -> Result<(), RouteError> {
    match ip(&route_args("del", vip)) {
        Err(e) if e.is_absent() => Ok(()),
        r => r.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_commands_name_the_local_table() {
        assert_eq!(
            route_args("replace", "198.18.100.1".parse().unwrap()).join(" "),
            "-4 route replace local 198.18.100.1/32 dev lo table local"
        );
        assert_eq!(
            route_args("del", "fd00:100::1".parse().unwrap()).join(" "),
            "-6 route del local fd00:100::1/128 dev lo table local"
        );
    }
}
