//! Packet-level tests of the `lb_xdp` program with BPF_PROG_TEST_RUN: crafted frames in,
//! action and output frame checked, no traffic on any wire.
//!
//! Each test builds its own network namespace (so `bpf_fib_lookup` finds routes and
//! permanent neighbours), enters it on the test thread, loads the embedded object there
//! and seeds the maps. Needs root and a kernel with BPF_PROG_TEST_RUN for XDP: when
//! either is missing the tests fail (never skip) and say what is missing.
//!
//! Checksums of rewritten frames are recomputed here from scratch over the whole header
//! and segment, independently of the incremental method the program uses.

mod common;

use common::netns::Netns;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    thread::sleep,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, xdp::DevMapHash},
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::{
    addr::ip_to_words,
    counters,
    maglev::NO_BACKEND,
    maps::{
        BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UP, Backend, FLOW_FIN_BACKEND, FLOW_FIN_CLIENT,
        FLOW_RST, FlowKey, FlowState, GlobalConfig, MODE_NAT, MODE_PROXY, NEXT_HOP_TTL_NS,
        PROTO_TCP, ReverseNat, Service, TrafficCounters, VipKey, names,
    },
    tcp::{ACK, FIN, RST, SYN},
};

// XDP actions.
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

// The test topology inside each namespace: `lb0` faces the backends, `lb1` the clients.
const LB0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa0];
const LB1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc2];
const BACKEND_MACS: [[u8; 6]; 2] = [[0x02, 0, 0, 0, 0, 0x10], [0x02, 0, 0, 0, 0, 0x11]];

const RING: u32 = 13;
const SNAT_MIN: u16 = 40000;
const SNAT_MAX: u16 = 40999;
const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
const CLIENT_PORT: u16 = 12345;

/// Addresses of one family in the topology.
#[derive(Clone, Copy)]
struct Plan {
    vip: IpAddr,
    client: IpAddr,
    snat: IpAddr,
    backends: [IpAddr; 2],
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

fn plan4() -> Plan {
    Plan {
        vip: v4(198, 18, 2, 1),
        client: v4(198, 18, 1, 2),
        snat: v4(198, 18, 0, 1),
        backends: [v4(198, 18, 0, 10), v4(198, 18, 0, 11)],
    }
}

fn plan6() -> Plan {
    Plan {
        vip: v6("fd00:2::1"),
        client: v6("fd00:1::2"),
        snat: v6("fd00::1"),
        backends: [v6("fd00::10"), v6("fd00::11")],
    }
}

// ---------------------------------------------------------------------------------------
// Namespace fixture

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: `c` is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no interface {name}");
    i
}

// ---------------------------------------------------------------------------------------
// The program under test

/// The loaded program in its own namespace, with the maps seeded for the topology.
struct Lb {
    ebpf: Ebpf,
    services: HashMap<MapData, VipKey, Service>,
    backends: Array<MapData, Backend>,
    maglev: Array<MapData, u32>,
    flows: HashMap<MapData, FlowKey, FlowState>,
    reverse_nat: HashMap<MapData, FlowKey, ReverseNat>,
    counters: PerCpuArray<MapData, u64>,
    service_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
    config: Array<MapData, GlobalConfig>,
    tx_ports: DevMapHash<MapData>,
    lb0: u32,
    lb1: u32,
    // Declared last so it is dropped last: the namespace outlives program and maps.
    ns: Netns,
}

fn config_with_idle_timeout(idle_timeout_ns: u64) -> GlobalConfig {
    config_with_timeouts(idle_timeout_ns, 10_000_000_000)
}

fn config_with_timeouts(idle_timeout_ns: u64, closed_timeout_ns: u64) -> GlobalConfig {
    GlobalConfig {
        idle_timeout_ns,
        closed_timeout_ns,
        ring_size: RING,
        snat_port_min: SNAT_MIN,
        snat_port_max: SNAT_MAX,
    }
}

/// Takes a map out of the object as its typed handle.
fn take<T: TryFrom<Map>>(ebpf: &mut Ebpf, name: &str) -> T
where
    T::Error: std::fmt::Debug,
{
    let m = ebpf
        .take_map(name)
        .unwrap_or_else(|| panic!("map {name} in object"));
    T::try_from(m).unwrap_or_else(|e| panic!("map {name}: {e:?}"))
}

impl Lb {
    fn new() -> Lb {
        let ns = Netns::new("lbt");
        for cmd in [
            &format!(
                "link add lb0 address {} type veth peer name be0",
                mac_str(LB0_MAC)
            ),
            &format!(
                "link add lb1 address {} type veth peer name cl0",
                mac_str(LB1_MAC)
            ),
            "link set lb0 up",
            "link set be0 up",
            "link set lb1 up",
            "link set cl0 up",
            "addr add 198.18.0.1/24 dev lb0",
            "addr add 198.18.1.1/24 dev lb1",
            "addr add fd00::1/64 dev lb0 nodad",
            "addr add fd00:1::1/64 dev lb1 nodad",
        ] {
            ns.ip(cmd);
        }
        for p in [plan4(), plan6()] {
            for (b, mac) in p.backends.iter().zip(BACKEND_MACS) {
                ns.ip(&format!(
                    "neigh add {b} lladdr {} dev lb0 nud permanent",
                    mac_str(mac)
                ));
            }
            ns.ip(&format!(
                "neigh add {} lladdr {} dev lb1 nud permanent",
                p.client,
                mac_str(CLIENT_MAC)
            ));
        }
        ns.enter();
        for (path, v) in [
            ("/proc/sys/net/ipv4/ip_forward", "1"),
            ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
        ] {
            std::fs::write(path, v).unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
        let (lb0, lb1) = (ifindex("lb0"), ifindex("lb1"));

        let object = lb_user::dataplane::object::require().expect("embedded eBPF object");
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::FLOWS, 4096)
            .map_max_entries(names::REVERSE_NAT, 4096)
            .load(object)
            .expect("load eBPF object (needs root)");
        let prog: &mut Xdp = ebpf
            .program_mut(names::PROG_LB)
            .expect("lb_xdp in object")
            .try_into()
            .expect("lb_xdp is XDP");
        prog.load().expect("lb_xdp passes the verifier");

        let mut config: Array<MapData, GlobalConfig> = take(&mut ebpf, names::CONFIG);
        config
            .set(0, config_with_idle_timeout(300_000_000_000), 0)
            .unwrap();
        let mut tx_ports: DevMapHash<MapData> = take(&mut ebpf, names::TX_PORTS);
        for i in [lb0, lb1] {
            tx_ports.insert(i, i, None, 0).unwrap();
        }
        Lb {
            config,
            tx_ports,
            services: take(&mut ebpf, names::SERVICES),
            backends: take(&mut ebpf, names::BACKENDS),
            maglev: take(&mut ebpf, names::MAGLEV),
            flows: take(&mut ebpf, names::FLOWS),
            reverse_nat: take(&mut ebpf, names::REVERSE_NAT),
            counters: take(&mut ebpf, names::COUNTERS),
            service_stats: take(&mut ebpf, names::SERVICE_STATS),
            backend_stats: take(&mut ebpf, names::BACKEND_STATS),
            ebpf,
            lb0,
            lb1,
            ns,
        }
    }

    /// A service at `plan.vip:80` with id 0 whose Maglev table (at offset 0) sends every
    /// slot to `slot_backend`; backends 0 and 1 are `plan.backends`, both up.
    fn seed(&mut self, plan: Plan, slot_backend: u32) {
        self.services
            .insert(
                VipKey::from_socket_addr(SocketAddr::new(plan.vip, VIP_PORT)),
                Service {
                    id: 0,
                    table_offset: 0,
                    mode: MODE_NAT,
                    _pad: 0,
                },
                0,
            )
            .unwrap();
        for id in 0..2 {
            self.set_backend(plan, id, BACKEND_UP);
        }
        self.fill_maglev(slot_backend);
    }

    fn set_backend(&mut self, plan: Plan, id: u32, state: u8) {
        let (addr, family) = ip_to_words(plan.backends[id as usize]);
        let (snat_addr, _) = ip_to_words(plan.snat);
        let b = Backend {
            addr,
            snat_addr,
            port: BACKEND_PORT.to_be(),
            family,
            state,
            service_id: 0,
        };
        self.backends.set(id, b, 0).unwrap();
    }

