//! The map writers: every value the XDP and sk_lookup programs read is written here
//! (globals, backends, services and their Maglev tables and allowlists, proxy VIPs), plus the reads
//! the daemon needs from its own process (map ids, global counters).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use lb_common::addr::ip_to_words;
use lb_common::handoff;
use lb_common::maglev::{MaglevBackend, build_table};
use lb_common::maps::{
    Backend, FAMILY_V6, FlowKey, GlobalConfig, LocalMacs, MAX_LOCAL_MACS, MAX_SERVICES,
    REPLIES_ANY_PORT, REPLIES_NO_VIP, Service, ServiceSlot, TrafficCounters, VipKey, WatchSpec,
    mac_word, names, snat_addrs_base,
};
use tracing::warn;

use super::{Dataplane, DataplaneError, map_error};
use crate::config::{Cidr, Config, Encap, Mode, SynCookies};
use crate::sys;
use lb_common::syn_proxy::{COOKIES_ALWAYS, COOKIES_AUTO, COOKIES_OFF};

/// How the data path forwards a service's packets: the service map value's mode and
/// encapsulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forwarding {
    /// `lb_common::maps::MODE_*`.
    pub mode: u32,
    /// `lb_common::encap::ENCAP_*`.
    pub encap: u8,
    /// Host order; 0 unless GUE.
    pub gue_port: u16,
    /// `lb_common::maps::ACCESS_*`.
    pub access: u8,
}

impl Forwarding {
    pub fn of(mode: Mode, encap: Option<Encap>) -> Self {
        let mode = match mode {
            Mode::Nat => lb_common::maps::MODE_NAT,
            Mode::ProxyV2 => lb_common::maps::MODE_PROXY,
            Mode::Dsr => lb_common::maps::MODE_DSR,
            Mode::Dnat => lb_common::maps::MODE_DNAT,
        };
        Forwarding {
            mode,
            encap: encap.map_or(lb_common::encap::ENCAP_NONE, |e| e.kind.wire()),
            gue_port: encap.map_or(0, |e| e.gue_port),
            access: 0,
        }
    }
}

