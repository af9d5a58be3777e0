//! The XDP program alone under BPF_PROG_TEST_RUN: frames in, action and frame out, no
//! traffic on any wire. The maps are provisioned through lb-user's own [`Dataplane`]
//! writers, loaded from a config file's text, as the daemon's control plane does, so a
//! key-encoding bug in those writers fails these tests too.
//!
//! Each [`TestRun`] has its own namespace (so `bpf_fib_lookup` finds routes and permanent
//! neighbours), entered on the calling thread: `lb0` faces the backends, `lb1` the clients.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp};
use lb_common::addr::{ip_bytes, ip_to_words};
use lb_common::hash::{backend_key, flow_hash};
use lb_common::maglev::MaglevBackend;
use lb_common::maps::{
    BACKEND_DOWN, BACKEND_DRAINING, BACKEND_EMPTY, BACKEND_UP, Backend, Clock, FLOW_ESTABLISHED,
    FLOW_REPLIED, FlowKey, FlowState, GlobalConfig, MAX_BACKENDS, MODE_DNAT, MODE_DSR, MODE_NAT,
    MODE_PROXY, PROTO_TCP, ReverseNat, Service, TrafficCounters, VipKey, names,
};
use lb_common::model::Model;
use lb_common::snat_probe::Probe;
use lb_user::config::{Config, FlagSettings};
use lb_user::dataplane::{Dataplane, Forwarding};

use crate::netns::Netns;
use crate::packet::{Packet, flags};
use crate::sys;

/// The program's counters by name, and how many there are: the one place the kit names
/// lb-common's counter table.
pub mod counter {
    pub use lb_common::counters::{
        DROP_DENIED, DROP_FRAG_NEEDED, DROP_MALFORMED, DROP_NO_BACKEND, DROP_NO_NEIGH,
        DROP_NO_ROUTE, DROP_NO_TX_PORT, DROP_SOURCE_RATE_LIMITED, DROP_TOO_BIG, FWD_ICMP, FWD_IN,
        FWD_OUT, NUM_COUNTERS, PASS, PASS_FRAGMENT, PASS_NO_NEIGH_IN, PASS_NO_NEIGH_OUT,
        PASS_PROXY,
    };
}

/// What the program decided for a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Drop,
    Pass,
    Tx,
    Redirect,
}

impl Action {
    fn from_xdp(code: u32) -> Action {
        match code {
            1 => Action::Drop,
            2 => Action::Pass,
            3 => Action::Tx,
            4 => Action::Redirect,
            other => panic!("XDP action {other} is none the program may return"),
        }
    }
}

pub const LB0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa0];
pub const LB1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc2];
pub const BACKEND_MACS: [[u8; 6]; 2] = [[0x02, 0, 0, 0, 0, 0x10], [0x02, 0, 0, 0, 0, 0x11]];

pub const RING: u32 = 13;
pub const SNAT_MIN: u16 = 40000;
pub const SNAT_MAX: u16 = 40999;
pub const VIP_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
pub const CLIENT_PORT: u16 = 12345;
/// Sequence number of every client segment [`Plan::syn`] and [`Plan::from_client`] make.
pub const SEQ: u32 = 0x1000_0000;
/// Acknowledgment number of every segment with ACK they make (0 without ACK).
pub const ACK_NO: u32 = 0x2000_0000;

/// One address family's service in the namespace: its VIP, a client, the SNAT address
/// and two backends, with the slot ids the daemon would give them.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub vip: IpAddr,
    /// The VIP's port: [`VIP_PORT`] but where a test needs another.
    pub vip_port: u16,
    pub client: IpAddr,
    pub snat: IpAddr,
    pub backends: [IpAddr; 2],
    pub service: u32,
    pub ids: [u32; 2],
}

pub fn plan4() -> Plan {
    Plan {
        vip: [198, 18, 2, 1].into(),
        vip_port: VIP_PORT,
        client: [198, 18, 1, 2].into(),
        snat: [198, 18, 0, 1].into(),
        backends: [[198, 18, 0, 10].into(), [198, 18, 0, 11].into()],
        service: 0,
        ids: [0, 1],
    }
}

pub fn plan6() -> Plan {
    let v6 = |s: &str| s.parse::<IpAddr>().expect("literal");
    Plan {
        vip: v6("fd00:2::1"),
        vip_port: VIP_PORT,
        client: v6("fd00:1::2"),
        snat: v6("fd00::1"),
        backends: [v6("fd00::10"), v6("fd00::11")],
        service: 1,
        ids: [2, 3],
    }
}

impl Plan {
    pub fn vip_addr(&self) -> SocketAddr {
        SocketAddr::new(self.vip, self.vip_port)
    }

