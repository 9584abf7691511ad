//! What only a shared database has to get right: several nodes (several
//! `PgStore`s on one PostgreSQL) writing the same logs, timelines and
//! groups at once; retries of one send racing on two nodes; nodes starting
//! (and migrating) at once; data surviving a node and a server restart.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use pigeon_core::Store;
use pigeon_core::store::{LogFrom, UserRecord};
use pigeon_proto::v1::{Event, event};
use pigeon_store_contract::groups::{group_limits, group_msg, make_group, users};
use pigeon_store_contract::msg;
use pigeon_store_pg::{MIGRATIONS, PgConfig, PgStore};
use pigeon_testkit::PgServer;

async fn server() -> PgServer {
    tokio::task::spawn_blocking(PgServer::start)
        .await
        .unwrap()
        .expect("starting PostgreSQL")
}

async fn node(url: &str) -> Arc<dyn Store> {
    let config = PgConfig {
        pool_size: 4,
        log_retain_events: 0,
    };
    Arc::new(PgStore::connect(url, config).await.unwrap())
}

/// (conversation, conv_seq) of message events.
fn messages(events: &[Event]) -> Vec<(String, u64)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::Message(m)) => Some((m.conversation_id.clone(), m.conv_seq)),
            _ => None,
        })
        .collect()
}

/// Follows one user's log and streams as a device would while writes are
/// in flight, asserting every log read continues exactly at the next seq.
async fn follow(store: Arc<dyn Store>, user: u64, done: Arc<AtomicBool>) -> Vec<(String, u64)> {
    let (mut after, mut position, mut seen) = (0u64, 0u64, Vec::new());
    loop {
        let finished = done.load(Ordering::SeqCst);
        loop {
            let r = store
                .read_log(user, LogFrom::After(after), 50, 1 << 20)
                .await
                .unwrap();
            for e in &r.events {
                assert_eq!(e.seq, after + 1, "user {user}: a gap or reorder in the log");
                after = e.seq;
            }
            seen.extend(messages(&r.events));
            if !r.has_more {
                break;
            }
        }
        loop {
            let r = store
                .read_streams(user, position, 50, 1 << 20)
                .await
                .unwrap();
            assert!(r.position >= position);
            position = r.position;
            seen.extend(messages(&r.events));
            if !r.has_more {
                break;
            }
        }
        if finished {
            return seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Two nodes send direct, small-group and large-group messages among the
/// same four users at once while followers read; checks every log is
/// gapless and strictly ordered as read live, nothing read live was
/// skipped or repeated (the live view equals the final one), and every
/// timeline is gapless.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_writing_at_once_keep_every_log_gapless_and_ordered() {
    let pg = server().await;
    let url = pg.create_database().unwrap();
    let (a, b) = (node(&url).await, node(&url).await);
    let u: Vec<UserRecord> = users(&a, &["u0", "u1", "u2", "u3"]).await;
    let all: Vec<&UserRecord> = u.iter().collect();
    let small = make_group(&a, all[0], &all[1..], group_limits(100)).await;
    let large = make_group(&b, all[0], &all[1..], group_limits(2)).await;

    let done = Arc::new(AtomicBool::new(false));
    let followers: Vec<_> = u
        .iter()
        .map(|x| tokio::spawn(follow(b.clone(), x.id, done.clone())))
        .collect();
    const PER_TASK: usize = 30;
    let mut writers = Vec::new();
    for (n, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        for t in 0..4usize {
            let store = store.clone();
            let u = u.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let from = &u[(t + i) % 4];
                    let to = &u[(t + i + 1) % 4];
                    let id = format!("n{n}-t{t}-{i}");
                    let m = match i % 3 {
                        0 => msg(
                            (from.id, &from.username),
                            (to.id, &to.username),
                            &id,
                            "d",
                            1,
                        ),
                        1 => group_msg(from, small, &id, "s"),
                        _ => group_msg(from, large, &id, "l"),
                    };
                    store.append_message(m).await.unwrap();
                }
            }));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let mut live = HashMap::new();
    for (x, f) in u.iter().zip(followers) {
        live.insert(x.id, f.await.unwrap());
    }

    let total = 2 * 4 * PER_TASK;
    let mut timelines: HashMap<String, BTreeSet<u64>> = HashMap::new();
    for x in &u {
        let log = a
            .read_log(x.id, LogFrom::Oldest, 100_000, 1 << 30)
            .await
            .unwrap()
            .events;
        assert!(
            log.iter().enumerate().all(|(k, e)| e.seq == k as u64 + 1),
            "gapless from 1"
        );
        assert_eq!(a.log_head(x.id).await.unwrap(), log.len() as u64);
        let mut last = a
            .read_streams(x.id, 0, 100_000, 1 << 30)
            .await
            .unwrap()
            .events;
        let mut finals = messages(&log);
        finals.append(&mut messages(&last));
        last.clear();
        let live = &live[&x.id];
        let unique: BTreeSet<_> = live.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            live.len(),
            "user {}: a message read twice",
            x.id
        );
        assert_eq!(
            unique,
            finals.iter().cloned().collect::<BTreeSet<_>>(),
            "user {}: the live view skipped something",
            x.id
        );
        for (conv, seq) in finals {
            timelines.entry(conv).or_default().insert(seq);
        }
    }
    let stored: usize = timelines.values().map(|s| s.len()).sum();
    assert_eq!(stored, total, "every send stored once");
    for (conv, seqs) in &timelines {
        assert!(
            seqs.iter().enumerate().all(|(k, s)| *s == k as u64 + 1),
            "{conv}: timeline not gapless: {seqs:?}"
        );
    }
}

