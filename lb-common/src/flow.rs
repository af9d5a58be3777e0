//! When a flow-table entry is over, how segments move a flow through its states, and
//! when a closed flow's SNAT port is safe to hand to a new flow: the rules the XDP
//! program keeps flows by, and by which the daemon counts the active ones. Written once
//! so the two never disagree.

use crate::maps::{
    FLOW_BACKEND_TIME_WAIT, FLOW_CLIENT_TS, FLOW_CLOSED, FLOW_ESTABLISHED, FLOW_FIN_BACKEND,
    FLOW_FIN_CLIENT, FLOW_LAST_ACK, FLOW_REPLIED, FLOW_RST, FlowState, GlobalConfig,
};
use crate::tcp;

/// How long a backend keeps a connection it closed first in TIME_WAIT: Linux's fixed
/// `TCP_TIMEWAIT_LEN`. Other stacks use up to 2 × 120 s; a SYN they refuse costs the
/// client one retransmission, not the connection.
pub const BACKEND_TIME_WAIT_NS: u64 = 60_000_000_000;

/// Whether a flow with these `FLOW_*` bits is closed: FIN in both directions, or a RST.
#[inline(always)]
pub fn closed(flags: u8) -> bool {
    flags & FLOW_RST != 0 || flags & FLOW_CLOSED == FLOW_CLOSED
}

/// How long the entry may stay idle: `closed_timeout_ns` once closed, the half-open
/// timeout (at most the idle one) until established, else `idle_timeout_ns`.
#[inline(always)]
pub fn timeout_ns(flags: u8, cfg: &GlobalConfig) -> u64 {
    if closed(flags) {
        cfg.closed_timeout_ns
    } else if flags & FLOW_ESTABLISHED == 0 {
        let half_open = cfg.half_open_timeout_ns;
        if half_open != 0 && half_open < cfg.idle_timeout_ns {
            half_open
        } else {
            cfg.idle_timeout_ns
        }
    } else {
        cfg.idle_timeout_ns
    }
}

/// Whether the entry has outlived its timeout at `now` (CLOCK_MONOTONIC ns, the clock of
/// `bpf_ktime_get_coarse_ns`). An expired entry is treated as absent.
#[inline(always)]
pub fn expired(fs: &FlowState, cfg: &GlobalConfig, now: u64) -> bool {
    now.saturating_sub(fs.last_seen_ns) > timeout_ns(fs.flags, cfg)
}

/// Whether the entry counts as an active flow at `now`: neither closed nor expired.
#[inline(always)]
pub fn active(fs: &FlowState, cfg: &GlobalConfig, now: u64) -> bool {
    !closed(fs.flags) && !expired(fs, cfg, now)
}

/// The `FLOW_*` bits of the flow a client SYN creates: none for a SYN (half-open until
/// the handshake completes), `FLOW_ESTABLISHED` for any other segment (the connection
/// already exists: the flow was lost or expired and is picked up again mid-stream).
#[inline(always)]
pub fn new_flow_flags(tcp_flags: u8) -> u8 {
    let f = client_segment(0, tcp_flags);
    if tcp_flags & tcp::SYN != 0 {
        f
    } else {
        f | FLOW_ESTABLISHED
    }
}

/// The `FLOW_*` bits a client segment with TCP flags `tcp_flags` adds to a flow whose
/// bits are `before`.
#[inline(always)]
pub fn client_segment(before: u8, tcp_flags: u8) -> u8 {
    let mut f = resets(tcp_flags);
    if tcp_flags & tcp::FIN != 0 {
        f |= FLOW_FIN_CLIENT;
    }
    if tcp_flags & tcp::ACK != 0 && tcp_flags & tcp::SYN == 0 {
        if before & FLOW_REPLIED != 0 {
            f |= FLOW_ESTABLISHED;
        }
        if before & FLOW_CLOSED == FLOW_CLOSED {
            f |= FLOW_LAST_ACK;
        }
    }
    f
}

