//! Client → VIP: the packet's flow (existing, else a new one), then the rewrite toward
//! its backend; a new flow no backend can take is answered with a RST, and a SYN over
//! its source's new-flow rate is dropped before any flow state exists. Under SYN
//! pressure new flows are opened by SYN cookie instead (`syn_proxy`). DSR and DNAT
//! services, whose flows own no port of the LB's, take their own path (`direct`,
//! chosen in `dispatch`).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    counters, flow,
    maps::{
        BACKEND_DRAINING, BACKEND_UP, Backend, FLOW_ESTABLISHED, FlowState, GlobalConfig,
        MODE_PROXY, Service,
    },
    syn_proxy::COOKIES_OFF,
    tcp,
};

use crate::{
    conntrack::{self, now},
    cookie::{self, Cookie},
    events,
    maps::{BACKENDS, CONFIG},
    nat::Target,
    packet::frame_len,
    parse::Packet,
    reset,
    select::{OK, new_flow},
    snat, source_limit,
    syn_proxy::{self, SynAnswer},
    traffic::{Dir, service_traffic},
    verdict::{Step, Verdict},
};

/// Finds or creates the flow and fills `t` toward the backend (or, for a cookie
/// SYN-ACK, back toward the client).
#[inline(never)]
pub fn forward(ctx: &XdpContext, pkt: &mut Packet, svc: &Service, t: &mut Target) -> Step {
    if pkt.ttl <= 1 {
        // The kernel sends the ICMP time exceeded.
        return Step::Done(Verdict::PASS);
    }
    if svc.mode == MODE_PROXY {
        // The daemon terminates these connections: the local stack delivers them to
        // its socket (sk_lookup), and it counts per backend itself.
        service_traffic(svc.id, Dir::In, frame_len(ctx) as u64);
        return Step::Done(Verdict::pass(counters::PASS_PROXY));
    }
    let Some(cfg) = CONFIG.get(0) else {
        events::dropped(ctx, counters::DROP_INTERNAL);
        return Step::Done(Verdict::drop(counters::DROP_INTERNAL));
    };
    pkt.now = now();
    t.service = svc.id;
    if let Some(fs) = existing_flow(ctx, pkt, svc, cfg, t) {
        // SAFETY: a map value stays valid for the whole program run.
        let fs = unsafe { &*fs };
        if fs.proxy != 0 && !syn_proxy::from_client(ctx, pkt, fs) {
            return Step::Done(Verdict::drop(counters::DROP_MALFORMED));
        }
        return Step::IN;
    }
    let syn = pkt.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN;
    let mut counter = counters::FWD_IN;
    if syn {
        if !source_limit::admits(pkt, cfg) {
            return Step::Done(Verdict::drop(counters::DROP_SOURCE_RATE_LIMITED));
        }
        let answer = syn_proxy::answer_for_syn(pkt, svc, cfg);
        if answer == SynAnswer::Trusted {
            counter = counters::SYN_TRUSTED;
        }
        if answer == SynAnswer::Cookie {
            // Routed as the flow's replies are (not sent back where it came from): to
            // the client's next hop, or nowhere when the route is a blackhole.
            if !syn_proxy::answer_syn(ctx, pkt, t) {
                return Step::Done(Verdict::drop(counters::DROP_MALFORMED));
            }
            return Step::Send {
                dir: Dir::Out,
                counter: counters::SYN_COOKIE_SENT,
            };
        }
    } else if cfg.syn_cookies != COOKIES_OFF {
        let c = cookie::check(ctx, pkt);
        if c == Cookie::Ack || (c == Cookie::Probe && syn_proxy::probe_as_ack(ctx, pkt)) {
            t.proxied = 1;
            syn_proxy::passed(pkt);
        } else if syn_proxy::cookies_on(pkt, svc, cfg) {
            // While cookies answer the VIP's SYNs, a segment without a flow can only
            // be a forged or stale ACK: picking it up would let a flood of them fill
            // the table.
            return Step::Done(Verdict::drop(counters::DROP_SYN_COOKIE_INVALID));
        }
    }
    let c = new_flow(ctx, pkt, svc, cfg, t);
    if c == counters::DROP_NO_BACKEND {
        // Nothing can take the connection: tell the client at once, as a closed
        // port would, rather than let it retransmit into silence.
        return Step::Done(reset::answer(ctx, pkt, counters::DROP_NO_BACKEND));
    }
    if c != OK {
        events::dropped(ctx, c);
        return Step::Done(Verdict::drop(c));
    }
    if t.proxied != 0 {
        if !syn_proxy::open(ctx, pkt) {
            return Step::Done(Verdict::drop(counters::DROP_MALFORMED));
        }
        return Step::Send {
            dir: Dir::In,
            counter: counters::SYN_COOKIE_VALID,
        };
    }
    Step::Send {
        dir: Dir::In,
        counter,
    }
}

