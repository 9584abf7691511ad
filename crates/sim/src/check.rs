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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::observed::{Kind, LogEvent, Observed, Target};

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
             delivered={} live events={} violations={}",
            self.sent,
            self.acks,
            self.duplicate_acks,
            self.stored,
            self.unacked_stored,
            self.unacked_not_stored,
            self.delivered,
            self.live_events,
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
            let id = if m.client_msg_id.is_empty() {
                &m.text
            } else {
                &m.client_msg_id
            };
            let key = (m.sender.clone(), id.clone());
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
            let Some(&(writer, target, _)) = sends.get(id.as_str()) else {
                r.bad("never sent", format!("{at}: {} {}", key.0, key.1));
                continue;
            };
            if writer != m.sender {
                r.bad(
                    "never sent",
                    format!("{at}: {} {} was sent by {writer}", m.sender, id),
                );
                continue;
            }
            if m.text != *id {
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
                    if user != writer && user != to {
                        r.bad(
                            "wrong participant",
                            format!("{at}: {id} from {writer} to {to}"),
                        );
                    }
                }
            }
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

    let by_conv_seq = check_participants(&mut r, o, &views, &sends);
    check_acks(&mut r, o, &by_conv_seq, &placed);
    check_live(&mut r, o);
    r
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
fn check_live(r: &mut Report, o: &Observed) {
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
            client_errors: Vec::new(),
        }
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
}
