//! Protocol versions and their negotiation.
//!
//! The client states the inclusive range it speaks in `Hello`; the server
//! picks the highest version in both ranges, or refuses with
//! `ERROR_CODE_UPGRADE_REQUIRED`.

/// The oldest protocol version this build speaks.
pub const PROTOCOL_VERSION_MIN: u32 = 1;
/// The newest protocol version this build speaks. Version 2 packs the
/// events of sync answers and pushes ([`crate::packing`]).
pub const PROTOCOL_VERSION_MAX: u32 = 2;

/// The first version whose sync answers and pushes are packed.
pub const PACKED_EVENTS_VERSION: u32 = 2;

const _: () = assert!(PROTOCOL_VERSION_MIN <= PROTOCOL_VERSION_MAX);

/// The highest version in both `[client_min, client_max]` and
/// `[server_min, server_max]`, if any.
pub fn negotiate(
    client_min: u32,
    client_max: u32,
    server_min: u32,
    server_max: u32,
) -> Option<u32> {
    let high = client_max.min(server_max);
    let low = client_min.max(server_min);
    (low <= high).then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the chosen version is the highest common one and that disjoint
    /// or inverted ranges are refused.
    #[test]
    fn negotiation_picks_highest_common_version() {
        assert_eq!(negotiate(1, 1, 1, 1), Some(1));
        assert_eq!(negotiate(1, 5, 2, 3), Some(3));
        assert_eq!(negotiate(3, 5, 1, 2), None);
        assert_eq!(negotiate(0, 0, 1, 2), None);
        assert_eq!(negotiate(5, 1, 1, 9), None);
    }
}
