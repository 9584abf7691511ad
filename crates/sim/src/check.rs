//! The invariants, checked on what the clients observed ([`Observed`]);
//! the same as `scripts/crash_check.py` checks after the crash test, plus
//! one the simulation can see and the crash test cannot: a reader that
//! followed its log live (pushes and syncs across reconnects and server
//! crashes) ends with exactly the log drained at the end.
//!
//! - No acknowledged message lost: each is in the log of every participant
//!   of its conversation, at the acknowledged (conversation, conv_seq).
//! - No duplicates: a (sender, client message id) appears at most once in
//!   each log, and at one (conversation, conv_seq) only.
//! - Order: each log's `seq` (and, for shared-stream events, `group_seq`)
//!   strictly increases; within a log each conversation's conv_seq strictly
//!   increases; a writer's acknowledged messages in a conversation are in
//!   the order it sent them.
//! - Same for everyone: every participant of a conversation sees the same
//!   conv_seq → (sender, client message id) sequence; nobody else sees it.
//! - Nothing invented: every stored message is in its sender's record, in
//!   the conversation it was sent to, with its client message id as text.
//! - Live equals drained (see above; own-log and shared-stream events
//!   compared separately), and every writer finished.
//!
//! Messages sent and never acknowledged (a writer crashed with them in
//! flight) may be stored or not: counted, not violations.
//!
//! The conversations' histories, read at the end, must agree with the
//! logs: with every event kept, hold exactly their messages (and no reader
//! is told to resync). With a retention (`Observed::retain`) the logs keep
//! only their newest events, so the histories are the truth: acknowledged
//! messages are looked for there, each log must hold a conversation's
//! newest messages without a gap, and a reader's live log is checked piece
//! by piece between resyncs, its last piece against the drained log.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::observed::{Kind, LogEvent, Msg, Observed, Target};

/// Violations shown per kind in a report.
pub const SHOWN_PER_KIND_MAX: usize = 5;

/// What the checker found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Violations by kind (e.g. "acknowledged but lost"), each with details.
    pub violations: BTreeMap<&'static str, Vec<String>>,
    /// Messages sent.
    pub sent: usize,
    /// Messages acknowledged.
    pub acks: usize,
    /// Acknowledgements that answered a retry of a stored message.
    pub duplicate_acks: usize,
    /// Distinct messages stored.
    pub stored: usize,
    /// Sent, never acknowledged, and stored anyway.
    pub unacked_stored: usize,
    /// Sent, never acknowledged, and not stored.
    pub unacked_not_stored: usize,
    /// Message events in all drained logs.
    pub delivered: usize,
    /// Events checked in readers' live logs.
    pub live_events: usize,
    /// Times a reader was told to resync (a retention trimmed its key).
    pub resyncs: usize,
}

impl Report {
    fn bad(&mut self, kind: &'static str, detail: impl Into<String>) {
        self.violations.entry(kind).or_default().push(detail.into());
    }

    /// No violation.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Kinds of violations found.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.violations.keys().copied().collect()
    }

    /// The first violation, for a one-line summary.
    pub fn first(&self) -> Option<String> {
        let (kind, items) = self.violations.iter().next()?;
        Some(format!("{kind}: {}", items[0]))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent={} acks={} (duplicate {}) stored={} unacknowledged stored={} not stored={} \
             delivered={} live events={} resyncs={} violations={}",
            self.sent,
            self.acks,
            self.duplicate_acks,
            self.stored,
            self.unacked_stored,
            self.unacked_not_stored,
            self.delivered,
            self.live_events,
            self.resyncs,
            self.violations.values().map(Vec::len).sum::<usize>()
        )?;
        for (kind, items) in &self.violations {
            write!(f, "\n  VIOLATION {kind}: {}", items.len())?;
            for d in items.iter().take(SHOWN_PER_KIND_MAX) {
                write!(f, "\n    {d}")?;
            }
        }
        Ok(())
    }
}

/// A stored message's identity: (sender, client message id).
type Key = (String, String);

/// Each conversation's messages by conv_seq.
type BySeq = BTreeMap<String, BTreeMap<u64, Key>>;

/// Where each message is stored: (conversation, conv_seq).
type Placed = BTreeMap<Key, BTreeSet<(String, u64)>>;

/// Each conversation as each user's log holds it: conversation -> user ->
/// [(conv_seq, message)].
type Views<'a> = BTreeMap<&'a str, BTreeMap<&'a str, Vec<(u64, Key)>>>;

