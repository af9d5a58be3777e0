//! Keys and values of the maps the daemon writes and the XDP program reads.
//!
//! Byte order: addresses are the packet's bytes (network order) viewed as native `u32`
//! words, so the XDP program can copy them without swapping; an IPv4 address sits in
//! word 0 with words 1..4 zero. Ports are network order too, as in the TCP header.
//! Timeouts and port ranges in [`GlobalConfig`] are host order (they are not packet data).

use core::mem::size_of;

/// `family` value for IPv4.
pub const FAMILY_V4: u8 = 4;
/// `family` value for IPv6.
pub const FAMILY_V6: u8 = 6;
/// IANA protocol number of TCP, the only protocol balanced today.
pub const PROTO_TCP: u8 = 6;
/// IP protocol numbers of ICMP and ICMPv6.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// Services (VIP:port) the program knows; also the length of the per-service stats array.
pub const MAX_SERVICES: u32 = 256;
/// Backend slots, shared by all services; also the length of the per-backend stats array.
pub const MAX_BACKENDS: u32 = 16384;
/// Default Maglev ring size (prime), as in the Maglev paper.
pub const DEFAULT_RING_SIZE: u32 = 65537;
/// Interfaces the program may redirect to (devmap size).
pub const MAX_IFACES: u32 = 64;
/// Slots of the proxy listener socket map (`PROXY_LISTENERS`): one listener per family
/// is enough, the rest is room.
pub const MAX_PROXY_LISTENERS: u32 = 4;

/// A 5-tuple in one direction. Key of the flow table (client → VIP) and of the reverse
/// NAT table (backend → SNAT address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address, network order words.
    pub src: [u32; 4],
    /// Destination address, network order words.
    pub dst: [u32; 4],
    /// Source port, network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// IP protocol number ([`PROTO_TCP`]).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// Key of the service map: which VIP:port is balanced.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// VIP address, network order words.
    pub addr: [u32; 4],
    /// VIP port, network order.
    pub port: u16,
    /// IP protocol number ([`PROTO_TCP`]).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}
const _: () = assert!(size_of::<VipKey>() == 20);

/// Forwarding mode of a service: full NAT in XDP, both directions through the LB.
pub const MODE_NAT: u32 = 0;
/// Forwarding mode of a service: the XDP program hands the VIP's packets to the local
/// stack, where the daemon accepts the connections (sk_lookup) and proxies them to the
/// backends behind a PROXY protocol header.
pub const MODE_PROXY: u32 = 1;
/// Forwarding mode of a service: direct server return. The client's packet goes to the
/// backend unchanged inside an encapsulation (`Service::encap`, see `encap`); the backend
/// answers the client directly, so only the inbound half crosses the LB.
pub const MODE_DSR: u32 = 2;
/// Forwarding mode of a service: destination NAT only. The destination becomes the
/// backend's address and port and the source stays the client's; the backends route
/// their replies back through the LB, which rewrites the source back to the VIP.
pub const MODE_DNAT: u32 = 3;

/// Value of the service map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index into the per-service stats array; below `MAX_SERVICES`.
    pub id: u32,
    /// Start of this service's live Maglev table inside the `MAGLEV` array. The daemon
    /// writes a new table into the other half and then rewrites this value, so a packet
    /// sees either the whole old table or the whole new one.
    pub table_offset: u32,
    /// One of the `MODE_*` constants.
    pub mode: u32,
    /// [`MODE_DSR`]: one of the `encap::ENCAP_*` constants; otherwise 0.
    pub encap: u8,
    /// Who may reach it: `ACCESS_*` bits; 0 lets everyone in.
    pub access: u8,
    /// [`MODE_DSR`] with `encap::ENCAP_GUE`: the backends' GUE UDP port, network order.
    pub gue_port: u16,
}
const _: () = assert!(size_of::<Service>() == 16);

/// A service slot's VIP and its `SERVICES` entry: the value of `SERVICE_SLOTS`, indexed
/// by [`Service::id`]. The established fast path finds a flow's service through its
/// backend ([`Backend::service_id`]) in this array instead of a hash lookup of the VIP,
/// and trusts it only when `vip` is the segment's destination. All zero: no service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceSlot {
    pub vip: VipKey,
    pub service: Service,
}
const _: () = assert!(size_of::<ServiceSlot>() == 36);

/// [`Service::access`]: only the sources in `ALLOW` under the service's id may open a
/// flow; the others' packets that would are refused (`drop_denied`).
pub const ACCESS_LIST: u8 = 1;
/// [`Service::access`]: a refused segment is answered with a TCP RST instead of dropped.
pub const ACCESS_RESET: u8 = 2;
/// [`Service::access`]: the flows of a source not (or no longer) in the list are refused
/// too, not only its new ones.
pub const ACCESS_CUT_ESTABLISHED: u8 = 4;