    pub fn backend_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.backends[i], BACKEND_PORT)
    }

    /// Which backend of the plan `addr` is.
    pub fn backend_index(&self, addr: IpAddr) -> Option<usize> {
        self.backends.iter().position(|&b| b == addr)
    }

    /// A client → VIP SYN with TCP options and a payload, so checksums cover real data.
    pub fn syn(&self) -> Packet {
        self.from_client(CLIENT_PORT, flags::SYN)
    }

    /// A client → VIP segment of the connection from `sport`, as received on `lb1`.
    pub fn from_client(&self, sport: u16, tcp_flags: u8) -> Packet {
        Packet {
            eth_dst: LB1_MAC,
            eth_src: CLIENT_MAC,
            // The IPv4-only and IPv6-only fields as the decoder reads them back.
            ip_id: if self.vip.is_ipv4() { 0x1234 } else { 0 },
            df: self.vip.is_ipv4(),
            flow_label: if self.vip.is_ipv4() { 0 } else { 0x12345 },
            seq: SEQ,
            ack: if tcp_flags & flags::ACK != 0 {
                ACK_NO
            } else {
                0
            },
            tcp_options: vec![2, 4, 0x05, 0xb4, 1, 1, 4, 2], // MSS 1460, NOP, NOP, SACK ok
            payload: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            ..Packet::tcp(self.client, sport, self.vip, self.vip_port, tcp_flags)
        }
    }

    /// A backend `i` → SNAT address reply to SNAT port `snat_port`, as received on `lb0`,
    /// with the client segment's numbers and options.
    pub fn from_backend(&self, i: usize, snat_port: u16, tcp_flags: u8) -> Packet {
        Packet {
            eth_dst: LB0_MAC,
            eth_src: BACKEND_MACS[i],
            src: self.backends[i],
            dst: self.snat,
            sport: BACKEND_PORT,
            dport: snat_port,
            payload: b"HTTP/1.0 200 OK\r\n\r\n".to_vec(),
            ..self.from_client(CLIENT_PORT, tcp_flags)
        }
    }

    /// The flow key of the client's connection from `sport`.
    pub fn client_key(&self, sport: u16) -> FlowKey {
        key(self.client, self.vip, sport, self.vip_port)
    }

    /// The reverse NAT key of backend `i`'s replies to SNAT port `snat_port`.
    pub fn reverse_key(&self, i: usize, snat_port: u16) -> FlowKey {
        self.reverse_key_on(i, self.snat, snat_port)
    }

    /// The reverse NAT key of backend `i`'s replies to SNAT address `snat`, port
    /// `snat_port`.
    pub fn reverse_key_on(&self, i: usize, snat: IpAddr, snat_port: u16) -> FlowKey {
        key(self.backends[i], snat, BACKEND_PORT, snat_port)
    }

    /// The same plan with both backends at `addr` (e.g. one without a route).
    pub fn with_backends_at(&self, addr: IpAddr) -> Plan {
        Plan {
            backends: [addr, addr],
            ..*self
        }
    }

    fn members(&self, which: &[usize]) -> Vec<MaglevBackend> {
        which
            .iter()
            .map(|&i| MaglevBackend {
                key: backend_key(&ip_bytes(&self.backends[i]), BACKEND_PORT),
                weight: 1,
                id: self.ids[i],
            })
            .collect()
    }
}

/// A TCP flow key as the program stores it (ports in network order).
pub fn key(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> FlowKey {
    let (s, family) = ip_to_words(src);
    let (d, _) = ip_to_words(dst);
    FlowKey {
        src: s,
        dst: d,
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto: PROTO_TCP,
        family,
        _pad: [0; 2],
    }
}

/// The first SNAT port the program tries for the client → VIP flow `k` (on the backend's
/// own SNAT address).
pub fn first_snat_port(k: &FlowKey) -> u16 {
    snat_candidates(k, 1)[0]
}

/// The first `n` SNAT ports the program tries for the flow `k`, in order (on the
/// backend's own SNAT address).
pub fn snat_candidates(k: &FlowKey, n: usize) -> Vec<u16> {
    let range = u32::from(SNAT_MAX - SNAT_MIN) + 1;
    let mut probe = Probe::new(flow_hash(k), 0, range);
    (0..n)
        .map(|_| {
            let port = SNAT_MIN + probe.at as u16;
            probe.advance();
            port
        })
        .collect()
}

/// The idle and closed timeouts as the config file writes them.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub idle: &'static str,
    pub closed: &'static str,
    pub half_open: &'static str,
}

pub const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    idle: "300s",
    closed: "10s",
    half_open: "5s",
};

/// The global settings a test may change after loading, as a reload does.
#[derive(Clone, Copy, Debug)]
struct Reloadable {
    timeouts: Timeouts,
    /// `source_rate` and `source_burst`; `None`: the key is left out.
    source_limit: (Option<u32>, Option<u32>),
    /// IPv4 SNAT addresses after the plan's own (a restart setting for the daemon; the
    /// bed writes it as the daemon does at start).
    more_snat4: &'static [Ipv4Addr],
    /// `syn_cookies`; `None`: the key is left out (the default, auto).
    syn_cookies: Option<&'static str>,
    /// `syn_cookie_rate`; `None`: the key is left out (the default).
    syn_cookie_rate: Option<u32>,
}

/// The config file of the namespace's LB: its interfaces, timeouts, source limit, ring
/// and SNAT ports, and the two plans' services.
fn config_text(ifaces: &[&str], r: Reloadable) -> String {
    let t = r.timeouts;
    let (rate, burst) = r.source_limit;
    let limit = [("source_rate", rate), ("source_burst", burst)]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k} = {v}\n")))
        .chain(r.syn_cookies.map(|m| format!("syn_cookies = {m:?}\n")))
        .chain(
            r.syn_cookie_rate
                .map(|n| format!("syn_cookie_rate = {n}\n")),
        )
        .collect::<String>();
    let (p4, p6) = (plan4(), plan6());
    let list = |v: Vec<String>| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let service = |name: &str, p: &Plan| {
        format!(
            "[[service]]\nname = {name:?}\nvip = \"{}\"\nbackends = [{}]\n",
            p.vip_addr(),
            list((0..2).map(|i| p.backend_addr(i).to_string()).collect())
        )
    };
    format!(
        "iface = [{}]\nring_size = {RING}\nmax_flows = 4096\nmax_conns = 64\nadmin = \"off\"\n\
         idle_timeout = {:?}\nclosed_timeout = {:?}\nhalf_open_timeout = {:?}\nsnat_ports = \"{SNAT_MIN}-{SNAT_MAX}\"\n\
         snat_ip = [{}]\n{limit}\n{}\n{}",
        list(ifaces.iter().map(|s| s.to_string()).collect()),
        t.idle,
        t.closed,
        t.half_open,
        list(
            [p4.snat, p6.snat]
                .into_iter()
                .chain(r.more_snat4.iter().map(|a| IpAddr::V4(*a)))
                .map(|a| a.to_string())
                .collect()
        ),
        service("web4", &p4),
        service("web6", &p6),
    )
}

