//! The read side: plain statements on a pooled connection, each seeing
//! only committed data. Because a log's (and a timeline's, and the
//! stream's) seqs commit in order, reading "everything after N" can never
//! skip an event that commits later.

use std::collections::{HashMap, HashSet};

use pigeon_core::UserId;
use pigeon_core::conversation::ConversationId;
use pigeon_core::groups;
use pigeon_core::store::{
    Delivery, DeliveryStatus, HistoryQuery, HookKind, LogFrom, LogRead, LogReadError, MemberRecord,
    StreamRead,
};
use pigeon_proto::v1::{ConversationSummary, Event, GroupRole, Message, ReceiptSummary, event};
use tokio_postgres::Row;

use crate::groups::{Lock, group, member, member_row};
use crate::messages::{SYSTEM_STREAM, UNREAD_COUNT_MAX};
use crate::tx::{Params, decode_event, decode_message};
use crate::{PgStore, Result, corrupt, i, u};

/// Most conversations a list request considers.
pub const CONVERSATIONS_SCAN_MAX: usize = 10_000;
/// Most failed deliveries a listing returns.
pub const FAILED_SCAN_MAX: usize = 10_000;

pub(crate) async fn query(s: &PgStore, sql: &str, params: &Params<'_>) -> Result<Vec<Row>> {
    let c = s.client().await?;
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

pub(crate) async fn opt(s: &PgStore, sql: &str, params: &Params<'_>) -> Result<Option<Row>> {
    let c = s.client().await?;
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?)
}

/// The committed head and trim point of a user's log.
pub(crate) async fn log_mark(s: &PgStore, user: UserId) -> Result<(u64, u64)> {
    Ok(opt(
        s,
        "SELECT head, trimmed_through FROM logs WHERE user_id = $1",
        &[&i(user)],
    )
    .await?
    .map_or((0, 0), |r| (u(r.get(0)), u(r.get(1)))))
}

pub(crate) async fn read_log(
    s: &PgStore,
    user: UserId,
    from: LogFrom,
    limit: usize,
    bytes_max: usize,
) -> Result<LogRead, LogReadError> {
    let (head, trimmed) = log_mark(s, user).await?;
    let after = match from {
        LogFrom::Oldest => trimmed,
        LogFrom::After(seq) => seq,
    };
    if after < trimmed {
        return Err(LogReadError::Trimmed {
            trimmed_through: trimmed,
        });
    }
    if after >= head || limit == 0 {
        return Ok(LogRead {
            events: Vec::new(),
            has_more: false,
        });
    }
    let rows = query(
        s,
        "SELECT event FROM log_events WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        &[&i(user), &i(after), &(limit as i64 + 1)],
    )
    .await?;
    // A trim that committed before the scan may have removed entries we
    // needed: its trim point committed with the deletions.
    let (_, now_trimmed) = log_mark(s, user).await?;
    if after < now_trimmed {
        return Err(LogReadError::Trimmed {
            trimmed_through: now_trimmed,
        });
    }
    let (mut events, has_more) = take_bounded(&rows, limit, bytes_max, decode_event)?;
    current_messages(s, &mut events).await?;
    Ok(LogRead { events, has_more })
}

/// A message event shows its message as the timeline holds it now
/// (recalled, edited), as on the embedded store, whose log events refer to
/// the timeline instead of holding a copy: a recalled message's content is
/// not served again by a later sync.
async fn current_messages(s: &PgStore, events: &mut [Event]) -> Result<()> {
    let (mut convs, mut seqs) = (Vec::new(), Vec::new());
    for e in events.iter() {
        if let Some(event::Kind::Message(m)) = &e.kind {
            convs.push(m.conversation_id.as_str());
            seqs.push(i(m.conv_seq));
        }
    }
    if convs.is_empty() {
        return Ok(());
    }
    let rows = query(
        s,
        "SELECT m.conversation_id, m.conv_seq, m.message FROM messages m \
         JOIN unnest($1::text[], $2::bigint[]) AS w(c, s) \
           ON m.conversation_id = w.c AND m.conv_seq = w.s",
        &[&convs, &seqs],
    )
    .await?;
    let mut now: HashMap<(String, u64), Message> = HashMap::with_capacity(rows.len());
    for r in &rows {
        now.insert((r.get(0), u(r.get(1))), decode_message(r.get(2))?);
    }
    for e in events.iter_mut() {
        if let Some(event::Kind::Message(m)) = &mut e.kind
            && let Some(current) = now.remove(&(m.conversation_id.clone(), m.conv_seq))
        {
            *m = current;
        }
    }
    Ok(())
}