/// [`Service::access`]: someone follows a connection of this service (`lb explain
/// --watch`): its packets are compared with [`WatchSpec`] and the matching ones reported.
pub const ACCESS_WATCH: u8 = 8;

/// The connection `lb explain --watch` follows: the `WATCH` array's one entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchSpec {
    /// The client → VIP tuple, as in its packets.
    pub key: FlowKey,
    /// Report one packet in `every` (at random), at least 1.
    pub every: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<WatchSpec>() == 48);

/// One packet of the watched connection, as the program saw it (`WATCH_EVENTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchEvent {
    /// `bpf_ktime_get_coarse_ns()`.
    pub ns: u64,
    /// The frame's length.
    pub len: u32,
    /// TCP sequence and acknowledgment numbers, host order.
    pub seq: u32,
    pub ack: u32,
    pub tcp_flags: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<WatchEvent>() == 24);

impl WatchEvent {
    /// The event in a ring buffer record (native byte order, the layout above).
    pub fn from_bytes(b: &[u8]) -> Option<WatchEvent> {
        if b.len() < size_of::<WatchEvent>() {
            return None;
        }
        let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut ns = [0u8; 8];
        ns.copy_from_slice(&b[..8]);
        Some(WatchEvent {
            ns: u64::from_ne_bytes(ns),
            len: u32_at(8),
            seq: u32_at(12),
            ack: u32_at(16),
            tcp_flags: b[20],
            _pad: [0; 3],
        })
    }
}

/// Bytes of the `WATCH_EVENTS` ring buffer (a power of two, a multiple of the page).
pub const WATCH_RING_BYTES: u32 = 64 * 1024;

/// Entries of the `ALLOW` trie, every service's together.
pub const MAX_ALLOW: u32 = 16_384;
/// The `ALLOW` trie's bits before the address: the service id.
pub const ALLOW_ID_BITS: u32 = 32;

/// The data of an `ALLOW` key: the service id (big-endian, so it is the leading bits)
/// and the address's bytes (IPv4: 4, then zeros; IPv6: 16). An entry's prefix length is
/// [`ALLOW_ID_BITS`] plus the range's; a lookup's is the whole address's. A service's
/// VIP has one family, and so have its clients and its ranges.
#[inline(always)]
pub fn allow_data(service: u32, addr: &[u8]) -> [u8; 20] {
    let mut d = [0u8; 20];
    let id = service.to_be_bytes();
    let mut i = 0;
    while i < 4 {
        d[i] = id[i];
        i += 1;
    }
    let mut j = 0;
    while j < addr.len() && j < 16 {
        d[4 + j] = addr[j];
        j += 1;
    }
    d
}

/// Backend slot is unused.
pub const BACKEND_EMPTY: u8 = 0;
/// Backend takes new flows.
pub const BACKEND_UP: u8 = 1;
/// Backend keeps its flows but takes no new ones (not in the Maglev table).
pub const BACKEND_DRAINING: u8 = 2;
/// Backend is down: its flows are re-balanced onto the others.
pub const BACKEND_DOWN: u8 = 3;

/// Value of the backend array, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Backend address, network order words.
    pub addr: [u32; 4],
    /// Source address the LB uses toward this backend (SNAT), network order words.
    pub snat_addr: [u32; 4],
    /// Backend port, network order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// One of the `BACKEND_*` states.
    pub state: u8,
    /// The service this backend belongs to.
    pub service_id: u32,
}
const _: () = assert!(size_of::<Backend>() == 40);

/// The client sent a FIN.
pub const FLOW_FIN_CLIENT: u8 = 1;
/// The backend sent a FIN.
pub const FLOW_FIN_BACKEND: u8 = 2;
/// Either side sent a RST.
pub const FLOW_RST: u8 = 4;
/// Flags after which a flow uses the short `closed_timeout_ns`.
pub const FLOW_CLOSED: u8 = FLOW_FIN_CLIENT | FLOW_FIN_BACKEND;
/// The backend answered the client's SYN (SYN-ACK seen).
pub const FLOW_REPLIED: u8 = 8;
/// The client acknowledged after the backend's answer, or the flow was picked up from a
/// segment other than a SYN: until then the flow is half-open (`half_open_timeout_ns`).
pub const FLOW_ESTABLISHED: u8 = 16;
/// The backend sent its FIN before it had the client's (it closed first, or both did at
/// once): it holds the connection in TIME_WAIT (see `flow::port_hold`).
pub const FLOW_BACKEND_TIME_WAIT: u8 = 32;
/// The client acknowledged after FINs both ways: a backend that closed passively has
/// its last ACK and has forgotten the connection.
pub const FLOW_LAST_ACK: u8 = 64;
/// `close_tsval` holds the TSval of the client's last segment while closing.
pub const FLOW_CLIENT_TS: u8 = 128;

