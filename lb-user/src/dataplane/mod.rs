//! Loads the XDP program, programs its maps and attaches it to the LB's interfaces.
//! Dropping a [`Dataplane`] detaches the program and frees the maps.

pub mod neigh;
pub mod object;
pub mod pin;
pub mod runtime;

use crate::config::{Config, XdpModeChoice};
use crate::sys;
use aya::maps::{Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId};
use aya::{Ebpf, EbpfError, EbpfLoader};
use lb_common::addr::ip_to_words;
use lb_common::maglev::{MaglevBackend, build_table};
use lb_common::maps::{self as m, Backend, GlobalConfig, Service, TrafficCounters, VipKey, names};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    MissingObject(#[from] object::MissingObject),
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<EbpfError>),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error(
        "the kernel rejected program {program}: {source}\nverifier log:\n{log}\nhint: run on a kernel with BTF and XDP support (5.15+), as root"
    )]
    Verifier {
        program: &'static str,
        source: std::io::Error,
        log: String,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        source: Box<ProgramError>,
    },
    #[error("interface {iface:?}: {source} (check `ip link` in this network namespace)")]
    UnknownIface {
        iface: String,
        source: std::io::Error,
    },
    #[error("attaching to {iface} in {mode} mode: {source}\nhint: {hint}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: Box<ProgramError>,
        hint: &'static str,
    },
    #[error("writing map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("adding {iface} to the redirect map {}: {source}", names::TX_PORTS)]
    TxPort {
        iface: String,
        source: aya::maps::xdp::XdpMapError,
    },
    #[error(
        "backend {backend}: no route from this host to choose a SNAT source address ({source}); add a route or give --snat-ip"
    )]
    NoSnatSource {
        backend: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pin(#[from] pin::PinError),
    #[error("sockmap splice engine: {0} (try --splice pipe)")]
    Splice(#[source] crate::proxy::splice::SpliceError),
    #[error(
        "pinned map {path} has {entries} entries but --max-flows is {max_flows}: start with the same --max-flows, or remove the pin (losing its flows)"
    )]
    PinnedSize {
        path: PathBuf,
        entries: u32,
        max_flows: u32,
    },
}

/// Where the program is attached.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    /// "native" or "skb".
    pub mode: String,
}

/// A backend as the daemon runs it (written to the runtime record for `lb stats`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BackendSlot {
    pub id: u32,
    pub addr: SocketAddr,
    pub weight: u32,
    pub snat_ip: IpAddr,
    /// The daemon's view: "up", "down", "initial", "draining" or "drained".
    #[serde(default)]
    pub state: String,
}

/// A service as the daemon runs it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ServiceSlot {
    pub id: u32,
    pub name: String,
    pub vip: SocketAddr,
    pub mode: String,
    /// Which half of the service's two Maglev tables is live (0 or 1).
    pub live_half: u32,
    pub backends: Vec<BackendSlot>,
}

pub struct Dataplane {
    ebpf: Ebpf,
    ring_size: u32,
    pin_dir: Option<PathBuf>,
    links: Vec<XdpLinkId>,
    pub attachments: Vec<Attachment>,
}

