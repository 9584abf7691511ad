//! Checks shared by Pigeon's fuzz targets (`fuzz_targets/`), kept in a library
//! so the seed generator (`examples/seeds.rs`) and the unit tests below can use
//! them too.
//!
//! Every check panics on a violated property; libFuzzer reports that panic as a
//! crash and saves the input under `fuzz/artifacts/<target>/`.

use std::fmt::Debug;

use bytes::BytesMut;
use pigeon_proto::v1;
use pigeon_proto::{
    Frame, FrameError, decode_frame, encode_frame, encode_frame_prefixed, try_decode_prefixed,
};
use prost::Message;

/// Decodes `bytes` as an `M`; if that succeeds, the message must re-encode to
/// exactly `encoded_len()` bytes that decode to an equal message, and encoding
/// that again must give the same bytes (prost's encoding is canonical for a
/// given value: fields in number order, unknown fields dropped).
pub fn check_message_roundtrip<M>(bytes: &[u8])
where
    M: Message + Default + PartialEq + Debug,
{
    // The length-delimited form reads a varint length first: another path
    // through the decoder, which must not panic either.
    let _ = M::decode_length_delimited(bytes);
    let Ok(first) = M::decode(bytes) else {
        return;
    };
    let encoded = first.encode_to_vec();
    assert_eq!(encoded.len(), first.encoded_len(), "encoded_len is exact");
    let second = M::decode(&encoded[..]).expect("a re-encoded message decodes");
    assert_eq!(first, second, "decode(encode(m)) == m");
    assert_eq!(second.encode_to_vec(), encoded, "encoding is stable");
    // The length-delimited encoding round-trips as well.
    let delimited = first.encode_length_delimited_to_vec();
    let third = M::decode_length_delimited(&delimited[..]).expect("length-delimited decodes");
    assert_eq!(first, third, "length-delimited round trip");
}

/// Calls `$m! { TypeName, ... }` with every message type declared in
/// `proto/pigeon/v1/pigeon.proto` (88 of them; the test below keeps the list
/// in step with the `.proto` file).
#[macro_export]
macro_rules! for_each_message {
    ($m:ident) => {
        $m! {
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
            ListBlockedRequest, ListBlockedResponse
        }
    };
}

macro_rules! message_table {
    ($($t:ident),* $(,)?) => {
        /// Every protobuf message type of `pigeon_proto::v1`, by name, with its
        /// round-trip check.
        pub const MESSAGES: &[(&str, fn(&[u8]))] = &[
            $((stringify!($t), check_message_roundtrip::<v1::$t> as fn(&[u8]))),*
        ];
    };
}
for_each_message!(message_table);

/// The `messages` target: the first byte picks the message type, the rest is
/// the encoded message.
pub fn check_messages(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let (_, check) = MESSAGES[usize::from(selector) % MESSAGES.len()];
    check(bytes);
}

/// The `frame` target: [`decode_frame`] on arbitrary bytes, with the size
/// limit enforced exactly and accepted frames round-tripping through both
/// wire encodings.
pub fn check_frame(data: &[u8]) {
    let max = pigeon_proto::limits::FRAME_BYTES_MAX_DEFAULT;
    let result = decode_frame(data, max);
    // A lower limit refuses by length alone, before looking at the bytes.
    if !data.is_empty() {
        assert_eq!(
            decode_frame(data, data.len() - 1),
            Err(FrameError::TooLarge {
                len: data.len(),
                max: data.len() - 1
            })
        );
    }
    let Ok(frame) = result else {
        return;
    };
    let plain = encode_frame(&frame);
    assert_eq!(
        decode_frame(&plain, max).as_ref(),
        Ok(&frame),
        "plain round trip"
    );
    let prefixed = encode_frame_prefixed(&frame);
    assert_eq!(prefixed.len(), 4 + plain.len());
    assert_eq!(&prefixed[4..], &plain[..]);
    let mut buf = BytesMut::from(&prefixed[..]);
    assert_eq!(
        try_decode_prefixed(&mut buf, max),
        Ok(Some(frame.clone())),
        "prefixed round trip"
    );
    assert!(buf.is_empty(), "a prefixed frame is consumed whole");
    // The body name used for logs and metrics is total.
    let _ = pigeon_proto::body_name(frame.body.as_ref());
    // A client unpacks whatever events a server sends (protocol version 2)
    // without panicking: it succeeds or names the broken rule.
    let mut events = frame;
    let _ = pigeon_proto::packing::unpack_frame(&mut events);
}

/// What decoding a stream of length-prefixed frames produced: the frames in
/// order and the error that ended it, if any.
#[derive(Debug, PartialEq)]
pub struct StreamOutcome {
    /// The frames decoded, in order.
    pub frames: Vec<Frame>,
    /// The error that stopped decoding (the server then closes the connection).
    pub error: Option<FrameError>,
    /// Bytes left in the buffer when decoding stopped.
    pub left: usize,
}