/// Value of the flow table (key: client → VIP [`FlowKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// `bpf_ktime_get_coarse_ns()` of the last packet in either direction:
    /// CLOCK_MONOTONIC_COARSE, the same clock as CLOCK_MONOTONIC up to one tick behind.
    pub last_seen_ns: u64,
    /// Backend id this flow is pinned to (below [`MAX_BACKENDS`]).
    pub backend: u16,
    /// Source port toward the backend, network order.
    pub snat_port: u16,
    /// `FLOW_*` bits.
    pub flags: u8,
    /// Which SNAT address the flow uses: 0 the backend's own (`Backend::snat_addr`, the
    /// family's first configured one or the egress address), else that entry of the
    /// family's `SNAT_ADDRS`.
    pub snat_idx: u8,
    /// `lb_common::syn_proxy::PROXY_*` bits: 0 unless the flow was opened by a SYN
    /// cookie, when the LB opened the backend's leg itself and translates between the
    /// two (see `syn_proxy`).
    pub proxy: u8,
    /// A proxied flow's window scales: the one the LB gave the client (high nibble) and
    /// the backend's (low nibble).
    pub wscale: u8,
    /// Once the flow closes: the sequence number after the client's last segment (the
    /// backend's `rcv_nxt`), host order. While a proxied flow's backend leg opens: the
    /// client's initial sequence number.
    pub close_seq: u32,
    /// Once the flow closes: the TSval of the client's last segment (with
    /// `FLOW_CLIENT_TS`), host order.
    pub close_tsval: u32,
    /// A proxied flow: the backend's sequence numbers minus the client's view of them
    /// (the LB's cookie ISN); while the backend leg opens, the cookie itself. Host order.
    pub seq_delta: u32,
    /// A proxied flow with timestamps: the backend's TSvals minus the client's view of
    /// them; while the backend leg opens, the TSval the LB sent the client. Host order.
    pub ts_delta: u32,
    /// `bpf_ktime_get_coarse_ns()` when the flow entered the table; 0 for a flow carried
    /// over from a table of the 32-byte layout, which did not keep it.
    pub first_seen_ns: u64,
    /// Packets of the flow the LB forwarded, both directions. Written without atomics
    /// by whichever CPU has the packet, so the two directions on two CPUs at once may
    /// lose one of their increments: a close count, not an exact one.
    pub packets: u64,
}
const _: () = assert!(size_of::<FlowState>() == 48);

/// Size of a [`FlowState`] in the layout before `first_seen_ns` and `packets`: the
/// fields before them, at the same offsets.
pub const FLOW_STATE_32_BYTE_LAYOUT: usize = 32;

impl FlowState {
    /// The entry for one of the 32-byte layout: its fields, no age, no packets yet.
    pub fn from_32_byte_layout(b: &[u8; FLOW_STATE_32_BYTE_LAYOUT]) -> FlowState {
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut last_seen = [0u8; 8];
        last_seen.copy_from_slice(&b[0..8]);
        FlowState {
            last_seen_ns: u64::from_ne_bytes(last_seen),
            backend: u16_at(8),
            snat_port: u16_at(10),
            flags: b[12],
            snat_idx: b[13],
            proxy: b[14],
            wscale: b[15],
            close_seq: u32_at(16),
            close_tsval: u32_at(20),
            seq_delta: u32_at(24),
            ts_delta: u32_at(28),
            first_seen_ns: 0,
            packets: 0,
        }
    }

    /// This entry in the 32-byte layout (what an lb of that layout left, for tests).
    pub fn to_32_byte_layout(&self) -> [u8; FLOW_STATE_32_BYTE_LAYOUT] {
        let mut b = [0u8; FLOW_STATE_32_BYTE_LAYOUT];
        b[0..8].copy_from_slice(&self.last_seen_ns.to_ne_bytes());
        b[8..10].copy_from_slice(&self.backend.to_ne_bytes());
        b[10..12].copy_from_slice(&self.snat_port.to_ne_bytes());
        b[12..16].copy_from_slice(&[self.flags, self.snat_idx, self.proxy, self.wscale]);
        let words = [
            self.close_seq,
            self.close_tsval,
            self.seq_delta,
            self.ts_delta,
        ];
        for (i, w) in words.iter().enumerate() {
            b[16 + 4 * i..20 + 4 * i].copy_from_slice(&w.to_ne_bytes());
        }
        b
    }
}
const _: () = assert!(MAX_BACKENDS <= u16::MAX as u32);

