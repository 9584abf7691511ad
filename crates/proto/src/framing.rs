//! Frames on the wire. On a stream transport (TCP) a frame is a 4-byte
//! big-endian length followed by the encoded `Frame`; on a message transport
//! (WebSocket) it is one binary message holding the encoded `Frame`.

use bytes::{Buf, BytesMut};
use prost::Message;

use crate::limits::FRAME_LENGTH_PREFIX_BYTES;
use crate::v1::Frame;

/// Why bytes could not be read as a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The announced or actual frame length exceeds the allowed maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The maximum allowed.
        max: usize,
    },
    /// The bytes are not a valid protobuf `Frame`.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Decodes one frame from exactly `bytes` (a WebSocket message, or the body
/// after a length prefix).
pub fn decode_frame(bytes: &[u8], max: usize) -> Result<Frame, FrameError> {
    if bytes.len() > max {
        return Err(FrameError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    Frame::decode(bytes).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Encodes a frame without a length prefix (for WebSocket).
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    frame.encode_to_vec()
}

/// Encodes a frame with its 4-byte big-endian length prefix (for TCP).
pub fn encode_frame_prefixed(frame: &Frame) -> Vec<u8> {
    let len = frame.encoded_len();
    let mut out = Vec::with_capacity(FRAME_LENGTH_PREFIX_BYTES + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    frame.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// Takes one length-prefixed frame off the front of `buf` if it is complete.
///
/// Returns `Ok(None)` when more bytes are needed. A length above `max` is an
/// error as soon as the prefix is seen, so a peer cannot make us buffer it.
pub fn try_decode_prefixed(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < FRAME_LENGTH_PREFIX_BYTES {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if buf.len() < FRAME_LENGTH_PREFIX_BYTES + len {
        // No reservation for the announced length: a peer could announce
        // the maximum and send nothing more. The reader grows the buffer as
        // bytes actually arrive.
        return Ok(None);
    }
    buf.advance(FRAME_LENGTH_PREFIX_BYTES);
    let body = buf.split_to(len);
    decode_frame(&body, max).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Ping, frame::Body};
    use proptest::prelude::*;

    fn ping(id: u64) -> Frame {
        Frame::new(id, Body::Ping(Ping { nonce: id * 7 }))
    }

    /// Checks that frames split at every possible byte boundary decode to the
    /// same frames, in order, with nothing left over.
    #[test]
    fn prefixed_frames_roundtrip_across_partial_reads() {
        let mut wire = Vec::new();
        for id in 1..=3 {
            wire.extend(encode_frame_prefixed(&ping(id)));
        }
        for split in 0..wire.len() {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in [&wire[..split], &wire[split..]] {
                buf.extend_from_slice(chunk);
                while let Some(f) = try_decode_prefixed(&mut buf, 1024).unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, vec![ping(1), ping(2), ping(3)], "split at {split}");
            assert!(buf.is_empty());
        }
    }

    /// Checks a length prefix alone does not make the decoder set memory
    /// aside for the announced frame (a peer could announce the maximum and
    /// then stay silent).
    #[test]
    fn a_prefix_reserves_nothing() {
        let mut buf = BytesMut::from(&[0u8, 0x10, 0, 0][..]);
        assert_eq!(try_decode_prefixed(&mut buf, 1 << 20), Ok(None));
        assert!(buf.capacity() < 64, "capacity {}", buf.capacity());
    }

    /// Checks an oversized length prefix is refused before its body arrives.
    #[test]
    fn oversized_prefix_is_refused_early() {
        let mut buf = BytesMut::from(&[0u8, 0x10, 0, 0][..]);
        assert_eq!(
            try_decode_prefixed(&mut buf, 1024),
            Err(FrameError::TooLarge {
                len: 0x100000,
                max: 1024
            })
        );
    }

    /// Checks that an unknown body variant (a newer peer's request) decodes
    /// as a frame with no body rather than failing, so the protocol can grow.
    #[test]
    fn unknown_body_is_ignored_not_fatal() {
        // Field 999, wire type 2 (length-delimited), 0-length payload, then request_id 5.
        let bytes = [0xBA, 0x3E, 0x00, 0x08, 0x05];
        let frame = decode_frame(&bytes, 1024).unwrap();
        assert_eq!(frame.request_id, 5);
        assert!(frame.body.is_none());
    }

    proptest! {
        /// Garbage never panics the decoder: it yields frames, waits for more,
        /// or reports an error.
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..64 {
                match try_decode_prefixed(&mut buf, 4096) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = decode_frame(&data, 4096);
        }
    }
}