/// Parses config text the way `lb --config FILE` does.
pub fn config_from_text(text: &str) -> Result<Config> {
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "lb-test-run-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let cfg = Config::from_flags(&FlagSettings {
        config: Some(path.clone()),
        ..FlagSettings::default()
    });
    let _ = std::fs::remove_file(&path);
    cfg.with_context(|| format!("config:\n{text}"))
}

/// The flow entry [`TestRun::live_flow_holding`] writes for the flow holding SNAT port
/// `port` toward backend `i` of `p`: established, replied, last seen far in the future of
/// the program's clock.
pub fn live_holder(p: &Plan, i: usize, port: u16) -> FlowState {
    FlowState {
        last_seen_ns: u64::MAX / 2,
        flags: FLOW_REPLIED | FLOW_ESTABLISHED,
        backend: p.ids[i] as u16,
        snat_port: port.to_be(),
        ..FlowState::default()
    }
}

/// The reverse NAT entry of flow `flow` toward backend `i` of `p`.
pub fn reverse_entry(p: &Plan, i: usize, flow: FlowKey) -> ReverseNat {
    ReverseNat {
        flow,
        backend: p.ids[i] as u16,
        syn_acks: 0,
        service_id: p.service,
    }
}

/// The loaded program in its own namespace, and what has been provisioned.
pub struct TestRun {
    dp: Dataplane,
    ifaces: Vec<&'static str>,
    reloadable: Reloadable,
    /// Live half of each service's Maglev tables, as control tracks it.
    live_half: BTreeMap<u32, u32>,
    pub lb0: u32,
    pub lb1: u32,
    // Declared last so it is dropped last: the namespace outlives program and maps.
    ns: Netns,
}

impl Drop for TestRun {
    /// The object's maps are pinned in the namespace's state directory on the host's
    /// bpffs, as the daemon's are: removed here, or they would outlive the test.
    fn drop(&mut self) {
        let _ = lb_user::dataplane::state::remove(self.dp.state().root());
    }
}

impl TestRun {
    /// The namespace and the program, with both interfaces as redirect ports and the
    /// default timeouts; no service provisioned yet.
    pub fn new() -> TestRun {
        TestRun::with_ifaces(&["lb0", "lb1"])
    }