pub(crate) async fn history(s: &PgStore, q: &HistoryQuery) -> Result<(Vec<Message>, bool)> {
    if q.limit == 0 {
        return Ok((Vec::new(), false));
    }
    let before = if q.before == 0 { i64::MAX } else { i(q.before) };
    // Messages the viewer deleted for themselves are left out before the
    // page is cut, so a page is never empty while older messages exist.
    let rows = query(
        s,
        "SELECT m.message FROM messages m \
         WHERE m.conversation_id = $1 AND m.conv_seq > $2 AND m.conv_seq < $3 \
           AND NOT EXISTS (SELECT 1 FROM hidden h WHERE h.user_id = $4 \
               AND h.conversation_id = m.conversation_id AND h.conv_seq = m.conv_seq) \
         ORDER BY m.conv_seq DESC LIMIT $5",
        &[
            &q.conversation_id,
            &i(q.lower),
            &before,
            &i(q.viewer),
            &(q.limit as i64 + 1),
        ],
    )
    .await?;
    take_bounded(&rows, q.limit, q.bytes_max, decode_message)
}

const SUMMARY_COLUMNS: &str =
    "conversation_id, peer_user_id, peer_username, last_message, unread_count, read_up_to";

fn summary_row(r: &Row) -> Result<ConversationSummary> {
    let last: Option<&[u8]> = r.get("last_message");
    Ok(ConversationSummary {
        conversation_id: r.get("conversation_id"),
        peer_user_id: u(r.get("peer_user_id")),
        peer_username: r.get("peer_username"),
        last_message: last.map(decode_message).transpose()?,
        unread_count: u(r.get("unread_count")),
        read_up_to: u(r.get("read_up_to")),
        ..Default::default()
    })
}

pub(crate) async fn conversation(
    s: &PgStore,
    user: UserId,
    conv: &str,
) -> Result<Option<ConversationSummary>> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM conv_states WHERE user_id = $1 AND conversation_id = $2"
    );
    opt(s, &sql, &[&i(user), &conv])
        .await?
        .as_ref()
        .map(summary_row)
        .transpose()
}

pub(crate) async fn list_conversations(
    s: &PgStore,
    user: UserId,
    limit: usize,
) -> Result<Vec<ConversationSummary>> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM conv_states WHERE user_id = $1 \
         ORDER BY conversation_id COLLATE \"C\" LIMIT $2"
    );
    let rows = query(s, &sql, &[&i(user), &(CONVERSATIONS_SCAN_MAX as i64)]).await?;
    let c = s.client().await?;
    let mut all = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut summary = summary_row(r)?;
        let mut created = 0;
        if let Some(id) = groups::parse_group_id(&summary.conversation_id)
            && let Some(g) = group(&c, id, Lock::None).await?
        {
            let m = member(&c, id, user).await?;
            summary.my_role = m.as_ref().map_or(GroupRole::None as i32, |m| m.role);
            if g.large
                && let Some(m) = &m
            {
                fill_large_summary(&c, &mut summary, user, m).await?;
            }
            created = g.created_at_ms;
            summary.group = Some(g.info());
        }
        let activity = summary
            .last_message
            .as_ref()
            .map_or((created, 0), |m| (m.sent_at_ms, m.conv_seq));
        all.push((activity, summary));
    }
    all.sort_by(|(a, sa), (b, sb)| {
        b.cmp(a)
            .then_with(|| sa.conversation_id.cmp(&sb.conversation_id))
    });
    Ok(all.into_iter().take(limit).map(|(_, s)| s).collect())
}