/// Value of the reverse NAT table (key: backend → SNAT address:port [`FlowKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseNat {
    /// The flow's client → VIP key, to rewrite replies and refresh the flow entry.
    pub flow: FlowKey,
    /// Backend id, for the per-backend counters (below [`MAX_BACKENDS`]).
    pub backend: u16,
    /// The backend's answers to the flow's SYN while it is not established
    /// (`flow::SynAcks`): the backend may hold that request after the LB has let the
    /// flow go (`flow::request_held`). It is the upper half of what was a 32-bit backend
    /// id, always 0 there, so entries pinned by an earlier lb read as holding nothing.
    pub syn_acks: u16,
    /// Service id, for the per-service counters.
    pub service_id: u32,
}
const _: () = assert!(size_of::<ReverseNat>() == 48);

/// A backend's next hop as `bpf_fib_lookup` last found it: the value of the per-CPU
/// `NEXT_HOPS` array (index: backend id). The forward path reuses it for
/// [`NEXT_HOP_TTL_NS`] instead of a FIB lookup per packet (a third of the program's cost),
/// so a route or neighbour change reaches established flows within that time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// The backend address it was looked up for (backend ids are reused), network order.
    pub dst: [u32; 4],
    /// `bpf_ktime_get_coarse_ns()` after which it is looked up again.
    pub expires_ns: u64,
    /// Egress interface.
    pub ifindex: u32,
    /// The longest IP packet (`ip_len`) the lookup found within the route's MTU; a longer
    /// one is looked up again (and may get "fragmentation needed").
    pub max_len: u32,
    /// Destination MAC, then source MAC: the Ethernet header's first 12 bytes.
    pub macs: [u8; 12],
    /// The interface the looked-up packet came in on (the lookup depends on it).
    pub ingress: u32,
}
const _: () = assert!(size_of::<NextHop>() == 48);

/// How long a [`NextHop`] entry is used before the next FIB lookup.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// A reply's next hop toward a client as `bpf_fib_lookup` last found it: the value of
/// the per-CPU `REPLY_HOPS` cache, a direct-mapped table indexed by
/// [`reply_hop_slot`]. Replies are most of a download's packets, and their FIB lookup
/// was a third of the reply path's cost; the cache holds them for
/// [`NEXT_HOP_TTL_NS`], as `NEXT_HOPS` does toward backends. Two clients whose slots
/// collide take turns: a miss is a lookup, never a wrong hop.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyHop {
    /// The reply's source after the rewrite (the VIP): a route may depend on it.
    pub src: [u32; 4],
    /// The next hop toward the client address in `hop.dst`.
    pub hop: NextHop,
}
const _: () = assert!(size_of::<ReplyHop>() == 64);

/// Slots of the `REPLY_HOPS` cache, a power of two: 256 KiB per CPU.
pub const REPLY_HOP_SLOTS: u32 = 4096;

/// Entries of `SNAT_SWEPT`: (backend, SNAT address) pairs whose ports all ran out lately.
pub const SNAT_SWEPT_SLOTS: u32 = 4096;
const _: () = assert!(REPLY_HOP_SLOTS.is_power_of_two());

/// The `REPLY_HOPS` slot of a reply from `src` to `dst` (network order words).
#[inline(always)]
pub fn reply_hop_slot(src: &[u32; 4], dst: &[u32; 4]) -> u32 {
    let s = src[0] ^ src[1] ^ src[2] ^ src[3];
    let d = dst[0] ^ dst[1] ^ dst[2] ^ dst[3];
    // Multiplicative hashing: the high bits mix every bit of both words.
    let h = s.wrapping_mul(0x85eb_ca77) ^ d.wrapping_mul(0x9e37_79b1);
    h >> (32 - REPLY_HOP_SLOTS.trailing_zeros())
}

/// Interfaces whose frames the XDP programs filter by destination MAC, at most.
pub const MAX_LOCAL_MACS: usize = 8;

/// The attached interfaces' MAC addresses; the single entry of the `LOCAL_MACS` array.
/// A NIC drops unicast frames for other hosts before XDP sees them, but a veth, a bridge
/// port or a NIC in promiscuous mode does not: without this check a frame flooded by a
/// switch (a dead LB host's MAC aged out of its table) would be forwarded by every LB
/// host that sees it, and a flow would reach its backend twice.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalMacs {
    /// Interface indexes; 0 marks an unused slot.
    pub ifindex: [u32; MAX_LOCAL_MACS],
    /// Each interface's MAC as a word ([`mac_word`]): in memory its six bytes, then two
    /// zeros, the bytes the pinned map held when this was `[[u8; 8]; _]`.
    pub mac: [u64; MAX_LOCAL_MACS],
}
const _: () = assert!(size_of::<LocalMacs>() == 96);

/// A MAC's six bytes as the little-endian word whose top two bytes are zero: what one
/// 4-byte and one 2-byte load of a frame's address make on the little-endian BPF target,
/// so the program compares a MAC in one instruction. Bit 0 is the group (multicast) bit.
pub const fn mac_word(mac: &[u8; 6]) -> u64 {
    u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0])
}