    /// As [`TestRun::new`], with only `ifaces` given to the LB (so only they are
    /// redirect ports).
    pub fn with_ifaces(ifaces: &[&'static str]) -> TestRun {
        crate::require_root().expect("root");
        let ns = Netns::new("xdp").expect("namespace");
        ns.veth("lb0", LB0_MAC, "be0").expect("veth lb0");
        ns.veth("lb1", LB1_MAC, "cl0").expect("veth lb1");
        ns.ip_batch(
            "addr add 198.18.0.1/24 dev lb0\n\
             addr add 198.18.1.1/24 dev lb1\n\
             addr add fd00::1/64 dev lb0 nodad\n\
             addr add fd00:1::1/64 dev lb1 nodad\n",
        )
        .expect("addresses");
        for p in [plan4(), plan6()] {
            for (b, mac) in p.backends.iter().zip(BACKEND_MACS) {
                ns.neighbour(*b, mac, "lb0").expect("backend neighbour");
            }
            ns.neighbour(p.client, CLIENT_MAC, "lb1")
                .expect("client neighbour");
        }
        ns.sysctl(&["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
            .expect("forwarding");
        ns.enter().expect("enter the namespace");
        let ifindex = |name| lb_user::sys::ifindex(name).expect("interface index");
        let (lb0, lb1) = (ifindex("lb0"), ifindex("lb1"));
        let reloadable = Reloadable {
            timeouts: DEFAULT_TIMEOUTS,
            source_limit: (None, None),
            more_snat4: &[],
            syn_cookies: None,
            syn_cookie_rate: None,
        };
        let cfg = config_from_text(&config_text(ifaces, reloadable)).expect("config");
        let mut dp = Dataplane::load(&cfg).expect("load the eBPF object (needs root)");
        dp.program_globals(&cfg).expect("program globals");
        TestRun {
            dp,
            ifaces: ifaces.to_vec(),
            reloadable,
            live_half: BTreeMap::new(),
            lb0,
            lb1,
            ns,
        }
    }

    /// The loaded object, for what the kit does not wrap (e.g. reading the log records).
    pub fn ebpf_mut(&mut self) -> &mut aya::Ebpf {
        self.dp.ebpf_mut()
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Reloads the timeouts from config text, as a daemon reload does.
    pub fn set_timeouts(&mut self, t: Timeouts) {
        self.reloadable.timeouts = t;
        self.reload_globals();
    }

    /// Reloads the per-source new-flow limit (`source_rate`, `source_burst` in the file)
    /// as a daemon reload does; `None` leaves the key out.
    pub fn set_source_limit(&mut self, rate: Option<u32>, burst: Option<u32>) {
        self.reloadable.source_limit = (rate, burst);
        self.reload_globals();
    }

    /// Reloads when SYN cookies answer (`syn_cookies` in the file: auto, always, off).
    pub fn set_syn_cookies(&mut self, mode: &'static str) {
        self.reloadable.syn_cookies = Some(mode);
        self.reload_globals();
    }

    /// Reloads the SYNs a second a VIP takes before `auto` answers them by cookie
    /// (`syn_cookie_rate` in the file).
    pub fn set_syn_cookie_rate(&mut self, rate: u32) {
        self.reloadable.syn_cookie_rate = Some(rate);
        self.reload_globals();
    }

    /// Gives `p`'s service the allowlist `ranges` (CIDRs) with `lb_common::maps::ACCESS_*`
    /// bits `access`, ranges first, as the daemon writes them.
    pub fn allow(&mut self, p: &Plan, ranges: &[&str], access: u8) {
        let ranges: Vec<lb_user::config::Cidr> =
            ranges.iter().map(|r| r.parse().expect("a CIDR")).collect();
        self.dp
            .allow(p.service, &ranges, true)
            .expect("write the allowlist");
        self.dp
            .set_access(p.vip_addr(), access)
            .expect("write the access bits");
    }

    /// Takes `ranges` (CIDRs) out of `p`'s service's allowlist.
    pub fn disallow(&mut self, p: &Plan, ranges: &[&str]) {
        let ranges: Vec<lb_user::config::Cidr> =
            ranges.iter().map(|r| r.parse().expect("a CIDR")).collect();
        self.dp
            .allow(p.service, &ranges, false)
            .expect("write the allowlist");
    }

    /// Sets `p`'s service's `lb_common::maps::ACCESS_*` bits.
    pub fn set_access(&mut self, p: &Plan, access: u8) {
        self.dp
            .set_access(p.vip_addr(), access)
            .expect("write the access bits");
    }

    /// Adds IPv4 SNAT addresses after the plan's own.
    pub fn set_more_snat4(&mut self, addrs: &'static [Ipv4Addr]) {
        self.reloadable.more_snat4 = addrs;
        self.reload_globals();
    }

    /// Writes the global settings and ports again with the daemon's start-up writer, as a
    /// daemon started over this one's pinned maps does.
    pub fn program_globals_again(&mut self) {
        let cfg = config_from_text(&config_text(&self.ifaces, self.reloadable)).expect("config");
        self.dp.program_globals(&cfg).expect("program globals");
    }

    fn reload_globals(&mut self) {
        let cfg = config_from_text(&config_text(&self.ifaces, self.reloadable)).expect("config");
        self.dp.set_globals(&cfg).expect("set the global settings");
    }

    // -- Provisioning by intent ---------------------------------------------------------

    /// A NAT service with both backends up whose table sends every new flow to backend
    /// `to` (as after the other one was taken out of the table).
    pub fn two_backends_up(&mut self, p: &Plan, to: usize) {
        self.service_with_backends(p);
        self.table_to(p, to);
    }

    /// A service of `mode` (`MODE_NAT` or `MODE_DNAT`) with both backends up and in
    /// its table.
    pub fn service_on_both(&mut self, p: &Plan, mode: u32) {
        self.service_with_backends(p);
        if mode == MODE_DNAT {
            self.dp.set_dnat_replies(true).expect("DNAT replies on");
        }
        self.install(p, mode, &[0, 1]);
    }

    /// A NAT service whose backends are up but whose table is empty: no backend to give
    /// a new connection, which is answered with a RST.
    pub fn no_backend_in_table(&mut self, p: &Plan) {
        self.service_with_backends(p);
        self.install(p, MODE_NAT, &[]);
    }

    /// A proxy service with both backends up: its packets go to the local stack.
    pub fn proxy_service(&mut self, p: &Plan) {
        self.service_with_backends(p);
        self.dp.set_proxy_vip(p.vip_addr()).expect("proxy VIP");
        self.install(p, MODE_PROXY, &[0, 1]);
    }

    /// A direct server return service (`encap`: `lb_common::encap::ENCAP_*`, `gue_port`
    /// host order) with both backends up and every new flow to backend `to`.
    pub fn dsr_service(&mut self, p: &Plan, encap: u8, gue_port: u16, to: usize) {
        self.service_with_backends(p);
        let f = Forwarding {
            mode: MODE_DSR,
            encap,
            gue_port,
            access: 0,
        };
        self.install_forwarding(p, f, &[to]);
    }

    /// Re-balances a DSR service: its table now names only backend `to`.
    pub fn table_to_dsr(&mut self, p: &Plan, encap: u8, gue_port: u16, to: usize) {
        let f = Forwarding {
            mode: MODE_DSR,
            encap,
            gue_port,
            access: 0,
        };
        self.install_forwarding(p, f, &[to]);
    }

    /// A destination NAT service with both backends up and every new flow to backend `to`.
    pub fn dnat_service(&mut self, p: &Plan, to: usize) {
        self.service_with_backends(p);
        self.dp.set_dnat_replies(true).expect("DNAT replies on");
        self.install(p, MODE_DNAT, &[to]);
    }

    /// Re-balances the service: its table now names only backend `to`.
    pub fn table_to(&mut self, p: &Plan, to: usize) {
        self.install(p, MODE_NAT, &[to]);
    }

    pub fn backend_up(&mut self, p: &Plan, i: usize) {
        self.write_backend(p, i, BACKEND_UP);
    }

    /// Backend `i` failed its checks; the table is left as it was (a stale one).
    pub fn backend_down(&mut self, p: &Plan, i: usize) {
        self.write_backend(p, i, BACKEND_DOWN);
    }

    /// Backend `from` failed its checks and control re-balanced: it is down and the
    /// table names only `to`.
    pub fn failed_over(&mut self, p: &Plan, from: usize, to: usize) {
        self.backend_down(p, from);
        self.table_to(p, to);
    }

    /// Backend `i` is being drained: its flows continue, it takes no new ones.
    pub fn backend_draining(&mut self, p: &Plan, i: usize) {
        self.write_backend(p, i, BACKEND_DRAINING);
    }

    /// Backend `i`'s slot id now stands for `addr` (removed, and the id given to a new
    /// backend).
    pub fn backend_id_reused(&mut self, p: &Plan, i: usize, addr: IpAddr) {
        self.write_backend(&p.with_backends_at(addr), i, BACKEND_UP);
    }

    /// Another client's live, established flow holds SNAT port `port` toward backend
    /// `i`: what the program itself writes for a flow it forwarded (there is no daemon
    /// writer).
    pub fn live_flow_holding(&mut self, p: &Plan, i: usize, port: u16, other: FlowKey) {
        self.flow_holding(p, i, port, other, live_holder(p, i, port));
    }

    /// As [`TestRun::live_flow_holding`], on SNAT address `snat`, index `idx` in the
    /// family's list (0 the plan's own).
    pub fn live_flow_holding_on(
        &mut self,
        p: &Plan,
        i: usize,
        (idx, snat): (u8, IpAddr),
        port: u16,
        other: FlowKey,
    ) {
        let held = reverse_entry(p, i, other);
        let mut map: HashMap<&mut MapData, FlowKey, ReverseNat> = self.map_mut(names::REVERSE_NAT);
        map.insert(p.reverse_key_on(i, snat, port), held, 0)
            .expect("reverse NAT entry");
        let live = FlowState {
            snat_idx: idx,
            ..live_holder(p, i, port)
        };
        self.flows_mut().insert(other, live, 0).expect("flow entry");
    }

    /// The flow `other`, in state `fs` (its backend and port are set here), holds SNAT
    /// port `port` toward backend `i`.
    pub fn flow_holding(&mut self, p: &Plan, i: usize, port: u16, other: FlowKey, fs: FlowState) {
        self.stale_reverse_entry(p, i, port, other);
        let fs = FlowState {
            backend: p.ids[i] as u16,
            snat_port: port.to_be(),
            ..fs
        };
        self.flows_mut().insert(other, fs, 0).expect("flow entry");
    }

    /// A reverse NAT entry for port `port` toward backend `i` whose flow `gone` is not
    /// (or no longer) in the flow table: the port may be taken over.
    pub fn stale_reverse_entry(&mut self, p: &Plan, i: usize, port: u16, gone: FlowKey) {
        let held = reverse_entry(p, i, gone);
        let mut map: HashMap<&mut MapData, FlowKey, ReverseNat> = self.map_mut(names::REVERSE_NAT);
        map.insert(p.reverse_key(i, port), held, 0)
            .expect("reverse NAT entry");
    }

    /// The flow `k` was evicted from its table (the flow table, or the half-open one), as
    /// the LRU does.
    pub fn flow_evicted(&mut self, k: FlowKey) {
        if self.flows_mut().remove(&k).is_err() {
            let mut half_open: HashMap<&mut MapData, FlowKey, FlowState> =
                self.map_mut(names::HALF_OPEN);
            half_open.remove(&k).expect("a flow entry to evict");
        }
    }

    fn service_with_backends(&mut self, p: &Plan) {
        self.dp
            .reset_counters(true, p.service)
            .expect("reset service counters");
        for i in 0..2 {
            self.dp
                .reset_counters(false, p.ids[i])
                .expect("reset backend counters");
            self.write_backend(p, i, BACKEND_UP);
        }
    }

    fn write_backend(&mut self, p: &Plan, i: usize, state: u8) {
        self.dp
            .set_backend(p.ids[i], p.service, p.backend_addr(i), p.snat, state)
            .expect("set backend");
    }

    fn install(&mut self, p: &Plan, mode: u32, members: &[usize]) {
        self.install_forwarding(
            p,
            Forwarding {
                mode,
                encap: 0,
                gue_port: 0,
                access: 0,
            },
            members,
        );
    }

    fn install_forwarding(&mut self, p: &Plan, forwarding: Forwarding, members: &[usize]) {
        let live = self.live_half.get(&p.service).copied().unwrap_or(1);
        let half = self
            .dp
            .install_table(
                p.service,
                p.vip_addr(),
                live,
                forwarding,
                &p.members(members),
            )
            .expect("install table");
        self.live_half.insert(p.service, half);
    }

    // -- Running ------------------------------------------------------------------------

    /// Runs one frame as if received on `ingress`; returns the action and output frame.
    pub fn run(&mut self, frame: &[u8], ingress: u32) -> (Action, Vec<u8>) {
        let (action, out, _) = self.run_program(names::PROG_LB, frame, ingress);
        (action, out)
    }

    /// Runs one frame through the object's program `name` as if received on `ingress`;
    /// returns the action, the output frame and the run's time as the kernel measured
    /// it (one run: the time includes reading its clock twice).
    pub fn run_program(
        &mut self,
        name: &str,
        frame: &[u8],
        ingress: u32,
    ) -> (Action, Vec<u8>, std::time::Duration) {
        run_xdp(self.loaded(name), frame, ingress)
    }

    /// The object's XDP program `name`, loaded (the daemon loads only its own programs,
    /// not the tests' `xdp_pass`).
    fn loaded(&mut self, name: &str) -> &Xdp {
        let prog: &mut Xdp = self
            .dp
            .ebpf_mut()
            .program_mut(name)
            .unwrap_or_else(|| panic!("{name} in the object"))
            .try_into()
            .unwrap_or_else(|_| panic!("{name} is XDP"));
        if prog.fd().is_err() {
            prog.load()
                .unwrap_or_else(|e| panic!("loading {name}: {e}"));
        }
        prog
    }

    /// Runs pairs of frames through `lb_xdp` at the same instant on two CPUs, as a flow's
    /// two directions do when both ends send at once: each pair's first frame from the
    /// client side on CPU 0, its second from the backend side on CPU 1, both threads
    /// released together by a spin barrier, pair after pair. Returns both actions of
    /// each pair.
    pub fn run_pairs_at_once(&mut self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Action, Action)> {
        let ingress = (self.lb1, self.lb0);
        self.run_at_once(pairs, ingress)
    }

    /// As [`run_pairs_at_once`](Self::run_pairs_at_once), both frames of each pair from
    /// the client side: two new connections whose SYNs the LB takes at once on two CPUs.
    pub fn run_client_pairs_at_once(
        &mut self,
        pairs: &[(Vec<u8>, Vec<u8>)],
    ) -> Vec<(Action, Action)> {
        let ingress = (self.lb1, self.lb1);
        self.run_at_once(pairs, ingress)
    }

    /// Runs each pair's first frame on CPU 0 as received on `ingress.0` and its second
    /// on CPU 1 as received on `ingress.1`, at the same instant, pair after pair.
    fn run_at_once(
        &mut self,
        pairs: &[(Vec<u8>, Vec<u8>)],
        ingress: (u32, u32),
    ) -> Vec<(Action, Action)> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(
            cpus >= 2,
            "running frames at once needs two CPUs, this machine has {cpus}"
        );
        let ns = self.ns.path();
        let ns = &ns;
        let prog = self.loaded(names::PROG_LB);
        let arrived = std::sync::atomic::AtomicUsize::new(0);
        let arrived = &arrived;
        let side = |cpu: usize, ingress: u32, second: bool| {
            move || {
                crate::sys::enter_netns(ns).expect("enter the namespace");
                crate::sys::pin_to_cpu(cpu).expect("sched_setaffinity");
                let mut actions = Vec::with_capacity(pairs.len());
                for (i, (first, then)) in pairs.iter().enumerate() {
                    arrived.fetch_add(1, Ordering::AcqRel);
                    while arrived.load(Ordering::Acquire) < 2 * (i + 1) {
                        std::hint::spin_loop();
                    }
                    let frame = if second { then } else { first };
                    actions.push(run_xdp(prog, frame, ingress).0);
                }
                actions
            }
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(side(0, ingress.0, false));
            let b = s.spawn(side(1, ingress.1, true));
            (
                a.join().expect("first frames' thread"),
                b.join().expect("second frames' thread"),
            )
        });
        a.into_iter().zip(b).collect()
    }

    /// Runs a frame from the client side.
    pub fn from_client(&mut self, frame: &[u8]) -> (Action, Vec<u8>) {
        self.run(frame, self.lb1)
    }

    /// Runs a frame from the backend side.
    pub fn from_backend(&mut self, frame: &[u8]) -> (Action, Vec<u8>) {
        self.run(frame, self.lb0)
    }

    /// Runs a frame from the client side and also returns the counters it bumped.
    pub fn run_counted(&mut self, frame: &[u8]) -> (Action, Vec<u8>, Vec<u32>) {
        let before = self.counters();
        let (action, out) = self.from_client(frame);
        let after = self.counters();
        let bumped = (0..counter::NUM_COUNTERS)
            .filter(|&i| after[i as usize] != before[i as usize])
            .collect();
        (action, out, bumped)
    }

    // -- Reading ------------------------------------------------------------------------

    /// A global counter summed over CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        self.dp.counter(index)
    }

    pub fn counters(&self) -> Vec<u64> {
        (0..counter::NUM_COUNTERS)
            .map(|i| self.counter(i))
            .collect()
    }

    /// The plan's service's traffic counters summed over CPUs.
    pub fn service_stats(&mut self, p: &Plan) -> TrafficCounters {
        self.traffic(names::SERVICE_STATS, p.service)
    }

    /// Backend `i`'s traffic counters summed over CPUs.
    pub fn backend_stats(&mut self, p: &Plan, i: usize) -> TrafficCounters {
        self.traffic(names::BACKEND_STATS, p.ids[i])
    }

    fn traffic(&mut self, map: &'static str, id: u32) -> TrafficCounters {
        let m: PerCpuArray<&mut MapData, TrafficCounters> = self.map_mut(map);
        let mut total = TrafficCounters::default();
        for v in m.get(&id, 0).expect("traffic counters").iter() {
            total.add(v);
        }
        total
    }

    /// Each CPU's cached clock reading (`CLOCK`), by CPU.
    pub fn clock_slots(&mut self) -> Vec<Clock> {
        let m: PerCpuArray<&mut MapData, Clock> = self.map_mut(names::CLOCK);
        m.get(&0, 0).expect("CLOCK").iter().copied().collect()
    }

    /// Writes each CPU's cached clock reading.
    pub fn set_clock_slots(&mut self, slots: Vec<Clock>) {
        let mut m: PerCpuArray<&mut MapData, Clock> = self.map_mut(names::CLOCK);
        let values = aya::maps::PerCpuValues::try_from(slots).expect("one slot per CPU");
        m.set(0, values, 0).expect("write CLOCK");
    }

    /// The flow entry of `k`, established or half-open.
    pub fn flow(&mut self, k: FlowKey) -> Option<FlowState> {
        self.flows_mut()
            .get(&k, 0)
            .ok()
            .or_else(|| self.half_open(k))
    }

    /// The entry of `k` in the flow table only (not the half-open one).
    pub fn flow_table_entry(&mut self, k: FlowKey) -> Option<FlowState> {
        self.flows_mut().get(&k, 0).ok()
    }

    /// The entry of `k` in the half-open flow table only.
    pub fn half_open(&mut self, k: FlowKey) -> Option<FlowState> {
        let map: HashMap<&mut MapData, FlowKey, FlowState> = self.map_mut(names::HALF_OPEN);
        map.get(&k, 0).ok()
    }

    pub fn reverse(&mut self, k: FlowKey) -> Option<ReverseNat> {
        let map: HashMap<&mut MapData, FlowKey, ReverseNat> = self.map_mut(names::REVERSE_NAT);
        map.get(&k, 0).ok()
    }

    /// The SNAT port of the client's flow from `sport`.
    pub fn snat_port(&mut self, p: &Plan, sport: u16) -> u16 {
        let f = self
            .flow(p.client_key(sport))
            .unwrap_or_else(|| panic!("no flow entry for client port {sport}"));
        u16::from_be(f.snat_port)
    }

    /// How many flows the flow tables hold (established and half-open; a half-open entry
    /// copied to the flow table counts once), and how many entries the reverse NAT table.
    pub fn table_sizes(&mut self) -> (usize, usize) {
        let established = self.flows_mut().keys().count();
        let half: HashMap<&mut MapData, FlowKey, FlowState> = self.map_mut(names::HALF_OPEN);
        let half_open = half
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, fs)| fs.flags & FLOW_ESTABLISHED == 0)
            .count();
        let rev: HashMap<&mut MapData, FlowKey, ReverseNat> = self.map_mut(names::REVERSE_NAT);
        (established + half_open, rev.keys().count())
    }

    /// What the daemon wrote that the program reads for `nat` services, as the reference
    /// model's inputs: the global settings, the services and their live Maglev tables,
    /// the backends and the extra SNAT addresses; its flow tables empty.
    pub fn model(&mut self) -> Model {
        let cfg: Array<&mut MapData, GlobalConfig> = self.map_mut(names::CONFIG);
        let cfg = cfg.get(&0, 0).expect("global settings");
        let services: HashMap<&mut MapData, VipKey, Service> = self.map_mut(names::SERVICES);
        let services: std::collections::HashMap<VipKey, Service> =
            services.iter().map(|e| e.expect("service")).collect();
        let maglev: Array<&mut MapData, u32> = self.map_mut(names::MAGLEV);
        let mut table = std::collections::HashMap::new();
        for svc in services.values() {
            for slot in 0..cfg.ring_size {
                let i = svc.table_offset + slot;
                table.insert(i, maglev.get(&i, 0).expect("Maglev slot"));
            }
        }
        let backends: Array<&mut MapData, Backend> = self.map_mut(names::BACKENDS);
        let backends = (0..MAX_BACKENDS)
            .map(|id| (id, backends.get(&id, 0).expect("backend slot")))
            .filter(|(_, b)| b.state != BACKEND_EMPTY)
            .collect();
        let addrs: Array<&mut MapData, [u32; 4]> = self.map_mut(names::SNAT_ADDRS);
        let snat_addrs = (0..addrs.len())
            .map(|i| (i, addrs.get(&i, 0).expect("SNAT address")))
            .filter(|(_, a)| *a != [0; 4])
            .collect();
        Model {
            cfg,
            services,
            maglev: table,
            backends,
            snat_addrs,
            ..Model::default()
        }
    }

    /// The whole flow table, half-open table and reverse NAT table.
    pub fn flow_tables(&mut self) -> FlowTables {
        fn all<V: aya::Pod>(
            m: HashMap<&mut MapData, FlowKey, V>,
        ) -> std::collections::HashMap<FlowKey, V> {
            m.iter().filter_map(|e| e.ok()).collect()
        }
        FlowTables {
            flows: all(self.flows_mut()),
            half_open: all(self.map_mut(names::HALF_OPEN)),
            reverse: all(self.map_mut(names::REVERSE_NAT)),
        }
    }

    /// Makes flow `k`'s entries (established and half-open) `by` ns older, as if no
    /// packet of it had come for that long.
    pub fn age_flow(&mut self, k: FlowKey, by: u64) {
        for name in [names::FLOWS, names::HALF_OPEN] {
            let mut m: HashMap<&mut MapData, FlowKey, FlowState> = self.map_mut(name);
            if let Ok(mut fs) = m.get(&k, 0) {
                fs.last_seen_ns = fs.last_seen_ns.saturating_sub(by);
                m.insert(k, fs, 0).expect("flow entry");
            }
        }
        // The flow's reverse entries' SYN-ACK time (`lb_common::flow::request_held`).
        let mut m: HashMap<&mut MapData, FlowKey, ReverseNat> = self.map_mut(names::REVERSE_NAT);
        let aged: Vec<(FlowKey, ReverseNat)> = m
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, r)| r.flow == k && r.syn_acks != 0)
            .collect();
        for (key, mut r) in aged {
            r.syn_acks = lb_common::flow::SynAcks::aged(r.syn_acks, by);
            m.insert(key, r, 0).expect("reverse entry");
        }
    }

    /// Removes `p`'s service, as the daemon does.
    pub fn remove_service(&mut self, p: &Plan) {
        self.dp
            .remove_service(p.vip_addr())
            .expect("remove the service");
        self.live_half.remove(&p.service);
    }

    /// Runs `frame` through the TC companion `lb_neigh` as if it came in at TC ingress:
    /// its return value (`TC_ACT_REDIRECT`, 7, when it sends the frame through the
    /// kernel's neighbour resolution; a test run does not send it).
    pub fn run_neigh(&mut self, frame: &[u8]) -> i32 {
        let prog: &SchedClassifier = self
            .ebpf_mut()
            .program(names::PROG_NEIGH)
            .expect("lb_neigh in the object")
            .try_into()
            .expect("lb_neigh is a classifier");
        let mut out = vec![0u8; frame.len() + 512];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of lb_neigh: {e}"));
        r.return_value as i32
    }

    /// The host's hand-off mark, as the daemon's map writers set it.
    pub fn handoff_mark(&mut self) -> u64 {
        let map: Array<&mut MapData, u64> = self.map_mut(names::HANDOFF_MARK);
        map.get(&0, 0).expect("the hand-off mark")
    }

    /// Overwrites the hand-off mark's map entry (as a pin left by another writer could
    /// hold).
    pub fn set_handoff_mark(&mut self, mark: u64) {
        let mut map: Array<&mut MapData, u64> = self.map_mut(names::HANDOFF_MARK);
        map.set(0, mark, 0).expect("write the hand-off mark");
    }

    /// The hand-off at the start of a frame the program passed (`lb_common::handoff`),
    /// and the frame after its Ethernet addresses; the hand-off must be there.
    pub fn handed_off(&mut self, out: &[u8]) -> (lb_common::handoff::Handoff, Vec<u8>) {
        let mark = self.handoff_mark();
        let h = lb_common::handoff::Handoff::decode(out, mark)
            .unwrap_or_else(|| panic!("no hand-off (mark {mark:#x}) in {out:?}"));
        (h, out[lb_common::handoff::LEN..].to_vec())
    }

    /// The global settings' `replies` bits (`lb_common::maps::REPLIES_*`).
    pub fn replies(&mut self) -> u8 {
        let cfg: Array<&mut MapData, GlobalConfig> = self.map_mut(names::CONFIG);
        cfg.get(&0, 0).expect("global settings").replies
    }

    /// Sets the global settings' `replies` bits (`lb_common::maps::REPLIES_*`), the
    /// rest as they are.
    pub fn set_replies(&mut self, bits: u8) {
        let mut cfg: Array<&mut MapData, GlobalConfig> = self.map_mut(names::CONFIG);
        let mut global = cfg.get(&0, 0).expect("global settings");
        global.replies = bits;
        cfg.set(0, global, 0).expect("write the global settings");
    }

    /// Empties the flow, half-open and reverse NAT tables and the SNAT sweeps' holds, as at load.
    pub fn clear_flow_tables(&mut self) {
        fn clear<V: aya::Pod>(mut m: HashMap<&mut MapData, FlowKey, V>) {
            let keys: Vec<FlowKey> = m.keys().filter_map(|k| k.ok()).collect();
            for k in keys {
                let _ = m.remove(&k);
            }
        }
        clear::<FlowState>(self.flows_mut());
        clear::<FlowState>(self.map_mut(names::HALF_OPEN));
        clear::<ReverseNat>(self.map_mut(names::REVERSE_NAT));
        // A sweep's hold outlives its flows: a table emptied for a new start has none.
        let mut swept: HashMap<&mut MapData, u32, u64> = self.map_mut(names::SNAT_SWEPT);
        let keys: Vec<u32> = swept.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            let _ = swept.remove(&k);
        }
    }

    fn flows_mut(&mut self) -> HashMap<&mut MapData, FlowKey, FlowState> {
        self.map_mut(names::FLOWS)
    }

    fn map_mut<'a, T>(&'a mut self, name: &str) -> T
    where
        T: TryFrom<&'a mut aya::maps::Map>,
        T::Error: std::fmt::Debug,
    {
        let m = self
            .dp
            .ebpf_mut()
            .map_mut(name)
            .unwrap_or_else(|| panic!("map {name} in the object"));
        T::try_from(m).unwrap_or_else(|e| panic!("map {name}: {e:?}"))
    }
}

