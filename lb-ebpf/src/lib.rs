//! What every eBPF object of this crate shares (`lb-ebpf` and the bench's `lb-bench-xdp`):
//! the panic handler, the licence, and lb's incremental checksum.
#![cfg_attr(target_arch = "bpf", no_std)]

#[cfg(target_arch = "bpf")]
pub mod csum;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Never reached: the verifier rejects any program with a path to a panic, so an
    // object only loads when every such path has been optimised away.
    loop {}
}

/// The kernel lets only GPL-compatible programs call GPL-only helpers such as
/// `bpf_fib_lookup`; "Dual MIT/GPL" is such a license and matches the crate's MIT side.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
