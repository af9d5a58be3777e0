//! What building a Maglev table costs, for `cargo xtask bench` (issue 5): build time,
//! peak heap and balance of [`build_table`] for given backend counts and ring sizes.
//! The bench runs this release build because timing the builder inside xtask would
//! time a debug build, which the daemon never runs.
//!
//! `maglev_cost [--repeats N] [--max-ms MS] BACKENDS:RING...` prints one JSON object
//! per case on stdout, in the order given:
//!
//! ```text
//! {"backends":10,"ring_size":65537,"build_ms":[1.9,1.8],"peak_heap_bytes":262468,
//!  "table_bytes":262148,"slots_min":6553,"slots_max":6554,"removed_slots":6554,
//!  "moved_other_slots":312}
//! ```
//!
//! `build_ms`: the timed builds, after one untimed build (the one whose heap is
//! measured). `peak_heap_bytes`: the most heap held during a build beyond what was held
//! before it, the returned table included. `slots_min`/`slots_max`: slots of the
//! emptiest and fullest backend. `removed_slots`/`moved_other_slots`: when the backend in
//! the middle of the set is removed, the slots it held, and the slots of the others that
//! changed backend anyway (ideally 0).

use lb_common::hash::backend_key;
use lb_common::maglev::{MaglevBackend, build_table};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Timed builds per case unless the time budget runs out first.
const DEFAULT_REPEATS: usize = 15;
/// Time budget of one case's timed builds, in milliseconds.
const DEFAULT_MAX_MS: u64 = 2000;
/// Timed builds per case even over the budget (fewer only if `--repeats` asks so), so
/// a median and a spread exist.
const MIN_BUILDS: usize = 3;

#[global_allocator]
static HEAP: Counting = Counting;

/// Bytes currently allocated, and the most since [`Counting::reset_peak`].
static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting the bytes it hands out. Relaxed atomics suffice: the
/// program measures on one thread.
struct Counting;

impl Counting {
    fn grew(bytes: usize) {
        let now = HELD.fetch_add(bytes, Relaxed) + bytes;
        PEAK.fetch_max(now, Relaxed);
    }

    fn shrank(bytes: usize) {
        HELD.fetch_sub(bytes, Relaxed);
    }

    /// Starts a new peak from what is held now, and returns that.
    fn reset_peak() -> usize {
        let now = HELD.load(Relaxed);
        PEAK.store(now, Relaxed);
        now
    }

    fn peak() -> usize {
        PEAK.load(Relaxed)
    }
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counters only observe the sizes and never touch memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller meets `alloc`'s requirements (non-zero size), passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    // Forwarded rather than left to the default (alloc, then zero), so zeroed vectors
    // cost what they cost in the daemon (calloc).
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: our caller guarantees `ptr` came from this allocator (so from
        // `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        Self::shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: our caller guarantees `ptr` came from `System` with `layout` and that
        // `new_size` is valid for it.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            Self::shrank(layout.size());
            Self::grew(new_size);
        }
        p
    }
}

/// One line of output.
struct Case {
    backends: u32,
    ring_size: u32,
    build_ms: Vec<f64>,
    peak_heap_bytes: usize,
    table_bytes: usize,
    slots_min: usize,
    slots_max: usize,
    removed_slots: usize,
    moved_other_slots: usize,
}

impl Case {
    fn json(&self) -> String {
        let times: Vec<String> = self.build_ms.iter().map(|t| format!("{t:.4}")).collect();
        format!(
            "{{\"backends\":{},\"ring_size\":{},\"build_ms\":[{}],\"peak_heap_bytes\":{},\
             \"table_bytes\":{},\"slots_min\":{},\"slots_max\":{},\"removed_slots\":{},\
             \"moved_other_slots\":{}}}",
            self.backends,
            self.ring_size,
            times.join(","),
            self.peak_heap_bytes,
            self.table_bytes,
            self.slots_min,
            self.slots_max,
            self.removed_slots,
            self.moved_other_slots,
        )
    }
}

/// `n` backends of weight 1 at distinct addresses (198.18.0.1, 198.18.0.2, ... in the
/// benchmarking range), port 443, so their keys are as varied as real ones.
fn backends(n: u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|id| {
            let addr = u32::from_be_bytes([198, 18, 0, 0]) + id + 1;
            MaglevBackend {
                key: backend_key(&addr.to_be_bytes(), 443),
                weight: 1,
                id,
            }
        })
        .collect()
}

fn measure(n: u32, ring_size: u32, repeats: usize, budget: Duration) -> Case {
    let all = backends(n);

    // The untimed build: heap, balance, and the cache warm-up for the timed ones.
    let before = Counting::reset_peak();
    let table = build_table(&all, ring_size);
    let peak_heap_bytes = Counting::peak() - before;
    let table_bytes = std::mem::size_of_val(table.as_slice());
    let mut slots = vec![0usize; n as usize];
    for &id in &table {
        slots[id as usize] += 1;
    }

    let removed = n / 2;
    let rest: Vec<MaglevBackend> = all.iter().copied().filter(|b| b.id != removed).collect();
    let after = build_table(&rest, ring_size);
    let removed_slots = table.iter().filter(|&&id| id == removed).count();
    let moved_other_slots = table
        .iter()
        .zip(&after)
        .filter(|&(was, now)| *was != removed && was != now)
        .count();
    drop((table, after, rest));

    let mut build_ms = Vec::with_capacity(repeats);
    let started = Instant::now();
    while build_ms.len() < repeats && (build_ms.len() < MIN_BUILDS || started.elapsed() < budget) {
        let t = Instant::now();
        let table = build_table(black_box(&all), black_box(ring_size));
        let took = t.elapsed();
        black_box(&table);
        build_ms.push(took.as_secs_f64() * 1000.0);
    }

    Case {
        backends: n,
        ring_size,
        build_ms,
        peak_heap_bytes,
        table_bytes,
        slots_min: slots.iter().copied().min().unwrap_or(0),
        slots_max: slots.iter().copied().max().unwrap_or(0),
        removed_slots,
        moved_other_slots,
    }
}

/// `BACKENDS:RING`: at least one backend, a prime ring larger than the backend count
/// (what the daemon accepts).
fn parse_case(arg: &str) -> Result<(u32, u32), String> {
    let (n, ring) = arg
        .split_once(':')
        .ok_or_else(|| format!("{arg:?}: want BACKENDS:RING"))?;
    let n: u32 = n.parse().map_err(|e| format!("{arg:?}: backends: {e}"))?;
    let ring: u32 = ring.parse().map_err(|e| format!("{arg:?}: ring: {e}"))?;
    if n == 0 || ring <= n || !lb_common::maglev::is_prime(ring) {
        return Err(format!(
            "{arg:?}: want at least one backend and a prime ring larger than the backend count"
        ));
    }
    Ok((n, ring))
}

fn run() -> Result<(), String> {
    let mut repeats = DEFAULT_REPEATS;
    let mut budget = Duration::from_millis(DEFAULT_MAX_MS);
    let mut cases = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("{flag} wants a number"))
        };
        match arg.as_str() {
            "--repeats" => repeats = value("--repeats")?.max(1) as usize,
            "--max-ms" => budget = Duration::from_millis(value("--max-ms")?),
            _ => cases.push(parse_case(&arg)?),
        }
    }
    if cases.is_empty() {
        return Err("usage: maglev_cost [--repeats N] [--max-ms MS] BACKENDS:RING...".to_owned());
    }
    for (n, ring) in cases {
        println!("{}", measure(n, ring, repeats, budget).json());
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("maglev_cost: {e}");
        std::process::exit(2);
    }
}
