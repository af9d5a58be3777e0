//! Connection tracking: which service a packet is for, which backend its flow is
//! pinned to (flow table, else Maglev), and which SNAT port carries it to the backend.
//! Replies are matched by the reverse NAT table.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_coarse_ns,
    programs::XdpContext,
};
use core::mem::MaybeUninit;
use lb_common::{
    hash::flow_hash,
    maglev::{self, NO_BACKEND},
    maps::{
        BACKEND_DRAINING, BACKEND_UP, Backend, FLOW_CLOSED, FLOW_FIN_BACKEND, FLOW_FIN_CLIENT,
        FLOW_RST, FlowKey, FlowState, GlobalConfig, MODE_PROXY, ReverseNat, Service, VipKey,
    },
    stats,
};

use crate::{
    maps::{BACKENDS, CONFIG, FLOWS, MAGLEV, REVERSE_NAT, SERVICES},
    nat::{self, Target},
    parse::{self, Packet, Parsed, tcp},
    reset,
    stats::{Dir, Verdict},
};

/// SNAT ports tried for a new flow before giving up.
const SNAT_PROBES: u32 = 8;

/// The whole program: parse, then the forward path for a VIP, else the reverse path for
/// a NAT flow, else pass.
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> Verdict {
    let mut pkt = MaybeUninit::<Packet>::uninit();
    let pkt = parse::zeroed(&mut pkt);
    match parse::parse(ctx, pkt) {
        Parsed::Skip => Verdict::PASS,
        Parsed::LaterFragment => later_fragment(),
        parsed => {
            let svc = service(pkt);
            match (parsed, svc) {
                (Parsed::Tcp, Some(svc)) => {
                    // SAFETY: a map value stays valid for the whole program run (RCU).
                    forward(ctx, pkt, unsafe { &*svc })
                }
                (Parsed::Tcp, None) => reverse(ctx, pkt),
                (Parsed::FirstFragment, Some(_)) => Verdict::pass(stats::PASS_FRAGMENT),
                (Parsed::Malformed, Some(_)) => Verdict::drop(stats::DROP_MALFORMED),
                (Parsed::Malformed, None) if is_nat_reply(pkt) => {
                    Verdict::drop(stats::DROP_MALFORMED)
                }
                _ => Verdict::PASS,
            }
        }
    }
}

/// The service the packet is addressed to. Not inlined: keeps the key off the entry's
/// stack.
#[inline(never)]
fn service(pkt: &Packet) -> Option<*const Service> {
    let vip = VipKey {
        addr: pkt.key.dst,
        port: pkt.key.dport,
        proto: pkt.key.proto,
        family: pkt.key.family,
    };
    SERVICES.get_ptr(&vip)
}

/// A later IPv4 fragment has no ports, so whether it belongs to a service cannot be
/// told; every TCP one is counted as a fragment (the first one was matched by port).
#[inline(always)]
fn later_fragment() -> Verdict {
    Verdict::pass(stats::PASS_FRAGMENT)
}

/// Whether a packet is a reply of a NAT flow (its own tuple is in the reverse table).
#[inline(always)]
fn is_nat_reply(pkt: &Packet) -> bool {
    in_snat_range(pkt) && REVERSE_NAT.get_ptr(&pkt.key).is_some()
}

#[inline(always)]
fn in_snat_range(pkt: &Packet) -> bool {
    let Some(cfg) = CONFIG.get(0) else {
        return false;
    };
    let port = u16::from_be(pkt.key.dport);
    port >= cfg.snat_port_min && port <= cfg.snat_port_max
}

/// Flow bits a packet's TCP flags add.
#[inline(always)]
fn flow_flags(tcp_flags: u8, fin: u8) -> u8 {
    let mut f = 0;
    if tcp_flags & tcp::FIN != 0 {
        f |= fin;
    }
    if tcp_flags & tcp::RST != 0 {
        f |= FLOW_RST;
    }
    f
}

/// Whether a flow entry has outlived its timeout.
#[inline(always)]
fn expired(fs: &FlowState, cfg: &GlobalConfig, now: u64) -> bool {
    let closed = fs.flags & FLOW_RST != 0 || fs.flags & FLOW_CLOSED == FLOW_CLOSED;
    let timeout = if closed {
        cfg.closed_timeout_ns
    } else {
        cfg.idle_timeout_ns
    };
    now.saturating_sub(fs.last_seen_ns) > timeout
}

