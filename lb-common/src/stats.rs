//! Indices of the global per-CPU `COUNTERS` array: what happened to packets, and why
//! they were dropped. The XDP program bumps exactly one at its exit point.

/// Forwarded client → backend after NAT.
pub const FWD_IN: u32 = 0;
/// Forwarded backend → client after reverse NAT.
pub const FWD_OUT: u32 = 1;
/// Passed to the kernel: not for a VIP, or not something we balance.
pub const PASS: u32 = 2;
/// Passed to the kernel: IPv4 fragment for a VIP (cannot be balanced by port).
pub const PASS_FRAGMENT: u32 = 3;
/// Passed to the kernel after reverse NAT, so it resolves the client's neighbour.
pub const PASS_NO_NEIGH_OUT: u32 = 4;
/// A new flow found no usable backend (every one down, draining or weight 0): the client
/// is answered at once with a TCP RST (XDP_TX) instead of retransmitting into silence;
/// a segment that is itself a RST is dropped. The name stays `drop_no_backend`: the
/// segment is not forwarded.
pub const DROP_NO_BACKEND: u32 = 5;
/// Dropped: the flow table could not take the new flow.
pub const DROP_FLOW_TABLE_FULL: u32 = 6;
/// Dropped: every SNAT port tried toward the backend was taken.
pub const DROP_SNAT_EXHAUSTED: u32 = 7;
/// Dropped: the FIB has no route (or forwarding is disabled, or the route is not unicast).
pub const DROP_NO_ROUTE: u32 = 8;
/// Dropped: the backend's neighbour (MAC) is not resolved yet; the daemon resolves it.
pub const DROP_NO_NEIGH: u32 = 9;
/// Dropped: the packet is larger than the egress MTU.
pub const DROP_FRAG_NEEDED: u32 = 10;
/// Dropped: a malformed header on a packet for a VIP or a NAT flow.
pub const DROP_MALFORMED: u32 = 11;
/// Dropped: the egress interface is not one the program may redirect to.
pub const DROP_NO_TX_PORT: u32 = 12;
/// Dropped: a map entry the daemon should have written is missing (config, backend).
pub const DROP_INTERNAL: u32 = 13;
/// Passed to the kernel: a packet for a PROXY-protocol service, which the daemon
/// accepts and proxies.
pub const PASS_PROXY: u32 = 14;
/// Number of counters.
pub const NUM_COUNTERS: u32 = 15;

/// Counter names, indexed like the constants, for `lb stats` and metrics.
pub const COUNTER_NAMES: [&str; NUM_COUNTERS as usize] = [
    "forwarded_in",
    "forwarded_out",
    "passed",
    "passed_fragment",
    "passed_no_neighbour_out",
    "drop_no_backend",
    "drop_flow_table_full",
    "drop_snat_ports_exhausted",
    "drop_no_route",
    "drop_no_neighbour",
    "drop_frag_needed",
    "drop_malformed",
    "drop_no_tx_port",
    "drop_internal",
    "passed_proxy",
];
