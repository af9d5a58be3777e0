//! Destination NAT: the backend sees the client's own address and sends its replies to
//! it, routed back through the LB. A new flow's reverse entry maps the backend's reply
//! tuple (backend → client) back to the flow, so `reverse` turns the reply's source back
//! into the VIP as it does for full NAT.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::maps::{Backend, FlowKey, ReverseNat};

use crate::{maps::REVERSE_NAT, parse::Packet};

/// Enters the reverse entry of the packet's new flow toward backend `b` (id `id`) of
/// service `service`; false if the map refused it.
#[inline(never)]
pub fn remember(pkt: &Packet, b: &Backend, id: u32, service: u32) -> bool {
    let key = FlowKey {
        src: b.addr,
        dst: pkt.key.src,
        sport: b.port,
        dport: pkt.key.sport,
        proto: pkt.key.proto,
        family: pkt.key.family,
        _pad: [0; 2],
    };
    let val = ReverseNat {
        flow: pkt.key,
        backend: id as u16,
        syn_acks: 0,
        service_id: service,
    };
    REVERSE_NAT.insert(&key, &val, BPF_ANY as u64).is_ok()
}