    fn fill_maglev(&mut self, backend: u32) {
        for slot in 0..RING {
            self.maglev.set(slot, backend, 0).unwrap();
        }
    }

    /// Runs one frame as if received on `ingress`; returns the action and output frame.
    fn run(&mut self, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(names::PROG_LB)
            .unwrap()
            .try_into()
            .unwrap();
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
            .expect("BPF_PROG_TEST_RUN of lb_xdp");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn counter(&self, idx: u32) -> u64 {
        self.counters.get(&idx, 0).unwrap().iter().sum()
    }

    fn stats(&self, backend: bool, id: u32) -> TrafficCounters {
        let m = if backend {
            &self.backend_stats
        } else {
            &self.service_stats
        };
        let mut total = TrafficCounters::default();
        for v in m.get(&id, 0).unwrap().iter() {
            total.add(v);
        }
        total
    }

    fn flow(&self, key: FlowKey) -> Option<FlowState> {
        self.flows.get(&key, 0).ok()
    }

    fn reverse(&self, key: FlowKey) -> Option<ReverseNat> {
        self.reverse_nat.get(&key, 0).ok()
    }
}

// ---------------------------------------------------------------------------------------
// Frames

/// A TCP segment to build.
#[derive(Clone)]
struct Seg {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    flags: u8,
    ttl: u8,
    vlan: Option<u16>,
    ip_options: Vec<u8>,
    tcp_options: Vec<u8>,
    payload: Vec<u8>,
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
}

/// A client → VIP SYN with TCP options and a payload, so checksums cover real data.
fn syn(p: Plan) -> Seg {
    Seg {
        src: p.client,
        dst: p.vip,
        sport: CLIENT_PORT,
        dport: VIP_PORT,
        flags: SYN,
        ttl: 64,
        vlan: None,
        ip_options: vec![],
        tcp_options: vec![2, 4, 0x05, 0xb4, 1, 1, 4, 2], // MSS 1460, NOP, NOP, SACK ok
        payload: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        eth_dst: LB1_MAC,
        eth_src: CLIENT_MAC,
    }
}

/// Sequence number of every segment `build` makes.
const SEG_SEQ: u32 = 0x1000_0000;
/// Acknowledgment number of every segment with ACK that `build` makes (0 without ACK).
const SEG_ACK: u32 = 0x2000_0000;

/// One's-complement sum of big-endian 16-bit words (odd tail padded with zero).
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

fn finish16(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    lb_common::addr::ip_bytes(&ip)
}

/// The TCP checksum of `segment` (checksum field zeroed) between `src` and `dst`.
fn tcp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let mut pseudo = ip_bytes(src);
    pseudo.extend(ip_bytes(dst));
    match src {
        IpAddr::V4(_) => {
            pseudo.extend([0, PROTO_TCP]);
            pseudo.extend((segment.len() as u16).to_be_bytes());
        }
        IpAddr::V6(_) => {
            pseudo.extend((segment.len() as u32).to_be_bytes());
            pseudo.extend([0, 0, 0, PROTO_TCP]);
        }
    }
    let mut seg = segment.to_vec();
    seg[16] = 0;
    seg[17] = 0;
    finish16(sum16(&seg, sum16(&pseudo, 0)))
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut h = header.to_vec();
    h[10] = 0;
    h[11] = 0;
    finish16(sum16(&h, 0))
}

fn build(s: &Seg) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend(s.sport.to_be_bytes());
    tcp.extend(s.dport.to_be_bytes());
    tcp.extend(SEG_SEQ.to_be_bytes());
    tcp.extend(if s.flags & ACK != 0 { SEG_ACK } else { 0 }.to_be_bytes());
    assert_eq!(s.tcp_options.len() % 4, 0);
    tcp.push((((20 + s.tcp_options.len()) / 4) << 4) as u8);
    tcp.push(s.flags);
    tcp.extend(64240u16.to_be_bytes()); // window
    tcp.extend([0, 0, 0, 0]); // checksum, urgent pointer
    tcp.extend(&s.tcp_options);
    tcp.extend(&s.payload);
    let c = tcp_checksum(s.src, s.dst, &tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());

    let mut f = Vec::new();
    f.extend(s.eth_dst);
    f.extend(s.eth_src);
    if let Some(vid) = s.vlan {
        f.extend(0x8100u16.to_be_bytes());
        f.extend(vid.to_be_bytes());
    }
    match (s.src, s.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            f.extend(0x0800u16.to_be_bytes());
            assert_eq!(s.ip_options.len() % 4, 0);
            let hlen = 20 + s.ip_options.len();
            let mut ip = vec![(0x40 | (hlen / 4)) as u8, 0];
            ip.extend(((hlen + tcp.len()) as u16).to_be_bytes());
            ip.extend([0x12, 0x34, 0x40, 0]); // id, DF
            ip.extend([s.ttl, PROTO_TCP, 0, 0]);
            ip.extend(src.octets());
            ip.extend(dst.octets());
            ip.extend(&s.ip_options);
            let c = ipv4_checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend(ip);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            f.extend(0x86ddu16.to_be_bytes());
            f.extend([0x60, 0x01, 0x23, 0x45]); // flow label
            f.extend((tcp.len() as u16).to_be_bytes());
            f.extend([PROTO_TCP, s.ttl]);
            f.extend(src.octets());
            f.extend(dst.octets());
        }
        _ => panic!("mixed families"),
    }
    f.extend(tcp);
    f
}

/// What a frame says, after its checksums were verified from scratch.
#[derive(Debug, PartialEq)]
struct Seen {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    vlan: Option<u16>,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    ttl: u8,
    /// IP options, TCP flags/options and payload: everything the NAT must not touch.
    rest: Vec<u8>,
}

/// Decodes a TCP frame and asserts that its IPv4 header and TCP checksums are right.
fn decode(f: &[u8]) -> Seen {
    let eth_dst: [u8; 6] = f[0..6].try_into().unwrap();
    let eth_src: [u8; 6] = f[6..12].try_into().unwrap();
    let (vlan, l3) = match u16::from_be_bytes([f[12], f[13]]) {
        0x8100 => (Some(u16::from_be_bytes([f[14], f[15]])), 18),
        _ => (None, 14),
    };
    let ethertype = u16::from_be_bytes([f[l3 - 2], f[l3 - 1]]);
    let (src, dst, ttl, l4, end, mut rest) = match ethertype {
        0x0800 => {
            let ihl = (f[l3] & 0xf) as usize * 4;
            let hdr = &f[l3..l3 + ihl];
            let stored = u16::from_be_bytes([hdr[10], hdr[11]]);
            assert_eq!(stored, ipv4_checksum(hdr), "IPv4 header checksum");
            let tot = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
            let src = v4(hdr[12], hdr[13], hdr[14], hdr[15]);
            let dst = v4(hdr[16], hdr[17], hdr[18], hdr[19]);
            // Everything but addresses, TTL and checksum must be untouched.
            let mut rest = hdr[0..8].to_vec();
            rest.push(hdr[9]);
            rest.extend(&hdr[20..]);
            (src, dst, hdr[8], l3 + ihl, l3 + tot, rest)
        }
        0x86dd => {
            let h = &f[l3..l3 + 40];
            let plen = u16::from_be_bytes([h[4], h[5]]) as usize;
            let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[8..24]).unwrap()));
            let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[24..40]).unwrap()));
            (src, dst, h[7], l3 + 40, l3 + 40 + plen, h[0..4].to_vec())
        }
        t => panic!("not IP: ethertype {t:#x}"),
    };
    let seg = &f[l4..end];
    let stored = u16::from_be_bytes([seg[16], seg[17]]);
    assert_eq!(stored, tcp_checksum(src, dst, seg), "TCP checksum");
    rest.extend(&seg[4..16]);
    rest.extend(&seg[18..]);
    Seen {
        eth_dst,
        eth_src,
        vlan,
        src,
        dst,
        sport: u16::from_be_bytes([seg[0], seg[1]]),
        dport: u16::from_be_bytes([seg[2], seg[3]]),
        ttl,
        rest,
    }
}

