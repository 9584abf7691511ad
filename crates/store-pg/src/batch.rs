//! Group commit of sends and delivery receipts: each
//! [`crate::PgStore`] runs one batcher task that takes every job queued
//! while its previous transaction was committing (at most
//! [`BATCH_JOBS_MAX`]) and writes them all in one transaction, with one
//! statement per table for the whole batch, ending in one COMMIT (one WAL
//! flush); then it answers every waiter. An answer still comes only after
//! its COMMIT returned.
//!
//! One transaction per send capped a two-node cluster at about 1,100
//! messages/s (BENCHMARKS.md): each held its users' log rows locked until
//! its own WAL flush. A batch holds them for one flush for all its jobs.
//! Delivery receipts go the same way: a device records one for every push
//! it receives, and as transactions of their own they outnumbered the
//! batches of sends thirty to one, each waiting for the same log rows.
//!
//! # Sequencing and lock order
//!
//! The rule of the crate docs is unchanged: the batch gives its log events
//! (messages and receipts) their seqs at the end, locking the `logs` rows
//! of every user it writes to in ascending id order in one statement, and
//! holds them until COMMIT. Before that it takes each kind of lock for all
//! its jobs at once, in a fixed order within the kind: the delivered
//! positions (ascending conversation, user; those of large groups after
//! the others) and the large-group messages whose receipts it counts; the
//! `sends` keys (ascending sender, client id); the group rows `FOR SHARE`
//! (ascending id); the conversation heads (ascending id, one statement);
//! the summaries of write-diffused conversations (ascending user,
//! conversation), then the senders' summaries in large groups; the
//! `stream` counter; the logs. Two batches therefore do not wait for each
//! other in a cycle (but for a group turning large between their reads,
//! which PostgreSQL breaks); deadlocks with other writes (group changes,
//! read marks) are broken by PostgreSQL and the whole batch is retried,
//! as any transaction.
//!
//! # A failing job does not fail the others
//!
//! Validate, and fall back on error. The only rules a job can break in the
//! store are checked for the whole batch before it writes anything that
//! stays: a send's group must exist and let its sender post (checked right
//! after the claims; a refused send's claim is deleted again in the same
//! transaction, so it leaves nothing), the groups of a delivery record
//! must exist (checked first). Any other error ends the transaction
//! (PostgreSQL aborts a transaction at its first failed statement). If
//! PostgreSQL rejected a statement, every job of the batch is run again in
//! a transaction of its own, so that only the culprit fails; if the
//! database is unreachable, all get that answer (one by one they would
//! only wait for it N times). Re-running is safe even when the lost
//! transaction might have committed: claims make sends idempotent, and
//! positions only move forward. Savepoints per job were the alternative:
//! two more round trips per job in a transaction whose statements run one
//! after another, and a subtransaction id for each job, which past 64 in
//! one transaction overflows PostgreSQL's per-backend cache and slows every
//! other session's snapshots: batches of hundreds would do that each time.
//!
//! # Idempotency
//!
//! A send first claims `(sender, client_msg_id)` in `sends` (`ON CONFLICT
//! DO NOTHING`); a claim that loses to a committed row answers with that
//! row's outcome, one that meets another node's uncommitted claim waits for
//! its commit. Within a batch, only the first send with a key runs; a
//! second one (a client retrying while its first try is still queued)
//! goes to the next batch, where it finds the first's committed claim and
//! gets the same answer, flagged duplicate (or, if the first was refused,
//! runs on its own, as it would have after the first's rollback).
//!
//! Delivery records of one user and conversation in one batch are merged:
//! the position moves once, to the highest, and each sender gets one
//! receipt up to it (what the records one by one would have left, less
//! the intermediate receipts).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use pigeon_core::groups::{self, GroupAction};
use pigeon_core::store::{
    AppendMessage, AppendOutcome, Appended, Delivered, GroupRecord, HookKind,
};
use pigeon_core::{CoreError, StoreError, UserId};
use pigeon_proto::v1::{Event, GroupRole, Message, Receipt, ReceiptKind, event};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use crate::groups::{GROUP_COLUMNS, group_row};
use crate::tx::W;
use crate::{PG_BATCH_JOBS, Result, Shared, corrupt, i, refused, u};

/// Most jobs (sends, delivery records) one transaction carries.
pub const BATCH_JOBS_MAX: usize = 256;
/// Most jobs waiting for the batcher; beyond, a job is refused as
/// overloaded (a client retries its send later).
pub const BATCH_QUEUE_JOBS_MAX: usize = 4096;
const _: () = assert!(BATCH_JOBS_MAX <= BATCH_QUEUE_JOBS_MAX);

/// A write the batcher commits.
pub(crate) enum Job {
    /// A message to store.
    Send(AppendMessage),
    /// Messages a user's device received, for delivery receipts.
    Delivered {
        user: UserId,
        username: String,
        marks: Vec<Delivered>,
        now_ms: i64,
    },
}

/// What a job did.
pub(crate) enum Done {
    Sent(AppendOutcome),
    /// Receipts appended to senders' logs.
    Delivered(Vec<Appended>),
}

