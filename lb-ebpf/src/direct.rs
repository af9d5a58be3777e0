//! Client → VIP for the services whose flows own no port of the LB's: DSR (the packet
//! goes whole, encapsulated, to a backend that answers the client directly) and DNAT
//! (only the destination changes; the backend routes its replies back through the LB).
//! The same flow table as full NAT pins each flow to its backend; a packet of a flow the
//! table does not know, a SYN or not (its entry was evicted, or the flow comes from
//! another LB host after a routing change), goes where Maglev says, so LB hosts with the
//! same configuration agree. No SYN cookies here: the LB cannot see a DSR backend's
//! answers, and a cookie's flow would need its sequence numbers translated.
//! A program of its own (`lb_direct`, tail-called by `lb_xdp`), not branches in
//! `forward`: `lb_xdp` is close to the verifier's budget of a million instructions, and
//! its SNAT port search would be walked for these flows too. For the same reason
//! `lb_direct` also answers the segments of any service that its allowlist refuses
//! (`access`).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    counters,
    hash::flow_hash,
    maps::{Backend, FLOW_ESTABLISHED, GlobalConfig, MODE_DSR, Service},
    tcp,
};

use crate::{
    conntrack::{self, now, touch_client, touch_client_one_sided},
    events,
    forward::live_backend,
    maps::{BACKENDS, CONFIG, DIRECT},
    nat::Target,
    parse,
    parse::Packet,
    reset,
    select::{OK, maglev_pick, new_direct_flow, service},
    source_limit,
    verdict::{Step, Verdict},
};

/// Goes on in `lb_direct` (the `DIRECT` tail call); a tail call returns only when it
/// failed: the daemon has not written the program yet.
#[inline(always)]
pub fn enter(ctx: &XdpContext) -> Verdict {
    // SAFETY: the context is this program's own, and `lb_direct` is an XDP program
    // too (the kernel checks the program array's type when the daemon writes it).
    let _ = unsafe { DIRECT.tail_call(ctx, 0) };
    Verdict::drop(counters::DROP_INTERNAL)
}

/// Finds or creates the packet's flow and fills `t` toward its backend.
#[inline(never)]
pub fn forward(ctx: &XdpContext, pkt: &mut Packet, svc: &Service, t: &mut Target) -> Step {
    if pkt.ttl <= 1 {
        // The kernel sends the ICMP time exceeded.
        return Step::Done(Verdict::PASS);
    }
    let Some(cfg) = CONFIG.get(0) else {
        return Step::Done(Verdict::drop(counters::DROP_INTERNAL));
    };
    pkt.now = now();
    t.service = svc.id;
    let sent = if svc.mode == MODE_DSR {
        Step::ENCAP
    } else {
        Step::IN
    };
    if existing_flow(pkt, svc, cfg, t) {
        return sent;
    }
    if pkt.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN && !source_limit::admits(pkt, cfg) {
        return Step::Done(Verdict::drop(counters::DROP_SOURCE_RATE_LIMITED));
    }
    let c = new_direct_flow(ctx, pkt, svc, cfg, t);
    if c == counters::DROP_NO_BACKEND {
        return Step::Done(reset::answer(ctx, pkt, counters::DROP_NO_BACKEND));
    }
    if c != OK {
        events::dropped(ctx, c);
        return Step::Done(Verdict::drop(c));
    }
    sent
}

/// An ICMP error a client sent about a DSR flow (it quotes the backend's reply: the
/// path toward the client is too small, say) goes to the backend that owns the flow,
/// inside the service's encapsulation, for its TCP to act on; the flow's entry says
/// which backend, else Maglev (as for the flow's own packets). Anything else is passed.
#[inline(never)]
pub fn icmp_error(ctx: &XdpContext, pkt: &mut Packet, t: &mut Target) -> Step {
    if !parse::icmp_quote(ctx, pkt) {
        return Step::Done(Verdict::PASS);
    }
    let Some(svc) = service(pkt) else {
        return Step::Done(Verdict::PASS);
    };
    // SAFETY: a map value stays valid for the whole program run (RCU).
    let svc = unsafe { &*svc };
    let Some(cfg) = CONFIG.get(0) else {
        return Step::Done(Verdict::PASS);
    };
    if svc.mode != MODE_DSR {
        return Step::Done(Verdict::PASS);
    }
    pkt.now = now();
    t.service = svc.id;
    match conntrack::lookup(&pkt.key) {
        // SAFETY: a map value stays valid for the whole program run.
        Some(entry) => t.backend = u32::from(unsafe { (*entry.state).backend }),
        None => {
            if maglev_pick(pkt, svc, cfg, t) != OK {
                return Step::Done(Verdict::PASS);
            }
        }
    }
    let Some(b) = BACKENDS.get(t.backend) else {
        return Step::Done(Verdict::PASS);
    };
    aim_unchanged(pkt, svc, b, t.backend, flow_hash(&pkt.key), t);
    Step::Encap {
        counter: counters::FWD_ICMP,
    }
}

/// Uses the packet's flow entry if it is live: refreshes it and fills `t`.
#[inline(never)]
fn existing_flow(pkt: &Packet, svc: &Service, cfg: &GlobalConfig, t: &mut Target) -> bool {
    let Some(entry) = conntrack::lookup(&pkt.key) else {
        return false;
    };
    // SAFETY: a map value stays valid for the whole program run; concurrent writers on
    // other CPUs only store timestamps and flag bits (see `conntrack::touch_client`).
    let fs = unsafe { &mut *entry.state };
    let Some(b) = live_backend(pkt, fs, cfg) else {
        return false;
    };
    let id = u32::from(fs.backend);
    if svc.mode == MODE_DSR {
        touch_client_one_sided(fs, pkt.now, pkt.tcp_flags);
        aim_unchanged(pkt, svc, b, id, flow_hash(&pkt.key), t);
    } else {
        touch_client(fs, pkt.now, pkt.tcp_flags);
        aim_dnat(pkt, b, id, t);
    }
    if entry.half_open && fs.flags & FLOW_ESTABLISHED != 0 {
        conntrack::promote(&pkt.key, fs);
    }
    true
}

/// DSR: the packet goes to backend `b` as it is, inside the service's encapsulation.
#[inline(always)]
pub fn aim_unchanged(pkt: &Packet, svc: &Service, b: &Backend, id: u32, hash: u32, t: &mut Target) {
    t.sport = pkt.key.sport;
    t.dport = pkt.key.dport;
    t.set_encap(svc, b, id, hash);
}

/// DNAT: the destination becomes backend `b`'s address and port; the source stays the
/// client's.
#[inline(always)]
pub fn aim_dnat(pkt: &Packet, b: &Backend, id: u32, t: &mut Target) {
    t.src = pkt.key.src;
    t.sport = pkt.key.sport;
    t.set_forward(b, id);
}
