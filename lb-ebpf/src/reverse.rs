//! Backend → SNAT address (full NAT) or backend → client (DNAT): a reply of a NAT flow
//! (its tuple is in the reverse NAT table) is rewritten back to VIP → client and sent
//! on; a SYN-proxied flow's is translated first (`syn_proxy`). A DNAT reply's tuple has
//! the client's own port, anywhere in the port space: outside the SNAT range the table
//! is asked only while a DNAT service exists.

use aya_ebpf::programs::XdpContext;

use crate::{
    conntrack::{self, now, touch_backend},
    maps::{CONFIG, REVERSE_NAT},
    nat::Target,
    parse::Packet,
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
    let Some(cfg) = CONFIG.get(0) else {
        return false;
    };
    let port = u16::from_be(pkt.key.dport);
    (port >= cfg.snat_port_min && port <= cfg.snat_port_max) || cfg.dnat != 0
}

/// If the tuple is a NAT flow's, refreshes the flow (translates a proxied one's segment)
/// and fills `t` back to VIP → client.
#[inline(never)]
pub fn reverse(ctx: &XdpContext, pkt: &mut Packet, t: &mut Target) -> Step {
    if !in_snat_range(pkt) {
        return Step::Done(Verdict::PASS);
    }
    let Some(r) = REVERSE_NAT.get_ptr(&pkt.key) else {
        return Step::Done(Verdict::PASS);
    };
    // SAFETY: a map value stays valid for the whole program run.
    let r = unsafe { &*r };
    if pkt.ttl <= 1 {
        return Step::Done(Verdict::PASS);
    }
    pkt.now = now();
    if let Some(entry) = conntrack::lookup(&r.flow) {
        // SAFETY: a map value stays valid for the whole program run; lost updates of
        // its fields are harmless (see `conntrack::touch_client`).
        let fs = unsafe { &mut *entry.state };
        if u32::from(fs.backend) == r.backend {
            touch_backend(ctx, pkt, fs);
            if fs.proxy != 0 {
                if let Onward::Done(v) = syn_proxy::from_backend(ctx, pkt, fs) {
                    return Step::Done(v);
                }
            }
        }
    }
    t.set_reverse(r);
    Step::OUT
}