fn key(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> FlowKey {
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

// ---------------------------------------------------------------------------------------
// Forward path: one table of client → VIP frames that must be rewritten to backend 0.

struct RewriteCase {
    what: &'static str,
    plan: Plan,
    seg: Seg,
}

#[test]
fn client_to_vip_is_rewritten_to_the_backend() {
    let mut vlan = syn(plan4());
    vlan.vlan = Some(42);
    let mut options = syn(plan4());
    options.ip_options = vec![0x94, 0x04, 0, 0]; // Router Alert
    let mut plain6 = syn(plan6());
    plain6.ttl = 2;
    let cases = [
        RewriteCase {
            what: "IPv4 SYN",
            plan: plan4(),
            seg: syn(plan4()),
        },
        RewriteCase {
            what: "IPv6 SYN, hop limit 2",
            plan: plan6(),
            seg: plain6,
        },
        RewriteCase {
            what: "802.1Q-tagged IPv4 SYN",
            plan: plan4(),
            seg: vlan,
        },
        RewriteCase {
            what: "IPv4 SYN with IP options",
            plan: plan4(),
            seg: options,
        },
    ];
    for case in cases {
        let mut lb = Lb::new();
        lb.seed(case.plan, 0);
        let input = build(&case.seg);
        let (action, out) = lb.run(&input, lb.lb1);
        assert_eq!(action, XDP_REDIRECT, "{}: action", case.what);
        assert_eq!(out.len(), input.len(), "{}: length", case.what);
        let seen = decode(&out);
        let before = decode(&input);
        let k = key(case.seg.src, case.seg.dst, CLIENT_PORT, VIP_PORT);
        let flow = lb
            .flow(k)
            .unwrap_or_else(|| panic!("{}: no flow entry", case.what));
        assert_eq!(flow.backend, 0, "{}", case.what);
        let snat_port = u16::from_be(flow.snat_port);
        assert!(
            (SNAT_MIN..=SNAT_MAX).contains(&snat_port),
            "{}: port {snat_port}",
            case.what
        );
        assert_eq!(
            seen,
            Seen {
                eth_dst: BACKEND_MACS[0],
                eth_src: LB0_MAC,
                vlan: case.seg.vlan,
                src: case.plan.snat,
                dst: case.plan.backends[0],
                sport: snat_port,
                dport: BACKEND_PORT,
                ttl: case.seg.ttl - 1,
                rest: before.rest,
            },
            "{}: output frame",
            case.what
        );
        let rkey = key(
            case.plan.backends[0],
            case.plan.snat,
            BACKEND_PORT,
            snat_port,
        );
        let r = lb
            .reverse(rkey)
            .unwrap_or_else(|| panic!("{}: no reverse entry", case.what));
        assert_eq!(
            (r.flow, r.backend, r.service_id),
            (k, 0, 0),
            "{}",
            case.what
        );
        assert_eq!(lb.counter(counters::FWD_IN), 1, "{}: FWD_IN", case.what);
        for (map, backend) in [(names::SERVICE_STATS, false), (names::BACKEND_STATS, true)] {
            let s = lb.stats(backend, 0);
            assert_eq!(
                (s.new_flows, s.packets_in, s.bytes_in),
                (1, 1, input.len() as u64),
                "{}: {map}",
                case.what
            );
        }
    }
}

#[test]
fn backend_reply_is_rewritten_back_to_the_client() {
    for plan in [plan4(), plan6()] {
        let mut lb = Lb::new();
        lb.seed(plan, 0);
        let (action, _) = lb.run(&build(&syn(plan)), lb.lb1);
        assert_eq!(action, XDP_REDIRECT);
        let snat_port = u16::from_be(
            lb.flow(key(plan.client, plan.vip, CLIENT_PORT, VIP_PORT))
                .unwrap()
                .snat_port,
        );

        let reply = Seg {
            src: plan.backends[0],
            dst: plan.snat,
            sport: BACKEND_PORT,
            dport: snat_port,
            flags: SYN | ACK,
            eth_dst: LB0_MAC,
            eth_src: BACKEND_MACS[0],
            payload: b"HTTP/1.0 200 OK\r\n\r\n".to_vec(),
            ..syn(plan)
        };
        let input = build(&reply);
        let (action, out) = lb.run(&input, lb.lb0);
        assert_eq!(action, XDP_REDIRECT, "{}", plan.vip);
        assert_eq!(
            decode(&out),
            Seen {
                eth_dst: CLIENT_MAC,
                eth_src: LB1_MAC,
                vlan: None,
                src: plan.vip,
                dst: plan.client,
                sport: VIP_PORT,
                dport: CLIENT_PORT,
                ttl: 63,
                rest: decode(&input).rest,
            }
        );
        assert_eq!(lb.counter(counters::FWD_OUT), 1);
        let s = lb.stats(true, 0);
        assert_eq!((s.packets_out, s.bytes_out), (1, input.len() as u64));

        // The backend's FIN is recorded on the flow.
        let fin = Seg {
            flags: FIN | ACK,
            ..reply
        };
        assert_eq!(lb.run(&build(&fin), lb.lb0).0, XDP_REDIRECT);
        let flow = lb
            .flow(key(plan.client, plan.vip, CLIENT_PORT, VIP_PORT))
            .unwrap();
        assert_eq!(flow.flags, lb_common::maps::FLOW_FIN_BACKEND);
    }
}

#[test]
fn xdp_tx_when_the_backend_is_behind_the_ingress_interface() {
    stay_on_this_cpu();
    let mut lb = Lb::new();
    lb.seed(plan4(), 0);
    let mut s = syn(plan4());
    s.eth_dst = LB0_MAC;
    // The first packet looks the next hop up; the second one uses the cached hop.
    for what in ["looked up", "cached"] {
        let (action, out) = lb.run(&build(&s), lb.lb0);
        assert_eq!(action, XDP_TX, "{what}");
        let seen = decode(&out);
        assert_eq!(
            (seen.eth_dst, seen.eth_src),
            (BACKEND_MACS[0], LB0_MAC),
            "{what}"
        );
        assert_eq!(seen.dst, plan4().backends[0], "{what}");
    }
}

// ---------------------------------------------------------------------------------------
// Frames that are not ours, or not sane: never rewritten.

/// What a frame that must not be rewritten may get.
#[derive(Clone, Copy, Debug)]
enum Untouched {
    /// XDP_PASS and counted as PASS.
    Pass,
    /// XDP_PASS or XDP_DROP, whichever the program judges.
    PassOrDrop,
    /// XDP_DROP counted under the given counter.
    Drop(u32),
    /// XDP_PASS counted under the given counter.
    PassCounted(u32),
}

#[test]
fn frames_that_are_not_ours_or_malformed_are_never_rewritten() {
    let p = plan4();
    let good = build(&syn(p));
    let l3 = 14;
    let l4 = l3 + 20;
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let other_port = build(&Seg {
        dport: 81,
        ..syn(p)
    });
    let other_addr = build(&Seg {
        dst: v4(198, 18, 2, 99),
        ..syn(p)
    });
    let udp = with(&|v| {
        v[l3 + 9] = 17;
    });
    let arp = {
        let mut v = good[..12].to_vec();
        v.extend([0x08, 0x06]);
        v.extend([0u8; 28]);
        v
    };
    let ipv6_ext = {
        let mut v = build(&syn(plan6()));
        v[14 + 6] = 0; // next header: hop-by-hop options
        v
    };
    let cases: Vec<(&str, Vec<u8>, Untouched)> = vec![
        ("VIP address, other port", other_port, Untouched::Pass),
        ("other address", other_addr, Untouched::Pass),
        ("UDP to the VIP", udp, Untouched::Pass),
        ("ARP", arp, Untouched::Pass),
        ("IPv6 with an extension header", ipv6_ext, Untouched::Pass),
        ("Ethernet header only", good[..14].to_vec(), Untouched::Pass),
        (
            "VLAN tag cut off",
            with(&|v| {
                v.truncate(14);
                v[12..14].copy_from_slice(&[0x81, 0x00]);
            }),
            Untouched::Pass,
        ),
        (
            "IPv4 header cut off",
            good[..l3 + 12].to_vec(),
            Untouched::Pass,
        ),
        (
            "TCP ports cut off",
            good[..l4 + 2].to_vec(),
            Untouched::PassOrDrop,
        ),
        (
            "TCP header cut after the ports",
            good[..l4 + 8].to_vec(),
            Untouched::PassOrDrop,
        ),
        ("ihl 4", with(&|v| v[l3] = 0x44), Untouched::PassOrDrop),
        ("ihl 0", with(&|v| v[l3] = 0x40), Untouched::PassOrDrop),
        (
            "doff 4",
            with(&|v| v[l4 + 12] = 0x40),
            Untouched::Drop(counters::DROP_MALFORMED),
        ),
        (
            "doff 15 beyond the segment",
            with(&|v| v[l4 + 12] = 0xf0),
            Untouched::Drop(counters::DROP_MALFORMED),
        ),
        (
            "total length beyond the frame",
            with(&|v| {
                let t = u16::from_be_bytes([v[l3 + 2], v[l3 + 3]]) + 1;
                v[l3 + 2..l3 + 4].copy_from_slice(&t.to_be_bytes());
            }),
            Untouched::Drop(counters::DROP_MALFORMED),
        ),
        (
            "total length shorter than the headers",
            with(&|v| {
                v[l3 + 2..l3 + 4].copy_from_slice(&30u16.to_be_bytes());
            }),
            Untouched::Drop(counters::DROP_MALFORMED),
        ),
        (
            "IPv4 version 5",
            with(&|v| v[l3] = 0x55),
            Untouched::PassOrDrop,
        ),
        (
            "first fragment (MF)",
            with(&|v| v[l3 + 6] = 0x20),
            Untouched::PassCounted(counters::PASS_FRAGMENT),
        ),
        (
            "later fragment",
            with(&|v| v[l3 + 7] = 0x10),
            Untouched::PassCounted(counters::PASS_FRAGMENT),
        ),
        ("TTL 1", build(&Seg { ttl: 1, ..syn(p) }), Untouched::Pass),
    ];
    let mut lb = Lb::new();
    lb.seed(p, 0);
    for (what, frame, expect) in cases {
        let before: Vec<u64> = (0..counters::NUM_COUNTERS).map(|i| lb.counter(i)).collect();
        let (action, out) = lb.run(&frame, lb.lb1);
        assert_eq!(out, frame, "{what}: output must be the input, untouched");
        let after: Vec<u64> = (0..counters::NUM_COUNTERS).map(|i| lb.counter(i)).collect();
        let bumped: Vec<u32> = (0..counters::NUM_COUNTERS)
            .filter(|&i| after[i as usize] != before[i as usize])
            .collect();
        assert_eq!(
            bumped.len(),
            1,
            "{what}: exactly one counter, got {bumped:?}"
        );
        match expect {
            Untouched::Pass => {
                assert_eq!((action, bumped[0]), (XDP_PASS, counters::PASS), "{what}")
            }
            Untouched::PassOrDrop => assert!(
                action == XDP_PASS || action == XDP_DROP,
                "{what}: action {action}"
            ),
            Untouched::Drop(c) => assert_eq!((action, bumped[0]), (XDP_DROP, c), "{what}"),
            Untouched::PassCounted(c) => assert_eq!((action, bumped[0]), (XDP_PASS, c), "{what}"),
        }
    }
    assert_eq!(lb.counter(counters::FWD_IN), 0, "nothing forwarded");
}

// ---------------------------------------------------------------------------------------
// Backend selection

#[test]
fn existing_flow_keeps_its_backend_when_the_maglev_table_changes() {
    let p = plan4();
    let mut lb = Lb::new();
    lb.seed(p, 0);
    assert_eq!(
        decode(&lb.run(&build(&syn(p)), lb.lb1).1).dst,
        p.backends[0]
    );
    lb.fill_maglev(1);
    let ack = build(&Seg {
        flags: ACK,
        ..syn(p)
    });
    let (action, out) = lb.run(&ack, lb.lb1);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(decode(&out).dst, p.backends[0], "existing flow stays");
    // A new connection follows the new table.
    let other = build(&Seg {
        sport: CLIENT_PORT + 1,
        ..syn(p)
    });
    assert_eq!(
        decode(&lb.run(&other, lb.lb1).1).dst,
        p.backends[1],
        "new flow moves"
    );
    assert_eq!(lb.stats(false, 0).new_flows, 2);
    assert_eq!(lb.counter(counters::FWD_IN), 3);
}

#[test]
fn flow_to_a_down_backend_is_rebalanced() {
    for p in [plan4(), plan6()] {
        let mut lb = Lb::new();
        lb.seed(p, 0);
        assert_eq!(
            decode(&lb.run(&build(&syn(p)), lb.lb1).1).dst,
            p.backends[0]
        );
        lb.set_backend(p, 0, BACKEND_DOWN);
        lb.fill_maglev(1);
        let ack = build(&Seg {
            flags: ACK,
            ..syn(p)
        });
        let (action, out) = lb.run(&ack, lb.lb1);
        assert_eq!(action, XDP_REDIRECT);
        let seen = decode(&out);
        assert_eq!((seen.dst, seen.eth_dst), (p.backends[1], BACKEND_MACS[1]));
        let flow = lb
            .flow(key(p.client, p.vip, CLIENT_PORT, VIP_PORT))
            .unwrap();
        assert_eq!(flow.backend, 1);
        assert_eq!(lb.stats(true, 1).new_flows, 1);
    }
}

#[test]
fn draining_backend_keeps_its_flows_but_takes_no_new_ones() {
    let p = plan4();
    let mut lb = Lb::new();
    lb.seed(p, 0);
    assert_eq!(lb.run(&build(&syn(p)), lb.lb1).0, XDP_REDIRECT);
    lb.set_backend(p, 0, BACKEND_DRAINING);
    let ack = build(&Seg {
        flags: ACK,
        ..syn(p)
    });
    let (action, out) = lb.run(&ack, lb.lb1);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(decode(&out).dst, p.backends[0]);
    // A stale table still naming the draining backend does not give it new flows: the
    // client is told at once.
    let other = Seg {
        sport: CLIENT_PORT + 1,
        ..syn(p)
    };
    let (action, out) = lb.run(&build(&other), lb.lb1);
    assert_eq!(action, XDP_TX);
    let isn_ack = SEG_SEQ + other.payload.len() as u32 + 1;
    assert_eq!(out, expected_rst(&other, 0, isn_ack, RST | ACK));
    assert_eq!(lb.counter(counters::DROP_NO_BACKEND), 1);
    assert_eq!(lb.stats(false, 0).new_flows, 1);
}

// ---------------------------------------------------------------------------------------
// No usable backend: the client is answered with a TCP RST (XDP_TX), never left waiting.

/// The RST the program must send in answer to `s` (as `build` makes it): every byte of
/// the frame, with the checksums computed here from scratch. Ethernet addresses, IP
/// addresses and ports swapped, the VLAN tag kept, TTL/hop limit 64, no IP or TCP
/// options, no payload, window 0; IPv4 with identification 0 and DF, IPv6 with the
/// received flow label.
fn expected_rst(s: &Seg, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend(s.dport.to_be_bytes());
    tcp.extend(s.sport.to_be_bytes());
    tcp.extend(seq.to_be_bytes());
    tcp.extend(ack.to_be_bytes());
    tcp.extend([0x50, flags]); // data offset 5 words, flags
    tcp.extend([0, 0, 0, 0, 0, 0]); // window, checksum, urgent pointer
    let c = tcp_checksum(s.dst, s.src, &tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());

    let mut f = Vec::new();
    f.extend(s.eth_src);
    f.extend(s.eth_dst);
    if let Some(vid) = s.vlan {
        f.extend(0x8100u16.to_be_bytes());
        f.extend(vid.to_be_bytes());
    }
    match (s.dst, s.src) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            f.extend(0x0800u16.to_be_bytes());
            let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0];
            ip.extend(src.octets());
            ip.extend(dst.octets());
            let c = ipv4_checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend(ip);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            f.extend(0x86ddu16.to_be_bytes());
            f.extend([0x60, 0x01, 0x23, 0x45, 0, 20, PROTO_TCP, 64]);
            f.extend(src.octets());
            f.extend(dst.octets());
        }
        _ => panic!("mixed families"),
    }
    f.extend(tcp);
    f
}

