//! The program's maps. Names are the static names, which the daemon finds through
//! `lb_common::maps::names`. Sizes given here are defaults: the daemon resizes `MAGLEV`,
//! `FLOWS` and `REVERSE_NAT` with `EbpfLoader::set_max_entries` before loading.
//!
//! The per-CPU maps need no atomics: an XDP program runs to completion on one CPU with
//! preemption off, so each CPU's slot has a single writer; user space sums the slots.

use aya_ebpf::{
    macros::map,
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf,
        SockHash, SockMap,
    },
};
use lb_common::{
    counters::NUM_COUNTERS,
    maps::{
        Backend, Clock, DEFAULT_RING_SIZE, FlowKey, FlowState, GlobalConfig, LocalMacs, MAX_ALLOW,
        MAX_BACKENDS, MAX_IFACES, MAX_PROXY_LISTENERS, MAX_SERVICES, MAX_SNAT_ADDRS, MAX_SOURCES,
        MAX_TRUSTED_SOURCES, NextHop, REPLY_HOP_SLOTS, ReplyHop, ReverseNat, SNAT_SWEPT_SLOTS,
        Service, ServiceSlot, SourceKey, SpliceLayout, TrafficCounters, VipKey, WATCH_RING_BYTES,
        WatchSpec,
    },
    syn_proxy::SynRate,
};

use crate::{sequence::Sequence, snat::Claim};

/// Default size of the flow and reverse NAT tables (the daemon sets its own).
const DEFAULT_FLOWS: u32 = 262_144;

/// The connection `lb explain --watch` follows (see `watch`).
#[map]
pub static WATCH: Array<WatchSpec> = Array::with_max_entries(1, 0);

/// Its packets, for `lb explain --watch` to read.
#[map]
pub static WATCH_EVENTS: RingBuf = RingBuf::with_byte_size(WATCH_RING_BYTES, 0);

/// The services' source allowlists (`lb_common::maps::allow_data`); see `access`.
#[map]
pub static ALLOW: LpmTrie<[u8; 20], u8> = LpmTrie::with_max_entries(MAX_ALLOW, 0);

/// VIP:port → service; written by the daemon, read by the forward path.
#[map]
pub static SERVICES: HashMap<VipKey, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Service id → its VIP and `SERVICES` entry; written by the daemon with `SERVICES`,
/// read by the established fast path (see `ServiceSlot`).
#[map]
pub static SERVICE_SLOTS: Array<ServiceSlot> = Array::with_max_entries(MAX_SERVICES, 0);

/// Backend id → backend (address, SNAT address, state); written by the daemon, read by
/// the forward path (new flows, and the state check of existing ones).
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Service table offset + Maglev slot → backend id (or `NO_BACKEND`); written by the
/// daemon, read by the forward path for new flows. Two tables of the default ring size
/// by default, so a single service can be tested at offset 0 or `DEFAULT_RING_SIZE`.
#[map]
pub static MAGLEV: Array<u32> = Array::with_max_entries(DEFAULT_RING_SIZE * 2, 0);

/// Client → VIP 5-tuple → flow state (backend, SNAT port, last seen, FIN/RST); written
/// by the forward path (insert, refresh) and the reverse path (refresh), read by both
/// and by the daemon (flow listing).
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(DEFAULT_FLOWS, 0);

/// Client → VIP 5-tuple → the state of a half-open flow (the client's SYN seen, its ACK
/// of the backend's answer not yet): kept apart from `FLOWS` so that SYNs nobody
/// completes (a flood) evict only each other, never an established flow. A flow moves to
/// `FLOWS` when its handshake completes; an evicted one gives its SNAT port back.
#[map]
pub static HALF_OPEN: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_FLOWS / 16, 0);

/// Backend → SNAT address:port 5-tuple → the flow it belongs to; written by the forward
/// path when it claims a SNAT port, read by the reverse path and by SNAT port claims.
#[map]
pub static REVERSE_NAT: LruHashMap<FlowKey, ReverseNat> =
    LruHashMap::with_max_entries(DEFAULT_FLOWS, 0);

/// 0 → global settings (timeouts, ring size, SNAT port range); written by the daemon,
/// read by both paths.
#[map]
pub static CONFIG: Array<GlobalConfig> = Array::with_max_entries(1, 0);

/// Egress ifindex → ifindex; written by the daemon (the interfaces it attached to), read
/// by the redirect at the end of both paths.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_IFACES, 0);

/// 0 → the attached interfaces' MACs; written by the daemon, read by the parser to leave
/// frames for other hosts to the kernel (which drops them).
#[map]
pub static LOCAL_MACS: Array<LocalMacs> = Array::with_max_entries(1, 0);

/// 0 → the host's hand-off mark (`lb_common::handoff::mark`; 0 until the daemon writes
/// it): `fib` writes it over a handed-off frame's Ethernet addresses, and `lb_neigh`
/// (`handoff`) takes only frames that carry it.
#[map]
pub static HANDOFF_MARK: Array<u64> = Array::with_max_entries(1, 0);

/// Backend id → per-CPU cached next hop (FIB lookup result) toward the backend; written
/// and read by the forward path only. Per CPU, so an entry has one writer and no reader
/// sees half of an update.
#[map]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// One per-CPU slot where `sequence::read` leaves a segment's sequence fields: they
/// are 16 bytes, too many for a return register, and the callers' frames have no 16
/// bytes to spare on the longest call chain (the verifier's 512-byte stack).
#[map]
pub static SEQUENCE_SCRATCH: PerCpuArray<Sequence> = PerCpuArray::with_max_entries(1, 0);

