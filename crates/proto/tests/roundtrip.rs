//! Property tests of the wire format (issue 5, "Fuzzing"): generated frames
//! with many kinds of body survive encode → decode, plain (WebSocket) and
//! length-prefixed (TCP) with the stream cut at arbitrary points; garbage,
//! and valid frames with bytes flipped or cut off, never panic the decoders.
//! The coverage-guided versions of these checks are the targets in `fuzz/`
//! (see docs/TESTING.md, "Fuzzing").

use bytes::BytesMut;
use pigeon_proto::v1::{self, event::Kind, target::To};
use pigeon_proto::{
    Body, Frame, FrameError, decode_frame, encode_frame, encode_frame_prefixed, try_decode_prefixed,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use prost::Message as _;

const MAX: usize = pigeon_proto::limits::FRAME_BYTES_MAX_DEFAULT;

// ------------------------------------------------------------- strategies

/// Short strings with any characters, multi-byte UTF-8 included.
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

/// Enum fields: known values mostly, but any i32 (a newer peer's value) too.
fn enum_value(known: i32) -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0..known, 1 => any::<i32>()]
}

fn content() -> impl Strategy<Value = v1::Content> {
    (text(), bytes(48), text()).prop_map(|(text, payload, payload_type)| v1::Content {
        text,
        payload,
        payload_type,
    })
}

fn target() -> impl Strategy<Value = v1::Target> {
    option::of(prop_oneof![
        text().prop_map(To::Username),
        text().prop_map(To::ConversationId)
    ])
    .prop_map(|to| v1::Target { to })
}

fn message() -> impl Strategy<Value = v1::Message> {
    (
        (text(), any::<u64>(), any::<u64>(), text(), any::<u64>()),
        (
            text(),
            any::<i64>(),
            option::of(content()),
            any::<bool>(),
            any::<i64>(),
        ),
    )
        .prop_map(
            |(
                (conversation_id, conv_seq, sender_id, sender_username, sender_device_id),
                (client_msg_id, sent_at_ms, content, recalled, edited_at_ms),
            )| v1::Message {
                conversation_id,
                conv_seq,
                sender_id,
                sender_username,
                sender_device_id,
                client_msg_id,
                sent_at_ms,
                content,
                recalled,
                edited_at_ms,
            },
        )
}

fn group_info() -> impl Strategy<Value = v1::GroupInfo> {
    (
        (
            text(),
            text(),
            text(),
            enum_value(2),
            enum_value(2),
            any::<u32>(),
        ),
        (
            any::<u64>(),
            text(),
            any::<u32>(),
            any::<bool>(),
            any::<i64>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (conversation_id, name, description, post_policy, add_policy, max_members),
                (owner_id, owner_username, member_count, large, created_at_ms, dissolved),
            )| v1::GroupInfo {
                conversation_id,
                name,
                description,
                settings: Some(v1::GroupSettings {
                    post_policy,
                    add_policy,
                    max_members,
                }),
                owner_id,
                owner_username,
                member_count,
                large,
                created_at_ms,
                dissolved,
            },
        )
}

fn member() -> impl Strategy<Value = v1::Member> {
    (any::<u64>(), text(), enum_value(4), any::<i64>()).prop_map(
        |(user_id, username, role, joined_at_ms)| v1::Member {
            user_id,
            username,
            role,
            joined_at_ms,
        },
    )
}

