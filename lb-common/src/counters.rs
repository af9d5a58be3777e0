//! The global packet counters: what happened to a packet, and why it was dropped. One
//! table read by everyone: the XDP program bumps an index at its single exit point, and
//! `lb stats` and the Prometheus metrics name and classify the sums by the same table.

/// What a counter's packets had happen to them, for the metrics' families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Rewritten and sent on (`lb_packets_total{outcome}`).
    Forwarded,
    /// Handed to the kernel (`lb_packets_total{outcome}`).
    Passed,
    /// Not sent on (`lb_dropped_packets_total{reason}`); the reason is the name without
    /// its `drop_` prefix.
    Dropped,
}

/// One entry of the counter table.
#[derive(Clone, Copy, Debug)]
pub struct Counter {
    /// Index into the per-CPU `COUNTERS` array.
    pub index: u32,
    /// The name users see (`lb stats`, metrics labels); stable.
    pub name: &'static str,
    pub kind: Kind,
    /// One line saying when the counter is bumped.
    pub help: &'static str,
}

impl Counter {
    /// The drop reason (`lb_dropped_packets_total{reason}`), for a dropped counter.
    pub fn drop_reason(&self) -> Option<&'static str> {
        match self.kind {
            Kind::Dropped => self.name.strip_prefix("drop_"),
            Kind::Forwarded | Kind::Passed => None,
        }
    }
}

/// Forwarded client → backend after NAT.
pub const FWD_IN: u32 = 0;
/// Forwarded backend → client after reverse NAT.
pub const FWD_OUT: u32 = 1;
/// Passed to the kernel: not for a VIP, or not something we balance.
pub const PASS: u32 = 2;
/// Passed to the kernel: IPv4 fragment for a VIP (cannot be balanced by port).
pub const PASS_FRAGMENT: u32 = 3;
/// Passed to the kernel after reverse NAT because the client's neighbour (MAC) is not
/// known: handed to the TC program (`lb_common::handoff`), which sends it out through the
/// kernel's neighbour resolution (`bpf_redirect_neigh`).
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
/// Dropped: the next hop's neighbour (MAC) is not known and the packet could not be handed
/// to the kernel to resolve it (the daemon had not written the hand-off mark yet).
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
/// Dropped: a packet that would open a new flow (SYN) from a source over its new-flow
/// rate (`--source-rate`); no flow state was created.
pub const DROP_SOURCE_RATE_LIMITED: u32 = 15;
/// Passed to the kernel after NAT toward a backend whose neighbour (MAC) is not known:
/// handed to the TC program as [`PASS_NO_NEIGH_OUT`] is; the daemon also warms the
/// backends' neighbours when it moves.
pub const PASS_NO_NEIGH_IN: u32 = 16;
/// A SYN for a VIP under SYN pressure (or with `--syn-cookies always`) answered by the
/// LB with a SYN cookie (XDP_TX); no state was kept.
pub const SYN_COOKIE_SENT: u32 = 17;
/// An ACK with a valid SYN cookie: its flow is created and the LB sends the backend the
/// client's SYN (the SYN proxy).
pub const SYN_COOKIE_VALID: u32 = 18;
/// Dropped: a segment without a flow whose acknowledgment is no valid SYN cookie, for a
/// VIP whose new flows are being opened by cookie.
pub const DROP_SYN_COOKIE_INVALID: u32 = 19;
/// The backend answered a proxied flow's SYN again (its SYN-ACK was retransmitted): the
/// LB acknowledges it to the backend itself (XDP_TX).
pub const SYN_PROXY_BACKEND_ACK: u32 = 20;
/// Dropped: a DSR packet that would not fit the path MTU toward its backend once
/// encapsulated; the client is answered with ICMP fragmentation needed / packet too big
/// carrying the MTU left for it (XDP_TX).
pub const DROP_TOO_BIG: u32 = 21;
/// An ICMP error a client sent about a DSR flow (it quotes the backend's reply), sent
/// on to the backend that owns the flow inside the service's encapsulation.
pub const FWD_ICMP: u32 = 22;
/// Dropped (or answered with a RST, with `deny = "reset"`): a segment that would open a
/// flow to a service from a source outside its allowlist (`--allow`), or one of such a
/// source's flows with `deny_established`; no flow state was created.
pub const DROP_DENIED: u32 = 23;
/// A backend's SYN-ACK for a connection the LB no longer keeps (its half-open flow
/// expired, was reset or was pushed out of the half-open table), or a backend's stale
/// ACK to a proxied flow's SYN: the backend is answered with a RST (XDP_TX), which drops
/// the request it held, so the SNAT port can carry a new connection at once
/// (`flow::stale_syn_ack`). The segment is not forwarded.
pub const DROP_STALE_BACKEND_ANSWER: u32 = 24;
/// A SYN that opened a flow without a cookie while the VIP's new flows are opened by
/// cookie (`auto`): its source passed a cookie lately (`syn_proxy::TRUST_NS`).
pub const SYN_TRUSTED: u32 = 25;
/// Number of counters (the length of `COUNTERS`).
pub const NUM_COUNTERS: u32 = 26;

const fn c(index: u32, name: &'static str, kind: Kind, help: &'static str) -> Counter {
    Counter {
        index,
        name,
        kind,
        help,
    }
}