/// Two nodes each take hundreds of concurrent sends (direct, small and
/// large group, some refused), every one sent three times at once (twice
/// through its node, so that retries meet in one batch, and once through
/// the other node) while followers read live: checks sends were batched,
/// each of the three got the same position and exactly one stored it, the
/// refused ones stored nothing and failed nothing else, every log is
/// gapless and strictly ordered as read live, and every timeline is
/// gapless with each accepted send once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_sends_from_two_nodes_stay_gapless_ordered_and_idempotent() {
    let pg = server().await;
    let url = pg.create_database().unwrap();
    let config = || PgConfig {
        pool_size: 4,
        log_retain_events: 0,
    };
    let pa = Arc::new(PgStore::connect(&url, config()).await.unwrap());
    let pb = Arc::new(PgStore::connect(&url, config()).await.unwrap());
    let (a, b): (Arc<dyn Store>, Arc<dyn Store>) = (pa.clone(), pb.clone());
    let names = ["u0", "u1", "u2", "u3", "u4", "u5", "outsider"];
    let u: Vec<UserRecord> = users(&a, &names).await;
    let members: Vec<&UserRecord> = u[1..6].iter().collect();
    let small = make_group(&a, &u[0], &members, group_limits(100)).await;
    let large = make_group(&b, &u[0], &members, group_limits(2)).await;
    let outsider = u[6].clone();

    let done = Arc::new(AtomicBool::new(false));
    let followers: Vec<_> = u[..6]
        .iter()
        .map(|x| tokio::spawn(follow(a.clone(), x.id, done.clone())))
        .collect();
    const TASKS: usize = 32;
    const PER_TASK: usize = 8;
    let mut writers = Vec::new();
    for (n, (here, there)) in [(a.clone(), b.clone()), (b.clone(), a.clone())]
        .into_iter()
        .enumerate()
    {
        for t in 0..TASKS {
            let (here, there, u) = (here.clone(), there.clone(), u.clone());
            let outsider = outsider.clone();
            writers.push(tokio::spawn(async move {
                let mut accepted = 0;
                for i in 0..PER_TASK {
                    let id = format!("n{n}-t{t}-{i}");
                    let (from, to) = (&u[(t + i) % 6], &u[(t + i + 1) % 6]);
                    let m = match (t + i) % 4 {
                        0 | 1 => msg(
                            (from.id, &from.username),
                            (to.id, &to.username),
                            &id,
                            "d",
                            1,
                        ),
                        2 => group_msg(from, small, &id, "s"),
                        _ => group_msg(from, large, &id, "l"),
                    };
                    if i == PER_TASK - 1 && t % 4 == 0 {
                        // Not a member: refused, alone.
                        let no = group_msg(&outsider, small, &format!("{id}-x"), "no");
                        let (x, y) =
                            tokio::join!(here.append_message(no), here.append_message(m.clone()));
                        assert!(
                            matches!(x, Err(pigeon_core::StoreError::Refused(_))),
                            "{x:?}"
                        );
                        assert!(!y.unwrap().duplicate);
                        accepted += 1;
                        continue;
                    }
                    let (x, y, z) = tokio::join!(
                        here.append_message(m.clone()),
                        here.append_message(m.clone()),
                        there.append_message(m),
                    );
                    let all = [x.unwrap(), y.unwrap(), z.unwrap()];
                    assert!(
                        all.iter().all(|o| (o.conversation_id.as_str(), o.conv_seq)
                            == (all[0].conversation_id.as_str(), all[0].conv_seq)),
                        "{id}: every retry answered with the same position"
                    );
                    assert_eq!(
                        all.iter().filter(|o| !o.duplicate).count(),
                        1,
                        "{id}: stored exactly once"
                    );
                    accepted += 1;
                }
                accepted
            }));
        }
    }
    let mut accepted = 0;
    for w in writers {
        accepted += w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let mut live = HashMap::new();
    for (x, f) in u.iter().zip(followers) {
        live.insert(x.id, f.await.unwrap());
    }
    for p in [&pa, &pb] {
        let s = p.stats();
        let (batches, sends) = (
            s.batches.load(Ordering::Relaxed),
            s.batched_jobs.load(Ordering::Relaxed),
        );
        assert!(batches < sends, "sends were batched: {sends} in {batches}");
    }

    let mut timelines: HashMap<String, BTreeSet<u64>> = HashMap::new();
    for x in &u[..6] {
        let log = b
            .read_log(x.id, LogFrom::Oldest, 100_000, 1 << 30)
            .await
            .unwrap()
            .events;
        assert!(
            log.iter().enumerate().all(|(k, e)| e.seq == k as u64 + 1),
            "user {}: gapless from 1",
            x.id
        );
        let stream = b
            .read_streams(x.id, 0, 100_000, 1 << 30)
            .await
            .unwrap()
            .events;
        let mut finals = messages(&log);
        finals.extend(messages(&stream));
        let unique: BTreeSet<_> = finals.iter().cloned().collect();
        assert_eq!(unique.len(), finals.len(), "user {}: a message twice", x.id);
        assert_eq!(
            live[&x.id].iter().cloned().collect::<BTreeSet<_>>(),
            unique,
            "user {}: the live view differs",
            x.id
        );
        for (conv, seq) in finals {
            timelines.entry(conv).or_default().insert(seq);
        }
    }
    let stored: usize = timelines.values().map(|s| s.len()).sum();
    assert_eq!(stored, accepted, "every accepted send stored once");
    for (conv, seqs) in &timelines {
        assert!(
            seqs.iter().enumerate().all(|(k, s)| *s == k as u64 + 1),
            "{conv}: timeline not gapless: {seqs:?}"
        );
    }
    assert!(
        b.read_log(outsider.id, LogFrom::Oldest, 10, 1 << 20)
            .await
            .unwrap()
            .events
            .is_empty(),
        "a refused send leaves nothing"
    );
    let again = a
        .append_message(group_msg(&outsider, small, "n0-t0-7-x", "no"))
        .await;
    assert!(
        matches!(again, Err(pigeon_core::StoreError::Refused(_))),
        "not even its claim: a retry is refused again, not a duplicate: {again:?}"
    );
}

