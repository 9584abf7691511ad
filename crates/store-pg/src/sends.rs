//! Sends, with group commit: each [`crate::PgStore`] runs one batcher task
//! that takes every send queued while its previous transaction was
//! committing (at most [`SEND_BATCH_MAX`]) and writes them all in one
//! transaction, with one statement per table for the whole batch, ending in
//! one COMMIT (one WAL flush); then it answers every waiter. A send's
//! answer still comes only after its COMMIT returned.
//!
//! One transaction per send capped a two-node cluster at about 1,100
//! messages/s (BENCHMARKS.md): each held its users' log rows locked until
//! its own WAL flush. A batch holds them for one flush for all its sends.
//!
//! # Sequencing and lock order
//!
//! The rule of the crate docs is unchanged: the batch gives its log events
//! their seqs at the end, locking the `logs` rows of every user it writes
//! to in ascending id order in one statement, and holds them until COMMIT.
//! Before that it takes each kind of lock for all its sends at once, in a
//! fixed order within the kind: the `sends` keys (ascending sender, client
//! id); the group rows `FOR SHARE` (ascending id); the conversation heads
//! (ascending id, one statement); the summaries of write-diffused
//! conversations (ascending user, conversation), then the senders'
//! summaries in large groups; the `stream` counter; the logs. Two batches
//! therefore never wait for each other in a cycle; deadlocks with other
//! writes (group changes, read marks) are broken by PostgreSQL and the
//! whole batch is retried, as any transaction.
//!
//! # A failing send does not fail the others
//!
//! Validate, and fall back on error. The only rules a send can break in
//! the store (its group exists, its sender may post there) are checked for
//! the whole batch right after the claims, before any other write; a
//! refused send's claim is deleted again in the same transaction, so it
//! leaves nothing, and the rest of the batch goes on. Any other error ends
//! the transaction (PostgreSQL aborts a transaction at its first failed
//! statement). If PostgreSQL rejected a statement, every send of the batch
//! is run again in a transaction of its own, so that only the culprit
//! fails; if the database is unreachable, all get that answer (one by one
//! they would only wait for it N times). Re-running is safe even when the
//! lost transaction might have committed: the claims make every send
//! idempotent. Savepoints per send were the alternative: two more round
//! trips per send in a transaction whose statements run one after
//! another, and a subtransaction id for each send, which past 64 in one
//! transaction overflows PostgreSQL's per-backend cache and slows every
//! other session's snapshots: batches of hundreds would do that each time.
//!
//! # Idempotency
//!
//! A send first claims `(sender, client_msg_id)` in `sends` (`ON CONFLICT
//! DO NOTHING`); a claim that loses to a committed row answers with that
//! row's outcome, one that meets another node's uncommitted claim waits for
//! its commit. Within a batch, only the first request with a key runs; a
//! second one (a client retrying while its first try is still queued)
//! goes to the next batch, where it finds the first's committed claim and
//! gets the same answer, flagged duplicate (or, if the first was refused,
//! runs on its own, as it would have after the first's rollback).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use pigeon_core::groups::{self, GroupAction};
use pigeon_core::store::{AppendMessage, AppendOutcome, Appended, GroupRecord, HookKind};
use pigeon_core::{CoreError, StoreError, UserId};
use pigeon_proto::v1::{Event, GroupRole, Message, event};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use crate::groups::{GROUP_COLUMNS, group_row};
use crate::tx::W;
use crate::{PG_SEND_BATCH_SENDS, Result, Shared, corrupt, i, u};

/// Most sends one transaction carries.
pub const SEND_BATCH_MAX: usize = 256;
/// Most sends waiting for the batcher; beyond, a send is refused as
/// overloaded (the client retries later).
pub const SEND_QUEUE_MAX: usize = 4096;
const _: () = assert!(SEND_BATCH_MAX <= SEND_QUEUE_MAX);

