//! Pigeon's wire protocol: the types generated from `proto/pigeon/v1/pigeon.proto`,
//! framing, protocol limits and version negotiation. No I/O lives here.
//!
//! Layout:
//! - [`v1`]: the generated protobuf types (`Frame` and everything it carries).
//! - [`framing`]: length-prefixed frames for stream transports (TCP), and
//!   decoding of a single frame (WebSocket binary messages).
//! - [`version`]: which protocol versions this build speaks and how a
//!   connection agrees on one.
//! - [`limits`]: protocol-wide bounds shared by server and clients.

pub mod framing;
pub mod limits;
pub mod version;

/// The generated protobuf types of protocol version 1.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/pigeon.v1.rs"));
}

pub use framing::{
    FrameError, decode_frame, encode_frame, encode_frame_prefixed, try_decode_prefixed,
};
pub use v1::{ErrorCode, Frame, frame::Body};

/// A short, stable name for a frame body, for logs and metrics labels.
pub fn body_name(body: Option<&Body>) -> &'static str {
    match body {
        None => "unknown",
        Some(b) => match b {
            Body::Hello(_) => "hello",
            Body::Welcome(_) => "welcome",
            Body::Error(_) => "error",
            Body::Ping(_) => "ping",
            Body::Pong(_) => "pong",
            Body::Goodbye(_) => "goodbye",
            Body::RegisterRequest(_) => "register",
            Body::RegisterResponse(_) => "register_response",
            Body::LoginRequest(_) => "login",
            Body::LoginResponse(_) => "login_response",
            Body::LogoutRequest(_) => "logout",
            Body::LogoutResponse(_) => "logout_response",
            Body::SendRequest(_) => "send",
            Body::SendResponse(_) => "send_response",
            Body::SyncRequest(_) => "sync",
            Body::SyncResponse(_) => "sync_response",
            Body::HistoryRequest(_) => "history",
            Body::HistoryResponse(_) => "history_response",
            Body::ListConversationsRequest(_) => "list_conversations",
            Body::ListConversationsResponse(_) => "list_conversations_response",
            Body::MarkReadRequest(_) => "mark_read",
            Body::MarkReadResponse(_) => "mark_read_response",
            Body::EventsPush(_) => "events_push",
            Body::SyncNotice(_) => "sync_notice",
        },
    }
}

impl Frame {
    /// A frame answering (or making) request `request_id`.
    pub fn new(request_id: u64, body: Body) -> Frame {
        Frame {
            request_id,
            body: Some(body),
        }
    }

    /// A server push (request id 0).
    pub fn push(body: Body) -> Frame {
        Frame::new(0, body)
    }

    /// An error answer to request `request_id`.
    pub fn error(request_id: u64, code: ErrorCode, message: impl Into<String>) -> Frame {
        Frame::new(
            request_id,
            Body::Error(v1::Error {
                code: code as i32,
                message: message.into(),
                retry_after_ms: 0,
            }),
        )
    }

    /// A goodbye: the sender closes the connection after it.
    pub fn goodbye(code: ErrorCode, message: impl Into<String>) -> Frame {
        Frame::push(Body::Goodbye(v1::Goodbye {
            code: code as i32,
            message: message.into(),
        }))
    }
}