/// A device records a delivery for every message it receives, many at
/// once and through two nodes, with one record naming a group that does
/// not exist among them: that one is refused alone, and each sender's log
/// holds receipts with strictly growing positions ending at the last
/// message (merged records never move a position back or skip the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_delivery_records_merge_and_only_move_forward() {
    use pigeon_core::store::Delivered;
    let pg = server().await;
    let url = pg.create_database().unwrap();
    let (a, b) = (node(&url).await, node(&url).await);
    let u = users(&a, &["r", "s0", "s1", "s2"]).await;
    let r = &u[0];
    let mut sent: Vec<(u64, String, u64)> = Vec::new();
    for k in 0..20 {
        let s = &u[1 + k % 3];
        let out = a
            .append_message(msg(
                (s.id, &s.username),
                (r.id, "r"),
                &format!("m{k}"),
                "x",
                1,
            ))
            .await
            .unwrap();
        sent.push((s.id, out.conversation_id, out.conv_seq));
    }
    let records = sent.iter().enumerate().map(|(k, (sender, conv, seq))| {
        let store = if k % 2 == 0 { a.clone() } else { b.clone() };
        let mark = Delivered {
            conversation_id: conv.clone(),
            up_to: *seq,
            senders: vec![*sender],
            conv_seqs: vec![*seq],
        };
        async move { store.record_delivered(r.id, "r", vec![mark], 5).await }
    });
    let bogus = Delivered {
        conversation_id: "g:999".into(),
        up_to: 1,
        senders: vec![u[1].id],
        conv_seqs: vec![1],
    };
    let (results, refused) = tokio::join!(
        futures_util::future::join_all(records),
        b.record_delivered(r.id, "r", vec![bogus], 5)
    );
    assert!(
        matches!(refused, Err(pigeon_core::StoreError::Refused(_))),
        "{refused:?}"
    );
    for res in results {
        res.unwrap();
    }
    for s in &u[1..] {
        let last = sent
            .iter()
            .filter(|(x, _, _)| *x == s.id)
            .map(|(_, _, seq)| *seq)
            .max()
            .unwrap();
        let receipts: Vec<u64> = a
            .read_log(s.id, LogFrom::Oldest, 1000, 1 << 24)
            .await
            .unwrap()
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(event::Kind::Receipt(x)) => Some(x.up_to),
                _ => None,
            })
            .collect();
        assert!(
            receipts.windows(2).all(|w| w[0] < w[1]),
            "{}: receipts only move forward: {receipts:?}",
            s.username
        );
        assert_eq!(receipts.last(), Some(&last), "{}", s.username);
    }
}

