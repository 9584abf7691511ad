//! The read side: everything here reads the engine directly, bounded by the
//! committed watermarks, and never waits for the committer.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use pigeon_core::conversation::ConversationId;
use pigeon_core::groups;
use pigeon_core::store::{HistoryQuery, LogFrom, LogRead, LogReadError, MemberRecord, StreamRead};
use pigeon_core::{StoreError, UserId};
use pigeon_proto::v1::{ConversationSummary, Event, GroupRole, Message, ReceiptSummary, event};

use super::messages::{Counts, UNREAD_COUNT_MAX};
use super::stored::{self, StoredEvent};
use super::{CONVERSATIONS_SCAN_MAX, Shared, USER_GROUPS_SCAN_MAX, decode_json, decode_proto};
use crate::engine::Table;
use crate::keys;
use prost::Message as _;

impl Shared {
    pub(super) fn read_log(
        &self,
        user: UserId,
        from: LogFrom,
        limit: usize,
        bytes_max: usize,
    ) -> Result<LogRead, LogReadError> {
        let mark = self.log_mark(user)?;
        let after = match from {
            LogFrom::Oldest => mark.trimmed_through,
            LogFrom::After(seq) => seq,
        };
        if after < mark.trimmed_through {
            return Err(LogReadError::Trimmed {
                trimmed_through: mark.trimmed_through,
            });
        }
        if after >= mark.head || limit == 0 {
            return Ok(LogRead {
                events: Vec::new(),
                has_more: false,
            });
        }
        let rows = self.engine.scan(
            Table::Log,
            &keys::log(user, after + 1),
            &keys::log(user, mark.head + 1),
            false,
            limit + 1,
        )?;
        // A trim that ran during the scan may have removed entries we needed.
        let now = self.log_mark(user)?;
        if after < now.trimmed_through {
            return Err(LogReadError::Trimmed {
                trimmed_through: now.trimmed_through,
            });
        }
        // Message events name their message in the timeline (`stored`);
        // the byte bound is on the events as they are sent.
        let (events, has_more) = take_bounded(&rows, limit, bytes_max, |v| {
            let event = StoredEvent::decode(v)?.resolve(|c, s| self.timeline_message(c, s))?;
            let len = event.encoded_len();
            Ok((event, len))
        })?;
        Ok(LogRead { events, has_more })
    }

    pub(super) fn history(&self, q: &HistoryQuery) -> Result<(Vec<Message>, bool), StoreError> {
        let head = self.conv_head(&q.conversation_id)?;
        let mut upper = if q.before == 0 {
            head
        } else {
            head.min(q.before - 1)
        };
        let conv = &q.conversation_id;
        // Messages the viewer deleted for themselves are left out; keep
        // reading until the page holds something or the timeline ends, so a
        // page is never empty while older messages exist.
        loop {
            if upper <= q.lower || q.limit == 0 {
                return Ok((Vec::new(), false));
            }
            let rows = self.engine.scan(
                Table::Timeline,
                &keys::timeline(conv, q.lower + 1),
                &keys::timeline(conv, upper + 1),
                true,
                q.limit + 1,
            )?;
            let (mut messages, has_more) = take_bounded(&rows, q.limit, q.bytes_max, |v| {
                Ok((decode_proto::<Message>("message", v)?, v.len()))
            })?;
            let Some(oldest) = messages.last().map(|m| m.conv_seq) else {
                return Ok((messages, false));
            };
            let newest = messages[0].conv_seq;
            let hidden = self.engine.scan(
                Table::Hidden,
                &keys::hidden(q.viewer, conv, oldest),
                &keys::hidden(q.viewer, conv, newest + 1),
                false,
                usize::MAX,
            )?;
            if !hidden.is_empty() {
                let hidden: HashSet<Vec<u8>> = hidden.into_iter().map(|(k, _)| k).collect();
                messages.retain(|m| !hidden.contains(&keys::hidden(q.viewer, conv, m.conv_seq)));
            }
            if !messages.is_empty() || !has_more {
                return Ok((messages, has_more));
            }
            upper = oldest - 1;
        }
    }

