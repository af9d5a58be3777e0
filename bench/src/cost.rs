//! The cost series of issue 5 that need no load: what one flow costs in kernel memory,
//! read off the running daemon's maps.

use anyhow::{Context, Result, bail};
use lb_common::maps::names;

/// Kernel memory per NAT flow of the `lb` daemon `pid`: a flow holds one entry in the
/// flow table and one in the reverse NAT table; each map's memory (the kernel's own
/// accounting, `bytes_memlock`; LRU hashes are preallocated) divided by its capacity.
/// The daemon's maps are told from others of the same name (the test bed's `xdp_pass`
/// loader has its own) by the map ids in the daemon's fdinfo.
pub fn flow_bytes(pid: u32) -> Result<f64> {
    let ids = held_ids(pid, "map")?;
    let out =
        lb_tests::cmd::run(std::process::Command::new("bpftool").args(["-j", "map", "show"]))?;
    per_flow(&out, &ids)
}

/// Ids of the BPF objects of one kind (`map` or `prog`) process `pid` holds open, from
/// the `map_id:` or `prog_id:` lines of its fdinfo.
pub fn held_ids(pid: u32, kind: &str) -> Result<Vec<u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let prefix = format!("{kind}_id:");
    let ids: Vec<u64> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    if ids.is_empty() {
        bail!("lb (pid {pid}) holds no BPF {kind}");
    }
    Ok(ids)
}

fn per_flow(bpftool_json: &str, ids: &[u64]) -> Result<f64> {
    let maps: serde_json::Value =
        serde_json::from_str(bpftool_json).context("parsing `bpftool -j map show`")?;
    let maps = maps
        .as_array()
        .context("`bpftool -j map show` is not a list")?;
    let mut total = 0.0;
    for name in [names::FLOWS, names::REVERSE_NAT] {
        let m = maps
            .iter()
            .find(|m| m["name"] == name && m["id"].as_u64().is_some_and(|id| ids.contains(&id)))
            .with_context(|| format!("no map {name} among lb's maps {ids:?}"))?;
        let bytes = m["bytes_memlock"].as_f64().unwrap_or(0.0);
        let entries = m["max_entries"].as_f64().unwrap_or(0.0);
        if bytes <= 0.0 || entries <= 0.0 {
            bail!("map {name}: no memory figure in {m}");
        }
        total += bytes / entries;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #[test]
    fn adds_both_maps_per_entry() {
        let json = r#"[
          {"id":1,"name":"FLOWS","max_entries":1000,"bytes_memlock":100000},
          {"id":2,"name":"FLOWS","max_entries":10,"bytes_memlock":10},
          {"id":3,"name":"REVERSE_NAT","max_entries":1000,"bytes_memlock":120000}
        ]"#;
        assert_eq!(super::per_flow(json, &[1, 3, 9]).unwrap(), 220.0);
        assert!(super::per_flow(json, &[2]).is_err());
    }
}
