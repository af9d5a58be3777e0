//! SNAT addresses and ports: a new flow claims the source address and port it uses
//! toward its backend by inserting the reverse NAT entry that maps the backend's
//! replies back to it.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{
    flow::{self, Opening},
    maps::{Backend, FlowKey, GlobalConfig, ReverseNat, snat_addrs_base},
    snat_probe::{PROBES, Probe},
};

use crate::{
    conntrack,
    maps::{REVERSE_NAT, SNAT_ADDRS},
    nat::Target,
    parse::Packet,
};

/// What a new flow has chosen so far, for [`claim_snat_port`].
pub struct Ids {
    pub backend: u32,
    pub service: u32,
    pub hash: u32,
    /// The flow's opening segment, for `flow::port_free_for`.
    pub opening: Opening,
}

/// Claims a SNAT address and port toward backend `b` by inserting the reverse NAT entry,
/// and sets them in `t` (`src`, `sport`, `snat_idx`). A port `t.sport` already names
/// (see [`previous`]) is tried first, on its address `t.snat_idx`; otherwise, with
/// several SNAT addresses for the family, the flow hash picks one. The next address is
/// tried if the first has no port free among the probes.
#[inline(never)]
pub fn claim_snat_port(
    pkt: &Packet,
    cfg: &GlobalConfig,
    b: &Backend,
    ids: &Ids,
    t: &mut Target,
) -> bool {
    let n = cfg.snat_addr_count(pkt.key.family);
    let first = if t.sport != 0 {
        u32::from(t.snat_idx)
    } else if n > 1 {
        ids.hash.rotate_right(8) % n
    } else {
        0
    };
    if address(b, pkt.key.family, first, t) && claim_on(pkt, cfg, b, ids, t) {
        return true;
    }
    t.sport = 0;
    n > 1 && address(b, pkt.key.family, (first + 1) % n, t) && claim_on(pkt, cfg, b, ids, t)
}

/// Sets `t.snat_idx` and `t.sport` to the SNAT address index and port of the packet's
/// own previous flow (the client reuses its port) if that flow went to backend `backend`
/// and its port is still in the range; else sets `t.sport` to 0. Taking that port again
/// (when the backend accepts this SYN there) leaves no port naming this flow while
/// another port carries it: such a port looks free to [`reusable`], although the backend
/// may still hold the old connection in TIME_WAIT, with this client port's TSval clock,
/// which another client port's SYN need not be newer than (the backend answers with an
/// ACK, the client resets and sends its SYN again).
#[inline(never)]
pub fn previous(pkt: &Packet, cfg: &GlobalConfig, backend: u32, t: &mut Target) {
    t.sport = 0;
    let Some(entry) = conntrack::lookup(&pkt.key) else {
        return;
    };
    // SAFETY: a map value stays valid for the whole program run.
    let fs = unsafe { &*entry.state };
    let port = u16::from_be(fs.snat_port);
    if u32::from(fs.backend) == backend
        && u32::from(fs.snat_idx) < cfg.snat_addr_count(pkt.key.family).max(1)
        && port >= cfg.snat_port_min
        && port <= cfg.snat_port_max
    {
        t.snat_idx = fs.snat_idx;
        t.sport = fs.snat_port;
    }
}

/// Sets SNAT address `idx` (see `FlowState::snat_idx`) as `t`'s source; false if the
/// daemon wrote no such entry.
#[inline(always)]
pub fn address(b: &Backend, family: u8, idx: u32, t: &mut Target) -> bool {
    t.snat_idx = idx as u8;
    if idx == 0 {
        t.src = b.snat_addr;
        return true;
    }
    match SNAT_ADDRS.get(snat_addrs_base(family) + idx) {
        Some(a) => {
            t.src = *a;
            true
        }
        None => false,
    }
}

/// Claims a port on the address in `t.src`, into `t.sport`, trying the port `t.sport`
/// names first if any (in place of the first candidate), then the flow's sequence of
/// candidates (`lb_common::snat_probe`: it starts at the same port every time, so a
/// flow re-created after eviction likely gets its old port back). A taken port is reused
/// if the entry is stale (its flow is gone or moved), this flow's own, or its flow is
/// over as far as the backend is concerned for a connection opening with `ids.opening`
/// (`flow::port_free_for`).
#[inline(never)]
fn claim_on(pkt: &Packet, cfg: &GlobalConfig, b: &Backend, ids: &Ids, t: &mut Target) -> bool {
    let (min, max) = (cfg.snat_port_min, cfg.snat_port_max);
    if min == 0 || max < min {
        return false;
    }
    let range = (max - min) as u32 + 1;
    let mut probe = Probe::new(ids.hash, u32::from(t.snat_idx), range);
    let named = u16::from_be(t.sport);
    if named >= min && named <= max {
        probe.at = u32::from(named - min);
    }
    let mut key = FlowKey {
        src: b.addr,
        dst: t.src,
        sport: b.port,
        dport: 0,
        proto: pkt.key.proto,
        family: pkt.key.family,
        _pad: [0; 2],
    };
    let val = ReverseNat {
        flow: pkt.key,
        backend: ids.backend,
        service_id: ids.service,
    };
    let mut i = 0;
    while i < PROBES {
        let port = (min + probe.at as u16).to_be();
        key.dport = port;
        t.sport = port;
        if REVERSE_NAT.insert(&key, &val, BPF_NOEXIST as u64).is_ok() {
            return true;
        }
        if let Some(old) = REVERSE_NAT.get_ptr(&key) {
            // SAFETY: a map value stays valid for the whole program run.
            if reusable(unsafe { &*old }, pkt, t, cfg, &ids.opening)
                && REVERSE_NAT.insert(&key, &val, BPF_ANY as u64).is_ok()
            {
                return true;
            }
        }
        probe.advance();
        i += 1;
    }
    false
}

/// Whether the reverse NAT entry holding `port` may be taken over by the packet's flow:
/// it is stale (its flow is gone, or uses another backend, address or port), the flow's own
/// while open (re-created after it expired), or its flow leaves the backend ready for
/// `opening`. Not inlined: keeps the comparison's loads off the probe loop's stack.
#[inline(never)]
fn reusable(
    old: &ReverseNat,
    pkt: &Packet,
    at: &Target,
    cfg: &GlobalConfig,
    opening: &Opening,
) -> bool {
    let Some(entry) = conntrack::lookup(&old.flow) else {
        return true;
    };
    // SAFETY: a map value stays valid for the whole program run.
    let fs = unsafe { &*entry.state };
    if u32::from(fs.backend) != old.backend
        || fs.snat_port != at.sport
        || fs.snat_idx != at.snat_idx
    {
        return true;
    }
    if old.flow == pkt.key && !flow::closed(fs.flags) {
        return true;
    }
    flow::port_free_for(fs, cfg, pkt.now, opening)
}
