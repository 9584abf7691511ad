//! What one seed means: the users, the workload's shape and the fault
//! schedule, all drawn from the seed before the simulation starts. The
//! simulation's own random choices (latencies, losses, the writers'
//! pauses and back-offs) come from RNGs seeded from it too.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The server's host name on the simulated network.
pub const SERVER: &str = "server";
/// The host that drains every user's log at the end.
pub const AUDITOR: &str = "auditor";
/// The server's TCP port.
pub const PORT: u16 = 7700;
/// Most writers in a run.
pub const WRITERS_MAX: usize = 4;
/// Most readers in a run.
pub const READERS_MAX: usize = 3;
/// Faults per link (and crashes of the server) at most, in one run.
pub const FAULTS_PER_TARGET_MAX: usize = 4;

/// One change to the simulated world.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Stop the host's software at once, as `kill -9` would.
    Crash(String),
    /// Start the host's software again (after a crash: a restart; while it
    /// runs: a crash and an immediate restart).
    Restart(String),
    /// Drop everything between the host and the server, both ways.
    Partition(String),
    /// End a partition.
    Repair(String),
    /// Hold every message between the host and the server.
    Hold(String),
    /// Deliver what was held, all at once, and stop holding.
    Release(String),
    /// Each message on the host's link to the server breaks the link with
    /// this probability (turmoil's `fail_rate`: what is in flight is lost;
    /// TCP has no retransmission there, so such a connection stalls).
    Loss(String, f64),
    /// The longest latency on the host's link to the server (the shortest
    /// stays the run's): a jitter spike that reorders messages across
    /// connections.
    Latency(String, Duration),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Crash(h) => write!(f, "crash {h}"),
            Action::Restart(h) => write!(f, "restart {h}"),
            Action::Partition(h) => write!(f, "partition {h}"),
            Action::Repair(h) => write!(f, "repair {h}"),
            Action::Hold(h) => write!(f, "hold {h}"),
            Action::Release(h) => write!(f, "release {h}"),
            Action::Loss(h, r) => write!(f, "loss {h} {r:.3}"),
            Action::Latency(h, d) => write!(f, "latency {h} {}ms", d.as_millis()),
        }
    }
}

/// A run, as its seed defines it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The seed everything here was drawn from.
    pub seed: u64,
    /// Writer host and user names (`writer0`, `writer1`, ...).
    pub writers: Vec<String>,
    /// Reader host and user names (`reader0`, ...).
    pub readers: Vec<String>,
    /// Longest pause of a writer between two messages.
    pub think_max: Duration,
    /// Events a client asks for per sync.
    pub sync_limit: u32,
    /// The server's `group_large_threshold`: below the group's size, the
    /// group is read-diffused (shared stream), otherwise write-diffused.
    pub group_large_threshold: u32,
    /// The store's `seq_step` (how far persisted high-water marks run
    /// ahead): 1 persists a mark with every event, so restarts resume
    /// exactly; larger steps leave gaps after a crash.
    pub seq_step: u64,
    /// Shortest and longest message latency on every link.
    pub latency: (Duration, Duration),
    /// Faults happen before this; then every fault is healed.
    pub chaos: Duration,
    /// The fault schedule, by time from the start.
    pub actions: Vec<(Duration, Action)>,
    /// The store's `log_retain_events` (0 keeps every event): small, so
    /// that logs are trimmed under readers that fall behind, which must
    /// then resync.
    pub log_retain_events: u64,
}

/// Counts of the faults a plan schedules.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultCounts {
    /// Server crashes (each followed by a restart).
    pub server_crashes: usize,
    /// Client host crashes.
    pub client_crashes: usize,
    /// Partitions between a client and the server.
    pub partitions: usize,
    /// Held links.
    pub holds: usize,
    /// Windows of message loss.
    pub losses: usize,
    /// Latency spikes.
    pub latency_spikes: usize,
}

