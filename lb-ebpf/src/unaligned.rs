//! Packet words read and written as single BPF loads and stores at any alignment.
//!
//! A packet has no alignment the compiler can know (a frame starts wherever the driver
//! put it, and the IPv4 addresses sit 2 bytes off a word in the usual layout), so
//! `read_unaligned` of a `u32` compiles to four byte loads, three shifts and three ORs,
//! and a 12-byte copy to a call of a byte-loop `memmove`. The BPF instruction itself has
//! no alignment requirement on packet memory wherever the verifier accepts it unaligned
//! (architectures with efficient unaligned access, x86-64 and arm64 among them; it
//! rejects the program elsewhere, at load time), which is what a C program gets from
//! `iph->saddr`. Inline assembly says so without a misaligned Rust reference: the
//! compiler sees an opaque access of the given width.
//!
//! Only for packet memory (stack and map values are accessed aligned, and the verifier
//! rejects a misaligned stack access).

use core::arch::asm;

/// A load of a `$ty` with the BPF size `$size` (`u16`, `u32`).
macro_rules! load {
    ($name:ident, $ty:ty, $size:literal) => {
        #[doc = concat!("The `", stringify!($ty), "` at `p`, bytes in memory order.")]
        ///
        /// # Safety
        /// Its bytes from `p` on must be inside the packet, checked against its end.
        #[inline(always)]
        pub unsafe fn $name(p: *const u8) -> $ty {
            let v: u64;
            // SAFETY: the caller checked the bytes are in the packet; the load has no
            // alignment requirement there (see the module note) and writes only `v`.
            unsafe {
                asm!(concat!("{v} = *(", $size, " *)({p} + 0)"), v = lateout(reg) v,
                     p = in(reg) p, options(pure, readonly, nostack, preserves_flags))
            };
            v as $ty
        }
    };
}

/// A store of a `$ty` with the BPF size `$size` (`u16`, `u32`).
macro_rules! store {
    ($name:ident, $ty:ty, $size:literal) => {
        #[doc = concat!("Writes the `", stringify!($ty), "` `v` at `p`, bytes in memory order.")]
        ///
        /// # Safety
        /// Its bytes from `p` on must be inside the packet, checked against its end.
        #[inline(always)]
        pub unsafe fn $name(p: *mut u8, v: $ty) {
            // SAFETY: the caller checked the bytes are in the packet; the store has no
            // alignment requirement there and touches nothing else.
            unsafe {
                asm!(concat!("*(", $size, " *)({p} + 0) = {v}"), p = in(reg) p,
                     v = in(reg) u64::from(v), options(nostack, preserves_flags))
            };
        }
    };
}

load!(load16, u16, "u16");
load!(load32, u32, "u32");
store!(store16, u16, "u16");
store!(store32, u32, "u32");