/// Takes frames off `buf` until [`try_decode_prefixed`] makes no progress
/// (needs more bytes) or fails, checking that each call either consumes a
/// whole frame or leaves the buffer as it was.
fn drain(buf: &mut BytesMut, max: usize, out: &mut StreamOutcome) -> bool {
    loop {
        let before = buf.len();
        match try_decode_prefixed(buf, max) {
            Ok(Some(frame)) => {
                let announced = before - buf.len();
                assert!(announced >= 4, "a decoded frame consumes its prefix");
                assert!(announced - 4 <= max, "a decoded frame is within the limit");
                out.frames.push(frame);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "waiting for bytes consumes none");
                if before >= 4 {
                    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    assert!(len <= max, "an oversized prefix is refused at once");
                    assert!(before < 4 + len, "a complete frame is never left waiting");
                }
                return true;
            }
            Err(e) => {
                out.error = Some(e);
                return false;
            }
        }
    }
}

/// Decodes `wire` as a stream of length-prefixed frames, fed in chunks of
/// `chunk` bytes (0: all at once).
pub fn decode_stream(wire: &[u8], chunk: usize, max: usize) -> StreamOutcome {
    let mut out = StreamOutcome {
        frames: Vec::new(),
        error: None,
        left: 0,
    };
    let mut buf = BytesMut::new();
    let chunk = if chunk == 0 { wire.len().max(1) } else { chunk };
    for piece in wire.chunks(chunk) {
        buf.extend_from_slice(piece);
        if !drain(&mut buf, max, &mut out) {
            break;
        }
    }
    if wire.is_empty() {
        drain(&mut buf, max, &mut out);
    }
    out.left = buf.len();
    out
}

/// The `frame_prefixed` target: byte 0 picks the read size (1..=255 bytes, or
/// 0 for everything at once), byte 1 the size limit; the rest is the stream.
/// However the stream is split, the same frames and the same error come out.
pub fn check_frame_prefixed(data: &[u8]) {
    let [chunk, limit, wire @ ..] = data else {
        return;
    };
    let max = match limit % 4 {
        0 => pigeon_proto::limits::FRAME_BYTES_MAX_DEFAULT,
        1 => 64,
        2 => 0,
        _ => pigeon_proto::limits::FRAME_BYTES_MAX_CEILING,
    };
    let whole = decode_stream(wire, 0, max);
    if *chunk != 0 {
        let split = decode_stream(wire, usize::from(*chunk), max);
        assert_eq!(split.frames, whole.frames, "same frames however split");
        assert_eq!(split.error, whole.error, "same error however split");
        if whole.error.is_none() {
            assert_eq!(split.left, whole.left, "same remainder however split");
        }
    }
}

/// Sync-key helpers for the `sync_key` target: keys built by hand, as the
/// layout in `pigeon_core::sync_key` documents it.
pub mod sync_keys {
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::Sha256;

    /// The fixed secret the target's `SyncKeys` signs with.
    pub const SECRET: [u8; 32] = *b"pigeon-fuzz-sync-key-secret-0001";

    /// A key of `version` (1: no stream position; 2: current) for `user` at
    /// (`seq`, `stream`), signed with `secret`.
    pub fn build(secret: &[u8; 32], version: u8, user: u64, seq: u64, stream: u64) -> Vec<u8> {
        let mut k = vec![version];
        k.extend_from_slice(&user.to_be_bytes());
        k.extend_from_slice(&seq.to_be_bytes());
        if version != 1 {
            k.extend_from_slice(&stream.to_be_bytes());
        }
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
        m.update(&k);
        let full = m.finalize().into_bytes();
        k.extend_from_slice(&full[..8]);
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message table covers exactly the messages the `.proto` declares.
    #[test]
    fn table_lists_every_message_of_the_proto() {
        let proto = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../proto/pigeon/v1/pigeon.proto"
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

    /// The hand-built keys are the ones `SyncKeys::encode` issues.
    #[test]
    fn hand_built_keys_match_encode() {
        let keys = pigeon_core::sync_key::SyncKeys::new(sync_keys::SECRET);
        let pos = pigeon_core::Position { seq: 9, stream: 4 };
        assert_eq!(
            keys.encode(77, pos),
            sync_keys::build(&sync_keys::SECRET, 2, 77, 9, 4)
        );
        let v1 = sync_keys::build(&sync_keys::SECRET, 1, 77, 9, 0);
        assert_eq!(
            keys.decode(77, &v1).unwrap(),
            pigeon_core::Position { seq: 9, stream: 0 }
        );
    }

    /// Every target accepts a few odd inputs without failing.
    #[test]
    fn targets_accept_edge_inputs() {
        for data in [
            &[][..],
            &[0],
            &[0, 0, 0, 0, 0],
            &[255; 40],
            &[1, 1, 0, 0, 0, 1, 8],
        ] {
            check_messages(data);
            check_frame(data);
            check_frame_prefixed(data);
        }
    }
}
