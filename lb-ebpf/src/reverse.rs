//! Backend → SNAT address (full NAT) or backend → client (DNAT): a reply of a NAT flow
//! (its tuple is in the reverse NAT table) is rewritten back to VIP → client and sent
//! on; a SYN-proxied flow's is translated first (`syn_proxy`). A DNAT reply's tuple has
//! the client's own port, anywhere in the port space: outside the SNAT range the table
//! is asked only while a DNAT service exists.
//!
//! A backend's SYN-ACK for a connection the LB no longer keeps (a half-open flow past
//! its timeout, reset, or pushed out of the half-open table: a flood's, most often) is
//! answered with a RST to the backend instead (`lb_common::flow::stale_syn_ack`): the
//! backend drops the request it would otherwise hold for a minute, against the next
//! flow on that SNAT port.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    counters, flow,
    maps::{FlowState, GlobalConfig, ReverseNat},
    tcp,
};

use crate::{
    conntrack::{self, now, touch_backend},
    maps::{CONFIG, REVERSE_NAT},
    nat::Target,
    parse::Packet,
    reset,
    syn_proxy::{self, Onward},
    verdict::{Step, Verdict},
};

/// Whether a packet is a reply of a NAT flow (its own tuple is in the reverse table).
#[inline(always)]
pub fn is_nat_reply(pkt: &Packet) -> bool {
    in_snat_range(pkt) && REVERSE_NAT.get_ptr(&pkt.key).is_some()
}

/// Whether the packet's tuple may be in the reverse table: a port of the SNAT range, or
/// any while a DNAT service exists.
#[inline(always)]
fn in_snat_range(pkt: &Packet) -> bool {
    CONFIG
        .get(0)
        .is_some_and(|cfg| port_in_snat_range(cfg, pkt.key.dport))
}

/// Whether a reply to destination port `dport` (network order) may be a NAT flow's, on
/// the terms of [`in_snat_range`].
#[inline(always)]
pub fn port_in_snat_range(cfg: &GlobalConfig, dport: u16) -> bool {
    cfg.reply_port(dport)
}

/// If the tuple is a NAT flow's, refreshes the flow (translates a proxied one's segment)
/// and fills `t` back to VIP → client.
#[inline(never)]
pub fn reverse(ctx: &XdpContext, pkt: &mut Packet, t: &mut Target) -> Step {
    if !in_snat_range(pkt) {
        return Step::Done(Verdict::PASS);
    }
    let Some(r) = REVERSE_NAT.get_ptr_mut(&pkt.key) else {
        return Step::Done(Verdict::PASS);
    };
    // SAFETY: a map value stays valid for the whole program run; a lost update of
    // `syn_acks` (two CPUs at once) only shortens or lengthens a port's hold a little.
    let r = unsafe { &mut *r };
    if pkt.ttl <= 1 {
        return Step::Done(Verdict::PASS);
    }
    pkt.now = now();
    // SAFETY: a map value stays valid for the whole program run; lost updates of its
    // fields are harmless (see `conntrack::touch_client`).
    let fs = conntrack::lookup(&r.flow)
        .map(|entry| unsafe { &mut *entry.state })
        .filter(|fs| fs.backend == r.backend);
    let syn_ack = pkt.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK;
    if syn_ack && stale(pkt, fs.as_deref()) {
        r.syn_acks = 0;
        return Step::Done(reset_backend(ctx, pkt, fs));
    }
    if let Some(fs) = fs {
        touch_backend(ctx, pkt, fs);
        remember_syn_ack(r, fs, syn_ack, pkt.now);
        if fs.proxy != 0 {
            if let Onward::Done(v) = syn_proxy::from_backend(ctx, pkt, fs) {
                return Step::Done(v);
            }
        }
    }
    t.set_reverse(r);
    Step::OUT
}

/// Keeps `r.syn_acks` (`lb_common::flow::syn_acks_after`). Written only when it
/// changes: once or twice a connection.
#[inline(always)]
pub fn remember_syn_ack(r: &mut ReverseNat, fs: &FlowState, syn_ack: bool, now: u64) {
    let v = flow::syn_acks_after(r.syn_acks, fs.flags, syn_ack, now);
    if v != r.syn_acks {
        r.syn_acks = v;
    }
}

/// Whether a backend's SYN-ACK answers a connection the LB no longer keeps (`fs`: the
/// flow its reverse entry names, if it is still that backend's).
#[inline(always)]
fn stale(pkt: &Packet, fs: Option<&FlowState>) -> bool {
    CONFIG
        .get(0)
        .is_some_and(|cfg| flow::stale_syn_ack(fs, cfg, pkt.now))
}

/// Answers the backend's stale segment with a RST (XDP_TX) and marks the flow, if any,
/// reset: its SNAT port is free.
#[inline(never)]
pub fn reset_backend(ctx: &XdpContext, pkt: &mut Packet, fs: Option<&mut FlowState>) -> Verdict {
    if let Some(fs) = fs {
        conntrack::mark_reset(fs);
    }
    reset::answer(ctx, pkt, counters::DROP_STALE_BACKEND_ANSWER)
}