/// One per-CPU slot for the SNAT port search under way (`snat::Claim`), which
/// `bpf_loop`'s turns read and update.
#[map]
pub static CLAIM_SCRATCH: PerCpuArray<Claim> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's last read of the coarse clock and the tick it was read in
/// (`conntrack::now`).
#[map]
pub static CLOCK: PerCpuArray<Clock> = PerCpuArray::with_max_entries(1, 0);

/// `lb_common::maps::reply_hop_slot` → per-CPU cached next hop of replies toward a
/// client; written and read by the reply path only (per CPU, as `NEXT_HOPS`).
#[map]
pub static REPLY_HOPS: PerCpuArray<ReplyHop> = PerCpuArray::with_max_entries(REPLY_HOP_SLOTS, 0);

/// Source (IPv4 address, IPv6 /64) → its new-flow token bucket (`lb_common::source_limit`:
/// when the bucket is next full, coarse ns); written and read by the forward path for
/// The configured SNAT addresses, IPv4 then IPv6 (`lb_common::maps::snat_addrs_base`),
/// as network order words; written by the daemon at start, read by the forward path.
#[map]
pub static SNAT_ADDRS: Array<[u32; 4]> = Array::with_max_entries(2 * MAX_SNAT_ADDRS, 0);

/// (backend << 3 | SNAT address index) → when a sweep of all its SNAT ports last found
/// none: for `lb_common::snat_probe::SWEEP_HOLD_NS` after, new flows toward it try only
/// the walk's candidates there. Entries only for ports that ran out; an LRU bounds them.
#[map]
pub static SNAT_SWEPT: LruHashMap<u32, u64> = LruHashMap::with_max_entries(SNAT_SWEPT_SLOTS, 0);

/// SYNs that would open a flow, only while `--source-rate` is set. Shared by all CPUs, so
/// concurrent SYNs of one source may each take the same token (a small overshoot).
#[map]
pub static SOURCE_BUCKETS: LruHashMap<SourceKey, u64> =
    LruHashMap::with_max_entries(MAX_SOURCES, 0);

/// Service id → its recent SYN count, which turns SYN cookies on (`--syn-cookies auto`).
/// Shared by all CPUs: the count is an atomic add; the move to a new window is not, so
/// a SYN counted on one CPU just as another starts the window may be lost (a few SYNs a
/// second at most).
#[map]
pub static SYN_RATE: Array<SynRate> = Array::with_max_entries(MAX_SERVICES, 0);

/// Source (IPv4 address, IPv6 /64) → when its last valid SYN cookie ACK came (coarse
/// ns): under `auto` its SYNs open flows without a cookie for
/// `lb_common::syn_proxy::TRUST_NS` after. Entered only by the forward path on a valid
/// cookie, so a spoofed flood adds nothing to it.
#[map]
pub static TRUSTED_SOURCES: LruHashMap<SourceKey, u64> =
    LruHashMap::with_max_entries(MAX_TRUSTED_SOURCES, 0);

/// Service id → `lb_common::syn_proxy::short_mark` of when a new flow's sweep last found
/// no free SNAT port (0: never): no source is trusted past the cookie meanwhile. Written
/// by `syn_proxy::ports_out`, a plain store (the latest CPU's mark stands).
#[map]
pub static PORTS_OUT: Array<u64> = Array::with_max_entries(MAX_SERVICES, 0);

/// Service id → per-CPU traffic counters; written by both paths, read by the daemon.
#[map]
pub static SERVICE_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Backend id → per-CPU traffic counters; written by both paths, read by the daemon.
#[map]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// `lb_common::counters` index → per-CPU packet count; written by the single exit point
/// (`verdict::finish`), read by the daemon.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NUM_COUNTERS, 0);

/// Proxy VIP:port → index of the daemon's listening socket in `PROXY_LISTENERS`;
/// written by the daemon, read by `lb_lookup` (sk_lookup).
#[map]
pub static PROXY_VIPS: HashMap<VipKey, u32> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// The daemon's listening sockets for proxy services (one per family is enough);
/// written by the daemon, read by `lb_lookup`, which assigns them to new connections.
#[map]
pub static PROXY_LISTENERS: SockMap = SockMap::with_max_entries(MAX_PROXY_LISTENERS, 0);

/// Default size of the two splice socket hashes: two entries per spliced connection.
const DEFAULT_SPLICE: u32 = 131_072;

/// Socket cookie → the PEER socket of a spliced pair; written by the daemon, read by
/// `lb_splice` as the redirect target (see splice.rs).
#[map]
pub static SPLICE: SockHash<u64> = SockHash::with_max_entries(DEFAULT_SPLICE, 0);

/// Socket cookie → the socket itself; `lb_splice` is attached to this map, so inserting
/// a socket turns its redirect on (see splice.rs). Written by the daemon only.
#[map]
pub static SPLICE_HOOK: SockHash<u64> = SockHash::with_max_entries(DEFAULT_SPLICE, 0);

/// Index 0 → the kernel field offsets `lb_splice` reads (lb_common's `SpliceLayout`);
/// written once by the daemon before `lb_splice` is attached, read by `lb_splice`.
#[map]
pub static SPLICE_LAYOUT: Array<SpliceLayout> = Array::with_max_entries(1, 0);

/// When this CPU last wrote a log record (coarse CLOCK_MONOTONIC ns); read and written only
/// by `events`, so a failure that lasts (a backend without a route) logs at most once a
/// second per CPU, never once per packet. Not pinned: a restart may log again at once.
#[map]
pub static LOG_LAST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Index 0: `lb_direct`, the DSR and DNAT forward path, which `lb_xdp` tail-calls for
/// those services' packets; written by the daemon after loading.
#[map]
pub static DIRECT: ProgramArray = ProgramArray::with_max_entries(1, 0);