/// A job waiting for its batch.
pub(crate) struct Request {
    job: Job,
    reply: oneshot::Sender<Result<Done, StoreError>>,
}

/// Starts the batcher of a store; it ends when the returned queue is
/// dropped (with the store) and what was queued is answered.
pub(crate) fn start(shared: Arc<Shared>) -> mpsc::Sender<Request> {
    let (queue, requests) = mpsc::channel(BATCH_QUEUE_JOBS_MAX);
    tokio::spawn(run(shared, requests));
    queue
}

/// Queues `job` for the next batch and waits for what it did.
pub(crate) async fn submit(queue: &mpsc::Sender<Request>, job: Job) -> Result<Done, StoreError> {
    let stopped = || StoreError::Unavailable("the store's batcher stopped".into());
    let (reply, answer) = oneshot::channel();
    queue
        .try_send(Request { job, reply })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => stopped(),
        })?;
    answer.await.map_err(|_| stopped())?
}

async fn run(shared: Arc<Shared>, mut requests: mpsc::Receiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(BATCH_JOBS_MAX);
    loop {
        if batch.is_empty() {
            if requests.recv_many(&mut batch, BATCH_JOBS_MAX).await == 0 {
                return;
            }
        } else {
            // Duplicates carried over: take whatever else is queued, but
            // do not wait for more.
            while batch.len() < BATCH_JOBS_MAX {
                match requests.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
        }
        batch = commit(&shared, std::mem::take(&mut batch)).await;
    }
}

/// Commits one batch and answers it; returns the requests left for the
/// next batch (sends with a key already in this one).
async fn commit(shared: &Shared, batch: Vec<Request>) -> Vec<Request> {
    let mut seen: HashSet<(UserId, String)> = HashSet::with_capacity(batch.len());
    let (batch, later): (Vec<Request>, Vec<Request>) =
        batch.into_iter().partition(|r| match &r.job {
            Job::Send(m) => seen.insert((m.sender_id, m.client_msg_id.clone())),
            Job::Delivered { .. } => true,
        });
    let jobs: Vec<&Job> = batch.iter().map(|r| &r.job).collect();
    let results = match transaction(shared, &jobs).await {
        Ok(results) => results,
        Err(e) if jobs.len() > 1 && matches!(e, StoreError::Io(_) | StoreError::Corrupt(_)) => {
            tracing::warn!(error = %e, jobs = jobs.len(), "a batch failed; running each of its jobs on its own");
            let mut results = Vec::with_capacity(jobs.len());
            for job in &jobs {
                let one = transaction(shared, std::slice::from_ref(job)).await;
                results.push(one.and_then(|mut r| r.pop().expect("one answer per job")));
            }
            results
        }
        Err(e) => jobs.iter().map(|_| Err(copy(&e))).collect(),
    };
    assert_eq!(results.len(), batch.len(), "one answer per job");
    for (r, result) in batch.into_iter().zip(results) {
        // The caller may have gone; what committed stays committed.
        let _ = r.reply.send(result);
    }
    later
}

/// Runs `jobs` (no two sends with one key) as one transaction, retried
/// after a deadlock; the outer error fails them all, the inner ones are
/// refusals.
async fn transaction(
    shared: &Shared,
    jobs: &[&Job],
) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
    let results = write_tx!(shared, |w| w.batch(jobs).await?)?;
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    shared.stats.batches.fetch_add(1, relaxed);
    shared
        .stats
        .batched_jobs
        .fetch_add(jobs.len() as u64, relaxed);
    metrics::histogram!(PG_BATCH_JOBS).record(jobs.len() as f64);
    Ok(results)
}

/// The same answer again, for every job of a batch that failed as a whole
/// (only the kinds of errors a whole transaction can end with).
fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        StoreError::Failed(s) => StoreError::Failed(s.clone()),
        StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
        StoreError::Overloaded => StoreError::Overloaded,
        other => StoreError::Io(other.to_string()),
    }
}

/// A group of the batch, as read under its share lock.
struct GroupState {
    record: GroupRecord,
    /// Current members in id order, with their roles.
    members: Vec<(UserId, GroupRole)>,
    /// The same ids, for the notice of a large group.
    ids: Arc<[UserId]>,
}

/// Where a stored send's events go.
enum Fanout {
    /// These users' logs (each listed once), with the peer a new summary
    /// of theirs shows.
    Logs(Vec<(UserId, (UserId, String))>),
    /// A large group's stream; its members are told to sync.
    Stream(u64, Arc<[UserId]>),
}

/// A send of the batch being stored.
struct Sent<'m> {
    /// Its place in the batch.
    at: usize,
    m: &'m AppendMessage,
    conv_seq: u64,
    message: Message,
    bytes: Vec<u8>,
    fanout: Fanout,
}

