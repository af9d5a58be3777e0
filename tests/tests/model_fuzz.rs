//! The XDP program against its reference model (`lb_common::model`): seeded random
//! packet sequences through both, compared after every packet (`lb_tests::differential`).
//! `cargo xtask test` runs 10⁵ packets; `LB_FUZZ_PACKETS=10000000` (and `LB_FUZZ_SEED`)
//! runs more by hand. A divergence fails with a minimal sequence that reproduces it.

use lb_tests::differential::Differential;
use lb_tests::test_run::stay_on_this_cpu;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: not a number")),
        Err(_) => default,
    }
}

#[test]
fn the_program_does_what_the_model_does() {
    stay_on_this_cpu();
    let packets = env_u64("LB_FUZZ_PACKETS", 100_000);
    let seed = env_u64("LB_FUZZ_SEED", 0x5eed_0f1b);
    let mut fuzz = Differential::new();
    let started = std::time::Instant::now();
    if let Err(r) = fuzz.run(seed, packets) {
        panic!("seed {seed:#x}: the program and the model diverge\n{r}");
    }
    eprintln!(
        "{} packets, seed {seed:#x}, no divergence, {:.1} s; flows aged by {:?} ms; \
         by outcome: {:?}",
        fuzz.packets,
        started.elapsed().as_secs_f64(),
        fuzz.ages_ms,
        fuzz.outcomes
    );
}