impl Dataplane {
    /// Loads the embedded object with maps sized from `cfg` and verifies the program.
    /// Nothing is attached yet.
    pub fn load(cfg: &Config) -> Result<Dataplane, DataplaneError> {
        let bytes = object::require()?;
        let maglev_entries = cfg.max_services * 2 * cfg.ring_size;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::MAGLEV, maglev_entries)
            .map_max_entries(names::FLOWS, cfg.max_flows)
            .map_max_entries(names::REVERSE_NAT, cfg.max_flows)
            // Two sockets per proxied connection.
            .map_max_entries(names::SPLICE, cfg.max_conns.saturating_mul(2))
            .map_max_entries(names::SPLICE_HOOK, cfg.max_conns.saturating_mul(2));
        let mut reused = Vec::new();
        if let Some(dir) = &cfg.pin_dir {
            pin::prepare(dir)?;
            for (map, path) in pin::paths(dir) {
                if path.exists() {
                    reused.push(map);
                }
                loader.map_pin_path(map, path);
            }
        }
        let mut ebpf = loader
            .load(bytes)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        if let Some(dir) = &cfg.pin_dir {
            check_pinned_sizes(&ebpf, cfg.max_flows, dir, &reused)?;
        }
        lb_program(&mut ebpf)?.load().map_err(|e| match e {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => DataplaneError::Verifier {
                program: names::PROG_LB,
                source: io_error,
                log: verifier_log.to_string(),
            },
            other => DataplaneError::Program {
                program: names::PROG_LB,
                source: Box::new(other),
            },
        })?;
        info!(
            maglev_entries,
            max_flows = cfg.max_flows,
            "loaded XDP program {}",
            names::PROG_LB
        );
        Ok(Dataplane {
            ebpf,
            ring_size: cfg.ring_size,
            pin_dir: cfg.pin_dir.clone(),
            links: Vec::new(),
            attachments: Vec::new(),
        })
    }

    /// Writes the global settings and the redirect ports. Call before
    /// [`Dataplane::attach`], so no packet sees a half-filled map.
    pub fn program_globals(&mut self, cfg: &Config) -> Result<(), DataplaneError> {
        self.set_timeouts(cfg)?;
        let mut ports: DevMapHash<&mut MapData> = self.map_mut(names::TX_PORTS)?;
        for iface in &cfg.ifaces {
            let idx = sys::ifindex(iface).map_err(|source| DataplaneError::UnknownIface {
                iface: iface.clone(),
                source,
            })?;
            ports
                .insert(idx, idx, None, 0)
                .map_err(|source| DataplaneError::TxPort {
                    iface: iface.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Writes the global settings the program reads for every packet (timeouts, ring
    /// size, SNAT ports); a reload may change the timeouts.
    pub fn set_timeouts(&mut self, cfg: &Config) -> Result<(), DataplaneError> {
        let global = GlobalConfig {
            idle_timeout_ns: cfg.idle_timeout.as_nanos() as u64,
            closed_timeout_ns: cfg.closed_timeout.as_nanos() as u64,
            ring_size: cfg.ring_size,
            snat_port_min: cfg.snat_ports.0,
            snat_port_max: cfg.snat_ports.1,
        };
        let mut config: Array<&mut MapData, GlobalConfig> = self.map_mut(names::CONFIG)?;
        config
            .set(0, global, 0)
            .map_err(|source| DataplaneError::Map {
                map: names::CONFIG,
                source,
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
        let mut map: Array<&mut MapData, Backend> = self.map_mut(names::BACKENDS)?;
        map.set(id, value, 0).map_err(|source| DataplaneError::Map {
            map: names::BACKENDS,
            source,
        })
    }

    /// Empties backend slot `id`: flows still pointing at it are re-balanced.
    pub fn clear_backend(&mut self, id: u32) -> Result<(), DataplaneError> {
        let mut map: Array<&mut MapData, Backend> = self.map_mut(names::BACKENDS)?;
        map.set(id, Backend::default(), 0)
            .map_err(|source| DataplaneError::Map {
                map: names::BACKENDS,
                source,
            })
    }

    /// Zeroes the traffic counters of a backend (`service == false`) or service slot
    /// about to be reused, so a new backend does not inherit an old one's totals.
    pub fn reset_counters(&mut self, service: bool, id: u32) -> Result<(), DataplaneError> {
        let name = if service {
            names::SERVICE_STATS
        } else {
            names::BACKEND_STATS
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Map {
            map: name,
            source: MapError::IoError(e),
        })?;
        let zeros =
            PerCpuValues::try_from(vec![TrafficCounters::default(); cpus]).map_err(|e| {
                DataplaneError::Map {
                    map: name,
                    source: MapError::IoError(e),
                }
            })?;
        let mut map: PerCpuArray<&mut MapData, TrafficCounters> = self.map_mut(name)?;
        map.set(id, zeros, 0)
            .map_err(|source| DataplaneError::Map { map: name, source })
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
        mode: u32,
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
                    .map_err(|source| DataplaneError::Map {
                        map: names::MAGLEV,
                        source,
                    })?;
            }
        }
        let value = Service {
            id: service_id,
            table_offset: offset,
            mode,
            _pad: 0,
        };
        let mut services: HashMap<&mut MapData, VipKey, Service> = self.map_mut(names::SERVICES)?;
        services
            .insert(vip_key(vip), value, 0)
            .map_err(|source| DataplaneError::Map {
                map: names::SERVICES,
                source,
            })?;
        Ok(half)
    }

    /// Steers connections to a proxy VIP:port to the daemon's listener of its family
    /// (index 0: IPv4, 1: IPv6 in `PROXY_LISTENERS`).
    pub fn set_proxy_vip(&mut self, vip: SocketAddr) -> Result<(), DataplaneError> {
        let index = listener_index(vip);
        let mut vips: HashMap<&mut MapData, VipKey, u32> = self.map_mut(names::PROXY_VIPS)?;
        vips.insert(vip_key(vip), index, 0)
            .map_err(|source| DataplaneError::Map {
                map: names::PROXY_VIPS,
                source,
            })
    }

    pub fn remove_proxy_vip(&mut self, vip: SocketAddr) -> Result<(), DataplaneError> {
        let mut vips: HashMap<&mut MapData, VipKey, u32> = self.map_mut(names::PROXY_VIPS)?;
        match vips.remove(&vip_key(vip)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DataplaneError::Map {
                map: names::PROXY_VIPS,
                source,
            }),
        }
    }

    /// Registers the proxy listeners and attaches the sk_lookup program to this
    /// network namespace, so connections to proxy VIPs land on them. The link lives as
    /// long as the object (detached when the daemon exits).
    pub fn attach_lookup(
        &mut self,
        v4: &std::net::TcpListener,
        v6: Option<&std::net::TcpListener>,
    ) -> Result<(), DataplaneError> {
        {
            let mut socks: aya::maps::SockMap<&mut MapData> =
                self.map_mut(names::PROXY_LISTENERS)?;
            let map_err = |source| DataplaneError::Map {
                map: names::PROXY_LISTENERS,
                source,
            };
            socks.set(0, v4, 0).map_err(map_err)?;
            if let Some(v6) = v6 {
                socks.set(1, v6, 0).map_err(map_err)?;
            }
        }
        let netns =
            std::fs::File::open("/proc/self/ns/net").map_err(|source| DataplaneError::Program {
                program: names::PROG_LOOKUP,
                source: Box::new(ProgramError::IOError(source)),
            })?;
        let prog: &mut aya::programs::SkLookup = self
            .ebpf
            .program_mut(names::PROG_LOOKUP)
            .ok_or(DataplaneError::MissingProgram(names::PROG_LOOKUP))?
            .try_into()
            .map_err(|source| DataplaneError::Program {
                program: names::PROG_LOOKUP,
                source: Box::new(source),
            })?;
        let wrap = |source| DataplaneError::Program {
            program: names::PROG_LOOKUP,
            source: Box::new(source),
        };
        prog.load().map_err(wrap)?;
        prog.attach(netns).map_err(wrap)?;
        info!(
            "attached sk_lookup program {} to this network namespace",
            names::PROG_LOOKUP
        );
        Ok(())
    }

    /// The sockmap splice engine's maps, with `lb_splice` attached (once per daemon).
    pub fn splice_maps(&mut self) -> Result<crate::proxy::splice::SpliceMaps, DataplaneError> {
        crate::proxy::splice::SpliceMaps::load(&mut self.ebpf).map_err(DataplaneError::Splice)
    }

    /// Stops matching `vip`: its packets go to the kernel from now on.
    pub fn remove_service(&mut self, vip: SocketAddr) -> Result<(), DataplaneError> {
        let mut services: HashMap<&mut MapData, VipKey, Service> = self.map_mut(names::SERVICES)?;
        match services.remove(&vip_key(vip)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DataplaneError::Map {
                map: names::SERVICES,
                source,
            }),
        }
    }

    /// Attaches the program to every interface. On any failure the ones already attached
    /// are detached (by dropping `self`), so a failed start leaves nothing behind.
    pub fn attach(
        &mut self,
        ifaces: &[String],
        choice: XdpModeChoice,
    ) -> Result<(), DataplaneError> {
        // Resolve every name first: a typo in the last --iface must not leave the first attached.
        let mut resolved = Vec::new();
        for iface in ifaces {
            let idx = sys::ifindex(iface).map_err(|source| DataplaneError::UnknownIface {
                iface: iface.clone(),
                source,
            })?;
            resolved.push((iface.clone(), idx));
        }
        let prog = lb_program(&mut self.ebpf)?;
        for (iface, ifindex) in resolved {
            let (link, mode) = match choice {
                XdpModeChoice::Skb => (prog.attach_to_if_index(ifindex, XdpMode::Skb), "skb"),
                XdpModeChoice::Native => {
                    (prog.attach_to_if_index(ifindex, XdpMode::Driver), "native")
                }
                XdpModeChoice::Auto => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
                    Ok(l) => (Ok(l), "native"),
                    Err(e) => {
                        warn!(iface = %iface, cause = %e, "native XDP attach failed; falling back to skb (generic) mode, which is slower");
                        (prog.attach_to_if_index(ifindex, XdpMode::Skb), "skb")
                    }
                },
            };
            let link = link.map_err(|source| DataplaneError::Attach {
                iface: iface.clone(),
                mode,
                source: Box::new(source),
                hint: if mode == "native" {
                    "the driver may lack native XDP, or another XDP program is attached (`ip link show`); try --xdp-mode skb"
                } else {
                    "another XDP program may be attached (`ip link show`), or the kernel lacks XDP"
                },
            })?;
            info!(iface = %iface, ifindex, mode, "attached XDP program {}", names::PROG_LB);
            self.links.push(link);
            self.attachments.push(Attachment {
                iface,
                ifindex,
                mode: mode.into(),
            });
        }
        Ok(())
    }

    /// What is wrong with the attachments, if anything: an interface that is gone or
    /// was re-created, or fewer XDP links running the program than interfaces.
    pub fn attachment_problems(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.attachments.is_empty() {
            problems.push("not attached".to_string());
        }
        for a in &self.attachments {
            match sys::ifindex(&a.iface) {
                Ok(i) if i == a.ifindex => {}
                Ok(i) => problems.push(format!(
                    "{} has ifindex {i} now, not {}: re-created without the program",
                    a.iface, a.ifindex
                )),
                Err(e) => problems.push(format!("{}: {e}", a.iface)),
            }
        }
        let prog_id = lb_program(&mut self.ebpf)
            .ok()
            .and_then(|p| p.info().ok())
            .map(|i| i.id());
        let links = aya::programs::loaded_links()
            .filter_map(Result::ok)
            .filter(|l| Some(l.program_id()) == prog_id)
            .count();
        if links < self.attachments.len() {
            problems.push(format!(
                "{links} XDP links run the program, {} expected",
                self.attachments.len()
            ));
        }
        problems
    }

    /// Kernel ids of the program's maps, for `lb stats` in another process.
    pub fn map_ids(&self) -> BTreeMap<String, u32> {
        self.ebpf
            .maps()
            .filter_map(|(name, map)| {
                let data: &MapData = match map {
                    aya::maps::Map::Array(d)
                    | aya::maps::Map::HashMap(d)
                    | aya::maps::Map::LruHashMap(d)
                    | aya::maps::Map::PerCpuArray(d)
                    | aya::maps::Map::DevMapHash(d) => d,
                    _ => return None,
                };
                data.info().ok().map(|i| (name.to_string(), i.id()))
            })
            .collect()
    }

    /// Sum of a global counter over all CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        self.ebpf
            .map(lb_common::maps::names::COUNTERS)
            .and_then(|m| aya::maps::PerCpuArray::<&MapData, u64>::try_from(m).ok())
            .and_then(|a| a.get(&index, 0).ok())
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// The loaded object: for tests that run the program with BPF_PROG_TEST_RUN and read
    /// its maps after provisioning them through the writers above.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        T::try_from(map).map_err(|source| DataplaneError::Map { map: name, source })
    }

    /// Detaches from every interface and removes the pins: a clean shutdown leaves
    /// nothing behind. (Dropping without this also detaches, but keeps the pins.)
    pub fn shutdown(&mut self) {
        if let Ok(prog) = lb_program(&mut self.ebpf) {
            for (link, a) in self.links.drain(..).zip(&self.attachments) {
                match prog.detach(link) {
                    Ok(()) => info!(iface = %a.iface, "detached XDP program"),
                    Err(e) => warn!(iface = %a.iface, cause = %e, "detaching XDP program failed"),
                }
            }
        }
        if let Some(dir) = self.pin_dir.take() {
            pin::remove(&dir);
            info!(dir = %dir.display(), "removed pinned flow tables");
        }
    }
}

