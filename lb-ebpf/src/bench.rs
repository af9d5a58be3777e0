//! XDP programs for `cargo xtask bench`'s packet-rate workloads, in their own object
//! (`lb-bench-xdp`) so the daemon never loads them:
//!
//! - `bench_redirect`: the bare ceiling. It redirects every frame to the one port of
//!   `REDIRECT` and does nothing else: no XDP program on this path can be faster.
//! - `bench_pass`: passes every frame to the kernel: the LB-side program for a kernel
//!   path (nftables) under test, so the LB's veth has a NAPI to receive in (a veth
//!   runs one only with an XDP program).
//! - `bench_sink`: the far end. It counts and drops the bench's frames (TCP to the
//!   ports in `SINK_PORTS`) and passes everything else, so it can stay attached while
//!   the other workloads run through it.
//!
//! The frames come from a user-space generator (the bench's `sender` module, an AF_PACKET
//! socket). Its predecessor `bench_gen`, run here with BPF_PROG_TEST_RUN in live-frames
//! mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, frames sent with XDP_TX), is gone: kernel
//! 6.18.44-fc-v1300 refuses live frames with EPERM.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

/// The host build of this crate is a stub so `cargo build --workspace` passes.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::{Array, DevMap, PerCpuArray},
        programs::XdpContext,
    };
    // The library gives this object its panic handler and licence.
    use lb_ebpf as _;

    /// The one egress port of `bench_redirect`.
    #[map]
    static REDIRECT: DevMap = DevMap::with_max_entries(1, 0);

    /// `SINK_PORTS[0..2]`: the lowest and highest TCP destination port the sink drops.
    #[map]
    static SINK_PORTS: Array<u32> = Array::with_max_entries(2, 0);

    /// Per-CPU count of frames the sink dropped.
    #[map]
    static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    const ETH_LEN: usize = 14;
    const IPV4_LEN: usize = 20;

    /// Redirects every frame to `REDIRECT[0]`.
    #[xdp]
    pub fn bench_redirect(_ctx: XdpContext) -> u32 {
        REDIRECT.redirect(0, 0).unwrap_or(xdp_action::XDP_ABORTED)
    }

    /// Passes every frame to the kernel.
    #[xdp]
    pub fn bench_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// Counts and drops TCP/IPv4 frames to the `SINK_PORTS` range; passes the rest.
    #[xdp]
    pub fn bench_sink(ctx: XdpContext) -> u32 {
        let (data, end) = (ctx.data(), ctx.data_end());
        if data + ETH_LEN + IPV4_LEN > end {
            return xdp_action::XDP_PASS;
        }
        // SAFETY: the bounds check above covers the Ethernet and fixed IPv4 headers.
        let (ethertype, ihl, proto) = unsafe {
            let p = data as *const u8;
            (
                u16::from_be_bytes([*p.add(12), *p.add(13)]),
                (*p.add(ETH_LEN) & 0x0f) as usize * 4,
                *p.add(ETH_LEN + 9),
            )
        };
        if ethertype != 0x0800 || proto != 6 || ihl < IPV4_LEN || ihl > 60 {
            return xdp_action::XDP_PASS;
        }
        let tcp = data + ETH_LEN + ihl;
        if tcp + 4 > end {
            return xdp_action::XDP_PASS;
        }
        // SAFETY: checked just above: the TCP ports are inside the frame.
        let dport = unsafe {
            let p = tcp as *const u8;
            u16::from_be_bytes([*p.add(2), *p.add(3)]) as u32
        };
        let (Some(&lo), Some(&hi)) = (SINK_PORTS.get(0), SINK_PORTS.get(1)) else {
            return xdp_action::XDP_PASS;
        };
        if dport < lo || dport > hi {
            return xdp_action::XDP_PASS;
        }
        if let Some(c) = SINK_COUNT.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot has one writer (this CPU, preemption off).
            unsafe { *c += 1 };
        }
        xdp_action::XDP_DROP
    }
}