/// Checks every invariant.
pub fn check(o: &Observed) -> Report {
    let mut r = Report::default();
    for e in &o.client_errors {
        r.bad("client error", e.clone());
    }
    // client_msg_id -> (writer, target, n)
    let mut sends: BTreeMap<&str, (&str, &Target, u64)> = BTreeMap::new();
    for w in &o.writers {
        if !w.finished {
            r.bad("writer did not finish", w.user.clone());
        }
        for s in &w.sent {
            r.sent += 1;
            if sends
                .insert(&s.client_msg_id, (&w.user, &s.target, s.n))
                .is_some()
            {
                r.bad("harness", format!("{} sent twice", s.client_msg_id));
            }
        }
    }
    for user in o.users.keys() {
        if !o.drained.contains_key(user) {
            r.bad("harness", format!("no drained log for {user}"));
        }
    }

    let mut views: Views<'_> = BTreeMap::new();
    let mut placed: BTreeMap<Key, BTreeSet<(String, u64)>> = BTreeMap::new();
    for (user, log) in &o.drained {
        check_order(&mut r, &format!("{user} (drained)"), log);
        let mut seen: BTreeMap<Key, String> = BTreeMap::new();
        for ev in log {
            let Kind::Message(m) = &ev.kind else {
                continue;
            };
            r.delivered += 1;
            // Protocol version 2 tells other users no client message id:
            // there the text, which writers make equal to it, stands for it.
            // The sender's own copies must carry it.
            if m.client_msg_id.is_empty() && m.sender == *user {
                r.bad(
                    "client_msg_id missing",
                    format!("{user}: {} conv_seq {}", m.conversation_id, m.conv_seq),
                );
            }
            let key = msg_key(m);
            let at = format!("{user} seq {} gseq {}", ev.seq, ev.group_seq);
            if let Some(first) = seen.insert(key.clone(), at.clone()) {
                r.bad(
                    "delivered twice",
                    format!("{} {}: at {first} and again at {at}", key.0, key.1),
                );
            }
            views
                .entry(&m.conversation_id)
                .or_default()
                .entry(user)
                .or_default()
                .push((m.conv_seq, key.clone()));
            placed
                .entry(key.clone())
                .or_default()
                .insert((m.conversation_id.clone(), m.conv_seq));
            check_message(&mut r, o, &sends, &at, Some(user), m);
        }
    }
    for (key, places) in &placed {
        if places.len() > 1 {
            r.bad(
                "delivered twice",
                format!("{} {} stored at {places:?}", key.0, key.1),
            );
        }
    }
    r.stored = placed.len();

    let in_logs = check_participants(&mut r, o, &views, &sends);
    let (by_conv_seq, placed) = check_histories(&mut r, o, &sends, &views, &in_logs);
    if o.retain > 0 {
        // Logs may have lost their oldest messages: the histories are
        // the record of what was stored.
        r.stored = placed.len();
    }
    check_acks(&mut r, o, &by_conv_seq, &placed);
    check_live(&mut r, o, &by_conv_seq);
    r
}

/// A message's identity. Protocol version 2 tells other users no client
/// message id: there the text, which writers make equal to it, stands for
/// it.
fn msg_key(m: &Msg) -> Key {
    let id = if m.client_msg_id.is_empty() {
        &m.text
    } else {
        &m.client_msg_id
    };
    (m.sender.clone(), id.clone())
}

/// A stored message was sent, as it was sent, by its sender, to where it
/// is; `viewer` (a log's owner) must take part in it.
fn check_message(
    r: &mut Report,
    o: &Observed,
    sends: &BTreeMap<&str, (&str, &Target, u64)>,
    at: &str,
    viewer: Option<&str>,
    m: &Msg,
) {
    let (sender, id) = msg_key(m);
    let Some(&(writer, target, _)) = sends.get(id.as_str()) else {
        r.bad("never sent", format!("{at}: {sender} {id}"));
        return;
    };
    if writer != m.sender {
        r.bad(
            "never sent",
            format!("{at}: {} {} was sent by {writer}", m.sender, id),
        );
        return;
    }
    if m.text != id {
        r.bad(
            "content changed",
            format!("{at}: {} has text {:?}", id, m.text),
        );
    }
    if o.users.get(&m.sender) != Some(&m.sender_id) {
        r.bad(
            "sender changed",
            format!("{at}: {} from id {}", id, m.sender_id),
        );
    }
    match target {
        Target::Conversation(c) if *c != m.conversation_id => r.bad(
            "wrong conversation",
            format!("{at}: {} sent to {c}, stored in {}", id, m.conversation_id),
        ),
        Target::Conversation(_) => {}
        Target::User(to) => {
            let want = direct_id(o, writer, to);
            if want.as_deref() != Some(m.conversation_id.as_str()) {
                r.bad(
                    "wrong conversation",
                    format!(
                        "{at}: {} from {writer} to {to} stored in {}",
                        id, m.conversation_id
                    ),
                );
            }
            if let Some(user) = viewer
                && user != writer
                && user != to
            {
                r.bad(
                    "wrong participant",
                    format!("{at}: {id} from {writer} to {to}"),
                );
            }
        }
    }
}

