//! Packed events (protocol version 2): the events of one `SyncResponse` or
//! `EventsPush` with what repeats from event to event said once per batch,
//! in a `PackedTables` beside them. Version 1 spends most of a small
//! message's bytes repeating the conversation id, the sender's username and
//! two absolute timestamps; packed, a message event costs little more than
//! its text.
//!
//! [`pack`] is the server's side, [`unpack`] the client's; unpacking a packed
//! batch gives back the events version 1 sends, except that copies of a
//! message in other users' logs carry no `client_msg_id` or
//! `sender_device_id` (see [`pack`]). docs/PROTOCOL.md, "Packed events",
//! states the rules for clients in other languages.

use std::collections::HashMap;

use crate::v1::event::Kind;
use crate::v1::{Event, Frame, PackedTables, PackedUser, frame::Body};

/// Why a packed batch could not be unpacked: the server sent something the
/// rules do not allow (a client treats it as a protocol error).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnpackError {
    /// `conversation_ref` points past the end of `conversation_ids`.
    #[error("event {index}: conversation_ref {reference} is not in the batch's table")]
    ConversationRef {
        /// The event's position in the batch.
        index: usize,
        /// The reference it carried.
        reference: u32,
    },
    /// A message event said "same conversation as before" with none before.
    #[error("event {index}: a message with no conversation and no earlier message in the batch")]
    NoConversation {
        /// The event's position in the batch.
        index: usize,
    },
    /// A message's sender has no username inline and none in the table.
    #[error("event {index}: sender {sender_id} is not in the batch's user table")]
    UnknownSender {
        /// The event's position in the batch.
        index: usize,
        /// The sender it named.
        sender_id: u64,
    },
}

/// Packs `events` (in the order sent) for the log of user `reader_id` and
/// returns the tables to send beside them.
///
/// Besides packing, copies of a message in the log of a user other than its
/// sender lose `client_msg_id` and `sender_device_id`: they name the
/// sender's device and its retry key, which only the sender's own devices
/// use (to match an acknowledgement lost in flight).
pub fn pack(events: &mut [Event], reader_id: u64) -> PackedTables {
    let base_ms = events.first().map_or(0, |e| e.created_at_ms);
    let mut tables = PackedTables {
        base_ms,
        ..PackedTables::default()
    };
    let mut conversations: HashMap<String, u32> = HashMap::new();
    let mut users: HashMap<u64, String> = HashMap::new();
    let mut previous_ms = base_ms;
    let mut previous_conversation = None;
    for event in events {
        let created = event.created_at_ms;
        event.created_delta_ms = created.wrapping_sub(previous_ms);
        event.created_at_ms = 0;
        previous_ms = created;
        let Some(Kind::Message(m)) = &mut event.kind else {
            continue;
        };
        if m.sender_id != reader_id {
            m.client_msg_id.clear();
            m.sender_device_id = 0;
        }
        let id = std::mem::take(&mut m.conversation_id);
        let next = conversations.len() as u32 + 1;
        let reference = *conversations.entry(id).or_insert_with_key(|id| {
            tables.conversation_ids.push(id.clone());
            next
        });
        event.conversation_ref = if previous_conversation == Some(reference) {
            0
        } else {
            reference
        };
        previous_conversation = Some(reference);
        match users.get(&m.sender_id) {
            Some(name) if *name == m.sender_username => m.sender_username.clear(),
            // The same id under another name in one batch: left inline.
            Some(_) => {}
            None => {
                let name = std::mem::take(&mut m.sender_username);
                tables.users.push(PackedUser {
                    id: m.sender_id,
                    username: name.clone(),
                });
                users.insert(m.sender_id, name);
            }
        }
        if m.sent_at_ms == created {
            m.sent_at_ms = 0;
        }
    }
    tables
}

/// Unpacks the events of a sync answer or push in place if they came
/// packed (protocol version 2); other frames are left as they are.
pub fn unpack_frame(frame: &mut Frame) -> Result<(), UnpackError> {
    let (events, tables) = match &mut frame.body {
        Some(Body::SyncResponse(r)) => (&mut r.events, r.packed.take()),
        Some(Body::EventsPush(p)) => (&mut p.events, p.packed.take()),
        _ => return Ok(()),
    };
    match tables {
        Some(tables) => unpack(events, &tables),
        None => Ok(()),
    }
}

