//! Conversation ids. A direct conversation between users `a` and `b` is
//! `d:<min>:<max>`; the form is stable because clients store it.

use crate::UserId;

/// A parsed conversation id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationId {
    /// A one-to-one conversation; `low <= high`. Equal ids: notes to self.
    Direct {
        /// The smaller user id.
        low: UserId,
        /// The larger user id.
        high: UserId,
    },
}

impl ConversationId {
    /// The direct conversation between `a` and `b`.
    pub fn direct(a: UserId, b: UserId) -> Self {
        ConversationId::Direct {
            low: a.min(b),
            high: a.max(b),
        }
    }

    /// Parses an id as produced by [`ConversationId::to_string`].
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("d:")?;
        let (a, b) = rest.split_once(':')?;
        let low: UserId = parse_id(a)?;
        let high: UserId = parse_id(b)?;
        (low <= high).then_some(ConversationId::Direct { low, high })
    }

    /// The users in the conversation (one entry for notes to self).
    pub fn participants(&self) -> Vec<UserId> {
        match *self {
            ConversationId::Direct { low, high } if low == high => vec![low],
            ConversationId::Direct { low, high } => vec![low, high],
        }
    }

    /// Whether `user` takes part.
    pub fn includes(&self, user: UserId) -> bool {
        match *self {
            ConversationId::Direct { low, high } => user == low || user == high,
        }
    }

    /// For a direct conversation, the participant who is not `me`.
    pub fn peer_of(&self, me: UserId) -> UserId {
        match *self {
            ConversationId::Direct { low, high } => {
                if me == low {
                    high
                } else {
                    low
                }
            }
        }
    }
}

/// Canonical decimal only: no sign, no leading zeros, so one conversation
/// has exactly one id string.
fn parse_id(s: &str) -> Option<UserId> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok().filter(|&id| id > 0)
}

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConversationId::Direct { low, high } => write!(f, "d:{low}:{high}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks ids round-trip and that non-canonical spellings are refused, so
    /// one conversation cannot hide behind two ids.
    #[test]
    fn direct_ids_are_canonical() {
        let c = ConversationId::direct(7, 3);
        assert_eq!(c.to_string(), "d:3:7");
        assert_eq!(ConversationId::parse("d:3:7"), Some(c));
        assert_eq!(c.peer_of(3), 7);
        assert_eq!(c.participants(), vec![3, 7]);
        assert_eq!(ConversationId::direct(5, 5).participants(), vec![5]);
        for bad in [
            "d:7:3", "d:03:7", "d:3:+7", "d:0:1", "g:1", "d:3", "", "d:3:7:9", "d:-1:2",
        ] {
            assert_eq!(ConversationId::parse(bad), None, "{bad}");
        }
    }
}
