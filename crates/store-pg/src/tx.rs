//! [`W`]: one write transaction, with the log appends it makes buffered
//! until [`W::flush`], which allocates their seqs.
//!
//! Lock order, so that writers rarely deadlock (PostgreSQL breaks the rare
//! cycle and the transaction is retried): the `sends` key of a send; the
//! group row (`FOR UPDATE` by group changes, `FOR SHARE` by sends and
//! message changes); the conversation's `head`; message, summary and
//! position rows; the `stream` counter; then, last, the `logs` rows of
//! every user written to, in ascending id order in one statement. (Only a
//! batch of sends (`batch.rs`, which has its own order for the kinds
//! before) writes both the stream and logs; nothing takes the stream after
//! logs.) A `logs` row is locked only at the end of the transaction and
//! held until its commit, which keeps each log's commit order equal to its
//! seq order (see the crate docs).

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use pigeon_core::UserId;
use pigeon_core::store::{Appended, trim_due};
use pigeon_proto::v1::{Event, Message, event};
use prost::Message as _;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::{Error, Result, corrupt, i, u};

/// Most log entries deleted by one trim step (trimming continues on later
/// writes to the same log).
pub const TRIM_DELETES_PER_TX_MAX: u64 = 4096;

pub(crate) type Params<'p> = [&'p (dyn ToSql + Sync)];

/// A write transaction in progress.
pub(crate) struct W<'t> {
    pub(crate) tx: &'t Transaction<'t>,
    retain: u64,
    /// Log events not yet given a seq: (user, created_at_ms, kind).
    pending: Vec<(UserId, i64, event::Kind)>,
}