/// An event of any kind (or none: a kind a newer server added).
fn event() -> impl Strategy<Value = v1::Event> {
    let kind = prop_oneof![
        message().prop_map(Kind::Message),
        (text(), any::<u64>()).prop_map(|(conversation_id, read_up_to)| {
            Kind::ReadMarker(v1::ReadMarker {
                conversation_id,
                read_up_to,
            })
        }),
        (
            text(),
            any::<u64>(),
            text(),
            enum_value(9),
            vec(member(), 0..4),
            option::of(group_info())
        )
            .prop_map(
                |(conversation_id, actor_id, actor_username, kind, members, group)| {
                    Kind::GroupChange(v1::GroupChange {
                        conversation_id,
                        actor_id,
                        actor_username,
                        kind,
                        members,
                        group,
                    })
                }
            ),
        (text(), any::<u64>(), text(), enum_value(3), any::<u64>()).prop_map(
            |(conversation_id, user_id, username, kind, up_to)| Kind::Receipt(v1::Receipt {
                conversation_id,
                user_id,
                username,
                kind,
                up_to,
            })
        ),
        (
            text(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(
                |(conversation_id, conv_seq, delivered_count, read_count, member_count)| {
                    Kind::ReceiptSummary(v1::ReceiptSummary {
                        conversation_id,
                        conv_seq,
                        delivered_count,
                        read_count,
                        member_count,
                    })
                }
            ),
        (text(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(
            |(conversation_id, conv_seq, actor_id, recalled_at_ms)| {
                Kind::MessageRecalled(v1::MessageRecalled {
                    conversation_id,
                    conv_seq,
                    actor_id,
                    recalled_at_ms,
                })
            }
        ),
        (text(), any::<u64>(), option::of(content()), any::<i64>()).prop_map(
            |(conversation_id, conv_seq, content, edited_at_ms)| {
                Kind::MessageEdited(v1::MessageEdited {
                    conversation_id,
                    conv_seq,
                    content,
                    edited_at_ms,
                })
            }
        ),
        (text(), any::<u64>()).prop_map(|(conversation_id, conv_seq)| {
            Kind::MessageDeleted(v1::MessageDeleted {
                conversation_id,
                conv_seq,
            })
        }),
        (any::<u64>(), text(), any::<bool>()).prop_map(|(user_id, username, blocked)| {
            Kind::BlockChanged(v1::BlockChanged {
                user_id,
                username,
                blocked,
            })
        }),
        vec(text(), 0..4).prop_map(|enabled| Kind::FlagsChanged(v1::FlagsChanged { enabled })),
    ];
    (any::<u64>(), any::<i64>(), option::of(kind), any::<u64>()).prop_map(
        |(seq, created_at_ms, kind, group_seq)| v1::Event {
            seq,
            created_at_ms,
            kind,
            group_seq,
            ..v1::Event::default()
        },
    )
}

/// A frame body of many kinds: handshake, requests, responses, pushes,
/// errors and connection control.
fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), text(), text()).prop_map(
            |(min_version, max_version, token, client_name)| Body::Hello(v1::Hello {
                min_version,
                max_version,
                token,
                client_name,
            })
        ),
        (text(), option::of(target()), option::of(content())).prop_map(
            |(client_msg_id, target, content)| Body::SendRequest(v1::SendRequest {
                client_msg_id,
                target,
                content,
            })
        ),
        (text(), any::<u64>(), any::<i64>(), any::<bool>()).prop_map(
            |(conversation_id, conv_seq, sent_at_ms, duplicate)| {
                Body::SendResponse(v1::SendResponse {
                    conversation_id,
                    conv_seq,
                    sent_at_ms,
                    duplicate,
                })
            }
        ),
        (bytes(40), any::<u32>())
            .prop_map(|(key, limit)| Body::SyncRequest(v1::SyncRequest { key, limit })),
        (vec(event(), 0..6), bytes(40), any::<bool>()).prop_map(|(events, key, has_more)| {
            Body::SyncResponse(v1::SyncResponse {
                events,
                key,
                has_more,
                packed: None,
            })
        }),
        (bytes(40), vec(event(), 0..4), bytes(40)).prop_map(|(prev_key, events, key)| {
            Body::EventsPush(v1::EventsPush {
                prev_key,
                events,
                key,
                packed: None,
            })
        }),
        Just(Body::SyncNotice(v1::SyncNotice {})),
        (enum_value(600), text(), any::<u32>()).prop_map(|(code, message, retry_after_ms)| {
            Body::Error(v1::Error {
                code,
                message,
                retry_after_ms,
            })
        }),
        (enum_value(600), text(), vec(text(), 0..3), any::<u32>()).prop_map(
            |(code, message, redirect_to, retry_after_ms)| Body::Goodbye(v1::Goodbye {
                code,
                message,
                redirect_to,
                retry_after_ms,
            })
        ),
        any::<u64>().prop_map(|nonce| Body::Ping(v1::Ping { nonce })),
        (any::<u64>(), any::<i64>()).prop_map(|(nonce, server_time_ms)| Body::Pong(v1::Pong {
            nonce,
            server_time_ms
        })),
        (option::of(target()), any::<u64>(), any::<u32>()).prop_map(|(target, before, limit)| {
            Body::HistoryRequest(v1::HistoryRequest {
                target,
                before,
                limit,
            })
        }),
        (text(), vec(message(), 0..4), any::<bool>()).prop_map(
            |(conversation_id, messages, has_more)| Body::HistoryResponse(v1::HistoryResponse {
                conversation_id,
                messages,
                has_more,
            })
        ),
        (option::of(group_info()), vec(member(), 0..4)).prop_map(|(group, added)| {
            Body::AddMembersResponse(v1::AddMembersResponse { group, added })
        }),
        (text(), vec(any::<u64>(), 0..8)).prop_map(|(conversation_id, conv_seqs)| {
            Body::GetReceiptsRequest(v1::GetReceiptsRequest {
                conversation_id,
                conv_seqs,
            })
        }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    (any::<u64>(), option::of(body())).prop_map(|(request_id, body)| Frame { request_id, body })
}

// ------------------------------------------------------------- helpers

/// Feeds `wire` to `try_decode_prefixed` in the pieces `cuts` marks, taking
/// frames off after each piece until no progress. Returns the frames, the
/// error that stopped the stream (if any) and the bytes left over.
fn decode_stream(
    wire: &[u8],
    cuts: &[usize],
    max: usize,
) -> (Vec<Frame>, Option<FrameError>, usize) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(wire.len());
    points.sort_unstable();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut start = 0;
    for end in points {
        buf.extend_from_slice(&wire[start..end]);
        start = end;
        loop {
            let before = buf.len();
            match try_decode_prefixed(&mut buf, max) {
                Ok(Some(f)) => {
                    assert!(buf.len() + 4 <= before, "a frame consumes its prefix");
                    frames.push(f);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "waiting consumes nothing");
                    break;
                }
                Err(e) => return (frames, Some(e), buf.len()),
            }
        }
    }
    (frames, None, buf.len())
}