/// Client → VIP: find or create the flow, rewrite toward the backend, send; a new flow
/// with no usable backend is answered with a RST.
#[inline(never)]
fn forward(ctx: &XdpContext, pkt: &mut Packet, svc: &Service) -> Verdict {
    if pkt.ttl <= 1 {
        // The kernel sends the ICMP time exceeded.
        return Verdict::PASS;
    }
    if svc.mode == MODE_PROXY {
        // The daemon terminates these connections: the local stack delivers them to
        // its socket (sk_lookup), and it counts per backend itself.
        crate::stats::service_traffic(svc.id, Dir::In, packet_len(ctx));
        return Verdict::pass(stats::PASS_PROXY);
    }
    let Some(cfg) = CONFIG.get(0) else {
        return Verdict::drop(stats::DROP_INTERNAL);
    };
    pkt.now = now();
    let mut t = MaybeUninit::<Target>::uninit();
    let t = parse::zeroed(&mut t);
    t.service = svc.id;
    let found = existing_flow(pkt, cfg, t);
    if !found {
        let c = new_flow(pkt, svc, cfg, t);
        if c == stats::DROP_NO_BACKEND {
            // Nothing can take the connection: tell the client at once, as a closed
            // port would, rather than let it retransmit into silence.
            return reset::answer(ctx, pkt);
        }
        if c != OK {
            return Verdict::drop(c);
        }
    }
    nat::send(ctx, pkt, t, Dir::In)
}

/// Bytes of the frame, as the traffic counters count them.
#[inline(always)]
fn packet_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

/// CLOCK_MONOTONIC to the last tick: enough for timeouts of seconds, and in a VM it
/// reads no clock source (the precise `bpf_ktime_get_ns` reads the TSC through the
/// paravirtual clock, a few percent of the per-packet cost).
#[inline(always)]
fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Uses the packet's flow entry if it is live and its backend still serves it: fills
/// `t` and refreshes the entry in place.
#[inline(never)]
fn existing_flow(pkt: &Packet, cfg: &GlobalConfig, t: &mut Target) -> bool {
    let Some(fs) = FLOWS.get_ptr_mut(&pkt.key) else {
        return false;
    };
    // SAFETY: a map value stays valid for the whole program run; concurrent writers on
    // other CPUs only store timestamps and flag bits, where a lost update is harmless.
    let fs = unsafe { &mut *fs };
    if expired(fs, cfg, pkt.now) {
        return false;
    }
    let Some(b) = BACKENDS.get(fs.backend) else {
        return false;
    };
    if b.state != BACKEND_UP && b.state != BACKEND_DRAINING {
        return false;
    }
    fs.last_seen_ns = pkt.now;
    let f = flow_flags(pkt.tcp_flags, FLOW_FIN_CLIENT);
    if f & !fs.flags != 0 {
        fs.flags |= f;
    }
    t.set_forward(b, fs.backend, fs.snat_port);
    true
}

/// Returned by the flow steps when they succeed; otherwise they return a drop counter.
const OK: u32 = u32::MAX;

/// Creates a flow: Maglev picks the backend, then a SNAT port is claimed. Returns
/// `DROP_NO_BACKEND` when the slot is empty or its backend cannot take new flows (not
/// up, or not of the packet's family); the caller answers with a RST.
#[inline(never)]
fn new_flow(pkt: &Packet, svc: &Service, cfg: &GlobalConfig, t: &mut Target) -> u32 {
    if cfg.ring_size == 0 {
        return stats::DROP_INTERNAL;
    }
    let hash = flow_hash(&pkt.key);
    let slot = maglev::slot(hash, cfg.ring_size);
    let Some(&id) = MAGLEV.get(svc.table_offset.wrapping_add(slot)) else {
        return stats::DROP_INTERNAL;
    };
    if id == NO_BACKEND {
        return stats::DROP_NO_BACKEND;
    }
    let Some(b) = BACKENDS.get(id) else {
        return stats::DROP_NO_BACKEND;
    };
    if b.state != BACKEND_UP || b.family != pkt.key.family {
        return stats::DROP_NO_BACKEND;
    }
    let ids = Ids {
        backend: id,
        service: svc.id,
        hash,
    };
    let Some(snat_port) = claim_snat_port(pkt, cfg, b, &ids) else {
        return stats::DROP_SNAT_EXHAUSTED;
    };
    let fs = FlowState {
        last_seen_ns: pkt.now,
        backend: id,
        snat_port,
        flags: flow_flags(pkt.tcp_flags, FLOW_FIN_CLIENT),
        _pad: 0,
    };
    if FLOWS.insert(&pkt.key, &fs, BPF_ANY as u64).is_err() {
        return stats::DROP_FLOW_TABLE_FULL;
    }
    crate::stats::new_flow(svc.id, id);
    t.set_forward(b, id, snat_port);
    OK
}

