//! The lb XDP programs: `lb_xdp`, the full-NAT TCP load balancer, and `xdp_pass`, which
//! passes everything (tests and veth peers need an XDP program on the receiving side).
//!
//! Only the entry points live here. The forwarding path reads by file name:
//! `dispatch` (which path: an established flow's plain segment takes `fast`, a shorter
//! road to the same result; the others go on) → `parse` (through `packet`'s
//! bounds-checked cursor) →
//! `forward` (client → backend: `select` the service and backend, `snat` port,
//! `conntrack` refresh; `access` (the source allowlist) and `source_limit` first for a
//! segment opening a flow) or `reverse` (backend → client) → `nat` (rewrite, `csum`;
//! packet words through `unaligned`) → `fib` (next hop, cached) → `verdict` (the one
//! counter each packet bumps). A new flow that no backend can take is answered by
//! `reset` (a TCP RST sent back with XDP_TX).
//! Under SYN pressure `syn_proxy` answers SYNs with `cookie`s and opens the backend's
//! leg itself, translating between the two legs; the segments the program writes itself
//! (RST, SYN-ACK, SYN, ACK) come from `segment`, the TCP options it reads from
//! `options`.
//! `traffic` counts per service and backend; `events` logs the rare drops. A packet whose
//! next hop has no neighbour entry is passed with a mark over its Ethernet addresses, and
//! `lb_neigh` (`handoff`, TC ingress on the same interfaces) sends it out through the
//! kernel's neighbour resolution.
//!
//! Proxy (PROXY protocol) services add two socket programs: `lb_lookup` (`lookup`, an
//! sk_lookup program handing VIP:port connections to the daemon's listener) and
//! `lb_splice` (`splice`, the sk_skb stream verdict of the sockmap splice engine).
//! The panic handler and licence come from the crate's library (`lib.rs`).
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Flag bits are set with an atomic OR (`conntrack::add_flags`), SYNs counted with an
// atomic add (`syn_proxy::answer_for_syn`) and port takeovers locked with an atomic swap
// (`snat::take_over`). The BPF target has no compare-and-swap, so core's atomic types
// offer none of these and the intrinsics are used.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// Packet words are loaded and stored at any alignment with one BPF instruction each,
// written as inline assembly (`unaligned`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod access;
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod cookie;
#[cfg(target_arch = "bpf")]
mod decap;
#[cfg(target_arch = "bpf")]
mod direct;
#[cfg(target_arch = "bpf")]
mod dispatch;
#[cfg(target_arch = "bpf")]
mod dnat;
#[cfg(target_arch = "bpf")]
mod encap;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod fast;
#[cfg(target_arch = "bpf")]
mod fib;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod handoff;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod lookup;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod options;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod reset;
#[cfg(target_arch = "bpf")]
mod reverse;
#[cfg(target_arch = "bpf")]
mod segment;
#[cfg(target_arch = "bpf")]
mod select;
#[cfg(target_arch = "bpf")]
mod sequence;
#[cfg(target_arch = "bpf")]
mod snat;
#[cfg(target_arch = "bpf")]
mod source_limit;
#[cfg(target_arch = "bpf")]
mod splice;
#[cfg(target_arch = "bpf")]
mod stack;
#[cfg(target_arch = "bpf")]
mod syn_proxy;
#[cfg(target_arch = "bpf")]
mod traffic;
#[cfg(target_arch = "bpf")]
mod unaligned;
#[cfg(target_arch = "bpf")]
mod verdict;
#[cfg(target_arch = "bpf")]
mod watch;

/// The host build of this crate is a stub so `cargo build --workspace` passes.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{classifier, sk_lookup, stream_verdict, xdp},
        programs::{SkBuffContext, SkLookupContext, TcContext, XdpContext},
    };
    // The panic handler and licence.
    use lb_ebpf as _;

    /// The load balancer. Every packet leaves through `verdict::finish`, which bumps
    /// exactly one `COUNTERS` index and returns the XDP action.
    #[xdp]
    pub fn lb_xdp(ctx: XdpContext) -> u32 {
        crate::verdict::finish(crate::dispatch::handle(&ctx))
    }

    /// The DSR and DNAT forward path, tail-called by `lb_xdp` (`DIRECT`).
    #[xdp]
    pub fn lb_direct(ctx: XdpContext) -> u32 {
        crate::verdict::finish(crate::dispatch::handle_direct(&ctx))
    }

    /// `lb decap` on a DSR backend: strips the encapsulation of packets for its VIPs.
    #[xdp]
    pub fn lb_decap(ctx: XdpContext) -> u32 {
        crate::decap::handle(&ctx)
    }

    /// `lb decap --clamp-mss`: lowers the MSS of the VIPs' SYN-ACKs (TC egress).
    #[classifier]
    pub fn lb_decap_mss(ctx: TcContext) -> i32 {
        crate::decap::clamp_mss(&ctx)
    }

    /// Passes every packet to the kernel.
    #[xdp]
    pub fn xdp_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// TC ingress companion of `lb_xdp`: sends the packets it handed off for want of a
    /// neighbour entry out through the kernel's neighbour resolution; passes the rest.
    #[classifier]
    pub fn lb_neigh(ctx: TcContext) -> i32 {
        crate::handoff::handle(&ctx)
    }

    /// Steers new connections to a proxy VIP:port to the daemon's listening socket
    /// (`PROXY_VIPS` → `PROXY_LISTENERS`); everything else goes on to the regular lookup.
    #[sk_lookup]
    pub fn lb_lookup(ctx: SkLookupContext) -> u32 {
        crate::lookup::handle(&ctx)
    }

    /// Redirects what a spliced socket receives to its peer's egress (`SPLICE`).
    #[stream_verdict]
    pub fn lb_splice(ctx: SkBuffContext) -> u32 {
        crate::splice::handle(&ctx)
    }
}