impl LocalMacs {
    /// Whether a frame to `dst` that came in on `ifindex` is this host's: broadcast and
    /// multicast are, unicast only to that interface's MAC. An interface not listed is
    /// not filtered (the daemon lists those it attached to).
    /// `dst` is the frame's destination as a [`mac_word`].
    #[inline(always)]
    pub fn accepts(&self, ifindex: u32, dst: u64) -> bool {
        if dst & 1 != 0 || ifindex == 0 {
            return true;
        }
        let mut i = 0;
        while i < MAX_LOCAL_MACS {
            if self.ifindex[i] == ifindex {
                return self.mac[i] == dst;
            }
            i += 1;
        }
        true
    }
}

/// One CPU's cached reading of the coarse clock: `ns` as read during jiffy `tick` (the
/// program's `conntrack::now`); `ns` 0 before the first. The per-CPU `CLOCK` array's
/// value; not pinned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    pub tick: u64,
    pub ns: u64,
}

/// Settings that apply to every service; the single entry of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalConfig {
    /// An established flow idle this long is forgotten, nanoseconds.
    pub idle_timeout_ns: u64,
    /// A flow after FIN in both directions or a RST is forgotten after this, nanoseconds.
    pub closed_timeout_ns: u64,
    /// A half-open flow (no `FLOW_ESTABLISHED` yet) idle this long is forgotten, and its
    /// SNAT port freed, nanoseconds (the idle timeout when that is shorter).
    pub half_open_timeout_ns: u64,
    /// Maglev ring size (prime); each service has two tables of this size.
    pub ring_size: u32,
    /// Lowest SNAT source port, host order.
    pub snat_port_min: u16,
    /// Highest SNAT source port, host order.
    pub snat_port_max: u16,
    /// New flows a second one source may open (IPv4 address, IPv6 /64); 0 = no limit.
    pub source_rate: u32,
    /// How many new flows a source may open at once before `source_rate` applies (the
    /// token bucket's size); at least 1 when `source_rate` is set.
    pub source_burst: u32,
    /// SNAT addresses in `SNAT_ADDRS` per family (IPv4, IPv6); 0 or 1: each backend's
    /// own address only.
    pub snat_addrs: [u8; 2],
    /// When new flows are answered with SYN cookies: `syn_proxy::COOKIES_*`.
    pub syn_cookies: u8,
    /// Which segments may be NAT replies (`REPLIES_*` bits): with `REPLIES_ANY_PORT`
    /// (while a DNAT service exists) the reverse table is asked for replies to any port,
    /// since a DNAT reply goes to the client's own. Programs before the bits read this
    /// byte as "not 0: replies to any port", which stays right for every value (with
    /// `REPLIES_NO_VIP` alone it costs them a reverse lookup more per segment), so the
    /// pinned `CONFIG` keeps its layout version across an upgrade.
    pub replies: u8,
    /// With `COOKIES_AUTO`: SYNs a second one VIP may get before its new flows are
    /// opened by SYN cookie.
    pub syn_cookie_rate: u32,
}
const _: () = assert!(size_of::<GlobalConfig>() == 48);

/// `GlobalConfig::replies`: a DNAT service exists, so a reply may go to any port.
pub const REPLIES_ANY_PORT: u8 = 1;
/// `GlobalConfig::replies`: no service's VIP port lies in the SNAT port range, so a
/// segment to a port of that range is for no VIP: the established fast path looks it
/// up as a reply without asking `SERVICES` first. The daemon sets it only while that
/// holds, and clears it before a service on such a port goes in.
pub const REPLIES_NO_VIP: u8 = 2;

impl GlobalConfig {
    /// Whether a segment to `dport` (network order) may be a NAT reply: a port of the
    /// SNAT range, or any while a DNAT service exists.
    #[inline(always)]
    pub fn reply_port(&self, dport: u16) -> bool {
        self.in_snat_range(dport) || self.replies & REPLIES_ANY_PORT != 0
    }

    /// Whether a segment to `dport` (network order) is for no VIP whatever its address
    /// (see [`REPLIES_NO_VIP`]).
    #[inline(always)]
    pub fn no_vip_on(&self, dport: u16) -> bool {
        self.replies & (REPLIES_NO_VIP | REPLIES_ANY_PORT) == REPLIES_NO_VIP
            && self.in_snat_range(dport)
    }

    #[inline(always)]
    fn in_snat_range(&self, dport: u16) -> bool {
        let port = u16::from_be(dport);
        port >= self.snat_port_min && port <= self.snat_port_max
    }

    /// The SNAT addresses of a family in `SNAT_ADDRS`.
    #[inline(always)]
    pub fn snat_addr_count(&self, family: u8) -> u32 {
        let n = if family == FAMILY_V6 {
            self.snat_addrs[1]
        } else {
            self.snat_addrs[0]
        };
        (n as u32).min(MAX_SNAT_ADDRS)
    }
}