/// Each conversation's history, read at the end, is the record of what was
/// stored: every message in it is valid and stored once, and the logs
/// agree with it. With every event kept, the logs hold exactly the
/// histories' messages; with a retention, each participant's log holds a
/// conversation's newest messages, from some point on, without a gap.
/// Returns each conversation's conv_seq → message, and where each message
/// is stored, from the histories.
fn check_histories(
    r: &mut Report,
    o: &Observed,
    sends: &BTreeMap<&str, (&str, &Target, u64)>,
    views: &Views<'_>,
    in_logs: &BySeq,
) -> (BySeq, Placed) {
    let mut by_conv_seq = BySeq::new();
    let mut placed = Placed::new();
    for (conv, history) in &o.histories {
        let seqs = by_conv_seq.entry(conv.clone()).or_default();
        let mut last = 0;
        for m in history {
            let at = format!("history of {conv} #{}", m.conv_seq);
            if m.conversation_id != *conv || m.conv_seq <= last {
                r.bad(
                    "history out of order",
                    format!("{at}: {} after #{last}", m.conversation_id),
                );
            }
            last = last.max(m.conv_seq);
            let key = msg_key(m);
            check_message(r, o, sends, &at, None, m);
            seqs.insert(m.conv_seq, key.clone());
            placed
                .entry(key)
                .or_default()
                .insert((conv.clone(), m.conv_seq));
        }
    }
    for (key, places) in &placed {
        if places.len() > 1 {
            r.bad(
                "stored twice",
                format!("{} {} in the histories at {places:?}", key.0, key.1),
            );
        }
    }
    for (conv, logged) in in_logs {
        let Some(history) = by_conv_seq.get(conv) else {
            r.bad(
                "log differs from history",
                format!("{conv}: no history read"),
            );
            continue;
        };
        for (cseq, key) in logged {
            if history.get(cseq) != Some(key) {
                r.bad(
                    "log differs from history",
                    format!(
                        "{conv} #{cseq}: {key:?} in the logs, {:?} in the history",
                        history.get(cseq)
                    ),
                );
            }
        }
        if o.retain == 0 && logged.len() != history.len() {
            r.bad(
                "log differs from history",
                format!(
                    "{conv}: {} messages in the logs, {} in the history",
                    logged.len(),
                    history.len()
                ),
            );
        }
    }
    if o.retain > 0 {
        for (conv, per_user) in views {
            let Some(history) = by_conv_seq.get(*conv) else {
                continue;
            };
            for (user, seqs) in per_user {
                let mut got: Vec<(u64, Key)> = seqs.clone();
                got.sort();
                let from = got.first().map_or(u64::MAX, |(s, _)| *s);
                let want: Vec<(u64, Key)> = history
                    .range(from..)
                    .map(|(s, k)| (*s, k.clone()))
                    .collect();
                if got != want {
                    r.bad(
                        "gap in log",
                        format!(
                            "{user}: {conv} from #{from}: {} messages in the log, {} in the history",
                            got.len(),
                            want.len()
                        ),
                    );
                }
            }
        }
    }
    (by_conv_seq, placed)
}

/// `seq` and `group_seq` strictly increase through a log, and so does each
/// conversation's conv_seq.
fn check_order(r: &mut Report, who: &str, log: &[LogEvent]) {
    let (mut seq, mut gseq) = (0, 0);
    let mut conv: BTreeMap<&str, u64> = BTreeMap::new();
    for ev in log {
        if ev.seq > 0 {
            if ev.seq <= seq {
                r.bad(
                    "log seq not increasing",
                    format!("{who}: {} after {seq}", ev.seq),
                );
            }
            seq = seq.max(ev.seq);
        }
        if ev.group_seq > 0 {
            if ev.group_seq <= gseq {
                r.bad(
                    "group_seq not increasing",
                    format!("{who}: {} after {gseq}", ev.group_seq),
                );
            }
            gseq = gseq.max(ev.group_seq);
        }
        if ev.seq == 0 && ev.group_seq == 0 {
            r.bad("harness", format!("{who}: an event with neither seq: {ev}"));
        }
        if let Kind::Message(m) = &ev.kind {
            let last = conv.entry(&m.conversation_id).or_default();
            if m.conv_seq <= *last {
                r.bad(
                    "conv_seq not increasing",
                    format!("{who}: {} #{} after #{last}", m.conversation_id, m.conv_seq),
                );
            }
            *last = (*last).max(m.conv_seq);
        }
    }
}

/// The direct conversation between two users, `d:<low id>:<high id>` as
/// the protocol documents it.
fn direct_id(o: &Observed, a: &str, b: &str) -> Option<String> {
    let (a, b) = (*o.users.get(a)?, *o.users.get(b)?);
    Some(format!("d:{}:{}", a.min(b), a.max(b)))
}

