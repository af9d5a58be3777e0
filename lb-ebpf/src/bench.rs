//! XDP programs for `cargo xtask bench`'s packet-rate workloads, in their own object
//! (`lb-bench-xdp`) so the daemon never loads them:
//!
//! - `bench_gen`: the packet generator. User space runs it with BPF_PROG_TEST_RUN in
//!   live-frames mode on the client's interface; each run writes the headers of
//!   `TEMPLATE` into the frame (live frames recycle their pages, so a frame comes back
//!   as the load balancer rewrote it), sets the source port (and, past 64,000 flows,
//!   source address) of the next of `flows` 5-tuples, fixes the checksums, and sends
//!   the frame with XDP_TX.
//! - `bench_redirect`: the bare ceiling. It redirects every frame to the one port of
//!   `REDIRECT` and does nothing else: no XDP program on this path can be faster.
//! - `bench_pass`: passes every frame to the kernel: the LB-side program for a kernel
//!   path (nftables) under test, since a veth only takes the generator's frames when
//!   its receiving end runs an XDP program.
//! - `bench_sink`: the far end. It counts and drops the bench's frames (TCP to the
//!   ports in `SINK_PORTS`) and passes everything else, so it can stay attached while
//!   the other workloads run through it.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

/// The host build of this crate is a stub so `cargo build --workspace` passes.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod programs {
    // The library also gives this object its panic handler and licence.
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::{Array, DevMap, PerCpuArray},
        programs::XdpContext,
    };
    use lb_ebpf::csum;

    /// `GEN[0]`: how many flows the generator cycles through (at least 1).
    /// `GEN[1]`: the first source address, as its packet bytes read as a native `u32`.
    #[map]
    static GEN: Array<u32> = Array::with_max_entries(2, 0);

    /// The generator's headers (Ethernet, IPv4 without options, TCP; checksums right),
    /// with room to copy whole words.
    #[map]
    static TEMPLATE: Array<[u64; TEMPLATE_WORDS]> = Array::with_max_entries(1, 0);
    const TEMPLATE_WORDS: usize = 7;

    /// Per-CPU count of frames generated, which picks each frame's flow.
    #[map]
    static GEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

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
    /// Source ports per source address: 1024..65024.
    const PORTS_PER_ADDR: u32 = 64_000;
    const FIRST_PORT: u32 = 1024;

    /// The generator's frame: Ethernet, IPv4 without options, TCP.
    #[xdp]
    pub fn bench_gen(ctx: XdpContext) -> u32 {
        let (data, end) = (ctx.data(), ctx.data_end());
        if data + TEMPLATE_WORDS * 8 > end {
            return xdp_action::XDP_ABORTED;
        }
        let (Some(&flows), Some(&base), Some(template)) = (GEN.get(0), GEN.get(1), TEMPLATE.get(0))
        else {
            return xdp_action::XDP_ABORTED;
        };
        let frame = data as *mut u64;
        let mut w = 0;
        while w < TEMPLATE_WORDS {
            // SAFETY: the bounds check above covers TEMPLATE_WORDS words; unaligned
            // since the frame's alignment is the driver's.
            unsafe { frame.add(w).write_unaligned(template[w]) };
            w += 1;
        }
        let Some(seq) = GEN_SEQ.get_ptr_mut(0) else {
            return xdp_action::XDP_ABORTED;
        };
        // SAFETY: a per-CPU slot has one writer (this CPU, preemption off).
        let n = unsafe {
            let n = *seq;
            *seq = n.wrapping_add(1);
            n
        };
        let index = n % flows.max(1);
        let src = u32::from_be(base)
            .wrapping_add(index / PORTS_PER_ADDR)
            .to_be();
        let sport = (FIRST_PORT + index % PORTS_PER_ADDR) as u16;

        let ip = (data + ETH_LEN) as *mut u8;
        let tcp = (data + ETH_LEN + IPV4_LEN) as *mut u8;
        // SAFETY: the bounds check above covers the IPv4 and TCP headers; unaligned
        // accesses because the frame's layout decides the alignment.
        unsafe {
            let src_p = ip.add(12) as *mut u32;
            let ports_p = tcp as *mut u32;
            let ip_csum_p = ip.add(10) as *mut u16;
            let tcp_csum_p = tcp.add(16) as *mut u16;
            let old_src = src_p.read_unaligned();
            let old_ports = ports_p.read_unaligned();
            let mut ports = old_ports.to_ne_bytes();
            ports[..2].copy_from_slice(&sport.to_be_bytes());
            let new_ports = u32::from_ne_bytes(ports);
            src_p.write_unaligned(src);
            ports_p.write_unaligned(new_ports);
            let ip_csum = csum::replace(ip_csum_p.read_unaligned(), &[old_src], &[src]);
            ip_csum_p.write_unaligned(ip_csum);
            let tcp_csum = csum::replace(
                tcp_csum_p.read_unaligned(),
                &[old_src, old_ports],
                &[src, new_ports],
            );
            tcp_csum_p.write_unaligned(tcp_csum);
        }
        xdp_action::XDP_TX
    }

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