/// Uses the packet's flow entry if it has a [`live_backend`] (and the packet is not a
/// new connection's cookie ACK, see [`cookie_reopens`]): fills `t` and refreshes the
/// entry in place.
#[inline(always)]
fn existing_flow(
    ctx: &XdpContext,
    pkt: &Packet,
    svc: &Service,
    cfg: &GlobalConfig,
    t: &mut Target,
) -> Option<*mut FlowState> {
    let entry = conntrack::lookup(&pkt.key)?;
    // SAFETY: a map value stays valid for the whole program run; concurrent writers on
    // other CPUs only store timestamps and flag bits (see `conntrack::touch_client`).
    let fs = unsafe { &mut *entry.state };
    if flow::closed(fs.flags) && cookie_reopens(ctx, pkt, svc, cfg) {
        return None;
    }
    let b = live_backend(pkt, fs, cfg)?;
    conntrack::client_segment(ctx, pkt, fs);
    if !aim(b, fs, pkt.key.family, t) {
        return None;
    }
    // Last, so the copy has every change this packet made.
    if entry.half_open && fs.flags & FLOW_ESTABLISHED != 0 {
        conntrack::promote(&pkt.key, fs);
        syn_proxy::answered(pkt.now, svc.id, cfg);
    }
    Some(entry.state)
}

/// Fills `t` toward flow `fs`'s backend `b` from its SNAT address and port; false if
/// the daemon wrote no such address (`snat::address`). Shared with the fast path.
#[inline(always)]
pub fn aim(b: &Backend, fs: &FlowState, family: u8, t: &mut Target) -> bool {
    if !snat::address(b, family, u32::from(fs.snat_idx), t) {
        return false;
    }
    t.sport = fs.snat_port;
    t.set_forward(b, u32::from(fs.backend));
    true
}

/// Whether a segment on a closed flow is the cookie ACK of a new connection from the
/// same client port instead: while the VIP's SYNs are answered by cookie, the new
/// connection's SYN left no state, so its ACK is the first the LB sees of it. Taken as
/// the old flow's, it would reach the backend as a stray ACK and the new connection
/// would never open.
#[inline(never)]
fn cookie_reopens(ctx: &XdpContext, pkt: &Packet, svc: &Service, cfg: &GlobalConfig) -> bool {
    cfg.syn_cookies != COOKIES_OFF
        && pkt.tcp_flags & (tcp::SYN | tcp::ACK | tcp::RST) == tcp::ACK
        && syn_proxy::cookies_on(pkt, svc, cfg)
        && cookie::check(ctx, pkt) != Cookie::Invalid
}

/// The backend of the packet's flow entry `fs`, if the entry is live and the backend
/// still serves it. A SYN on a closed flow has none: it opens a new one (a client
/// reusing its port), which may go elsewhere and starts half-open.
#[inline(always)]
pub fn live_backend(pkt: &Packet, fs: &FlowState, cfg: &GlobalConfig) -> Option<&'static Backend> {
    if flow::expired(fs, cfg, pkt.now) {
        return None;
    }
    if pkt.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN && flow::closed(fs.flags) {
        return None;
    }
    serving_backend(u32::from(fs.backend))
}

/// Backend `id` if it still serves its existing flows: up, or draining (it takes no new
/// ones). Shared with the fast path (`fast`).
#[inline(always)]
pub fn serving_backend(id: u32) -> Option<&'static Backend> {
    let b = BACKENDS.get(id)?;
    if b.state != BACKEND_UP && b.state != BACKEND_DRAINING {
        return None;
    }
    Some(b)
}