/// Large groups keep no per-member summary: read the newest visible
/// message and count the unread ones (up to [`UNREAD_COUNT_MAX`]).
async fn fill_large_summary(
    c: &deadpool_postgres::Object,
    s: &mut ConversationSummary,
    user: UserId,
    m: &MemberRecord,
) -> Result<()> {
    let upper = if m.left_conv > 0 {
        i(m.left_conv)
    } else {
        i64::MAX
    };
    let lower = s.read_up_to.max(m.joined_after_conv);
    let stmt = c
        .prepare_cached(
            "SELECT message FROM messages WHERE conversation_id = $1 AND conv_seq > $2 \
             AND conv_seq <= $3 ORDER BY conv_seq DESC LIMIT 1",
        )
        .await?;
    let newest = c
        .query_opt(
            &stmt,
            &[&s.conversation_id, &i(m.joined_after_conv), &upper],
        )
        .await?;
    s.last_message = newest.map(|r| decode_message(r.get(0))).transpose()?;
    let stmt = c
        .prepare_cached(
            "SELECT count(*) FROM (SELECT sender_id FROM messages WHERE conversation_id = $1 \
               AND conv_seq > $2 AND conv_seq <= $3 ORDER BY conv_seq LIMIT $4) t \
             WHERE sender_id <> $5",
        )
        .await?;
    let unread: i64 = c
        .query_one(
            &stmt,
            &[
                &s.conversation_id,
                &i(lower),
                &upper,
                &(UNREAD_COUNT_MAX as i64),
                &i(user),
            ],
        )
        .await?
        .get(0);
    s.unread_count = u(unread);
    Ok(())
}

pub(crate) async fn list_members(
    s: &PgStore,
    group: u64,
    after: UserId,
    limit: usize,
) -> Result<(Vec<MemberRecord>, bool)> {
    if after >= i64::MAX as u64 {
        return Ok((Vec::new(), false));
    }
    let rows = query(
        s,
        "SELECT user_id, username, role, joined_at_ms, joined_after_conv, left_conv, \
             joined_after_stream, left_stream FROM group_members \
         WHERE group_id = $1 AND user_id > $2 AND role <> 0 ORDER BY user_id LIMIT $3",
        &[&i(group), &i(after), &(limit as i64 + 1)],
    )
    .await?;
    let more = rows.len() > limit;
    Ok((rows.iter().take(limit).map(member_row).collect(), more))
}

