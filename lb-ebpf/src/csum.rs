//! Incremental Internet checksums (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')), in plain
//! arithmetic: a `bpf_csum_diff` helper call cost more than the sums themselves. Words
//! are packet bytes viewed as native `u32`s, and checksum fields are read and written as
//! native `u16`s of their packet bytes: a one's-complement sum is byte-order independent
//! as long as both sides use the same view, and folding 32-bit words to 16 bits keeps it.

use aya_ebpf::helpers::bpf_csum_diff;
use core::{mem::size_of, ptr};

/// Folds a 64-bit one's-complement sum to 16 bits.
#[inline(always)]
fn fold(sum: u64) -> u16 {
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum `old` after the words `from` of the covered data became `to`.
#[inline(always)]
pub fn replace<const N: usize>(old: u16, from: &[u32; N], to: &[u32; N]) -> u16 {
    let mut u = Update::new(old);
    let mut i = 0;
    while i < N {
        u.word(from[i], to[i]);
        i += 1;
    }
    u.finish()
}

/// A checksum updated word by word as [`replace`] does, for words rewritten one at a
/// time: no copy of the old words is kept (an IPv6 rewrite's would be nine).
pub struct Update(u64);

impl Update {
    /// Starts from the checksum `old`.
    #[inline(always)]
    pub fn new(old: u16) -> Update {
        Update((!old) as u64)
    }

    /// A covered word went from `from` to `to`.
    #[inline(always)]
    pub fn word(&mut self, from: u32, to: u32) {
        self.0 += (!from) as u64 + to as u64;
    }

    /// The new checksum.
    #[inline(always)]
    pub fn finish(self) -> u16 {
        !fold(self.0)
    }
}

/// The checksum `old` after the 32-bit word `from`, at byte offset `off` of the covered
/// data, became `to`. At an odd offset the word's bytes straddle the 16-bit words the
/// sum adds, and its contribution is the byte-swapped one (RFC 1071 2(B)).
#[inline(always)]
pub fn replace_at(old: u16, off: usize, from: u32, to: u32) -> u16 {
    let mut d = fold((!from) as u64 + to as u64);
    if off & 1 != 0 {
        d = d.swap_bytes();
    }
    !fold((!old) as u64 + d as u64)
}

/// The Internet checksum (RFC 1071) of `v`, a plain value of whole 32-bit words laid out
/// as packet bytes, over `seed` (a 32-bit partial sum of other covered data, such as a
/// pseudo-header); returned as the native `u16` of the bytes to store.
#[inline(always)]
pub fn of_seeded<T>(v: &mut T, seed: u32) -> u16 {
    const { assert!(size_of::<T>() % 4 == 0 && size_of::<T>() <= 512) };
    // SAFETY: `v` is an initialised value of `size_of::<T>()` bytes, a multiple of 4
    // within the helper's limit; the empty `from` side may be null with size 0.
    let sum = unsafe {
        bpf_csum_diff(
            ptr::null_mut(),
            0,
            (v as *mut T).cast(),
            size_of::<T>() as u32,
            seed,
        )
    };
    // The helper fails only for sizes that are not multiples of 4 or too large, which
    // the assertion rules out, so `sum` is a valid 32-bit partial sum.
    !fold(sum as u32 as u64)
}

/// [`of_seeded`] with no other covered data.
#[inline(always)]
pub fn of<T>(v: &mut T) -> u16 {
    of_seeded(v, 0)
}

/// The 32-bit partial sum of `v` (whole 32-bit words laid out as packet bytes), to seed
/// the checksum of data that follows it (a pseudo-header's).
#[inline(always)]
pub fn sum_of<T>(v: &mut T) -> u32 {
    const { assert!(size_of::<T>() % 4 == 0 && size_of::<T>() <= 512) };
    // SAFETY: as in `of_seeded`.
    unsafe {
        bpf_csum_diff(
            ptr::null_mut(),
            0,
            (v as *mut T).cast(),
            size_of::<T>() as u32,
            0,
        ) as u32
    }
}

/// Folds a 32-bit one's-complement partial sum (a `bpf_csum_diff` result) to 16 bits.
#[inline(always)]
pub fn fold32(sum: u32) -> u16 {
    fold(sum as u64)
}