impl Plan {
    /// The plan of `seed`.
    pub fn from_seed(seed: u64) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let writers = (0..rng.random_range(2..=WRITERS_MAX))
            .map(|i| format!("writer{i}"))
            .collect::<Vec<_>>();
        let readers = (0..rng.random_range(1..=READERS_MAX))
            .map(|i| format!("reader{i}"))
            .collect::<Vec<_>>();
        let think_max = ms(rng.random_range(0..=40));
        let sync_limit = [4, 16, 256][rng.random_range(0..3)];
        let members = (writers.len() + readers.len()) as u32;
        let group_large_threshold = if rng.random_bool(0.5) {
            members - 1
        } else {
            500
        };
        let seq_step = [1, 3, 1000][rng.random_range(0..3)];
        let min = rng.random_range(0..=5);
        let latency = (ms(min), ms(min + rng.random_range(1..=40)));
        let chaos = ms(rng.random_range(5_000..=8_000));
        let mut actions = Vec::new();
        server_faults(&mut rng, chaos, &mut actions);
        for host in writers.iter().chain(&readers) {
            link_faults(&mut rng, host, chaos, &mut actions);
        }
        // Stable: actions at the same time keep the order they were drawn in.
        actions.sort_by_key(|(at, _)| *at);
        // Drawn last, so that every earlier draw of a seed stays as it was.
        let log_retain_events = if rng.random_bool(0.4) {
            rng.random_range(3..=30)
        } else {
            0
        };
        Plan {
            seed,
            writers,
            readers,
            think_max,
            sync_limit,
            group_large_threshold,
            seq_step,
            latency,
            chaos,
            actions,
            log_retain_events,
        }
    }

    /// Every user: the writers, then the readers.
    pub fn users(&self) -> impl Iterator<Item = &String> {
        self.writers.iter().chain(&self.readers)
    }

    /// What the schedule holds.
    pub fn fault_counts(&self) -> FaultCounts {
        let mut c = FaultCounts::default();
        for (_, a) in &self.actions {
            match a {
                Action::Crash(h) if h == SERVER => c.server_crashes += 1,
                Action::Crash(_) => c.client_crashes += 1,
                Action::Partition(_) => c.partitions += 1,
                Action::Hold(_) => c.holds += 1,
                Action::Loss(_, r) if *r > 0.0 => c.losses += 1,
                Action::Latency(..) => c.latency_spikes += 1,
                _ => {}
            }
        }
        c.latency_spikes /= 2; // each spike is set and then reset
        c
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Server crashes one after another: down for a while, or restarted at once.
fn server_faults(rng: &mut StdRng, chaos: Duration, out: &mut Vec<(Duration, Action)>) {
    let crashes = rng.random_range(0..=FAULTS_PER_TARGET_MAX);
    let mut at = ms(rng.random_range(300..=1_500));
    for _ in 0..crashes {
        if at >= chaos {
            break;
        }
        let down = if rng.random_bool(0.25) {
            Duration::ZERO
        } else {
            ms(rng.random_range(20..=1_500))
        };
        out.push((at, Action::Crash(SERVER.into())));
        out.push((at + down, Action::Restart(SERVER.into())));
        at += down + ms(rng.random_range(300..=2_500));
    }
}

/// Faults of one client host and its link to the server, one at a time.
fn link_faults(rng: &mut StdRng, host: &str, chaos: Duration, out: &mut Vec<(Duration, Action)>) {
    let faults = rng.random_range(0..=FAULTS_PER_TARGET_MAX);
    let mut at = ms(rng.random_range(0..=2_000));
    let h = || host.to_string();
    for _ in 0..faults {
        if at >= chaos {
            break;
        }
        let lasts = ms(rng.random_range(50..=2_500));
        let (start, end) = match rng.random_range(0..5) {
            0 => (Action::Partition(h()), Action::Repair(h())),
            1 => (Action::Hold(h()), Action::Release(h())),
            2 => (
                Action::Loss(h(), rng.random_range(0.005..0.05)),
                Action::Loss(h(), 0.0),
            ),
            3 => (
                Action::Latency(h(), ms(rng.random_range(100..=800))),
                Action::Latency(h(), Duration::ZERO),
            ),
            _ => (Action::Crash(h()), Action::Restart(h())),
        };
        out.push((at, start));
        out.push((at + lasts, end));
        at += lasts + ms(rng.random_range(100..=1_500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same seed gives the same plan, another seed another one, and
    /// every fault that starts is ended.
    #[test]
    fn plans_come_from_the_seed() {
        let a = Plan::from_seed(7);
        let b = Plan::from_seed(7);
        assert_eq!(a.actions, b.actions);
        assert_eq!(a.writers, b.writers);
        let differ = (0..20).any(|s| Plan::from_seed(s).actions != a.actions);
        assert!(differ);
        for seed in 0..50 {
            let p = Plan::from_seed(seed);
            let starts = p
                .actions
                .iter()
                .filter(|(_, a)| {
                    matches!(a, Action::Crash(_) | Action::Partition(_) | Action::Hold(_))
                })
                .count();
            let ends = p
                .actions
                .iter()
                .filter(|(_, a)| {
                    matches!(
                        a,
                        Action::Restart(_) | Action::Repair(_) | Action::Release(_)
                    )
                })
                .count();
            assert_eq!(starts, ends, "seed {seed}");
            assert!(p.actions.windows(2).all(|w| w[0].0 <= w[1].0));
        }
    }
}
