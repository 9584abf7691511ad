//! Sync keys: opaque to clients, authenticated by the server.
//!
//! Version 1 layout (25 bytes): `[1][user_id: u64 BE][seq: u64 BE][mac: 8]`
//! where `mac` is the first 8 bytes of HMAC-SHA256(secret, first 17 bytes).
//! The MAC lets the server refuse forged or foreign keys with
//! `INVALID_SYNC_KEY` instead of serving another position. The version byte
//! lets later versions add fields (large-group cursors, a log epoch) without
//! a client change.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::UserId;
use crate::error::CoreError;

const KEY_VERSION_1: u8 = 1;
const KEY_V1_BYTES: usize = 1 + 8 + 8 + MAC_BYTES;
const MAC_BYTES: usize = 8;

/// Issues and checks sync keys with a server secret.
#[derive(Clone)]
pub struct SyncKeys {
    secret: [u8; 32],
}

impl std::fmt::Debug for SyncKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncKeys(..)")
    }
}

impl SyncKeys {
    /// Keys signed with `secret`.
    pub fn new(secret: [u8; 32]) -> Self {
        SyncKeys { secret }
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_BYTES] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .expect("HMAC takes any key length");
        m.update(body);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&full[..MAC_BYTES]);
        out
    }

    /// The key for `user` positioned after `seq`.
    pub fn encode(&self, user: UserId, seq: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(KEY_V1_BYTES);
        k.push(KEY_VERSION_1);
        k.extend_from_slice(&user.to_be_bytes());
        k.extend_from_slice(&seq.to_be_bytes());
        let mac = self.mac(&k);
        k.extend_from_slice(&mac);
        k
    }

    /// The seq a key from `user` points after. An empty key means 0 (the
    /// start of the log).
    pub fn decode(&self, user: UserId, key: &[u8]) -> Result<u64, CoreError> {
        if key.is_empty() {
            return Ok(0);
        }
        if key[0] != KEY_VERSION_1 {
            return Err(CoreError::InvalidSyncKey("unknown key version"));
        }
        if key.len() != KEY_V1_BYTES {
            return Err(CoreError::InvalidSyncKey("wrong key length"));
        }
        let (body, mac) = key.split_at(1 + 8 + 8);
        // Compare MACs in constant time through the hmac crate.
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .expect("HMAC takes any key length");
        m.update(body);
        if m.verify_truncated_left(mac).is_err() {
            return Err(CoreError::InvalidSyncKey(
                "key was not issued by this server",
            ));
        }
        let key_user = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
        if key_user != user {
            return Err(CoreError::InvalidSyncKey("key belongs to another user"));
        }
        Ok(u64::from_be_bytes(body[9..17].try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks keys round-trip and that every kind of forgery is refused.
    #[test]
    fn keys_roundtrip_and_forgeries_are_refused() {
        let keys = SyncKeys::new([7; 32]);
        let k = keys.encode(42, 1000);
        assert_eq!(keys.decode(42, &k).unwrap(), 1000);
        assert_eq!(keys.decode(42, &[]).unwrap(), 0);
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
}