/// The `FLOW_*` bits a client segment adds to a flow whose backend's segments never
/// cross the LB (direct server return): a segment other than a SYN means the client has
/// the backend's SYN-ACK (established), and its FIN is all the LB will see of the close,
/// so it closes the flow for both sides.
#[inline(always)]
pub fn client_segment_one_sided(tcp_flags: u8) -> u8 {
    let mut f = resets(tcp_flags);
    if tcp_flags & tcp::SYN == 0 {
        f |= FLOW_ESTABLISHED;
    }
    if tcp_flags & tcp::FIN != 0 {
        f |= FLOW_CLOSED;
    }
    f
}

/// The `FLOW_*` bits a backend segment with TCP flags `tcp_flags` adds to a flow whose
/// bits are `before`. A FIN before the client's means the backend closes first, so it
/// will hold TIME_WAIT; a FIN after it may still have been sent before the backend had
/// the client's FIN (a simultaneous close, TIME_WAIT too): [`simultaneous_close`] tells.
#[inline(always)]
pub fn backend_segment(before: u8, tcp_flags: u8) -> u8 {
    let mut f = resets(tcp_flags);
    if tcp_flags & tcp::FIN != 0 {
        f |= FLOW_FIN_BACKEND;
        if before & FLOW_FIN_CLIENT == 0 {
            f |= FLOW_BACKEND_TIME_WAIT;
        }
    }
    if tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK {
        f |= FLOW_REPLIED;
    }
    f
}

/// Whether the backend's first FIN, arriving after the client's FIN, was sent before the
/// backend had that FIN: its acknowledgment number `ack` does not cover the client's
/// sequence end `client_end` (recorded with the client's FIN). The backend then goes
/// through CLOSING to TIME_WAIT instead of LAST_ACK to closed.
#[inline(always)]
pub fn simultaneous_close(ack: u32, client_end: u32) -> bool {
    (ack.wrapping_sub(client_end) as i32) < 0
}

#[inline(always)]
fn resets(tcp_flags: u8) -> u8 {
    if tcp_flags & tcp::RST != 0 {
        FLOW_RST
    } else {
        0
    }
}

/// Whether a flow with these bits records the client's sequence number and TSval from
/// a client segment with `tcp_flags`: once it is closing (or the segment closes it), so
/// that the last values the backend accepted are kept for [`port_free_for`].
#[inline(always)]
pub fn records_close(flags: u8, tcp_flags: u8) -> bool {
    flags & (FLOW_CLOSED | FLOW_RST) != 0 || tcp_flags & (tcp::FIN | tcp::RST) != 0
}

/// The opening segment of a new flow, as [`port_free_for`] needs it: the sequence
/// number and TSval (if the segment has the timestamps option) it carries.
///
/// verifier: the TSval is a value and a flag, not an `Option<u32>`, whose payload LLVM
/// leaves undefined when `None` and may then fill from any register, a pointer too,
/// which the verifier refuses to store in 32 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opening {
    seq: u32,
    tsval: u32,
    has_tsval: bool,
}

impl Opening {
    #[inline(always)]
    pub fn new(seq: u32, tsval: Option<u32>) -> Self {
        Self {
            seq,
            tsval: tsval.unwrap_or(0),
            has_tsval: tsval.is_some(),
        }
    }

    /// The TSval, if the segment has the timestamps option.
    #[inline(always)]
    pub fn tsval(&self) -> Option<u32> {
        if self.has_tsval {
            Some(self.tsval)
        } else {
            None
        }
    }
}

/// What a flow's entry means for its SNAT port at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortHold {
    /// The backend has nothing left of the flow: the port may carry any new flow.
    Free,
    /// The flow is open (or half-open), or the backend is finishing its close: the port
    /// is taken.
    InUse,
    /// The backend holds the old connection in TIME_WAIT: the port may carry only a new
    /// flow whose SYN the backend accepts there.
    TimeWait,
}

