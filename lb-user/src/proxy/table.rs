//! Backend choice for proxied connections: the same weighted Maglev table the XDP path
//! uses (built by `lb_common::maglev` from the same members) and the same flow hash over
//! the same 5-tuple, so a connection lands where the kernel path would have sent it.
//! If a backend cannot be reached, the next backends in Maglev order are tried.

use lb_common::hash::flow_hash;
use lb_common::maglev::{NO_BACKEND, slot};
use lb_common::maps::FlowKey;
use std::collections::HashMap;
use std::net::SocketAddr;

/// One backend a connection may go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Backend id in the maps.
    pub id: u32,
    pub addr: SocketAddr,
}

/// A service's live table, replaced as a whole when its members change.
#[derive(Clone, Debug, Default)]
pub struct ProxyTable {
    slots: Vec<u32>,
    targets: HashMap<u32, SocketAddr>,
}

impl ProxyTable {
    /// `slots` is a Maglev table (backend ids or `NO_BACKEND`); `targets` the addresses
    /// of the ids it holds.
    pub fn new(slots: Vec<u32>, targets: HashMap<u32, SocketAddr>) -> Self {
        ProxyTable { slots, targets }
    }

    /// Up to `max` distinct backends for the connection `client` → `vip`, the first the
    /// one its flow hash selects, then the next ones around the ring.
    pub fn candidates(&self, client: SocketAddr, vip: SocketAddr, max: usize) -> Vec<Target> {
        let ring = self.slots.len() as u32;
        let mut out: Vec<Target> = Vec::new();
        if ring == 0 {
            return out;
        }
        let start = slot(flow_hash(&FlowKey::tcp(client, vip)), ring);
        for i in 0..ring {
            let id = self.slots[((start + i) % ring) as usize];
            if id == NO_BACKEND || out.iter().any(|t| t.id == id) {
                continue;
            }
            if let Some(addr) = self.targets.get(&id) {
                out.push(Target { id, addr: *addr });
                if out.len() >= max || out.len() == self.targets.len() {
                    break;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::addr::ip_bytes;
    use lb_common::hash::backend_key;
    use lb_common::maglev::{MaglevBackend, build_table};

    fn table(addrs: &[&str], ring: u32) -> ProxyTable {
        let mut members = Vec::new();
        let mut targets = HashMap::new();
        for (i, a) in addrs.iter().enumerate() {
            let addr: SocketAddr = a.parse().unwrap();
            members.push(MaglevBackend {
                key: backend_key(&ip_bytes(&addr.ip()), addr.port()),
                weight: 1,
                id: i as u32 + 10,
            });
            targets.insert(i as u32 + 10, addr);
        }
        ProxyTable::new(build_table(&members, ring), targets)
    }

    #[test]
    fn the_first_candidate_is_the_kernel_paths_choice() {
        let t = table(&["198.18.1.11:80", "198.18.1.12:80", "198.18.1.13:80"], 251);
        let vip: SocketAddr = "198.18.100.1:80".parse().unwrap();
        for port in 40000..40100u16 {
            let client = SocketAddr::new("198.18.0.2".parse().unwrap(), port);
            let key = FlowKey::tcp(client, vip);
            let expected = t.slots[slot(flow_hash(&key), 251) as usize];
            let c = t.candidates(client, vip, 3);
            assert_eq!(c[0].id, expected);
            assert_eq!(c.len(), 3);
            let mut ids: Vec<u32> = c.iter().map(|t| t.id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 3, "candidates are distinct");
        }
    }

    #[test]
    fn candidates_are_bounded_and_an_empty_table_has_none() {
        let t = table(&["198.18.1.11:80", "198.18.1.12:80", "198.18.1.13:80"], 251);
        let vip: SocketAddr = "198.18.100.1:80".parse().unwrap();
        let client: SocketAddr = "198.18.0.2:5555".parse().unwrap();
        assert_eq!(t.candidates(client, vip, 2).len(), 2);
        assert!(table(&[], 251).candidates(client, vip, 3).is_empty());
        assert!(ProxyTable::default().candidates(client, vip, 3).is_empty());
    }

    #[test]
    fn flow_key_matches_the_packet_layout() {
        let k = FlowKey::tcp(
            "198.18.0.2:40000".parse().unwrap(),
            "198.18.100.1:80".parse().unwrap(),
        );
        assert_eq!(k.src[0].to_ne_bytes(), [198, 18, 0, 2]);
        assert_eq!(k.sport.to_ne_bytes(), 40000u16.to_be_bytes());
        assert_eq!(k.dport.to_ne_bytes(), 80u16.to_be_bytes());
        assert_eq!(k.family, lb_common::maps::FAMILY_V4);
    }
}