impl Dataplane {
    /// Writes the global settings and the redirect ports (removing an earlier daemon's
    /// that the configuration no longer lists). Call before [`Dataplane::attach`], so no
    /// packet sees a half-filled map.
    pub fn program_globals(&mut self, cfg: &Config) -> Result<(), DataplaneError> {
        let mut wanted = Vec::new();
        for iface in &cfg.ifaces {
            wanted.push((iface, resolve_iface(iface)?));
        }
        self.set_globals(cfg)?;
        let mut ports: DevMapHash<&mut MapData> = self.map_mut(names::TX_PORTS)?;
        let stale: Vec<u32> = ports
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.iter().any(|(_, idx)| idx == k))
            .collect();
        for idx in stale {
            ports.remove(idx).map_err(map_error(names::TX_PORTS))?;
        }
        for (iface, idx) in &wanted {
            ports
                .insert(*idx, *idx, None, 0)
                .map_err(|source| DataplaneError::TxPort {
                    iface: (*iface).clone(),
                    source,
                })?;
        }
        self.set_local_macs(&wanted)?;
        self.set_handoff_mark()
    }

    /// Writes the host's hand-off mark (`lb_common::handoff`) unless the map, pinned by
    /// an earlier daemon, already holds one: the programs that daemon left attached mark
    /// their hand-offs with it until this daemon's replace them.
    fn set_handoff_mark(&mut self) -> Result<(), DataplaneError> {
        let mut map: Array<&mut MapData, u64> = self.map_mut(names::HANDOFF_MARK)?;
        let held = map.get(&0, 0).map_err(map_error(names::HANDOFF_MARK))?;
        if handoff::is_mark(held) {
            return Ok(());
        }
        let mut random = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .map_err(DataplaneError::Random)?;
        map.set(0, handoff::mark(random), 0)
            .map_err(map_error(names::HANDOFF_MARK))
    }

    /// Lists the interfaces' MACs for the program's destination check (`LocalMacs`). An
    /// interface whose MAC cannot be read, or beyond the list's size, is not filtered.
    fn set_local_macs(&mut self, ifaces: &[(&String, u32)]) -> Result<(), DataplaneError> {
        let mut macs = LocalMacs::default();
        let mut slot = 0;
        for (iface, idx) in ifaces {
            let Some(mac) = link_mac(iface) else {
                warn!(iface = %iface, "cannot read the interface's MAC: frames for other hosts are not filtered there");
                continue;
            };
            if slot == MAX_LOCAL_MACS {
                warn!(iface = %iface, "more than {MAX_LOCAL_MACS} interfaces: frames for other hosts are not filtered on this one");
                break;
            }
            macs.ifindex[slot] = *idx;
            macs.mac[slot] = mac_word(&mac);
            slot += 1;
        }
        let mut map: Array<&mut MapData, LocalMacs> = self.map_mut(names::LOCAL_MACS)?;
        map.set(0, macs, 0).map_err(map_error(names::LOCAL_MACS))
    }

    /// Writes the global settings the program reads for every packet (timeouts, ring
    /// size, SNAT addresses and ports, the per-source new-flow limit); a reload may
    /// change the timeouts and the limit. Flows and the sources' buckets are left as they
    /// are. The SNAT addresses go in before the counts that make the program use them.
    pub fn set_globals(&mut self, cfg: &Config) -> Result<(), DataplaneError> {
        let mut counts = [0u8; 2];
        {
            let mut addrs: Array<&mut MapData, [u32; 4]> = self.map_mut(names::SNAT_ADDRS)?;
            for ip in &cfg.snat_ips {
                let (words, family) = ip_to_words(*ip);
                let slot = usize::from(family == FAMILY_V6);
                let index = snat_addrs_base(family) + u32::from(counts[slot]);
                addrs
                    .set(index, words, 0)
                    .map_err(map_error(names::SNAT_ADDRS))?;
                counts[slot] += 1;
            }
        }
        let global = GlobalConfig {
            idle_timeout_ns: cfg.idle_timeout.as_nanos() as u64,
            closed_timeout_ns: cfg.closed_timeout.as_nanos() as u64,
            half_open_timeout_ns: cfg.half_open_timeout.as_nanos() as u64,
            ring_size: cfg.ring_size,
            snat_port_min: cfg.snat_ports.0,
            snat_port_max: cfg.snat_ports.1,
            source_rate: cfg.source_rate,
            source_burst: cfg.source_burst,
            snat_addrs: counts,
            syn_cookies: match cfg.syn_cookies {
                SynCookies::Auto => COOKIES_AUTO,
                SynCookies::Always => COOKIES_ALWAYS,
                SynCookies::Off => COOKIES_OFF,
            },
            replies: if cfg.has_dnat() { REPLIES_ANY_PORT } else { 0 },
            syn_cookie_rate: cfg.syn_cookie_rate,
        };
        let no_vip = !self.vip_port_within(cfg.snat_ports)?;
        self.write_globals(GlobalConfig {
            replies: global.replies | if no_vip { REPLIES_NO_VIP } else { 0 },
            ..global
        })
    }

    /// Says whether a DNAT service exists: the program then looks up replies to any port,
    /// not only the SNAT range's. The other global settings stay as written.
    pub fn set_dnat_replies(&mut self, on: bool) -> Result<(), DataplaneError> {
        let global = self.globals()?;
        let replies = match on {
            true => global.replies | REPLIES_ANY_PORT,
            false => global.replies & !REPLIES_ANY_PORT,
        };
        self.write_globals(GlobalConfig { replies, ..global })
    }

    fn globals(&mut self) -> Result<GlobalConfig, DataplaneError> {
        let config: Array<&mut MapData, GlobalConfig> = self.map_mut(names::CONFIG)?;
        config.get(&0, 0).map_err(map_error(names::CONFIG))
    }

    fn write_globals(&mut self, global: GlobalConfig) -> Result<(), DataplaneError> {
        let mut config: Array<&mut MapData, GlobalConfig> = self.map_mut(names::CONFIG)?;
        config.set(0, global, 0).map_err(map_error(names::CONFIG))
    }

    /// Whether a service in `SERVICES` listens on a port of `ports` (host order, both
    /// ends in).
    fn vip_port_within(&mut self, ports: (u16, u16)) -> Result<bool, DataplaneError> {
        let services: HashMap<&mut MapData, VipKey, Service> = self.map_mut(names::SERVICES)?;
        for key in services.keys() {
            let key = key.map_err(map_error(names::SERVICES))?;
            if (ports.0..=ports.1).contains(&u16::from_be(key.port)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Before a service on `vip` goes into `SERVICES`: if its port is in the SNAT range,
    /// the program must ask `SERVICES` about segments to that range again
    /// (`REPLIES_NO_VIP` off), or it would take the VIP's segments for replies.
    fn vip_coming(&mut self, vip: SocketAddr) -> Result<(), DataplaneError> {
        let global = self.globals()?;
        let port = vip.port();
        if global.replies & REPLIES_NO_VIP != 0
            && (global.snat_port_min..=global.snat_port_max).contains(&port)
        {
            self.write_globals(GlobalConfig {
                replies: global.replies & !REPLIES_NO_VIP,
                ..global
            })?;
        }
        Ok(())
    }

    /// After a service left `SERVICES`: once no VIP's port is in the SNAT range, the
    /// program may skip `SERVICES` for segments to that range (`REPLIES_NO_VIP` on).
    fn vip_gone(&mut self) -> Result<(), DataplaneError> {
        let global = self.globals()?;
        if global.replies & REPLIES_NO_VIP != 0
            || self.vip_port_within((global.snat_port_min, global.snat_port_max))?
        {
            return Ok(());
        }
        self.write_globals(GlobalConfig {
            replies: global.replies | REPLIES_NO_VIP,
            ..global
        })
    }

    /// Writes backend `id`: where it is, which SNAT address reaches it, its state.
    pub fn set_backend(
        &mut self,
        id: u32,
        service_id: u32,
        addr: SocketAddr,
        snat_ip: IpAddr,
        state: u8,
    ) -> Result<(), DataplaneError> {
        let (words, family) = ip_to_words(addr.ip());
        let value = Backend {
            addr: words,
            snat_addr: ip_to_words(snat_ip).0,
            port: addr.port().to_be(),
            family,
            state,
            service_id,
        };
        self.write_backend(id, value)
    }

    /// Empties backend slot `id`: flows still pointing at it are re-balanced.
    pub fn clear_backend(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.write_backend(id, Backend::default())
    }

    fn write_backend(&mut self, id: u32, value: Backend) -> Result<(), DataplaneError> {
        let mut map: Array<&mut MapData, Backend> = self.map_mut(names::BACKENDS)?;
        map.set(id, value, 0).map_err(map_error(names::BACKENDS))
    }

    /// Zeroes the traffic counters of a backend (`service == false`) or service slot
    /// about to be reused, so a new backend does not inherit an old one's totals.
    pub fn reset_counters(&mut self, service: bool, id: u32) -> Result<(), DataplaneError> {
        let name = if service {
            names::SERVICE_STATS
        } else {
            names::BACKEND_STATS
        };
        let io_error = |e| map_error(name)(MapError::IoError(e));
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io_error(e))?;
        let zeros =
            PerCpuValues::try_from(vec![TrafficCounters::default(); cpus]).map_err(io_error)?;
        let mut map: PerCpuArray<&mut MapData, TrafficCounters> = self.map_mut(name)?;
        map.set(id, zeros, 0).map_err(map_error(name))
    }

    /// Points the service at `vip` to a Maglev table built from `members`, written into
    /// the half that is not live (`live_half` is the live one; the new one is returned).
    /// The switch is a single SERVICES update, so packets see the whole old table or the
    /// whole new one, never a mix. An empty `members` makes every new connection get a
    /// TCP reset.
    pub fn install_table(
        &mut self,
        service_id: u32,
        vip: SocketAddr,
        live_half: u32,
        forwarding: Forwarding,
        members: &[MaglevBackend],
    ) -> Result<u32, DataplaneError> {
        let table = build_table(members, self.ring_size);
        let half = 1 - live_half.min(1);
        let offset = (service_id * 2 + half) * self.ring_size;
        {
            let mut maglev: Array<&mut MapData, u32> = self.map_mut(names::MAGLEV)?;
            for (i, b) in table.iter().enumerate() {
                maglev
                    .set(offset + i as u32, b, 0)
                    .map_err(map_error(names::MAGLEV))?;
            }
        }
        let value = Service {
            id: service_id,
            table_offset: offset,
            mode: forwarding.mode,
            encap: forwarding.encap,
            access: forwarding.access,
            gue_port: forwarding.gue_port.to_be(),
        };
        self.vip_coming(vip)?;
        let key = VipKey::from_socket_addr(vip);
        let mut services: HashMap<&mut MapData, VipKey, Service> = self.map_mut(names::SERVICES)?;
        services
            .insert(key, value, 0)
            .map_err(map_error(names::SERVICES))?;
        self.write_slot(
            service_id,
            ServiceSlot {
                vip: key,
                service: value,
            },
        )?;
        Ok(half)
    }

    /// Adds (`on`) or removes service slot `service`'s allowlist `ranges` in `ALLOW`;
    /// removing a range that is not there is fine.
    pub fn allow(&mut self, service: u32, ranges: &[Cidr], on: bool) -> Result<(), DataplaneError> {
        let mut trie: LpmTrie<&mut MapData, [u8; 20], u8> = self.map_mut(names::ALLOW)?;
        for r in ranges {
            let key = allow_key(service, r);
            if on {
                trie.insert(&key, 1, 0).map_err(map_error(names::ALLOW))?;
            } else {
                gone_is_fine(trie.remove(&key)).map_err(map_error(names::ALLOW))?;
            }
        }
        Ok(())
    }

    /// Removes every `ALLOW` entry but `wanted`'s (service slot, range): what an earlier
    /// daemon left for services or ranges this configuration no longer has.
    pub fn retain_allow(&mut self, wanted: &[(u32, Cidr)]) -> Result<usize, DataplaneError> {
        let keep: Vec<Key<[u8; 20]>> = wanted.iter().map(|(s, r)| allow_key(*s, r)).collect();
        let mut trie: LpmTrie<&mut MapData, [u8; 20], u8> = self.map_mut(names::ALLOW)?;
        let gone: Vec<Key<[u8; 20]>> = (trie.keys())
            .filter_map(Result::ok)
            .filter(|k| {
                !keep
                    .iter()
                    .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data())
            })
            .collect();
        for k in &gone {
            gone_is_fine(trie.remove(k)).map_err(map_error(names::ALLOW))?;
        }
        Ok(gone.len())
    }

    /// Writes the connection whose packets the program reports (`WATCH`), or none.
    pub fn set_watch(
        &mut self,
        spec: Option<(SocketAddr, SocketAddr, u32)>,
    ) -> Result<(), DataplaneError> {
        let value = spec.map_or(WatchSpec::default(), |(client, vip, every)| WatchSpec {
            key: FlowKey::tcp(client, vip),
            every: every.max(1),
            _pad: 0,
        });
        let mut watch: Array<&mut MapData, WatchSpec> = self.map_mut(names::WATCH)?;
        watch.set(0, value, 0).map_err(map_error(names::WATCH))
    }

    /// Rewrites the access bits of `vip`'s service entry, leaving the rest as it is.
    pub fn set_access(&mut self, vip: SocketAddr, access: u8) -> Result<(), DataplaneError> {
        let mut services: HashMap<&mut MapData, VipKey, Service> = self.map_mut(names::SERVICES)?;
        let key = VipKey::from_socket_addr(vip);
        let mut value = services.get(&key, 0).map_err(map_error(names::SERVICES))?;
        value.access = access;
        services
            .insert(key, value, 0)
            .map_err(map_error(names::SERVICES))?;
        self.write_slot(
            value.id,
            ServiceSlot {
                vip: key,
                service: value,
            },
        )
    }

    /// Writes service slot `id` of `SERVICE_SLOTS` (see [`ServiceSlot`]).
    fn write_slot(&mut self, id: u32, slot: ServiceSlot) -> Result<(), DataplaneError> {
        let mut slots: Array<&mut MapData, ServiceSlot> = self.map_mut(names::SERVICE_SLOTS)?;
        slots
            .set(id, slot, 0)
            .map_err(map_error(names::SERVICE_SLOTS))
    }

    /// Rewrites `SERVICE_SLOTS` from `SERVICES` (an earlier daemon's, adopted, or none):
    /// each service's slot holds its VIP and entry, every other slot is empty.
    pub fn rebuild_service_slots(&mut self) -> Result<(), DataplaneError> {
        let services: HashMap<&mut MapData, VipKey, Service> = self.map_mut(names::SERVICES)?;
        let mut slots = vec![ServiceSlot::default(); MAX_SERVICES as usize];
        for entry in services.iter() {
            let (vip, service) = entry.map_err(map_error(names::SERVICES))?;
            if let Some(slot) = slots.get_mut(service.id as usize) {
                *slot = ServiceSlot { vip, service };
            }
        }
        for (id, slot) in slots.into_iter().enumerate() {
            self.write_slot(id as u32, slot)?;
        }
        Ok(())
    }

    /// Stops matching `vip`: its packets go to the kernel from now on.
    pub fn remove_service(&mut self, vip: SocketAddr) -> Result<(), DataplaneError> {
        // Its slot first: the fast path then sends its segments the general way, which
        // still finds the service until it goes.
        let key = VipKey::from_socket_addr(vip);
        let services: HashMap<&mut MapData, VipKey, Service> = self.map_mut(names::SERVICES)?;
        if let Ok(service) = services.get(&key, 0) {
            let slots: Array<&mut MapData, ServiceSlot> = self.map_mut(names::SERVICE_SLOTS)?;
            if slots.get(&service.id, 0).is_ok_and(|s| s.vip == key) {
                self.write_slot(service.id, ServiceSlot::default())?;
            }
        }
        self.remove_vip::<Service>(names::SERVICES, vip)?;
        self.vip_gone()
    }

    /// Steers connections to a proxy VIP:port to the daemon's listener of its family
    /// (index 0: IPv4, 1: IPv6 in `PROXY_LISTENERS`).
    pub fn set_proxy_vip(&mut self, vip: SocketAddr) -> Result<(), DataplaneError> {
        let index = listener_index(vip);
        let mut vips: HashMap<&mut MapData, VipKey, u32> = self.map_mut(names::PROXY_VIPS)?;
        vips.insert(VipKey::from_socket_addr(vip), index, 0)
            .map_err(map_error(names::PROXY_VIPS))
    }

    pub fn remove_proxy_vip(&mut self, vip: SocketAddr) -> Result<(), DataplaneError> {
        self.remove_vip::<u32>(names::PROXY_VIPS, vip)
    }

    /// Removes `vip` from a map keyed by VIP; one that is not there is fine.
    fn remove_vip<V: aya::Pod>(
        &mut self,
        map: &'static str,
        vip: SocketAddr,
    ) -> Result<(), DataplaneError> {
        let mut vips: HashMap<&mut MapData, VipKey, V> = self.map_mut(map)?;
        gone_is_fine(vips.remove(&VipKey::from_socket_addr(vip))).map_err(map_error(map))
    }

    /// Kernel ids of the program's maps, for `lb stats` in another process.
    pub fn map_ids(&self) -> BTreeMap<String, u32> {
        self.ebpf
            .maps()
            .filter_map(|(name, map)| {
                super::map_data(map)
                    .and_then(|d| d.info().ok())
                    .map(|i| (name.to_string(), i.id()))
            })
            .collect()
    }

    /// Sum of a global counter over all CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        self.ebpf
            .map(names::COUNTERS)
            .and_then(|m| PerCpuArray::<&MapData, u64>::try_from(m).ok())
            .and_then(|a| a.get(&index, 0).ok())
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }
}