/// How the flow `fs` holds its SNAT port at `now`:
/// - an open flow until it expires (half-open flows soon);
/// - after a RST, not at all: the backend has no connection left;
/// - a backend that closed passively (the client's FIN first) forgets the connection
///   once it has the client's last ACK (`FLOW_LAST_ACK`); until then, or the closed
///   timeout, the port is taken;
/// - a backend that closed first holds TIME_WAIT for [`BACKEND_TIME_WAIT_NS`].
#[inline(always)]
pub fn port_hold(fs: &FlowState, cfg: &GlobalConfig, now: u64) -> PortHold {
    let over = |done: bool| {
        if done {
            PortHold::Free
        } else {
            PortHold::InUse
        }
    };
    if !closed(fs.flags) {
        return over(expired(fs, cfg, now));
    }
    if fs.flags & FLOW_RST != 0 {
        return PortHold::Free;
    }
    if fs.flags & FLOW_BACKEND_TIME_WAIT == 0 {
        return over(fs.flags & FLOW_LAST_ACK != 0 || expired(fs, cfg, now));
    }
    if now.saturating_sub(fs.last_seen_ns) > BACKEND_TIME_WAIT_NS {
        PortHold::Free
    } else {
        PortHold::TimeWait
    }
}

/// The clock of [`SynAcks`]: units of 2^30 ns (about a second), modulo 2^12 (about 73
/// minutes).
const TICK_SHIFT: u32 = 30;
const TICK_MASK: u16 = 0x0fff;
/// SYN-ACKs counted at most.
const MAX_SYN_ACKS: u16 = 15;

/// What the LB remembers of a backend's answers to a flow's SYN while the flow is not
/// established (`ReverseNat::syn_acks`): how many SYN-ACKs (high 4 bits) and the tick
/// of the last (low 12 bits); 0: none, or none since the flow was established or reset.
///
/// A Linux backend that answered a SYN holds the request (SYN_RECV) and sends the
/// SYN-ACK again 1, 3, 7, 15 and 31 s after the first (`tcp_synack_retries`, 5), then
/// drops it 32 s after the last: after its n-th SYN-ACK the next comes 2^(n-1) s later.
/// A backend that answered with a syncookie holds nothing and never sends it again.
/// Until that next SYN-ACK is due, a new flow on the same SNAT port would meet the old
/// request, which answers with the old acknowledgment instead of a SYN-ACK; once it
/// comes, the LB resets the request if the flow is gone ([`stale_syn_ack`]). So the
/// port is held from the last SYN-ACK until the next is overdue ([`request_held`]).
///
/// A new flow's entry starts as if answered when its SYN leaves ([`SynAcks::sent`]): a
/// SYN-ACK lost on its way to the LB still holds the port until the backend's next one.
pub struct SynAcks;

impl SynAcks {
    /// The value for a flow whose SYN goes to the backend at `now`: one answer due.
    #[inline(always)]
    pub fn sent(now: u64) -> u16 {
        Self::seen(0, now)
    }

    /// The value after a SYN-ACK at `now`. One in the same tick as the last counts once:
    /// the answer to the SYN [`SynAcks::sent`] counted, or a duplicate (the backend's
    /// next comes a second or more later).
    #[inline(always)]
    pub fn seen(prev: u16, now: u64) -> u16 {
        let tick = (now >> TICK_SHIFT) as u16 & TICK_MASK;
        let n = prev >> 12;
        let n = if n != 0 && prev & TICK_MASK == tick {
            n
        } else {
            n.saturating_add(1).min(MAX_SYN_ACKS)
        };
        (n << 12) | tick
    }

    /// `v` made `by` ns older, for tests that age entries.
    pub fn aged(v: u16, by: u64) -> u16 {
        if v == 0 {
            return 0;
        }
        (v & !TICK_MASK) | ((v & TICK_MASK).wrapping_sub((by >> TICK_SHIFT) as u16) & TICK_MASK)
    }
}

/// Whether the backend may still hold a request it answered (see [`SynAcks`]): its
/// next SYN-ACK is not overdue yet. Ticks of about a second, rounded either way, get one
/// tick of slack. An entry older than the clock's wrap may be taken for a recent one:
/// its port is then held for a few seconds more, no worse. A SYN-ACK a tick ahead of
/// `now` counts as just seen: another CPU's clock may lag this one's that much.
#[inline(always)]
pub fn request_held(syn_acks: u16, now: u64) -> bool {
    let n = syn_acks >> 12;
    if n == 0 {
        return false;
    }
    let elapsed = ((now >> TICK_SHIFT) as u16).wrapping_sub(syn_acks) & TICK_MASK;
    // 2^(n-1) s, the last gap (32 s) once the retransmissions are done.
    let gap_s: u16 = 1 << (n - 1).min(5);
    // 2^30 ns is 7% more than a second: a gap of g s is at most g ticks.
    elapsed <= gap_s + 1 || elapsed == TICK_MASK
}

