//! Announcing VIPs: a route for each VIP lb can serve, kept in a kernel routing table
//! of the operator's choice (`--announce-table`), which the operator's routing daemon
//! (BIRD, FRR) learns and announces over BGP. Routers then spread flows over every LB
//! host that announces the VIP (ECMP), and stop sending to a host that withdrew it.
//!
//! The routes are `VIP dev lo proto 76`: the protocol number marks them as lb's, so a
//! successor daemon finds the ones it inherits and `lb down` removes exactly those.
//! No rule points at the table, so the host's own forwarding never uses them.

use std::collections::BTreeSet;
use std::net::IpAddr;

use tracing::{info, warn};

use crate::iproute::{IpError, ip};

/// A route of the announce table that could not be read, added or removed.
pub type AnnounceError = IpError;

/// The route protocol number of lb's routes (iproute2's `proto`; 76 is "L", unused by
/// the routing daemons iproute2 knows).
pub const RTPROT_LB: u8 = 76;

/// Keeps the announce table's routes equal to the VIPs lb can serve.
pub struct Announcer {
    table: u32,
    /// What the table holds, as far as this daemon knows.
    announced: BTreeSet<IpAddr>,
    /// Routes an earlier daemon left: they stay announced until the health checks say
    /// their service cannot be served (a restart must not withdraw a VIP for the time
    /// its first checks take).
    inherited: BTreeSet<IpAddr>,
}

impl Announcer {
    /// Takes over table `table`, with the routes of lb already in it.
    pub fn start(table: u32) -> Result<Announcer, IpError> {
        let present = routes(Some(table))?;
        if !present.is_empty() {
            info!(table, vips = ?present, "announce table: keeping the VIP routes an earlier lb left");
        }
        Ok(Announcer {
            table,
            announced: present.clone(),
            inherited: present,
        })
    }

    pub fn table(&self) -> u32 {
        self.table
    }

    /// The VIPs whose route is in the table.
    pub fn announced(&self) -> &BTreeSet<IpAddr> {
        &self.announced
    }

    /// Whether `vip`'s route was left by an earlier daemon and not yet decided on.
    pub fn inherited(&self, vip: IpAddr) -> bool {
        self.inherited.contains(&vip)
    }

    /// Adds the routes of `wanted` that are missing and removes the others. A VIP once
    /// decided on (wanted or not) is no longer inherited. Failures are logged and tried
    /// again at the next call; the first is returned.
    pub fn sync(&mut self, wanted: &BTreeSet<IpAddr>) -> Result<(), IpError> {
        self.inherited.retain(|v| wanted.contains(v));
        let mut first = None;
        for vip in wanted.difference(&self.announced.clone()) {
            match ip(&route_args("replace", *vip, self.table)) {
                Ok(_) => {
                    info!(%vip, table = self.table, "VIP announced: a backend is up");
                    self.announced.insert(*vip);
                }
                Err(e) => {
                    warn!(%vip, cause = %e, "announcing the VIP");
                    first.get_or_insert(e);
                }
            }
        }
        for vip in self.announced.clone().difference(wanted) {
            match remove(*vip, self.table) {
                Ok(()) => {
                    info!(%vip, table = self.table, "VIP withdrawn: no backend is up");
                    self.announced.remove(vip);
                }
                Err(e) => {
                    warn!(%vip, cause = %e, "withdrawing the VIP");
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Reads the table again, so a route someone removed is put back at the next
    /// [`Announcer::sync`] (and one someone added is removed).
    pub fn refresh(&mut self) -> Result<(), IpError> {
        self.announced = routes(Some(self.table))?;
        Ok(())
    }
}

fn route_args(verb: &str, vip: IpAddr, table: u32) -> Vec<String> {
    let (fam, prefix) = match vip {
        IpAddr::V4(_) => ("-4", 32),
        IpAddr::V6(_) => ("-6", 128),
    };
    [
        fam.to_string(),
        "route".into(),
        verb.into(),
        format!("{vip}/{prefix}"),
        "dev".into(),
        "lo".into(),
        "table".into(),
        table.to_string(),
        "proto".into(),
        RTPROT_LB.to_string(),
    ]
    .into()
}

fn remove(vip: IpAddr, table: u32) -> Result<(), IpError> {
    match ip(&route_args("del", vip, table)) {
        Err(e) if e.is_absent() => Ok(()),
        r => r.map(drop),
    }
}

/// lb's routes in `table` (`None`: in every table), as (table, VIP).
fn routes_in(table: Option<u32>) -> Result<Vec<(u32, IpAddr)>, IpError> {
    let table_arg = table.map_or("all".to_string(), |t| t.to_string());
    let mut found = Vec::new();
    for fam in ["-4", "-6"] {
        let out = match ip(&[
            "-j",
            fam,
            "route",
            "show",
            "table",
            &table_arg,
            "proto",
            &RTPROT_LB.to_string(),
        ]) {
            Err(e) if e.is_no_table() => continue,
            r => r?,
        };
        found.extend(parse_routes(&out, table));
    }
    Ok(found)
}

fn routes(table: Option<u32>) -> Result<BTreeSet<IpAddr>, IpError> {
    Ok(routes_in(table)?.into_iter().map(|(_, v)| v).collect())
}

/// The host routes of `ip -j route show` output, with their table (`default_table`
/// when the output does not say, as for a single table).
fn parse_routes(json: &str, default_table: Option<u32>) -> Vec<(u32, IpAddr)> {
    let Ok(serde_json::Value::Array(entries)) = serde_json::from_str(json.trim()) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let dst = e["dst"].as_str()?;
            let addr = dst.split('/').next()?.parse().ok()?;
            let table = match &e["table"] {
                serde_json::Value::String(t) => t.parse().ok()?,
                serde_json::Value::Number(n) => u32::try_from(n.as_u64()?).ok()?,
                _ => default_table?,
            };
            Some((table, addr))
        })
        .collect()
}

/// Removes every lb route, in whatever table (for `lb down`); returns what it removed.
pub fn remove_all() -> Result<Vec<(u32, IpAddr)>, IpError> {
    let found = routes_in(None)?;
    for (table, vip) in &found {
        remove(*vip, *table)?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_host_routes_marked_as_lb() {
        assert_eq!(
            route_args("replace", "198.18.100.1".parse().unwrap(), 100).join(" "),
            "-4 route replace 198.18.100.1/32 dev lo table 100 proto 76"
        );
        assert_eq!(
            route_args("del", "fd00:100::1".parse().unwrap(), 7).join(" "),
            "-6 route del fd00:100::1/128 dev lo table 7 proto 76"
        );
    }

    #[test]
    fn ip_json_is_read_with_or_without_the_table() {
        let one =
            r#"[{"dst":"198.18.100.1","dev":"lo","protocol":"76","scope":"link","flags":[]}]"#;
        assert_eq!(
            parse_routes(one, Some(100)),
            vec![(100, "198.18.100.1".parse().unwrap())]
        );
        let all = r#"[{"dst":"fd00:100::1","table":"42","dev":"lo","protocol":"76","flags":[]},
                      {"dst":"198.18.100.2/32","table":"7","dev":"lo","flags":[]}]"#;
        assert_eq!(
            parse_routes(all, None),
            vec![
                (42, "fd00:100::1".parse().unwrap()),
                (7, "198.18.100.2".parse().unwrap())
            ]
        );
        assert!(parse_routes("", None).is_empty());
    }
}
