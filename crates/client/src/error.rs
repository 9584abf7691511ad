//! The SDK's one error type, and which errors are worth a retry.

use pigeon_proto::v1::{self, ErrorCode};

/// Why a connection or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL is not `tcp://host[:port]`, `ws://host[:port][/path]`
    /// or their TLS forms `tls://` and `wss://`.
    #[error("invalid server url: {0}")]
    InvalidUrl(String),
    /// The socket failed (connect refused, reset, ...).
    #[error("i/o error: {0}")]
    Io(std::io::Error),
    /// TLS could not be set up: the server's certificate is not trusted or
    /// not valid for the host, the extra CA is not usable PEM, or the
    /// server did not speak TLS.
    #[error("tls: {0}")]
    Tls(String),
    /// The connect, the handshake or a request took longer than allowed.
    #[error("timed out")]
    Timeout,
    /// The connection ended (or was closed by this side) before an answer came.
    #[error("connection closed")]
    Closed,
    /// The server answered the request with an `Error`.
    #[error("{message} ({})", code_label(*code))]
    Server {
        /// The error's code (`Unspecified` if this build does not know the number).
        code: v1::ErrorCode,
        /// For a person, not for parsing.
        message: String,
        /// With `BUSY`: wait at least this long before retrying.
        retry_after_ms: u32,
    },
    /// The server closed the connection with a `Goodbye`.
    #[error("server closed the connection: {message} ({})", code_label(*code))]
    Goodbye {
        /// Why the server closed (`Unspecified` if this build does not know the number).
        code: v1::ErrorCode,
        /// For a person, not for parsing.
        message: String,
    },
    /// The server sent a frame this client cannot use: undecodable, or not
    /// the answer the request expects.
    #[error("protocol error: {0}")]
    Protocol(String),
}

// By hand rather than `#[from]`, which would also make the I/O error the
// `source()`: reports that print the chain would then name it twice.
impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl ClientError {
    /// The wire error code of a `Server` or `Goodbye` error.
    pub fn code(&self) -> Option<v1::ErrorCode> {
        match self {
            ClientError::Server { code, .. } | ClientError::Goodbye { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Builds the error for an `Error` answer.
    pub(crate) fn from_wire_error(e: v1::Error) -> ClientError {
        ClientError::Server {
            code: code_from_wire(e.code),
            message: e.message,
            retry_after_ms: e.retry_after_ms,
        }
    }

    /// Builds the error for a `Goodbye`.
    pub(crate) fn from_goodbye(g: v1::Goodbye) -> ClientError {
        ClientError::Goodbye {
            code: code_from_wire(g.code),
            message: g.message,
        }
    }

    /// A copy of this error: `std::io::Error` is not `Clone`, so an I/O error
    /// keeps its kind and text only.
    pub(crate) fn duplicate(&self) -> ClientError {
        match self {
            ClientError::InvalidUrl(s) => ClientError::InvalidUrl(s.clone()),
            ClientError::Io(e) => ClientError::Io(std::io::Error::new(e.kind(), e.to_string())),
            ClientError::Tls(s) => ClientError::Tls(s.clone()),
            ClientError::Timeout => ClientError::Timeout,
            ClientError::Closed => ClientError::Closed,
            ClientError::Server {
                code,
                message,
                retry_after_ms,
            } => ClientError::Server {
                code: *code,
                message: message.clone(),
                retry_after_ms: *retry_after_ms,
            },
            ClientError::Goodbye { code, message } => ClientError::Goodbye {
                code: *code,
                message: message.clone(),
            },
            ClientError::Protocol(s) => ClientError::Protocol(s.clone()),
        }
    }

    /// True for errors after which reconnecting cannot help: the session is
    /// gone, the protocol version is refused, the URL is wrong, or TLS
    /// cannot be agreed (an untrusted certificate stays untrusted). The
    /// reconnecting [`crate::Client`] stops on these.
    pub(crate) fn is_fatal(&self) -> bool {
        matches!(self, ClientError::InvalidUrl(_) | ClientError::Tls(_))
            || matches!(
                self.code(),
                Some(
                    ErrorCode::InvalidToken
                        | ErrorCode::TokenExpired
                        | ErrorCode::TokenRevoked
                        | ErrorCode::AccountDisabled
                        | ErrorCode::UpgradeRequired
                        | ErrorCode::Unauthenticated
                )
            )
    }
}

/// Maps a wire number to the enum; numbers from a newer server become `Unspecified`.
pub(crate) fn code_from_wire(n: i32) -> ErrorCode {
    ErrorCode::try_from(n).unwrap_or(ErrorCode::Unspecified)
}

/// `code NAME number`, e.g. `code USERNAME_TAKEN 206`.
pub fn code_label(code: ErrorCode) -> String {
    let name = code.as_str_name();
    let short = name.strip_prefix("ERROR_CODE_").unwrap_or(name);
    format!("code {short} {}", code as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the display form carries the short code name and number, which
    /// the CLI prints as-is.
    #[test]
    fn server_error_display_names_the_code() {
        let e = ClientError::from_wire_error(v1::Error {
            code: ErrorCode::UsernameTaken as i32,
            message: "username taken".into(),
            retry_after_ms: 0,
        });
        assert_eq!(e.to_string(), "username taken (code USERNAME_TAKEN 206)");
        assert_eq!(e.code(), Some(ErrorCode::UsernameTaken));
        let g = ClientError::from_goodbye(v1::Goodbye {
            code: 9999,
            message: "future".into(),
            ..Default::default()
        });
        assert_eq!(g.code(), Some(ErrorCode::Unspecified));
        assert!(ClientError::Closed.code().is_none());
    }

    /// Checks which errors stop a reconnecting client for good.
    #[test]
    fn token_and_version_errors_are_fatal() {
        let goodbye = |code: ErrorCode| ClientError::Goodbye {
            code,
            message: String::new(),
        };
        assert!(goodbye(ErrorCode::TokenRevoked).is_fatal());
        assert!(goodbye(ErrorCode::AccountDisabled).is_fatal());
        assert!(goodbye(ErrorCode::UpgradeRequired).is_fatal());
        assert!(!goodbye(ErrorCode::ShuttingDown).is_fatal());
        assert!(!goodbye(ErrorCode::IdleTimeout).is_fatal());
        assert!(!ClientError::Closed.is_fatal());
        assert!(ClientError::InvalidUrl("x".into()).is_fatal());
        assert!(ClientError::Tls("untrusted".into()).is_fatal());
    }
}
