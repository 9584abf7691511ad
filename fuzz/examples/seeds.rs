//! Writes the seed inputs under `fuzz/seeds/`: frames as a client and the
//! server send them (handshake, login, send, sync with events of every kind,
//! pushes, errors, groups), in the input format of each target.
//!
//!     cd fuzz && cargo run --example seeds
//!
//! `frame/`: one encoded frame per file. `frame_prefixed/`: two control bytes
//! (read size, limit) then length-prefixed frames, one per file and one file
//! with all of them. `messages/`: a selector byte for the type then the
//! encoded message, for every frame and for every frame's body on its own.

use std::collections::HashMap;
use std::path::Path;

use pigeon_proto::v1::{self, event::Kind, target::To};
use pigeon_proto::{Body, ErrorCode, Frame, encode_frame, encode_frame_prefixed};

fn content(text: &str) -> v1::Content {
    v1::Content {
        text: text.into(),
        payload: vec![0, 1, 2, 0xff],
        payload_type: "application/octet-stream".into(),
    }
}

fn group() -> v1::GroupInfo {
    v1::GroupInfo {
        conversation_id: "g:17".into(),
        name: "pigeons".into(),
        description: "coo".into(),
        settings: Some(v1::GroupSettings {
            post_policy: 1,
            add_policy: 1,
            max_members: 500,
        }),
        owner_id: 1,
        owner_username: "alice".into(),
        member_count: 3,
        large: true,
        created_at_ms: 1_760_000_000_000,
        dissolved: false,
    }
}

fn member(id: u64, name: &str) -> v1::Member {
    v1::Member {
        user_id: id,
        username: name.into(),
        role: 2,
        joined_at_ms: 1_760_000_000_123,
    }
}

fn message(seq: u64) -> v1::Message {
    v1::Message {
        conversation_id: "d:1:2".into(),
        conv_seq: seq,
        sender_id: 1,
        sender_username: "alice".into(),
        sender_device_id: 3,
        client_msg_id: "0192f3c4-7d5e-7a8b-9c0d-1e2f3a4b5c6d".into(),
        sent_at_ms: 1_760_000_000_500,
        content: Some(content("hello, bob")),
        recalled: false,
        edited_at_ms: 0,
    }
}

fn events() -> Vec<v1::Event> {
    let kinds = vec![
        Kind::Message(message(1)),
        Kind::ReadMarker(v1::ReadMarker {
            conversation_id: "d:1:2".into(),
            read_up_to: 1,
        }),
        Kind::GroupChange(v1::GroupChange {
            conversation_id: "g:17".into(),
            actor_id: 1,
            actor_username: "alice".into(),
            kind: 2,
            members: vec![member(2, "bob"), member(3, "carol")],
            group: Some(group()),
        }),
        Kind::Receipt(v1::Receipt {
            conversation_id: "d:1:2".into(),
            user_id: 2,
            username: "bob".into(),
            kind: 2,
            up_to: 1,
        }),
        Kind::ReceiptSummary(v1::ReceiptSummary {
            conversation_id: "g:17".into(),
            conv_seq: 9,
            delivered_count: 40,
            read_count: 12,
            member_count: 100,
        }),
        Kind::MessageRecalled(v1::MessageRecalled {
            conversation_id: "d:1:2".into(),
            conv_seq: 1,
            actor_id: 1,
            recalled_at_ms: 1_760_000_001_000,
        }),
        Kind::MessageEdited(v1::MessageEdited {
            conversation_id: "d:1:2".into(),
            conv_seq: 1,
            content: Some(content("hello again")),
            edited_at_ms: 1_760_000_002_000,
        }),
        Kind::MessageDeleted(v1::MessageDeleted {
            conversation_id: "d:1:2".into(),
            conv_seq: 1,
        }),
        Kind::BlockChanged(v1::BlockChanged {
            user_id: 4,
            username: "mallory".into(),
            blocked: true,
        }),
        Kind::FlagsChanged(v1::FlagsChanged {
            enabled: vec!["edit".into(), "large-groups".into()],
        }),
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, k)| v1::Event {
            seq: 10 + i as u64,
            created_at_ms: 1_760_000_000_000 + i as i64,
            kind: Some(k),
            group_seq: if i == 4 { 77 } else { 0 },
            ..v1::Event::default()
        })
        .collect()
}

