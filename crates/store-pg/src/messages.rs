//! Read marks, read receipts, recall, edit and delete, blocks, feature
//! flags: the write side outside sends and delivery records (`batch.rs`,
//! which uses the large-group delivery counting here) and group changes,
//! with the embedded store's semantics (`pigeon-store`'s
//! `log_store/messages.rs`).
//!
//! Direct conversations and small groups are write-diffused: every
//! participant's log gets the event and their summary is updated. Large
//! groups are read-diffused: the message is stored once in the timeline and
//! once in the shared stream; receipts there are counted, not listed.

use std::collections::HashMap;
use std::sync::Arc;

use pigeon_core::message_change;
use pigeon_core::store::{
    Appended, ChangeOutcome, Delivered, GroupRecord, MarkReadOutcome, MessageChange,
    MessageChangeKind, ReadMark,
};
use pigeon_core::{CoreError, UserId, groups};
use pigeon_proto::v1::{
    BlockChanged, MessageDeleted, ReadMarker, Receipt, ReceiptKind, ReceiptSummary, event,
};
use prost::Message as _;

use crate::groups::{Lock, group, member, member_ids};
use crate::tx::{W, decode_message};
use crate::{Result, i, refused, u};

/// Most messages one read mark or delivery looks at for receipts.
pub const RECEIPT_SCAN_MAX: usize = 1000;
/// Most messages counted as unread; larger counts are reported as this.
pub const UNREAD_COUNT_MAX: usize = 1000;

/// Whether a new count is worth telling the sender (as the embedded
/// store): every count up to 10, then each change of the leading digit.
pub fn notable(count: u32) -> bool {
    if count <= 10 {
        return true;
    }
    let mut unit = 1;
    while count / unit >= 10 {
        unit *= 10;
    }
    count.is_multiple_of(unit)
}

/// Where a conversation's events go.
pub(crate) enum Audience {
    /// These users' logs.
    Logs(Vec<UserId>),
    /// A large group's shared stream.
    Stream(u64),
}

