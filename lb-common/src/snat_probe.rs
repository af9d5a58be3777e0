//! The order in which a new flow tries SNAT ports: a fixed pseudo-random sequence per
//! flow over the port range.
//!
//! Linear probing (try the next port, and the next) lets taken ports gather into runs:
//! under a flood at half occupancy, runs longer than the probe budget appear and a
//! flow finds no port although half of them are free. Here each candidate is a fresh
//! hash of the flow's hash and the try's number, so a budget of `n` probes fails only
//! with the probability that `n` random ports are all taken (at half occupancy, the program's
//! 24 probes fail once in 17 million). The sequence depends only on the flow hash and the SNAT
//! address index, so a flow re-created after it was evicted tries its old port first.

/// SNAT ports tried per address for a new flow before giving up: enough that a port
/// whose last flow's backend would refuse this SYN (TIME_WAIT) rarely ends the search
/// (at 80% occupancy 24 tries all fail 0.5% of the time, per SNAT address). verifier:
/// the program's probe loop is most of what the verifier walks; at 32 the program with
/// the SYN proxy and the eBPF log on went past the verifier's million instructions.
pub const PROBES: u32 = 24;

/// A flow's walk over `range` ports on one SNAT address: offsets from the range's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The offset being tried.
    pub at: u32,
    seed: u32,
    tries: u32,
    range: u32,
}

/// Murmur3's finaliser: every output bit depends on every input bit.
#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

impl Probe {
    /// The walk of the flow with hash `hash` on SNAT address `idx` over `range` ports
    /// (`range` ≥ 1); each address has its own.
    #[inline(always)]
    pub fn new(hash: u32, idx: u32, range: u32) -> Probe {
        let seed = hash ^ idx.wrapping_mul(0x9e37_79b9);
        Probe {
            at: mix(seed) % range,
            seed,
            tries: 0,
            range,
        }
    }

    /// Moves to the next candidate.
    #[inline(always)]
    pub fn advance(&mut self) {
        self.tries += 1;
        self.at = mix(self.seed.wrapping_add(self.tries.wrapping_mul(0x9e37_79b9))) % self.range;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(hash: u32, idx: u32, range: u32, n: usize) -> Vec<u32> {
        let mut p = Probe::new(hash, idx, range);
        (0..n)
            .map(|_| {
                let at = p.at;
                p.advance();
                at
            })
            .collect()
    }

    #[test]
    fn a_walk_stays_in_the_range_and_is_a_fixed_function_of_the_flow() {
        for hash in [0, 1, 0xdead_beef, u32::MAX] {
            for range in [1, 2, 1000, 22_768, 65_535] {
                let w = walk(hash, 0, range, 64);
                assert!(w.iter().all(|&p| p < range), "{hash:#x} in {range}: {w:?}");
                assert_eq!(w, walk(hash, 0, range, 64));
            }
        }
        assert_eq!(walk(7, 0, 1, 3), [0, 0, 0]);
    }

    #[test]
    fn addresses_start_elsewhere_and_walks_of_different_flows_differ() {
        assert_ne!(walk(42, 0, 22_768, 1), walk(42, 1, 22_768, 1));
        assert_ne!(walk(42, 0, 22_768, 8), walk(43, 0, 22_768, 8));
    }

    /// The point of it: with half the ports taken in one run (the worst case for linear
    /// probing), 32 probes of every flow find a free one.
    #[test]
    fn a_run_of_taken_ports_does_not_trap_the_flows_that_start_in_it() {
        let range = 1000;
        let taken = |p: u32| p < 500;
        let mut trapped = 0;
        let mut starting_inside = 0;
        for hash in 0..20_000u32 {
            let h = hash.wrapping_mul(0x9e37_79b9);
            let w = walk(h, 0, range, 32);
            if taken(w[0]) {
                starting_inside += 1;
                if w.iter().all(|&p| taken(p)) {
                    trapped += 1;
                }
            }
        }
        assert!(starting_inside > 5_000, "{starting_inside}");
        assert_eq!(trapped, 0, "of {starting_inside} flows starting in the run");
    }
}