/// Where the sockmap splice verdict finds two kernel fields it needs, as byte offsets
/// read from the running kernel's BTF by the daemon: the single entry of the
/// `SPLICE_LAYOUT` array (all zero until the daemon writes it). With them `lb_splice`
/// cuts off bytes of a received skb that the socket already has (see
/// lb-ebpf/src/splice.rs). Host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceLayout {
    /// `struct sk_buff`: `sk`, the owning socket.
    pub skb_sk: u32,
    /// `struct sk_buff`: `cb` + `struct tcp_skb_cb`: `seq`, the sequence number of the
    /// skb's first byte (`TCP_SKB_CB(skb)->seq`).
    pub skb_seq: u32,
    /// `struct tcp_sock`: `copied_seq`, the next byte not yet handed on by the socket.
    pub copied_seq: u32,
    /// Nonzero once the daemon wrote the offsets.
    pub ready: u32,
}
const _: () = assert!(size_of::<SpliceLayout>() == 16);

/// SNAT addresses per address family (`--snat-ip` repeated): `SNAT_ADDRS` holds the
/// IPv4 ones at 0.. and the IPv6 ones from this index on.
pub const MAX_SNAT_ADDRS: u32 = 8;

/// The index in `SNAT_ADDRS` of a family's first address.
#[inline(always)]
pub fn snat_addrs_base(family: u8) -> u32 {
    if family == FAMILY_V6 {
        MAX_SNAT_ADDRS
    } else {
        0
    }
}

/// Sources whose new-flow rate is tracked at once (`SOURCE_BUCKETS`); the least
/// recently used one is forgotten when a new source comes.
pub const MAX_SOURCES: u32 = 65_536;

/// Sources that passed a SYN cookie remembered at once (`TRUSTED_SOURCES`); only a valid
/// cookie ACK enters one, so a spoofed flood cannot push real clients out.
pub const MAX_TRUSTED_SOURCES: u32 = 65_536;

/// Key of the per-source token buckets (and of `TRUSTED_SOURCES`): the client address, IPv6 masked to its /64 (a
/// host commonly holds a whole /64, so per-address buckets would be no limit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// Source address, network order words; IPv6 words 2 and 3 are zero.
    pub addr: [u32; 4],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<SourceKey>() == 20);

impl SourceKey {
    /// The bucket of a packet from `src` (network order words, as in [`FlowKey`]).
    #[inline(always)]
    pub fn of(src: &[u32; 4], family: u8) -> SourceKey {
        let mut addr = *src;
        if family == FAMILY_V6 {
            // Words are network-order bytes, so words 0 and 1 are the first 64 bits.
            addr[2] = 0;
            addr[3] = 0;
        }
        SourceKey {
            addr,
            family,
            _pad: [0; 3],
        }
    }
}

/// Packet and byte counters of a service or a backend (one per CPU in the maps).
/// "in" is client → backend, "out" is backend → client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub new_flows: u64,
}
const _: () = assert!(size_of::<TrafficCounters>() == 40);

impl TrafficCounters {
    /// Field-wise sum, to fold the per-CPU values.
    pub fn add(&mut self, other: &TrafficCounters) {
        self.packets_in += other.packets_in;
        self.bytes_in += other.bytes_in;
        self.packets_out += other.packets_out;
        self.bytes_out += other.bytes_out;
        self.new_flows += other.new_flows;
    }
}