impl Lb {
    /// The sum over CPUs of every counter.
    fn counters(&self) -> Vec<u64> {
        (0..counters::NUM_COUNTERS)
            .map(|i| self.counter(i))
            .collect()
    }

    /// Runs a frame from the client and returns the action, the output frame and the
    /// counters it bumped.
    fn run_counted(&mut self, frame: &[u8]) -> (u32, Vec<u8>, Vec<u32>) {
        let before = self.counters();
        let (action, out) = self.run(frame, self.lb1);
        let after = self.counters();
        let bumped = (0..counters::NUM_COUNTERS)
            .filter(|&i| after[i as usize] != before[i as usize])
            .collect();
        (action, out, bumped)
    }
}

/// A segment to answer, and the sequence number, acknowledgment number and flags its
/// RST must carry.
struct RstCase {
    what: &'static str,
    seg: Seg,
    /// Zero bytes appended after the IP packet (Ethernet minimum-size padding).
    pad: usize,
    seq: u32,
    ack: u32,
    flags: u8,
}

#[test]
fn no_backend_answers_the_client_with_a_rst() {
    let (p4, p6) = (plan4(), plan6());
    let plain = |p: Plan, flags: u8| Seg {
        flags,
        tcp_options: vec![],
        payload: vec![],
        ..syn(p)
    };
    let tagged = |s: Seg| Seg {
        vlan: Some(42),
        ..s
    };
    let data = syn(p4).payload.len() as u32;
    const PSH: u8 = 0x08;
    let cases = vec![
        RstCase {
            what: "IPv4 SYN",
            seg: syn(p4),
            pad: 0,
            seq: 0,
            ack: SEG_SEQ + data + 1,
            flags: RST | ACK,
        },
        RstCase {
            what: "IPv4 SYN without options or data",
            seg: plain(p4, SYN),
            pad: 0,
            seq: 0,
            ack: SEG_SEQ + 1,
            flags: RST | ACK,
        },
        RstCase {
            what: "IPv6 SYN",
            seg: syn(p6),
            pad: 0,
            seq: 0,
            ack: SEG_SEQ + data + 1,
            flags: RST | ACK,
        },
        RstCase {
            what: "IPv6 SYN without options or data",
            seg: plain(p6, SYN),
            pad: 0,
            seq: 0,
            ack: SEG_SEQ + 1,
            flags: RST | ACK,
        },
        RstCase {
            what: "802.1Q-tagged IPv4 SYN",
            seg: tagged(syn(p4)),
            pad: 0,
            seq: 0,
            ack: SEG_SEQ + data + 1,
            flags: RST | ACK,
        },
        RstCase {
            what: "802.1Q-tagged IPv6 SYN",
            seg: tagged(plain(p6, SYN)),
            pad: 0,
            seq: 0,
            ack: SEG_SEQ + 1,
            flags: RST | ACK,
        },
        RstCase {
            what: "IPv4 SYN with IP options (answered without them)",
            seg: Seg {
                ip_options: vec![0x94, 0x04, 0, 0], // Router Alert
                ..syn(p4)
            },
            pad: 0,
            seq: 0,
            ack: SEG_SEQ + data + 1,
            flags: RST | ACK,
        },
        RstCase {
            what: "IPv4 SYN padded to the Ethernet minimum",
            seg: plain(p4, SYN),
            pad: 6,
            seq: 0,
            ack: SEG_SEQ + 1,
            flags: RST | ACK,
        },
        RstCase {
            what: "IPv6 FIN with data, no ACK",
            seg: Seg {
                flags: FIN | PSH,
                tcp_options: vec![],
                ..syn(p6)
            },
            pad: 0,
            seq: 0,
            ack: SEG_SEQ + data + 1,
            flags: RST | ACK,
        },
        RstCase {
            what: "IPv4 ACK with data",
            seg: Seg {
                flags: ACK | PSH,
                ..syn(p4)
            },
            pad: 0,
            seq: SEG_ACK,
            ack: 0,
            flags: RST,
        },
        RstCase {
            what: "IPv6 ACK with data",
            seg: Seg {
                flags: ACK | PSH,
                ..syn(p6)
            },
            pad: 0,
            seq: SEG_ACK,
            ack: 0,
            flags: RST,
        },
        RstCase {
            what: "802.1Q-tagged IPv4 FIN|ACK",
            seg: tagged(plain(p4, FIN | ACK)),
            pad: 0,
            seq: SEG_ACK,
            ack: 0,
            flags: RST,
        },
    ];
    let mut lb = Lb::new();
    lb.seed(p4, NO_BACKEND);
    lb.seed(p6, NO_BACKEND);
    for case in cases {
        let what = case.what;
        let mut input = build(&case.seg);
        input.resize(input.len() + case.pad, 0);
        let (action, out, bumped) = lb.run_counted(&input);
        assert_eq!(action, XDP_TX, "{what}: action");
        assert_eq!(bumped, [counters::DROP_NO_BACKEND], "{what}: counters");
        let l3 = if case.seg.vlan.is_some() { 18 } else { 14 };
        let ip_hlen = if case.seg.src.is_ipv4() { 20 } else { 40 };
        assert_eq!(out.len(), l3 + ip_hlen + 20, "{what}: trimmed length");
        // Checksums recomputed from scratch by `decode`, then every byte.
        let seen = decode(&out);
        assert_eq!(
            (seen.src, seen.dst, seen.sport, seen.dport, seen.ttl),
            (case.seg.dst, case.seg.src, VIP_PORT, CLIENT_PORT, 64),
            "{what}: addresses"
        );
        assert_eq!(
            out,
            expected_rst(&case.seg, case.seq, case.ack, case.flags),
            "{what}: RST frame"
        );
    }
    assert_eq!(lb.counter(counters::DROP_NO_BACKEND), 12);
    assert_eq!(lb.counter(counters::FWD_IN), 0);
    assert_eq!(lb.stats(false, 0).new_flows, 0);
    assert_eq!(lb.flows.keys().count(), 0, "no flow entry");
    assert_eq!(lb.reverse_nat.keys().count(), 0, "no reverse NAT entry");
}