/// What a new flow has chosen so far, for [`claim_snat_port`].
struct Ids {
    backend: u32,
    service: u32,
    hash: u32,
}

/// Claims a SNAT port toward backend `b` by inserting the reverse NAT entry; returns the
/// port (network order). Candidates start at a port derived from the flow hash (so a
/// flow re-created after eviction likely gets its old port back) and go up by one,
/// wrapping inside the range. A taken port is reused if the entry is this flow's own or
/// stale (its flow is gone, expired or moved).
#[inline(never)]
fn claim_snat_port(pkt: &Packet, cfg: &GlobalConfig, b: &Backend, ids: &Ids) -> Option<u16> {
    let (min, max) = (cfg.snat_port_min, cfg.snat_port_max);
    if min == 0 || max < min {
        return None;
    }
    let range = (max - min) as u32 + 1;
    // Other bits of the hash than the Maglev slot's, so the flows of a slot spread.
    let first = ids.hash.rotate_right(16) % range;
    let key = FlowKey {
        src: b.addr,
        dst: b.snat_addr,
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
    let mut key = key;
    let mut i = 0;
    while i < SNAT_PROBES {
        let port = (min + ((first + i) % range) as u16).to_be();
        key.dport = port;
        if REVERSE_NAT.insert(&key, &val, BPF_NOEXIST as u64).is_ok() {
            return Some(port);
        }
        if let Some(old) = REVERSE_NAT.get_ptr(&key) {
            // SAFETY: a map value stays valid for the whole program run.
            if reusable(unsafe { &*old }, pkt, port, cfg)
                && REVERSE_NAT.insert(&key, &val, BPF_ANY as u64).is_ok()
            {
                return Some(port);
            }
        }
        i += 1;
    }
    None
}

/// Whether the reverse NAT entry holding `port` may be taken over by the packet's flow:
/// it is the flow's own, or stale (its flow is gone, expired, or uses another backend
/// or port). Not inlined: keeps the comparison's loads off the probe loop's stack.
#[inline(never)]
fn reusable(old: &ReverseNat, pkt: &Packet, port: u16, cfg: &GlobalConfig) -> bool {
    if old.flow == pkt.key {
        return true;
    }
    let Some(fs) = FLOWS.get_ptr(&old.flow) else {
        return true;
    };
    // SAFETY: a map value stays valid for the whole program run.
    let fs = unsafe { &*fs };
    expired(fs, cfg, pkt.now) || fs.backend != old.backend || fs.snat_port != port
}

/// Backend → SNAT address: if the tuple is a NAT flow's, rewrite back to VIP → client.
#[inline(never)]
fn reverse(ctx: &XdpContext, pkt: &mut Packet) -> Verdict {
    if !in_snat_range(pkt) {
        return Verdict::PASS;
    }
    let Some(r) = REVERSE_NAT.get_ptr(&pkt.key) else {
        return Verdict::PASS;
    };
    // SAFETY: a map value stays valid for the whole program run.
    let r = unsafe { &*r };
    if pkt.ttl <= 1 {
        return Verdict::PASS;
    }
    pkt.now = now();
    if let Some(fs) = FLOWS.get_ptr_mut(&r.flow) {
        // SAFETY: as in `existing_flow`: lost updates of these fields are harmless.
        let fs = unsafe { &mut *fs };
        if fs.backend == r.backend {
            fs.last_seen_ns = pkt.now;
            let f = flow_flags(pkt.tcp_flags, FLOW_FIN_BACKEND);
            if f & !fs.flags != 0 {
                fs.flags |= f;
            }
        }
    }
    let mut t = MaybeUninit::<Target>::uninit();
    let t = parse::zeroed(&mut t);
    t.set_reverse(r);
    nat::send(ctx, pkt, t, Dir::Out)
}
