//! The order in which a new flow tries SNAT ports: first [`PROBES`] candidates of a
//! fixed pseudo-random walk per flow over the port range, then, if none was free, every
//! port of the range in turn ([`Search`]), so a flow finds a free port whenever one
//! exists.
//!
//! Linear probing from the start (try the next port, and the next) lets taken ports
//! gather into runs: under a flood at half occupancy, runs longer than a probe budget
//! appear and flows starting in them pay for the whole run. Here each early candidate is
//! a fresh hash of the flow's hash and the try's number, so [`PROBES`] candidates all
//! fail only with the probability that that many random ports are all taken (at half
//! occupancy, once in 17 million; at 90%, one flow in 12): the sweep of the whole range
//! is for a range nearly full. The walk depends only on the flow hash and the SNAT
//! address index, so a flow re-created after it was evicted tries its old port first.
//!
//! A sweep that finds nothing costs a lookup per port of the range (milliseconds for a
//! wide range), so after one, that backend's SNAT address gets only the walk for
//! [`SWEEP_HOLD_NS`]: a flood of SYNs toward a backend whose ports are all taken does not
//! sweep on every SYN.

/// Candidates of the flow's pseudo-random walk before the sweep: enough that the sweep
/// is rare (at 80% occupancy 24 tries all fail 0.5% of the time, per SNAT address).
pub const PROBES: u32 = 24;

/// After a sweep of a backend's SNAT address found no port, how long new flows toward
/// it try only the walk's [`PROBES`] candidates there.
pub const SWEEP_HOLD_NS: u64 = 1_000_000_000;

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
        // `max(1)`: no division by zero the compiler must guard (a range is at least 1),
        // which in the program would be a panic path the verifier refuses.
        let range = self.range.max(1);
        self.at = mix(self.seed.wrapping_add(self.tries.wrapping_mul(0x9e37_79b9))) % range;
    }
}

/// A flow's whole search over `range` ports on one SNAT address: candidate `i` (asked
/// for in order, 0, 1, 2...) is the walk's `i`th for `i` below [`PROBES`] (the first
/// may be a port the flow names instead), then the range's ports in turn from where the
/// walk started: [`PROBES`] candidates, or [`Search::candidates`] with the sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Search {
    walk: Probe,
    sweep_from: u32,
}

impl Search {
    /// The search of the flow with hash `hash` on address `idx`; `named`, an offset in
    /// the range, replaces the walk's first candidate.
    #[inline(always)]
    pub fn new(hash: u32, idx: u32, range: u32, named: Option<u32>) -> Search {
        let mut walk = Probe::new(hash, idx, range);
        let sweep_from = walk.at;
        if let Some(at) = named {
            walk.at = at;
        }
        Search { walk, sweep_from }
    }

    /// Candidates of the walk and the sweep.
    #[inline(always)]
    pub fn candidates(&self) -> u32 {
        PROBES + self.walk.range
    }

    /// The offset (in the range) of candidate `i`, the next one asked for.
    #[inline(always)]
    pub fn offset(&mut self, i: u32) -> u32 {
        if i < PROBES {
            let at = self.walk.at;
            self.walk.advance();
            return at;
        }
        let range = self.walk.range.max(1);
        (self.sweep_from + (i - PROBES) % range) % range
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

    /// Every offset of the search, in order.
    fn search(hash: u32, range: u32, named: Option<u32>) -> Vec<u32> {
        let mut s = Search::new(hash, 0, range, named);
        (0..s.candidates()).map(|i| s.offset(i)).collect()
    }

    #[test]
    fn a_search_walks_then_sweeps_every_port_of_the_range_once() {
        for range in [1, 2, 7, 1000] {
            for hash in [0, 9, 0xdead_beef] {
                let all = search(hash, range, None);
                assert_eq!(
                    &all[..PROBES as usize],
                    &walk(hash, 0, range, PROBES as usize)[..]
                );
                let mut sweep = all[PROBES as usize..].to_vec();
                assert_eq!(sweep[0], all[0], "the sweep starts where the walk did");
                sweep.sort_unstable();
                assert_eq!(
                    sweep,
                    (0..range).collect::<Vec<_>>(),
                    "{hash:#x} in {range}"
                );
            }
        }
    }

    #[test]
    fn a_named_port_comes_first_and_the_sweep_still_covers_the_range() {
        let all = search(5, 100, Some(77));
        assert_eq!(all[0], 77);
        assert_eq!(
            all[1..PROBES as usize],
            walk(5, 0, 100, PROBES as usize)[1..]
        );
        let mut sweep = all[PROBES as usize..].to_vec();
        sweep.sort_unstable();
        assert_eq!(sweep, (0..100).collect::<Vec<_>>());
    }
}
