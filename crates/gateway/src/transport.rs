//! Frames in and out over the two transports. On a byte stream (TCP, or TLS
//! over TCP) frames carry a 4-byte big-endian length prefix; a WebSocket
//! binary message is one frame.
//!
//! A [`Transport`] is polled, not awaited, so that one task can read and
//! write a connection in a single `select!` loop, and so that an idle
//! connection holds no read buffer: a read waits with a buffer on the stack
//! of the poll, and bytes go to the heap only when a frame arrives in parts.
//! Outbound frames wait encoded in a queue that is freed once it empties.
//! Readers turn every malformed input into an [`Inbound::Violation`] with the
//! wire code to close with; nothing here panics on input.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::ws::{Message as WsMessage, WebSocket};
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use pigeon_proto::limits::FRAME_LENGTH_PREFIX_BYTES;
use pigeon_proto::{
    ErrorCode, Frame, FrameError, decode_frame, encode_frame, encode_frame_prefixed,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the peer sent.
#[derive(Debug)]
pub enum Inbound {
    /// A decoded frame (boxed: this stays small where it waits in the
    /// connection's future).
    Frame(Box<Frame>),
    /// Transport-level liveness (a WebSocket ping or pong).
    Activity,
    /// The peer broke the framing; close with this code and reason.
    Violation(ErrorCode, String),
    /// The peer closed, or the transport failed.
    Closed,
}

/// One connection's socket with its framing: polled for inbound frames,
/// handed outbound frames to queue and write. Only the connection's own task
/// uses it, so reading and writing need no split and no lock.
pub trait Transport: Send + 'static {
    /// Polls for the next thing the peer sent.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Inbound>;
    /// Queues a frame; it is written by [`Transport::poll_flush`].
    fn queue(&mut self, frame: &Frame);
    /// Frames queued and not yet completely written.
    fn queued(&self) -> usize;
    /// Writes queued frames: ready once all are written and flushed.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Closes the sending side (TLS close_notify, WebSocket close).
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// The next thing the peer sent.
pub async fn next(t: &mut dyn Transport) -> Inbound {
    poll_fn(|cx| t.poll_next(cx)).await
}

/// Writes every queued frame.
pub async fn flush(t: &mut dyn Transport) -> io::Result<()> {
    poll_fn(|cx| t.poll_flush(cx)).await
}

/// Closes the sending side.
pub async fn close(t: &mut dyn Transport) {
    let _ = poll_fn(|cx| t.poll_close(cx)).await;
}

fn violation(e: FrameError) -> Inbound {
    match e {
        FrameError::TooLarge { .. } => Inbound::Violation(ErrorCode::FrameTooLarge, e.to_string()),
        FrameError::Malformed(_) => Inbound::Violation(ErrorCode::BadFrame, e.to_string()),
    }
}

/// Bytes read from a byte stream per read call into the heap buffer, at
/// most (while a frame is partly read).
const STREAM_READ_CHUNK_BYTES: usize = 64 * 1024;

/// Bytes read at least per read call into the heap buffer: it exists only
/// while a frame is partly read, so a little more saves system calls.
const STREAM_READ_MIN_BYTES: usize = 4 * 1024;

/// Stack buffer a byte stream reads into while nothing is buffered. It lives
/// only during a poll, so its size costs an idle connection nothing; a frame
/// that arrives whole in it is decoded from there without a heap buffer.
const IDLE_READ_BYTES: usize = 8 * 1024;

/// Frames handed to one vectored write, at most.
const WRITE_BATCH_FRAMES_MAX: usize = 64;

/// A length-prefixed frame stream over any byte stream (TCP, TLS over TCP,
/// or a simulated stream).
struct Prefixed<S> {
    io: S,
    /// Bytes of a frame read in part (and any after it); empty, with no
    /// allocation, between frames.
    buf: BytesMut,
    /// Encoded frames not yet completely written; no allocation when empty.
    out: VecDeque<Bytes>,
    /// Bytes of the first queued frame already written.
    written: usize,
    max: usize,
}

/// Frames over a TCP stream.
pub fn tcp(stream: TcpStream, frame_bytes_max: usize) -> Box<dyn Transport> {
    self::stream(stream, frame_bytes_max)
}

/// Frames over any byte stream, such as a TLS session over TCP, with the
/// same length-prefixed framing as [`tcp`].
pub fn stream<S>(stream: S, frame_bytes_max: usize) -> Box<dyn Transport>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::new(Prefixed {
        io: stream,
        buf: BytesMut::new(),
        out: VecDeque::new(),
        written: 0,
        max: frame_bytes_max,
    })
}

