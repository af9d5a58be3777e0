//! Packet words read and written as single BPF loads and stores at any alignment.
//!
//! A packet has no alignment the compiler can know (a frame starts wherever the driver
//! put it, and the IPv4 addresses sit 2 bytes off a word in the usual layout), so
//! `read_unaligned` of a `u32` compiles to four byte loads, three shifts and three ORs,
//! and a 12-byte copy to a call of a byte-loop `memmove`: on the established fast path
//! that was about 200 instructions of a packet's 600. The BPF instruction itself has
//! no alignment requirement on packet memory wherever the verifier accepts it unaligned
//! (architectures with efficient unaligned access, x86-64 and arm64 among them; it
//! rejects the program elsewhere, at load time), which is what a C program gets from
//! `iph->saddr`. Inline assembly says so without a misaligned Rust reference: the
//! compiler sees an opaque access of the given width.
//!
//! Only for packet memory (stack and map values are accessed aligned, and the verifier
//! rejects a misaligned stack access).

use core::arch::asm;

/// The `u32` at `p`, bytes in memory order (`u32::from_ne_bytes` of them).
///
/// # Safety
/// `p..p + 4` must be inside the packet, checked against its end.
#[inline(always)]
pub unsafe fn load32(p: *const u8) -> u32 {
    let v: u64;
    // SAFETY: the caller checked the four bytes are in the packet; the load has no
    // alignment requirement there (see the module note) and writes only `v`.
    unsafe {
        asm!("{v} = *(u32 *)({p} + 0)", v = lateout(reg) v, p = in(reg) p,
             options(pure, readonly, nostack, preserves_flags))
    };
    v as u32
}

/// The `u16` at `p`, bytes in memory order.
///
/// # Safety
/// `p..p + 2` must be inside the packet, checked against its end.
#[inline(always)]
pub unsafe fn load16(p: *const u8) -> u16 {
    let v: u64;
    // SAFETY: as in `load32`, for two bytes.
    unsafe {
        asm!("{v} = *(u16 *)({p} + 0)", v = lateout(reg) v, p = in(reg) p,
             options(pure, readonly, nostack, preserves_flags))
    };
    v as u16
}

/// Writes `v` at `p`, bytes in memory order.
///
/// # Safety
/// `p..p + 4` must be inside the packet, checked against its end.
#[inline(always)]
pub unsafe fn store32(p: *mut u8, v: u32) {
    // SAFETY: the caller checked the four bytes are in the packet; the store has no
    // alignment requirement there and touches nothing else.
    unsafe {
        asm!("*(u32 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) u64::from(v),
             options(nostack, preserves_flags))
    };
}

/// Writes `v` at `p`, bytes in memory order.
///
/// # Safety
/// `p..p + 2` must be inside the packet, checked against its end.
#[inline(always)]
pub unsafe fn store16(p: *mut u8, v: u16) {
    // SAFETY: as in `store32`, for two bytes.
    unsafe {
        asm!("*(u16 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) u64::from(v),
             options(nostack, preserves_flags))
    };
}
