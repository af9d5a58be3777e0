//! The only code that touches the kernel's side of lb: it loads the eBPF object
//! ([`load`]), writes the maps ([`maps`], and the splice engine's socket hashes in
//! [`splice`], with kernel field offsets from [`kernel_btf`]), attaches the programs
//! ([`attach`]) and reads back what an earlier daemon left ([`adopt`]). Everything that
//! must outlive the daemon is pinned in the state directory ([`state`]): dropping a
//! [`Dataplane`] leaves the data path running.

pub mod adopt;
mod attach;
mod carry;
pub mod ebpf_log;
mod kernel_btf;
mod load;
mod maps;
pub use maps::{Forwarding, resolve_iface};
pub mod neigh;
pub mod object;
pub mod runtime;
pub mod splice;
pub mod state;

pub use splice::SpliceMaps;

use aya::Ebpf;
use aya::EbpfError;
use aya::maps::MapData;
use aya::maps::MapError;
use aya::programs::{ProgramError, SchedClassifier, Xdp};
use lb_common::maps::names;
use state::StateDir;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;

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
    #[error(
        "attaching {} to {iface} (TC ingress, TCX): {source}\nhint: TCX needs Linux 6.6 or later",
        names::PROG_NEIGH
    )]
    AttachNeigh {
        iface: String,
        source: Box<ProgramError>,
    },
    #[error("writing map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("reading /dev/urandom for the hand-off mark: {0}")]
    Random(#[source] std::io::Error),
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
    State(#[from] state::StateError),
    #[error("the state directory: {0}")]
    StateIo(#[source] std::io::Error),
    #[error("pinning {what} at {path}: {source}")]
    PinLink {
        what: String,
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("kernel field offsets for {}: {source}", names::PROG_SPLICE)]
    KernelBtf {
        #[from]
        source: kernel_btf::BtfError,
    },
    #[error("sockmap splice engine: {0} (try --splice pipe)")]
    Splice(#[source] Box<DataplaneError>),
    #[error(
        "pinned map {path} has {entries} entries but {flags} size it at {wanted} in this run: start with the values the running state was made with, or run `lb down` first (which drops every flow)"
    )]
    PinnedSize {
        path: PathBuf,
        entries: u32,
        wanted: u32,
        flags: &'static str,
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
    state: StateDir,
    pub attachments: Vec<Attachment>,
}

impl Dataplane {
    /// The loaded object: for tests that run the program with BPF_PROG_TEST_RUN and read
    /// its maps after provisioning them through the writers.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        T::try_from(map).map_err(map_error(name))
    }
}

/// The kernel side of any map type lb pins or reads.
fn map_data(map: &aya::maps::Map) -> Option<&MapData> {
    match map {
        aya::maps::Map::Array(d)
        | aya::maps::Map::HashMap(d)
        | aya::maps::Map::LruHashMap(d)
        | aya::maps::Map::PerCpuArray(d)
        | aya::maps::Map::DevMapHash(d)
        | aya::maps::Map::LpmTrie(d)
        | aya::maps::Map::RingBuf(d)
        | aya::maps::Map::SockHash(d) => Some(d),
        _ => None,
    }
}

/// The load-balancing program in the object.
fn lb_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    ebpf.program_mut(names::PROG_LB)
        .ok_or(DataplaneError::MissingProgram(names::PROG_LB))?
        .try_into()
        .map_err(program_error(names::PROG_LB))
}

/// The TC program that sends what the XDP program hands off for want of a neighbour.
fn neigh_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DataplaneError> {
    ebpf.program_mut(names::PROG_NEIGH)
        .ok_or(DataplaneError::MissingProgram(names::PROG_NEIGH))?
        .try_into()
        .map_err(program_error(names::PROG_NEIGH))
}

/// The error of a failed write to (or open of) `map`.
fn map_error(map: &'static str) -> impl Fn(MapError) -> DataplaneError + Copy {
    move |source| DataplaneError::Map { map, source }
}

/// The error of a failed step (load, attach, ...) of `program`.
fn program_error(program: &'static str) -> impl Fn(ProgramError) -> DataplaneError + Copy {
    move |source| DataplaneError::Program {
        program,
        source: Box::new(source),
    }
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
