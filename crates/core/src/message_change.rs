//! The rules of changing a stored message (recall, edit, delete for me):
//! who may, within which window, and what the change does to the message
//! and tells its readers. Every store reads the records, asks these
//! functions, and writes what they decide, so the embedded store and
//! PostgreSQL cannot drift apart on a rule.

use pigeon_proto::v1::{Content, GroupRole, Message, MessageEdited, MessageRecalled, event};

use crate::store::{ChangeOutcome, GroupRecord, MemberRecord, MessageChange, MessageChangeKind};
use crate::{CoreError, UserId};

/// Checks that `member` (the actor's membership record in `group`, if any)
/// lets the actor change message `change.conv_seq`: the message must be one
/// the actor could see (sent while they were a member), and anything but a
/// delete-for-me needs a current membership of a live group. A message the
/// actor never saw is "not found", not "forbidden": its existence is not
/// theirs to learn.
pub fn check_group_rights(
    group: &GroupRecord,
    member: Option<&MemberRecord>,
    change: &MessageChange,
) -> Result<(), CoreError> {
    let m = member.ok_or(CoreError::MessageNotFound)?;
    let visible = change.conv_seq > m.joined_after_conv
        && (m.left_conv == 0 || change.conv_seq <= m.left_conv);
    if !visible {
        return Err(CoreError::MessageNotFound);
    }
    if !matches!(change.kind, MessageChangeKind::DeleteForMe) {
        if m.role() == GroupRole::None {
            return Err(CoreError::Forbidden(
                "you are no longer a member of this group".into(),
            ));
        }
        if group.dissolved {
            return Err(CoreError::Forbidden("the group was dissolved".into()));
        }
    }
    Ok(())
}

/// What a recall or an edit does.
#[derive(Debug)]
pub struct Effect {
    /// The message was changed in place: store it and deliver this event
    /// to the conversation's readers. `None`: nothing to write or tell
    /// (already recalled; the same content again).
    pub event: Option<event::Kind>,
    /// The message's edit time after it (0: never edited; 0 for a recall),
    /// for the answer.
    pub edited_at_ms: i64,
}

impl Effect {
    /// The event to store and deliver with the edit time, or, when nothing
    /// changed, the answer to give at once.
    pub fn changed(self) -> Result<(event::Kind, i64), ChangeOutcome> {
        match self.event {
            Some(event) => Ok((event, self.edited_at_ms)),
            None => Err(ChangeOutcome {
                edited_at_ms: self.edited_at_ms,
                ..ChangeOutcome::default()
            }),
        }
    }
}

/// Only the sender may recall or edit, and only within `window_ms` of
/// sending.
fn check_sender_window(
    m: &Message,
    actor: UserId,
    now_ms: i64,
    window_ms: i64,
    what: &'static str,
) -> Result<(), CoreError> {
    if m.sender_id != actor {
        return Err(CoreError::Forbidden(format!(
            "only the sender may {what} a message"
        )));
    }
    if now_ms.saturating_sub(m.sent_at_ms) > window_ms {
        return Err(CoreError::WindowExpired(what));
    }
    Ok(())
}

/// Recalls `message` (in place) for `change`: its content goes, and readers
/// are told. Recalling twice changes nothing.
pub fn recall(
    message: &mut Message,
    change: &MessageChange,
    window_ms: i64,
) -> Result<Effect, CoreError> {
    check_sender_window(message, change.actor, change.now_ms, window_ms, "recall")?;
    if message.recalled {
        return Ok(Effect {
            event: None,
            edited_at_ms: 0,
        });
    }
    message.recalled = true;
    message.content = None;
    Ok(Effect {
        event: Some(event::Kind::MessageRecalled(MessageRecalled {
            conversation_id: change.conversation_id.clone(),
            conv_seq: change.conv_seq,
            actor_id: change.actor,
            recalled_at_ms: change.now_ms,
        })),
        edited_at_ms: 0,
    })
}

