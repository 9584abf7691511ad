//! How a message is kept once.
//!
//! A message lives in its conversation's timeline. The copies that used to
//! sit beside it (one in every participant's log, one in every participant's
//! conversation summary) are now references: a log event stores which
//! message it is, and a summary's last message stores its position and
//! time. Readers fill them in from the timeline, so a message edited or
//! recalled later is read as it is now, and a 100-byte text costs its bytes
//! once instead of five times (in the journal, the memtable and every
//! table file it is flushed and compacted into).
//!
//! A stored log event is either an `Event` (every kind but a message; also
//! message events written before this format) or [`MESSAGE_REF`] followed
//! by an `Event` whose message holds only its conversation id and
//! conv_seq. Protobuf never starts an `Event` with a zero byte (field 0 does
//! not exist, and `seq` is always set), so the two cannot be confused.

use pigeon_core::StoreError;
use pigeon_core::conversation::ConversationId;
use pigeon_proto::v1::{ConversationSummary, Event, Message, event};
use prost::Message as _;

use super::{corrupt, decode_proto};

/// The first byte of a log event that refers to its message.
pub(super) const MESSAGE_REF: u8 = 0;

/// The stored bytes of a log event.
pub(super) fn encode_event(e: &Event) -> Vec<u8> {
    let Some(event::Kind::Message(m)) = &e.kind else {
        return e.encode_to_vec();
    };
    let stub = Event {
        seq: e.seq,
        created_at_ms: e.created_at_ms,
        group_seq: e.group_seq,
        kind: Some(event::Kind::Message(Message {
            conversation_id: m.conversation_id.clone(),
            conv_seq: m.conv_seq,
            ..Message::default()
        })),
        ..Event::default()
    };
    let mut out = Vec::with_capacity(1 + stub.encoded_len());
    out.push(MESSAGE_REF);
    stub.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// A stored log event: complete, or naming the message to fill in.
pub(super) enum StoredEvent {
    Complete(Event),
    /// The event with a placeholder message; the timeline holds the
    /// message at (conversation id, conv_seq).
    MessageRef(Event),
}

impl StoredEvent {
    pub(super) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        match bytes.split_first() {
            Some((&MESSAGE_REF, rest)) => {
                let e: Event = decode_proto("event", rest)?;
                match &e.kind {
                    Some(event::Kind::Message(m)) if m.conv_seq > 0 => Ok(Self::MessageRef(e)),
                    _ => Err(corrupt("event", "a message reference without its message")),
                }
            }
            _ => Ok(Self::Complete(decode_proto("event", bytes)?)),
        }
    }

    /// The complete event; `message` reads a message from the timeline.
    pub(super) fn resolve(
        self,
        message: impl FnOnce(&str, u64) -> Result<Option<Message>, StoreError>,
    ) -> Result<Event, StoreError> {
        match self {
            Self::Complete(e) => Ok(e),
            Self::MessageRef(mut e) => {
                let Some(event::Kind::Message(stub)) = &e.kind else {
                    unreachable!("checked when decoded");
                };
                let found = message(&stub.conversation_id, stub.conv_seq)?.ok_or_else(|| {
                    corrupt(
                        "event",
                        format!(
                            "log event {} names message {}/{}, which is not in the timeline",
                            e.seq, stub.conversation_id, stub.conv_seq
                        ),
                    )
                })?;
                e.kind = Some(event::Kind::Message(found));
                Ok(e)
            }
        }
    }
}

/// What a summary keeps of its last message: position, time and sender
/// (enough to order conversations and count unread ones).
pub(super) fn summary_stub(m: &Message) -> Message {
    Message {
        conv_seq: m.conv_seq,
        sent_at_ms: m.sent_at_ms,
        sender_id: m.sender_id,
        ..Message::default()
    }
}

/// A direct conversation's summary is written for a participant when they
/// send in it and when it is created, not for every message they receive:
/// its newest message and unread count follow from the conversation's
/// head. Every message after the reader's `read_up_to` is the peer's (a
/// send raises the sender's `read_up_to` to it), so the unread count is
/// the difference. Summaries of groups are left as stored.
pub(super) fn derive_direct(
    s: &mut ConversationSummary,
    head: impl FnOnce(&str) -> Result<u64, StoreError>,
) -> Result<(), StoreError> {
    if ConversationId::parse(&s.conversation_id).is_none() {
        return Ok(());
    }
    let head = head(&s.conversation_id)?;
    let stored = s.last_message.as_ref().map_or(0, |m| m.conv_seq);
    if head > stored {
        s.last_message = Some(Message {
            conv_seq: head,
            ..Message::default()
        });
    }
    s.unread_count = head.max(stored).saturating_sub(s.read_up_to);
    Ok(())
}