/// A send PostgreSQL itself rejects (a client id with a NUL byte, which
/// no TEXT column takes) queued with many others: it fails alone, every
/// other send of its batch is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_the_database_rejects_fails_alone() {
    let pg = server().await;
    let url = pg.create_database().unwrap();
    let store = node(&url).await;
    let u = users(&store, &["alice", "carol"]).await;
    let (x, y) = ((u[0].id, "alice"), (u[1].id, "carol"));
    for round in 0..3 {
        let sends = (0..20).map(|i| {
            let id = if i == 10 {
                format!("bad\0{round}")
            } else {
                format!("ok-{round}-{i}")
            };
            store.append_message(msg(x, y, &id, "x", 1))
        });
        let results = futures_util::future::join_all(sends).await;
        for (i, r) in results.iter().enumerate() {
            match (i, r) {
                (10, Err(pigeon_core::StoreError::Io(_))) => {}
                (10, other) => panic!("the bad send: {other:?}"),
                (_, r) => assert!(!r.as_ref().unwrap().duplicate),
            }
        }
    }
    let log = store
        .read_log(y.0, LogFrom::Oldest, 1000, 1 << 24)
        .await
        .unwrap()
        .events;
    assert_eq!(messages(&log).len(), 3 * 19);
}

/// Sends the same client message id through two nodes at once, many
/// times: exactly one of each pair stores, both answer with the same
/// position, and the recipient's log holds each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_racing_on_two_nodes_store_once() {
    let pg = server().await;
    let url = pg.create_database().unwrap();
    let (a, b) = (node(&url).await, node(&url).await);
    let u = users(&a, &["alice", "carol"]).await;
    let (x, y) = (&u[0], &u[1]);
    const SENDS: usize = 40;
    for i in 0..SENDS {
        let m = msg(
            (x.id, "alice"),
            (y.id, "carol"),
            &format!("r{i}"),
            "once",
            1,
        );
        let (one, two) = tokio::join!(a.append_message(m.clone()), b.append_message(m));
        let (one, two) = (one.unwrap(), two.unwrap());
        assert_eq!(one.conv_seq, two.conv_seq);
        assert!(one.duplicate != two.duplicate, "exactly one stored");
    }
    let log = b
        .read_log(y.id, LogFrom::Oldest, 1000, 1 << 24)
        .await
        .unwrap()
        .events;
    assert_eq!(messages(&log).len(), SENDS);
}

