//! The flow hash (which Maglev slot a connection lands on) and the stable backend key
//! (where a backend's permutation starts). Both are fixed functions with no per-host
//! seed, so every LB host computes the same values for the same flow and backend set.
//!
//! The hash reads addresses as the native-order words of their network-order bytes (see
//! `maps`): the kernel side and the daemon both run little-endian here (bpfel, x86_64).

use crate::maps::FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;
const SEED: u32 = 0x6c62_2d31; // "lb-1"

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a flow's 5-tuple (MurmurHash3 over its nine words). Direction matters:
/// client → VIP and its reply hash differently, which NAT mode does not need, since
/// replies are matched by the reverse NAT table, not by the hash.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = SEED;
    let mut i = 0;
    while i < 4 {
        h = mix(h, key.src[i]);
        h = mix(h, key.dst[i]);
        i += 1;
    }
    h = mix(h, (key.sport as u32) << 16 | key.dport as u32);
    h = mix(h, (key.proto as u32) << 8 | key.family as u32);
    finish(h, 40)
}

/// FNV-1a, 64 bits, over bytes: the stable identity of a backend for Maglev.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// SplitMix64 finaliser: decorrelates the two Maglev permutation parameters drawn from
/// one backend key.
pub const fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Stable key of a backend from its address bytes (4 or 16) and port (host order).
pub fn backend_key(addr_bytes: &[u8], port: u16) -> u64 {
    let mut buf = [0u8; 18];
    let n = if addr_bytes.len() > 16 {
        16
    } else {
        addr_bytes.len()
    };
    buf[..n].copy_from_slice(&addr_bytes[..n]);
    buf[n..n + 2].copy_from_slice(&port.to_be_bytes());
    fnv1a64(&buf[..n + 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{FAMILY_V4, PROTO_TCP};

    fn key(src: u32, sport: u16) -> FlowKey {
        FlowKey {
            src: [src, 0, 0, 0],
            dst: [0x6412_12c6, 0, 0, 0],
            sport,
            dport: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn flow_hash_is_a_fixed_function() {
        // Every LB host must agree on a flow's slot: pin the value so a change to the
        // function (which would move every flow in a fleet mid-upgrade) fails loudly.
        assert_eq!(flow_hash(&key(0x0200_12c6, 40000u16.to_be())), 0x5879_3cdc);
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = key(0x0200_12c6, 40000u16.to_be());
        let h = flow_hash(&base);
        let mut k = base;
        k.src[0] ^= 1 << 24;
        assert_ne!(flow_hash(&k), h);
        let mut k = base;
        k.dst[3] = 1;
        assert_ne!(flow_hash(&k), h);
        let mut k = base;
        k.sport ^= 1;
        assert_ne!(flow_hash(&k), h);
        let mut k = base;
        k.dport ^= 1;
        assert_ne!(flow_hash(&k), h);
        let mut k = base;
        k.family = 6;
        assert_ne!(flow_hash(&k), h);
    }

    #[test]
    fn flow_hash_is_direction_sensitive() {
        let fwd = key(0x0200_12c6, 40000u16.to_be());
        let rev = FlowKey {
            src: fwd.dst,
            dst: fwd.src,
            sport: fwd.dport,
            dport: fwd.sport,
            ..fwd
        };
        assert_ne!(flow_hash(&fwd), flow_hash(&rev));
    }

    #[test]
    fn flow_hash_spreads_source_ports_evenly() {
        // 64k source ports into 64 buckets: a chi-squared test at p < 0.0005
        // (63 degrees of freedom) that the spread is what a uniform hash gives.
        let mut buckets = [0u32; 64];
        for port in 0..65536u32 {
            let h = flow_hash(&key(0x0200_12c6, (port as u16).to_be()));
            buckets[(h % 64) as usize] += 1;
        }
        let chi2: f64 = buckets
            .iter()
            .map(|&b| (b as f64 - 1024.0).powi(2) / 1024.0)
            .sum();
        assert!(chi2 < 110.0, "chi-squared {chi2:.1}: buckets {buckets:?}");
    }

    #[test]
    fn backend_key_distinguishes_address_and_port() {
        let a = backend_key(&[198, 18, 1, 11], 80);
        assert_ne!(a, backend_key(&[198, 18, 1, 11], 81));
        assert_ne!(a, backend_key(&[198, 18, 1, 12], 80));
        assert_eq!(a, backend_key(&[198, 18, 1, 11], 80));
    }
}