impl<'t> W<'t> {
    pub(crate) fn new(tx: &'t Transaction<'t>, retain: u64) -> W<'t> {
        W {
            tx,
            retain,
            pending: Vec::new(),
        }
    }

    /// Every appended event was given its seq before the commit.
    pub(crate) fn assert_flushed(&self) {
        assert!(
            self.pending.is_empty(),
            "log events appended but never flushed"
        );
    }

    pub(crate) async fn query(&self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>> {
        let stmt = self.tx.prepare_cached(sql).await?;
        Ok(self.tx.query(&stmt, params).await?)
    }

    pub(crate) async fn opt(&self, sql: &str, params: &Params<'_>) -> Result<Option<Row>> {
        let stmt = self.tx.prepare_cached(sql).await?;
        Ok(self.tx.query_opt(&stmt, params).await?)
    }

    pub(crate) async fn one(&self, sql: &str, params: &Params<'_>) -> Result<Row> {
        let stmt = self.tx.prepare_cached(sql).await?;
        Ok(self.tx.query_one(&stmt, params).await?)
    }

    pub(crate) async fn exec(&self, sql: &str, params: &Params<'_>) -> Result<u64> {
        let stmt = self.tx.prepare_cached(sql).await?;
        Ok(self.tx.execute(&stmt, params).await?)
    }

    /// Events queued and not yet flushed.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Queues an event for `user`'s log; it gets its seq at [`W::flush`].
    pub(crate) fn push_event(&mut self, user: UserId, now_ms: i64, kind: event::Kind) {
        self.pending.push((user, now_ms, kind));
    }

    /// Gives every queued event its seq and writes it: locks the logs of
    /// all users concerned in ascending id order in one statement, bumping
    /// each `head` by its number of events; then trims logs grown past the
    /// retention. Returns one [`Appended`] per event, in the order they
    /// were queued, each with the seq before it.
    pub(crate) async fn flush(&mut self) -> Result<Vec<Appended>> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let pending = std::mem::take(&mut self.pending);
        let mut counts: HashMap<UserId, i64> = HashMap::new();
        for (user, _, _) in &pending {
            *counts.entry(*user).or_default() += 1;
        }
        let mut users: Vec<UserId> = counts.keys().copied().collect();
        users.sort_unstable();
        let ids: Vec<i64> = users.iter().map(|&x| i(x)).collect();
        let ns: Vec<i64> = users.iter().map(|x| counts[x]).collect();
        let rows = self
            .query(
                "INSERT INTO logs (user_id, head) \
                 SELECT t.user_id, t.n FROM unnest($1::bigint[], $2::bigint[]) AS t(user_id, n) \
                 ORDER BY t.user_id \
                 ON CONFLICT (user_id) DO UPDATE SET head = logs.head + EXCLUDED.head \
                 RETURNING user_id, head, trimmed_through",
                &[&ids, &ns],
            )
            .await?;
        // The seq before each user's first new event, and trim points.
        let mut next: HashMap<UserId, u64> = HashMap::with_capacity(rows.len());
        let mut trims = Vec::new();
        for r in &rows {
            let user = u(r.get(0));
            let head = u(r.get(1));
            let trimmed = u(r.get(2));
            let n = u(counts[&user]);
            next.insert(user, head - n);
            if trim_due(head, trimmed, self.retain) {
                let through = (head - self.retain).min(trimmed + TRIM_DELETES_PER_TX_MAX);
                trims.push((user, trimmed, through));
            }
        }
        let mut out = Vec::with_capacity(pending.len());
        let (mut ev_users, mut ev_seqs, mut ev_bytes) = (
            Vec::with_capacity(pending.len()),
            Vec::with_capacity(pending.len()),
            Vec::with_capacity(pending.len()),
        );
        for (user, now_ms, kind) in pending {
            let prev = next
                .get_mut(&user)
                .ok_or_else(|| corrupt("logs", "a log row was not returned"))?;
            let prev_seq = *prev;
            let seq = prev_seq + 1;
            *prev = seq;
            let event = Event {
                seq,
                created_at_ms: now_ms,
                kind: Some(kind),
                group_seq: 0,
                ..Event::default()
            };
            ev_users.push(i(user));
            ev_seqs.push(i(seq));
            ev_bytes.push(event.encode_to_vec());
            out.push(Appended {
                user_id: user,
                prev_seq,
                events: vec![event],
            });
        }
        self.exec(
            "INSERT INTO log_events (user_id, seq, event) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
            &[&ev_users, &ev_seqs, &ev_bytes],
        )
        .await?;
        for (user, from, through) in trims {
            // We hold the log's row lock, so no writer races the trim; the
            // new trim point commits with the deletions, and readers check
            // it after reading (see `reads::read_log`).
            self.exec(
                "DELETE FROM log_events WHERE user_id = $1 AND seq > $2 AND seq <= $3",
                &[&i(user), &i(from), &i(through)],
            )
            .await?;
            self.exec(
                "UPDATE logs SET trimmed_through = $2 WHERE user_id = $1",
                &[&i(user), &i(through)],
            )
            .await?;
        }
        Ok(out)
    }

    /// Appends one event to a large group's shared stream (group 0: the
    /// system stream) and returns its stream position. Takes the stream
    /// counter's row lock until commit: positions become visible in order.
    pub(crate) async fn append_stream(
        &mut self,
        group: u64,
        now_ms: i64,
        kind: event::Kind,
    ) -> Result<u64> {
        let seq = u(self
            .one(
                "UPDATE counters SET value = value + 1 WHERE name = 'stream' RETURNING value",
                &[],
            )
            .await?
            .get(0));
        let event = Event {
            seq: 0,
            created_at_ms: now_ms,
            kind: Some(kind),
            group_seq: seq,
            ..Event::default()
        };
        self.exec(
            "INSERT INTO stream_events (group_id, seq, event) VALUES ($1, $2, $3)",
            &[&i(group), &i(seq), &event.encode_to_vec()],
        )
        .await?;
        Ok(seq)
    }

    /// The newest conv_seq of a conversation (0: none) as this transaction
    /// sees it.
    pub(crate) async fn conv_head(&self, conv: &str) -> Result<u64> {
        Ok(self
            .opt("SELECT head FROM conversations WHERE id = $1", &[&conv])
            .await?
            .map_or(0, |r| u(r.get(0))))
    }

    /// The newest committed stream position (this transaction's own
    /// appends included).
    pub(crate) async fn stream_head(&self) -> Result<u64> {
        Ok(u(self
            .one("SELECT value FROM counters WHERE name = 'stream'", &[])
            .await?
            .get(0)))
    }
}

pub(crate) fn decode_message(bytes: &[u8]) -> Result<Message, Error> {
    Message::decode(bytes).map_err(|e| corrupt("message", e))
}

pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event, Error> {
    Event::decode(bytes).map_err(|e| corrupt("event", e))
}
