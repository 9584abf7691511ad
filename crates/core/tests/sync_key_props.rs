//! Property tests of sync keys (issue 5, "Fuzzing"): for arbitrary users and
//! positions a key decodes to what was encoded, for its own user only; any
//! single-bit flip, truncation or extension is refused, as is a key signed
//! with another secret; garbage never panics. The coverage-guided version is
//! the `sync_key` fuzz target (see docs/TESTING.md, "Fuzzing").

use pigeon_core::Position;
use pigeon_core::sync_key::SyncKeys;
use proptest::prelude::*;

fn secret() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

/// Any position, the start (0, 0) included: its key is a key like the
/// others, not the empty key.
fn position() -> impl Strategy<Value = Position> {
    let word = prop_oneof![Just(0u64), Just(1), Just(u64::MAX), any::<u64>()];
    (word.clone(), word).prop_map(|(seq, stream)| Position { seq, stream })
}

fn user() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(1), Just(u64::MAX), any::<u64>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// encode → decode gives the position back, for the key's own user.
    #[test]
    fn keys_roundtrip(secret in secret(), user in user(), pos in position()) {
        let keys = SyncKeys::new(secret);
        let key = keys.encode(user, pos);
        prop_assert_eq!(key.len(), 33);
        prop_assert_eq!(keys.decode(user, &key).unwrap(), pos);
        // Deterministic: the same (user, position) always gives the same key.
        prop_assert_eq!(keys.encode(user, pos), key);
    }

    /// The empty key (a new device's) reads as the start for every user,
    /// and the server never issues it: the key of the start is a signed key.
    #[test]
    fn the_empty_key_is_never_issued(secret in secret(), user in user(), other in user()) {
        let keys = SyncKeys::new(secret);
        prop_assert_eq!(keys.encode(user, Position::default()).len(), 33);
        prop_assert_eq!(keys.decode(other, &[]).unwrap(), Position::default());
    }

    /// Flipping any single bit of a key makes it invalid.
    #[test]
    fn every_single_bit_flip_is_refused(secret in secret(), user in user(), pos in position()) {
        let keys = SyncKeys::new(secret);
        let key = keys.encode(user, pos);
        for bit in 0..key.len() * 8 {
            let mut flipped = key.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(
                keys.decode(user, &flipped).is_err(),
                "bit {} flipped was accepted", bit
            );
        }
    }

    /// A key presented by any other user is refused.
    #[test]
    fn other_users_keys_are_refused(
        secret in secret(),
        owner in user(),
        other in user(),
        pos in position(),
    ) {
        prop_assume!(owner != other);
        let keys = SyncKeys::new(secret);
        let key = keys.encode(owner, pos);
        prop_assert!(keys.decode(other, &key).is_err());
        // The other user's own key for the same position differs.
        prop_assert_ne!(keys.encode(other, pos), key);
    }

    /// A key issued with another secret (another server) is refused.
    #[test]
    fn other_servers_keys_are_refused(
        secret in secret(),
        other_secret in secret(),
        user in user(),
        pos in position(),
    ) {
        prop_assume!(secret != other_secret);
        let key = SyncKeys::new(other_secret).encode(user, pos);
        prop_assert!(SyncKeys::new(secret).decode(user, &key).is_err());
    }

    /// Truncated or extended keys are refused.
    #[test]
    fn truncated_and_extended_keys_are_refused(
        secret in secret(),
        user in user(),
        pos in position(),
        tail in proptest::collection::vec(any::<u8>(), 1..16),
    ) {
        let keys = SyncKeys::new(secret);
        let key = keys.encode(user, pos);
        for len in 1..key.len() {
            prop_assert!(keys.decode(user, &key[..len]).is_err(), "truncated to {}", len);
        }
        let mut longer = key.clone();
        longer.extend_from_slice(&tail);
        prop_assert!(keys.decode(user, &longer).is_err());
    }

    /// Garbage never panics, and is refused unless it is the empty key (a
    /// 64-bit MAC is not guessed by chance).
    #[test]
    fn garbage_is_refused_without_panicking(
        secret in secret(),
        user in user(),
        // Biased towards the two valid lengths and version bytes.
        len in prop_oneof![Just(25usize), Just(33), 1usize..300],
        version in prop_oneof![Just(1u8), Just(2), any::<u8>()],
        fill in any::<u8>(),
        seed in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let keys = SyncKeys::new(secret);
        let mut key: Vec<u8> = seed.into_iter().chain(std::iter::repeat(fill)).take(len).collect();
        key[0] = version;
        prop_assert!(keys.decode(user, &key).is_err());
    }
}