impl Default for TestRun {
    fn default() -> Self {
        TestRun::new()
    }
}

/// The RST the program must send in answer to `s`: Ethernet addresses, IP addresses and
/// ports swapped, the VLAN tag and DSCP kept (ECN cleared), TTL/hop limit 64, no IP or
/// TCP options, no payload, window 0; IPv4 with identification 0 and DF, IPv6 with the
/// received flow label.
pub fn rst_for(s: &Packet, seq: u32, ack: u32, tcp_flags: u8) -> Packet {
    Packet {
        eth_dst: s.eth_src,
        eth_src: s.eth_dst,
        src: s.dst,
        dst: s.src,
        tos: s.tos & !0b11,
        ttl: 64,
        ip_id: 0,
        df: s.src.is_ipv4(),
        more_fragments: false,
        frag_offset: 0,
        ip_options: vec![],
        sport: s.dport,
        dport: s.sport,
        seq,
        ack,
        flags: tcp_flags,
        window: 0,
        tcp_options: vec![],
        payload: vec![],
        ..s.clone()
    }
}

/// Runs one frame through `prog` as if received on `ingress`: the action, the output
/// frame and the run's time as the kernel measured it.
fn run_xdp(prog: &Xdp, frame: &[u8], ingress: u32) -> (Action, Vec<u8>, std::time::Duration) {
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex }
    let md: Vec<u8> = [0, frame.len() as u32, 0, ingress, 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    let mut out = vec![0u8; frame.len() + 512];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&md),
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN (needs a kernel with XDP test runs): {e}"));
    out.truncate(r.data_size_out as usize);
    (Action::from_xdp(r.return_value), out, r.duration)
}

/// The program's flow tables, as [`TestRun::flow_tables`] reads them.
#[derive(Debug, Default)]
pub struct FlowTables {
    pub flows: std::collections::HashMap<FlowKey, FlowState>,
    pub half_open: std::collections::HashMap<FlowKey, FlowState>,
    pub reverse: std::collections::HashMap<FlowKey, ReverseNat>,
}

/// Keeps the test thread on its CPU: the next-hop cache is per CPU.
pub fn stay_on_this_cpu() {
    sys::stay_on_this_cpu().expect("sched_setaffinity");
}
