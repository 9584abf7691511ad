//! The JSON lines the CLI prints: one object per line, fields in a stable order.
//!
//! Event lines (`sync`, `listen`):
//! - a message: `{"seq":N,"type":"message","conversation_id":"d:1:2","conv_seq":N,
//!   "from":"alice","from_id":N,"device_id":N,"client_msg_id":"..","sent_at_ms":N,"text":".."}`,
//!   plus `"payload_b64"` (standard base64) and `"payload_type"` only when the
//!   message has a payload;
//! - a read marker: `{"seq":N,"type":"read_marker","conversation_id":"..","read_up_to":N}`;
//! - a kind this build does not know: `{"seq":N,"type":"unknown"}`.
//!
//! History lines are the message object alone (no `seq`/`type`); conversation
//! lines carry one as `last_message`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pigeon_client::v1;
use serde::Serialize;

#[derive(Serialize)]
struct MessageJson<'a> {
    conversation_id: &'a str,
    conv_seq: u64,
    from: &'a str,
    from_id: u64,
    device_id: u64,
    client_msg_id: &'a str,
    sent_at_ms: i64,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_type: Option<&'a str>,
}

impl<'a> MessageJson<'a> {
    fn new(m: &'a v1::Message) -> Self {
        let (text, payload, payload_type) = match &m.content {
            Some(c) => (
                c.text.as_str(),
                c.payload.as_slice(),
                c.payload_type.as_str(),
            ),
            None => ("", &[][..], ""),
        };
        let has_payload = !payload.is_empty();
        MessageJson {
            conversation_id: &m.conversation_id,
            conv_seq: m.conv_seq,
            from: &m.sender_username,
            from_id: m.sender_id,
            device_id: m.sender_device_id,
            client_msg_id: &m.client_msg_id,
            sent_at_ms: m.sent_at_ms,
            text,
            payload_b64: has_payload.then(|| BASE64.encode(payload)),
            payload_type: has_payload.then_some(payload_type),
        }
    }
}

#[derive(Serialize)]
struct EventHead {
    seq: u64,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct MessageEventJson<'a> {
    #[serde(flatten)]
    head: EventHead,
    #[serde(flatten)]
    message: MessageJson<'a>,
}

#[derive(Serialize)]
struct ReadMarkerEventJson<'a> {
    #[serde(flatten)]
    head: EventHead,
    conversation_id: &'a str,
    read_up_to: u64,
}

#[derive(Serialize)]
struct ConversationJson<'a> {
    conversation_id: &'a str,
    peer_user_id: u64,
    peer_username: &'a str,
    unread_count: u64,
    read_up_to: u64,
    last_message: Option<MessageJson<'a>>,
}

#[derive(Serialize)]
struct AckJson<'a> {
    conversation_id: &'a str,
    conv_seq: u64,
    sent_at_ms: i64,
    duplicate: bool,
}

#[derive(Serialize)]
struct RegisteredJson<'a> {
    user_id: u64,
    username: &'a str,
}

#[derive(Serialize)]
struct LoggedInJson {
    user_id: u64,
    device_id: u64,
    expires_at_ms: i64,
}

fn to_line(value: &impl Serialize) -> String {
    // These structs hold only strings and numbers, which always serialize.
    serde_json::to_string(value).expect("plain structs serialize to JSON")
}

/// One sync-log event as a JSON line (see the module docs).
pub fn event_json(event: &v1::Event) -> String {
    let head = |kind| EventHead {
        seq: event.seq,
        kind,
    };
    match &event.kind {
        Some(v1::event::Kind::Message(m)) => to_line(&MessageEventJson {
            head: head("message"),
            message: MessageJson::new(m),
        }),
        Some(v1::event::Kind::ReadMarker(r)) => to_line(&ReadMarkerEventJson {
            head: head("read_marker"),
            conversation_id: &r.conversation_id,
            read_up_to: r.read_up_to,
        }),
        None => to_line(&head("unknown")),
    }
}

/// A timeline message as a JSON line (history).
pub fn message_json(message: &v1::Message) -> String {
    to_line(&MessageJson::new(message))
}

/// A conversation summary as a JSON line; `last_message` is null when absent.
pub fn conversation_json(c: &v1::ConversationSummary) -> String {
    to_line(&ConversationJson {
        conversation_id: &c.conversation_id,
        peer_user_id: c.peer_user_id,
        peer_username: &c.peer_username,
        unread_count: c.unread_count,
        read_up_to: c.read_up_to,
        last_message: c.last_message.as_ref().map(MessageJson::new),
    })
}

/// A send acknowledgement: `{"conversation_id","conv_seq","sent_at_ms","duplicate"}`.
pub fn ack_json(ack: &v1::SendResponse) -> String {
    to_line(&AckJson {
        conversation_id: &ack.conversation_id,
        conv_seq: ack.conv_seq,
        sent_at_ms: ack.sent_at_ms,
        duplicate: ack.duplicate,
    })
}

