//! The domain's errors and their single mapping to wire error codes.

use pigeon_proto::ErrorCode;

use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A field is missing or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The username does not follow the rules.
    #[error("invalid username: {0}")]
    InvalidUsername(String),
    /// The password does not follow the rules.
    #[error("invalid password: {0}")]
    InvalidPassword(String),
    /// Registration is switched off on this server.
    #[error("registration is closed on this server")]
    RegistrationClosed,
    /// The username is registered already.
    #[error("username is taken")]
    UsernameTaken,
    /// Wrong username or password.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// The token is unknown or malformed.
    #[error("invalid session token")]
    InvalidToken,
    /// The session has expired.
    #[error("session has expired; log in again")]
    TokenExpired,
    /// The session was revoked.
    #[error("session was revoked; log in again")]
    TokenRevoked,
    /// The administrator disabled the account.
    #[error("this account is disabled")]
    AccountDisabled,
    /// No such user.
    #[error("user not found: {0}")]
    UserNotFound(String),
    /// No such conversation, or the caller is not in it.
    #[error("conversation not found: {0}")]
    ConversationNotFound(String),
    /// The content is larger than allowed.
    #[error("message content of {len} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge {
        /// The content's size.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The sync key was not issued by this server for this user.
    #[error("invalid sync key: {0}")]
    InvalidSyncKey(&'static str),
    /// The sync key is older than the retained log.
    #[error("sync key is older than the retained log; reload and sync from an empty key")]
    ResyncRequired,
    /// The caller may not do this (also the generic refusal when blocked).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The group has reached its maximum size.
    #[error("the group is full ({0} members)")]
    GroupFull(u32),
    /// The recall or edit window has passed.
    #[error("the {0} window of this message has passed")]
    WindowExpired(&'static str),
    /// No such message.
    #[error("message not found")]
    MessageNotFound,
    /// The storage layer failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            // A rule the store checked atomically with its write.
            StoreError::Refused(inner) => *inner,
            other => CoreError::Store(other),
        }
    }
}

impl CoreError {
    /// The wire error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            CoreError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            CoreError::InvalidUsername(_) => ErrorCode::InvalidUsername,
            CoreError::InvalidPassword(_) => ErrorCode::InvalidPassword,
            CoreError::RegistrationClosed => ErrorCode::RegistrationClosed,
            CoreError::UsernameTaken => ErrorCode::UsernameTaken,
            CoreError::InvalidCredentials => ErrorCode::InvalidCredentials,
            CoreError::InvalidToken => ErrorCode::InvalidToken,
            CoreError::TokenExpired => ErrorCode::TokenExpired,
            CoreError::TokenRevoked => ErrorCode::TokenRevoked,
            CoreError::AccountDisabled => ErrorCode::AccountDisabled,
            CoreError::UserNotFound(_) => ErrorCode::UserNotFound,
            CoreError::ConversationNotFound(_) => ErrorCode::ConversationNotFound,
            CoreError::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            CoreError::InvalidSyncKey(_) => ErrorCode::InvalidSyncKey,
            CoreError::ResyncRequired => ErrorCode::ResyncRequired,
            CoreError::Forbidden(_) => ErrorCode::Forbidden,
            CoreError::GroupFull(_) => ErrorCode::GroupFull,
            CoreError::WindowExpired(_) => ErrorCode::WindowExpired,
            CoreError::MessageNotFound => ErrorCode::MessageNotFound,
            CoreError::Store(StoreError::UsernameTaken) => ErrorCode::UsernameTaken,
            CoreError::Store(StoreError::Refused(e)) => e.code(),
            CoreError::Store(StoreError::Unavailable(_)) => ErrorCode::ShuttingDown,
            CoreError::Store(StoreError::Overloaded) => ErrorCode::Busy,
            CoreError::Store(_) => ErrorCode::Internal,
        }
    }
}