#[test]
fn rst_keeps_the_dscp_and_clears_the_ecn_bits() {
    let mut lb = Lb::new();
    lb.seed(plan4(), NO_BACKEND);
    lb.seed(plan6(), NO_BACKEND);
    // DSCP EF (46) with ECT(1): the RST keeps EF and is not ECN-capable.
    let (ef_ect1, ef) = (0xb9u8, 0xb8u8);
    let with_tos = |f: &mut Vec<u8>, tos: u8| {
        if f[12..14] == [0x08, 0x00] {
            f[15] = tos;
            let c = ipv4_checksum(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
        } else {
            // The traffic class spans the low nibble of byte 0 and the high one of byte 1.
            f[14] = 0x60 | (tos >> 4);
            f[15] = (tos << 4) | (f[15] & 0x0f);
        }
    };
    for p in [plan4(), plan6()] {
        let seg = syn(p);
        let mut input = build(&seg);
        with_tos(&mut input, ef_ect1);
        let (action, out) = lb.run(&input, lb.lb1);
        assert_eq!(action, XDP_TX, "{}", p.vip);
        let mut want = expected_rst(&seg, 0, SEG_SEQ + seg.payload.len() as u32 + 1, RST | ACK);
        with_tos(&mut want, ef);
        assert_eq!(out, want, "{}", p.vip);
        decode(&out);
    }
}

#[test]
fn a_rst_with_no_backend_is_dropped_not_answered() {
    let mut lb = Lb::new();
    lb.seed(plan4(), NO_BACKEND);
    lb.seed(plan6(), NO_BACKEND);
    for p in [plan4(), plan6()] {
        for flags in [RST, RST | ACK] {
            let input = build(&Seg { flags, ..syn(p) });
            let (action, out, bumped) = lb.run_counted(&input);
            let what = format!("{} flags {flags:#x}", p.vip);
            assert_eq!(action, XDP_DROP, "{what}: never answered");
            assert_eq!(out, input, "{what}: untouched");
            assert_eq!(bumped, [counters::DROP_NO_BACKEND], "{what}: counters");
        }
    }
    assert_eq!(lb.counter(counters::DROP_NO_BACKEND), 4);
}

#[test]
fn down_backend_with_no_replacement_is_answered_with_a_rst() {
    for p in [plan4(), plan6()] {
        let mut lb = Lb::new();
        lb.seed(p, 0);
        // An existing flow whose backend goes down, with nothing to move to: the next
        // segment of the connection is answered with a RST.
        assert_eq!(lb.run(&build(&syn(p)), lb.lb1).0, XDP_REDIRECT);
        lb.set_backend(p, 0, BACKEND_DOWN);
        let ack = Seg {
            flags: ACK,
            ..syn(p)
        };
        let (action, out, bumped) = lb.run_counted(&build(&ack));
        assert_eq!(action, XDP_TX, "{}: existing flow", p.vip);
        assert_eq!(bumped, [counters::DROP_NO_BACKEND], "{}", p.vip);
        assert_eq!(out, expected_rst(&ack, SEG_ACK, 0, RST), "{}", p.vip);
        // A new connection whose Maglev slot names the down backend.
        let other = Seg {
            sport: CLIENT_PORT + 1,
            payload: vec![],
            ..syn(p)
        };
        let (action, out, bumped) = lb.run_counted(&build(&other));
        assert_eq!(action, XDP_TX, "{}: new flow", p.vip);
        assert_eq!(bumped, [counters::DROP_NO_BACKEND], "{}", p.vip);
        assert_eq!(
            out,
            expected_rst(&other, 0, SEG_SEQ + 1, RST | ACK),
            "{}",
            p.vip
        );
        decode(&out);
        assert_eq!(lb.counter(counters::DROP_NO_BACKEND), 2);
        assert_eq!(lb.counter(counters::FWD_IN), 1);
        assert_eq!(lb.stats(false, 0).new_flows, 1);
    }
}

// ---------------------------------------------------------------------------------------
// SNAT ports

/// The first SNAT port the program tries for a client → VIP flow.
fn first_snat_port(k: &FlowKey) -> u16 {
    let range = (SNAT_MAX - SNAT_MIN) as u32 + 1;
    SNAT_MIN + (lb_common::hash::flow_hash(k).rotate_right(16) % range) as u16
}

#[test]
fn snat_port_is_derived_from_the_flow_hash_and_kept_when_the_flow_is_recreated() {
    let p = plan4();
    let mut lb = Lb::new();
    lb.seed(p, 0);
    let k = key(p.client, p.vip, CLIENT_PORT, VIP_PORT);
    let (_, out) = lb.run(&build(&syn(p)), lb.lb1);
    assert_eq!(decode(&out).sport, first_snat_port(&k));
    // With no idle time allowed, the next packet finds the flow expired and re-creates
    // it: it reclaims its own reverse NAT entry, so the port does not change. The
    // program's clock moves on ticks (bpf_ktime_get_coarse_ns): wait for the next one.
    lb.config.set(0, config_with_idle_timeout(0), 0).unwrap();
    sleep(Duration::from_millis(20));
    let (_, out) = lb.run(
        &build(&Seg {
            flags: ACK,
            ..syn(p)
        }),
        lb.lb1,
    );
    assert_eq!(decode(&out).sport, first_snat_port(&k));
    assert_eq!(lb.stats(false, 0).new_flows, 2);
}

#[test]
fn snat_port_held_by_a_live_flow_is_skipped_and_a_stale_one_is_taken_over() {
    let p = plan4();
    let mut lb = Lb::new();
    lb.seed(p, 0);
    let k = key(p.client, p.vip, CLIENT_PORT, VIP_PORT);
    let first = first_snat_port(&k);
    let rkey = |port: u16| key(p.backends[0], p.snat, BACKEND_PORT, port);
    // Another client's live flow holds the first candidate port.
    let other = key(v4(198, 18, 1, 99), p.vip, 999, VIP_PORT);
    let held = ReverseNat {
        flow: other,
        backend: 0,
        service_id: 0,
    };
    lb.reverse_nat.insert(rkey(first), held, 0).unwrap();
    let live = FlowState {
        last_seen_ns: u64::MAX / 2, // far in the future of the test's clock: live
        backend: 0,
        snat_port: first.to_be(),
        flags: 0,
        _pad: 0,
    };
    lb.flows.insert(other, live, 0).unwrap();
    let (action, out) = lb.run(&build(&syn(p)), lb.lb1);
    assert_eq!(action, XDP_REDIRECT);
    let want = if first == SNAT_MAX {
        SNAT_MIN
    } else {
        first + 1
    };
    assert_eq!(decode(&out).sport, want, "next port after the held one");
    assert_eq!(
        lb.reverse(rkey(first)).unwrap().flow,
        other,
        "held entry untouched"
    );

    // Once that flow is gone, its entry is stale and a new flow may take the port.
    lb.flows.remove(&other).unwrap();
    let k2 = key(p.client, p.vip, CLIENT_PORT + 7, VIP_PORT);
    let second = first_snat_port(&k2);
    let held2 = ReverseNat {
        flow: other,
        ..held
    };
    lb.reverse_nat.insert(rkey(second), held2, 0).unwrap();
    let (_, out) = lb.run(
        &build(&Seg {
            sport: CLIENT_PORT + 7,
            ..syn(p)
        }),
        lb.lb1,
    );
    assert_eq!(decode(&out).sport, second, "stale entry taken over");
    assert_eq!(lb.reverse(rkey(second)).unwrap().flow, k2);
}

// ---------------------------------------------------------------------------------------
// Next hop outcomes

#[test]
fn forward_without_neighbour_route_or_tx_port_drops() {
    let p = plan4();
    let cases = [
        (
            "backend without neighbour entry",
            v4(198, 18, 0, 12),
            counters::DROP_NO_NEIGH,
        ),
        (
            "backend without route",
            v4(198, 19, 5, 5),
            counters::DROP_NO_ROUTE,
        ),
    ];
    for (what, backend, counter) in cases {
        let mut lb = Lb::new();
        let plan = Plan {
            backends: [backend, backend],
            ..p
        };
        lb.seed(plan, 0);
        let input = build(&syn(plan));
        let (action, _) = lb.run(&input, lb.lb1);
        assert_eq!((action, lb.counter(counter)), (XDP_DROP, 1), "{what}");
        assert_eq!(lb.counter(counters::FWD_IN), 0, "{what}");
    }
    let mut lb = Lb::new();
    lb.seed(p, 0);
    let lb0 = lb.lb0;
    lb.tx_ports.remove(lb0).unwrap();
    let (action, _) = lb.run(&build(&syn(p)), lb.lb1);
    assert_eq!(
        (action, lb.counter(counters::DROP_NO_TX_PORT)),
        (XDP_DROP, 1),
        "no TX port"
    );
}

/// Keeps the test thread on the CPU it runs on: the next-hop cache is per CPU, and
/// BPF_PROG_TEST_RUN runs the program on the caller's CPU.
fn stay_on_this_cpu() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it, and
    // sched_setaffinity only reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(libc::sched_getcpu() as usize, &mut set);
        libc::sched_setaffinity(0, size_of_val(&set), &set)
    };
    assert_eq!(rc, 0, "sched_setaffinity");
}

