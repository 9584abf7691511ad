//! What the clients observed: the writers' records of sends and
//! acknowledgements, the logs readers followed live, and every user's log
//! as drained at the end. This is the checker's only input; it never looks
//! at the server's state.

use std::collections::BTreeMap;
use std::fmt;

use pigeon_proto::v1::{self, event};

/// Where a writer sent a message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// The direct conversation with this user.
    User(String),
    /// This conversation (the group).
    Conversation(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::User(u) => write!(f, "user:{u}"),
            Target::Conversation(c) => write!(f, "conv:{c}"),
        }
    }
}

/// The server's acknowledgement of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Where it was stored.
    pub conversation_id: String,
    /// At which position.
    pub conv_seq: u64,
    /// The server answered a retry of a message it had stored already.
    pub duplicate: bool,
}

/// One message a writer sent (recorded before its first attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The writer's message number, from 0 in send order.
    pub n: u64,
    /// Its client message id, which is also its text.
    pub client_msg_id: String,
    /// Where to.
    pub target: Target,
    /// Attempts made.
    pub attempts: u32,
    /// The acknowledgement, once it came.
    pub ack: Option<Ack>,
}

/// A writer's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterRecord {
    /// Its username.
    pub user: String,
    /// Times its software started (1 + crashes it restarted from).
    pub starts: u32,
    /// Its messages in send order.
    pub sent: Vec<Sent>,
    /// It stopped as asked, with nothing in flight.
    pub finished: bool,
}

/// One event of a log, reduced to what the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// Position in the user's own log (0 for a shared-stream event).
    pub seq: u64,
    /// Position in the shared stream of large groups (0 for own-log events).
    pub group_seq: u64,
    /// What it is.
    pub kind: Kind,
}

/// The kind of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A message.
    Message(Msg),
    /// Anything else (receipts, group changes, ...), by name.
    Other(&'static str),
}

/// A message as a log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Its conversation.
    pub conversation_id: String,
    /// Its position there.
    pub conv_seq: u64,
    /// The sender's username.
    pub sender: String,
    /// The sender's id.
    pub sender_id: u64,
    /// The sender's client message id.
    pub client_msg_id: String,
    /// Its text.
    pub text: String,
}

impl Msg {
    /// Reduces a protocol message.
    pub fn from_message(m: &v1::Message) -> Msg {
        Msg {
            conversation_id: m.conversation_id.clone(),
            conv_seq: m.conv_seq,
            sender: m.sender_username.clone(),
            sender_id: m.sender_id,
            client_msg_id: m.client_msg_id.clone(),
            text: m
                .content
                .as_ref()
                .map_or_else(String::new, |c| c.text.clone()),
        }
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}#{} {} {} {:?}",
            self.conversation_id, self.conv_seq, self.sender, self.client_msg_id, self.text
        )
    }
}

impl LogEvent {
    /// Reduces a protocol event.
    pub fn from_event(e: &v1::Event) -> LogEvent {
        let kind = match &e.kind {
            Some(event::Kind::Message(m)) => Kind::Message(Msg::from_message(m)),
            Some(other) => Kind::Other(kind_name(other)),
            None => Kind::Other("unknown"),
        };
        LogEvent {
            seq: e.seq,
            group_seq: e.group_seq,
            kind,
        }
    }
}

impl fmt::Display for LogEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {} gseq {} ", self.seq, self.group_seq)?;
        match &self.kind {
            Kind::Message(m) => m.fmt(f),
            Kind::Other(k) => f.write_str(k),
        }
    }
}

fn kind_name(k: &event::Kind) -> &'static str {
    match k {
        event::Kind::Message(_) => "message",
        event::Kind::ReadMarker(_) => "read_marker",
        event::Kind::GroupChange(_) => "group_change",
        event::Kind::Receipt(_) => "receipt",
        event::Kind::ReceiptSummary(_) => "receipt_summary",
        event::Kind::MessageRecalled(_) => "message_recalled",
        event::Kind::MessageEdited(_) => "message_edited",
        _ => "other",
    }
}

/// Everything the clients of one run observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Usernames and their ids.
    pub users: BTreeMap<String, u64>,
    /// The group's conversation id.
    pub group: String,
    /// The group's members.
    pub group_members: Vec<String>,
    /// The writers' records.
    pub writers: Vec<WriterRecord>,
    /// The logs readers followed live (pushes and syncs), by reader.
    pub live: BTreeMap<String, Vec<LogEvent>>,
    /// Every user's log, drained from the empty key after the run: the
    /// whole log, or with a retention the events it still keeps.
    pub drained: BTreeMap<String, Vec<LogEvent>>,
    /// Events the server kept per user log (0: all).
    pub retain: u64,
    /// Where in each reader's live log it was told to resync and started
    /// again from the empty key (indexes into [`Observed::live`]).
    pub resyncs: BTreeMap<String, Vec<usize>>,
    /// Every conversation's whole history, oldest first, read after the run
    /// by one of its participants.
    pub histories: BTreeMap<String, Vec<Msg>>,
    /// What went wrong on the clients' side (a refused session, a writer
    /// that never finished, ...): each is a violation.
    pub client_errors: Vec<String>,
}