/// Unpacks a batch packed by [`pack`], in place, into the events version 1
/// sends.
pub fn unpack(events: &mut [Event], tables: &PackedTables) -> Result<(), UnpackError> {
    let users: HashMap<u64, &str> = tables
        .users
        .iter()
        .map(|u| (u.id, u.username.as_str()))
        .collect();
    let mut previous_ms = tables.base_ms;
    let mut conversation: Option<&str> = None;
    for (index, event) in events.iter_mut().enumerate() {
        let created = previous_ms.wrapping_add(event.created_delta_ms);
        event.created_at_ms = created;
        event.created_delta_ms = 0;
        previous_ms = created;
        let reference = std::mem::take(&mut event.conversation_ref);
        let Some(Kind::Message(m)) = &mut event.kind else {
            continue;
        };
        let id =
            match reference {
                0 => conversation.ok_or(UnpackError::NoConversation { index })?,
                n => tables.conversation_ids.get(n as usize - 1).ok_or(
                    UnpackError::ConversationRef {
                        index,
                        reference: n,
                    },
                )?,
            };
        conversation = Some(id);
        m.conversation_id = id.to_string();
        if m.sender_username.is_empty() {
            m.sender_username = users
                .get(&m.sender_id)
                .ok_or(UnpackError::UnknownSender {
                    index,
                    sender_id: m.sender_id,
                })?
                .to_string();
        }
        if m.sent_at_ms == 0 {
            m.sent_at_ms = created;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message as _;

    use super::*;
    use crate::v1::{Content, Message, ReadMarker};

    fn message(conversation: &str, sender: u64, at: i64, sent_at: i64) -> Event {
        Event {
            seq: 0,
            created_at_ms: at,
            kind: Some(Kind::Message(Message {
                conversation_id: conversation.to_string(),
                conv_seq: 1,
                sender_id: sender,
                sender_username: format!("user-{sender}"),
                sender_device_id: 7,
                client_msg_id: format!("cm-{sender}-{at}"),
                sent_at_ms: sent_at,
                content: Some(Content {
                    text: "hello".into(),
                    ..Content::default()
                }),
                ..Message::default()
            })),
            ..Event::default()
        }
    }

    fn marker(conversation: &str, at: i64) -> Event {
        Event {
            created_at_ms: at,
            kind: Some(Kind::ReadMarker(ReadMarker {
                conversation_id: conversation.to_string(),
                read_up_to: 3,
            })),
            ..Event::default()
        }
    }

    /// What a reader is told of an event in version 2: the sender's device
    /// and retry key only in the sender's own log.
    fn as_told_to(mut event: Event, reader: u64) -> Event {
        if let Some(Kind::Message(m)) = &mut event.kind
            && m.sender_id != reader
        {
            m.client_msg_id.clear();
            m.sender_device_id = 0;
        }
        event
    }

    fn event_strategy() -> impl Strategy<Value = Event> {
        (0u8..4, 1u64..5, -5i64..1_000_000, 0i64..3, 0u8..3).prop_map(
            |(conv, sender, at, sent_offset, kind)| {
                let conversation = format!("d:{conv}");
                if kind == 0 {
                    marker(&conversation, at)
                } else {
                    // Mostly sent when created, sometimes (an edit's copy,
                    // a clock step) not.
                    let sent = if sent_offset == 0 { at + 17 } else { at };
                    message(&conversation, sender, at, sent.max(1))
                }
            },
        )
    }

    proptest! {
        /// Checks any batch unpacks to what version 1 sends the reader,
        /// whatever mix of conversations, senders and times it holds.
        #[test]
        fn unpack_gives_back_the_events(
            events in proptest::collection::vec(event_strategy(), 0..40),
            reader in 1u64..5,
        ) {
            let mut packed = events.clone();
            let tables = pack(&mut packed, reader);
            unpack(&mut packed, &tables).expect("a packed batch unpacks");
            let expected: Vec<Event> = events.into_iter().map(|e| as_told_to(e, reader)).collect();
            prop_assert_eq!(packed, expected);
        }

        /// Checks unpacking garbage tables and references never panics: it
        /// either succeeds or says what is wrong.
        #[test]
        fn unpack_of_garbage_does_not_panic(
            events in proptest::collection::vec(event_strategy(), 0..20),
            refs in proptest::collection::vec(0u32..8, 20),
            deltas in proptest::collection::vec(any::<i64>(), 20),
            conversations in proptest::collection::vec("[a-z]{0,3}", 0..3),
            base in any::<i64>(),
        ) {
            let mut events = events;
            for (i, e) in events.iter_mut().enumerate() {
                e.conversation_ref = refs[i];
                e.created_delta_ms = deltas[i];
                if let Some(Kind::Message(m)) = &mut e.kind {
                    m.conversation_id.clear();
                    if i % 2 == 0 {
                        m.sender_username.clear();
                    }
                }
            }
            let tables = PackedTables { conversation_ids: conversations, users: vec![], base_ms: base };
            let _ = unpack(&mut events, &tables);
        }
    }

    /// Checks a typical catch-up (one sender, one conversation, messages a
    /// few milliseconds apart) packs to a few bytes over the text per
    /// message, against about 60 for version 1.
    #[test]
    fn packing_shrinks_a_catch_up() {
        let events: Vec<Event> = (0..256)
            .map(|i| {
                let mut e = message("d:1:2", 1, 1_790_000_000_000 + i * 3, 0);
                if let Some(Kind::Message(m)) = &mut e.kind {
                    m.sent_at_ms = e.created_at_ms;
                    m.client_msg_id = "0193f2a4-7b1c-7cde-8f00-1234567890ab".into();
                }
                e.seq = 1000 + i as u64;
                e
            })
            .collect();
        let size = |events: &[Event], tables: Option<&PackedTables>| {
            events.iter().map(|e| e.encoded_len() + 3).sum::<usize>()
                + tables.map_or(0, |t| t.encoded_len())
        };
        let v1 = size(&events, None);
        let mut packed = events.clone();
        let tables = pack(&mut packed, 2);
        let v2 = size(&packed, Some(&tables));
        // Per message: "hello" is 5 bytes.
        let per_message = |total: usize| total as f64 / 256.0 - 5.0;
        assert!(per_message(v1) > 60.0, "v1: {}", per_message(v1));
        assert!(per_message(v2) < 20.0, "v2: {}", per_message(v2));
        assert_eq!(tables.conversation_ids, ["d:1:2"]);
        assert_eq!(tables.users.len(), 1);
        assert_eq!(packed.iter().filter(|e| e.conversation_ref != 0).count(), 1);
    }

    /// Checks the errors: a reference past the table, "same as before" with
    /// nothing before, a sender missing from the table.
    #[test]
    fn unpack_refuses_what_the_rules_do_not_allow() {
        let packed_message = |reference: u32, username: &str| {
            let mut e = message("", 9, 0, 5);
            e.conversation_ref = reference;
            if let Some(Kind::Message(m)) = &mut e.kind {
                m.sender_username = username.to_string();
            }
            e
        };
        let tables = PackedTables {
            conversation_ids: vec!["d:1".into()],
            users: vec![],
            base_ms: 0,
        };
        assert_eq!(
            unpack(&mut [packed_message(2, "x")], &tables),
            Err(UnpackError::ConversationRef {
                index: 0,
                reference: 2
            })
        );
        assert_eq!(
            unpack(&mut [marker("d:1", 0), packed_message(0, "x")], &tables),
            Err(UnpackError::NoConversation { index: 1 })
        );
        assert_eq!(
            unpack(&mut [packed_message(1, "")], &tables),
            Err(UnpackError::UnknownSender {
                index: 0,
                sender_id: 9
            })
        );
        assert_eq!(unpack(&mut [packed_message(1, "inline")], &tables), Ok(()));
    }
}
