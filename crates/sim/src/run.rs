//! One run: the simulation of a seed, from setup to verdict.
//!
//! 1. Draw the [`Plan`]; make the users, sessions and group on a fresh
//!    in-memory engine (`setup.rs`).
//! 2. Build turmoil's simulation with the seed (its RNG decides latencies
//!    and losses, and seeds every host's tokio runtime), a fixed epoch,
//!    the server, one host per writer and reader, and the auditor.
//! 3. Step simulated time, applying the fault schedule until the chaos
//!    window ends; then heal every link and restart whatever is down.
//! 4. Let the writers write a little longer, then finish (each until its
//!    message in flight is acknowledged); wait for in-flight traffic to
//!    settle; have the auditor drain every log; wait until every reader's
//!    live log has caught up with its drained log.
//! 5. Check ([`crate::check`]) and return the report with a trace of
//!    everything observed, so two runs of a seed can be compared.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::check::{Report, check};
use crate::clients::{self, Handle, Phase, ReaderState, Shared, WriterState};
use crate::clock::EPOCH_MS;
use crate::observed::{LogEvent, Observed, Target, WriterRecord};
use crate::plan::{AUDITOR, Action, Plan, SERVER};
use crate::server;
use crate::setup;

/// Healthy writing after the faults are healed, before writers finish.
const TAIL: Duration = Duration::from_secs(1);
/// Longest wait for writers to finish once asked (liveness).
const FINISH_MAX: Duration = Duration::from_secs(60);
/// Time for held or slow traffic to arrive before the audit.
const SETTLE: Duration = Duration::from_secs(2);
/// Longest the audit may take.
const AUDIT_MAX: Duration = Duration::from_secs(60);
/// Longest wait for readers to catch up after the audit (liveness).
const CATCH_UP_MAX: Duration = Duration::from_secs(30);
/// Simulated time between two steps.
const TICK: Duration = Duration::from_millis(1);

/// The result of a run.
#[derive(Debug)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// What the seed meant.
    pub plan: Plan,
    /// The checker's verdict.
    pub report: Report,
    /// Everything observed, one line per fact: faults applied with their
    /// time, every send and acknowledgement, every log.
    pub trace: Vec<String>,
    /// Simulated time the run took.
    pub simulated: Duration,
}

impl Outcome {
    /// The first violation, if any.
    pub fn failure(&self) -> Option<String> {
        self.report.first()
    }

    /// A fingerprint of the trace (64-bit FNV-1a), to compare runs of a
    /// seed across processes: printed by the tests.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for line in &self.trace {
            for b in line.bytes().chain([b'\n']) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }
}

/// Runs the simulation of `seed` and checks it.
pub fn run(seed: u64) -> Outcome {
    let plan = Plan::from_seed(seed);
    let setup = setup::prepare(&plan);
    let shared = Handle(Arc::new(Mutex::new(initial_state(&plan, &setup))));

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS as u64))
        .tick_duration(TICK)
        .simulation_duration(Duration::from_secs(24 * 3600))
        .min_message_latency(plan.latency.0)
        .max_message_latency(plan.latency.1)
        .build();
    let (engine, core, store, hash) = (
        setup.engine.clone(),
        setup::core_config(&plan),
        setup::store_config(&plan),
        setup.dummy_hash.clone(),
    );
    sim.host(SERVER, move || {
        server::serve(engine.clone(), core.clone(), store.clone(), hash.clone())
    });
    for (i, name) in plan.writers.iter().enumerate() {
        let s = shared.clone();
        sim.host(name.as_str(), move || clients::writer(s.clone(), i));
    }
    for (i, name) in plan.readers.iter().enumerate() {
        let s = shared.clone();
        sim.host(name.as_str(), move || clients::reader(s.clone(), i));
    }
    let s = shared.clone();
    sim.host(AUDITOR, move || clients::auditor(s.clone()));

    let mut driver = Driver {
        sim,
        plan: &plan,
        shared: &shared,
        stopped: None,
        links: BTreeMap::new(),
    };
    driver.drive();
    let Driver { sim, stopped, .. } = driver;
    let simulated = sim.elapsed();
    drop(sim);

    let mut observed = shared.lock_owned();
    let mut trace = std::mem::take(&mut shared.0.lock().expect("state lock").journal);
    if let Some(e) = stopped {
        observed.client_errors.push(e);
    }
    let report = check(&observed);
    trace_observed(&mut trace, &observed);
    trace.push(format!("end {} ms", simulated.as_millis()));
    Outcome {
        seed,
        plan,
        report,
        trace,
        simulated,
    }
}

impl Handle {
    fn lock_owned(&self) -> Observed {
        self.0
            .lock()
            .expect("simulation state lock poisoned")
            .observed
            .clone()
    }
}

