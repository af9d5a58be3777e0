//! Incremental Internet checksums (RFC 1624) with `bpf_csum_diff`, the one checksum
//! helper XDP may call. Words are packet bytes viewed as native `u32`s, and checksum
//! fields are read and written as native `u16`s of their packet bytes: a one's-complement
//! sum is byte-order independent as long as both sides use the same view.

use aya_ebpf::helpers::bpf_csum_diff;

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum `old` after the words `from` of the covered data became `to`.
#[inline(always)]
pub fn replace<const N: usize>(old: u16, from: &mut [u32; N], to: &mut [u32; N]) -> u16 {
    let size = (N * 4) as u32;
    // SAFETY: both pointers are to initialised stack arrays of exactly `size` bytes, and
    // `size` is a multiple of 4 as the helper requires.
    let sum = unsafe {
        bpf_csum_diff(
            from.as_mut_ptr(),
            size,
            to.as_mut_ptr(),
            size,
            (!old) as u32,
        )
    };
    // The helper only fails for sizes that are not multiples of 4 or too large; `N` is
    // a constant small enough, so `sum` is a valid partial sum.
    !fold(sum as u32)
}
