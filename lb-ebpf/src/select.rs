//! Which service a packet is for (VIP:port), and for a new flow which backend takes it
//! (Maglev) and the flow-table entry that pins it there.

use aya_ebpf::programs::XdpContext;
use core::mem::MaybeUninit;
use lb_common::{
    counters, flow,
    hash::flow_hash,
    maglev::{self, NO_BACKEND},
    maps::{BACKEND_UP, FlowState, GlobalConfig, MODE_DSR, MODE_NAT, Service, VipKey},
};

use crate::{
    conntrack,
    direct::{aim_dnat, aim_unchanged},
    dnat,
    maps::{BACKENDS, MAGLEV, SERVICES},
    nat::Target,
    parse::Packet,
    sequence,
    snat::{self, Ids, claim_snat_port},
    stack::zeroed,
    syn_proxy, traffic,
};

/// Returned by [`new_flow`] when it succeeds; otherwise it returns a drop counter.
pub const OK: u32 = u32::MAX;

/// The service the packet is addressed to. Inlined since the verifier's budget allows
/// it: the call cost the established path about a tenth of its time with the three below
/// (`forward::existing_flow`, `nat::rewrite_v4`, `fib::cached_hop`).
#[inline(always)]
pub fn service(pkt: &Packet) -> Option<*const Service> {
    let vip = VipKey {
        addr: pkt.key.dst,
        port: pkt.key.dport,
        proto: pkt.key.proto,
        family: pkt.key.family,
    };
    SERVICES.get_ptr(&vip)
}

/// Creates a flow of a DSR or DNAT service, which owns no port of the LB's: Maglev picks
/// its backend and the flow enters the flow table (a DNAT flow's reverse entry first).
/// Returns `OK` or a drop counter (`DROP_NO_BACKEND`: the caller answers with a RST).
/// Not [`new_flow`] with a branch inside: the verifier would walk the SNAT port search
/// for these flows too (it cannot know the service's mode there).
#[inline(never)]
pub fn new_direct_flow(
    ctx: &XdpContext,
    pkt: &Packet,
    svc: &Service,
    cfg: &GlobalConfig,
    t: &mut Target,
) -> u32 {
    let c = maglev_pick(pkt, svc, cfg, t);
    if c != OK {
        return c;
    }
    // Computed again rather than carried: the target has no room to spare on the stack.
    let (id, hash) = (t.backend, flow_hash(&pkt.key));
    let Some(b) = BACKENDS.get(id) else {
        return counters::DROP_NO_BACKEND;
    };
    if svc.mode == MODE_DSR {
        aim_unchanged(pkt, svc, b, id, hash, t);
    } else {
        aim_dnat(pkt, b, id, t);
        if !dnat::remember(pkt, b, id, svc.id) {
            return counters::DROP_INTERNAL;
        }
    }
    let c = enter(ctx, pkt, svc.mode, t);
    if c == OK {
        traffic::new_flow(svc.id, t.backend);
    }
    c
}

/// The backend Maglev gives the packet's flow, into `t.backend`: `OK`, or a drop counter if the slot is empty or its backend cannot take new
/// flows (not up, or not of the packet's family).
#[inline(always)]
pub fn maglev_pick(pkt: &Packet, svc: &Service, cfg: &GlobalConfig, t: &mut Target) -> u32 {
    if cfg.ring_size == 0 {
        return counters::DROP_INTERNAL;
    }
    let hash = flow_hash(&pkt.key);
    let slot = maglev::slot(hash, cfg.ring_size);
    let Some(&id) = MAGLEV.get(svc.table_offset.wrapping_add(slot)) else {
        return counters::DROP_INTERNAL;
    };
    if id == NO_BACKEND {
        return counters::DROP_NO_BACKEND;
    }
    let Some(b) = BACKENDS.get(id) else {
        return counters::DROP_NO_BACKEND;
    };
    if b.state != BACKEND_UP || b.family != pkt.key.family {
        return counters::DROP_NO_BACKEND;
    }
    t.backend = id;
    OK
}

/// Creates a flow: [`pick`]s its backend and SNAT port and enters it in the flow table
/// (a SYN cookie's as `syn_proxy` says, with `t.proxied`). Returns `OK` or the counter
/// [`pick`] or the table gave.
#[inline(never)]
pub fn new_flow(
    ctx: &XdpContext,
    pkt: &Packet,
    svc: &Service,
    cfg: &GlobalConfig,
    t: &mut Target,
) -> u32 {
    let c = pick(ctx, pkt, svc, cfg, t);
    if c != OK {
        return c;
    }
    let c = enter(ctx, pkt, svc.mode, t);
    if c == OK {
        traffic::new_flow(svc.id, t.backend);
    }
    c
}

/// Enters the new flow toward `t` in the flow table. Its own frame: the flow entry is
/// not on the stack while [`pick`]'s SNAT port search runs, the program's deepest call
/// chain.
#[inline(never)]
fn enter(ctx: &XdpContext, pkt: &Packet, mode: u32, t: &Target) -> u32 {
    // codegen: zeroed word by word, then filled in; `..FlowState::default()` zeroed the
    // rest with a byte-loop `memset` call.
    let mut slot = MaybeUninit::<FlowState>::uninit();
    let fs = zeroed(&mut slot);
    fs.last_seen_ns = pkt.now;
    fs.first_seen_ns = pkt.now;
    fs.packets = 1;
    fs.backend = t.backend as u16;
    // Only a NAT flow owns a port of the LB's.
    fs.snat_port = if mode == MODE_NAT { t.sport } else { 0 };
    fs.flags = flow::new_flow_flags(pkt.tcp_flags);
    fs.snat_idx = t.snat_idx;
    if t.proxied != 0 && !syn_proxy::pending_flow(ctx, pkt, fs) {
        return counters::DROP_MALFORMED;
    }
    if !conntrack::insert(&pkt.key, fs) {
        return counters::DROP_FLOW_TABLE_FULL;
    }
    OK
}

/// A new flow's backend and SNAT address and port: Maglev picks the backend, then a SNAT
/// port is claimed that the backend will take a connection on from this segment (see
/// `snat`); `t` is set toward them. Returns `DROP_NO_BACKEND` when the slot is empty or
/// its backend cannot take new flows (not up, or not of the packet's family); the caller
/// answers with a RST.
#[inline(always)]
fn pick(ctx: &XdpContext, pkt: &Packet, svc: &Service, cfg: &GlobalConfig, t: &mut Target) -> u32 {
    let c = maglev_pick(pkt, svc, cfg, t);
    if c != OK {
        return c;
    }
    // Computed again rather than carried: the target has no room to spare on the stack.
    let (id, hash) = (t.backend, flow_hash(&pkt.key));
    let Some(b) = BACKENDS.get(id) else {
        return counters::DROP_NO_BACKEND;
    };
    let Some(seq) = sequence::read(ctx, pkt) else {
        return counters::DROP_INTERNAL;
    };
    let ids = Ids {
        backend: id,
        service: svc.id,
        hash,
        opening: seq.start,
    };
    snat::previous(pkt, cfg, id, t);
    if !claim_snat_port(pkt, cfg, b, &ids, t) {
        syn_proxy::ports_out(pkt.now, svc.id, cfg);
        return counters::DROP_SNAT_EXHAUSTED;
    }
    t.set_forward(b, id);
    OK
}