impl W<'_> {
    /// Commits a batch's jobs (no two sends with one key): the delivery
    /// records, then the sends, then every log event in one flush. One
    /// answer per job, in order. See the module docs for the steps and
    /// their locks.
    pub(crate) async fn batch(&mut self, jobs: &[&Job]) -> Result<Vec<Result<Done, StoreError>>> {
        let mut out: Vec<Option<Result<Done, StoreError>>> = jobs.iter().map(|_| None).collect();
        // The job each queued log event belongs to, in queue order.
        let mut owners: Vec<usize> = Vec::new();
        let deliveries: Vec<usize> = (0..jobs.len())
            .filter(|&k| matches!(jobs[k], Job::Delivered { .. }))
            .collect();
        if !deliveries.is_empty() {
            for (k, r) in self.deliveries(jobs, &deliveries, &mut owners).await? {
                out[k] = Some(r.map(|()| Done::Delivered(Vec::new())));
            }
        }
        let (sends, msgs): (Vec<usize>, Vec<&AppendMessage>) = jobs
            .iter()
            .enumerate()
            .filter_map(|(k, j)| match j {
                Job::Send(m) => Some((k, m)),
                Job::Delivered { .. } => None,
            })
            .unzip();
        if !msgs.is_empty() {
            let mut send_owners = Vec::new();
            for (k, r) in self
                .sends(&msgs, &mut send_owners)
                .await?
                .into_iter()
                .enumerate()
            {
                out[sends[k]] = Some(r.map(Done::Sent));
            }
            owners.extend(send_owners.into_iter().map(|k| sends[k]));
        }
        let appended = self.flush().await?;
        assert_eq!(appended.len(), owners.len(), "every log event has its job");
        for (a, k) in appended.into_iter().zip(owners) {
            match &mut out[k] {
                Some(Ok(Done::Sent(o))) => o.appended.push(a),
                Some(Ok(Done::Delivered(v))) => v.push(a),
                _ => unreachable!("events only come from jobs that succeeded"),
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every job of a batch is answered"))
            .collect())
    }

    /// Stores sends (no two with one key); one answer per send, in order.
    /// Their log events are queued, not flushed; `owners` gets the index
    /// of the send of each.
    async fn sends(
        &mut self,
        msgs: &[&AppendMessage],
        owners: &mut Vec<usize>,
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>> {
        let mut out: Vec<Option<Result<AppendOutcome, StoreError>>> =
            msgs.iter().map(|_| None).collect();
        let claimed = self.claim(msgs).await?;
        let earlier: Vec<usize> = (0..msgs.len()).filter(|&k| !claimed[k]).collect();
        for (k, o) in self.first_outcomes(msgs, &earlier).await? {
            out[k] = Some(Ok(o));
        }
        let live: Vec<usize> = (0..msgs.len()).filter(|&k| claimed[k]).collect();
        let (groups, refusals) = self.check_groups(msgs, &live).await?;
        if !refusals.is_empty() {
            let refused: Vec<usize> = refusals.iter().map(|(k, _)| *k).collect();
            self.unclaim(msgs, &refused).await?;
        }
        for (k, e) in refusals {
            out[k] = Some(Err(StoreError::Refused(Box::new(e))));
        }
        let live: Vec<usize> = live.into_iter().filter(|&k| out[k].is_none()).collect();
        if !live.is_empty() {
            for (k, o) in self.store_sends(msgs, &live, &groups, owners).await? {
                out[k] = Some(Ok(o));
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every send of a batch is answered"))
            .collect())
    }

    /// Claims every send's key, in ascending (sender, client id) order;
    /// whether each one won its claim.
    async fn claim(&self, msgs: &[&AppendMessage]) -> Result<Vec<bool>> {
        let mut order: Vec<&AppendMessage> = msgs.to_vec();
        order.sort_unstable_by(|a, b| {
            (a.sender_id, &a.client_msg_id).cmp(&(b.sender_id, &b.client_msg_id))
        });
        let (senders, ids) = keys(&order);
        let rows = self
            .query(
                "INSERT INTO sends (sender_id, client_msg_id, conversation_id, conv_seq, sent_at_ms) \
                 SELECT t.s, t.c, '', 0, 0 \
                 FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS t(s, c, o) ORDER BY t.o \
                 ON CONFLICT DO NOTHING RETURNING sender_id, client_msg_id",
                &[&senders, &ids],
            )
            .await?;
        let won: HashSet<(UserId, &str)> = rows
            .iter()
            .map(|r| (u(r.get(0)), r.get::<_, &str>(1)))
            .collect();
        Ok(msgs
            .iter()
            .map(|m| won.contains(&(m.sender_id, m.client_msg_id.as_str())))
            .collect())
    }

    /// The committed outcomes of the sends at `which`, whose claims lost:
    /// stored before, answered as duplicates.
    async fn first_outcomes(
        &self,
        msgs: &[&AppendMessage],
        which: &[usize],
    ) -> Result<Vec<(usize, AppendOutcome)>> {
        if which.is_empty() {
            return Ok(Vec::new());
        }
        let chosen: Vec<&AppendMessage> = which.iter().map(|&k| msgs[k]).collect();
        let (senders, ids) = keys(&chosen);
        let rows = self
            .query(
                "SELECT s.sender_id, s.client_msg_id, s.conversation_id, s.conv_seq, s.sent_at_ms \
                 FROM sends s JOIN unnest($1::bigint[], $2::text[]) AS t(s, c) \
                     ON s.sender_id = t.s AND s.client_msg_id = t.c",
                &[&senders, &ids],
            )
            .await?;
        let found: HashMap<(UserId, &str), &tokio_postgres::Row> = rows
            .iter()
            .map(|r| ((u(r.get(0)), r.get::<_, &str>(1)), r))
            .collect();
        which
            .iter()
            .map(|&k| {
                let m = msgs[k];
                let r = found
                    .get(&(m.sender_id, m.client_msg_id.as_str()))
                    .ok_or_else(|| corrupt("sends", "a claimed send is not there"))?;
                Ok((
                    k,
                    AppendOutcome {
                        conversation_id: r.get(2),
                        conv_seq: u(r.get(3)),
                        sent_at_ms: r.get(4),
                        duplicate: true,
                        appended: Vec::new(),
                        stream_notice: None,
                    },
                ))
            })
            .collect()
    }

    /// Reads the groups of the group sends at `live` under a share lock
    /// (membership changes wait for this batch, and it sees the
    /// membership as of its commit), in ascending id order, with their
    /// members; and says which sends their group refuses.
    async fn check_groups(
        &self,
        msgs: &[&AppendMessage],
        live: &[usize],
    ) -> Result<(HashMap<u64, GroupState>, Vec<(usize, CoreError)>)> {
        let mut ids: Vec<i64> = live
            .iter()
            .map(|&k| msgs[k].group_id)
            .filter(|&g| g != 0)
            .map(i)
            .collect();
        if ids.is_empty() {
            return Ok((HashMap::new(), Vec::new()));
        }
        ids.sort_unstable();
        ids.dedup();
        let sql =
            format!("SELECT {GROUP_COLUMNS} FROM groups WHERE id = ANY($1) ORDER BY id FOR SHARE");
        let mut groups: HashMap<u64, GroupState> = self
            .query(&sql, &[&ids])
            .await?
            .iter()
            .map(|r| {
                let record = group_row(r);
                let state = GroupState {
                    record,
                    members: Vec::new(),
                    ids: Arc::from([]),
                };
                (state.record.id, state)
            })
            .collect();
        let rows = self
            .query(
                "SELECT group_id, user_id, role FROM group_members \
                 WHERE group_id = ANY($1) AND role <> 0 ORDER BY group_id, user_id",
                &[&ids],
            )
            .await?;
        for r in &rows {
            if let Some(g) = groups.get_mut(&u(r.get(0))) {
                let role = GroupRole::try_from(r.get::<_, i32>(2)).unwrap_or(GroupRole::None);
                g.members.push((u(r.get(1)), role));
            }
        }
        for g in groups.values_mut() {
            g.ids = g.members.iter().map(|(id, _)| *id).collect();
        }
        let mut refusals = Vec::new();
        for &k in live {
            let m = msgs[k];
            if m.group_id == 0 {
                continue;
            }
            let verdict = match groups.get(&m.group_id) {
                None => Err(CoreError::ConversationNotFound(groups::conversation_id(
                    m.group_id,
                ))),
                Some(g) => {
                    let role = g
                        .members
                        .binary_search_by_key(&m.sender_id, |(id, _)| *id)
                        .map_or(GroupRole::None, |n| g.members[n].1);
                    groups::check(
                        role,
                        GroupAction::Post,
                        &g.record.settings(),
                        g.record.dissolved,
                    )
                }
            };
            if let Err(e) = verdict {
                refusals.push((k, e));
            }
        }
        Ok((groups, refusals))
    }

    /// Deletes the claims of the sends at `which` (refused: they leave
    /// nothing).
    async fn unclaim(&self, msgs: &[&AppendMessage], which: &[usize]) -> Result<()> {
        let chosen: Vec<&AppendMessage> = which.iter().map(|&k| msgs[k]).collect();
        let (senders, ids) = keys(&chosen);
        self.exec(
            "DELETE FROM sends s USING unnest($1::bigint[], $2::text[]) AS t(s, c) \
             WHERE s.sender_id = t.s AND s.client_msg_id = t.c",
            &[&senders, &ids],
        )
        .await?;
        Ok(())
    }

    /// Stores the accepted sends at `live`: timeline positions, messages,
    /// send records, summaries, webhook deliveries, the stream and the
    /// logs, a statement or two per table for all of them.
    async fn store_sends(
        &mut self,
        msgs: &[&AppendMessage],
        live: &[usize],
        groups: &HashMap<u64, GroupState>,
        owners: &mut Vec<usize>,
    ) -> Result<Vec<(usize, AppendOutcome)>> {
        let seqs = self.conv_seqs(msgs, live).await?;
        let sent: Vec<Sent<'_>> = live
            .iter()
            .zip(seqs)
            .map(|(&at, conv_seq)| prepare(at, msgs[at], conv_seq, groups))
            .collect();
        // Rows nobody else can hold (new messages, new deliveries, our own
        // claims) go in one pipelined round trip with the summaries.
        tokio::try_join!(
            self.insert_messages(&sent),
            self.record_sends(&sent),
            self.enqueue_hooks(&sent),
            self.bump_summaries(&sent),
        )?;
        self.append_streams(&sent).await?;
        for s in &sent {
            if let Fanout::Logs(users) = &s.fanout {
                for (user, _) in users {
                    self.push_event(*user, s.m.now_ms, event::Kind::Message(s.message.clone()));
                    owners.push(s.at);
                }
            }
        }
        Ok(sent
            .into_iter()
            .map(|s| {
                let stream_notice = match s.fanout {
                    Fanout::Stream(_, members) => Some(members),
                    Fanout::Logs(_) => None,
                };
                let outcome = AppendOutcome {
                    conversation_id: s.message.conversation_id,
                    conv_seq: s.conv_seq,
                    sent_at_ms: s.m.now_ms,
                    duplicate: false,
                    // Filled in after the flush.
                    appended: Vec::new(),
                    stream_notice,
                };
                (s.at, outcome)
            })
            .collect())
    }

    /// Gives the sends at `live` their positions in their conversations:
    /// one statement bumps every conversation's head by its number of
    /// sends, in ascending id order, and holds those rows until commit (so
    /// timelines, like logs, commit in order). Positions follow the batch
    /// order within each conversation.
    async fn conv_seqs(&self, msgs: &[&AppendMessage], live: &[usize]) -> Result<Vec<u64>> {
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for &k in live {
            *counts.entry(msgs[k].conversation_id.as_str()).or_default() += 1;
        }
        let convs: Vec<&str> = counts.keys().copied().collect();
        let ns: Vec<i64> = counts.values().copied().collect();
        let rows = self
            .query(
                "INSERT INTO conversations (id, head) \
                 SELECT t.id, t.n FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS t(id, n, o) \
                 ORDER BY t.o \
                 ON CONFLICT (id) DO UPDATE SET head = conversations.head + EXCLUDED.head \
                 RETURNING id, head",
                &[&convs, &ns],
            )
            .await?;
        let mut next: HashMap<String, u64> = HashMap::with_capacity(rows.len());
        for r in &rows {
            let conv: String = r.get(0);
            let n = u(counts[conv.as_str()]);
            next.insert(conv, u(r.get(1)) - n);
        }
        live.iter()
            .map(|&k| {
                let seq = next
                    .get_mut(&msgs[k].conversation_id)
                    .ok_or_else(|| corrupt("conversations", "a head was not returned"))?;
                *seq += 1;
                Ok(*seq)
            })
            .collect()
    }

    async fn insert_messages(&self, sent: &[Sent<'_>]) -> Result<()> {
        let convs: Vec<&str> = sent.iter().map(|s| s.m.conversation_id.as_str()).collect();
        let seqs: Vec<i64> = sent.iter().map(|s| i(s.conv_seq)).collect();
        let senders: Vec<i64> = sent.iter().map(|s| i(s.m.sender_id)).collect();
        let bytes: Vec<&[u8]> = sent.iter().map(|s| s.bytes.as_slice()).collect();
        self.exec(
            "INSERT INTO messages (conversation_id, conv_seq, sender_id, message) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bytea[])",
            &[&convs, &seqs, &senders, &bytes],
        )
        .await?;
        Ok(())
    }

    /// Fills in the claims with where each send went, for its retries.
    async fn record_sends(&self, sent: &[Sent<'_>]) -> Result<()> {
        let chosen: Vec<&AppendMessage> = sent.iter().map(|s| s.m).collect();
        let (senders, ids) = keys(&chosen);
        let convs: Vec<&str> = sent.iter().map(|s| s.m.conversation_id.as_str()).collect();
        let seqs: Vec<i64> = sent.iter().map(|s| i(s.conv_seq)).collect();
        let times: Vec<i64> = sent.iter().map(|s| s.m.now_ms).collect();
        self.exec(
            "UPDATE sends s SET conversation_id = t.conv, conv_seq = t.seq, sent_at_ms = t.at \
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) \
                 AS t(s, c, conv, seq, at) \
             WHERE s.sender_id = t.s AND s.client_msg_id = t.c",
            &[&senders, &ids, &convs, &seqs, &times],
        )
        .await?;
        Ok(())
    }

    /// Queues the webhook deliveries of the stored sends: per endpoint,
    /// one `message.created`, and one `push.needed` per recipient (one for
    /// a whole large group, recipient 0).
    async fn enqueue_hooks(&self, sent: &[Sent<'_>]) -> Result<()> {
        let (mut endpoints, mut kinds, mut convs, mut seqs, mut recipients, mut times) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for s in sent.iter().filter(|s| !s.m.hooks.is_empty()) {
            let others: Vec<UserId> = match &s.fanout {
                Fanout::Stream(..) => vec![0],
                Fanout::Logs(users) => users
                    .iter()
                    .map(|(id, _)| *id)
                    .filter(|&x| x != s.m.sender_id)
                    .collect(),
            };
            for hook in &s.m.hooks {
                let targets: &[UserId] = match hook.kind {
                    HookKind::MessageCreated => &[0],
                    HookKind::PushNeeded => &others,
                };
                for &recipient in targets {
                    endpoints.push(hook.endpoint.as_str());
                    kinds.push(hook.kind.as_str());
                    convs.push(s.m.conversation_id.as_str());
                    seqs.push(i(s.conv_seq));
                    recipients.push(i(recipient));
                    times.push(s.m.now_ms);
                }
            }
        }
        if endpoints.is_empty() {
            return Ok(());
        }
        self.exec(
            "INSERT INTO outbox (endpoint, kind, conversation_id, conv_seq, recipient, \
                 created_at_ms, next_attempt_ms) \
             SELECT t.e, t.k, t.c, t.s, t.r, t.at, t.at \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[]) \
                 WITH ORDINALITY AS t(e, k, c, s, r, at, o) ORDER BY t.o",
            &[&endpoints, &kinds, &convs, &seqs, &recipients, &times],
        )
        .await?;
        Ok(())
    }

    /// Updates the summaries. Write-diffused conversations: per user and
    /// conversation, the batch's last message; unread grows by the others'
    /// messages, or, if the user sent one of the batch, restarts after
    /// their last (they have read up to it): what the sends one by one
    /// would have left. One row per user and conversation, in ascending
    /// order. Then, in large groups, each sender's read position moves to
    /// their last message (the group's summary is read from the timeline).
    async fn bump_summaries(&self, sent: &[Sent<'_>]) -> Result<()> {
        struct Summary<'a> {
            peer: &'a (UserId, String),
            /// 1-based index of the last message among `bytes`.
            message: i64,
            last: u64,
            unread: i64,
            /// The user's own last message here (0: none in the batch).
            own: u64,
        }
        let mut rows: BTreeMap<(UserId, &str), Summary<'_>> = BTreeMap::new();
        let mut own_large: BTreeMap<(UserId, &str), u64> = BTreeMap::new();
        let mut bytes: Vec<&[u8]> = Vec::new();
        for s in sent {
            let conv = s.m.conversation_id.as_str();
            let users = match &s.fanout {
                Fanout::Logs(users) => users,
                Fanout::Stream(..) => {
                    let seq = own_large.entry((s.m.sender_id, conv)).or_default();
                    *seq = (*seq).max(s.conv_seq);
                    continue;
                }
            };
            bytes.push(&s.bytes);
            for (user, peer) in users {
                let e = rows.entry((*user, conv)).or_insert(Summary {
                    peer,
                    message: 0,
                    last: 0,
                    unread: 0,
                    own: 0,
                });
                e.message = bytes.len() as i64;
                e.last = s.conv_seq;
                if *user == s.m.sender_id {
                    (e.own, e.unread) = (s.conv_seq, 0);
                } else {
                    e.unread += 1;
                }
            }
        }
        if !rows.is_empty() {
            let users: Vec<i64> = rows.keys().map(|(x, _)| i(*x)).collect();
            let convs: Vec<&str> = rows.keys().map(|(_, c)| *c).collect();
            let peers: Vec<i64> = rows.values().map(|s| i(s.peer.0)).collect();
            let peer_names: Vec<&str> = rows.values().map(|s| s.peer.1.as_str()).collect();
            let messages: Vec<i64> = rows.values().map(|s| s.message).collect();
            let lasts: Vec<i64> = rows.values().map(|s| i(s.last)).collect();
            let unread: Vec<i64> = rows.values().map(|s| s.unread).collect();
            let own: Vec<i64> = rows.values().map(|s| i(s.own)).collect();
            // read_up_to > 0 in the new row means "the user sent one":
            // their unread count and position restart from it.
            self.exec(
                "INSERT INTO conv_states AS s (user_id, conversation_id, peer_user_id, \
                     peer_username, last_message, last_conv_seq, unread_count, read_up_to) \
                 SELECT t.u, t.c, t.p, t.pn, m.b, t.last, t.unread, t.own \
                 FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], \
                         $6::bigint[], $7::bigint[], $8::bigint[]) \
                         WITH ORDINALITY AS t(u, c, p, pn, mi, last, unread, own, o) \
                     JOIN unnest($9::bytea[]) WITH ORDINALITY AS m(b, k) ON m.k = t.mi \
                 ORDER BY t.o \
                 ON CONFLICT (user_id, conversation_id) DO UPDATE SET \
                     last_message = EXCLUDED.last_message, last_conv_seq = EXCLUDED.last_conv_seq, \
                     unread_count = CASE WHEN EXCLUDED.read_up_to > 0 THEN EXCLUDED.unread_count \
                         ELSE s.unread_count + EXCLUDED.unread_count END, \
                     read_up_to = CASE WHEN EXCLUDED.read_up_to > 0 THEN EXCLUDED.read_up_to \
                         ELSE s.read_up_to END",
                &[
                    &users,
                    &convs,
                    &peers,
                    &peer_names,
                    &messages,
                    &lasts,
                    &unread,
                    &own,
                    &bytes,
                ],
            )
            .await?;
        }
        if !own_large.is_empty() {
            let users: Vec<i64> = own_large.keys().map(|(x, _)| i(*x)).collect();
            let convs: Vec<&str> = own_large.keys().map(|(_, c)| *c).collect();
            let seqs: Vec<i64> = own_large.values().map(|&s| i(s)).collect();
            self.exec(
                "INSERT INTO conv_states (user_id, conversation_id, read_up_to) \
                 SELECT t.u, t.c, t.r \
                 FROM unnest($1::bigint[], $2::text[], $3::bigint[]) WITH ORDINALITY AS t(u, c, r, o) \
                 ORDER BY t.o \
                 ON CONFLICT (user_id, conversation_id) DO UPDATE \
                 SET read_up_to = GREATEST(conv_states.read_up_to, EXCLUDED.read_up_to)",
                &[&users, &convs, &seqs],
            )
            .await?;
        }
        Ok(())
    }

    /// Appends the large-group sends to the shared stream, in batch order:
    /// one bump of the stream counter (held until commit, so positions
    /// become visible in order) and one insert.
    async fn append_streams(&self, sent: &[Sent<'_>]) -> Result<()> {
        let streamed: Vec<&Sent<'_>> = sent
            .iter()
            .filter(|s| matches!(s.fanout, Fanout::Stream(..)))
            .collect();
        if streamed.is_empty() {
            return Ok(());
        }
        let n = streamed.len() as i64;
        let head = u(self
            .one(
                "UPDATE counters SET value = value + $1 WHERE name = 'stream' RETURNING value",
                &[&n],
            )
            .await?
            .get(0));
        let first = head - streamed.len() as u64 + 1;
        let mut groups = Vec::with_capacity(streamed.len());
        let mut positions = Vec::with_capacity(streamed.len());
        let mut events = Vec::with_capacity(streamed.len());
        for (n, s) in streamed.iter().enumerate() {
            let Fanout::Stream(group, _) = &s.fanout else {
                unreachable!("filtered above")
            };
            let position = first + n as u64;
            let event = Event {
                seq: 0,
                created_at_ms: s.m.now_ms,
                kind: Some(event::Kind::Message(s.message.clone())),
                group_seq: position,
                ..Event::default()
            };
            groups.push(i(*group));
            positions.push(i(position));
            events.push(event.encode_to_vec());
        }
        self.exec(
            "INSERT INTO stream_events (group_id, seq, event) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
            &[&groups, &positions, &events],
        )
        .await?;
        Ok(())
    }
}

/// The delivery records of one user and write-diffused conversation in a
/// batch, merged.
struct Merged<'a> {
    /// The highest position received.
    up_to: u64,
    /// Who sent what was received, each once.
    senders: Vec<UserId>,
    username: &'a str,
    now_ms: i64,
    /// The job whose answer carries the receipts (the last one).
    job: usize,
}

impl W<'_> {
    /// Records the delivery jobs at `which`; one answer per job (refused
    /// when a group it names does not exist, and then it writes nothing).
    /// Receipts are queued, not flushed; `owners` gets the job of each.
    async fn deliveries(
        &mut self,
        jobs: &[&Job],
        which: &[usize],
        owners: &mut Vec<usize>,
    ) -> Result<Vec<(usize, Result<(), StoreError>)>> {
        let records: Vec<(usize, UserId, &str, &[Delivered], i64)> = which
            .iter()
            .filter_map(|&k| match jobs[k] {
                Job::Delivered {
                    user,
                    username,
                    marks,
                    now_ms,
                } => Some((k, *user, username.as_str(), marks.as_slice(), *now_ms)),
                Job::Send(_) => None,
            })
            .collect();
        let mut ids: Vec<i64> = records
            .iter()
            .flat_map(|r| r.3.iter())
            .filter_map(|d| groups::parse_group_id(&d.conversation_id))
            .map(i)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let found: HashMap<u64, GroupRecord> = if ids.is_empty() {
            HashMap::new()
        } else {
            let sql = format!("SELECT {GROUP_COLUMNS} FROM groups WHERE id = ANY($1)");
            self.query(&sql, &[&ids])
                .await?
                .iter()
                .map(|r| {
                    let g = group_row(r);
                    (g.id, g)
                })
                .collect()
        };
        let mut answers = Vec::with_capacity(records.len());
        // Write-diffused conversations, merged per (conversation, user).
        let mut small: BTreeMap<(&str, UserId), Merged<'_>> = BTreeMap::new();
        let mut large: Vec<(&str, UserId, usize, &Delivered, i64)> = Vec::new();
        for &(k, user, username, marks, now_ms) in &records {
            // The first missing group in conversation order, as when the
            // marks are recorded one by one.
            let mut sorted: Vec<&Delivered> = marks.iter().collect();
            sorted.sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
            let missing = sorted.iter().find_map(|d| {
                groups::parse_group_id(&d.conversation_id)
                    .filter(|g| !found.contains_key(g))
                    .map(groups::conversation_id)
            });
            if let Some(conv) = missing {
                answers.push((
                    k,
                    Err(refused(CoreError::ConversationNotFound(conv)).into()),
                ));
                continue;
            }
            answers.push((k, Ok(())));
            for d in sorted {
                let conv = d.conversation_id.as_str();
                let g = groups::parse_group_id(conv).and_then(|g| found.get(&g));
                if g.is_some_and(|g| g.large) {
                    large.push((conv, user, k, d, now_ms));
                    continue;
                }
                let e = small.entry((conv, user)).or_insert(Merged {
                    up_to: 0,
                    senders: Vec::new(),
                    username,
                    now_ms,
                    job: k,
                });
                e.up_to = e.up_to.max(d.up_to);
                for s in &d.senders {
                    if !e.senders.contains(s) {
                        e.senders.push(*s);
                    }
                }
                (e.now_ms, e.job) = (e.now_ms.max(now_ms), k);
            }
        }
        if !small.is_empty() {
            self.deliver_small(&small, owners).await?;
        }
        large.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (conv, user, k, d, now_ms) in large {
            let g = groups::parse_group_id(conv)
                .and_then(|g| found.get(&g))
                .expect("checked above");
            let before = self.pending_len();
            self.deliver_in_large_group(g, user, d, now_ms).await?;
            owners.extend(std::iter::repeat_n(k, self.pending_len() - before));
        }
        Ok(answers)
    }

    /// Moves the delivered positions of write-diffused conversations, one
    /// statement for all, in ascending (conversation, user) order; each
    /// position that moved tells the senders with a receipt.
    async fn deliver_small(
        &mut self,
        merged: &BTreeMap<(&str, UserId), Merged<'_>>,
        owners: &mut Vec<usize>,
    ) -> Result<()> {
        let convs: Vec<&str> = merged.keys().map(|(c, _)| *c).collect();
        let users: Vec<i64> = merged.keys().map(|(_, x)| i(*x)).collect();
        let up_to: Vec<i64> = merged.values().map(|m| i(m.up_to)).collect();
        let rows = self
            .query(
                "INSERT INTO positions AS p (conversation_id, user_id, delivered, read) \
                 SELECT t.c, t.u, t.d, 0 \
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[]) WITH ORDINALITY AS t(c, u, d, o) \
                 ORDER BY t.o \
                 ON CONFLICT (conversation_id, user_id) DO UPDATE SET delivered = EXCLUDED.delivered \
                 WHERE p.delivered < EXCLUDED.delivered \
                 RETURNING conversation_id, user_id",
                &[&convs, &users, &up_to],
            )
            .await?;
        let moved: HashSet<(String, UserId)> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), u(r.get(1))))
            .collect();
        for ((conv, user), m) in merged {
            if !moved.contains(&(conv.to_string(), *user)) {
                continue;
            }
            let receipt = Receipt {
                conversation_id: conv.to_string(),
                user_id: *user,
                username: m.username.to_string(),
                kind: ReceiptKind::Delivered as i32,
                up_to: m.up_to,
            };
            for &s in m.senders.iter().filter(|&&s| s != *user) {
                self.push_event(s, m.now_ms, event::Kind::Receipt(receipt.clone()));
                owners.push(m.job);
            }
        }
        Ok(())
    }
}

/// The message a send stores and where it goes.
fn prepare<'m>(
    at: usize,
    m: &'m AppendMessage,
    conv_seq: u64,
    groups: &HashMap<u64, GroupState>,
) -> Sent<'m> {
    let message = Message {
        conversation_id: m.conversation_id.clone(),
        conv_seq,
        sender_id: m.sender_id,
        sender_username: m.sender_username.clone(),
        sender_device_id: m.sender_device_id,
        client_msg_id: m.client_msg_id.clone(),
        sent_at_ms: m.now_ms,
        content: Some(m.content.clone()),
        recalled: false,
        edited_at_ms: 0,
    };
    let fanout = match groups.get(&m.group_id) {
        Some(g) if g.record.large => Fanout::Stream(g.record.id, g.ids.clone()),
        Some(g) => Fanout::Logs(
            g.members
                .iter()
                .map(|(id, _)| (*id, (0, String::new())))
                .collect(),
        ),
        None => {
            // Each participant's summary shows the other one (a note to
            // oneself shows oneself); a user listed twice is written once.
            let mut users: Vec<(UserId, (UserId, String))> = Vec::new();
            for (x, _) in &m.participants {
                if users.iter().any(|(y, _)| y == x) {
                    continue;
                }
                let peer = m
                    .participants
                    .iter()
                    .find(|(id, _)| id != x)
                    .cloned()
                    .unwrap_or_else(|| (*x, m.sender_username.clone()));
                users.push((*x, peer));
            }
            Fanout::Logs(users)
        }
    };
    Sent {
        at,
        m,
        conv_seq,
        bytes: message.encode_to_vec(),
        message,
        fanout,
    }
}

/// The (sender, client id) columns of `msgs`.
fn keys<'m>(msgs: &[&'m AppendMessage]) -> (Vec<i64>, Vec<&'m str>) {
    (
        msgs.iter().map(|m| i(m.sender_id)).collect(),
        msgs.iter().map(|m| m.client_msg_id.as_str()).collect(),
    )
}
