//! Which path a packet takes: parse it, then the forward path for a VIP, else the
//! reverse path for a NAT flow's reply, else pass it to the kernel.

use aya_ebpf::programs::XdpContext;
use core::mem::MaybeUninit;
use lb_common::counters;

use crate::{
    forward::forward,
    parse::{self, Packet, Parsed},
    reverse::{is_nat_reply, reverse},
    select::service,
    stack::zeroed,
    verdict::Verdict,
};

/// The whole program, up to the verdict.
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> Verdict {
    let mut pkt = MaybeUninit::<Packet>::uninit();
    let pkt = zeroed(&mut pkt);
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
                (Parsed::FirstFragment, Some(_)) => Verdict::pass(counters::PASS_FRAGMENT),
                (Parsed::Malformed, Some(_)) => Verdict::drop(counters::DROP_MALFORMED),
                (Parsed::Malformed, None) if is_nat_reply(pkt) => {
                    Verdict::drop(counters::DROP_MALFORMED)
                }
                _ => Verdict::PASS,
            }
        }
    }
}

/// A later IPv4 fragment has no ports, so whether it belongs to a service cannot be
/// told; every TCP one is counted as a fragment (the first one was matched by port).
#[inline(always)]
fn later_fragment() -> Verdict {
    Verdict::pass(counters::PASS_FRAGMENT)
}
