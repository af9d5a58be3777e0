//! When a flow-table entry is over: the rule the XDP program forgets flows by, and by
//! which the daemon counts the active ones. Written once so the two never disagree.

use crate::maps::{FLOW_CLOSED, FLOW_RST, FlowState, GlobalConfig};
use crate::tcp;

/// Whether a flow with these `FLOW_*` bits is closed: FIN in both directions, or a RST.
#[inline(always)]
pub fn closed(flags: u8) -> bool {
    flags & FLOW_RST != 0 || flags & FLOW_CLOSED == FLOW_CLOSED
}

/// Whether the entry has outlived its timeout at `now` (CLOCK_MONOTONIC ns, the clock of
/// `bpf_ktime_get_coarse_ns`): `closed_timeout_ns` once closed, else `idle_timeout_ns`.
/// An expired entry is treated as absent.
#[inline(always)]
pub fn expired(fs: &FlowState, cfg: &GlobalConfig, now: u64) -> bool {
    let timeout = if closed(fs.flags) {
        cfg.closed_timeout_ns
    } else {
        cfg.idle_timeout_ns
    };
    now.saturating_sub(fs.last_seen_ns) > timeout
}

/// Whether the entry counts as an active flow at `now`: neither closed nor expired.
#[inline(always)]
pub fn active(fs: &FlowState, cfg: &GlobalConfig, now: u64) -> bool {
    !closed(fs.flags) && !expired(fs, cfg, now)
}

/// The `FLOW_*` bits a segment with TCP flags `tcp_flags` adds to its flow: `fin` (the
/// sender's `FLOW_FIN_CLIENT` or `FLOW_FIN_BACKEND`) for a FIN, `FLOW_RST` for a RST.
#[inline(always)]
pub fn flags_from_tcp(tcp_flags: u8, fin: u8) -> u8 {
    let mut f = 0;
    if tcp_flags & tcp::FIN != 0 {
        f |= fin;
    }
    if tcp_flags & tcp::RST != 0 {
        f |= FLOW_RST;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{FLOW_FIN_BACKEND, FLOW_FIN_CLIENT};

    const CFG: GlobalConfig = GlobalConfig {
        idle_timeout_ns: 1_000,
        closed_timeout_ns: 10,
        ring_size: 13,
        snat_port_min: 1,
        snat_port_max: 2,
        source_rate: 0,
        source_burst: 0,
    };

    fn flow(last_seen_ns: u64, flags: u8) -> FlowState {
        FlowState {
            last_seen_ns,
            flags,
            ..FlowState::default()
        }
    }

    #[test]
    fn closed_means_fin_both_ways_or_rst() {
        assert!(!closed(0));
        assert!(!closed(FLOW_FIN_CLIENT));
        assert!(!closed(FLOW_FIN_BACKEND));
        assert!(closed(FLOW_FIN_CLIENT | FLOW_FIN_BACKEND));
        assert!(closed(FLOW_RST));
        assert!(closed(FLOW_RST | FLOW_FIN_CLIENT));
    }

    #[test]
    fn open_flows_expire_after_the_idle_timeout_closed_ones_after_the_closed_timeout() {
        let now = 5_000;
        assert!(!expired(&flow(now - 1_000, 0), &CFG, now), "at the limit");
        assert!(expired(&flow(now - 1_001, 0), &CFG, now));
        assert!(!expired(&flow(now - 10, FLOW_RST), &CFG, now));
        assert!(expired(&flow(now - 11, FLOW_RST), &CFG, now));
        assert!(expired(&flow(now - 11, FLOW_CLOSED), &CFG, now));
        assert!(
            !expired(&flow(now - 11, FLOW_FIN_CLIENT), &CFG, now),
            "half closed"
        );
        // Last seen after `now` (a later packet on another CPU): not expired.
        assert!(!expired(&flow(now + 5, 0), &CFG, now));
    }

    #[test]
    fn active_flows_are_open_and_not_idle_past_the_timeout() {
        let now = 5_000;
        assert!(active(&flow(now - 1_000, FLOW_FIN_CLIENT), &CFG, now));
        assert!(!active(&flow(now - 1_001, 0), &CFG, now));
        assert!(
            !active(&flow(now, FLOW_RST), &CFG, now),
            "closed, not yet expired"
        );
        assert!(!active(&flow(now, FLOW_CLOSED), &CFG, now));
    }

    #[test]
    fn tcp_flags_map_to_flow_bits_of_the_sender() {
        assert_eq!(flags_from_tcp(tcp::SYN | tcp::ACK, FLOW_FIN_CLIENT), 0);
        assert_eq!(
            flags_from_tcp(tcp::FIN | tcp::ACK, FLOW_FIN_CLIENT),
            FLOW_FIN_CLIENT
        );
        assert_eq!(flags_from_tcp(tcp::FIN, FLOW_FIN_BACKEND), FLOW_FIN_BACKEND);
        assert_eq!(flags_from_tcp(tcp::RST, FLOW_FIN_BACKEND), FLOW_RST);
        assert_eq!(
            flags_from_tcp(tcp::RST | tcp::FIN, FLOW_FIN_CLIENT),
            FLOW_RST | FLOW_FIN_CLIENT
        );
    }
}
