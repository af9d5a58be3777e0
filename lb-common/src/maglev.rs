//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights.
//!
//! The daemon builds a table of `ring_size` slots (a prime) per service; each slot holds
//! a backend id. A flow goes to `table[flow_hash % ring_size]`. Removing one of N
//! backends moves about 1/N of the slots, so most flows keep their backend even before
//! the flow table is consulted, and every LB host that builds from the same backend set
//! gets the same table (no shared state needed behind ECMP).

/// Table entry of a slot with no backend (the service has no usable backend).
pub const NO_BACKEND: u32 = u32::MAX;

/// The slot a flow hash selects in a table of `ring_size` slots.
#[inline(always)]
pub fn slot(hash: u32, ring_size: u32) -> u32 {
    hash % ring_size
}

/// Whether `n` is prime (trial division; ring sizes are at most a few million).
pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u64;
    while d * d <= n as u64 {
        if (n as u64).is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(feature = "std")]
pub use build::{MaglevBackend, build_table};

#[cfg(feature = "std")]
mod build {
    use super::NO_BACKEND;
    use crate::hash::splitmix64;

    /// One backend as Maglev sees it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MaglevBackend {
        /// Stable identity ([`crate::hash::backend_key`]): decides the permutation.
        pub key: u64,
        /// Relative weight; 0 takes no slots.
        pub weight: u32,
        /// What the table stores for this backend (the backend id in the maps).
        pub id: u32,
    }

    /// Builds the lookup table. Backends are ordered by key first, so the table does not
    /// depend on the order they were configured in. With no backend of non-zero weight
    /// every slot is [`NO_BACKEND`].
    ///
    /// Weights: each round a backend earns `weight` credits and claims its next preferred
    /// free slot for every `max_weight` credits it holds, so slot counts follow the
    /// weights to within one slot per backend.
    ///
    /// `ring_size` must be a prime larger than the number of backends (the daemon's
    /// config validation checks both); the permutations are then complete.
    pub fn build_table(backends: &[MaglevBackend], ring_size: u32) -> Vec<u32> {
        let m = ring_size as u64;
        let mut table = vec![NO_BACKEND; ring_size as usize];
        let mut live: Vec<MaglevBackend> =
            backends.iter().copied().filter(|b| b.weight > 0).collect();
        if live.is_empty() || m < 2 {
            return table;
        }
        live.sort_by_key(|b| (b.key, b.id));
        let max_weight = live.iter().map(|b| b.weight as u64).max().unwrap_or(1);
        let perm: Vec<(u64, u64)> = live
            .iter()
            .map(|b| {
                let offset = splitmix64(b.key) % m;
                let skip = splitmix64(b.key ^ 0x5bd1_e995_5bd1_e995) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; live.len()];
        let mut credit = vec![0u64; live.len()];
        let mut filled = 0u64;
        loop {
            for i in 0..live.len() {
                credit[i] += live[i].weight as u64;
                while credit[i] >= max_weight {
                    credit[i] -= max_weight;
                    let (offset, skip) = perm[i];
                    loop {
                        let c = ((offset + next[i] * skip) % m) as usize;
                        next[i] += 1;
                        if table[c] == NO_BACKEND {
                            table[c] = live[i].id;
                            filled += 1;
                            break;
                        }
                    }
                    if filled == m {
                        return table;
                    }
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::maglev::{is_prime, slot};

        const M: u32 = 65537;

        fn backends(weights: &[u32]) -> Vec<MaglevBackend> {
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| MaglevBackend {
                    key: crate::hash::backend_key(&[198, 18, 1, 10 + i as u8], 80),
                    weight: w,
                    id: i as u32,
                })
                .collect()
        }

        fn shares(table: &[u32], n: usize) -> Vec<usize> {
            let mut c = vec![0; n];
            for &b in table {
                c[b as usize] += 1;
            }
            c
        }

        fn assert_shares_follow_weights(weights: &[u32]) {
            let table = build_table(&backends(weights), M);
            assert!(table.iter().all(|&b| b != NO_BACKEND));
            let total: u32 = weights.iter().sum();
            for (i, got) in shares(&table, weights.len()).into_iter().enumerate() {
                let want = M as f64 * weights[i] as f64 / total as f64;
                let err = (got as f64 - want).abs() / want;
                assert!(
                    err < 0.01,
                    "weights {weights:?}: backend {i} has {got} slots, want {want:.0} ({:.2}% off)",
                    err * 100.0
                );
            }
        }

        #[test]
        fn equal_weights_share_within_one_percent() {
            assert_shares_follow_weights(&[1, 1, 1]);
            assert_shares_follow_weights(&[1; 10]);
            assert_shares_follow_weights(&[100; 64]);
        }

        #[test]
        fn unequal_weights_share_within_one_percent() {
            assert_shares_follow_weights(&[1, 2, 3]);
            assert_shares_follow_weights(&[5, 1, 1, 1]);
            assert_shares_follow_weights(&[10, 20, 30, 40, 50, 60, 70]);
            assert_shares_follow_weights(&[100, 1]);
        }

        #[test]
        fn zero_weight_takes_no_slots_and_none_live_means_empty() {
            let table = build_table(&backends(&[1, 0, 1]), M);
            assert_eq!(shares(&table, 3)[1], 0);
            let empty = build_table(&backends(&[0, 0]), M);
            assert!(empty.iter().all(|&b| b == NO_BACKEND));
            assert!(build_table(&[], M).iter().all(|&b| b == NO_BACKEND));
        }

        #[test]
        fn table_does_not_depend_on_configuration_order() {
            let mut b = backends(&[1, 2, 3, 4]);
            let t1 = build_table(&b, M);
            b.reverse();
            assert_eq!(t1, build_table(&b, M));
        }

        #[test]
        fn removing_one_of_n_moves_about_one_nth() {
            for n in [3usize, 5, 10, 20] {
                let all = backends(&vec![1; n]);
                let before = build_table(&all, M);
                for removed in [0, n / 2, n - 1] {
                    let rest: Vec<_> = all
                        .iter()
                        .copied()
                        .filter(|b| b.id != removed as u32)
                        .collect();
                    let after = build_table(&rest, M);
                    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
                    let frac = moved as f64 / M as f64;
                    let ideal = 1.0 / n as f64;
                    // The removed backend's own slots must move; Maglev moves a few more.
                    assert!(frac >= ideal * 0.99, "n={n}: moved {frac:.4} < 1/n");
                    assert!(
                        frac <= ideal * 1.25,
                        "n={n}: moved {frac:.4}, ideal {ideal:.4}"
                    );
                    // Slots that did not belong to the removed backend mostly stay.
                    let kept = before
                        .iter()
                        .zip(&after)
                        .filter(|(a, _)| **a != removed as u32)
                        .filter(|(a, b)| a == b)
                        .count();
                    let others = before.iter().filter(|a| **a != removed as u32).count();
                    assert!(
                        kept as f64 / others as f64 > 0.97,
                        "n={n}: others disturbed"
                    );
                }
            }
        }

        #[test]
        fn adding_a_backend_takes_about_its_share() {
            let n = 9;
            let all = backends(&vec![1; n + 1]);
            let before = build_table(&all[..n], M);
            let after = build_table(&all, M);
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / M as f64;
            assert!(moved <= 1.25 / (n + 1) as f64, "moved {moved:.4}");
        }

        #[test]
        fn small_prime_rings_are_complete() {
            for m in [7u32, 13, 251, 4099] {
                assert!(is_prime(m));
                let t = build_table(&backends(&[1, 3, 2]), m);
                assert!(t.iter().all(|&b| b < 3), "ring {m} has holes");
            }
            assert_eq!(slot(70000, M), 70000 - M);
        }

        #[test]
        fn primality() {
            assert!(is_prime(65537) && is_prime(2) && is_prime(1_000_003));
            assert!(!is_prime(0) && !is_prime(1) && !is_prime(65536) && !is_prime(65535));
        }
    }
}