/// Webhook deliveries claimed at once by two nodes go to one of them each;
/// a claimed delivery nobody finished is claimable again after its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_delivery_is_claimed_by_one_node() {
    use pigeon_core::store::{HookKind, HookTarget};
    let pg = server().await;
    let url = pg.create_database().unwrap();
    let (a, b) = (node(&url).await, node(&url).await);
    let u = users(&a, &["alice", "carol"]).await;
    const MESSAGES: usize = 30;
    for i in 0..MESSAGES {
        let mut m = msg(
            (u[0].id, "alice"),
            (u[1].id, "carol"),
            &format!("h{i}"),
            "x",
            1000,
        );
        m.hooks = vec![HookTarget {
            endpoint: "http://bot".into(),
            kind: HookKind::MessageCreated,
        }];
        a.append_message(m).await.unwrap();
    }
    let (one, two) = tokio::join!(
        a.claim_deliveries(2000, 60_000, 20),
        b.claim_deliveries(2000, 60_000, 20)
    );
    let (one, two) = (one.unwrap(), two.unwrap());
    assert_eq!(
        one.len() + two.len(),
        MESSAGES,
        "every due delivery claimed"
    );
    let ids: BTreeSet<u64> = one.iter().chain(&two).map(|d| d.id).collect();
    assert_eq!(ids.len(), MESSAGES, "and none by both nodes");
    assert!(
        a.claim_deliveries(2000, 60_000, 50)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    // One finished; the others are due again once the lease has run out.
    a.delivery_attempted(one[0].id, Ok(()), None).await.unwrap();
    let again = b.claim_deliveries(62_001, 60_000, 50).await.unwrap();
    assert_eq!(again.len(), MESSAGES - 1);
}

/// Starts four nodes on a fresh database at once: all come up, each
/// migration is recorded once, and running the migrations again applies
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_are_idempotent_with_concurrent_starts() {
    let pg = server().await;
    let url = pg.create_database().unwrap();
    let starts = (0..4).map(|_| PgStore::connect(&url, PgConfig::default()));
    for s in futures_util::future::join_all(starts).await {
        s.unwrap();
    }
    let db = url.rsplit('/').next().unwrap();
    let rows = pg
        .psql(
            db,
            "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version",
        )
        .unwrap();
    let expected: String = MIGRATIONS
        .iter()
        .map(|(v, _, _)| format!("{v}|1\n"))
        .collect();
    assert_eq!(rows, expected);
    let config: tokio_postgres::Config = url.parse().unwrap();
    assert!(
        pigeon_store_pg::migrate::run(&config)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Writes through one node, stops it and restarts PostgreSQL, and checks a
/// new node finds accounts, logs and send records, and continues the seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_node_and_a_server_restart() {
    let mut pg = server().await;
    let url = pg.create_database().unwrap();
    let first = PgStore::connect(&url, PgConfig::default()).await.unwrap();
    let a = first.create_user("alice", "h", 1).await.unwrap();
    let c = first.create_user("carol", "h", 1).await.unwrap();
    let sent = first
        .append_message(msg((a.id, "alice"), (c.id, "carol"), "m0", "kept", 1))
        .await
        .unwrap();
    let secret = first.secret("k").await.unwrap();
    first.shutdown();
    drop(first);
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart().unwrap();
        pg
    })
    .await
    .unwrap();
    let second = PgStore::connect(&url, PgConfig::default()).await.unwrap();
    assert_eq!(second.user_by_name("carol").await.unwrap(), Some(c.clone()));
    assert_eq!(second.secret("k").await.unwrap(), secret);
    let log = second
        .read_log(c.id, LogFrom::Oldest, 10, 1 << 20)
        .await
        .unwrap()
        .events;
    assert_eq!(
        messages(&log),
        vec![(sent.conversation_id.clone(), sent.conv_seq)]
    );
    let again = second
        .append_message(msg((a.id, "alice"), (c.id, "carol"), "m0", "retry", 2))
        .await
        .unwrap();
    assert!(again.duplicate && again.conv_seq == sent.conv_seq);
    let next = second
        .append_message(msg((a.id, "alice"), (c.id, "carol"), "m1", "new", 3))
        .await
        .unwrap();
    let mine = next.appended.iter().find(|x| x.user_id == c.id).unwrap();
    assert_eq!(mine.prev_seq, log[0].seq);
    second.shutdown();
    drop(pg);
}