/// Names of the maps in the eBPF object, used by the daemon and `lb stats`.
pub mod names {
    pub const SERVICES: &str = "SERVICES";
    /// Service id → its VIP and entry ([`super::ServiceSlot`]), as `SERVICES` has them.
    pub const SERVICE_SLOTS: &str = "SERVICE_SLOTS";
    pub const BACKENDS: &str = "BACKENDS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const FLOWS: &str = "FLOWS";
    pub const REVERSE_NAT: &str = "REVERSE_NAT";
    /// Half-open flows ([`FlowKey`] → [`FlowState`]), apart from `FLOWS`.
    pub const HALF_OPEN: &str = "HALF_OPEN";
    pub const CONFIG: &str = "CONFIG";
    pub const TX_PORTS: &str = "TX_PORTS";
    /// The attached interfaces' MACs ([`super::LocalMacs`]), for the destination check.
    pub const LOCAL_MACS: &str = "LOCAL_MACS";
    /// Array of one `u64`: the host's hand-off mark (`crate::handoff::mark`), which the
    /// daemon writes once and both `PROG_LB` and `PROG_NEIGH` read.
    pub const HANDOFF_MARK: &str = "HANDOFF_MARK";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    /// Per-CPU cached coarse clock reading ([`super::Clock`]); not pinned.
    pub const CLOCK: &str = "CLOCK";
    /// Per-CPU cache of replies' next hops toward clients ([`super::ReplyHop`]); not
    /// pinned: a new daemon starts with an empty one.
    pub const REPLY_HOPS: &str = "REPLY_HOPS";
    /// (backend << 3 | SNAT address index) → when a sweep of its SNAT ports last found
    /// none (`snat_probe::SWEEP_HOLD_NS`); not pinned.
    pub const SNAT_SWEPT: &str = "SNAT_SWEPT";
    /// Source ([`super::SourceKey`]) → its new-flow token bucket (see `source_limit`).
    pub const SOURCE_BUCKETS: &str = "SOURCE_BUCKETS";
    pub const SYN_RATE: &str = "SYN_RATE";
    /// Source ([`super::SourceKey`]) → coarse ns of its last valid SYN cookie ACK (see
    /// `syn_proxy::TRUST_NS`).
    pub const TRUSTED_SOURCES: &str = "TRUSTED_SOURCES";
    /// Service id → `syn_proxy::short_mark` of when its SNAT ports last ran out (`u64`,
    /// 0: never); not pinned: it matters for two seconds.
    pub const PORTS_OUT: &str = "PORTS_OUT";
    /// The configured SNAT addresses (`[u32; 4]` words), see `MAX_SNAT_ADDRS`.
    pub const SNAT_ADDRS: &str = "SNAT_ADDRS";
    /// Proxy VIP:port ([`super::VipKey`]) → `u32` index into `PROXY_LISTENERS`.
    pub const PROXY_VIPS: &str = "PROXY_VIPS";
    /// SockMap of the daemon's proxy listening sockets (`sk_lookup` targets).
    pub const PROXY_LISTENERS: &str = "PROXY_LISTENERS";
    /// SockHash: socket cookie (`u64`) → the peer socket of a spliced pair.
    pub const SPLICE: &str = "SPLICE";
    /// SockHash: socket cookie (`u64`) → the socket itself; `lb_splice` is attached here.
    pub const SPLICE_HOOK: &str = "SPLICE_HOOK";
    /// Array of one [`super::SpliceLayout`]: kernel field offsets for `lb_splice`.
    pub const SPLICE_LAYOUT: &str = "SPLICE_LAYOUT";
    /// LPM trie of the services' source allowlists: [`super::allow_data`] → `u8` (1).
    pub const ALLOW: &str = "ALLOW";
    /// Array of one [`super::WatchSpec`]: the connection `lb explain --watch` follows.
    pub const WATCH: &str = "WATCH";
    /// Ring buffer of [`super::WatchEvent`]s of the watched connection.
    pub const WATCH_EVENTS: &str = "WATCH_EVENTS";
    /// Program array of one: `PROG_DIRECT`, which `PROG_LB` tail-calls.
    pub const DIRECT: &str = "DIRECT";
    /// `lb decap`'s maps: the VIPs (`DecapVip` → `u8`), the allowed outer sources (LPM
    /// tries, IPv4 and IPv6), its settings (`DecapConfig`) and its counters.
    pub const DECAP_VIPS: &str = "DECAP_VIPS";
    pub const DECAP_FROM4: &str = "DECAP_FROM4";
    pub const DECAP_FROM6: &str = "DECAP_FROM6";
    pub const DECAP_CONFIG: &str = "DECAP_CONFIG";
    pub const DECAP_COUNTERS: &str = "DECAP_COUNTERS";
    /// `lb decap`'s programs: the XDP decapsulation and the TC egress MSS clamp.
    pub const PROG_DECAP: &str = "lb_decap";
    pub const PROG_DECAP_MSS: &str = "lb_decap_mss";
    /// The load-balancing program.
    pub const PROG_LB: &str = "lb_xdp";
    /// The DSR and DNAT forward path, a program of its own (`PROG_LB` tail-calls it
    /// through `DIRECT`) so each stays within the verifier's budget.
    pub const PROG_DIRECT: &str = "lb_direct";
    /// The TC ingress companion of `PROG_LB` on the same interfaces: sends the packets
    /// `PROG_LB` hands off for want of a neighbour entry (`crate::handoff`).
    pub const PROG_NEIGH: &str = "lb_neigh";
    /// A program that passes everything; tests attach it to veth peers (see TOOLCHAIN.md).
    pub const PROG_PASS: &str = "xdp_pass";
    /// The `sk_lookup` program steering proxy VIP:port connections to the daemon's
    /// listeners; attached to the daemon's network namespace.
    pub const PROG_LOOKUP: &str = "lb_lookup";
    /// The `sk_skb` stream verdict of the sockmap splice engine; attached to
    /// `SPLICE_HOOK`.
    pub const PROG_SPLICE: &str = "lb_splice";
}

#[cfg(test)]
mod local_macs_tests {
    use super::*;