#[test]
fn next_hop_is_reused_for_its_ttl_then_follows_a_neighbour_change() {
    stay_on_this_cpu();
    let p = plan4();
    let mut lb = Lb::new();
    lb.seed(p, 0);
    let (_, out) = lb.run(&build(&syn(p)), lb.lb1);
    let first = decode(&out);
    let i = p.backends.iter().position(|b| *b == first.dst).unwrap();
    assert_eq!(first.eth_dst, BACKEND_MACS[i]);

    // The backend's MAC changes (its host was replaced): the flow's packets keep the
    // cached next hop until it expires, then the FIB lookup finds the new neighbour.
    let moved = [0x02, 0, 0, 0, 0, 0x99];
    lb.ns.ip(&format!(
        "neigh replace {} lladdr {} dev lb0 nud permanent",
        first.dst,
        mac_str(moved)
    ));
    let ack = build(&Seg {
        flags: ACK,
        ..syn(p)
    });
    let (action, out) = lb.run(&ack, lb.lb1);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(decode(&out).eth_dst, BACKEND_MACS[i], "cached next hop");
    sleep(Duration::from_nanos(NEXT_HOP_TTL_NS) + Duration::from_millis(100));
    let (action, out) = lb.run(&ack, lb.lb1);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(decode(&out).eth_dst, moved, "looked up again after its TTL");
    assert_eq!(lb.counter(counters::FWD_IN), 3);
}