/// Replaces the content of `message` (in place) for `change`. A recalled
/// message is gone ("not found"); the same content again changes nothing.
pub fn edit(
    message: &mut Message,
    change: &MessageChange,
    content: &Content,
    window_ms: i64,
) -> Result<Effect, CoreError> {
    if message.recalled {
        return Err(CoreError::MessageNotFound);
    }
    check_sender_window(message, change.actor, change.now_ms, window_ms, "edit")?;
    if message.content.as_ref() == Some(content) {
        return Ok(Effect {
            event: None,
            edited_at_ms: message.edited_at_ms,
        });
    }
    message.content = Some(content.clone());
    message.edited_at_ms = change.now_ms;
    Ok(Effect {
        event: Some(event::Kind::MessageEdited(MessageEdited {
            conversation_id: change.conversation_id.clone(),
            conv_seq: change.conv_seq,
            content: Some(content.clone()),
            edited_at_ms: change.now_ms,
        })),
        edited_at_ms: change.now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(actor: UserId, now_ms: i64, kind: MessageChangeKind) -> MessageChange {
        MessageChange {
            actor,
            conversation_id: "d:1:2".into(),
            group_id: 0,
            participants: vec![1, 2],
            conv_seq: 4,
            kind,
            now_ms,
        }
    }

    fn message() -> Message {
        Message {
            conversation_id: "d:1:2".into(),
            conv_seq: 4,
            sender_id: 1,
            sent_at_ms: 1_000,
            content: Some(Content {
                text: "hi".into(),
                ..Content::default()
            }),
            ..Message::default()
        }
    }

    /// Checks recall: only the sender, only within the window, once.
    #[test]
    fn recall_rules() {
        let recall_kind = MessageChangeKind::Recall { window_ms: 100 };
        let mut m = message();
        assert!(matches!(
            recall(&mut m, &change(2, 1_050, recall_kind.clone()), 100),
            Err(CoreError::Forbidden(_))
        ));
        assert!(matches!(
            recall(&mut m, &change(1, 1_101, recall_kind.clone()), 100),
            Err(CoreError::WindowExpired("recall"))
        ));
        let first = recall(&mut m, &change(1, 1_100, recall_kind.clone()), 100).unwrap();
        assert!(matches!(
            first,
            Effect { event: Some(event::Kind::MessageRecalled(ref r)), edited_at_ms: 0 }
                if r.conv_seq == 4 && r.actor_id == 1 && r.recalled_at_ms == 1_100
        ));
        assert!(m.recalled && m.content.is_none());
        assert!(matches!(
            recall(&mut m, &change(1, 1_100, recall_kind), 100).unwrap(),
            Effect {
                event: None,
                edited_at_ms: 0
            }
        ));
    }

    /// Checks edit: the same content changes nothing, new content is
    /// stored with its time, a recalled message is not found.
    #[test]
    fn edit_rules() {
        let content = |t: &str| Content {
            text: t.into(),
            ..Content::default()
        };
        let kind = |t: &str| MessageChangeKind::Edit {
            content: content(t),
            window_ms: 100,
        };
        let mut m = message();
        assert!(matches!(
            edit(&mut m, &change(1, 1_010, kind("hi")), &content("hi"), 100).unwrap(),
            Effect {
                event: None,
                edited_at_ms: 0
            }
        ));
        let done = edit(&mut m, &change(1, 1_020, kind("ho")), &content("ho"), 100).unwrap();
        assert!(matches!(
            done,
            Effect {
                event: Some(event::Kind::MessageEdited(_)),
                edited_at_ms: 1_020
            }
        ));
        assert_eq!(
            (m.content.as_ref().unwrap().text.as_str(), m.edited_at_ms),
            ("ho", 1_020)
        );
        assert!(matches!(
            edit(&mut m, &change(2, 1_030, kind("x")), &content("x"), 100),
            Err(CoreError::Forbidden(_))
        ));
        m.recalled = true;
        assert!(matches!(
            edit(&mut m, &change(1, 1_030, kind("x")), &content("x"), 100),
            Err(CoreError::MessageNotFound)
        ));
    }
}