/// Events of the user's large groups after stream position `after`,
/// within each membership's window, and of the system stream, merged in
/// stream order.
pub(crate) async fn read_streams(
    s: &PgStore,
    user: UserId,
    after: u64,
    limit: usize,
    bytes_max: usize,
) -> Result<StreamRead> {
    // Positions commit in order (the counter's row lock), so everything up
    // to the committed counter is readable and nothing below it will come.
    let committed = u(
        opt(s, "SELECT value FROM counters WHERE name = 'stream'", &[])
            .await?
            .ok_or_else(|| corrupt("counters", "no stream counter"))?
            .get(0),
    );
    if committed <= after || limit == 0 {
        return Ok(StreamRead {
            events: Vec::new(),
            position: committed.max(after),
            has_more: false,
        });
    }
    let rows = query(
        s,
        "SELECT e.seq, m.joined_after_conv AS before_joining, e.event \
         FROM group_members m JOIN groups g ON g.id = m.group_id AND g.large \
         JOIN stream_events e ON e.group_id = m.group_id \
             AND e.seq > GREATEST($2, m.joined_after_stream) \
             AND e.seq <= CASE WHEN m.role = 0 THEN LEAST(m.left_stream, $3) ELSE $3 END \
         WHERE m.user_id = $1 \
         UNION ALL \
         SELECT e.seq, 0, e.event FROM stream_events e \
         WHERE e.group_id = $4 AND e.seq > $2 AND e.seq <= $3 \
         ORDER BY 1 LIMIT $5",
        &[
            &i(user),
            &i(after),
            &i(committed),
            &i(SYSTEM_STREAM),
            &(limit as i64 + 1),
        ],
    )
    .await?;
    let mut events = Vec::new();
    let mut bytes = 0;
    for (n, r) in rows.iter().enumerate() {
        let v: &[u8] = r.get(2);
        if n == limit || (!events.is_empty() && bytes + v.len() > bytes_max) {
            return Ok(StreamRead {
                events,
                position: u(rows[n - 1].get(0)),
                has_more: true,
            });
        }
        let event: Event = decode_event(v)?;
        // A recall or edit of a message from before the member joined is
        // not theirs to see.
        let about = match &event.kind {
            Some(event::Kind::MessageRecalled(r)) => r.conv_seq,
            Some(event::Kind::MessageEdited(e)) => e.conv_seq,
            _ => u64::MAX,
        };
        if about <= u(r.get(1)) {
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

pub(crate) async fn receipt_counts(
    s: &PgStore,
    conv: &str,
    conv_seqs: &[u64],
) -> Result<Vec<ReceiptSummary>> {
    let members = match groups::parse_group_id(conv) {
        Some(id) => {
            let c = s.client().await?;
            group(&c, id, Lock::None)
                .await?
                .map_or(0, |g| g.member_count)
        }
        None => 0,
    };
    let seqs: Vec<i64> = conv_seqs.iter().map(|&x| i(x)).collect();
    let counts: HashMap<u64, (u32, u32)> = query(
        s,
        "SELECT conv_seq, delivered_count, read_count FROM messages \
         WHERE conversation_id = $1 AND conv_seq = ANY($2)",
        &[&conv, &seqs],
    )
    .await?
    .iter()
    .map(|r| {
        let c = |n: i32| u32::try_from(n).unwrap_or(0);
        (u(r.get(0)), (c(r.get(1)), c(r.get(2))))
    })
    .collect();
    Ok(conv_seqs
        .iter()
        .map(|&seq| {
            let (delivered, read) = counts.get(&seq).copied().unwrap_or_default();
            ReceiptSummary {
                conversation_id: conv.to_string(),
                conv_seq: seq,
                delivered_count: delivered,
                read_count: read,
                member_count: members,
            }
        })
        .collect())
}

/// Direct peers and co-members of small groups.
pub(crate) async fn contacts(s: &PgStore, user: UserId, limit: usize) -> Result<Vec<UserId>> {
    let rows = query(
        s,
        "SELECT conversation_id FROM conv_states WHERE user_id = $1 \
         ORDER BY conversation_id COLLATE \"C\" LIMIT $2",
        &[&i(user), &(CONVERSATIONS_SCAN_MAX as i64)],
    )
    .await?;
    let c = s.client().await?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in rows {
        let conv: String = r.get(0);
        let ids: Vec<UserId> = if let Some(d) = ConversationId::parse(&conv) {
            vec![d.peer_of(user)]
        } else if let Some(gid) = groups::parse_group_id(&conv) {
            let small = group(&c, gid, Lock::None)
                .await?
                .is_some_and(|g| !g.large && !g.dissolved);
            let current = member(&c, gid, user)
                .await?
                .is_some_and(|m| m.role() != GroupRole::None);
            if !(small && current) {
                continue;
            }
            list_members(s, gid, 0, limit)
                .await?
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

pub(crate) async fn shares_conversation(s: &PgStore, a: UserId, b: UserId) -> Result<bool> {
    if a == b {
        return Ok(true);
    }
    let direct = ConversationId::direct(a, b).to_string();
    let row = opt(
        s,
        "SELECT EXISTS (SELECT 1 FROM conv_states WHERE user_id = $1 AND conversation_id = $3) \
             OR EXISTS (SELECT 1 FROM group_members x JOIN group_members y \
                 ON y.group_id = x.group_id AND y.user_id = $2 AND y.role <> 0 \
                 WHERE x.user_id = $1 AND x.role <> 0)",
        &[&i(a), &i(b), &direct],
    )
    .await?;
    Ok(row.is_some_and(|r| r.get(0)))
}

const DELIVERY_COLUMNS: &str = "id, endpoint, kind, conversation_id, conv_seq, recipient, \
    created_at_ms, attempts, next_attempt_ms, failed, last_error";

fn delivery_row(r: &Row) -> Result<Delivery> {
    let kind = match r.get::<_, &str>("kind") {
        "message.created" => HookKind::MessageCreated,
        "push.needed" => HookKind::PushNeeded,
        other => return Err(corrupt("delivery", format!("unknown kind {other:?}"))),
    };
    Ok(Delivery {
        id: u(r.get("id")),
        endpoint: r.get("endpoint"),
        kind,
        conversation_id: r.get("conversation_id"),
        conv_seq: u(r.get("conv_seq")),
        recipient: u(r.get("recipient")),
        created_at_ms: r.get("created_at_ms"),
        attempts: u32::try_from(r.get::<_, i32>("attempts")).unwrap_or(0),
        next_attempt_ms: r.get("next_attempt_ms"),
        status: if r.get("failed") {
            DeliveryStatus::Failed
        } else {
            DeliveryStatus::Pending
        },
        last_error: r.get("last_error"),
    })
}

pub(crate) async fn deliveries_due(
    s: &PgStore,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<Delivery>> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM outbox WHERE NOT failed AND next_attempt_ms <= $1 \
         ORDER BY next_attempt_ms, id LIMIT $2"
    );
    query(s, &sql, &[&now_ms, &(limit as i64)])
        .await?
        .iter()
        .map(delivery_row)
        .collect()
}

/// Due deliveries, each handed to one caller: one statement locks the due
/// rows no other node holds (`SKIP LOCKED`) and moves their due time a
/// lease ahead, so a concurrent claim on another node gets other rows.
pub(crate) async fn claim_deliveries(
    s: &PgStore,
    now_ms: i64,
    lease_ms: i64,
    limit: usize,
) -> Result<Vec<Delivery>> {
    let sql = format!(
        "UPDATE outbox SET next_attempt_ms = $1 + $3 WHERE id IN (\
           SELECT id FROM outbox WHERE NOT failed AND next_attempt_ms <= $1 \
           ORDER BY next_attempt_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING {DELIVERY_COLUMNS}"
    );
    let mut due: Vec<Delivery> = query(s, &sql, &[&now_ms, &(limit as i64), &lease_ms.max(0)])
        .await?
        .iter()
        .map(delivery_row)
        .collect::<Result<_>>()?;
    due.sort_by_key(|d| d.id);
    Ok(due)
}

pub(crate) async fn deliveries_failed(s: &PgStore, limit: usize) -> Result<Vec<Delivery>> {
    let sql =
        format!("SELECT {DELIVERY_COLUMNS} FROM outbox WHERE failed ORDER BY id DESC LIMIT $1");
    query(s, &sql, &[&(limit.min(FAILED_SCAN_MAX) as i64)])
        .await?
        .iter()
        .map(delivery_row)
        .collect()
}

/// Decodes rows' first column up to `limit` and about `bytes_max` bytes
/// (always one if any); and whether rows were left.
fn take_bounded<T>(
    rows: &[Row],
    limit: usize,
    bytes_max: usize,
    decode: impl Fn(&[u8]) -> Result<T>,
) -> Result<(Vec<T>, bool)> {
    let mut out = Vec::with_capacity(rows.len().min(limit));
    let mut bytes = 0;
    for (n, r) in rows.iter().enumerate() {
        let v: &[u8] = r.get(0);
        if n == limit || (!out.is_empty() && bytes + v.len() > bytes_max) {
            return Ok((out, true));
        }
        bytes += v.len();
        out.push(decode(v)?);
    }
    Ok((out, false))
}