    #[test]
    fn only_unicast_to_another_mac_on_a_listed_interface_is_refused() {
        let mut m = LocalMacs::default();
        m.ifindex[1] = 7;
        m.mac[1] = mac_word(&[2, 0, 0, 0, 0, 0x11]);
        let mine = mac_word(&[2, 0, 0, 0, 0, 0x11]);
        let other = mac_word(&[2, 0, 0, 0, 0, 0x12]);
        assert!(m.accepts(7, mine));
        assert!(!m.accepts(7, other));
        assert!(m.accepts(7, mac_word(&[0xff; 6])), "broadcast");
        assert!(
            m.accepts(7, mac_word(&[0x33, 0x33, 0, 0, 0, 1])),
            "IPv6 multicast"
        );
        assert!(
            m.accepts(8, other),
            "an interface not listed is not filtered"
        );
        assert!(
            LocalMacs::default().accepts(7, other),
            "an empty list filters nothing"
        );
        // The pinned map's bytes are what they were as six bytes and two zeros.
        // SAFETY: `LocalMacs` is plain data; the slice covers exactly its bytes.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (&m as *const LocalMacs).cast::<u8>(),
                size_of::<LocalMacs>(),
            )
        };
        assert_eq!(&bytes[32 + 8..32 + 16], &[2, 0, 0, 0, 0, 0x11, 0, 0]);
    }
}

#[cfg(test)]
mod flow_layout_tests {
    use super::*;

    #[test]
    fn the_32_byte_layout_is_the_first_32_bytes_and_reads_back() {
        let fs = FlowState {
            last_seen_ns: 0x0102_0304_0506_0708,
            backend: 0x1112,
            snat_port: 0x2122,
            flags: 0x31,
            snat_idx: 0x32,
            proxy: 0x33,
            wscale: 0x34,
            close_seq: 0x4142_4344,
            close_tsval: 0x5152_5354,
            seq_delta: 0x6162_6364,
            ts_delta: 0x7172_7374,
            first_seen_ns: 9,
            packets: 10,
        };
        // SAFETY: FlowState is repr(C) plain data of 48 bytes with no padding (its
        // fields add up to its size), so every byte is initialised.
        let bytes: [u8; 48] = unsafe { core::mem::transmute(fs) };
        let old = fs.to_32_byte_layout();
        assert_eq!(old[..], bytes[..FLOW_STATE_32_BYTE_LAYOUT]);
        let back = FlowState::from_32_byte_layout(&old);
        assert_eq!(
            back,
            FlowState {
                first_seen_ns: 0,
                packets: 0,
                ..fs
            }
        );
    }
}

#[cfg(test)]
mod watch_tests {
    use super::WatchEvent;

    #[test]
    fn a_watch_event_reads_back_from_its_bytes() {
        let mut b = Vec::new();
        b.extend_from_slice(&123_456_789_u64.to_ne_bytes());
        for v in [74_u32, 0xdead_beef, 42] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&[0x12, 0, 0, 0]);
        let e = WatchEvent::from_bytes(&b).unwrap();
        assert_eq!(
            (e.ns, e.len, e.seq, e.ack, e.tcp_flags),
            (123_456_789, 74, 0xdead_beef, 42, 0x12)
        );
        assert_eq!(WatchEvent::from_bytes(&b[..23]), None);
    }
}

#[cfg(test)]
mod reply_hop_tests {
    use super::{REPLY_HOP_SLOTS, reply_hop_slot};

    #[test]
    fn clients_of_one_vip_spread_over_the_slots() {
        let vip = [u32::from_ne_bytes([198, 18, 2, 1]), 0, 0, 0];
        let mut used = [0u32; REPLY_HOP_SLOTS as usize];
        // 4,096 consecutive client addresses, as a busy /20 sends them.
        for i in 0..REPLY_HOP_SLOTS {
            let client = (0xc612_4000 + i).to_be();
            let slot = reply_hop_slot(&vip, &[client, 0, 0, 0]);
            assert!(slot < REPLY_HOP_SLOTS);
            used[slot as usize] += 1;
        }
        let filled = used.iter().filter(|&&n| n > 0).count();
        // A uniform hash fills 1 - 1/e of them (63%); consecutive addresses must too.
        assert!(filled > 2_400, "{filled} of {REPLY_HOP_SLOTS} slots used");
        assert!(
            used.iter().all(|&n| n <= 8),
            "a slot took {:?}",
            used.iter().max()
        );
    }

    #[test]
    fn the_source_takes_part_in_the_slot() {
        let client = [u32::from_ne_bytes([198, 18, 1, 2]), 0, 0, 0];
        let slots: std::collections::BTreeSet<u32> = (1..=64u8)
            .map(|v| reply_hop_slot(&[u32::from_ne_bytes([198, 18, 2, v]), 0, 0, 0], &client))
            .collect();
        assert!(slots.len() > 48, "{} slots for 64 VIPs", slots.len());
    }
}