/// Decodes `bytes` as an `M`; what decodes re-encodes to an equal message.
fn check_roundtrip<M: prost::Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let _ = M::decode_length_delimited(bytes);
    if let Ok(m) = M::decode(bytes) {
        let again = m.encode_to_vec();
        assert_eq!(again.len(), m.encoded_len());
        assert_eq!(M::decode(&again[..]).expect("re-encoded decodes"), m);
    }
}

macro_rules! message_table {
    ($($t:ident),* $(,)?) => {
        /// Every message type of the `.proto`, with its round-trip check.
        const MESSAGES: &[(&str, fn(&[u8]))] =
            &[$((stringify!($t), check_roundtrip::<v1::$t> as fn(&[u8]))),*];
    };
}

message_table! {
    Frame, Hello, Welcome, Limits, Ping, Pong, Goodbye, Error,
    RegisterRequest, RegisterResponse, LoginRequest, LoginResponse,
    LogoutRequest, LogoutResponse, Target, Content, SendRequest, SendResponse,
    Message, Event, Receipt, ReceiptSummary, MessageRecalled, MessageEdited,
    MessageDeleted, FlagsChanged, BlockChanged, GroupSettings, GroupInfo, Member,
    GroupChange, ReadMarker, SyncRequest, SyncResponse, EventsPush, PackedTables,
    PackedUser, SyncNotice,
    HistoryRequest, HistoryResponse, ListConversationsRequest, ConversationSummary,
    ListConversationsResponse, MarkReadRequest, MarkReadResponse,
    CreateGroupRequest, CreateGroupResponse, UpdateGroupRequest, UpdateGroupResponse,
    AddMembersRequest, AddMembersResponse, RemoveMembersRequest, RemoveMembersResponse,
    LeaveGroupRequest, LeaveGroupResponse, SetRoleRequest, SetRoleResponse,
    TransferOwnershipRequest, TransferOwnershipResponse, DissolveGroupRequest,
    DissolveGroupResponse, GetGroupRequest, GetGroupResponse, ListMembersRequest,
    ListMembersResponse, RecallMessageRequest, RecallMessageResponse,
    EditMessageRequest, EditMessageResponse, DeleteMessageRequest,
    DeleteMessageResponse, GetReceiptsRequest, GetReceiptsResponse,
    SetTypingRequest, SetTypingResponse, TypingPush, Presence, PresencePush,
    GetPresenceRequest, GetPresenceResponse, SetPrivacyRequest, SetPrivacyResponse,
    BlockRequest, BlockResponse, UnblockRequest, UnblockResponse,
    ListBlockedRequest, ListBlockedResponse,
}