    pub(super) fn list_conversations(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let prefix = keys::user_id(user);
        let rows = self.engine.scan(
            Table::ConvState,
            &prefix,
            &keys::prefix_end(&prefix),
            false,
            CONVERSATIONS_SCAN_MAX,
        )?;
        let mut all = Vec::with_capacity(rows.len());
        let mut activity = Vec::with_capacity(rows.len());
        for (_, v) in &rows {
            let mut s: ConversationSummary = decode_proto("conversation", v)?;
            stored::derive_direct(&mut s, |c| self.conv_head(c))?;
            stored::resolve_summary(&mut s, |c, seq| self.timeline_message(c, seq))?;
            let mut created = 0;
            if let Some(id) = groups::parse_group_id(&s.conversation_id)
                && let Some(group) = self.group(id)?
            {
                let member = self.member(id, user)?;
                s.my_role = member.as_ref().map_or(GroupRole::None as i32, |m| m.role);
                if group.large
                    && let Some(m) = &member
                {
                    self.fill_large_summary(&mut s, user, m)?;
                }
                created = group.created_at_ms;
                s.group = Some(group.info());
            }
            activity.push(
                s.last_message
                    .as_ref()
                    .map_or((created, 0), |m| (m.sent_at_ms, m.conv_seq)),
            );
            all.push(s);
        }
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.sort_by(|&a, &b| {
            activity[b]
                .cmp(&activity[a])
                .then_with(|| all[a].conversation_id.cmp(&all[b].conversation_id))
        });
        let mut slots: Vec<Option<ConversationSummary>> = all.into_iter().map(Some).collect();
        Ok(order
            .into_iter()
            .take(limit)
            .filter_map(|i| slots[i].take())
            .collect())
    }

    /// Large groups keep no per-member summary: read the newest message and
    /// count the unread ones (up to [`UNREAD_COUNT_MAX`]) from the timeline.
    fn fill_large_summary(
        &self,
        s: &mut ConversationSummary,
        user: UserId,
        m: &MemberRecord,
    ) -> Result<(), StoreError> {
        let conv = s.conversation_id.clone();
        let head = self.conv_head(&conv)?;
        let upper = if m.left_conv > 0 {
            m.left_conv.min(head)
        } else {
            head
        };
        let lower = s.read_up_to.max(m.joined_after_conv);
        let newest = self.engine.scan(
            Table::Timeline,
            &keys::timeline(&conv, m.joined_after_conv + 1),
            &keys::timeline(&conv, upper + 1),
            true,
            1,
        )?;
        s.last_message = newest
            .first()
            .map(|(_, v)| decode_proto::<Message>("message", v))
            .transpose()?;
        let unread = self.engine.scan(
            Table::Timeline,
            &keys::timeline(&conv, lower + 1),
            &keys::timeline(&conv, upper + 1),
            false,
            UNREAD_COUNT_MAX,
        )?;
        let mut count = 0;
        for (_, v) in &unread {
            if decode_proto::<Message>("message", v)?.sender_id != user {
                count += 1;
            }
        }
        s.unread_count = count;
        Ok(())
    }

    pub(super) fn list_members(
        &self,
        group: u64,
        after: UserId,
        limit: usize,
    ) -> Result<(Vec<MemberRecord>, bool), StoreError> {
        let prefix = keys::user_id(group);
        let mut out = Vec::new();
        let mut start = keys::pair(group, after.saturating_add(1));
        let end = keys::prefix_end(&prefix);
        // Former members are skipped, so read in pages until enough.
        loop {
            let rows = self
                .engine
                .scan(Table::GroupMembers, &start, &end, false, limit + 1)?;
            let exhausted = rows.len() <= limit;
            for (k, v) in &rows {
                let m: MemberRecord = decode_json("member", v)?;
                if m.role() != GroupRole::None {
                    if out.len() == limit {
                        return Ok((out, true));
                    }
                    out.push(m);
                }
                start = keys::pair(group, keys::pair_second(k).saturating_add(1));
            }
            if exhausted {
                return Ok((out, false));
            }
        }
    }

