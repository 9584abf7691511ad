//! Sends, read marks, delivery and read receipts, recall, edit and delete.
//!
//! Direct conversations and small groups are write-diffused: every
//! participant's log gets the event and their conversation summary is
//! updated. Large groups are read-diffused: the message is stored once in
//! the timeline and once in the group's shared stream, and nothing is
//! written per member; receipts there are counted, not listed.

use std::sync::Arc;

use pigeon_core::CoreError;
use pigeon_core::groups::{self, GroupAction};
use pigeon_core::message_change;
use pigeon_core::store::{
    AppendMessage, AppendOutcome, Appended, ChangeOutcome, Delivered, GroupRecord, MarkReadOutcome,
    MemberRecord, MessageChange, MessageChangeKind, ReadMark, empty_summary,
};
use pigeon_core::{StoreError, UserId};
use pigeon_proto::v1::{
    ConversationSummary, GroupRole, Message, MessageDeleted, ReadMarker, Receipt, ReceiptKind,
    ReceiptSummary, event,
};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use super::{Committer, DedupRecord, Tx, decode_json, decode_proto, encode_json, refused, stored};
use crate::engine::Table;
use crate::keys;

/// Most messages one read mark or delivery looks at for receipts.
pub const RECEIPT_SCAN_MAX: usize = 1000;
/// Most messages counted as unread; larger counts are reported as this.
pub const UNREAD_COUNT_MAX: usize = 1000;

/// Delivered and read positions of a user in a conversation.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Positions {
    pub(super) delivered: u64,
    pub(super) read: u64,
}

/// Delivered and read counts of one message in a large group.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Counts {
    pub(super) delivered: u32,
    pub(super) read: u32,
}

/// Whether a new count is worth telling the sender: every count up to 10,
/// then each time the leading digit changes (20, 30, ... 100, 200, ...), so
/// a message read by 100,000 members produces a few dozen events, not
/// 100,000.
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

/// An event written to a large group's shared stream: its stream seq and
/// the members to tell.
pub(super) type StreamWrite = (u64, Arc<[UserId]>);

/// Where a conversation's events go.
pub(super) enum Audience {
    /// These users' logs.
    Logs(Vec<UserId>),
    /// A large group's shared stream.
    Stream(u64),
}