impl W<'_> {
    /// Writes `kind` where the audience reads it: queued for the logs, or
    /// appended to the stream (returning its position and who to tell).
    pub(crate) async fn deliver(
        &mut self,
        audience: &Audience,
        now_ms: i64,
        kind: &event::Kind,
    ) -> Result<Option<(u64, Arc<[UserId]>)>> {
        match audience {
            Audience::Logs(users) => {
                for &user in users {
                    self.push_event(user, now_ms, kind.clone());
                }
                Ok(None)
            }
            Audience::Stream(g) => {
                let seq = self.append_stream(*g, now_ms, kind.clone()).await?;
                Ok(Some((seq, member_ids(self.tx, *g).await?.into())))
            }
        }
    }

    pub(crate) async fn group_for_write(&self, group_id: u64, lock: Lock) -> Result<GroupRecord> {
        group(self.tx, group_id, lock).await?.ok_or_else(|| {
            refused(CoreError::ConversationNotFound(groups::conversation_id(
                group_id,
            )))
        })
    }

    pub(crate) async fn mark_read(&mut self, mark: &ReadMark) -> Result<MarkReadOutcome> {
        let conv = mark.conversation_id.as_str();
        let Some(state) = self
            .opt(
                "SELECT read_up_to, unread_count, last_conv_seq FROM conv_states \
                 WHERE user_id = $1 AND conversation_id = $2 FOR UPDATE",
                &[&i(mark.user), &conv],
            )
            .await?
        else {
            return Ok(MarkReadOutcome {
                read_up_to: 0,
                unread_count: 0,
                appended: Vec::new(),
            });
        };
        let (read_up_to, unread_count, last_conv_seq) =
            (u(state.get(0)), u(state.get(1)), u(state.get::<_, i64>(2)));
        let group = match groups::parse_group_id(conv) {
            Some(id) => Some(self.group_for_write(id, Lock::None).await?),
            None => None,
        };
        let me = match &group {
            Some(g) => member(self.tx, g.id, mark.user).await?,
            None => None,
        };
        // The newest message this user may see.
        let last = match (&group, &me) {
            (Some(g), Some(m)) if g.large => match m.left_conv {
                0 => self.conv_head(conv).await?,
                left => left,
            },
            _ => last_conv_seq,
        };
        let target = mark.up_to.min(last);
        if target <= read_up_to {
            return Ok(MarkReadOutcome {
                read_up_to,
                unread_count,
                appended: Vec::new(),
            });
        }
        // Unread: others' messages after the new position.
        let unread: i64 = self
            .one(
                "SELECT count(*) FROM (SELECT sender_id FROM messages \
                   WHERE conversation_id = $1 AND conv_seq > $2 AND conv_seq <= $3 \
                   ORDER BY conv_seq LIMIT $4) t WHERE sender_id <> $5",
                &[
                    &conv,
                    &i(target),
                    &i(last),
                    &(UNREAD_COUNT_MAX as i64),
                    &i(mark.user),
                ],
            )
            .await?
            .get(0);
        let unread = u(unread);
        self.exec(
            "UPDATE conv_states SET read_up_to = $3, unread_count = $4 \
             WHERE user_id = $1 AND conversation_id = $2",
            &[&i(mark.user), &conv, &i(target), &i(unread)],
        )
        .await?;
        let marker = ReadMarker {
            conversation_id: conv.to_string(),
            read_up_to: target,
        };
        self.push_event(mark.user, mark.now_ms, event::Kind::ReadMarker(marker));
        // The newly read messages, newest first, for receipts.
        let read_now: Vec<(u64, UserId)> = self
            .query(
                "SELECT conv_seq, sender_id FROM messages \
                 WHERE conversation_id = $1 AND conv_seq > $2 AND conv_seq <= $3 \
                 ORDER BY conv_seq DESC LIMIT $4",
                &[
                    &conv,
                    &i(read_up_to),
                    &i(target),
                    &(RECEIPT_SCAN_MAX as i64),
                ],
            )
            .await?
            .iter()
            .map(|r| (u(r.get(0)), u(r.get(1))))
            .collect();
        match &group {
            Some(g) if g.large => {
                let seqs: Vec<(u64, UserId)> = read_now
                    .into_iter()
                    .filter(|(_, s)| *s != mark.user)
                    .collect();
                // What is read has been delivered: the delivery counts
                // first, unless this member's delivery mark came before.
                let delivered = Delivered {
                    conversation_id: conv.to_string(),
                    up_to: target,
                    senders: Vec::new(),
                    conv_seqs: seqs.iter().map(|&(s, _)| s).collect(),
                };
                self.deliver_in_large_group(g, mark.user, &delivered, mark.now_ms)
                    .await?;
                self.count_receipts(g, &seqs, ReceiptKind::Read, mark.now_ms)
                    .await?;
            }
            _ => {
                let mut senders: Vec<UserId> = Vec::new();
                for (_, s) in read_now {
                    if s != mark.user && !senders.contains(&s) {
                        senders.push(s);
                    }
                }
                self.receipts(
                    conv,
                    mark.user,
                    &mark.username,
                    ReceiptKind::Read,
                    target,
                    &senders,
                    mark.now_ms,
                )
                .await?;
            }
        }
        let appended = self.flush().await?;
        Ok(MarkReadOutcome {
            read_up_to: target,
            unread_count: unread,
            appended,
        })
    }

    /// Raises a user's receipt position and tells `senders` (direct and
    /// small group conversations). Nothing if the position does not move.
    #[allow(clippy::too_many_arguments)]
    async fn receipts(
        &mut self,
        conv: &str,
        user: UserId,
        username: &str,
        kind: ReceiptKind,
        up_to: u64,
        senders: &[UserId],
        now_ms: i64,
    ) -> Result<()> {
        // Reading implies having received.
        let (read, delivered) = match kind {
            ReceiptKind::Read => (i(up_to), i(up_to)),
            _ => (0, i(up_to)),
        };
        let sql = if kind == ReceiptKind::Read {
            "INSERT INTO positions AS p (conversation_id, user_id, delivered, read) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (conversation_id, user_id) DO UPDATE \
             SET read = $4, delivered = GREATEST(p.delivered, $3) WHERE p.read < $4 RETURNING 1"
        } else {
            "INSERT INTO positions AS p (conversation_id, user_id, delivered, read) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (conversation_id, user_id) DO UPDATE \
             SET delivered = $3 WHERE p.delivered < $3 RETURNING 1"
        };
        let moved = self
            .opt(sql, &[&conv, &i(user), &delivered, &read])
            .await?
            .is_some();
        if !moved {
            return Ok(());
        }
        let receipt = Receipt {
            conversation_id: conv.to_string(),
            user_id: user,
            username: username.to_string(),
            kind: kind as i32,
            up_to,
        };
        for &s in senders.iter().filter(|&&s| s != user) {
            self.push_event(s, now_ms, event::Kind::Receipt(receipt.clone()));
        }
        Ok(())
    }

    /// Counts receipts of large-group messages and tells each sender when a
    /// count becomes [`notable`].
    async fn count_receipts(
        &mut self,
        g: &GroupRecord,
        messages: &[(u64, UserId)],
        kind: ReceiptKind,
        now_ms: i64,
    ) -> Result<()> {
        let messages = &messages[..messages.len().min(RECEIPT_SCAN_MAX)];
        if messages.is_empty() {
            return Ok(());
        }
        let conv = groups::conversation_id(g.id);
        let mut seqs: Vec<i64> = messages.iter().map(|(s, _)| i(*s)).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let sql = if kind == ReceiptKind::Read {
            "UPDATE messages SET read_count = read_count + 1 \
             WHERE conversation_id = $1 AND conv_seq = ANY($2) \
             RETURNING conv_seq, delivered_count, read_count"
        } else {
            "UPDATE messages SET delivered_count = delivered_count + 1 \
             WHERE conversation_id = $1 AND conv_seq = ANY($2) \
             RETURNING conv_seq, delivered_count, read_count"
        };
        let counts: HashMap<u64, (u32, u32)> = self
            .query(sql, &[&conv, &seqs])
            .await?
            .iter()
            .map(|r| {
                let c = |n: i32| u32::try_from(n).unwrap_or(0);
                (u(r.get(0)), (c(r.get(1)), c(r.get(2))))
            })
            .collect();
        for &(conv_seq, sender) in messages {
            let Some(&(delivered, read)) = counts.get(&conv_seq) else {
                continue;
            };
            let count = if kind == ReceiptKind::Read {
                read
            } else {
                delivered
            };
            if notable(count) {
                let summary = ReceiptSummary {
                    conversation_id: conv.clone(),
                    conv_seq,
                    delivered_count: delivered,
                    read_count: read,
                    member_count: g.member_count,
                };
                self.push_event(sender, now_ms, event::Kind::ReceiptSummary(summary));
            }
        }
        Ok(())
    }

    /// Records that `user` received messages of a large group: their
    /// delivered position moves, and each message past the old position
    /// counts one more delivery (each message once per member).
    pub(crate) async fn deliver_in_large_group(
        &mut self,
        g: &GroupRecord,
        user: UserId,
        d: &Delivered,
        now_ms: i64,
    ) -> Result<()> {
        let conv = d.conversation_id.as_str();
        // Row first (a concurrent first delivery waits on its key), then
        // the latest position under its lock.
        self.exec(
            "INSERT INTO positions (conversation_id, user_id) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
            &[&conv, &i(user)],
        )
        .await?;
        let before = u(self
            .one(
                "SELECT delivered FROM positions \
                 WHERE conversation_id = $1 AND user_id = $2 FOR UPDATE",
                &[&conv, &i(user)],
            )
            .await?
            .get(0));
        self.exec(
            "UPDATE positions SET delivered = GREATEST(delivered, $3) \
             WHERE conversation_id = $1 AND user_id = $2",
            &[&conv, &i(user), &i(d.up_to)],
        )
        .await?;
        let wanted: Vec<i64> = d
            .conv_seqs
            .iter()
            .filter(|&&s| s > before)
            .map(|&s| i(s))
            .collect();
        let found: HashMap<u64, UserId> = self
            .query(
                "SELECT conv_seq, sender_id FROM messages \
                 WHERE conversation_id = $1 AND conv_seq = ANY($2)",
                &[&conv, &wanted],
            )
            .await?
            .iter()
            .map(|r| (u(r.get(0)), u(r.get(1))))
            .collect();
        let fresh: Vec<(u64, UserId)> = d
            .conv_seqs
            .iter()
            .filter_map(|s| found.get(s).map(|&sender| (*s, sender)))
            .filter(|(s, _)| *s > before)
            .collect();
        self.count_receipts(g, &fresh, ReceiptKind::Delivered, now_ms)
            .await
    }

    pub(crate) async fn change_message(&mut self, c: &MessageChange) -> Result<ChangeOutcome> {
        let conv = c.conversation_id.as_str();
        let not_found = || refused(CoreError::MessageNotFound);
        // The group first (lock order), its absence reported after the
        // message's.
        let group = if c.group_id != 0 {
            group(self.tx, c.group_id, Lock::Share).await?
        } else {
            None
        };
        let row = self
            .opt(
                "SELECT message FROM messages WHERE conversation_id = $1 AND conv_seq = $2 FOR UPDATE",
                &[&conv, &i(c.conv_seq)],
            )
            .await?
            .ok_or_else(not_found)?;
        let mut message = decode_message(row.get(0))?;
        if c.group_id != 0 && group.is_none() {
            return Err(refused(CoreError::ConversationNotFound(
                groups::conversation_id(c.group_id),
            )));
        }
        // Who reads this conversation's events, and whether the actor sees
        // this message at all.
        let audience = match &group {
            Some(g) => {
                let m = member(self.tx, g.id, c.actor).await?;
                message_change::check_group_rights(g, m.as_ref(), c).map_err(refused)?;
                if g.large {
                    Audience::Stream(g.id)
                } else {
                    // Only members who could see the message hear of it.
                    let who = self
                        .query(
                            "SELECT user_id FROM group_members WHERE group_id = $1 AND role <> 0 \
                             AND joined_after_conv < $2 ORDER BY user_id",
                            &[&i(g.id), &i(c.conv_seq)],
                        )
                        .await?
                        .iter()
                        .map(|r| u(r.get(0)))
                        .collect();
                    Audience::Logs(who)
                }
            }
            None => Audience::Logs(c.participants.clone()),
        };
        let effect = match &c.kind {
            MessageChangeKind::DeleteForMe => {
                let fresh = self
                    .opt(
                        "INSERT INTO hidden (user_id, conversation_id, conv_seq) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING RETURNING 1",
                        &[&i(c.actor), &conv, &i(c.conv_seq)],
                    )
                    .await?
                    .is_some();
                if !fresh {
                    return Ok(ChangeOutcome::default());
                }
                let deleted = MessageDeleted {
                    conversation_id: conv.to_string(),
                    conv_seq: c.conv_seq,
                };
                self.push_event(c.actor, c.now_ms, event::Kind::MessageDeleted(deleted));
                return Ok(ChangeOutcome {
                    edited_at_ms: 0,
                    appended: self.flush().await?,
                    stream_notice: None,
                });
            }
            MessageChangeKind::Recall { window_ms } => {
                message_change::recall(&mut message, c, *window_ms).map_err(refused)?
            }
            MessageChangeKind::Edit { content, window_ms } => {
                message_change::edit(&mut message, c, content, *window_ms).map_err(refused)?
            }
        };
        let (kind, edited_at_ms) = match effect.changed() {
            Ok(change) => change,
            Err(unchanged) => return Ok(unchanged),
        };
        let bytes = message.encode_to_vec();
        self.exec(
            "UPDATE messages SET message = $3 WHERE conversation_id = $1 AND conv_seq = $2",
            &[&conv, &i(c.conv_seq), &bytes],
        )
        .await?;
        // Keep the summaries' last message in step (write-diffused only;
        // large groups read it from the timeline).
        if let Audience::Logs(users) = &audience {
            let ids: Vec<i64> = users.iter().map(|&x| i(x)).collect();
            self.exec(
                "UPDATE conv_states SET last_message = $3 \
                 WHERE user_id = ANY($1) AND conversation_id = $2 AND last_conv_seq = $4",
                &[&ids, &conv, &bytes, &i(c.conv_seq)],
            )
            .await?;
        }
        let stream = self.deliver(&audience, c.now_ms, &kind).await?;
        Ok(ChangeOutcome {
            edited_at_ms,
            appended: self.flush().await?,
            stream_notice: stream.map(|(_, users)| users),
        })
    }

    /// Blocks or unblocks; the blocker's devices hear of a change.
    pub(crate) async fn set_blocked(
        &mut self,
        blocker: UserId,
        blocked: &(UserId, String),
        block: bool,
        now_ms: i64,
    ) -> Result<Vec<Appended>> {
        let sql = if block {
            "INSERT INTO blocks (blocker, blocked) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2"
        };
        if self.exec(sql, &[&i(blocker), &i(blocked.0)]).await? == 0 {
            return Ok(Vec::new());
        }
        let change = BlockChanged {
            user_id: blocked.0,
            username: blocked.1.clone(),
            blocked: block,
        };
        self.push_event(blocker, now_ms, event::Kind::BlockChanged(change));
        self.flush().await
    }

    /// Sets or removes a flag; one marker in the system stream tells
    /// everyone (each reader gets their own flag set).
    pub(crate) async fn set_flag(
        &mut self,
        name: &str,
        flag: Option<&pigeon_core::flags::Flag>,
        now_ms: i64,
    ) -> Result<()> {
        match flag {
            Some(f) => {
                let json = serde_json::to_string(f).expect("flags serialise");
                self.exec(
                    "INSERT INTO flags (name, flag) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET flag = $2",
                    &[&name, &json],
                )
                .await?;
            }
            None => {
                self.exec("DELETE FROM flags WHERE name = $1", &[&name])
                    .await?;
            }
        }
        let marker = event::Kind::FlagsChanged(pigeon_proto::v1::FlagsChanged::default());
        self.append_stream(SYSTEM_STREAM, now_ms, marker).await?;
        Ok(())
    }
}

/// The stream every user reads (feature flag changes).
pub(crate) const SYSTEM_STREAM: u64 = 0;