/// `ReverseNat::syn_acks` after a backend segment of its flow, whose `FLOW_*` bits are
/// `flow_flags` once the segment counted: 0 once the flow is established, one more
/// SYN-ACK for a SYN-ACK before that, else as it was.
#[inline(always)]
pub fn syn_acks_after(prev: u16, flow_flags: u8, syn_ack: bool, now: u64) -> u16 {
    if flow_flags & FLOW_ESTABLISHED != 0 {
        0
    } else if syn_ack {
        SynAcks::seen(prev, now)
    } else {
        prev
    }
}

/// Whether the SNAT port of a reverse NAT entry (its `syn_acks`) may carry a new flow
/// opening with `opening` at `now`. `fs`: the flow the entry names, if that flow still
/// holds this port (same backend, address and port; `None`: gone or moved); `own`: it is
/// the new flow's own key (re-created after it expired). The port is free when it is the
/// flow's own while open; when the flow is gone and the backend holds no request it
/// answered for it ([`request_held`]); or when the flow leaves the backend ready for
/// `opening` ([`port_free_for`]) and was established or reset if the backend may still
/// hold its request.
#[inline(always)]
pub fn entry_free_for(
    syn_acks: u16,
    fs: Option<&FlowState>,
    own: bool,
    cfg: &GlobalConfig,
    now: u64,
    opening: &Opening,
) -> bool {
    let held = request_held(syn_acks, now);
    let Some(fs) = fs else {
        return !held;
    };
    if own && !closed(fs.flags) {
        return true;
    }
    if held && fs.flags & (FLOW_ESTABLISHED | FLOW_RST) == 0 {
        return false;
    }
    port_free_for(fs, cfg, now, opening)
}

/// Whether a backend's SYN-ACK answers a connection the LB no longer keeps: `fs` is the
/// flow its reverse NAT entry names (`None`: gone, or moved to another backend), and it
/// is half-open and past its timeout or closed. The backend would keep that request
/// for up to a minute and meet the port's next flow with it ([`SynAcks`]), so the LB
/// answers with a RST, which drops it, and the port is free at once.
#[inline(always)]
pub fn stale_syn_ack(fs: Option<&FlowState>, cfg: &GlobalConfig, now: u64) -> bool {
    match fs {
        None => true,
        Some(fs) => fs.flags & FLOW_ESTABLISHED == 0 && (closed(fs.flags) || expired(fs, cfg, now)),
    }
}

/// Whether the SNAT port of the flow `old` (same backend, same SNAT address and port)
/// may carry a new flow that opens with `syn` at `now`, without the backend refusing it
/// ([`port_hold`]). In TIME_WAIT, Linux (`tcp_timewait_state_process`) accepts a new SYN
/// when it passes PAWS and either its TSval is newer than the last one it saw from us or
/// its sequence number is after the old `rcv_nxt`; any other SYN is answered with the
/// old connection's ACK, which the client resets, then retransmits its SYN a second
/// later. So the port is free only for a SYN that this rule accepts.
#[inline(always)]
pub fn port_free_for(old: &FlowState, cfg: &GlobalConfig, now: u64, syn: &Opening) -> bool {
    match port_hold(old, cfg, now) {
        PortHold::Free => true,
        PortHold::InUse => false,
        PortHold::TimeWait => time_wait_accepts(old, syn),
    }
}