/// Every counter, in index order (`TABLE[i].index == i`, checked below).
pub const TABLE: [Counter; NUM_COUNTERS as usize] = {
    use Kind::{Dropped, Forwarded, Passed};
    [
        c(
            FWD_IN,
            "forwarded_in",
            Forwarded,
            "forwarded client to backend",
        ),
        c(
            FWD_OUT,
            "forwarded_out",
            Forwarded,
            "forwarded backend to client",
        ),
        c(
            PASS,
            "passed",
            Passed,
            "passed to the kernel: not for a VIP or a NAT flow",
        ),
        c(
            PASS_FRAGMENT,
            "passed_fragment",
            Passed,
            "passed to the kernel: an IPv4 fragment",
        ),
        c(
            PASS_NO_NEIGH_OUT,
            "passed_no_neighbour_out",
            Passed,
            "reply handed to the kernel after reverse NAT, which resolves the client's neighbour and sends it",
        ),
        c(
            DROP_NO_BACKEND,
            "drop_no_backend",
            Dropped,
            "a new flow found no usable backend: answered with a RST",
        ),
        c(
            DROP_FLOW_TABLE_FULL,
            "drop_flow_table_full",
            Dropped,
            "the flow table could not take a new flow",
        ),
        c(
            DROP_SNAT_EXHAUSTED,
            "drop_snat_ports_exhausted",
            Dropped,
            "every SNAT port tried toward the backend was taken",
        ),
        c(
            DROP_NO_ROUTE,
            "drop_no_route",
            Dropped,
            "no route to the next hop",
        ),
        c(
            DROP_NO_NEIGH,
            "drop_no_neighbour",
            Dropped,
            "the next hop's neighbour is unknown and the packet could not be handed to the kernel",
        ),
        c(
            DROP_FRAG_NEEDED,
            "drop_frag_needed",
            Dropped,
            "larger than the egress MTU",
        ),
        c(
            DROP_MALFORMED,
            "drop_malformed",
            Dropped,
            "a malformed header",
        ),
        c(
            DROP_NO_TX_PORT,
            "drop_no_tx_port",
            Dropped,
            "the egress interface is not one lb may redirect to",
        ),
        c(
            DROP_INTERNAL,
            "drop_internal",
            Dropped,
            "a map entry the daemon should have written is missing",
        ),
        c(
            PASS_PROXY,
            "passed_proxy",
            Passed,
            "passed to the kernel for the daemon's PROXY-protocol proxy",
        ),
        c(
            DROP_SOURCE_RATE_LIMITED,
            "drop_source_rate_limited",
            Dropped,
            "a SYN from a source over its new-flow rate (--source-rate)",
        ),
        c(
            PASS_NO_NEIGH_IN,
            "passed_no_neighbour_in",
            Passed,
            "handed to the kernel after NAT, which resolves the backend's neighbour and sends it",
        ),
        c(
            SYN_COOKIE_SENT,
            "syn_cookies_sent",
            Forwarded,
            "a SYN answered by the LB with a SYN cookie (the VIP is under SYN pressure, or --syn-cookies always)",
        ),
        c(
            SYN_COOKIE_VALID,
            "syn_cookies_valid",
            Forwarded,
            "an ACK with a valid SYN cookie: the LB opened the backend's leg of its flow",
        ),
        c(
            DROP_SYN_COOKIE_INVALID,
            "drop_syn_cookie_invalid",
            Dropped,
            "a segment with no flow and no valid SYN cookie while the VIP's new flows are opened by cookie",
        ),
        c(
            SYN_PROXY_BACKEND_ACK,
            "syn_proxy_backend_acks",
            Forwarded,
            "a backend's repeated SYN-ACK of a proxied flow, acknowledged by the LB",
        ),
        c(
            DROP_TOO_BIG,
            "drop_too_big",
            Dropped,
            "DSR packet over the path MTU toward its backend once encapsulated: answered with ICMP fragmentation needed / packet too big",
        ),
        c(
            FWD_ICMP,
            "forwarded_icmp",
            Forwarded,
            "ICMP error from a client about a DSR flow, sent on to the backend that owns the flow",
        ),
        c(
            DROP_DENIED,
            "drop_denied",
            Dropped,
            "a segment from a source outside the service's allowlist (--allow): dropped, or answered with a RST (deny = \"reset\")",
        ),
        c(
            DROP_STALE_BACKEND_ANSWER,
            "drop_stale_backend_answer",
            Dropped,
            "a backend's answer to a connection the LB no longer keeps: the backend is answered with a RST, which frees the SNAT port",
        ),
        c(
            SYN_TRUSTED,
            "syn_trusted",
            Forwarded,
            "a SYN that opened a flow without a cookie while the VIP is under SYN pressure: its source passed a cookie in the last minute",
        ),
    ]
};

const _: () = {
    let mut i = 0;
    while i < TABLE.len() {
        assert!(TABLE[i].index as usize == i);
        i += 1;
    }
};

/// The counter called `name`, if any.
pub fn by_name(name: &str) -> Option<&'static Counter> {
    TABLE.iter().find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_drops_are_exactly_the_drop_prefixed_ones() {
        for (i, a) in TABLE.iter().enumerate() {
            assert_eq!(by_name(a.name).map(|c| c.index), Some(i as u32));
            assert_eq!(
                a.kind == Kind::Dropped,
                a.name.starts_with("drop_"),
                "{}",
                a.name
            );
            assert!(!a.help.is_empty(), "{}", a.name);
        }
        assert_eq!(
            TABLE[DROP_SNAT_EXHAUSTED as usize].drop_reason(),
            Some("snat_ports_exhausted")
        );
        assert_eq!(TABLE[FWD_IN as usize].drop_reason(), None);
        assert!(by_name("nonsense").is_none());
    }
}