/// One byte edit of a valid encoding.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, v)| Edit::Set(at, v)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(at, v)| Edit::Insert(at, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    let n = bytes.len();
    match *edit {
        Edit::Flip(at, bit) if n > 0 => bytes[at % n] ^= 1 << bit,
        Edit::Set(at, v) if n > 0 => bytes[at % n] = v,
        Edit::Truncate(at) => bytes.truncate(at % (n + 1)),
        Edit::Insert(at, v) => bytes.insert(at % (n + 1), v),
        _ => {}
    }
}

// ------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A frame survives the WebSocket encoding, and the size limit is exact.
    #[test]
    fn plain_frames_roundtrip(f in frame()) {
        let wire = encode_frame(&f);
        prop_assert_eq!(wire.len(), f.encoded_len());
        prop_assert_eq!(decode_frame(&wire, MAX), Ok(f.clone()));
        prop_assert_eq!(decode_frame(&wire, wire.len()), Ok(f));
        if !wire.is_empty() {
            prop_assert_eq!(
                decode_frame(&wire, wire.len() - 1),
                Err(FrameError::TooLarge { len: wire.len(), max: wire.len() - 1 })
            );
        }
    }

    /// A stream of length-prefixed frames, cut into pieces at arbitrary
    /// points, yields the same frames in order with nothing left over.
    #[test]
    fn prefixed_stream_roundtrips_however_split(
        frames in vec(frame(), 0..8),
        cuts in vec(any::<usize>(), 0..12),
    ) {
        let mut wire = Vec::new();
        for f in &frames {
            let one = encode_frame_prefixed(f);
            prop_assert_eq!(&one[4..], &encode_frame(f)[..]);
            prop_assert_eq!(u32::from_be_bytes([one[0], one[1], one[2], one[3]]) as usize, one.len() - 4);
            wire.extend_from_slice(&one);
        }
        let (got, err, left) = decode_stream(&wire, &cuts, MAX);
        prop_assert_eq!(err, None);
        prop_assert_eq!(left, 0);
        prop_assert_eq!(got, frames);
    }

    /// A frame announced above the limit is refused as soon as its prefix
    /// is in, however the stream is split, after the frames before it.
    #[test]
    fn oversized_frame_is_refused_in_stream(
        before in vec(frame(), 0..4),
        request_id in any::<u64>(),
        excess in 1usize..100,
        cuts in vec(any::<usize>(), 0..8),
    ) {
        let max = before.iter().map(|f| f.encoded_len()).max().unwrap_or(0);
        let big = Frame::new(
            request_id,
            Body::SyncRequest(v1::SyncRequest { key: vec![7; max + excess], limit: 0 }),
        );
        let big_wire = encode_frame_prefixed(&big);
        prop_assert!(big_wire.len() - 4 > max);
        let mut wire = Vec::new();
        for f in &before {
            wire.extend_from_slice(&encode_frame_prefixed(f));
        }
        // Only the prefix of the big frame: it is refused without its body.
        wire.extend_from_slice(&big_wire[..4]);
        let (got, err, _) = decode_stream(&wire, &cuts, max);
        prop_assert_eq!(got, before);
        prop_assert_eq!(err, Some(FrameError::TooLarge { len: big_wire.len() - 4, max }));
    }

    /// Garbage never panics either decoder, and a garbage stream gives the
    /// same frames and error however it is split.
    #[test]
    fn garbage_never_panics(
        data in bytes(600),
        cuts in vec(any::<usize>(), 0..16),
        small_limit in any::<bool>(),
    ) {
        let max = if small_limit { 64 } else { MAX };
        if let Ok(f) = decode_frame(&data, max) {
            prop_assert_eq!(decode_frame(&encode_frame(&f), MAX), Ok(f));
        }
        let whole = decode_stream(&data, &[], max);
        let split = decode_stream(&data, &cuts, max);
        prop_assert_eq!(&split.0, &whole.0);
        prop_assert_eq!(&split.1, &whole.1);
    }

    /// Garbage with a plausible length prefix reaches the protobuf decoder
    /// rather than stopping at the prefix.
    #[test]
    fn garbage_bodies_never_panic(bodies in vec(bytes(80), 1..6)) {
        let mut wire = Vec::new();
        for b in &bodies {
            wire.extend_from_slice(&(b.len() as u32).to_be_bytes());
            wire.extend_from_slice(b);
        }
        let (frames, err, left) = decode_stream(&wire, &[], MAX);
        match err {
            None => {
                prop_assert_eq!(frames.len(), bodies.len());
                prop_assert_eq!(left, 0);
            }
            Some(FrameError::Malformed(_)) => prop_assert!(frames.len() < bodies.len()),
            Some(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }

    /// Valid frames with bytes flipped, overwritten, inserted or cut off
    /// never panic the decoder; what still decodes round-trips.
    #[test]
    fn edited_frames_never_panic(f in frame(), edits in vec(edit(), 1..6)) {
        let mut wire = encode_frame(&f);
        for e in &edits {
            apply(&mut wire, e);
        }
        if let Ok(g) = decode_frame(&wire, MAX) {
            prop_assert_eq!(decode_frame(&encode_frame(&g), MAX), Ok(g));
        }
        let mut prefixed = (wire.len() as u32).to_be_bytes().to_vec();
        prefixed.extend_from_slice(&wire);
        let _ = decode_stream(&prefixed, &[3, 7], MAX);
    }

    /// Every message type of the protocol decodes garbage without
    /// panicking, and what decodes round-trips.
    #[test]
    fn every_message_type_survives_garbage(which in any::<usize>(), data in bytes(200)) {
        let (_, check) = MESSAGES[which % MESSAGES.len()];
        check(&data);
    }
}

/// The message table covers exactly the messages the `.proto` declares.
#[test]
fn message_table_lists_every_message_of_the_proto() {
    let proto = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../proto/pigeon/v1/pigeon.proto"
    ))
    .unwrap();
    let mut declared: Vec<&str> = proto
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("message "))
        .map(|rest| rest.split([' ', '{']).next().unwrap())
        .collect();
    let mut listed: Vec<&str> = MESSAGES.iter().map(|(n, _)| *n).collect();
    declared.sort_unstable();
    listed.sort_unstable();
    assert_eq!(listed, declared);
}

