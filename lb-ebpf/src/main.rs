//! The lb XDP programs: `lb_xdp`, the full-NAT TCP load balancer, and `xdp_pass`, which
//! passes everything (tests and veth peers need an XDP program on the receiving side).
//!
//! Only the entry points live here; the forwarding path reads in file order:
//! `parse` → `flow` (service, flow table, backend, SNAT port) → `nat` (rewrite,
//! checksums, next hop) → `stats` (the one counter each packet bumps). A new flow that
//! no backend can take is answered by `reset` (a TCP RST sent back with XDP_TX).
//!
//! Proxy (PROXY protocol) services add two socket programs: `lb_lookup` (`lookup`, an
//! sk_lookup program handing VIP:port connections to the daemon's listener) and
//! `lb_splice` (`splice`, the sk_skb stream verdict of the sockmap splice engine).
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod flow;
#[cfg(target_arch = "bpf")]
mod lookup;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod reset;
#[cfg(target_arch = "bpf")]
mod splice;
#[cfg(target_arch = "bpf")]
mod stats;

/// The host build of this crate is a stub so `cargo build --workspace` passes.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{sk_lookup, stream_verdict, xdp},
        programs::{SkBuffContext, SkLookupContext, XdpContext},
    };

    /// The load balancer. Every packet leaves through `stats::finish`, which bumps exactly
    /// one `COUNTERS` index and returns the XDP action.
    #[xdp]
    pub fn lb_xdp(ctx: XdpContext) -> u32 {
        crate::stats::finish(crate::flow::handle(&ctx))
    }

    /// Passes every packet to the kernel.
    #[xdp]
    pub fn xdp_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
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

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // Never reached: the verifier rejects any program with a path to a panic, so the
        // build only loads when every such path has been optimised away.
        loop {}
    }
}

/// The kernel lets only GPL-compatible programs call GPL-only helpers such as
/// `bpf_fib_lookup`; "Dual MIT/GPL" is such a license and matches the crate's MIT side.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