/// A registration: `{"user_id","username"}`.
pub fn registered_json(r: &v1::RegisterResponse) -> String {
    to_line(&RegisteredJson {
        user_id: r.user_id,
        username: &r.username,
    })
}

/// A login: `{"user_id","device_id","expires_at_ms"}` (never the token).
pub fn logged_in_json(r: &v1::LoginResponse) -> String {
    to_line(&LoggedInJson {
        user_id: r.user_id,
        device_id: r.device_id,
        expires_at_ms: r.expires_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> v1::Message {
        v1::Message {
            conversation_id: "d:1:2".into(),
            conv_seq: 3,
            sender_id: 1,
            sender_username: "alice".into(),
            sender_device_id: 2,
            client_msg_id: "m-1".into(),
            sent_at_ms: 1700000000000,
            content: Some(v1::Content {
                text: "hi \"bob\"\n".into(),
                payload: payload.to_vec(),
                payload_type: if payload.is_empty() {
                    String::new()
                } else {
                    "application/json".into()
                },
            }),
        }
    }

    fn event(kind: Option<v1::event::Kind>) -> v1::Event {
        v1::Event {
            seq: 9,
            created_at_ms: 5,
            kind,
        }
    }

    /// Checks a message event's exact line: field order, escaping, no payload fields.
    #[test]
    fn message_event_line() {
        let line = event_json(&event(Some(v1::event::Kind::Message(message(b"")))));
        assert_eq!(
            line,
            r#"{"seq":9,"type":"message","conversation_id":"d:1:2","conv_seq":3,"from":"alice","from_id":1,"device_id":2,"client_msg_id":"m-1","sent_at_ms":1700000000000,"text":"hi \"bob\"\n"}"#
        );
    }

    /// Checks the payload fields appear, base64-encoded, only with a payload.
    #[test]
    fn message_event_line_with_payload() {
        let line = event_json(&event(Some(v1::event::Kind::Message(message(b"{}\xff")))));
        assert!(
            line.ends_with(
                r#","text":"hi \"bob\"\n","payload_b64":"e33/","payload_type":"application/json"}"#
            ),
            "{line}"
        );
    }

    /// Checks read markers, unknown kinds and content-less messages.
    #[test]
    fn other_event_lines() {
        let marker = v1::event::Kind::ReadMarker(v1::ReadMarker {
            conversation_id: "d:1:2".into(),
            read_up_to: 4,
        });
        assert_eq!(
            event_json(&event(Some(marker))),
            r#"{"seq":9,"type":"read_marker","conversation_id":"d:1:2","read_up_to":4}"#
        );
        assert_eq!(event_json(&event(None)), r#"{"seq":9,"type":"unknown"}"#);
        let mut bare = message(b"");
        bare.content = None;
        assert!(message_json(&bare).ends_with(r#""text":""}"#));
    }

    /// Checks history and conversation lines reuse the message object.
    #[test]
    fn history_and_conversation_lines() {
        assert_eq!(
            message_json(&message(b"")),
            r#"{"conversation_id":"d:1:2","conv_seq":3,"from":"alice","from_id":1,"device_id":2,"client_msg_id":"m-1","sent_at_ms":1700000000000,"text":"hi \"bob\"\n"}"#
        );
        let mut summary = v1::ConversationSummary {
            conversation_id: "d:1:2".into(),
            peer_user_id: 2,
            peer_username: "bob".into(),
            last_message: Some(message(b"")),
            unread_count: 1,
            read_up_to: 2,
        };
        let line = conversation_json(&summary);
        assert!(
            line.starts_with(
                r#"{"conversation_id":"d:1:2","peer_user_id":2,"peer_username":"bob","unread_count":1,"read_up_to":2,"last_message":{"conversation_id":"d:1:2","conv_seq":3,"#
            ),
            "{line}"
        );
        summary.last_message = None;
        assert!(conversation_json(&summary).ends_with(r#""last_message":null}"#));
    }

    /// Checks the command result lines.
    #[test]
    fn result_lines() {
        let ack = v1::SendResponse {
            conversation_id: "d:1:2".into(),
            conv_seq: 3,
            sent_at_ms: 4,
            duplicate: true,
        };
        assert_eq!(
            ack_json(&ack),
            r#"{"conversation_id":"d:1:2","conv_seq":3,"sent_at_ms":4,"duplicate":true}"#
        );
        let reg = v1::RegisterResponse {
            user_id: 1,
            username: "alice".into(),
        };
        assert_eq!(registered_json(&reg), r#"{"user_id":1,"username":"alice"}"#);
        let login = v1::LoginResponse {
            token: "secret".into(),
            user_id: 1,
            username: "alice".into(),
            device_id: 2,
            expires_at_ms: 3,
        };
        assert_eq!(
            logged_in_json(&login),
            r#"{"user_id":1,"device_id":2,"expires_at_ms":3}"#
        );
    }
}
