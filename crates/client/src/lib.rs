//! Pigeon's Rust SDK: connect over TCP or WebSocket (either inside TLS), log
//! in, send messages with idempotent retries, and follow a user's sync log
//! with reconnects.
//!
//! Layout:
//! - [`Connection`] (`connection.rs`): one live connection; the handshake,
//!   typed requests matched to answers by request id, the push queue.
//! - [`Client`] (`client.rs`): reconnects with backoff, runs the sync loop
//!   and hands [`ClientEvent`]s to the application over a bounded channel,
//!   retries sends with the same client message id, and forwards the other
//!   requests (groups, recall/edit, presence, blocking, ...) to the current
//!   connection.
//! - `transport.rs`: byte-stream (length-prefixed) and WebSocket frame I/O,
//!   over TCP or TLS.
//! - `endpoint.rs`: parsing `tcp://`, `tls://`, `ws://` and `wss://` URLs.
//! - `tls.rs`: trusted roots (webpki plus an extra CA) and TLS errors.
//! - `backoff.rs`: exponential backoff with full jitter.
//! - `discovery.rs`: [`fetch_endpoints`], the service's gateway list.
//! - [`ClientError`] (`error.rs`): the one error type.
//!
//! Nothing here panics on what a server sends: bad frames end the
//! connection with an error.

mod backoff;
mod client;
mod connection;
mod discovery;
mod endpoint;
mod error;
mod tls;
mod transport;

#[cfg(test)]
mod fake_server;

pub use client::{Client, ClientEvent, ClientOptions};
pub use connection::{ConnectOptions, Connection};
pub use discovery::fetch_endpoints;
pub use error::{ClientError, code_label};
pub use pigeon_proto::v1;

/// A target addressing the direct conversation with `username`.
pub fn to_user(username: &str) -> v1::Target {
    v1::Target {
        to: Some(v1::target::To::Username(username.into())),
    }
}

/// A target addressing an existing conversation by id.
pub fn to_conversation(id: &str) -> v1::Target {
    v1::Target {
        to: Some(v1::target::To::ConversationId(id.into())),
    }
}

/// A target addressing a group conversation by its id (`"g:<id>"`); the
/// same as [`to_conversation`], named for readability.
pub fn to_group(conversation_id: &str) -> v1::Target {
    to_conversation(conversation_id)
}

/// Plain-text content.
pub fn text(s: &str) -> v1::Content {
    v1::Content {
        text: s.into(),
        ..Default::default()
    }
}

/// A new client message id: a UUIDv7 string (time-ordered, unique per sender).
pub fn new_client_msg_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks at compile time that the handles can be shared across tasks.
    #[test]
    fn handles_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Connection>();
        assert_send_sync::<Client>();
        assert_send_sync::<ClientError>();
        assert_send_sync::<ClientEvent>();
    }

    /// Checks the helpers build the wire values the server expects.
    #[test]
    fn helpers_build_targets_and_content() {
        assert_eq!(
            to_user("bob").to,
            Some(v1::target::To::Username("bob".into()))
        );
        assert_eq!(
            to_conversation("d:1:2").to,
            Some(v1::target::To::ConversationId("d:1:2".into()))
        );
        assert_eq!(
            to_group("g:7").to,
            Some(v1::target::To::ConversationId("g:7".into()))
        );
        assert_eq!(text("hi").text, "hi");
        let (a, b) = (new_client_msg_id(), new_client_msg_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert!(a.len() <= pigeon_proto::limits::CLIENT_MSG_ID_BYTES_MAX);
    }
}