fn initial_state(plan: &Plan, setup: &setup::Setup) -> Shared {
    let user = |name: &str| setup.users[name].clone();
    // Each client's RNG: the seed and the host's place, mixed.
    let rng =
        |k: u64| StdRng::seed_from_u64(plan.seed ^ (k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let writers = plan
        .writers
        .iter()
        .enumerate()
        .map(|(i, name)| {
            // Round robin: the readers, the next writer, the group.
            let mut targets: Vec<Target> = plan.readers.iter().cloned().map(Target::User).collect();
            targets.push(Target::User(
                plan.writers[(i + 1) % plan.writers.len()].clone(),
            ));
            targets.push(Target::Conversation(setup.group.clone()));
            WriterState {
                user: name.clone(),
                token: user(name).token,
                targets,
                think_max: plan.think_max,
                rng: rng(i as u64),
            }
        })
        .collect();
    let readers = plan
        .readers
        .iter()
        .enumerate()
        .map(|(i, name)| ReaderState {
            user: name.clone(),
            token: user(name).token,
            key: Vec::new(),
            rng: rng(100 + i as u64),
        })
        .collect();
    let observed = Observed {
        users: setup.users.iter().map(|(n, u)| (n.clone(), u.id)).collect(),
        group: setup.group.clone(),
        group_members: plan.users().cloned().collect(),
        retain: plan.log_retain_events,
        writers: plan
            .writers
            .iter()
            .map(|w| WriterRecord {
                user: w.clone(),
                ..WriterRecord::default()
            })
            .collect(),
        live: plan
            .readers
            .iter()
            .map(|r| (r.clone(), Vec::new()))
            .collect(),
        ..Observed::default()
    };
    Shared {
        phase: Phase::Write,
        sync_limit: plan.sync_limit,
        observed,
        writers,
        readers,
        tokens: plan.users().map(|u| (u.clone(), user(u).token)).collect(),
        audited: false,
        journal: Vec::new(),
    }
}

/// Steps the simulation through the phases of a run.
struct Driver<'a> {
    sim: turmoil::Sim<'static>,
    plan: &'a Plan,
    shared: &'a Handle,
    /// Why the run stopped early, if it did.
    stopped: Option<String>,
    /// Client links to the server that are cut or held now.
    links: BTreeMap<String, Link>,
}

/// A fault on a link that lasts until it is ended.
#[derive(Debug, Clone, Copy)]
enum Link {
    /// Everything is dropped.
    Partitioned,
    /// Everything is held.
    Held,
}

impl Driver<'_> {
    fn drive(&mut self) {
        let plan = self.plan;
        let mut actions = plan.actions.iter().peekable();
        while self.sim.elapsed() < plan.chaos {
            while let Some((at, action)) = actions.next_if(|(at, _)| *at <= self.sim.elapsed()) {
                self.note(format!("{} ms: {action}", at.as_millis()));
                self.apply(action);
            }
            if !self.step() {
                return;
            }
        }
        self.heal();
        if !self.step_for(TAIL) {
            return;
        }
        self.set_phase(Phase::Finish);
        let finished = |s: &Shared| s.observed.writers.iter().all(|w| w.finished);
        if !self.step_until(FINISH_MAX, "every writer finishing", finished) {
            return;
        }
        if !self.step_for(SETTLE) {
            return;
        }
        self.set_phase(Phase::Audit);
        if !self.step_until(AUDIT_MAX, "the audit", |s| s.audited) {
            return;
        }
        // Caught up: the live log reached the drained log's newest event,
        // in the reader's own log and in the shared streams.
        let newest = |log: &[LogEvent]| {
            log.iter()
                .fold((0, 0), |(s, g), e| (s.max(e.seq), g.max(e.group_seq)))
        };
        let caught_up = |s: &Shared| {
            s.observed.live.iter().all(|(reader, live)| {
                s.observed.drained.get(reader).is_some_and(|d| {
                    let (ls, lg) = newest(live);
                    let (ds, dg) = newest(d);
                    ls >= ds && lg >= dg
                })
            })
        };
        self.step_until(
            CATCH_UP_MAX,
            "every reader catching up with its drained log",
            caught_up,
        );
    }

    fn apply(&mut self, action: &Action) {
        let host = |h: &String| h.clone();
        match action {
            Action::Crash(h) => self.crash(h),
            Action::Restart(h) => {
                if self.sim.is_host_running(h.as_str()) {
                    self.crash(h);
                }
                self.sim.bounce(h.as_str());
            }
            Action::Partition(h) => {
                self.links.insert(host(h), Link::Partitioned);
                self.sim.partition(h.as_str(), SERVER);
            }
            Action::Repair(h) => {
                self.links.remove(h);
                self.sim.repair(h.as_str(), SERVER);
            }
            Action::Hold(h) => {
                self.links.insert(host(h), Link::Held);
                self.sim.hold(h.as_str(), SERVER);
            }
            Action::Release(h) => {
                self.links.remove(h);
                self.sim.release(h.as_str(), SERVER);
            }
            Action::Loss(h, rate) => self.sim.set_link_fail_rate(h.as_str(), SERVER, *rate),
            Action::Latency(h, max) => {
                let max = if max.is_zero() {
                    self.plan.latency.1
                } else {
                    *max
                };
                self.sim
                    .set_link_max_message_latency(h.as_str(), SERVER, max);
            }
        }
    }

    /// Crashes a host as a power loss would: its links to the server (all
    /// of them, for the server) are cut while its software is torn down,
    /// so the FIN and RST segments its sockets would send as they are
    /// dropped never leave it, and what was in flight to or from it is
    /// lost. Peers find out by timeouts, or by the RST a restarted server
    /// answers their next segment with.
    ///
    /// Why not let the segments go: tokio drops a runtime's tasks in an
    /// order that depends on process-wide task ids, so the order in which
    /// those segments would be sent (and the network RNG draws they would
    /// take) would depend on what ran before in the process, and a seed
    /// would not replay.
    fn crash(&mut self, host: &str) {
        let peers: Vec<String> = if host == SERVER {
            self.plan
                .users()
                .cloned()
                .chain([AUDITOR.to_string()])
                .collect()
        } else {
            vec![host.to_string()]
        };
        for p in &peers {
            self.sim.partition(p.as_str(), SERVER);
        }
        self.sim.crash(host);
        for p in &peers {
            self.sim.repair(p.as_str(), SERVER);
            match self.links.get(p) {
                Some(Link::Partitioned) => self.sim.partition(p.as_str(), SERVER),
                Some(Link::Held) => self.sim.hold(p.as_str(), SERVER),
                None => {}
            }
        }
    }

    /// Ends every fault: links healthy (held messages delivered), normal
    /// latency, crashed hosts restarted.
    fn heal(&mut self) {
        self.note(format!("{} ms: heal", self.sim.elapsed().as_millis()));
        let plan = self.plan;
        self.links.clear();
        for h in plan.users() {
            let h = h.as_str();
            self.sim.repair(h, SERVER);
            self.sim.release(h, SERVER);
            self.sim.set_link_fail_rate(h, SERVER, 0.0);
            self.sim
                .set_link_max_message_latency(h, SERVER, plan.latency.1);
        }
        for h in plan.users().map(String::as_str).chain([SERVER]) {
            if !self.sim.is_host_running(h) {
                self.sim.bounce(h);
            }
        }
    }

    /// Adds a line to the run's journal, in order with the clients' lines.
    fn note(&self, line: String) {
        self.shared.0.lock().expect("state lock").journal.push(line);
    }

    fn set_phase(&mut self, phase: Phase) {
        self.note(format!("{} ms: {phase:?}", self.sim.elapsed().as_millis()));
        self.shared.0.lock().expect("state lock").phase = phase;
    }

    /// One step; false (and the reason kept) if the simulation failed.
    fn step(&mut self) -> bool {
        match self.sim.step() {
            Ok(_) => true,
            Err(e) => {
                self.stopped = Some(format!(
                    "the simulation stopped at {} ms: {e}",
                    self.sim.elapsed().as_millis()
                ));
                false
            }
        }
    }

    fn step_for(&mut self, d: Duration) -> bool {
        let end = self.sim.elapsed() + d;
        while self.sim.elapsed() < end {
            if !self.step() {
                return false;
            }
        }
        true
    }

    /// Steps until `done` holds, at most `max`; records a violation
    /// naming `what` if it never does.
    fn step_until(&mut self, max: Duration, what: &str, done: impl Fn(&Shared) -> bool) -> bool {
        let end = self.sim.elapsed() + max;
        loop {
            if done(&self.shared.0.lock().expect("state lock")) {
                return true;
            }
            if self.sim.elapsed() >= end {
                let stuck = format!("waited {} ms for {what} (liveness)", max.as_millis());
                self.note(stuck.clone());
                self.shared
                    .0
                    .lock()
                    .expect("state lock")
                    .observed
                    .client_errors
                    .push(stuck);
                return false;
            }
            if !self.step() {
                return false;
            }
        }
    }
}

/// What the run observed, one line per fact.
fn trace_observed(trace: &mut Vec<String>, o: &Observed) {
    for w in &o.writers {
        trace.push(format!("{} started {} times", w.user, w.starts));
        for s in &w.sent {
            let ack = s.ack.as_ref().map_or("unacknowledged".into(), |a| {
                format!(
                    "{}#{}{}",
                    a.conversation_id,
                    a.conv_seq,
                    if a.duplicate { " dup" } else { "" }
                )
            });
            trace.push(format!(
                "{} {} to {} after {} attempts: {ack}",
                w.user, s.client_msg_id, s.target, s.attempts
            ));
        }
    }
    for (which, logs) in [("live", &o.live), ("drained", &o.drained)] {
        for (user, log) in logs {
            for e in log {
                trace.push(format!("{which} {user}: {e}"));
            }
        }
    }
    for (user, at) in &o.resyncs {
        trace.push(format!("{user} resynced at {at:?}"));
    }
    for (conv, history) in &o.histories {
        for m in history {
            trace.push(format!("history {conv}: {m}"));
        }
    }
    for e in &o.client_errors {
        trace.push(format!("error: {e}"));
    }
}
