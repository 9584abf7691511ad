//! `SyncKeys::decode` with a fixed secret. Two kinds of input:
//!
//! - `Raw`: arbitrary bytes as the key of an arbitrary user;
//! - `Mutated`: a genuine key (version 1 or 2, signed with the secret) for an
//!   issuing user, edited (bit flips, byte writes, truncation, extension) and
//!   presented as some user's key. Without this the fuzzer could never reach
//!   the accepting path, since it cannot forge the MAC.
//!
//! Properties: decode never panics; an accepted empty key is the start; any
//! other accepted key is exactly the key the server builds for that user and
//! the decoded position (`encode(user, pos)` for version 2 keys, the start
//! included; the documented layout for version 1 keys); an unedited genuine
//! key presented by its own user is accepted with its position.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pigeon_core::Position;
use pigeon_core::sync_key::SyncKeys;
use pigeon_fuzz::sync_keys::{SECRET, build};

#[derive(Arbitrary, Debug)]
enum Edit {
    Flip { at: u8, bit: u8 },
    Set { at: u8, value: u8 },
    Truncate { len: u8 },
    Push { value: u8 },
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw {
        user: u64,
        key: Vec<u8>,
    },
    Mutated {
        issuer: u64,
        user: u64,
        v1: bool,
        seq: u64,
        stream: u64,
        edits: Vec<Edit>,
    },
}

fn apply(key: &mut Vec<u8>, edit: &Edit) {
    match *edit {
        Edit::Flip { at, bit } => {
            if !key.is_empty() {
                let i = usize::from(at) % key.len();
                key[i] ^= 1 << (bit % 8);
            }
        }
        Edit::Set { at, value } => {
            if !key.is_empty() {
                let i = usize::from(at) % key.len();
                key[i] = value;
            }
        }
        Edit::Truncate { len } => key.truncate(usize::from(len)),
        Edit::Push { value } => key.push(value),
    }
}

fuzz_target!(|input: Input| {
    let keys = SyncKeys::new(SECRET);
    let (user, key, genuine) = match input {
        Input::Raw { user, key } => (user, key, None),
        Input::Mutated {
            issuer,
            user,
            v1,
            seq,
            stream,
            edits,
        } => {
            let stream = if v1 { 0 } else { stream };
            let original = build(&SECRET, if v1 { 1 } else { 2 }, issuer, seq, stream);
            let mut key = original.clone();
            for e in &edits {
                apply(&mut key, e);
            }
            let genuine = (key == original && user == issuer).then_some(Position { seq, stream });
            (user, key, genuine)
        }
    };
    let result = keys.decode(user, &key);
    if let Some(pos) = genuine {
        assert_eq!(
            result.as_ref().ok(),
            Some(&pos),
            "a genuine key is accepted"
        );
    }
    let Ok(pos) = result else {
        return;
    };
    if key.is_empty() {
        assert_eq!(pos, Position::default(), "the empty key is the start");
        return;
    }
    let expected = match key[0] {
        1 => {
            assert_eq!(pos.stream, 0, "a version 1 key has no stream position");
            build(&SECRET, 1, user, pos.seq, 0)
        }
        _ => keys.encode(user, pos),
    };
    assert_eq!(
        key, expected,
        "an accepted key is the one issued for (user, pos)"
    );
});
