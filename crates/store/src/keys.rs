//! Key layouts. Integers are big-endian so byte order is numeric order;
//! conversation ids never contain a 0 byte, which ends them in composite keys.

use pigeon_core::UserId;

/// `user` as a key.
pub fn user_id(user: UserId) -> Vec<u8> {
    user.to_be_bytes().to_vec()
}

/// A sync-log entry: `user ++ seq`.
pub fn log(user: UserId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&user.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The user part of a log key.
pub fn log_user(key: &[u8]) -> UserId {
    u64::from_be_bytes(key[..8].try_into().expect("log keys are 16 bytes"))
}

/// The seq part of a log key.
pub fn log_seq(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[8..16].try_into().expect("log keys are 16 bytes"))
}

/// A timeline entry: `conversation ++ 0 ++ conv_seq`.
pub fn timeline(conv: &str, conv_seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(conv.len() + 9);
    k.extend_from_slice(conv.as_bytes());
    k.push(0);
    k.extend_from_slice(&conv_seq.to_be_bytes());
    k
}

/// The per-user conversation summary: `user ++ conversation`.
pub fn conv_state(user: UserId, conv: &str) -> Vec<u8> {
    let mut k = user.to_be_bytes().to_vec();
    k.extend_from_slice(conv.as_bytes());
    k
}

/// The idempotency record of a send: `sender ++ client_msg_id`.
pub fn dedup(sender: UserId, client_msg_id: &str) -> Vec<u8> {
    let mut k = sender.to_be_bytes().to_vec();
    k.extend_from_slice(client_msg_id.as_bytes());
    k
}

/// Meta key of the next user id.
pub const NEXT_USER_ID: &[u8] = b"next_user_id";

/// Meta key of a user's sync-log seq high-water mark.
pub fn hw_user(user: UserId) -> Vec<u8> {
    format!("hw/u/{user}").into_bytes()
}

/// Meta key of a conversation's seq high-water mark.
pub fn hw_conv(conv: &str) -> Vec<u8> {
    format!("hw/c/{conv}").into_bytes()
}

/// Meta key of the highest trimmed seq of a user's log.
pub fn trimmed(user: UserId) -> Vec<u8> {
    format!("trim/{user}").into_bytes()
}

/// The Meta keys [`trimmed`] makes lie in `start..end`.
pub fn trimmed_range() -> (Vec<u8>, Vec<u8>) {
    (b"trim/".to_vec(), b"trim0".to_vec())
}

/// The user of a key made by [`trimmed`].
pub fn trimmed_user(key: &[u8]) -> Option<UserId> {
    std::str::from_utf8(key.strip_prefix(b"trim/")?)
        .ok()?
        .parse()
        .ok()
}

/// Meta key of a user's device counter.
pub fn devices(user: UserId) -> Vec<u8> {
    format!("dev/{user}").into_bytes()
}

/// Meta key of a named secret.
pub fn secret(name: &str) -> Vec<u8> {
    format!("secret/{name}").into_bytes()
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

/// A u64 stored as 8 big-endian bytes.
pub fn u64_value(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// Reads a value written by [`u64_value`].
pub fn read_u64(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_be_bytes)
}

/// Two ids: `a ++ b` (group members, user groups, blocks).
pub fn pair(a: u64, b: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(&b.to_be_bytes());
    k
}

/// The second id of a [`pair`] key.
pub fn pair_second(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[8..16].try_into().expect("pair keys are 16 bytes"))
}

/// A message hidden for a user: `user ++ conversation ++ 0 ++ conv_seq`.
pub fn hidden(user: UserId, conv: &str, conv_seq: u64) -> Vec<u8> {
    let mut k = user.to_be_bytes().to_vec();
    k.extend_from_slice(&timeline(conv, conv_seq));
    k
}

/// A user's receipt positions in a conversation: `conversation ++ 0 ++ user`.
pub fn position(conv: &str, user: UserId) -> Vec<u8> {
    timeline(conv, user)
}

/// Meta key of the next group id.
pub const NEXT_GROUP_ID: &[u8] = b"next_group_id";

/// Meta key of the shared stream's seq high-water mark.
pub const HW_STREAM: &[u8] = b"hw/stream";

/// Meta key of the last committed shared-stream seq.
pub const STREAM_HEAD: &[u8] = b"stream_head";

/// Meta key of a user's preferences.
pub fn prefs(user: UserId) -> Vec<u8> {
    format!("prefs/{user}").into_bytes()
}

/// Meta key of the webhook delivery id high-water mark.
pub const HW_OUTBOX: &[u8] = b"hw/outbox";

/// A pending delivery by due time: `next_attempt_ms ++ id`.
pub fn due(next_attempt_ms: i64, id: u64) -> Vec<u8> {
    pair(next_attempt_ms.max(0) as u64, id)
}

/// Meta key of a feature flag.
pub fn flag(name: &str) -> Vec<u8> {
    format!("flag/{name}").into_bytes()
}

/// The prefix of every feature flag's meta key.
pub const FLAG_PREFIX: &[u8] = b"flag/";

/// The "group" of the system stream, read by every user.
pub const SYSTEM_STREAM: u64 = 0;
/// Prefix of the Meta keys indexing a user's live sessions.
const USER_SESSION_PREFIX: &[u8] = b"us/";

/// Meta key indexing a live session of `user`: `us/ ++ user ++ token hash`.
pub fn user_session(user: UserId, token_hash: &str) -> Vec<u8> {
    let mut k = user_sessions(user);
    k.extend_from_slice(token_hash.as_bytes());
    k
}

/// The prefix of every [`user_session`] key of `user`.
pub fn user_sessions(user: UserId) -> Vec<u8> {
    let mut k = USER_SESSION_PREFIX.to_vec();
    k.extend_from_slice(&user.to_be_bytes());
    k
}

/// The token hash in a [`user_session`] key.
pub fn user_session_token(key: &[u8]) -> &[u8] {
    &key[USER_SESSION_PREFIX.len() + 8..]
}

/// Meta key set once the sessions that existed before the per-user index
/// have been indexed.
pub const SESSIONS_INDEXED: &[u8] = b"sessions_indexed";
