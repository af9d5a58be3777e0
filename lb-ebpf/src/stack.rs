//! Zeroed stack values the BPF backend and the verifier both accept.

use core::mem::{MaybeUninit, align_of, size_of};

/// Zeroes a stack value with 32-bit stores the compiler cannot merge into a `memset`
/// call. verifier/codegen: the BPF backend turns such calls into a byte-loop subprogram.
#[inline(always)]
pub fn zeroed<T>(v: &mut MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>() % 4 == 0 && align_of::<T>() >= 4) };
    let p = v.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: `i * 4 < size_of::<T>()` and `T` is 4-byte aligned, so the store is
        // inside `v` and aligned.
        unsafe { p.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte is now zero, and the callers' types are plain integers, valid
    // when zeroed.
    unsafe { v.assume_init_mut() }
}

/// Zeroes `w` with 32-bit stores, as [`zeroed`] does: an array of zeros assigned became
/// a byte-loop `memset` call.
#[inline(always)]
pub fn zero_words<const N: usize>(w: &mut [u32; N]) {
    let p = w.as_mut_ptr();
    let mut i = 0;
    while i < N {
        // SAFETY: `i < N`: the store is inside `w`, and aligned as its words are.
        unsafe { p.add(i).write_volatile(0) };
        i += 1;
    }
}