impl Committer {
    /// The current members of a group, from the cache or the batch.
    pub(super) fn member_ids(
        &mut self,
        tx: &Tx<'_>,
        group: u64,
    ) -> Result<Arc<[UserId]>, StoreError> {
        if let Some(ids) = self.member_cache.get(&group) {
            return Ok(ids.clone());
        }
        let prefix = keys::user_id(group);
        let rows =
            tx.b.scan_all(Table::GroupMembers, &prefix, &keys::prefix_end(&prefix))?;
        let mut ids = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let m: MemberRecord = decode_json("member", &v)?;
            if m.role() != GroupRole::None {
                ids.push(keys::pair_second(&k));
            }
        }
        let ids: Arc<[UserId]> = ids.into();
        self.member_cache.insert(group, ids.clone());
        Ok(ids)
    }

    /// Writes `kind` where the audience reads it. Returns the log events
    /// and, for a large group, the stream seq and who to tell. The last log
    /// gets `kind` itself, the others a copy (a message's event is the
    /// largest thing a commit copies).
    pub(super) fn deliver(
        &mut self,
        tx: &mut Tx<'_>,
        audience: &Audience,
        now_ms: i64,
        kind: event::Kind,
    ) -> Result<(Vec<Appended>, Option<StreamWrite>), StoreError> {
        match audience {
            Audience::Logs(users) => {
                let mut appended = Vec::with_capacity(users.len());
                if let Some((&last, rest)) = users.split_last() {
                    for &u in rest {
                        appended.push(self.append_event(tx, u, now_ms, kind.clone())?);
                    }
                    appended.push(self.append_event(tx, last, now_ms, kind)?);
                }
                Ok((appended, None))
            }
            Audience::Stream(group) => {
                let seq = self.append_stream(tx, *group, now_ms, kind)?;
                Ok((Vec::new(), Some((seq, self.member_ids(tx, *group)?))))
            }
        }
    }

    fn group_for_write(tx: &Tx<'_>, group_id: u64) -> Result<GroupRecord, StoreError> {
        tx.b.get_json("group", Table::Groups, &keys::user_id(group_id))?
            .ok_or_else(|| {
                refused(CoreError::ConversationNotFound(groups::conversation_id(
                    group_id,
                )))
            })
    }

    fn member_for_write(
        tx: &Tx<'_>,
        group: u64,
        user: UserId,
    ) -> Result<Option<MemberRecord>, StoreError> {
        tx.b.get_json("member", Table::GroupMembers, &keys::pair(group, user))
    }

    pub(super) fn append(
        &mut self,
        tx: &mut Tx<'_>,
        m: AppendMessage,
    ) -> Result<AppendOutcome, StoreError> {
        let dedup_key = keys::dedup(m.sender_id, &m.client_msg_id);
        if let Some(d) = DedupRecord::read(&tx.b, &dedup_key)? {
            return Ok(AppendOutcome {
                conversation_id: d.conversation_id,
                conv_seq: d.conv_seq,
                sent_at_ms: d.sent_at_ms,
                duplicate: true,
                appended: Vec::new(),
                stream_notice: None,
            });
        }
        let group = if m.group_id != 0 {
            let group = Self::group_for_write(tx, m.group_id)?;
            let role = Self::member_for_write(tx, group.id, m.sender_id)?
                .map_or(GroupRole::None, |r| r.role());
            groups::check(role, GroupAction::Post, &group.settings(), group.dissolved)
                .map_err(refused)?;
            Some(group)
        } else {
            None
        };
        let conv = m.conversation_id.clone();
        // Registers the committed head before the timeline is written.
        let prev_head = match tx.publish.conv_heads.get(&conv) {
            Some(h) => *h,
            None => self.shared.conv_head(&conv)?,
        };
        let conv_seq = self.next_conv_seq(&mut tx.b, &conv)?;
        let message = Message {
            conversation_id: conv.clone(),
            conv_seq,
            sender_id: m.sender_id,
            sender_username: m.sender_username.clone(),
            sender_device_id: m.sender_device_id,
            client_msg_id: m.client_msg_id.clone(),
            sent_at_ms: m.now_ms,
            content: Some(m.content),
            recalled: false,
            edited_at_ms: 0,
        };
        tx.b.put(
            Table::Timeline,
            keys::timeline(&conv, conv_seq),
            message.encode_to_vec(),
        );
        tx.set_conv_head(&conv, conv_seq);
        let record = DedupRecord {
            conversation_id: conv.clone(),
            conv_seq,
            sent_at_ms: m.now_ms,
        };
        tx.b.put(Table::Dedup, dedup_key, record.encode());

        if !m.hooks.is_empty() {
            let recipients: Vec<UserId> = match &group {
                Some(g) if g.large => vec![0],
                Some(g) => self
                    .member_ids(tx, g.id)?
                    .iter()
                    .copied()
                    .filter(|&u| u != m.sender_id)
                    .collect(),
                None => m
                    .participants
                    .iter()
                    .map(|(id, _)| *id)
                    .filter(|&u| u != m.sender_id)
                    .collect(),
            };
            self.enqueue_hooks(tx, &m.hooks, &conv, conv_seq, &recipients, m.now_ms)?;
        }
        // Summaries first: the message then moves into the events.
        let audience = match &group {
            Some(g) if g.large => {
                // One write for everyone; the sender has read their own message.
                self.update_summary(tx, m.sender_id, &conv, |s| {
                    s.read_up_to = s.read_up_to.max(conv_seq)
                })?;
                Audience::Stream(g.id)
            }
            Some(g) => {
                let members = self.member_ids(tx, g.id)?;
                for &u in members.iter() {
                    self.bump_summary(tx, u, &message, || empty_summary(&conv, 0, ""))?;
                }
                Audience::Logs(members.to_vec())
            }
            None => {
                for (u, _) in &m.participants {
                    let (peer_id, peer_name) = m
                        .participants
                        .iter()
                        .find(|(id, _)| id != u)
                        .cloned()
                        .unwrap_or_else(|| (*u, m.sender_username.clone()));
                    if *u == m.sender_id {
                        // The sender's summary after a send is known whole
                        // (the peer, this message, read up to it), so it is
                        // written without reading the old one: no lookup,
                        // perhaps from the disk, on the committer per send.
                        let summary = ConversationSummary {
                            last_message: Some(stored::summary_stub(&message)),
                            read_up_to: conv_seq,
                            ..empty_summary(&conv, peer_id, &peer_name)
                        };
                        tx.b.put(
                            Table::ConvState,
                            keys::conv_state(*u, &conv),
                            summary.encode_to_vec(),
                        );
                        continue;
                    }
                    // A recipient's summary is made with the peer's name on
                    // the conversation's first message and not written
                    // again for messages received: readers derive its
                    // newest message and unread count from the head
                    // (`stored::derive_direct`).
                    if prev_head > 0 {
                        continue;
                    }
                    self.bump_summary(tx, *u, &message, || {
                        empty_summary(&conv, peer_id, &peer_name)
                    })?;
                }
                Audience::Logs(m.participants.iter().map(|(id, _)| *id).collect())
            }
        };
        let (appended, stream) =
            self.deliver(tx, &audience, m.now_ms, event::Kind::Message(message))?;
        Ok(AppendOutcome {
            conversation_id: conv,
            conv_seq,
            sent_at_ms: m.now_ms,
            duplicate: false,
            appended,
            stream_notice: stream.map(|(_, users)| users),
        })
    }

    /// Applies `f` to a user's summary of a conversation (creating it).
    pub(super) fn update_summary(
        &mut self,
        tx: &mut Tx<'_>,
        user: UserId,
        conv: &str,
        f: impl FnOnce(&mut ConversationSummary),
    ) -> Result<(), StoreError> {
        Self::update_summary_or(tx, user, conv, || empty_summary(conv, 0, ""), f)
    }

    /// Applies `f` to a user's summary of a conversation, made by `new` if
    /// there is none yet.
    fn update_summary_or(
        tx: &mut Tx<'_>,
        user: UserId,
        conv: &str,
        new: impl FnOnce() -> ConversationSummary,
        f: impl FnOnce(&mut ConversationSummary),
    ) -> Result<(), StoreError> {
        let key = keys::conv_state(user, conv);
        let mut state =
            tx.b.get_proto::<ConversationSummary>("conversation", Table::ConvState, &key)?
                .unwrap_or_else(new);
        f(&mut state);
        tx.b.put(Table::ConvState, key, state.encode_to_vec());
        Ok(())
    }

    /// A new message in a write-diffused conversation: last message and
    /// unread count (writing means having read).
    fn bump_summary(
        &mut self,
        tx: &mut Tx<'_>,
        user: UserId,
        message: &Message,
        new: impl FnOnce() -> ConversationSummary,
    ) -> Result<(), StoreError> {
        Self::update_summary_or(tx, user, &message.conversation_id, new, |s| {
            s.last_message = Some(stored::summary_stub(message));
            if user == message.sender_id {
                s.read_up_to = message.conv_seq;
                s.unread_count = 0;
            } else {
                s.unread_count += 1;
            }
        })
    }

    /// The group of a conversation id, if it is one.
    fn group_of_conv(tx: &Tx<'_>, conv: &str) -> Result<Option<GroupRecord>, StoreError> {
        match groups::parse_group_id(conv) {
            Some(id) => Ok(Some(Self::group_for_write(tx, id)?)),
            None => Ok(None),
        }
    }

    pub(super) fn mark_read(
        &mut self,
        tx: &mut Tx<'_>,
        mark: ReadMark,
    ) -> Result<MarkReadOutcome, StoreError> {
        let conv = mark.conversation_id.clone();
        let key = keys::conv_state(mark.user, &conv);
        let Some(mut state) =
            tx.b.get_proto::<ConversationSummary>("conversation", Table::ConvState, &key)?
        else {
            return Ok(MarkReadOutcome {
                read_up_to: 0,
                unread_count: 0,
                appended: Vec::new(),
            });
        };
        let group = Self::group_of_conv(tx, &conv)?;
        let member = match &group {
            Some(g) => Self::member_for_write(tx, g.id, mark.user)?,
            None => None,
        };
        // The newest stored message (allocated seqs may run ahead of it
        // after a restart).
        let head = |c: &mut Self, tx: &Tx<'_>| {
            tx.publish
                .conv_heads
                .get(&conv)
                .copied()
                .map_or_else(|| c.shared.conv_head(&conv), Ok)
        };
        // The newest message this user may see.
        let last = match (&group, &member) {
            (Some(g), Some(m)) if g.large => match m.left_conv {
                0 => head(self, tx)?,
                left => left,
            },
            (Some(_), _) => state.last_message.as_ref().map_or(0, |m| m.conv_seq),
            (None, _) => {
                let head = head(self, tx)?;
                stored::derive_direct(&mut state, |_| Ok(head))?;
                head
            }
        };
        let target = mark.up_to.min(last);
        if target <= state.read_up_to {
            return Ok(MarkReadOutcome {
                read_up_to: state.read_up_to,
                unread_count: state.unread_count,
                appended: Vec::new(),
            });
        }
        let old = state.read_up_to;
        // Unread: others' messages after the new position.
        let mut unread = 0u64;
        let newer = tx.b.scan_all(
            Table::Timeline,
            &keys::timeline(&conv, target + 1),
            &keys::timeline(&conv, last + 1),
        )?;
        for (_, v) in newer.iter().take(UNREAD_COUNT_MAX) {
            if decode_proto::<Message>("message", v)?.sender_id != mark.user {
                unread += 1;
            }
        }
        state.read_up_to = target;
        state.unread_count = unread;
        tx.b.put(Table::ConvState, key, state.encode_to_vec());

        let marker = ReadMarker {
            conversation_id: conv.clone(),
            read_up_to: target,
        };
        let mut appended =
            vec![self.append_event(tx, mark.user, mark.now_ms, event::Kind::ReadMarker(marker))?];
        // The newly read messages, newest first, for receipts.
        let read_now = tx.b.scan_all(
            Table::Timeline,
            &keys::timeline(&conv, old + 1),
            &keys::timeline(&conv, target + 1),
        )?;
        let read_now: Vec<Message> = read_now
            .iter()
            .rev()
            .take(RECEIPT_SCAN_MAX)
            .map(|(_, v)| decode_proto::<Message>("message", v))
            .collect::<Result<_, _>>()?;
        match &group {
            Some(g) if g.large => {
                let seqs: Vec<(u64, UserId)> = read_now
                    .iter()
                    .filter(|m| m.sender_id != mark.user)
                    .map(|m| (m.conv_seq, m.sender_id))
                    .collect();
                // What is read has been delivered: the delivery counts
                // first, unless this member's delivery mark came before.
                let delivered = Delivered {
                    conversation_id: conv.clone(),
                    up_to: target,
                    senders: Vec::new(),
                    conv_seqs: seqs.iter().map(|&(s, _)| s).collect(),
                };
                appended.extend(self.deliver_in_large_group(
                    tx,
                    g,
                    mark.user,
                    &delivered,
                    mark.now_ms,
                )?);
                appended.extend(self.count_receipts(
                    tx,
                    g,
                    &seqs,
                    ReceiptKind::Read,
                    mark.now_ms,
                )?);
            }
            _ => {
                let senders = distinct_senders(&read_now, mark.user);
                appended.extend(self.receipts(
                    tx,
                    &conv,
                    mark.user,
                    &mark.username,
                    ReceiptKind::Read,
                    target,
                    &senders,
                    mark.now_ms,
                )?);
            }
        }
        Ok(MarkReadOutcome {
            read_up_to: target,
            unread_count: unread,
            appended,
        })
    }

    /// Raises a user's receipt position and tells `senders` (direct and
    /// small group conversations). Nothing if the position does not move.
    #[allow(clippy::too_many_arguments)]
    fn receipts(
        &mut self,
        tx: &mut Tx<'_>,
        conv: &str,
        user: UserId,
        username: &str,
        kind: ReceiptKind,
        up_to: u64,
        senders: &[UserId],
        now_ms: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        let key = keys::position(conv, user);
        let mut pos =
            tx.b.get_json::<Positions>("positions", Table::Positions, &key)?
                .unwrap_or_default();
        let slot = match kind {
            ReceiptKind::Read => &mut pos.read,
            _ => &mut pos.delivered,
        };
        if up_to <= *slot {
            return Ok(Vec::new());
        }
        *slot = up_to;
        // Reading implies having received.
        pos.delivered = pos.delivered.max(pos.read);
        tx.b.put(Table::Positions, key, encode_json(&pos));
        let receipt = Receipt {
            conversation_id: conv.to_string(),
            user_id: user,
            username: username.to_string(),
            kind: kind as i32,
            up_to,
        };
        let mut out = Vec::new();
        for &s in senders.iter().filter(|&&s| s != user) {
            out.push(self.append_event(tx, s, now_ms, event::Kind::Receipt(receipt.clone()))?);
        }
        Ok(out)
    }

    /// Counts receipts of large-group messages and tells each sender when a
    /// count becomes [`notable`].
    fn count_receipts(
        &mut self,
        tx: &mut Tx<'_>,
        group: &GroupRecord,
        messages: &[(u64, UserId)],
        kind: ReceiptKind,
        now_ms: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        let conv = groups::conversation_id(group.id);
        let mut out = Vec::new();
        for &(conv_seq, sender) in messages.iter().take(RECEIPT_SCAN_MAX) {
            let key = keys::timeline(&conv, conv_seq);
            let mut counts =
                tx.b.get_json::<Counts>("counts", Table::Counts, &key)?
                    .unwrap_or_default();
            let count = match kind {
                ReceiptKind::Read => {
                    counts.read += 1;
                    counts.read
                }
                _ => {
                    counts.delivered += 1;
                    counts.delivered
                }
            };
            tx.b.put(Table::Counts, key, encode_json(&counts));
            if notable(count) {
                let summary = ReceiptSummary {
                    conversation_id: conv.clone(),
                    conv_seq,
                    delivered_count: counts.delivered,
                    read_count: counts.read,
                    member_count: group.member_count,
                };
                out.push(self.append_event(
                    tx,
                    sender,
                    now_ms,
                    event::Kind::ReceiptSummary(summary),
                )?);
            }
        }
        Ok(out)
    }

    pub(super) fn record_delivered(
        &mut self,
        tx: &mut Tx<'_>,
        user: UserId,
        username: &str,
        marks: Vec<Delivered>,
        now_ms: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        let mut out = Vec::new();
        for d in marks {
            match Self::group_of_conv(tx, &d.conversation_id)? {
                Some(g) if g.large => {
                    out.extend(self.deliver_in_large_group(tx, &g, user, &d, now_ms)?)
                }
                _ => out.extend(self.receipts(
                    tx,
                    &d.conversation_id,
                    user,
                    username,
                    ReceiptKind::Delivered,
                    d.up_to,
                    &d.senders,
                    now_ms,
                )?),
            }
        }
        Ok(out)
    }

    /// Records that `user` received messages of a large group: their
    /// delivered position moves, and each message past the old position
    /// counts one more delivery (each message once per member).
    fn deliver_in_large_group(
        &mut self,
        tx: &mut Tx<'_>,
        g: &GroupRecord,
        user: UserId,
        d: &Delivered,
        now_ms: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        let key = keys::position(&d.conversation_id, user);
        let mut pos =
            tx.b.get_json::<Positions>("positions", Table::Positions, &key)?
                .unwrap_or_default();
        let mut fresh = Vec::new();
        for &seq in d.conv_seqs.iter().filter(|&&s| s > pos.delivered) {
            if let Some(m) = tx.b.get_proto::<Message>(
                "message",
                Table::Timeline,
                &keys::timeline(&d.conversation_id, seq),
            )? {
                fresh.push((seq, m.sender_id));
            }
        }
        if d.up_to > pos.delivered {
            pos.delivered = d.up_to;
            tx.b.put(Table::Positions, key, encode_json(&pos));
        }
        self.count_receipts(tx, g, &fresh, ReceiptKind::Delivered, now_ms)
    }

    pub(super) fn change_message(
        &mut self,
        tx: &mut Tx<'_>,
        c: MessageChange,
    ) -> Result<ChangeOutcome, StoreError> {
        let conv = c.conversation_id.clone();
        let tl_key = keys::timeline(&conv, c.conv_seq);
        let not_found = || refused(CoreError::MessageNotFound);
        let mut message =
            tx.b.get_proto::<Message>("message", Table::Timeline, &tl_key)?
                .ok_or_else(not_found)?;
        let group = if c.group_id != 0 {
            Some(Self::group_for_write(tx, c.group_id)?)
        } else {
            None
        };
        // Who reads this conversation's events, and whether the actor sees
        // this message at all.
        let audience = match &group {
            Some(g) => {
                let m = Self::member_for_write(tx, g.id, c.actor)?;
                message_change::check_group_rights(g, m.as_ref(), &c).map_err(refused)?;
                if g.large {
                    Audience::Stream(g.id)
                } else {
                    // Only members who could see the message hear of it.
                    let mut who = Vec::new();
                    for &u in self.member_ids(tx, g.id)?.iter() {
                        if Self::member_for_write(tx, g.id, u)?
                            .is_some_and(|r| r.joined_after_conv < c.conv_seq)
                        {
                            who.push(u);
                        }
                    }
                    Audience::Logs(who)
                }
            }
            None => Audience::Logs(c.participants.clone()),
        };
        let effect = match &c.kind {
            MessageChangeKind::DeleteForMe => {
                if tx
                    .b
                    .get(Table::Hidden, &keys::hidden(c.actor, &conv, c.conv_seq))?
                    .is_some()
                {
                    return Ok(ChangeOutcome::default());
                }
                tx.b.put(
                    Table::Hidden,
                    keys::hidden(c.actor, &conv, c.conv_seq),
                    Vec::new(),
                );
                let deleted = MessageDeleted {
                    conversation_id: conv.clone(),
                    conv_seq: c.conv_seq,
                };
                let appended = vec![self.append_event(
                    tx,
                    c.actor,
                    c.now_ms,
                    event::Kind::MessageDeleted(deleted),
                )?];
                return Ok(ChangeOutcome {
                    edited_at_ms: 0,
                    appended,
                    stream_notice: None,
                });
            }
            MessageChangeKind::Recall { window_ms } => {
                message_change::recall(&mut message, &c, *window_ms).map_err(refused)?
            }
            MessageChangeKind::Edit { content, window_ms } => {
                message_change::edit(&mut message, &c, content, *window_ms).map_err(refused)?
            }
        };
        let (kind, edited_at_ms) = match effect.changed() {
            Ok(change) => change,
            Err(unchanged) => return Ok(unchanged),
        };
        // Summaries and log events refer to the timeline's copy, so they
        // read the change from here (`stored`).
        tx.b.put(Table::Timeline, tl_key, message.encode_to_vec());
        let (appended, stream) = self.deliver(tx, &audience, c.now_ms, kind)?;
        Ok(ChangeOutcome {
            edited_at_ms,
            appended,
            stream_notice: stream.map(|(_, u)| u),
        })
    }
}

fn distinct_senders(messages: &[Message], except: UserId) -> Vec<UserId> {
    let mut out: Vec<UserId> = Vec::new();
    for m in messages {
        if m.sender_id != except && !out.contains(&m.sender_id) {
            out.push(m.sender_id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks which counts are reported to a sender: all up to ten, then
    /// each change of the leading digit.
    #[test]
    fn notable_counts() {
        let reported: Vec<u32> = (1..=1000).filter(|&c| notable(c)).collect();
        assert_eq!(&reported[..12], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 30]);
        assert!(reported.contains(&100) && reported.contains(&200) && !reported.contains(&110));
        assert_eq!(
            (1..=100_000).filter(|&c| notable(c)).count(),
            10 + 8 + 9 + 9 + 9 + 1
        );
    }
}