/// A send waiting for its batch.
pub(crate) struct Request {
    msg: AppendMessage,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// Starts the batcher of a store; it ends when the returned queue is
/// dropped (with the store) and what was queued is answered.
pub(crate) fn start(shared: Arc<Shared>) -> mpsc::Sender<Request> {
    let (queue, requests) = mpsc::channel(SEND_QUEUE_MAX);
    tokio::spawn(run(shared, requests));
    queue
}

/// Queues `msg` for the next batch and waits for its answer.
pub(crate) async fn append(
    queue: &mpsc::Sender<Request>,
    msg: AppendMessage,
) -> Result<AppendOutcome, StoreError> {
    let stopped = || StoreError::Unavailable("the send batcher stopped".into());
    let (reply, answer) = oneshot::channel();
    queue
        .try_send(Request { msg, reply })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => stopped(),
        })?;
    answer.await.map_err(|_| stopped())?
}

async fn run(shared: Arc<Shared>, mut requests: mpsc::Receiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(SEND_BATCH_MAX);
    loop {
        if batch.is_empty() {
            if requests.recv_many(&mut batch, SEND_BATCH_MAX).await == 0 {
                return;
            }
        } else {
            // Duplicates carried over: take whatever else is queued, but
            // do not wait for more.
            while batch.len() < SEND_BATCH_MAX {
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
/// next batch (second requests with a key already in this one).
async fn commit(shared: &Shared, batch: Vec<Request>) -> Vec<Request> {
    let mut seen: HashSet<(UserId, String)> = HashSet::with_capacity(batch.len());
    let (batch, later): (Vec<Request>, Vec<Request>) = batch
        .into_iter()
        .partition(|r| seen.insert((r.msg.sender_id, r.msg.client_msg_id.clone())));
    let msgs: Vec<&AppendMessage> = batch.iter().map(|r| &r.msg).collect();
    let results = match transaction(shared, &msgs).await {
        Ok(results) => results,
        Err(e) if msgs.len() > 1 && matches!(e, StoreError::Io(_) | StoreError::Corrupt(_)) => {
            tracing::warn!(error = %e, sends = msgs.len(), "a batch of sends failed; running each on its own");
            let mut results = Vec::with_capacity(msgs.len());
            for m in &msgs {
                let one = transaction(shared, std::slice::from_ref(m)).await;
                results.push(one.and_then(|mut r| r.pop().expect("one answer per send")));
            }
            results
        }
        Err(e) => msgs.iter().map(|_| Err(copy(&e))).collect(),
    };
    assert_eq!(results.len(), batch.len(), "one answer per send");
    for (r, result) in batch.into_iter().zip(results) {
        // The sender may have gone; what committed stays committed.
        let _ = r.reply.send(result);
    }
    later
}

/// Runs `msgs` (no two with one key) as one transaction, retried after a
/// deadlock; the outer error fails them all, the inner ones are refusals.
async fn transaction(
    shared: &Shared,
    msgs: &[&AppendMessage],
) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
    let results = write_tx!(shared, |w| w.send_batch(msgs).await?)?;
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    shared.stats.send_batches.fetch_add(1, relaxed);
    shared
        .stats
        .batched_sends
        .fetch_add(msgs.len() as u64, relaxed);
    metrics::histogram!(PG_SEND_BATCH_SENDS).record(msgs.len() as f64);
    Ok(results)
}

/// The same answer again, for every send of a batch that failed as a
/// whole (only the kinds of errors a whole transaction can end with).
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
    /// Stores a batch of sends (no two with one key); one answer per send,
    /// in order. See the module docs for the steps and their locks.
    pub(crate) async fn send_batch(
        &mut self,
        msgs: &[&AppendMessage],
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
            for (k, o) in self.store_sends(msgs, &live, &groups).await? {
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
        let mut counts = Vec::with_capacity(sent.len());
        for s in &sent {
            let before = self.pending_len();
            if let Fanout::Logs(users) = &s.fanout {
                for (user, _) in users {
                    self.push_event(*user, s.m.now_ms, event::Kind::Message(s.message.clone()));
                }
            }
            counts.push(self.pending_len() - before);
        }
        let mut appended = self.flush().await?.into_iter();
        Ok(sent
            .into_iter()
            .zip(counts)
            .map(|(s, n)| {
                let appended: Vec<Appended> = appended.by_ref().take(n).collect();
                let stream_notice = match s.fanout {
                    Fanout::Stream(_, members) => Some(members),
                    Fanout::Logs(_) => None,
                };
                let outcome = AppendOutcome {
                    conversation_id: s.message.conversation_id,
                    conv_seq: s.conv_seq,
                    sent_at_ms: s.m.now_ms,
                    duplicate: false,
                    appended,
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
