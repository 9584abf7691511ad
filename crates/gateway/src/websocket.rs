//! WebSocket (RFC 6455), server side: the upgrade handshake and the framing,
//! with one binary message per protocol frame.
//!
//! Pigeon frames WebSocket itself rather than through tungstenite so that a
//! WebSocket connection costs what a TCP one does: the same transport reads
//! an idle connection into the stack and holds a heap buffer only while a
//! message arrives in parts (tungstenite keeps a read buffer per connection,
//! and keeps it at the size of the largest message read).
//!
//! No extension is negotiated (no compression), so reserved bits are
//! refused. Text messages are not part of the protocol and are refused.
//! Pings are answered with pongs; a close is answered with a close and ends
//! the connection.

use std::collections::VecDeque;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use base64::Engine;
use bytes::Bytes;
use pigeon_proto::{ErrorCode, Frame, decode_frame};
use sha1::{Digest, Sha1};

use crate::transport::{Codec, Inbound, Taken};

/// Appended to the client's key to prove the server speaks WebSocket.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Longest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
const HEADER_BYTES_MAX: usize = 14;
/// Largest payload of a control frame (ping, pong, close).
const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// Close status for a normal closure.
const CLOSE_NORMAL: u16 = 1000;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Checks an HTTP request asks for a WebSocket upgrade the way RFC 6455
/// says, and returns its `Sec-WebSocket-Key`; or the status and reason to
/// refuse it with.
pub(crate) fn upgrade_key<'a>(
    method: &Method,
    version: Version,
    headers: &'a HeaderMap,
) -> Result<&'a HeaderValue, (StatusCode, &'static str)> {
    if version > Version::HTTP_11 {
        return Err((
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "WebSocket needs HTTP/1.1",
        ));
    }
    if method != Method::GET {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket upgrade is a GET",
        ));
    }
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err((
            StatusCode::BAD_REQUEST,
            "Connection header did not include 'upgrade'",
        ));
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err((
            StatusCode::BAD_REQUEST,
            "Upgrade header did not include 'websocket'",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Version header did not include '13'",
        ));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or((StatusCode::BAD_REQUEST, "Sec-WebSocket-Key header missing"))
}

/// The `Sec-WebSocket-Accept` answer to a client's key.
pub(crate) fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// A frame header as read.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    /// RSV1-3: must be zero without extensions.
    reserved: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
    /// Bytes the header took.
    bytes: usize,
}

