//! Account rules: what a username and password may be, password hashing
//! (Argon2id) and session tokens (random, stored only as a SHA-256 hash).

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use pigeon_proto::limits::{PASSWORD_BYTES_MAX, PASSWORD_BYTES_MIN, USERNAME_BYTES_MAX};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::CoreError;

/// Shortest allowed username.
pub const USERNAME_BYTES_MIN: usize = 3;
/// Random bytes in a session token (rendered as twice as many hex digits).
pub const TOKEN_BYTES: usize = 32;

/// Checks a username: 3 to 32 bytes of `a-z 0-9 _ . -`, starting with a
/// letter or digit.
pub fn validate_username(name: &str) -> Result<(), CoreError> {
    let len_ok = (USERNAME_BYTES_MIN..=USERNAME_BYTES_MAX).contains(&name.len());
    let chars_ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if len_ok && chars_ok && first_ok {
        Ok(())
    } else {
        Err(CoreError::InvalidUsername(format!(
            "use {USERNAME_BYTES_MIN} to {USERNAME_BYTES_MAX} characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
        )))
    }
}

/// Checks a password's length.
pub fn validate_password(password: &str) -> Result<(), CoreError> {
    if (PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&password.len()) {
        Ok(())
    } else {
        Err(CoreError::InvalidPassword(format!(
            "use {PASSWORD_BYTES_MIN} to {PASSWORD_BYTES_MAX} bytes"
        )))
    }
}

/// Argon2id cost settings. The defaults are the algorithm's recommended
/// ones (19 MiB, 2 passes); lower them only for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    /// Memory in KiB (at least 8).
    pub memory_kib: u32,
    /// Passes (at least 1).
    pub iterations: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        HashCost {
            memory_kib: argon2::Params::DEFAULT_M_COST,
            iterations: argon2::Params::DEFAULT_T_COST,
        }
    }
}

/// Hashes a password with Argon2id and a random salt (CPU-heavy: call it off
/// the async threads). Verification reads the cost from the stored hash, so
/// changing the cost keeps old hashes valid.
pub fn hash_password(password: &str, cost: HashCost) -> Result<String, CoreError> {
    let params = argon2::Params::new(cost.memory_kib, cost.iterations, 1, None)
        .map_err(|e| CoreError::InvalidArgument(format!("password hash cost: {e}")))?;
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| CoreError::InvalidPassword(e.to_string()))
}

/// Whether `password` matches the stored PHC string.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(parsed) = argon2::password_hash::phc::PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A new random session token, as hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The hash under which a token is stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the username rules accept the documented alphabet and refuse
    /// everything else.
    #[test]
    fn username_rules() {
        for ok in ["bob", "alice_1", "a.b-c", "0day", "x".repeat(32).as_str()] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "Bob",
            "_bob",
            "bo b",
            "bøb",
            "x".repeat(33).as_str(),
            "-ab",
        ] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }

    /// Checks a hash verifies its own password only, and tokens are fresh.
    #[test]
    fn password_hash_and_tokens() {
        let h = hash_password("correct horse", HashCost::default()).unwrap();
        let cheap = hash_password(
            "correct horse",
            HashCost {
                memory_kib: 8,
                iterations: 1,
            },
        )
        .unwrap();
        assert!(
            verify_password("correct horse", &cheap),
            "verification reads the cost from the hash"
        );
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "not a phc string"));
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 2 * TOKEN_BYTES);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}