fn frames() -> Vec<(&'static str, Frame)> {
    let key = vec![2; 33];
    vec![
        (
            "hello",
            Frame::new(
                1,
                Body::Hello(v1::Hello {
                    min_version: 1,
                    max_version: 1,
                    token: "pgn_s_4f2a9c".into(),
                    client_name: "pigeon-cli/0.1.0".into(),
                }),
            ),
        ),
        (
            "welcome",
            Frame::new(
                1,
                Body::Welcome(v1::Welcome {
                    version: 1,
                    server_min_version: 1,
                    server_max_version: 1,
                    user_id: 1,
                    username: "alice".into(),
                    device_id: 3,
                    heartbeat_interval_ms: 25_000,
                    idle_timeout_ms: 60_000,
                    limits: Some(v1::Limits {
                        frame_bytes_max: 1 << 20,
                        message_bytes_max: 1 << 16,
                        sync_batch_events_max: 500,
                        history_page_max: 100,
                        inflight_requests_max: 64,
                        client_msg_id_bytes_max: 64,
                    }),
                    server_name: "pigeon/0.1.0".into(),
                    flags: vec!["edit".into()],
                }),
            ),
        ),
        ("ping", Frame::new(7, Body::Ping(v1::Ping { nonce: 99 }))),
        (
            "pong",
            Frame::new(
                7,
                Body::Pong(v1::Pong {
                    nonce: 99,
                    server_time_ms: 1_760_000_000_000,
                }),
            ),
        ),
        (
            "login",
            Frame::new(
                2,
                Body::LoginRequest(v1::LoginRequest {
                    username: "alice".into(),
                    password: "correct horse battery".into(),
                    device_name: "laptop".into(),
                }),
            ),
        ),
        (
            "send",
            Frame::new(
                3,
                Body::SendRequest(v1::SendRequest {
                    client_msg_id: "0192f3c4-7d5e-7a8b-9c0d-1e2f3a4b5c6d".into(),
                    target: Some(v1::Target {
                        to: Some(To::Username("bob".into())),
                    }),
                    content: Some(content("hello, bob")),
                }),
            ),
        ),
        (
            "send_response",
            Frame::new(
                3,
                Body::SendResponse(v1::SendResponse {
                    conversation_id: "d:1:2".into(),
                    conv_seq: 1,
                    sent_at_ms: 1_760_000_000_500,
                    duplicate: true,
                }),
            ),
        ),
        (
            "sync",
            Frame::new(
                4,
                Body::SyncRequest(v1::SyncRequest {
                    key: key.clone(),
                    limit: 100,
                }),
            ),
        ),
        (
            "sync_response",
            Frame::new(
                4,
                Body::SyncResponse(v1::SyncResponse {
                    events: events(),
                    key: key.clone(),
                    has_more: true,
                    packed: None,
                }),
            ),
        ),
        (
            "events_push",
            Frame::push(Body::EventsPush(v1::EventsPush {
                prev_key: key.clone(),
                events: events()[..2].to_vec(),
                key: key.clone(),
                packed: None,
            })),
        ),
        ("sync_response_packed", {
            let mut events = events();
            let packed = pigeon_proto::packing::pack(&mut events, 1);
            Frame::new(
                5,
                Body::SyncResponse(v1::SyncResponse {
                    events,
                    key,
                    has_more: false,
                    packed: Some(packed),
                }),
            )
        }),
        (
            "sync_notice",
            Frame::push(Body::SyncNotice(v1::SyncNotice {})),
        ),
        (
            "error",
            Frame::error(
                5,
                ErrorCode::InvalidSyncKey,
                "key was not issued by this server",
            ),
        ),
        (
            "busy",
            Frame::new(
                6,
                Body::Error(v1::Error {
                    code: ErrorCode::Busy as i32,
                    message: "slow down".into(),
                    retry_after_ms: 250,
                }),
            ),
        ),
        (
            "goodbye",
            Frame::push(Body::Goodbye(v1::Goodbye {
                code: ErrorCode::ShuttingDown as i32,
                message: "draining".into(),
                redirect_to: vec!["tcp://10.0.0.2:7700".into(), "ws://10.0.0.2:7780/ws".into()],
                retry_after_ms: 1000,
            })),
        ),
        (
            "history_response",
            Frame::new(
                8,
                Body::HistoryResponse(v1::HistoryResponse {
                    conversation_id: "d:1:2".into(),
                    messages: vec![message(2), message(1)],
                    has_more: false,
                }),
            ),
        ),
        (
            "list_conversations_response",
            Frame::new(
                9,
                Body::ListConversationsResponse(v1::ListConversationsResponse {
                    conversations: vec![v1::ConversationSummary {
                        conversation_id: "g:17".into(),
                        peer_user_id: 0,
                        peer_username: String::new(),
                        last_message: Some(message(5)),
                        unread_count: 2,
                        read_up_to: 3,
                        group: Some(group()),
                        my_role: 3,
                    }],
                }),
            ),
        ),
        (
            "create_group",
            Frame::new(
                10,
                Body::CreateGroupRequest(v1::CreateGroupRequest {
                    name: "pigeons".into(),
                    description: "coo".into(),
                    members: vec!["bob".into(), "carol".into()],
                    settings: group().settings,
                }),
            ),
        ),
        (
            "add_members_response",
            Frame::new(
                11,
                Body::AddMembersResponse(v1::AddMembersResponse {
                    group: Some(group()),
                    added: vec![member(5, "dave")],
                }),
            ),
        ),
        (
            "get_receipts",
            Frame::new(
                12,
                Body::GetReceiptsRequest(v1::GetReceiptsRequest {
                    conversation_id: "g:17".into(),
                    conv_seqs: vec![1, 2, 300, u64::MAX],
                }),
            ),
        ),
        (
            "presence_push",
            Frame::push(Body::PresencePush(v1::PresencePush {
                presence: Some(v1::Presence {
                    user_id: 2,
                    username: "bob".into(),
                    state: 1,
                    last_seen_ms: 1_760_000_000_000,
                }),
            })),
        ),
        (
            "typing_push",
            Frame::push(Body::TypingPush(v1::TypingPush {
                conversation_id: "d:1:2".into(),
                user_id: 2,
                username: "bob".into(),
                typing: true,
            })),
        ),
        (
            "edit",
            Frame::new(
                13,
                Body::EditMessageRequest(v1::EditMessageRequest {
                    conversation_id: "d:1:2".into(),
                    conv_seq: 1,
                    content: Some(content("edited")),
                }),
            ),
        ),
    ]
}