/// Reads the header at the front of `bytes`, if all of it is there.
fn header(bytes: &[u8]) -> Option<Header> {
    let [b0, b1, ..] = *bytes else {
        return None;
    };
    let (len, mut at) = match b1 & 0x7F {
        126 => (
            u16::from_be_bytes(*bytes.get(2..4)?.first_chunk()?) as u64,
            4,
        ),
        127 => (u64::from_be_bytes(*bytes.get(2..10)?.first_chunk()?), 10),
        n => (n as u64, 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let mask = *bytes.get(at..at + 4)?.first_chunk()?;
        at += 4;
        Some(mask)
    } else {
        None
    };
    Some(Header {
        fin: b0 & 0x80 != 0,
        reserved: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0F,
        mask,
        len,
        bytes: at,
    })
}

/// Appends a server frame's header (final, unmasked) for a payload of `len`.
fn put_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// A whole server frame: header and payload.
fn control(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(2 + payload.len());
    put_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out.into()
}

/// RFC 6455 framing of one connection; see [`Codec`].
#[derive(Debug)]
pub(crate) struct WsCodec {
    /// Largest message accepted, in bytes.
    max: usize,
    /// A binary message arriving in fragments: its bytes so far.
    message: Option<Vec<u8>>,
    /// A close frame went out (or is queued): send no other.
    closing: bool,
}

impl WsCodec {
    pub(crate) fn new(frame_bytes_max: usize) -> WsCodec {
        WsCodec {
            max: frame_bytes_max,
            message: None,
            closing: false,
        }
    }

    fn too_large(&self) -> Taken {
        Taken::Used(
            0,
            Some(Inbound::Violation(
                ErrorCode::FrameTooLarge,
                format!("message exceeds the frame limit of {} bytes", self.max),
            )),
        )
    }
}

fn broken(reason: &str) -> Taken {
    Taken::Used(
        0,
        Some(Inbound::Violation(ErrorCode::BadFrame, reason.to_string())),
    )
}

/// A whole binary message as a protocol frame.
fn message(bytes: &[u8]) -> Inbound {
    match decode_frame(bytes, usize::MAX) {
        Ok(frame) => Inbound::Frame(Box::new(frame)),
        Err(e) => Inbound::Violation(ErrorCode::BadFrame, e.to_string()),
    }
}

impl Codec for WsCodec {
    fn take(&mut self, bytes: &mut [u8], replies: &mut VecDeque<Bytes>) -> Taken {
        let Some(h) = header(bytes) else {
            return Taken::Incomplete;
        };
        if h.reserved != 0 {
            return broken("reserved bits are set, but no extension was agreed");
        }
        let Some(mask) = h.mask else {
            return broken("a client's frames must be masked");
        };
        let is_control = h.opcode & 0x8 != 0;
        if is_control && (!h.fin || h.len > CONTROL_PAYLOAD_BYTES_MAX as u64) {
            return broken("control frames must be whole and at most 125 bytes");
        }
        let so_far = self.message.as_ref().map_or(0, Vec::len) as u64;
        if !is_control && h.len.saturating_add(so_far) > self.max as u64 {
            return self.too_large();
        }
        let end = h.bytes + h.len as usize;
        if bytes.len() < end {
            return Taken::Incomplete;
        }
        let payload = &mut bytes[h.bytes..end];
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        let inbound = match h.opcode {
            OP_BINARY if self.message.is_some() => {
                return broken("a message began before the previous one ended");
            }
            OP_BINARY if h.fin => Some(message(payload)),
            OP_BINARY => {
                self.message = Some(payload.to_vec());
                None
            }
            OP_CONTINUATION => {
                let Some(so_far) = self.message.as_mut() else {
                    return broken("a continuation frame without a message to continue");
                };
                so_far.extend_from_slice(payload);
                if h.fin {
                    let whole = self.message.take().unwrap_or_default();
                    Some(message(&whole))
                } else {
                    None
                }
            }
            OP_TEXT => Some(Inbound::Violation(
                ErrorCode::BadFrame,
                "text messages are not part of the protocol; send frames as binary messages".into(),
            )),
            OP_PING => {
                replies.push_back(control(OP_PONG, payload));
                Some(Inbound::Activity)
            }
            OP_PONG => Some(Inbound::Activity),
            OP_CLOSE => {
                if !self.closing {
                    self.closing = true;
                    // Echo the peer's status code, as RFC 6455 suggests.
                    let code = payload.get(..2).unwrap_or(&[]);
                    replies.push_back(control(OP_CLOSE, code));
                }
                Some(Inbound::Closed)
            }
            _ => return broken("unknown WebSocket opcode"),
        };
        Taken::Used(end, inbound)
    }

    fn needed(&self, bytes: &[u8]) -> usize {
        match header(bytes) {
            Some(h) => h.bytes.saturating_add(h.len as usize),
            None => HEADER_BYTES_MAX,
        }
    }

    fn encode(&self, frame: &Frame) -> Bytes {
        let len = prost::Message::encoded_len(frame);
        let mut out = Vec::with_capacity(HEADER_BYTES_MAX + len);
        put_header(&mut out, OP_BINARY, len);
        prost::Message::encode(frame, &mut out).expect("a Vec grows as needed");
        out.into()
    }

    fn close(&mut self) -> Option<Bytes> {
        if self.closing {
            return None;
        }
        self.closing = true;
        Some(control(OP_CLOSE, &CLOSE_NORMAL.to_be_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use pigeon_proto::Body;
    use pigeon_proto::v1::Ping;

    use super::*;

    /// A client frame: masked with `mask`.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        put_header(&mut out, opcode, payload.len());
        if !fin {
            out[0] &= 0x7F;
        }
        out[1] |= 0x80;
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn ping_frame(id: u64) -> Frame {
        Frame::new(id, Body::Ping(Ping { nonce: id }))
    }

    fn take_all(codec: &mut WsCodec, wire: &mut [u8]) -> (Vec<Inbound>, VecDeque<Bytes>) {
        let mut replies = VecDeque::new();
        let mut got = Vec::new();
        let mut at = 0;
        while let Taken::Used(n, inbound) = codec.take(&mut wire[at..], &mut replies) {
            at += n;
            match inbound {
                Some(i @ Inbound::Violation(..)) => {
                    got.push(i);
                    break;
                }
                Some(i) => got.push(i),
                None => {}
            }
        }
        (got, replies)
    }

    /// Checks the accept key against the example in RFC 6455, section 1.3.
    #[test]
    fn accept_key_matches_the_rfc() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    /// Checks every length encoding round-trips through the header reader,
    /// and that a header in part is not read.
    #[test]
    fn header_lengths() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 1 << 20] {
            let mut out = Vec::new();
            put_header(&mut out, OP_BINARY, len);
            let h = header(&out).expect("whole header");
            assert_eq!(
                (h.len, h.bytes, h.fin, h.mask),
                (len as u64, out.len(), true, None)
            );
            assert_eq!(header(&out[..out.len() - 1]), None);
        }
    }

    /// Checks masked binary messages, whole and in fragments with a ping
    /// between them, decode to frames, and the ping is answered in kind.
    #[test]
    fn messages_fragments_and_pings() {
        let one = prost::Message::encode_to_vec(&ping_frame(1));
        let two = prost::Message::encode_to_vec(&ping_frame(2));
        let mut wire = client_frame(true, OP_BINARY, &one, [1, 2, 3, 4]);
        wire.extend(client_frame(false, OP_BINARY, &two[..3], [9, 8, 7, 6]));
        wire.extend(client_frame(true, OP_PING, b"hi", [5, 5, 5, 5]));
        wire.extend(client_frame(true, OP_CONTINUATION, &two[3..], [0, 1, 0, 1]));
        let mut codec = WsCodec::new(1024);
        let (got, replies) = take_all(&mut codec, &mut wire);
        assert!(
            matches!(&got[0], Inbound::Frame(f) if **f == ping_frame(1)),
            "{got:?}"
        );
        assert!(matches!(got[1], Inbound::Activity));
        assert!(
            matches!(&got[2], Inbound::Frame(f) if **f == ping_frame(2)),
            "{got:?}"
        );
        assert_eq!(got.len(), 3);
        assert_eq!(replies, [control(OP_PONG, b"hi")]);
        assert!(codec.message.is_none());
    }

    /// Checks what is refused: unmasked frames, reserved bits, text, long
    /// or fragmented control frames, a message over the limit (before its
    /// body arrives) or growing over it in fragments, a stray
    /// continuation.
    #[test]
    fn violations() {
        let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
            (
                {
                    let mut f = client_frame(true, OP_BINARY, b"x", [1, 1, 1, 1]);
                    f[1] &= 0x7F;
                    f.truncate(3);
                    f
                },
                ErrorCode::BadFrame,
            ),
            (
                {
                    let mut f = client_frame(true, OP_BINARY, b"x", [1, 1, 1, 1]);
                    f[0] |= 0x40;
                    f
                },
                ErrorCode::BadFrame,
            ),
            (
                client_frame(true, OP_TEXT, b"hello?", [1, 2, 3, 4]),
                ErrorCode::BadFrame,
            ),
            (
                client_frame(true, OP_PING, &[0; 126], [1, 2, 3, 4]),
                ErrorCode::BadFrame,
            ),
            (
                client_frame(false, OP_PING, b"", [1, 2, 3, 4]),
                ErrorCode::BadFrame,
            ),
            (
                client_frame(true, OP_BINARY, &[0; 2000], [1, 2, 3, 4])[..20].to_vec(),
                ErrorCode::FrameTooLarge,
            ),
            (
                [
                    client_frame(false, OP_BINARY, &[0; 600], [1, 2, 3, 4]),
                    client_frame(true, OP_CONTINUATION, &[0; 600], [1, 2, 3, 4]),
                ]
                .concat(),
                ErrorCode::FrameTooLarge,
            ),
            (
                client_frame(true, OP_CONTINUATION, b"x", [1, 2, 3, 4]),
                ErrorCode::BadFrame,
            ),
            (
                client_frame(true, 0x3, b"", [1, 2, 3, 4]),
                ErrorCode::BadFrame,
            ),
        ];
        for (i, (mut wire, code)) in cases.into_iter().enumerate() {
            let (got, _) = take_all(&mut WsCodec::new(1024), &mut wire);
            assert!(
                matches!(got.last(), Some(Inbound::Violation(c, _)) if *c == code),
                "case {i}: {got:?}"
            );
        }
    }

    /// Checks a close is answered once, echoing the peer's code, and that
    /// closing first sends a normal closure once.
    #[test]
    fn closing() {
        let mut wire = client_frame(true, OP_CLOSE, &1001u16.to_be_bytes(), [3, 1, 4, 1]);
        let mut codec = WsCodec::new(1024);
        let (got, replies) = take_all(&mut codec, &mut wire);
        assert!(matches!(got[..], [Inbound::Closed]));
        assert_eq!(replies, [control(OP_CLOSE, &1001u16.to_be_bytes())]);
        assert_eq!(codec.close(), None);
        let mut codec = WsCodec::new(1024);
        assert_eq!(codec.close(), Some(control(OP_CLOSE, &[0x03, 0xE8])));
        assert_eq!(codec.close(), None);
    }
}