#[test]
fn a_reused_backend_id_never_gets_the_old_backends_cached_next_hop() {
    stay_on_this_cpu();
    let p = plan4();
    let mut lb = Lb::new();
    lb.seed(p, 0);
    let (_, out) = lb.run(&build(&syn(p)), lb.lb1);
    assert_eq!(decode(&out).eth_dst, BACKEND_MACS[0]);
    // Backend id 0 now stands for the other backend (removed, and its id given to a new
    // one): the flow's next packet goes to the new address and its own MAC at once.
    lb.set_backend(
        Plan {
            backends: [p.backends[1], p.backends[1]],
            ..p
        },
        0,
        BACKEND_UP,
    );
    let ack = build(&Seg {
        flags: ACK,
        ..syn(p)
    });
    let (action, out) = lb.run(&ack, lb.lb1);
    assert_eq!(action, XDP_REDIRECT);
    let seen = decode(&out);
    assert_eq!((seen.dst, seen.eth_dst), (p.backends[1], BACKEND_MACS[1]));
}

#[test]
fn a_packet_longer_than_the_cached_next_hop_has_seen_is_looked_up_again() {
    stay_on_this_cpu();
    let p = plan4();
    let mut lb = Lb::new();
    lb.seed(p, 0);
    // A locked MTU: forwarding uses a route's MTU only then (or with ip_forward_use_pmtu).
    for b in p.backends {
        lb.ns.ip(&format!("route add {b}/32 dev lb0 mtu lock 600"));
    }
    let small = build(&syn(p));
    let (action, _) = lb.run(&small, lb.lb1);
    assert_eq!(action, XDP_REDIRECT, "within the route's MTU");
    // Longer than the route's MTU: the cache has only seen a short packet, so the FIB
    // lookup runs and reports it.
    let long = build(&Seg {
        flags: ACK,
        payload: vec![b'x'; 1000],
        ..syn(p)
    });
    let (action, _) = lb.run(&long, lb.lb1);
    assert_eq!(
        (action, lb.counter(counters::DROP_FRAG_NEEDED)),
        (XDP_DROP, 1),
        "too long for the route"
    );
    let (action, _) = lb.run(&small, lb.lb1);
    assert_eq!(action, XDP_REDIRECT, "short packets still go");
    assert_eq!(lb.counter(counters::FWD_IN), 2);
}

#[test]
fn reply_to_a_client_without_neighbour_is_passed_rewritten() {
    let p = Plan {
        client: v4(198, 18, 1, 3),
        ..plan4()
    };
    let mut lb = Lb::new();
    lb.seed(p, 0);
    assert_eq!(lb.run(&build(&syn(p)), lb.lb1).0, XDP_REDIRECT);
    let snat_port = u16::from_be(
        lb.flow(key(p.client, p.vip, CLIENT_PORT, VIP_PORT))
            .unwrap()
            .snat_port,
    );
    let reply = Seg {
        src: p.backends[0],
        dst: p.snat,
        sport: BACKEND_PORT,
        dport: snat_port,
        flags: SYN | ACK,
        eth_dst: LB0_MAC,
        eth_src: BACKEND_MACS[0],
        ..syn(p)
    };
    let (action, out) = lb.run(&build(&reply), lb.lb0);
    assert_eq!(action, XDP_PASS);
    assert_eq!(lb.counter(counters::PASS_NO_NEIGH_OUT), 1);
    let seen = decode(&out);
    assert_eq!(
        (seen.src, seen.dst, seen.sport, seen.dport),
        (p.vip, p.client, VIP_PORT, CLIENT_PORT)
    );
}

// ---------------------------------------------------------------------------------------
// Flow expiry: idle flows and closed (FIN both ways, or RST) flows are forgotten, so the
// next packet of the 5-tuple is balanced afresh. Each test pins a flow on backend 0, then
// points the whole Maglev table at backend 1: a packet that still reaches backend 0 used
// the flow entry, one that reaches backend 1 made a new flow.

const MS: u64 = 1_000_000;

/// A client → VIP segment of the connection from `sport`.
fn from_client(p: Plan, sport: u16, flags: u8) -> Seg {
    Seg {
        sport,
        flags,
        ..syn(p)
    }
}

/// A backend 0 → LB reply segment to the flow from client port `sport`, whose SNAT port
/// is read from the flow table.
fn from_backend(lb: &Lb, p: Plan, sport: u16, flags: u8) -> Seg {
    let fs = lb
        .flow(key(p.client, p.vip, sport, VIP_PORT))
        .unwrap_or_else(|| panic!("no flow entry for client port {sport}"));
    assert_eq!(fs.backend, 0, "replies are built for backend 0");
    Seg {
        src: p.backends[0],
        dst: p.snat,
        sport: BACKEND_PORT,
        dport: u16::from_be(fs.snat_port),
        flags,
        eth_dst: LB0_MAC,
        eth_src: BACKEND_MACS[0],
        payload: b"HTTP/1.0 200 OK\r\n\r\n".to_vec(),
        ..syn(p)
    }
}

impl Lb {
    /// Runs a client → VIP segment; it must be forwarded. Returns the backend index it
    /// went to.
    fn forward_to(&mut self, p: Plan, s: &Seg) -> usize {
        let (action, out) = self.run(&build(s), self.lb1);
        assert_eq!(action, XDP_REDIRECT, "client port {}: action", s.sport);
        let dst = decode(&out).dst;
        p.backends
            .iter()
            .position(|&b| b == dst)
            .unwrap_or_else(|| panic!("client port {}: sent to {dst}", s.sport))
    }

    /// Runs a backend → LB reply; it must be rewritten toward the client.
    fn reply(&mut self, p: Plan, s: &Seg) {
        let (action, out) = self.run(&build(s), self.lb0);
        assert_eq!(action, XDP_REDIRECT, "reply to port {}: action", s.dport);
        let seen = decode(&out);
        assert_eq!((seen.src, seen.dst), (p.vip, p.client), "reply rewritten");
    }
}

#[test]
fn idle_flow_expires_and_is_rebalanced() {
    let p = plan4();
    let idle = Duration::from_millis(200);
    let mut lb = Lb::new();
    lb.seed(p, 0);
    lb.config
        .set(0, config_with_timeouts(200 * MS, 3_600_000 * MS), 0)
        .unwrap();
    let k = key(p.client, p.vip, CLIENT_PORT, VIP_PORT);
    let start = Instant::now();
    assert_eq!(lb.forward_to(p, &syn(p)), 0);
    lb.fill_maglev(1);
    let ack = from_client(p, CLIENT_PORT, ACK);
    assert_eq!(
        lb.forward_to(p, &ack),
        0,
        "within the idle timeout: same flow"
    );
    assert!(
        start.elapsed() < idle,
        "test too slow to check the live flow"
    );
    assert_eq!(lb.stats(false, 0).new_flows, 1);

    sleep(idle + Duration::from_millis(100));
    assert_eq!(lb.forward_to(p, &ack), 1, "idle past the timeout: new flow");
    assert_eq!(lb.flow(k).unwrap().backend, 1);
    assert_eq!(lb.stats(false, 0).new_flows, 2);
    assert_eq!(lb.stats(true, 1).new_flows, 1);
    // The new flow is live again: the next packet stays on backend 1.
    assert_eq!(lb.forward_to(p, &ack), 1);
    assert_eq!(lb.stats(false, 0).new_flows, 2);
}

