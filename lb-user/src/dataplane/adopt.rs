//! Reading back what an earlier daemon left in the pinned maps: its services (with their
//! ids and live Maglev halves) and backends (with their ids and states), so the control
//! plane keeps every id a flow entry may name and writes only what the new
//! configuration changes.

use std::net::{IpAddr, SocketAddr};

use aya::maps::{Array, HashMap, MapData};
use lb_common::addr::words_to_ip;
use lb_common::maps::{BACKEND_EMPTY, Backend, MAX_BACKENDS, Service, VipKey, names};

use super::{Dataplane, DataplaneError, map_error};

/// A service slot in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptedService {
    pub vip: SocketAddr,
    pub id: u32,
    /// Which half of its Maglev tables is live.
    pub live_half: u32,
    /// `lb_common::maps::MODE_*`.
    pub mode: u32,
}

/// A backend slot in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptedBackend {
    pub id: u32,
    pub service: u32,
    pub addr: SocketAddr,
    pub snat_ip: IpAddr,
    /// `lb_common::maps::BACKEND_*`.
    pub state: u8,
}

/// The services and backends in the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    pub services: Vec<AdoptedService>,
    pub backends: Vec<AdoptedBackend>,
}

impl Dataplane {
    /// What an earlier daemon left, or `None` when the state directory was fresh.
    pub fn adopted(&self) -> Result<Option<Adopted>, DataplaneError> {
        if !self.state.adopted() {
            return Ok(None);
        }
        let mut adopted = Adopted::default();
        let services: HashMap<&MapData, VipKey, Service> = self.map(names::SERVICES)?;
        for entry in services.iter() {
            let (key, svc) = entry.map_err(map_error(names::SERVICES))?;
            let Some(ip) = words_to_ip(key.addr, key.family) else {
                continue;
            };
            adopted.services.push(AdoptedService {
                vip: SocketAddr::new(ip, u16::from_be(key.port)),
                id: svc.id,
                live_half: (svc.table_offset / self.ring_size) % 2,
                mode: svc.mode,
            });
        }
        let backends: Array<&MapData, Backend> = self.map(names::BACKENDS)?;
        for id in 0..MAX_BACKENDS {
            let b = backends.get(&id, 0).map_err(map_error(names::BACKENDS))?;
            if b.state == BACKEND_EMPTY {
                continue;
            }
            let (Some(ip), Some(snat_ip)) = (
                words_to_ip(b.addr, b.family),
                words_to_ip(b.snat_addr, b.family),
            ) else {
                continue;
            };
            adopted.backends.push(AdoptedBackend {
                id,
                service: b.service_id,
                addr: SocketAddr::new(ip, u16::from_be(b.port)),
                snat_ip,
                state: b.state,
            });
        }
        Ok(Some(adopted))
    }

    fn map<'a, T>(&'a self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        T::try_from(map).map_err(map_error(name))
    }
}
