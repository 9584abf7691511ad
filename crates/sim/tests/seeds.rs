//! The deterministic simulation in CI: a fixed list of seeds, each checked
//! for the crash test's invariants, and one seed run twice to show that a
//! seed replays exactly.
//!
//! `PIGEON_SIM_SEED=N` runs only seed N (a failure prints the command);
//! `PIGEON_SIM_SEEDS=K` runs K random seeds instead of the fixed list.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use pigeon_sim::plan::FaultCounts;
use pigeon_sim::{Plan, deterministic, run};

/// The seeds CI runs. Together they schedule server crashes, client
/// crashes, partitions, held links, loss and latency spikes (checked by
/// `fixed_seeds_cover_every_fault`), within about a minute in a debug
/// build on two cores.
const CI_SEEDS: &[u64] = &[
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
];

/// The seed whose two runs must agree line for line.
const REPLAY_SEED: u64 = 3;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")),
    )
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = env_u64("PIGEON_SIM_SEED") {
        return vec![seed];
    }
    if let Some(k) = env_u64("PIGEON_SIM_SEEDS") {
        // Random seeds from the process's hash keys: different every time,
        // and each is printed, so a failing one can be replayed.
        use std::hash::{BuildHasher, RandomState};
        let state = RandomState::new();
        return (0..k).map(|i| state.hash_one(i)).collect();
    }
    CI_SEEDS.to_vec()
}

fn replay_hint(seed: u64) -> String {
    format!("replay with PIGEON_SIM_SEED={seed} cargo nextest run -p pigeon-sim")
}

/// Runs every seed and fails, naming each failing seed and how to replay
/// it, if any run breaks an invariant (or panics).
#[test]
fn seeds_hold_the_invariants() {
    if !deterministic() {
        eprintln!(
            "warning: built without --cfg tokio_unstable (RUSTFLAGS replaces .cargo/config.toml): \
             seeds will not replay exactly"
        );
    }
    let mut failures = Vec::new();
    for seed in seeds() {
        let started = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| run(seed))) {
            Ok(outcome) => {
                println!(
                    "seed {seed}: trace {:016x}, {} simulated ms in {} ms; {:?}, retain {}; {}",
                    outcome.digest(),
                    outcome.simulated.as_millis(),
                    started.elapsed().as_millis(),
                    outcome.plan.fault_counts(),
                    outcome.plan.log_retain_events,
                    outcome.report
                );
                if let Some(violation) = outcome.failure() {
                    let line = format!("seed {seed} failed: {violation}; {}", replay_hint(seed));
                    eprintln!("{line}");
                    failures.push(line);
                }
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let line = format!("seed {seed} failed: panic: {what}; {}", replay_hint(seed));
                eprintln!("{line}");
                failures.push(line);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same seed twice gives the same trace: every fault at the same
/// simulated time, every send with the same attempts and acknowledgement,
/// every log event for event.
#[test]
fn a_seed_replays_exactly() {
    assert!(
        deterministic(),
        "build with --cfg tokio_unstable (set in .cargo/config.toml; a RUSTFLAGS variable replaces it)"
    );
    let seed = env_u64("PIGEON_SIM_SEED").unwrap_or(REPLAY_SEED);
    let a = run(seed);
    let b = run(seed);
    assert!(a.trace.len() > 100, "a trivial trace: {:?}", a.trace);
    if let Some(i) = a.trace.iter().zip(&b.trace).position(|(x, y)| x != y) {
        let context = a.trace[i.saturating_sub(8)..i].join("\n    ");
        panic!(
            "seed {seed} diverged at trace line {i}, after\n    {context}\n  first run:  {}\n  second run: {}",
            a.trace[i], b.trace[i]
        );
    }
    assert_eq!(
        a.trace.len(),
        b.trace.len(),
        "seed {seed}: traces differ in length"
    );
}

/// The fixed seeds exercise every kind of fault.
#[test]
fn fixed_seeds_cover_every_fault() {
    let mut total = FaultCounts::default();
    for &seed in CI_SEEDS {
        let c = Plan::from_seed(seed).fault_counts();
        total.server_crashes += c.server_crashes;
        total.client_crashes += c.client_crashes;
        total.partitions += c.partitions;
        total.holds += c.holds;
        total.losses += c.losses;
        total.latency_spikes += c.latency_spikes;
    }
    println!("{total:?}");
    let retained = CI_SEEDS
        .iter()
        .filter(|&&s| Plan::from_seed(s).log_retain_events > 0)
        .count();
    assert!(retained >= 3, "{retained} seeds with a retention");
    assert!(total.server_crashes >= 3, "{total:?}");
    assert!(total.client_crashes >= 1, "{total:?}");
    assert!(total.partitions >= 2, "{total:?}");
    assert!(total.holds >= 1, "{total:?}");
    assert!(total.losses >= 1, "{total:?}");
    assert!(total.latency_spikes >= 1, "{total:?}");
}
