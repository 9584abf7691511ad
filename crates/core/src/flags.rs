//! Feature flags for gray release: each flag has a rollout percentage and
//! an allow-list. Whether a flag is on for a user depends only on the flag's
//! name, the user's id and the flag's settings, so every node gives the same
//! answer for the same user, and raising the percentage only ever adds users.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::UserId;

/// Longest flag name.
pub const FLAG_NAME_BYTES_MAX: usize = 64;
/// Most flags a server keeps.
pub const FLAGS_MAX: usize = 1000;
/// Most usernames on one allow-list.
pub const FLAG_ALLOW_LIST_MAX: usize = 10_000;

/// A feature flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flag {
    /// `a-z 0-9 . _ -`, up to [`FLAG_NAME_BYTES_MAX`] bytes.
    pub name: String,
    /// Share of users it is on for, 0 to 100.
    pub percent: u8,
    /// Users it is on for regardless of the percentage.
    pub allow: Vec<String>,
    /// Last change, Unix ms.
    pub updated_at_ms: i64,
}

/// The user's place in 0..100 for a flag: stable, independent per flag.
pub fn bucket(flag: &str, user: UserId) -> u8 {
    let digest = Sha256::digest(format!("{flag}:{user}").as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (n % 100) as u8
}

/// Whether `flag` is on for the user.
pub fn enabled(flag: &Flag, user: UserId, username: &str) -> bool {
    bucket(&flag.name, user) < flag.percent || flag.allow.iter().any(|a| a == username)
}

/// Checks a flag's name and settings.
pub fn validate(name: &str, percent: u8, allow: &[String]) -> Result<(), crate::CoreError> {
    let name_ok = !name.is_empty()
        && name.len() <= FLAG_NAME_BYTES_MAX
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if !name_ok {
        return Err(crate::CoreError::InvalidArgument(format!(
            "a flag name is 1 to {FLAG_NAME_BYTES_MAX} bytes of a-z, 0-9, '.', '_', '-'"
        )));
    }
    if percent > 100 {
        return Err(crate::CoreError::InvalidArgument(
            "percent is 0 to 100".into(),
        ));
    }
    if allow.len() > FLAG_ALLOW_LIST_MAX {
        return Err(crate::CoreError::InvalidArgument(format!(
            "at most {FLAG_ALLOW_LIST_MAX} users on an allow-list"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(percent: u8, allow: &[&str]) -> Flag {
        Flag {
            name: "new-ui".into(),
            percent,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            updated_at_ms: 0,
        }
    }

    /// The same user gets the same answer every time; raising the
    /// percentage only adds users; about the right share is on; the
    /// allow-list wins.
    #[test]
    fn rollout_is_stable_monotonic_and_proportional() {
        let users: Vec<UserId> = (1..=10_000).collect();
        let on = |p| {
            users
                .iter()
                .filter(|&&u| enabled(&flag(p, &[]), u, "x"))
                .count()
        };
        assert_eq!(on(0), 0);
        assert_eq!(on(100), users.len());
        let ten = on(10);
        assert!((800..1200).contains(&ten), "{ten}");
        for &u in &users {
            if enabled(&flag(10, &[]), u, "x") {
                assert!(
                    enabled(&flag(50, &[]), u, "x"),
                    "raising the percentage keeps user {u}"
                );
            }
        }
        assert!(enabled(&flag(0, &["alice"]), 1, "alice"));
        let differs = (1..100).any(|u| bucket("a", u) != bucket("b", u));
        assert!(
            differs,
            "buckets depend on the flag, so rollouts are independent"
        );
        assert!(validate("new-ui", 10, &[]).is_ok());
        assert!(validate("New UI", 10, &[]).is_err());
        assert!(validate("x", 101, &[]).is_err());
    }
}
