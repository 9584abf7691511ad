//! Frames in and out over the two transports. On a byte stream (TCP, or TLS
//! over TCP) frames carry a 4-byte big-endian length prefix; a WebSocket
//! binary message is one frame (`websocket.rs` frames WebSocket). Both run
//! over any byte stream through [`Framed`] and a [`Codec`].
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

use bytes::{Bytes, BytesMut};
use pigeon_proto::limits::FRAME_LENGTH_PREFIX_BYTES;
use pigeon_proto::{ErrorCode, Frame, FrameError, decode_frame, encode_frame_prefixed};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::websocket::WsCodec;

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
    /// Frames queued and not yet completely written (the transport's own
    /// replies, such as WebSocket pongs, included).
    fn queued(&self) -> usize;
    /// Writes queued frames: ready once all are written and flushed (cheap
    /// when there is nothing to do, so it may be polled every time).
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

/// How bytes become frames, and frames bytes, on one kind of stream.
pub trait Codec: Send + 'static {
    /// Takes what is complete at the front of `bytes`, which it may change
    /// in place (a WebSocket payload is unmasked there). Replies the
    /// transport owes the peer (a pong) go to `replies`.
    fn take(&mut self, bytes: &mut [u8], replies: &mut VecDeque<Bytes>) -> Taken;
    /// Bytes needed to complete what starts `bytes`, if known: sizes reads
    /// while a frame arrives in parts.
    fn needed(&self, bytes: &[u8]) -> usize;
    /// An outbound frame, encoded.
    fn encode(&self, frame: &Frame) -> Bytes;
    /// What to send just before closing (once), if anything.
    fn close(&mut self) -> Option<Bytes>;
}

/// What a [`Codec`] found at the front of the bytes read.
#[derive(Debug)]
pub enum Taken {
    /// Nothing whole yet: more bytes are needed.
    Incomplete,
    /// This many bytes were used, for this (if anything: a message's first
    /// fragment produces nothing yet). After a violation nothing more is
    /// read.
    Used(usize, Option<Inbound>),
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

/// Frames over a byte stream (TCP, TLS over TCP, an upgraded HTTP
/// connection, or a simulated stream) with codec `C`.
pub struct Framed<S, C> {
    io: S,
    codec: C,
    /// Bytes of a frame read in part (and any after it); empty, with no
    /// allocation, between frames.
    buf: BytesMut,
    /// Encoded frames not yet completely written; no allocation when empty.
    out: VecDeque<Bytes>,
    /// Bytes of the first queued frame already written.
    written: usize,
    /// Bytes were written and not yet flushed (TLS may hold records back).
    unflushed: bool,
}

/// Length-prefixed framing: a 4-byte big-endian length, then the frame.
#[derive(Debug)]
pub struct Prefixed {
    /// Largest frame accepted, in bytes.
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
    Box::new(Framed::new(
        stream,
        Prefixed {
            max: frame_bytes_max,
        },
    ))
}

/// WebSocket frames over an upgraded HTTP connection (the handshake done):
/// one binary message per frame, at most `frame_bytes_max` bytes.
pub fn websocket<S>(stream: S, frame_bytes_max: usize) -> Box<dyn Transport>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::new(Framed::new(stream, WsCodec::new(frame_bytes_max)))
}

impl Codec for Prefixed {
    fn take(&mut self, bytes: &mut [u8], _: &mut VecDeque<Bytes>) -> Taken {
        let Some(prefix) = bytes.first_chunk::<FRAME_LENGTH_PREFIX_BYTES>() else {
            return Taken::Incomplete;
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > self.max {
            return Taken::Used(
                0,
                Some(violation(FrameError::TooLarge { len, max: self.max })),
            );
        }
        let end = FRAME_LENGTH_PREFIX_BYTES + len;
        if bytes.len() < end {
            return Taken::Incomplete;
        }
        let inbound = match decode_frame(&bytes[FRAME_LENGTH_PREFIX_BYTES..end], self.max) {
            Ok(frame) => Inbound::Frame(Box::new(frame)),
            Err(e) => violation(e),
        };
        Taken::Used(end, Some(inbound))
    }

    fn needed(&self, bytes: &[u8]) -> usize {
        match bytes.first_chunk::<FRAME_LENGTH_PREFIX_BYTES>() {
            Some(p) => FRAME_LENGTH_PREFIX_BYTES + u32::from_be_bytes(*p) as usize,
            None => FRAME_LENGTH_PREFIX_BYTES,
        }
    }

    fn encode(&self, frame: &Frame) -> Bytes {
        encode_frame_prefixed(frame).into()
    }

    fn close(&mut self) -> Option<Bytes> {
        None
    }
}

impl<S, C> Framed<S, C>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Codec,
{
    /// `codec`'s frames over `io`.
    pub fn new(io: S, codec: C) -> Self {
        Framed {
            io,
            codec,
            buf: BytesMut::new(),
            out: VecDeque::new(),
            written: 0,
            unflushed: false,
        }
    }

    /// Reads while nothing is buffered: into the stack, keeping on the heap
    /// only what is left after the first thing it produced. `None`: read on.
    fn poll_idle_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let mut stack = [MaybeUninit::<u8>::uninit(); IDLE_READ_BYTES];
        let mut read = ReadBuf::uninit(&mut stack);
        match ready!(Pin::new(&mut self.io).poll_read(cx, &mut read)) {
            Ok(()) if read.filled().is_empty() => return Poll::Ready(Some(Inbound::Closed)),
            Ok(()) => {}
            Err(_) => return Poll::Ready(Some(Inbound::Closed)),
        }
        let bytes = read.filled_mut();
        let mut at = 0;
        while let Taken::Used(used, inbound) = self.codec.take(&mut bytes[at..], &mut self.out) {
            at += used;
            if let Some(inbound) = inbound {
                self.buf.extend_from_slice(&bytes[at..]);
                return Poll::Ready(Some(inbound));
            }
        }
        self.buf.extend_from_slice(&bytes[at..]);
        Poll::Ready(None)
    }

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

impl<S, C> Transport for Framed<S, C>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Codec,
{
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
            if let Taken::Used(used, inbound) = self.codec.take(&mut self.buf, &mut self.out) {
                bytes::Buf::advance(&mut self.buf, used);
                match inbound {
                    Some(inbound) => return Poll::Ready(inbound),
                    None => continue,
                }
            }
            // A frame in part: grow by what it still needs, one chunk at a
            // time (a peer may announce the maximum and then send nothing).
            let want = self
                .codec
                .needed(&self.buf)
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
        self.out.push_back(self.codec.encode(frame));
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
            self.unflushed = true;
        }
        // Everything is out: free the queue's storage.
        self.out = VecDeque::new();
        if self.unflushed {
            // A no-op on TCP; TLS may hold the last record until flushed.
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(last) = self.codec.close() {
            self.out.push_back(last);
        }
        ready!(self.poll_flush(cx))?;
        // On TLS this also sends close_notify.
        Pin::new(&mut self.io).poll_shutdown(cx)
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

    fn prefixed(io: DuplexStream) -> Framed<DuplexStream, Prefixed> {
        Framed::new(io, Prefixed { max: 1024 })
    }

    async fn next_of(t: &mut Framed<DuplexStream, Prefixed>) -> Inbound {
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