/// Field number of each `Frame.body` variant -> its message type, read from
/// the `.proto` so the seeds follow it.
fn body_types() -> HashMap<u64, String> {
    let proto = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../proto/pigeon/v1/pigeon.proto"
    ))
    .unwrap();
    let start = proto.find("oneof body {").unwrap();
    let end = start + proto[start..].find("\n  }").unwrap();
    proto[start..end]
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (decl, num) = l.strip_suffix(';')?.split_once(" = ")?;
            let ty = decl.split_whitespace().next()?;
            Some((num.parse().ok()?, ty.to_string()))
        })
        .collect()
}

fn varint(bytes: &mut &[u8]) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = bytes[0];
        *bytes = &bytes[1..];
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
    }
    v
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let types = body_types();
    let selector = |name: &str| {
        pigeon_fuzz::MESSAGES
            .iter()
            .position(|(n, _)| *n == name)
            .unwrap() as u8
    };
    let mut stream = vec![7u8, 0];
    for (name, frame) in frames() {
        let plain = encode_frame(&frame);
        write(&root.join("frame"), name, &plain);
        let prefixed = encode_frame_prefixed(&frame);
        stream.extend_from_slice(&prefixed);
        let mut one = vec![0u8, 0];
        one.extend_from_slice(&prefixed);
        write(&root.join("frame_prefixed"), name, &one);

        let mut msg = vec![selector("Frame")];
        msg.extend_from_slice(&plain);
        write(&root.join("messages"), &format!("frame_{name}"), &msg);
        // The body alone: with request_id 0 the frame is just the body's
        // tag, length and bytes.
        let body_only = encode_frame(&Frame::push(frame.body.clone().unwrap()));
        let mut rest = &body_only[..];
        let field = varint(&mut rest) >> 3;
        let len = varint(&mut rest) as usize;
        assert_eq!(rest.len(), len);
        let ty = &types[&field];
        let mut msg = vec![selector(ty)];
        msg.extend_from_slice(rest);
        write(&root.join("messages"), &format!("body_{name}"), &msg);
    }
    write(&root.join("frame_prefixed"), "all_frames", &stream);
    // Every frame of the stream, cut short: the decoder waits for more.
    let cut = stream.len() - 3;
    write(
        &root.join("frame_prefixed"),
        "all_frames_cut",
        &stream[..cut],
    );
    println!("seeds written under {}", root.display());
}