/// Every participant sees the same sequence; nobody else sees it. Returns
/// each conversation's conv_seq → message.
fn check_participants(
    r: &mut Report,
    o: &Observed,
    views: &Views<'_>,
    sends: &BTreeMap<&str, (&str, &Target, u64)>,
) -> BTreeMap<String, BTreeMap<u64, Key>> {
    let mut by_conv_seq = BTreeMap::new();
    for (conv, per_user) in views {
        let mut union: BTreeMap<u64, Key> = BTreeMap::new();
        for (user, seqs) in per_user {
            for (cseq, key) in seqs {
                let there = union.entry(*cseq).or_insert_with(|| key.clone());
                if there != key {
                    r.bad(
                        "participants disagree",
                        format!("{conv} #{cseq}: {there:?} and {key:?} ({user})"),
                    );
                }
            }
        }
        let participants: BTreeSet<&str> = if *conv == o.group {
            o.group_members.iter().map(String::as_str).collect()
        } else {
            let mut p = BTreeSet::new();
            for (sender, mid) in union.values() {
                if let Some((w, Target::User(to), _)) = sends.get(mid.as_str())
                    && w == sender
                {
                    p.insert(*w);
                    p.insert(to.as_str());
                }
            }
            p
        };
        let expected: Vec<(u64, Key)> = union.iter().map(|(s, k)| (*s, k.clone())).collect();
        let everyone: BTreeSet<&str> = participants
            .iter()
            .chain(per_user.keys())
            .copied()
            .collect();
        for user in everyone {
            if !participants.contains(user) {
                r.bad("wrong participant", format!("{user} sees {conv}"));
                continue;
            }
            if o.retain > 0 {
                // A retention may have trimmed the oldest of them from this
                // log: `check_histories` checks it against the history.
                continue;
            }
            let mut got = per_user.get(user).cloned().unwrap_or_default();
            got.sort();
            if got != expected {
                let mine: BTreeSet<&Key> = got.iter().map(|(_, k)| k).collect();
                let missing: Vec<&Key> = expected
                    .iter()
                    .map(|(_, k)| k)
                    .filter(|k| !mine.contains(k))
                    .take(3)
                    .collect();
                r.bad(
                    "participants disagree",
                    format!(
                        "{conv}: {user} has {} of {} messages, missing e.g. {missing:?}",
                        got.len(),
                        expected.len()
                    ),
                );
            }
        }
        by_conv_seq.insert(conv.to_string(), union);
    }
    by_conv_seq
}

/// Acknowledged means stored where the acknowledgement said, and a
/// writer's acknowledged messages are stored in send order.
fn check_acks(
    r: &mut Report,
    o: &Observed,
    by_conv_seq: &BTreeMap<String, BTreeMap<u64, Key>>,
    placed: &BTreeMap<Key, BTreeSet<(String, u64)>>,
) {
    for w in &o.writers {
        let mut last_in_conv: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
        for s in &w.sent {
            let key = (w.user.clone(), s.client_msg_id.clone());
            let Some(ack) = &s.ack else {
                if placed.contains_key(&key) {
                    r.unacked_stored += 1;
                } else {
                    r.unacked_not_stored += 1;
                }
                continue;
            };
            r.acks += 1;
            r.duplicate_acks += usize::from(ack.duplicate);
            let there = by_conv_seq
                .get(&ack.conversation_id)
                .and_then(|c| c.get(&ack.conv_seq));
            if there != Some(&key) {
                let elsewhere = placed.get(&key);
                if there.is_none() && elsewhere.is_none() {
                    r.bad(
                        "acknowledged but lost",
                        format!(
                            "{} {} acked at {}#{}",
                            w.user, s.client_msg_id, ack.conversation_id, ack.conv_seq
                        ),
                    );
                } else {
                    r.bad(
                        "ack mismatch",
                        format!(
                            "{} {} acked at {}#{}; there: {there:?}; stored at {elsewhere:?}",
                            w.user, s.client_msg_id, ack.conversation_id, ack.conv_seq
                        ),
                    );
                }
            }
            if let Target::Conversation(c) = &s.target
                && *c != ack.conversation_id
            {
                r.bad(
                    "wrong conversation",
                    format!(
                        "{} {} sent to {c}, acked in {}",
                        w.user, s.client_msg_id, ack.conversation_id
                    ),
                );
            }
            if let Some((prev, prev_id)) = last_in_conv.get(ack.conversation_id.as_str())
                && ack.conv_seq <= *prev
            {
                r.bad(
                    "send order",
                    format!(
                        "{} in {}: {} (#{}) sent after {prev_id} (#{prev})",
                        w.user, ack.conversation_id, s.client_msg_id, ack.conv_seq
                    ),
                );
            }
            last_in_conv.insert(&ack.conversation_id, (ack.conv_seq, &s.client_msg_id));
        }
    }
    if r.acks == 0 {
        r.bad("harness", "no message was acknowledged: nothing was tested");
    }
}

/// A reader's live log is ordered and holds exactly its drained log: the
/// same own-log events and the same shared-stream events. (How the two
/// interleave depends on when each sync ran: a sync reads the own log
/// first, then the streams.)
fn check_live(r: &mut Report, o: &Observed, history: &BySeq) {
    for (user, at) in &o.resyncs {
        r.resyncs += at.len();
        if o.retain == 0 && !at.is_empty() {
            r.bad(
                "unexpected resync",
                format!("{user} at {at:?}, with every event kept"),
            );
        }
    }
    if o.retain > 0 {
        check_live_pieces(r, o, history);
        return;
    }
    for (user, live) in &o.live {
        r.live_events += live.len();
        check_order(r, &format!("{user} (live)"), live);
        let Some(drained) = o.drained.get(user) else {
            continue;
        };
        for (which, of) in [
            (
                "own log",
                (|e: &LogEvent| e.seq > 0) as fn(&LogEvent) -> bool,
            ),
            ("shared streams", |e: &LogEvent| e.group_seq > 0),
        ] {
            let live: Vec<&LogEvent> = live.iter().filter(|e| of(e)).collect();
            let drained: Vec<&LogEvent> = drained.iter().filter(|e| of(e)).collect();
            if live == drained {
                continue;
            }
            let at = live
                .iter()
                .zip(&drained)
                .position(|(a, b)| a != b)
                .unwrap_or(live.len().min(drained.len()));
            let show = |log: &[&LogEvent]| log.get(at).map_or("the end".into(), |e| e.to_string());
            r.bad(
                "live log differs from drained log",
                format!(
                    "{user}, {which}: {} events live, {} drained; first difference at {at}: \
                     live {}, drained {}",
                    live.len(),
                    drained.len(),
                    show(&live),
                    show(&drained)
                ),
            );
        }
    }
}