/// Index of the proxy listener of the VIP's family in `PROXY_LISTENERS`.
fn listener_index(vip: SocketAddr) -> u32 {
    if vip.is_ipv4() { 0 } else { 1 }
}

/// The SERVICES key of a VIP.
fn vip_key(vip: SocketAddr) -> VipKey {
    let (addr, family) = ip_to_words(vip.ip());
    VipKey {
        addr,
        port: vip.port().to_be(),
        proto: m::PROTO_TCP,
        family,
    }
}

/// The load-balancing program in the object.
fn lb_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    ebpf.program_mut(names::PROG_LB)
        .ok_or(DataplaneError::MissingProgram(names::PROG_LB))?
        .try_into()
        .map_err(|source| DataplaneError::Program {
            program: names::PROG_LB,
            source: Box::new(source),
        })
}

/// A reused pin must match this run's sizes: aya opens a pinned map as it is.
fn check_pinned_sizes(
    ebpf: &Ebpf,
    max_flows: u32,
    dir: &Path,
    reused: &[&'static str],
) -> Result<(), DataplaneError> {
    for (map, path) in pin::paths(dir) {
        let info = match ebpf.map(map) {
            Some(aya::maps::Map::LruHashMap(d)) => d.info(),
            _ => return Err(DataplaneError::MissingMap(map)),
        }
        .map_err(|source| DataplaneError::Map { map, source })?;
        if info.max_entries() != max_flows {
            return Err(DataplaneError::PinnedSize {
                path,
                entries: info.max_entries(),
                max_flows,
            });
        }
        if reused.contains(&map) {
            info!(map, path = %path.display(), "reusing pinned flow table: established flows keep their backends");
        }
    }
    Ok(())
}

/// The source address this host uses toward `dst`: the egress interface's address that
/// the routing table picks (a connected UDP socket sends nothing).
pub fn source_address_for(dst: SocketAddr) -> std::io::Result<IpAddr> {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(dst)?;
    Ok(sock.local_addr()?.ip())
}
