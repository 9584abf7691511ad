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
//! - [`packing`]: protocol version 2's packed events (pack on the server,
//!   unpack on the client).

pub mod framing;
pub mod limits;
pub mod packing;
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
            Body::CreateGroupRequest(_) => "create_group",
            Body::CreateGroupResponse(_) => "create_group_response",
            Body::UpdateGroupRequest(_) => "update_group",
            Body::UpdateGroupResponse(_) => "update_group_response",
            Body::AddMembersRequest(_) => "add_members",
            Body::AddMembersResponse(_) => "add_members_response",
            Body::RemoveMembersRequest(_) => "remove_members",
            Body::RemoveMembersResponse(_) => "remove_members_response",
            Body::LeaveGroupRequest(_) => "leave_group",
            Body::LeaveGroupResponse(_) => "leave_group_response",
            Body::SetRoleRequest(_) => "set_role",
            Body::SetRoleResponse(_) => "set_role_response",
            Body::TransferOwnershipRequest(_) => "transfer_ownership",
            Body::TransferOwnershipResponse(_) => "transfer_ownership_response",
            Body::DissolveGroupRequest(_) => "dissolve_group",
            Body::DissolveGroupResponse(_) => "dissolve_group_response",
            Body::GetGroupRequest(_) => "get_group",
            Body::GetGroupResponse(_) => "get_group_response",
            Body::ListMembersRequest(_) => "list_members",
            Body::ListMembersResponse(_) => "list_members_response",
            Body::RecallMessageRequest(_) => "recall_message",
            Body::RecallMessageResponse(_) => "recall_message_response",
            Body::EditMessageRequest(_) => "edit_message",
            Body::EditMessageResponse(_) => "edit_message_response",
            Body::DeleteMessageRequest(_) => "delete_message",
            Body::DeleteMessageResponse(_) => "delete_message_response",
            Body::GetReceiptsRequest(_) => "get_receipts",
            Body::GetReceiptsResponse(_) => "get_receipts_response",
            Body::SetTypingRequest(_) => "set_typing",
            Body::SetTypingResponse(_) => "set_typing_response",
            Body::GetPresenceRequest(_) => "get_presence",
            Body::GetPresenceResponse(_) => "get_presence_response",
            Body::SetPrivacyRequest(_) => "set_privacy",
            Body::SetPrivacyResponse(_) => "set_privacy_response",
            Body::BlockRequest(_) => "block",
            Body::BlockResponse(_) => "block_response",
            Body::UnblockRequest(_) => "unblock",
            Body::UnblockResponse(_) => "unblock_response",
            Body::ListBlockedRequest(_) => "list_blocked",
            Body::ListBlockedResponse(_) => "list_blocked_response",
            Body::EventsPush(_) => "events_push",
            Body::SyncNotice(_) => "sync_notice",
            Body::PresencePush(_) => "presence_push",
            Body::TypingPush(_) => "typing_push",
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
            ..Default::default()
        }))
    }
}