/// Takes one length-prefixed frame off the front of `bytes` if it is
/// complete, with the number of bytes it took.
fn take_prefixed(bytes: &[u8], max: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(prefix) = bytes.first_chunk::<FRAME_LENGTH_PREFIX_BYTES>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let end = FRAME_LENGTH_PREFIX_BYTES + len;
    if bytes.len() < end {
        return Ok(None);
    }
    let frame = decode_frame(&bytes[FRAME_LENGTH_PREFIX_BYTES..end], max)?;
    Ok(Some((frame, end)))
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Prefixed<S> {
    /// Reads while nothing is buffered: into the stack, keeping on the heap
    /// only what is left after the first whole frame. `None`: a frame in
    /// part was kept; read on.
    fn poll_idle_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let mut stack = [MaybeUninit::<u8>::uninit(); IDLE_READ_BYTES];
        let mut read = ReadBuf::uninit(&mut stack);
        match ready!(Pin::new(&mut self.io).poll_read(cx, &mut read)) {
            Ok(()) if read.filled().is_empty() => return Poll::Ready(Some(Inbound::Closed)),
            Ok(()) => {}
            Err(_) => return Poll::Ready(Some(Inbound::Closed)),
        }
        let bytes = read.filled();
        Poll::Ready(match take_prefixed(bytes, self.max) {
            Ok(Some((frame, used))) => {
                self.buf.extend_from_slice(&bytes[used..]);
                Some(Inbound::Frame(Box::new(frame)))
            }
            Ok(None) => {
                self.buf.extend_from_slice(bytes);
                None
            }
            Err(e) => Some(violation(e)),
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for Prefixed<S> {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        loop {
            if self.buf.is_empty() {
                // Between frames: give the buffer back and read into the stack.
                self.buf = BytesMut::new();
                match ready!(self.poll_idle_read(cx)) {
                    Some(inbound) => return Poll::Ready(inbound),
                    None => continue,
                }
            }
            match take_prefixed(&self.buf, self.max) {
                Ok(Some((frame, used))) => {
                    bytes::Buf::advance(&mut self.buf, used);
                    return Poll::Ready(Inbound::Frame(Box::new(frame)));
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(violation(e)),
            }
            // A frame in part: grow by what it still needs, one chunk at a
            // time (a peer may announce the maximum and then send nothing).
            let needed = match self.buf.first_chunk::<FRAME_LENGTH_PREFIX_BYTES>() {
                Some(p) => FRAME_LENGTH_PREFIX_BYTES + u32::from_be_bytes(*p) as usize,
                None => FRAME_LENGTH_PREFIX_BYTES,
            };
            let want = needed
                .saturating_sub(self.buf.len())
                .clamp(STREAM_READ_MIN_BYTES, STREAM_READ_CHUNK_BYTES);
            if self.buf.capacity() - self.buf.len() < want {
                self.buf.reserve(want);
            }
            let read = std::pin::pin!(self.io.read_buf(&mut self.buf));
            match ready!(read.poll(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(Inbound::Closed),
                Ok(_) => {}
            }
        }
    }

    fn queue(&mut self, frame: &Frame) {
        self.out.push_back(encode_frame_prefixed(frame).into());
    }

    fn queued(&self) -> usize {
        self.out.len()
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = if self.out.len() == 1 || !self.io.is_write_vectored() {
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[0][self.written..]))?
            } else {
                let mut slices = [IoSlice::new(&[]); WRITE_BATCH_FRAMES_MAX];
                let mut count = 0;
                for (i, frame) in self.out.iter().take(WRITE_BATCH_FRAMES_MAX).enumerate() {
                    let from = if i == 0 { self.written } else { 0 };
                    slices[i] = IoSlice::new(&frame[from..]);
                    count = i + 1;
                }
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        // Everything is out: free the queue's storage.
        self.out = VecDeque::new();
        // A no-op on TCP; TLS may hold the last record until flushed.
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // On TLS this also sends close_notify.
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<S> Prefixed<S> {
    /// Marks `n` more bytes of the queue as written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let left = self.out[0].len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.out.pop_front();
            self.written = 0;
        }
    }
}

/// Frames over an upgraded WebSocket: one binary message per frame. The
/// message-size limit was set at upgrade time, so reading only decodes.
struct Ws {
    socket: WebSocket,
    /// Encoded frames not yet handed to the socket; no allocation when empty.
    out: VecDeque<Bytes>,
    /// A message was handed over and not yet flushed.
    unflushed: bool,
}

/// Frames over an upgraded WebSocket.
pub fn websocket(socket: WebSocket) -> Box<dyn Transport> {
    Box::new(Ws {
        socket,
        out: VecDeque::new(),
        unflushed: false,
    })
}

impl Transport for Ws {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        let inbound = match ready!(Pin::new(&mut self.socket).poll_next(cx)) {
            None => Inbound::Closed,
            Some(Ok(WsMessage::Binary(bytes))) => match decode_frame(&bytes, usize::MAX) {
                Ok(frame) => Inbound::Frame(Box::new(frame)),
                Err(e) => violation(e),
            },
            Some(Ok(WsMessage::Text(_))) => Inbound::Violation(
                ErrorCode::BadFrame,
                "text messages are not part of the protocol; send frames as binary messages".into(),
            ),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => Inbound::Activity,
            Some(Ok(WsMessage::Close(_))) => Inbound::Closed,
            Some(Err(e)) => {
                // The WebSocket layer reports an oversized message as an
                // error; everything else it reports means a broken stream.
                let text = e.to_string();
                if text.contains("too long")
                    || text.contains("too big")
                    || text.contains("Space limit")
                {
                    Inbound::Violation(
                        ErrorCode::FrameTooLarge,
                        format!("message exceeds the frame limit: {text}"),
                    )
                } else {
                    Inbound::Closed
                }
            }
        };
        Poll::Ready(inbound)
    }

    fn queue(&mut self, frame: &Frame) {
        self.out.push_back(encode_frame(frame).into());
    }

    fn queued(&self) -> usize {
        self.out.len()
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            ready!(Pin::new(&mut self.socket).poll_ready(cx)).map_err(io::Error::other)?;
            let message = self.out.pop_front().expect("checked non-empty");
            Pin::new(&mut self.socket)
                .start_send(WsMessage::Binary(message))
                .map_err(io::Error::other)?;
            self.unflushed = true;
        }
        self.out = VecDeque::new();
        if self.unflushed {
            ready!(Pin::new(&mut self.socket).poll_flush(cx)).map_err(io::Error::other)?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use pigeon_proto::Body;
    use pigeon_proto::v1::Ping;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    fn ping(id: u64) -> Frame {
        Frame::new(id, Body::Ping(Ping { nonce: id * 7 }))
    }

    fn prefixed(io: DuplexStream) -> Prefixed<DuplexStream> {
        Prefixed {
            io,
            buf: BytesMut::new(),
            out: VecDeque::new(),
            written: 0,
            max: 1024,
        }
    }

    async fn next_of(t: &mut Prefixed<DuplexStream>) -> Inbound {
        poll_fn(|cx| t.poll_next(cx)).await
    }

    /// Checks that frames arriving in pieces split at every byte decode in
    /// order, and that between frames the reader holds no heap buffer.
    #[tokio::test]
    async fn frames_in_pieces_decode_and_leave_no_buffer() {
        let mut wire = Vec::new();
        for id in 1..=3 {
            wire.extend(encode_frame_prefixed(&ping(id)));
        }
        for split in 0..wire.len() {
            let (mut peer, ours) = duplex(64 * 1024);
            let mut t = prefixed(ours);
            peer.write_all(&wire[..split]).await.unwrap();
            let rest = wire[split..].to_vec();
            let writer = tokio::spawn(async move {
                tokio::task::yield_now().await;
                peer.write_all(&rest).await.unwrap();
                peer
            });
            for id in 1..=3 {
                match next_of(&mut t).await {
                    Inbound::Frame(f) => assert_eq!(*f, ping(id), "split at {split}"),
                    other => panic!("split at {split}: {other:?}"),
                }
            }
            let _peer = writer.await.unwrap();
            assert!(t.buf.is_empty(), "split at {split}");
            // The next poll, finding nothing buffered, frees the buffer.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(t.poll_next(&mut cx).is_pending());
            assert_eq!(t.buf.capacity(), 0, "split at {split}");
        }
    }

    /// Checks that an oversized length prefix is refused before its body
    /// arrives, and that a closed stream reads as `Closed`.
    #[tokio::test]
    async fn oversized_prefix_and_end_of_stream() {
        let (mut peer, ours) = duplex(1024);
        let mut t = prefixed(ours);
        peer.write_all(&4096u32.to_be_bytes()).await.unwrap();
        assert!(matches!(
            next_of(&mut t).await,
            Inbound::Violation(ErrorCode::FrameTooLarge, _)
        ));
        let (peer, ours) = duplex(1024);
        let mut t = prefixed(ours);
        drop(peer);
        assert!(matches!(next_of(&mut t).await, Inbound::Closed));
    }

    /// Checks that queued frames are written in order, partly written ones
    /// resumed after the peer reads, and the queue's storage freed once
    /// empty.
    #[tokio::test]
    async fn queued_frames_are_written_in_order() {
        // A pipe smaller than the frames: writes stop part-way.
        let (mut peer, ours) = duplex(5);
        let mut t = prefixed(ours);
        let frames: Vec<Frame> = (1..=40).map(ping).collect();
        for f in &frames {
            t.queue(f);
        }
        assert_eq!(t.queued(), 40);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = BytesMut::new();
            while got.len() < 40 {
                let mut chunk = [0u8; 3];
                let n = peer.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                while let Some(f) = pigeon_proto::try_decode_prefixed(&mut buf, 1024).unwrap() {
                    got.push(f);
                }
            }
            got
        });
        poll_fn(|cx| t.poll_flush(cx)).await.unwrap();
        assert_eq!(t.queued(), 0);
        assert_eq!(t.out.capacity(), 0);
        assert_eq!(reader.await.unwrap(), frames);
    }
}