#[test]
fn closed_flow_expires_after_the_closed_timeout_but_a_half_closed_one_does_not() {
    let p = plan4();
    let closed = Duration::from_millis(200);
    let mut lb = Lb::new();
    lb.seed(p, 0);
    lb.config
        .set(0, config_with_timeouts(3_600_000 * MS, 200 * MS), 0)
        .unwrap();
    // (what, client port, flags the flow must end with, whether it expires)
    let cases: [(&str, u16, u8, bool); 5] = [
        (
            "FIN from both sides",
            1001,
            FLOW_FIN_CLIENT | FLOW_FIN_BACKEND,
            true,
        ),
        ("RST from the client", 1002, FLOW_RST, true),
        ("RST from the backend", 1003, FLOW_RST, true),
        ("FIN from the client only", 1004, FLOW_FIN_CLIENT, false),
        ("FIN from the backend only", 1005, FLOW_FIN_BACKEND, false),
    ];
    let start = Instant::now();
    for (what, sport, _, _) in cases {
        assert_eq!(
            lb.forward_to(p, &from_client(p, sport, SYN)),
            0,
            "{what}: SYN"
        );
        lb.reply(p, &from_backend(&lb, p, sport, SYN | ACK));
    }
    lb.fill_maglev(1);
    let fin_client = |sport| from_client(p, sport, FIN | ACK);
    // FIN from both sides, then the client's last ACK.
    assert_eq!(lb.forward_to(p, &fin_client(1001)), 0);
    lb.reply(p, &from_backend(&lb, p, 1001, FIN | ACK));
    assert_eq!(lb.forward_to(p, &from_client(p, 1001, ACK)), 0);
    // RSTs.
    assert_eq!(lb.forward_to(p, &from_client(p, 1002, RST)), 0);
    lb.reply(p, &from_backend(&lb, p, 1003, RST | ACK));
    // Half closes.
    assert_eq!(lb.forward_to(p, &fin_client(1004)), 0);
    lb.reply(p, &from_backend(&lb, p, 1005, FIN | ACK));
    for (what, sport, flags, _) in cases {
        let fs = lb.flow(key(p.client, p.vip, sport, VIP_PORT)).unwrap();
        assert_eq!((fs.backend, fs.flags), (0, flags), "{what}: flow entry");
    }
    // Within the closed timeout even a closed flow is kept.
    assert_eq!(lb.forward_to(p, &from_client(p, 1001, ACK)), 0);
    assert!(
        start.elapsed() < closed,
        "test too slow to check live flows"
    );
    assert_eq!(lb.stats(false, 0).new_flows, 5);

    sleep(closed + Duration::from_millis(100));
    let mut new_flows = 5;
    for (what, sport, _, expires) in cases {
        let want = if expires { 1 } else { 0 };
        assert_eq!(
            lb.forward_to(p, &from_client(p, sport, SYN)),
            want,
            "{what}: after the closed timeout"
        );
        new_flows += want as u64;
        assert_eq!(lb.stats(false, 0).new_flows, new_flows, "{what}: new flows");
    }
    assert_eq!(lb.stats(true, 1).new_flows, 3);
}

#[test]
fn traffic_in_either_direction_keeps_a_flow_past_the_idle_timeout() {
    let p = plan4();
    let idle = Duration::from_millis(300);
    let step = Duration::from_millis(100);
    let mut lb = Lb::new();
    lb.seed(p, 0);
    lb.config
        .set(0, config_with_timeouts(300 * MS, 3_600_000 * MS), 0)
        .unwrap();
    let k = key(p.client, p.vip, CLIENT_PORT, VIP_PORT);
    assert_eq!(lb.forward_to(p, &syn(p)), 0);
    lb.fill_maglev(1);
    let ack = from_client(p, CLIENT_PORT, ACK);
    let mut last = Instant::now();
    let mut check_gap = |what: &str| {
        let gap = last.elapsed();
        assert!(gap < idle, "{what}: {gap:?} between packets, test stalled");
        last = Instant::now();
    };

    // Client packets only, for three idle timeouts.
    let start = Instant::now();
    while start.elapsed() < 3 * idle {
        sleep(step);
        check_gap("client packets");
        assert_eq!(lb.forward_to(p, &ack), 0, "client packets keep the flow");
    }
    // Backend replies only, for three idle timeouts: each one refreshes the flow.
    let reply = from_backend(&lb, p, CLIENT_PORT, ACK);
    let start = Instant::now();
    while start.elapsed() < 3 * idle {
        sleep(step);
        check_gap("backend replies");
        let before = lb.flow(k).unwrap().last_seen_ns;
        lb.reply(p, &reply);
        let after = lb.flow(k).unwrap().last_seen_ns;
        assert!(
            after > before,
            "reply refreshes last_seen ({before} → {after})"
        );
    }
    sleep(step);
    check_gap("last client packet");
    assert_eq!(lb.forward_to(p, &ack), 0, "replies kept the flow");
    assert_eq!(lb.stats(false, 0).new_flows, 1);

    // And the timeout was live all along: silence past it moves the flow.
    sleep(idle + step);
    assert_eq!(lb.forward_to(p, &ack), 1);
    assert_eq!(lb.stats(false, 0).new_flows, 2);
}

#[test]
fn proxy_service_packets_go_to_the_stack_untouched_and_are_counted() {
    let mut lb = Lb::new();
    for p in [plan4(), plan6()] {
        lb.seed(p, 0);
        let vip = VipKey::from_socket_addr(SocketAddr::new(p.vip, VIP_PORT));
        let svc = Service {
            id: 0,
            table_offset: 0,
            mode: MODE_PROXY,
            _pad: 0,
        };
        lb.services.insert(vip, svc, 0).unwrap();
        let before = lb.stats(false, 0);
        for flags in [SYN, ACK, FIN | ACK, RST] {
            let input = build(&Seg { flags, ..syn(p) });
            let (action, out, bumped) = lb.run_counted(&input);
            let what = format!("{} flags {flags:#x}", p.vip);
            assert_eq!(action, XDP_PASS, "{what}: to the local stack");
            assert_eq!(out, input, "{what}: untouched");
            assert_eq!(bumped, [counters::PASS_PROXY], "{what}: counters");
        }
        let after = lb.stats(false, 0);
        assert_eq!(
            after.packets_in - before.packets_in,
            4,
            "{}: service packets",
            p.vip
        );
        assert!(
            lb.flow(key(p.client, p.vip, CLIENT_PORT, VIP_PORT))
                .is_none(),
            "no NAT flow"
        );
    }
    assert_eq!(lb.counter(counters::PASS_PROXY), 8);
}

/// Collects the log records the program writes (read with aya-log, as the daemon does).
struct Records(std::sync::Mutex<Vec<(log::Level, String, String)>>);

impl log::Log for Records {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        let rec = (r.level(), r.target().to_string(), r.args().to_string());
        self.0.lock().unwrap().push(rec);
    }

    fn flush(&self) {}
}

#[test]
fn a_rare_drop_writes_a_log_record_and_a_forwarded_packet_none() {
    let records: &'static Records = Box::leak(Box::new(Records(Default::default())));
    let take_records = |logger: &mut aya_log::EbpfLogger<&Records>| {
        logger.flush();
        std::mem::take(&mut *records.0.lock().unwrap())
    };

    let mut lb = Lb::new();
    let mut logger =
        aya_log::EbpfLogger::init_with_logger(&mut lb.ebpf, records).expect("log ring buffer");
    let p = plan4();
    lb.seed(p, 0);
    let (action, _) = lb.run(&build(&syn(p)), lb.lb1);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(take_records(&mut logger), [], "forwarded: nothing logged");

    let mut lb = Lb::new();
    let mut logger =
        aya_log::EbpfLogger::init_with_logger(&mut lb.ebpf, records).expect("log ring buffer");
    let plan = Plan {
        backends: [v4(198, 19, 5, 5); 2],
        ..p
    };
    lb.seed(plan, 0);
    // One CPU: the limit of one record a second is per CPU.
    stay_on_this_cpu();
    let (action, _) = lb.run(&build(&syn(plan)), lb.lb1);
    assert_eq!(action, XDP_DROP);
    assert_eq!(
        take_records(&mut logger),
        [(
            log::Level::Warn,
            "lb_ebpf::events".to_string(),
            "packet dropped: no route toward the next hop".to_string()
        )]
    );

    // The failure lasts: every packet is still dropped and counted, but within the second
    // no further record is written (a log line per packet would flood the daemon's log).
    let before = lb.counter(counters::DROP_NO_ROUTE);
    for sport in 1..=20 {
        let (action, _) = lb.run(&build(&from_client(plan, CLIENT_PORT + sport, SYN)), lb.lb1);
        assert_eq!(action, XDP_DROP);
    }
    assert_eq!(lb.counter(counters::DROP_NO_ROUTE), before + 20);
    assert_eq!(take_records(&mut logger), [], "at most one record a second");
}