/// With a retention a reader's live log is pieces, each begun from the
/// empty key after a resync. Within a piece: ordered, every message as its
/// history has it, and no message of a conversation skipped between two it
/// holds. The last piece ends where the drained log ends, and the two hold
/// the same events where they overlap.
fn check_live_pieces(r: &mut Report, o: &Observed, history: &BySeq) {
    for (user, live) in &o.live {
        r.live_events += live.len();
        let mut starts: Vec<usize> = o.resyncs.get(user).cloned().unwrap_or_default();
        starts.insert(0, 0);
        starts.push(live.len());
        for (n, w) in starts.windows(2).enumerate() {
            let piece = &live[w[0].min(live.len())..w[1].min(live.len())];
            let who = format!("{user} (live, piece {n})");
            check_order(r, &who, piece);
            let mut last: BTreeMap<&str, u64> = BTreeMap::new();
            for ev in piece {
                let Kind::Message(m) = &ev.kind else {
                    continue;
                };
                let Some(conv) = history.get(&m.conversation_id) else {
                    r.bad(
                        "live log differs from history",
                        format!("{who}: {ev}: no history"),
                    );
                    continue;
                };
                if conv.get(&m.conv_seq) != Some(&msg_key(m)) {
                    r.bad(
                        "live log differs from history",
                        format!("{who}: {ev}; the history has {:?}", conv.get(&m.conv_seq)),
                    );
                }
                // (Out of order is check_order's to report.)
                if let Some(prev) = last.insert(&m.conversation_id, m.conv_seq)
                    && m.conv_seq > prev + 1
                    && let Some((skipped, _)) = conv.range(prev + 1..m.conv_seq).next()
                {
                    r.bad(
                        "gap in live log",
                        format!(
                            "{who}: {} #{} after #{prev}, #{skipped} skipped",
                            m.conversation_id, m.conv_seq
                        ),
                    );
                }
            }
        }
        let Some(drained) = o.drained.get(user) else {
            continue;
        };
        let last_piece = &live[starts[starts.len() - 2].min(live.len())..];
        for (which, pos) in [
            ("own log", (|e: &LogEvent| e.seq) as fn(&LogEvent) -> u64),
            ("shared streams", |e: &LogEvent| e.group_seq),
        ] {
            let l: Vec<&LogEvent> = last_piece.iter().filter(|e| pos(e) > 0).collect();
            let d: Vec<&LogEvent> = drained.iter().filter(|e| pos(e) > 0).collect();
            let (lf, df) = (
                l.first().map_or(0, |e| pos(e)),
                d.first().map_or(0, |e| pos(e)),
            );
            let l_common: Vec<&&LogEvent> = l.iter().filter(|e| pos(e) >= df).collect();
            let d_common: Vec<&&LogEvent> = d.iter().filter(|e| pos(e) >= lf).collect();
            if l.last() != d.last() || l_common != d_common {
                r.bad(
                    "live log differs from drained log",
                    format!(
                        "{user}, {which}: the last live piece ends at {:?}, the drained log at \
                         {:?}; {} and {} events where they overlap",
                        l.last().map(|e| e.to_string()),
                        d.last().map(|e| e.to_string()),
                        l_common.len(),
                        d_common.len()
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! A small clean run, then variants with one fault each, as
    //! `crash_check.py --self-test` does: the checker must accept the
    //! clean one and report each fault as its kind.

    use super::*;
    use crate::observed::{Ack, Msg, Sent, WriterRecord};

    const GROUP: &str = "g:1";
    const DIRECT: &str = "d:1:3";

    fn msg(seq: u64, gseq: u64, conv: &str, cseq: u64, from: &str, id: &str) -> LogEvent {
        LogEvent {
            seq,
            group_seq: gseq,
            kind: Kind::Message(Msg {
                conversation_id: conv.into(),
                conv_seq: cseq,
                sender: from.into(),
                sender_id: if from == "w0" { 1 } else { 2 },
                client_msg_id: id.into(),
                text: id.into(),
            }),
        }
    }

    fn sent(n: u64, id: &str, target: Target, ack: Option<(&str, u64)>) -> Sent {
        Sent {
            n,
            client_msg_id: id.into(),
            target,
            attempts: 1,
            ack: ack.map(|(c, s)| Ack {
                conversation_id: c.into(),
                conv_seq: s,
                duplicate: false,
            }),
        }
    }

    /// w0 sends two messages to r0 and one to the group; w1 one to the
    /// group; one more of w0's to the group was never acknowledged and not
    /// stored. r0 followed live.
    fn clean() -> Observed {
        let users = [("w0", 1), ("w1", 2), ("r0", 3)]
            .into_iter()
            .map(|(u, i)| (u.to_string(), i))
            .collect();
        let to_r0 = || Target::User("r0".into());
        let to_g = || Target::Conversation(GROUP.into());
        let writers = vec![
            WriterRecord {
                user: "w0".into(),
                starts: 2,
                sent: vec![
                    sent(0, "w0-0", to_r0(), Some((DIRECT, 1))),
                    sent(1, "w0-1", to_g(), Some((GROUP, 1))),
                    sent(2, "w0-2", to_r0(), Some((DIRECT, 2))),
                    sent(3, "w0-3", to_g(), None),
                ],
                finished: true,
            },
            WriterRecord {
                user: "w1".into(),
                starts: 1,
                sent: vec![sent(0, "w1-0", to_g(), Some((GROUP, 2)))],
                finished: true,
            },
        ];
        let r0 = vec![
            LogEvent {
                seq: 1,
                group_seq: 0,
                kind: Kind::Other("group_change"),
            },
            msg(2, 0, DIRECT, 1, "w0", "w0-0"),
            msg(3, 0, GROUP, 1, "w0", "w0-1"),
            msg(1001, 0, DIRECT, 2, "w0", "w0-2"),
            msg(1002, 0, GROUP, 2, "w1", "w1-0"),
        ];
        let w0 = vec![
            msg(2, 0, DIRECT, 1, "w0", "w0-0"),
            msg(3, 0, GROUP, 1, "w0", "w0-1"),
            msg(4, 0, DIRECT, 2, "w0", "w0-2"),
            msg(5, 0, GROUP, 2, "w1", "w1-0"),
        ];
        let w1 = vec![
            msg(1, 0, GROUP, 1, "w0", "w0-1"),
            msg(2, 0, GROUP, 2, "w1", "w1-0"),
        ];
        Observed {
            users,
            group: GROUP.into(),
            group_members: vec!["w0".into(), "w1".into(), "r0".into()],
            writers,
            live: [("r0".to_string(), r0.clone())].into(),
            drained: [("w0".into(), w0), ("w1".into(), w1), ("r0".into(), r0)].into(),
            retain: 0,
            resyncs: BTreeMap::new(),
            histories: [
                (
                    DIRECT.to_string(),
                    vec![m(DIRECT, 1, "w0", "w0-0"), m(DIRECT, 2, "w0", "w0-2")],
                ),
                (
                    GROUP.to_string(),
                    vec![m(GROUP, 1, "w0", "w0-1"), m(GROUP, 2, "w1", "w1-0")],
                ),
            ]
            .into(),
            client_errors: Vec::new(),
        }
    }

    /// A message as a history holds it.
    fn m(conv: &str, cseq: u64, from: &str, id: &str) -> Msg {
        match msg(1, 0, conv, cseq, from, id).kind {
            Kind::Message(m) => m,
            Kind::Other(_) => unreachable!("msg makes messages"),
        }
    }

    fn history<'a>(o: &'a mut Observed, conv: &str) -> &'a mut Vec<Msg> {
        o.histories.get_mut(conv).expect("conversation")
    }

    /// The clean run with a retention of 2 events: w0's and r0's logs
    /// keep their last two; r0 read its first two live, was told to
    /// resync, and read the last two again from the empty key.
    fn clean_retained() -> Observed {
        let mut o = clean();
        o.retain = 2;
        for u in ["w0", "r0"] {
            let log = drained(&mut o, u);
            log.drain(..log.len() - 2);
        }
        let live = o.live.get_mut("r0").expect("r0");
        live.drain(2..);
        let tail = o.drained["r0"].clone();
        let live = o.live.get_mut("r0").expect("r0");
        live.extend(tail);
        o.resyncs.insert("r0".into(), vec![2]);
        o
    }

    fn drained<'a>(o: &'a mut Observed, user: &str) -> &'a mut Vec<LogEvent> {
        o.drained.get_mut(user).expect("user")
    }

    fn expect(o: &Observed, kind: &str) {
        let r = check(o);
        assert!(
            r.violations.contains_key(kind),
            "expected {kind:?}, got {:?}\n{r}",
            r.kinds()
        );
    }

    /// The clean run passes and is counted right.
    #[test]
    fn clean_run_passes() {
        let r = check(&clean());
        assert!(r.ok(), "{r}");
        assert_eq!((r.sent, r.acks, r.stored), (5, 4, 4));
        assert_eq!((r.unacked_stored, r.unacked_not_stored), (0, 1));
        assert_eq!(r.live_events, 5);
    }

    /// An unacknowledged message stored once is allowed and counted.
    #[test]
    fn unacked_but_stored_is_allowed() {
        let mut o = clean();
        for u in ["w0", "w1"] {
            let next = drained(&mut o, u).len() as u64 + 10;
            drained(&mut o, u).push(msg(next, 0, GROUP, 3, "w0", "w0-3"));
        }
        let r0 = drained(&mut o, "r0");
        r0.push(msg(1003, 0, GROUP, 3, "w0", "w0-3"));
        let r0 = r0.clone();
        o.live.insert("r0".into(), r0);
        history(&mut o, GROUP).push(m(GROUP, 3, "w0", "w0-3"));
        let r = check(&o);
        assert!(r.ok(), "{r}");
        assert_eq!((r.unacked_stored, r.unacked_not_stored), (1, 0));
    }

    /// An acknowledged message missing from every log.
    #[test]
    fn lost_ack_is_caught() {
        let mut o = clean();
        for u in ["w0", "r0"] {
            drained(&mut o, u)
                .retain(|e| !matches!(&e.kind, Kind::Message(m) if m.client_msg_id == "w0-2"));
        }
        history(&mut o, DIRECT).pop();
        o.live.clear();
        expect(&o, "acknowledged but lost");
    }

    /// Other users' copies without a client message id (as protocol
    /// version 2 sends them) are fine; the sender's own copy without one is
    /// not.
    #[test]
    fn client_msg_id_only_on_the_senders_copies() {
        let strip = |o: &mut Observed, user: &str, own: bool| {
            let live = o.live.get_mut(user).into_iter().flatten();
            let drained = o.drained.get_mut(user).into_iter().flatten();
            for e in live.chain(drained) {
                if let Kind::Message(m) = &mut e.kind
                    && (m.sender == user) == own
                {
                    m.client_msg_id.clear();
                }
            }
        };
        let mut o = clean();
        for u in ["w0", "w1", "r0"] {
            strip(&mut o, u, false);
        }
        let r = check(&o);
        assert!(r.ok(), "{r}");
        strip(&mut o, "w0", true);
        expect(&o, "client_msg_id missing");
    }

    /// An acknowledged message missing from one participant only.
    #[test]
    fn missing_for_one_participant_is_caught() {
        let mut o = clean();
        drained(&mut o, "w1").remove(0);
        expect(&o, "participants disagree");
    }

    /// A message stored twice in one log.
    #[test]
    fn duplicate_is_caught() {
        let mut o = clean();
        drained(&mut o, "w0").push(msg(9, 0, DIRECT, 3, "w0", "w0-0"));
        expect(&o, "delivered twice");
    }

    /// A message stored at two positions in different logs.
    #[test]
    fn duplicate_across_logs_is_caught() {
        let mut o = clean();
        let w1 = drained(&mut o, "w1");
        w1[1] = msg(2, 0, GROUP, 7, "w1", "w1-0");
        expect(&o, "delivered twice");
    }

    /// Log seqs going backwards.
    #[test]
    fn seq_out_of_order_is_caught() {
        let mut o = clean();
        drained(&mut o, "w0").swap(0, 1);
        expect(&o, "log seq not increasing");
    }

    /// conv_seqs going backwards within a log (seqs still increasing).
    #[test]
    fn conv_seq_out_of_order_is_caught() {
        let mut o = clean();
        let w0 = drained(&mut o, "w0");
        w0[0] = msg(2, 0, DIRECT, 2, "w0", "w0-2");
        w0[2] = msg(4, 0, DIRECT, 1, "w0", "w0-0");
        expect(&o, "conv_seq not increasing");
    }

    /// Shared-stream positions going backwards.
    #[test]
    fn group_seq_out_of_order_is_caught() {
        let mut o = clean();
        let w1 = drained(&mut o, "w1");
        w1[0] = msg(0, 8, GROUP, 1, "w0", "w0-1");
        w1[1] = msg(0, 5, GROUP, 2, "w1", "w1-0");
        expect(&o, "group_seq not increasing");
    }

    /// A writer's two messages stored in the other order than sent.
    #[test]
    fn send_order_is_caught() {
        let mut o = clean();
        let w = &mut o.writers[0];
        w.sent[0].ack.as_mut().expect("ack").conv_seq = 2;
        w.sent[2].ack.as_mut().expect("ack").conv_seq = 1;
        for u in ["w0", "r0"] {
            for e in drained(&mut o, u) {
                if let Kind::Message(m) = &mut e.kind
                    && m.conversation_id == DIRECT
                {
                    m.conv_seq = 3 - m.conv_seq;
                }
            }
        }
        for m in history(&mut o, DIRECT) {
            m.conv_seq = 3 - m.conv_seq;
        }
        history(&mut o, DIRECT).reverse();
        o.live.clear();
        let r = check(&o);
        assert!(r.violations.contains_key("send order"), "{r}");
    }

    /// An acknowledgement pointing at another message's position.
    #[test]
    fn ack_mismatch_is_caught() {
        let mut o = clean();
        o.writers[1].sent[0].ack.as_mut().expect("ack").conv_seq = 1;
        expect(&o, "ack mismatch");
    }

    /// A message nobody sent; altered text; a stranger in a conversation.
    #[test]
    fn invented_altered_and_misdelivered_are_caught() {
        let mut o = clean();
        drained(&mut o, "w1").push(msg(3, 0, GROUP, 3, "w1", "w1-9"));
        expect(&o, "never sent");

        let mut o = clean();
        if let Kind::Message(m) = &mut drained(&mut o, "w1")[0].kind {
            m.text = "changed".into();
        }
        expect(&o, "content changed");

        let mut o = clean();
        drained(&mut o, "w1").push(msg(3, 0, DIRECT, 1, "w0", "w0-0"));
        expect(&o, "wrong participant");
    }

    /// A live reader that skipped an event (N+1 seen, N never) or saw one
    /// twice.
    #[test]
    fn live_log_gap_and_repeat_are_caught() {
        let mut o = clean();
        o.live.get_mut("r0").expect("r0").remove(2);
        expect(&o, "live log differs from drained log");

        let mut o = clean();
        let live = o.live.get_mut("r0").expect("r0");
        let again = live[1].clone();
        live.push(again);
        expect(&o, "log seq not increasing");
    }

    /// A writer that never finished, and an error a client reported.
    #[test]
    fn liveness_and_client_errors_are_caught() {
        let mut o = clean();
        o.writers[1].finished = false;
        expect(&o, "writer did not finish");

        let mut o = clean();
        o.client_errors
            .push("r0: sync refused: INVALID_SYNC_KEY".into());
        expect(&o, "client error");
    }

    /// The histories are the record: a log holding what the history does
    /// not, and a history missing what the logs hold.
    #[test]
    fn logs_and_histories_must_agree() {
        let mut o = clean();
        history(&mut o, GROUP).pop();
        expect(&o, "log differs from history");

        let mut o = clean();
        history(&mut o, GROUP)[1] = m(GROUP, 2, "w0", "w0-3");
        expect(&o, "log differs from history");

        let mut o = clean();
        history(&mut o, GROUP).push(m(GROUP, 3, "w0", "w0-1"));
        expect(&o, "stored twice");
    }

    /// With every event kept, a reader is never told to resync.
    #[test]
    fn unexpected_resync_is_caught() {
        let mut o = clean();
        o.resyncs.insert("r0".into(), vec![2]);
        expect(&o, "unexpected resync");
    }

    /// A retention: trimmed logs, a live log in two pieces, and the acks
    /// found in the histories.
    #[test]
    fn retained_clean_run_passes() {
        let r = check(&clean_retained());
        assert!(r.ok(), "{r}");
        assert_eq!((r.acks, r.stored, r.resyncs), (4, 4, 1));
        assert_eq!(r.live_events, 4);
    }

    /// With a retention an acknowledged message may leave every log, not
    /// its history.
    #[test]
    fn retained_lost_ack_is_caught() {
        let mut o = clean_retained();
        history(&mut o, GROUP).retain(|m| m.client_msg_id != "w0-1");
        expect(&o, "acknowledged but lost");
    }

    /// A trimmed log must hold each conversation's newest messages without
    /// a gap, as its history has them.
    #[test]
    fn retained_log_gap_is_caught() {
        let mut o = clean_retained();
        history(&mut o, DIRECT).insert(1, m(DIRECT, 2, "w1", "w1-0"));
        history(&mut o, DIRECT)[2].conv_seq = 3;
        for e in drained(&mut o, "w0") {
            if let Kind::Message(m) = &mut e.kind
                && m.client_msg_id == "w0-2"
            {
                m.conv_seq = 3;
            }
        }
        o.writers[0].sent[2].ack.as_mut().expect("ack").conv_seq = 3;
        o.live.clear();
        o.resyncs.clear();
        let r = check(&o);
        assert!(r.violations.contains_key("gap in log"), "{r}");
    }

    /// Within a piece of a live log, a skipped message is a gap; across a
    /// resync it is not. The last piece must end where the drained log does.
    #[test]
    fn retained_live_gap_and_short_end_are_caught() {
        let mut o = clean_retained();
        history(&mut o, GROUP).push(m(GROUP, 3, "w0", "w0-3"));
        for (u, seq) in [("w0", 6), ("w1", 3), ("r0", 1003)] {
            drained(&mut o, u).push(msg(seq, 0, GROUP, 3, "w0", "w0-3"));
        }
        let mut live = clean().live["r0"][..3].to_vec();
        live.push(msg(1001, 0, DIRECT, 2, "w0", "w0-2"));
        live.push(msg(1003, 0, GROUP, 3, "w0", "w0-3"));
        o.live.insert("r0".into(), live);
        o.resyncs.clear();
        let r = check(&o);
        assert!(r.violations.contains_key("gap in live log"), "{r}");
        // The same skip across a resync is no gap.
        o.resyncs.insert("r0".into(), vec![3]);
        let r = check(&o);
        assert!(!r.violations.contains_key("gap in live log"), "{r}");

        let mut o = clean_retained();
        o.live.get_mut("r0").expect("r0").pop();
        expect(&o, "live log differs from drained log");

        let mut o = clean_retained();
        if let Kind::Message(m) = &mut o.live.get_mut("r0").expect("r0")[1].kind {
            m.text = "w0-9".into();
            m.client_msg_id = "w0-9".into();
        }
        expect(&o, "live log differs from history");
    }
}
