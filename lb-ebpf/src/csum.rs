//! Incremental Internet checksums (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')), in plain
//! arithmetic: a `bpf_csum_diff` helper call cost more than the sums themselves. Words
//! are packet bytes viewed as native `u32`s, and checksum fields are read and written as
//! native `u16`s of their packet bytes: a one's-complement sum is byte-order independent
//! as long as both sides use the same view, and folding 32-bit words to 16 bits keeps it.

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
    let mut sum = (!old) as u64;
    let mut i = 0;
    while i < N {
        sum += (!from[i]) as u64 + to[i] as u64;
        i += 1;
    }
    !fold(sum)
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