/// Each message type gets the same handful of awkward inputs on every run:
/// empty, truncated varints and lengths, wrong wire types, invalid UTF-8,
/// deep group nesting, unknown fields.
#[test]
fn every_message_type_survives_fixed_garbage() {
    let mut inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x08],
        vec![
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
        vec![0x0a, 0x05, b'a'],
        vec![0x0a, 0x02, 0xc3, 0x28],
        vec![0x12, 0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![0x0d, 1, 2, 3, 4, 0x11, 1, 2, 3, 4, 5, 6, 7, 8],
        vec![0xBA, 0x3E, 0x00, 0x08, 0x05],
        vec![0x00],
        vec![0x07],
        vec![0x0b; 200],
        vec![0x1a; 200],
        vec![0x42, 0x00, 0x42, 0x00],
    ];
    for field in 1..=20u8 {
        for wire_type in 0..=7u8 {
            inputs.push(vec![field << 3 | wire_type, 0x01, 0x01, 0x01]);
        }
    }
    for (_, check) in MESSAGES {
        for input in &inputs {
            check(input);
        }
    }
}

/// A frame carrying every kind of event round-trips through both framings.
#[test]
fn sync_response_with_every_event_kind_roundtrips() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let events: Vec<v1::Event> = (0..64)
        .map(|_| event().new_tree(&mut runner).unwrap().current())
        .collect();
    let kinds: std::collections::HashSet<_> = events
        .iter()
        .filter_map(|e| e.kind.as_ref().map(std::mem::discriminant))
        .collect();
    assert!(kinds.len() >= 8, "the strategy produces many event kinds");
    let f = Frame::new(
        9,
        Body::SyncResponse(v1::SyncResponse {
            events,
            key: vec![2; 33],
            has_more: true,
            packed: None,
        }),
    );
    assert_eq!(decode_frame(&encode_frame(&f), MAX), Ok(f.clone()));
    let mut buf = BytesMut::from(&encode_frame_prefixed(&f)[..]);
    assert_eq!(try_decode_prefixed(&mut buf, MAX), Ok(Some(f)));
    assert!(buf.is_empty());
}