    /// Events of the user's large groups after stream position `after`,
    /// within each membership's window, merged in stream order.
    pub(super) fn read_streams(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<StreamRead, StoreError> {
        let committed = self.stream_head.load(Ordering::SeqCst);
        if committed <= after || limit == 0 {
            return Ok(StreamRead {
                events: Vec::new(),
                position: committed.max(after),
                has_more: false,
            });
        }
        let prefix = keys::user_id(user);
        let groups_of_user = self.engine.scan(
            Table::UserGroups,
            &prefix,
            &keys::prefix_end(&prefix),
            false,
            USER_GROUPS_SCAN_MAX,
        )?;
        // (stream seq, what the member saw before joining, event bytes)
        let mut rows: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        for (k, _) in &groups_of_user {
            let gid = keys::pair_second(k);
            let Some(group) = self.group(gid)? else {
                continue;
            };
            let Some(m) = self.member(gid, user)? else {
                continue;
            };
            if !group.large {
                continue;
            }
            let lower = after.max(m.joined_after_stream);
            let upper = if m.role() == GroupRole::None {
                m.left_stream.min(committed)
            } else {
                committed
            };
            if upper <= lower {
                continue;
            }
            let found = self.engine.scan(
                Table::Stream,
                &keys::pair(gid, lower + 1),
                &keys::pair(gid, upper + 1),
                false,
                limit + 1,
            )?;
            let before_joining = m.joined_after_conv;
            rows.extend(
                found
                    .into_iter()
                    .map(|(k, v)| (keys::pair_second(&k), before_joining, v)),
            );
        }
        // The system stream (feature flag changes) is read by everyone.
        let system = self.engine.scan(
            Table::Stream,
            &keys::pair(keys::SYSTEM_STREAM, after + 1),
            &keys::pair(keys::SYSTEM_STREAM, committed + 1),
            false,
            limit + 1,
        )?;
        rows.extend(
            system
                .into_iter()
                .map(|(k, v)| (keys::pair_second(&k), 0, v)),
        );
        rows.sort_by_key(|(seq, _, _)| *seq);
        let mut events = Vec::new();
        let mut bytes = 0;
        for (i, (_, before_joining, v)) in rows.iter().enumerate() {
            if i == limit || (!events.is_empty() && bytes + v.len() > bytes_max) {
                let position = rows[i - 1].0;
                return Ok(StreamRead {
                    events,
                    position,
                    has_more: true,
                });
            }
            let event = decode_proto::<Event>("event", v)?;
            // A recall or edit of a message from before the member joined
            // is not theirs to see.
            let about = match &event.kind {
                Some(event::Kind::MessageRecalled(r)) => r.conv_seq,
                Some(event::Kind::MessageEdited(e)) => e.conv_seq,
                _ => u64::MAX,
            };
            if about <= *before_joining {
                continue;
            }
            bytes += v.len();
            events.push(event);
        }
        Ok(StreamRead {
            events,
            position: committed,
            has_more: false,
        })
    }

    pub(super) fn receipt_counts(
        &self,
        conv: &str,
        conv_seqs: &[u64],
    ) -> Result<Vec<ReceiptSummary>, StoreError> {
        let members = match groups::parse_group_id(conv) {
            Some(id) => self.group(id)?.map_or(0, |g| g.member_count),
            None => 0,
        };
        conv_seqs
            .iter()
            .map(|&seq| {
                let c: Counts = self
                    .get_json("counts", Table::Counts, &keys::timeline(conv, seq))?
                    .unwrap_or_default();
                Ok(ReceiptSummary {
                    conversation_id: conv.to_string(),
                    conv_seq: seq,
                    delivered_count: c.delivered,
                    read_count: c.read,
                    member_count: members,
                })
            })
            .collect()
    }

    /// Direct peers and co-members of small groups.
    pub(super) fn contacts(&self, user: UserId, limit: usize) -> Result<Vec<UserId>, StoreError> {
        let prefix = keys::user_id(user);
        let rows = self.engine.scan(
            Table::ConvState,
            &prefix,
            &keys::prefix_end(&prefix),
            false,
            CONVERSATIONS_SCAN_MAX,
        )?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (k, _) in rows {
            let conv = String::from_utf8_lossy(&k[8..]).into_owned();
            let ids: Vec<UserId> = if let Some(c) = ConversationId::parse(&conv) {
                vec![c.peer_of(user)]
            } else if let Some(gid) = groups::parse_group_id(&conv) {
                let small = self.group(gid)?.is_some_and(|g| !g.large && !g.dissolved);
                let member = self
                    .member(gid, user)?
                    .is_some_and(|m| m.role() != GroupRole::None);
                if !(small && member) {
                    continue;
                }
                self.list_members(gid, 0, limit)?
                    .0
                    .iter()
                    .map(|m| m.user_id)
                    .collect()
            } else {
                continue;
            };
            for id in ids {
                if id != user && seen.insert(id) {
                    out.push(id);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    pub(super) fn shares_conversation(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        if a == b {
            return Ok(true);
        }
        let direct = ConversationId::direct(a, b).to_string();
        if self
            .engine
            .get(Table::ConvState, &keys::conv_state(a, &direct))?
            .is_some()
        {
            return Ok(true);
        }
        let prefix = keys::user_id(a);
        let rows = self.engine.scan(
            Table::UserGroups,
            &prefix,
            &keys::prefix_end(&prefix),
            false,
            USER_GROUPS_SCAN_MAX,
        )?;
        for (k, _) in rows {
            let gid = keys::pair_second(&k);
            let current = |u| -> Result<bool, StoreError> {
                Ok(self
                    .member(gid, u)?
                    .is_some_and(|m| m.role() != GroupRole::None))
            };
            if current(a)? && current(b)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Decodes rows up to `limit` and about `bytes_max` bytes (always one if
/// any); and whether rows were left. `decode` gives each item with its size
/// as it will be sent.
fn take_bounded<T>(
    rows: &[(Vec<u8>, Vec<u8>)],
    limit: usize,
    bytes_max: usize,
    decode: impl Fn(&[u8]) -> Result<(T, usize), StoreError>,
) -> Result<(Vec<T>, bool), StoreError> {
    let mut out = Vec::with_capacity(rows.len().min(limit));
    let mut bytes = 0;
    for (i, (_, v)) in rows.iter().enumerate() {
        if i == limit {
            return Ok((out, true));
        }
        let (item, size) = decode(v)?;
        if !out.is_empty() && bytes + size > bytes_max {
            return Ok((out, true));
        }
        bytes += size;
        out.push(item);
    }
    Ok((out, false))
}
