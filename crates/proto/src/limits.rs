//! Protocol-wide bounds. Servers may configure lower values for the tunable
//! ones and announce them in `Welcome.limits`; these are the ceilings.

/// Bytes of the big-endian length that precedes each frame on TCP.
pub const FRAME_LENGTH_PREFIX_BYTES: usize = 4;

/// No implementation accepts a frame larger than this, whatever its config.
pub const FRAME_BYTES_MAX_CEILING: usize = 16 * 1024 * 1024;

/// Default maximum frame size.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 1024 * 1024;

/// Default maximum size of a message's content (text + payload + type).
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 64 * 1024;

/// Room a frame needs beyond the message content (ids, envelope, fields).
pub const FRAME_OVERHEAD_BYTES_MAX: usize = 4 * 1024;

/// Maximum length of a client message id.
pub const CLIENT_MSG_ID_BYTES_MAX: usize = 64;

/// Maximum username length in bytes.
pub const USERNAME_BYTES_MAX: usize = 32;

/// Minimum and maximum password length in bytes.
pub const PASSWORD_BYTES_MIN: usize = 8;
pub const PASSWORD_BYTES_MAX: usize = 1024;

/// Maximum length of a device name.
pub const DEVICE_NAME_BYTES_MAX: usize = 64;

/// Maximum sync key length accepted from a client.
pub const SYNC_KEY_BYTES_MAX: usize = 256;

// A message must always fit in a frame together with its envelope.
const _: () =
    assert!(MESSAGE_BYTES_MAX_DEFAULT + FRAME_OVERHEAD_BYTES_MAX <= FRAME_BYTES_MAX_DEFAULT);
const _: () = assert!(FRAME_BYTES_MAX_DEFAULT <= FRAME_BYTES_MAX_CEILING);
const _: () = assert!(FRAME_BYTES_MAX_CEILING <= u32::MAX as usize);