/// Fills a stored summary's last message in from the timeline (summaries
/// written before this format hold a copy; the timeline's is newer).
pub(super) fn resolve_summary(
    s: &mut ConversationSummary,
    message: impl FnOnce(&str, u64) -> Result<Option<Message>, StoreError>,
) -> Result<(), StoreError> {
    if let Some(last) = &s.last_message
        && last.conv_seq > 0
        && let Some(m) = message(&s.conversation_id, last.conv_seq)?
    {
        s.last_message = Some(m);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_proto::v1::{Content, ReadMarker};

    fn message() -> Message {
        Message {
            conversation_id: "d:1:2".into(),
            conv_seq: 7,
            sender_id: 1,
            sender_username: "alice".into(),
            client_msg_id: "c-1".into(),
            sent_at_ms: 1_700_000_000_000,
            content: Some(Content {
                text: "hello there".into(),
                ..Content::default()
            }),
            ..Message::default()
        }
    }

    #[test]
    fn a_message_event_is_stored_as_a_reference_and_read_back_whole() {
        let event = Event {
            seq: 42,
            created_at_ms: 1_700_000_000_001,
            kind: Some(event::Kind::Message(message())),
            ..Event::default()
        };
        let bytes = encode_event(&event);
        assert_eq!(bytes[0], MESSAGE_REF);
        assert!(
            bytes.len() < event.encoded_len() / 2,
            "{} bytes",
            bytes.len()
        );
        let stored = StoredEvent::decode(&bytes).unwrap();
        let mut asked = None;
        let back = stored
            .resolve(|conv, seq| {
                asked = Some((conv.to_string(), seq));
                Ok(Some(message()))
            })
            .unwrap();
        assert_eq!(asked, Some(("d:1:2".to_string(), 7)));
        assert_eq!(back, event);
    }

    #[test]
    fn other_events_and_old_copies_are_stored_whole() {
        let marker = Event {
            seq: 3,
            created_at_ms: 5,
            kind: Some(event::Kind::ReadMarker(ReadMarker {
                conversation_id: "d:1:2".into(),
                read_up_to: 2,
            })),
            ..Event::default()
        };
        let bytes = encode_event(&marker);
        assert_eq!(bytes, marker.encode_to_vec());
        let back = StoredEvent::decode(&bytes)
            .unwrap()
            .resolve(|_, _| panic!("nothing to look up"))
            .unwrap();
        assert_eq!(back, marker);
        // A message event in the old format (a full copy) reads as it is.
        let old = Event {
            seq: 4,
            kind: Some(event::Kind::Message(message())),
            ..Event::default()
        };
        let back = StoredEvent::decode(&old.encode_to_vec())
            .unwrap()
            .resolve(|_, _| panic!("nothing to look up"))
            .unwrap();
        assert_eq!(back, old);
    }

    #[test]
    fn a_reference_to_a_missing_message_is_corruption_not_a_panic() {
        let event = Event {
            seq: 9,
            kind: Some(event::Kind::Message(message())),
            ..Event::default()
        };
        let stored = StoredEvent::decode(&encode_event(&event)).unwrap();
        assert!(matches!(
            stored.resolve(|_, _| Ok(None)),
            Err(StoreError::Corrupt(_))
        ));
        // A reference byte followed by garbage or by a non-message event.
        assert!(StoredEvent::decode(&[MESSAGE_REF, 0xff, 0xff]).is_err());
        let mut not_a_message = vec![MESSAGE_REF];
        not_a_message.extend(
            Event {
                seq: 1,
                ..Event::default()
            }
            .encode_to_vec(),
        );
        assert!(StoredEvent::decode(&not_a_message).is_err());
    }

    #[test]
    fn a_summary_keeps_a_stub_and_reads_the_timeline() {
        let m = message();
        let stub = summary_stub(&m);
        assert!(stub.content.is_none() && stub.conv_seq == 7);
        let mut s = ConversationSummary {
            conversation_id: "d:1:2".into(),
            last_message: Some(stub),
            ..ConversationSummary::default()
        };
        resolve_summary(&mut s, |conv, seq| {
            assert_eq!((conv, seq), ("d:1:2", 7));
            Ok(Some(message()))
        })
        .unwrap();
        assert_eq!(s.last_message, Some(m));
        // No last message: nothing to look up.
        let mut empty = ConversationSummary::default();
        resolve_summary(&mut empty, |_, _| panic!("nothing to look up")).unwrap();
    }
}
