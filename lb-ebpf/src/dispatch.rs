//! Which path a packet takes: parse it, then the forward path for a VIP, else the
//! reverse path for a NAT flow's reply, else pass it to the kernel.

use aya_ebpf::programs::XdpContext;
use core::mem::MaybeUninit;
use lb_common::{
    counters,
    maps::{ACCESS_WATCH, MODE_DNAT, MODE_DSR},
};

use crate::{
    access, direct, fast, fib,
    forward::forward,
    nat::Target,
    parse::{self, Packet, Parsed},
    reverse::{is_nat_reply, reverse},
    select::service,
    stack::zeroed,
    traffic::Dir,
    verdict::{Step, Verdict},
    watch,
};

/// The whole program, up to the verdict: an established flow's plain segment takes the
/// fast path (`fast`); for the others the forward or reverse path decides, and a packet
/// to send on leaves through the one call of `fib::send`.
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> Verdict {
    let mut v = fast::established(ctx);
    if v == fast::IPV6 {
        v = fast::established_v6(ctx);
    }
    if v != fast::GENERAL {
        return v;
    }
    let mut pkt = MaybeUninit::<Packet>::uninit();
    let pkt = zeroed(&mut pkt);
    let mut t = MaybeUninit::<Target>::uninit();
    let t = zeroed(&mut t);
    let step = match parse::parse(ctx, pkt) {
        Parsed::Skip => return Verdict::PASS,
        Parsed::LaterFragment => return later_fragment(),
        // Maybe about a DSR flow: `lb_direct` reads the quote.
        Parsed::IcmpError => return direct::enter(ctx),
        parsed => {
            let svc = service(pkt);
            match (parsed, svc) {
                (Parsed::Tcp, Some(svc)) => {
                    // SAFETY: a map value stays valid for the whole program run (RCU).
                    let svc = unsafe { &*svc };
                    if svc.access & ACCESS_WATCH != 0 {
                        watch::note(ctx, pkt);
                    }
                    // `lb_direct` also answers refused sources: `lb_xdp` is close to the
                    // verifier's budget.
                    if svc.mode == MODE_DSR || svc.mode == MODE_DNAT || access::refused(pkt, svc) {
                        return direct::enter(ctx);
                    }
                    forward(ctx, pkt, svc, t)
                }
                (Parsed::Tcp, None) => reverse(ctx, pkt, t),
                (Parsed::FirstFragment, Some(_)) => return Verdict::pass(counters::PASS_FRAGMENT),
                (Parsed::Malformed, Some(_)) => return Verdict::drop(counters::DROP_MALFORMED),
                (Parsed::Malformed, None) if is_nat_reply(pkt) => {
                    return Verdict::drop(counters::DROP_MALFORMED);
                }
                _ => return Verdict::PASS,
            }
        }
    };
    match step {
        Step::Done(v) => v,
        Step::Send { dir, counter } => {
            let fwd = match dir {
                Dir::In => counters::FWD_IN,
                Dir::Out => counters::FWD_OUT,
            };
            fib::send(ctx, pkt, t, dir).recount(fwd, counter)
        }
        Step::Encap { .. } => Verdict::drop(counters::DROP_INTERNAL),
    }
}

/// A later IPv4 fragment has no ports, so whether it belongs to a service cannot be
/// told; every TCP one is counted as a fragment (the first one was matched by port).
#[inline(always)]
fn later_fragment() -> Verdict {
    Verdict::pass(counters::PASS_FRAGMENT)
}

/// `lb_direct`'s whole program: the same parse and service lookup, then the answer to a
/// source the service's allowlist refuses (any mode), or the DSR or DNAT forward path.
#[inline(always)]
pub fn handle_direct(ctx: &XdpContext) -> Verdict {
    let mut pkt = MaybeUninit::<Packet>::uninit();
    let pkt = zeroed(&mut pkt);
    let mut t = MaybeUninit::<Target>::uninit();
    let t = zeroed(&mut t);
    let step = match parse::parse(ctx, pkt) {
        Parsed::Tcp => {
            let Some(svc) = service(pkt) else {
                // The service went away between the two programs.
                return Verdict::PASS;
            };
            // SAFETY: a map value stays valid for the whole program run (RCU).
            let svc = unsafe { &*svc };
            if access::refused(pkt, svc) {
                return access::refuse(ctx, pkt, svc);
            }
            if svc.mode != MODE_DSR && svc.mode != MODE_DNAT {
                // Refused in `lb_xdp`, allowed now: the list changed in between. The
                // next segment goes the usual way; this one is dropped, as a loss.
                return Verdict::drop(counters::DROP_DENIED);
            }
            direct::forward(ctx, pkt, svc, t)
        }
        Parsed::IcmpError => direct::icmp_error(ctx, pkt, t),
        _ => return Verdict::PASS,
    };
    match step {
        Step::Done(v) => v,
        Step::Send { dir, counter } => {
            fib::send(ctx, pkt, t, dir).recount(counters::FWD_IN, counter)
        }
        Step::Encap { counter } => {
            fib::send_encapsulated(ctx, pkt, t).recount(counters::FWD_IN, counter)
        }
    }
}