/// Linux's TIME_WAIT test for a new SYN, against the client's last sequence number and
/// TSval the flow recorded. With timestamps on both, PAWS refuses a TSval below the last
/// one (`tcp_paws_reject`, no window; a last TSval of 0 is not checked), and the SYN is
/// taken when its TSval is newer or its sequence number is after the old one; otherwise
/// only the sequence number counts.
#[inline(always)]
fn time_wait_accepts(old: &FlowState, syn: &Opening) -> bool {
    let seq_after = (syn.seq.wrapping_sub(old.close_seq) as i32) > 0;
    match syn.tsval() {
        Some(ts) if old.flags & FLOW_CLIENT_TS != 0 => {
            let newer = ts.wrapping_sub(old.close_tsval) as i32;
            newer > 0 || ((newer == 0 || old.close_tsval == 0) && seq_after)
        }
        _ => seq_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: GlobalConfig = GlobalConfig {
        idle_timeout_ns: 1_000,
        closed_timeout_ns: 10,
        half_open_timeout_ns: 100,
        ring_size: 13,
        snat_port_min: 1,
        snat_port_max: 2,
        source_rate: 0,
        source_burst: 0,
        snat_addrs: [0; 2],
        syn_cookies: 0,
        replies: 0,
        syn_cookie_rate: 0,
    };

    fn flow(last_seen_ns: u64, flags: u8) -> FlowState {
        FlowState {
            last_seen_ns,
            flags,
            ..FlowState::default()
        }
    }

    const OPEN: u8 = FLOW_REPLIED | FLOW_ESTABLISHED;

    #[test]
    fn a_one_sided_flow_is_established_by_the_clients_ack_and_closed_by_its_fin() {
        assert_eq!(
            client_segment_one_sided(tcp::SYN),
            0,
            "a SYN leaves it half-open"
        );
        assert_eq!(client_segment_one_sided(tcp::ACK), FLOW_ESTABLISHED);
        let fin = client_segment_one_sided(tcp::FIN | tcp::ACK);
        assert!(closed(fin) && fin & FLOW_ESTABLISHED != 0);
        assert!(closed(client_segment_one_sided(tcp::RST)));
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
    fn established_flows_expire_after_the_idle_timeout_closed_ones_after_the_closed_timeout() {
        let now = 5_000;
        assert!(
            !expired(&flow(now - 1_000, OPEN), &CFG, now),
            "at the limit"
        );
        assert!(expired(&flow(now - 1_001, OPEN), &CFG, now));
        assert!(!expired(&flow(now - 10, OPEN | FLOW_RST), &CFG, now));
        assert!(expired(&flow(now - 11, OPEN | FLOW_RST), &CFG, now));
        assert!(expired(&flow(now - 11, OPEN | FLOW_CLOSED), &CFG, now));
        assert!(
            !expired(&flow(now - 11, OPEN | FLOW_FIN_CLIENT), &CFG, now),
            "half closed"
        );
        // Last seen after `now` (a later packet on another CPU): not expired.
        assert!(!expired(&flow(now + 5, OPEN), &CFG, now));
    }

    #[test]
    fn half_open_flows_expire_after_the_half_open_timeout_or_the_idle_one_if_shorter() {
        let now = 5_000;
        for half_open in [0, FLOW_REPLIED] {
            assert!(!expired(&flow(now - 100, half_open), &CFG, now));
            assert!(expired(&flow(now - 101, half_open), &CFG, now));
        }
        let short_idle = GlobalConfig {
            idle_timeout_ns: 50,
            ..CFG
        };
        assert!(expired(&flow(now - 51, 0), &short_idle, now));
        let unset = GlobalConfig {
            half_open_timeout_ns: 0,
            ..CFG
        };
        assert!(
            !expired(&flow(now - 1_000, 0), &unset, now),
            "0: no own timeout"
        );
        assert!(expired(&flow(now - 1_001, 0), &unset, now));
    }

    #[test]
    fn active_flows_are_open_and_not_idle_past_the_timeout() {
        let now = 5_000;
        assert!(active(
            &flow(now - 1_000, OPEN | FLOW_FIN_CLIENT),
            &CFG,
            now
        ));
        assert!(!active(&flow(now - 1_001, OPEN), &CFG, now));
        assert!(
            !active(&flow(now, FLOW_RST), &CFG, now),
            "closed, not yet expired"
        );
        assert!(!active(&flow(now, FLOW_CLOSED), &CFG, now));
    }

    /// Runs segments through the state rules: `true` for the client's, `false` for the
    /// backend's.
    fn run(start: u8, segments: &[(bool, u8)]) -> u8 {
        segments.iter().fold(start, |f, &(client, tcp_flags)| {
            f | if client {
                client_segment(f, tcp_flags)
            } else {
                backend_segment(f, tcp_flags)
            }
        })
    }

    #[test]
    fn the_handshake_establishes_a_flow_only_once_the_client_acknowledges_the_answer() {
        use tcp::{ACK, SYN};
        let syn = new_flow_flags(SYN);
        assert_eq!(syn, 0, "a SYN opens a half-open flow");
        assert_eq!(run(syn, &[(false, SYN | ACK)]), FLOW_REPLIED);
        assert_eq!(
            run(syn, &[(true, ACK)]),
            0,
            "an ACK before the answer (a spoofed one) establishes nothing"
        );
        assert_eq!(run(syn, &[(false, SYN | ACK), (true, ACK)]), OPEN);
        assert_eq!(
            new_flow_flags(ACK),
            FLOW_ESTABLISHED,
            "picked up mid-stream"
        );
    }

    #[test]
    fn the_closing_order_and_the_last_ack_are_recorded() {
        use tcp::{ACK, FIN, RST};
        let client_first = run(OPEN, &[(true, FIN | ACK), (false, FIN | ACK)]);
        assert_eq!(client_first, OPEN | FLOW_CLOSED);
        assert_eq!(
            run(client_first, &[(true, ACK)]),
            OPEN | FLOW_CLOSED | FLOW_LAST_ACK
        );
        let backend_first = run(OPEN, &[(false, FIN | ACK), (true, FIN | ACK)]);
        assert_eq!(backend_first, OPEN | FLOW_CLOSED | FLOW_BACKEND_TIME_WAIT);
        assert_eq!(
            run(OPEN, &[(false, FIN | ACK)]),
            OPEN | FLOW_FIN_BACKEND | FLOW_BACKEND_TIME_WAIT,
        );
        assert_eq!(run(OPEN, &[(true, RST)]), OPEN | FLOW_RST);
        assert!(
            simultaneous_close(999, 1_000),
            "the FIN does not ack the client's"
        );
        assert!(!simultaneous_close(1_000, 1_000));
        assert!(!simultaneous_close(1_001, 1_000));
        assert!(simultaneous_close(u32::MAX, 0), "across the wrap");
        assert_eq!(run(OPEN, &[(false, RST | ACK)]), OPEN | FLOW_RST);
        assert!(!records_close(OPEN, ACK));
        assert!(records_close(OPEN, FIN | ACK));
        assert!(records_close(OPEN | FLOW_FIN_BACKEND, ACK));
    }

    fn closed_flow(flags: u8, close_seq: u32, close_tsval: u32) -> FlowState {
        FlowState {
            close_seq,
            close_tsval,
            ..flow(5_000, OPEN | flags)
        }
    }

    fn syn(seq: u32, tsval: Option<u32>) -> Opening {
        Opening::new(seq, tsval)
    }

    #[test]
    fn a_port_is_free_once_its_flow_cannot_refuse_a_new_one() {
        let any = syn(7, Some(7));
        let now = 5_001;
        assert!(!port_free_for(&flow(5_000, OPEN), &CFG, now, &any), "open");
        assert!(
            port_free_for(&flow(3_000, OPEN), &CFG, now, &any),
            "expired"
        );
        assert!(
            !port_free_for(&flow(5_000, 0), &CFG, now, &any),
            "half-open"
        );
        assert!(
            port_free_for(&flow(4_800, 0), &CFG, now, &any),
            "half-open, expired"
        );
        let reset = closed_flow(FLOW_RST, 0, 0);
        assert!(port_free_for(&reset, &CFG, now, &any), "reset");
        let passive = closed_flow(FLOW_CLOSED, 0, 0);
        assert!(
            !port_free_for(&passive, &CFG, now, &any),
            "backend in LAST_ACK"
        );
        let done = closed_flow(FLOW_CLOSED | FLOW_LAST_ACK, 0, 0);
        assert!(
            port_free_for(&done, &CFG, now, &any),
            "backend got the last ACK"
        );
        assert!(
            port_free_for(&passive, &CFG, 5_011, &any),
            "after the closed timeout"
        );
    }

    #[test]
    fn a_syn_ack_is_stale_once_the_lb_keeps_no_open_or_pending_flow_for_it() {
        let now = 5_050;
        assert!(stale_syn_ack(None, &CFG, now), "no flow");
        assert!(
            !stale_syn_ack(Some(&flow(5_000, 0)), &CFG, now),
            "half-open"
        );
        assert!(
            !stale_syn_ack(Some(&flow(5_000, FLOW_REPLIED)), &CFG, now),
            "answered, the client's ACK may still come"
        );
        assert!(
            stale_syn_ack(Some(&flow(4_900, FLOW_REPLIED)), &CFG, now),
            "half-open past its timeout"
        );
        assert!(stale_syn_ack(Some(&flow(5_000, FLOW_RST)), &CFG, now));
        assert!(
            !stale_syn_ack(Some(&flow(3_000, OPEN)), &CFG, now),
            "established, even idle past its timeout: not a request the backend holds"
        );
        assert!(!stale_syn_ack(
            Some(&flow(5_000, OPEN | FLOW_RST)),
            &CFG,
            now
        ));
    }

    #[test]
    fn a_port_is_held_until_the_backends_next_syn_ack_is_overdue() {
        const S: u64 = 1 << 30;
        let t0 = 1 << 40;
        assert!(!request_held(0, t0), "no SYN-ACK: nothing held");
        let once = SynAcks::seen(0, t0);
        assert!(request_held(once, t0));
        assert!(
            request_held(once, t0 + 2 * S),
            "the second is due 1 s after"
        );
        assert!(
            !request_held(once, t0 + 3 * S),
            "overdue: a syncookie, no request"
        );
        // The 5th SYN-ACK (at 15 s): the next is due 16 s later.
        let fifth = (0..5).fold(0, |v, i| SynAcks::seen(v, t0 + i * S));
        assert!(request_held(fifth, t0 + 4 * S + 17 * S));
        assert!(!request_held(fifth, t0 + 4 * S + 18 * S));
        // After the 6th and on: the backend drops the request 32 s after the last.
        let many = (0..20).fold(0, |v, i| SynAcks::seen(v, t0 + i * S));
        assert_eq!(many >> 12, 15, "counted up to 15");
        assert!(request_held(many, t0 + 19 * S + 33 * S));
        assert!(!request_held(many, t0 + 19 * S + 34 * S));
        // Across the tick clock's wrap.
        let late = SynAcks::seen(0, 0xfff * S);
        assert!(request_held(late, 0x1000 * S + S));
        assert!(!request_held(late, 0x1000 * S + 2 * S));
        // Read on a CPU whose clock lags by a tick, across a tick's edge.
        let edge = SynAcks::seen(0, t0 + S);
        assert!(request_held(edge, t0 + S - 1), "a tick behind is now");
        // Aged as the tests age flows.
        assert!(!request_held(SynAcks::aged(once, 3 * S), t0));
        assert_eq!(SynAcks::aged(0, 3 * S), 0);
        // A flow's SYN counts as its first answer; the answer itself, in the same tick,
        // does not count again, the backend's next does.
        let sent = SynAcks::sent(t0);
        assert_eq!(sent, once);
        assert_eq!(SynAcks::seen(sent, t0 + S / 4), sent);
        assert_eq!(SynAcks::seen(sent, t0 + S) >> 12, 2);
    }

    #[test]
    fn an_entrys_port_is_free_once_its_flow_is_over_and_no_answered_request_holds_it() {
        let now = 5_001;
        let any = syn(7, Some(7));
        let held = SynAcks::sent(now);
        let free =
            |acks, fs: Option<&FlowState>, own| entry_free_for(acks, fs, own, &CFG, now, &any);
        assert!(free(0, None, false), "gone, nothing answered");
        assert!(
            !free(held, None, false),
            "gone, its request may still be held"
        );
        let half_open = flow(4_800, 0);
        assert!(free(0, Some(&half_open), false), "expired");
        assert!(
            !free(held, Some(&half_open), false),
            "expired, request held"
        );
        let reset = flow(4_800, FLOW_RST);
        assert!(free(held, Some(&reset), false), "the backend had a RST");
        assert!(
            free(held, Some(&flow(5_000, OPEN)), true),
            "the flow's own, open"
        );
        assert!(!free(0, Some(&flow(5_000, OPEN)), false), "another's, open");
    }

    #[test]
    fn port_holds_follow_the_closing_order() {
        let now = 5_001;
        let hold = |fs: FlowState| port_hold(&fs, &CFG, now);
        assert_eq!(hold(flow(5_000, OPEN)), PortHold::InUse);
        assert_eq!(hold(flow(5_000, 0)), PortHold::InUse, "half-open");
        assert_eq!(hold(flow(4_800, 0)), PortHold::Free, "half-open, expired");
        assert_eq!(hold(closed_flow(FLOW_RST, 0, 0)), PortHold::Free);
        assert_eq!(hold(closed_flow(FLOW_CLOSED, 0, 0)), PortHold::InUse);
        assert_eq!(
            hold(closed_flow(FLOW_CLOSED | FLOW_LAST_ACK, 0, 0)),
            PortHold::Free
        );
        let tw = closed_flow(FLOW_CLOSED | FLOW_BACKEND_TIME_WAIT, 0, 0);
        assert_eq!(hold(tw), PortHold::TimeWait);
        assert_eq!(
            port_hold(&tw, &CFG, 5_000 + 1_000),
            PortHold::TimeWait,
            "past the closed timeout too"
        );
        assert_eq!(
            port_hold(&tw, &CFG, 5_000 + BACKEND_TIME_WAIT_NS + 1),
            PortHold::Free
        );
    }

    #[test]
    fn a_backend_in_time_wait_takes_only_a_syn_that_linux_accepts_there() {
        let tw = FLOW_CLOSED | FLOW_BACKEND_TIME_WAIT;
        let now = 5_001;
        let free = |old: &FlowState, s: Opening| port_free_for(old, &CFG, now, &s);
        // Without timestamps: the sequence number must be after the old rcv_nxt.
        let plain = closed_flow(tw, 1_000, 0);
        assert!(free(&plain, syn(1_001, None)));
        assert!(!free(&plain, syn(1_000, None)));
        assert!(!free(&plain, syn(999, None)));
        assert!(free(&plain, syn(1_000 + (1 << 30), None)));
        assert!(!free(&plain, syn(1_000u32.wrapping_sub(1 << 30), None)));
        assert!(
            !free(&plain, syn(999, Some(u32::MAX / 4))),
            "the old flow had no timestamps: the SYN's TSval does not count"
        );
        // With timestamps on both: a newer TSval, or the same one with a later sequence
        // number.
        let ts = closed_flow(tw | FLOW_CLIENT_TS, 1_000, 500);
        assert!(free(&ts, syn(0, Some(501))));
        assert!(!free(&ts, syn(0, Some(500))));
        assert!(free(&ts, syn(1_001, Some(500))));
        assert!(!free(&ts, syn(1_001, Some(499))), "PAWS refuses it");
        assert!(!free(&ts, syn(1_001, Some(498))), "PAWS refuses it");
        // A last TSval of 0 is not checked (some stacks send 0 at first).
        let zero = closed_flow(tw | FLOW_CLIENT_TS, 1_000, 0);
        assert!(free(&zero, syn(1_001, Some(u32::MAX))));
        assert!(!free(&zero, syn(999, Some(u32::MAX))));
        assert!(free(&ts, syn(5, Some(500u32.wrapping_add(1 << 30)))));
        assert!(
            free(&ts, syn(1_001, None)),
            "no timestamps on the SYN: the sequence number decides"
        );
        assert!(!free(&ts, syn(999, None)));
        // Wrapping TSval clocks.
        let wrap = closed_flow(tw | FLOW_CLIENT_TS, 0, u32::MAX);
        assert!(free(&wrap, syn(0, Some(0))));
        // Past TIME_WAIT anything goes.
        assert!(port_free_for(
            &plain,
            &CFG,
            5_000 + BACKEND_TIME_WAIT_NS + 1,
            &syn(0, None)
        ));
    }
}