/// The index of interface `iface` in this network namespace.
pub fn resolve_iface(iface: &str) -> Result<u32, DataplaneError> {
    sys::ifindex(iface).map_err(|source| DataplaneError::UnknownIface {
        iface: iface.to_string(),
        source,
    })
}

/// Index of the proxy listener of the VIP's family in `PROXY_LISTENERS`.
fn listener_index(vip: SocketAddr) -> u32 {
    if vip.is_ipv4() { 0 } else { 1 }
}

/// An interface's MAC, from `ip -j link` (in this process's network namespace, unlike
/// /sys/class/net under `nsenter --net`).
fn link_mac(iface: &str) -> Option<[u8; 6]> {
    let out = crate::iproute::ip(&["-j", "link", "show", "dev", iface]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let text = v.get(0)?.get("address")?.as_str()?;
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The `ALLOW` key of service slot `service`'s range `r`.
/// A removal's result, a key that was not there counted as removed: aya reports it as
/// the system call's ENOENT, not as `MapError::KeyNotFound`.
fn gone_is_fine(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

fn allow_key(service: u32, r: &Cidr) -> Key<[u8; 20]> {
    let bytes = match r.addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    Key::new(
        lb_common::maps::ALLOW_ID_BITS + u32::from(r.prefix),
        lb_common::maps::allow_data(service, &bytes),
    )
}
