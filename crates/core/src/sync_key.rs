//! Sync keys: opaque to clients, authenticated by the server.
//!
//! Version 2 layout (33 bytes): `[2][user_id: u64 BE][seq: u64 BE][stream:
//! u64 BE][mac: 8]`: the position in the user's own log, the position in the
//! shared logs of large groups, and the first 8 bytes of
//! HMAC-SHA256(secret, the bytes before it). Version 1 keys (25 bytes, no
//! stream position) are still accepted and read as stream position 0.
//! The MAC lets the server refuse forged or foreign keys with
//! `INVALID_SYNC_KEY` instead of serving another position. The version byte
//! lets later versions add fields (large-group cursors, a log epoch) without
//! a client change.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::UserId;
use crate::error::CoreError;

const KEY_VERSION_1: u8 = 1;
const KEY_VERSION_2: u8 = 2;
const KEY_V1_BYTES: usize = 1 + 8 + 8 + MAC_BYTES;
const KEY_V2_BYTES: usize = 1 + 8 + 8 + 8 + MAC_BYTES;
const MAC_BYTES: usize = 8;

/// Where a device is: after `seq` in its user's log and after `stream` in
/// the shared logs of the user's large groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The user's own log.
    pub seq: u64,
    /// The shared logs of large groups.
    pub stream: u64,
}

/// Issues and checks sync keys with a server secret.
#[derive(Clone)]
pub struct SyncKeys {
    /// HMAC-SHA256 keyed with the secret, cloned for each key: keying
    /// hashes the secret's two pads, half the work of a short key's MAC.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for SyncKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncKeys(..)")
    }
}

impl SyncKeys {
    /// Keys signed with `secret`.
    pub fn new(secret: [u8; 32]) -> Self {
        SyncKeys {
            keyed: <Hmac<Sha256> as KeyInit>::new_from_slice(&secret)
                .expect("HMAC takes any key length"),
        }
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_BYTES] {
        let mut m = self.keyed.clone();
        m.update(body);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&full[..MAC_BYTES]);
        out
    }

    /// The key for `user` at `pos`. Never empty, even at the start: the
    /// empty key is a new device's, which reads from the oldest retained
    /// event, while a key at seq 0 is a device that has seen the log empty
    /// and so must not skip events trimmed since.
    pub fn encode(&self, user: UserId, pos: Position) -> Vec<u8> {
        let mut k = Vec::with_capacity(KEY_V2_BYTES);
        k.push(KEY_VERSION_2);
        k.extend_from_slice(&user.to_be_bytes());
        k.extend_from_slice(&pos.seq.to_be_bytes());
        k.extend_from_slice(&pos.stream.to_be_bytes());
        let mac = self.mac(&k);
        k.extend_from_slice(&mac);
        k
    }

    /// The position a key from `user` holds. The empty key (a new device's)
    /// is read as the start; `Service::sync` tells it apart from a key at
    /// seq 0.
    pub fn decode(&self, user: UserId, key: &[u8]) -> Result<Position, CoreError> {
        if key.is_empty() {
            return Ok(Position::default());
        }
        let len = match key[0] {
            KEY_VERSION_1 => KEY_V1_BYTES,
            KEY_VERSION_2 => KEY_V2_BYTES,
            _ => return Err(CoreError::InvalidSyncKey("unknown key version")),
        };
        if key.len() != len {
            return Err(CoreError::InvalidSyncKey("wrong key length"));
        }
        let (body, mac) = key.split_at(len - MAC_BYTES);
        // Compare MACs in constant time through the hmac crate.
        let mut m = self.keyed.clone();
        m.update(body);
        if m.verify_truncated_left(mac).is_err() {
            return Err(CoreError::InvalidSyncKey(
                "key was not issued by this server",
            ));
        }
        let word =
            |i: usize| u64::from_be_bytes(body[1 + 8 * i..9 + 8 * i].try_into().expect("8 bytes"));
        if word(0) != user {
            return Err(CoreError::InvalidSyncKey("key belongs to another user"));
        }
        let stream = if key[0] == KEY_VERSION_2 { word(2) } else { 0 };
        Ok(Position {
            seq: word(1),
            stream,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks keys round-trip and that every kind of forgery is refused.
    #[test]
    fn keys_roundtrip_and_forgeries_are_refused() {
        let keys = SyncKeys::new([7; 32]);
        let pos = Position {
            seq: 1000,
            stream: 77,
        };
        let k = keys.encode(42, pos);
        assert_eq!(keys.decode(42, &k).unwrap(), pos);
        assert_eq!(keys.decode(42, &[]).unwrap(), Position::default());
        let start = keys.encode(42, Position::default());
        assert_eq!(
            start.len(),
            KEY_V2_BYTES,
            "the start is a key like any other"
        );
        assert_eq!(keys.decode(42, &start).unwrap(), Position::default());
        assert!(keys.decode(43, &k).is_err(), "another user's key");
        let mut tampered = k.clone();
        tampered[16] ^= 1;
        assert!(keys.decode(42, &tampered).is_err(), "tampered seq");
        assert!(
            SyncKeys::new([8; 32]).decode(42, &k).is_err(),
            "other server"
        );
        assert!(keys.decode(42, &k[..10]).is_err(), "truncated");
        assert!(
            keys.decode(42, b"garbage-garbage-garbage!!").is_err(),
            "garbage"
        );
        assert!(keys.decode(42, &[9]).is_err(), "unknown version");
    }

    /// Checks the MAC is HMAC-SHA256 keyed with the secret, as it was before
    /// the keyed state was kept: keys clients hold stay valid across an
    /// upgrade.
    #[test]
    fn the_mac_is_hmac_sha256_of_the_body() {
        let secret = [3u8; 32];
        let keys = SyncKeys::new(secret);
        let k = keys.encode(7, Position { seq: 9, stream: 2 });
        let (body, mac) = k.split_at(KEY_V2_BYTES - MAC_BYTES);
        let mut fresh = <Hmac<Sha256> as KeyInit>::new_from_slice(&secret).unwrap();
        fresh.update(body);
        assert_eq!(mac, &fresh.finalize().into_bytes()[..MAC_BYTES]);
        // And the same keys come out of clones and of repeated use.
        assert_eq!(keys.clone().encode(7, Position { seq: 9, stream: 2 }), k);
        assert_eq!(keys.encode(7, Position { seq: 9, stream: 2 }), k);
    }

    /// Checks a version 1 key (no stream position) is still accepted.
    #[test]
    fn version_1_keys_are_read() {
        let keys = SyncKeys::new([7; 32]);
        let mut k = vec![KEY_VERSION_1];
        k.extend_from_slice(&42u64.to_be_bytes());
        k.extend_from_slice(&5u64.to_be_bytes());
        let mac = keys.mac(&k);
        k.extend_from_slice(&mac);
        assert_eq!(keys.decode(42, &k).unwrap(), Position { seq: 5, stream: 0 });
    }
}
