//! Frame readers and writers over the two transports. On a byte stream (TCP,
//! or TLS over TCP) frames carry a 4-byte big-endian length prefix; a
//! WebSocket binary message is one frame.
//! Readers turn every malformed input into an [`Inbound::Violation`] with the
//! wire code to close with; nothing here panics on input.

use std::io;

use async_trait::async_trait;
use axum::extract::ws::{Message as WsMessage, WebSocket};
use bytes::BytesMut;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use pigeon_proto::{
    ErrorCode, Frame, FrameError, decode_frame, encode_frame, encode_frame_prefixed,
    try_decode_prefixed,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a reader produced.
#[derive(Debug)]
pub enum Inbound {
    /// A decoded frame.
    /// (Boxed: queues of these stay small while connections are idle.)
    Frame(Box<Frame>),
    /// Transport-level liveness (a WebSocket ping or pong).
    Activity,
    /// The peer broke the framing; close with this code and reason.
    Violation(ErrorCode, String),
    /// The peer closed, or the transport failed.
    Closed,
}

/// The receiving half of a connection.
#[async_trait]
pub trait FrameReader: Send + 'static {
    /// The next thing the peer sent.
    async fn next(&mut self) -> Inbound;
}

/// The sending half of a connection.
#[async_trait]
pub trait FrameWriter: Send + 'static {
    /// Writes one frame and flushes it.
    async fn write(&mut self, frame: &Frame) -> io::Result<()>;
    /// Closes the transport.
    async fn close(&mut self);
}

fn violation(e: FrameError) -> Inbound {
    match e {
        FrameError::TooLarge { .. } => Inbound::Violation(ErrorCode::FrameTooLarge, e.to_string()),
        FrameError::Malformed(_) => Inbound::Violation(ErrorCode::BadFrame, e.to_string()),
    }
}

/// Bytes read from a byte stream per read call, at most.
const STREAM_READ_CHUNK_BYTES: usize = 64 * 1024;

/// Bytes read into a stack buffer while a connection has nothing buffered.
const IDLE_READ_BYTES: usize = 512;

/// Reads length-prefixed frames from any byte stream (TCP, or TLS over TCP).
struct PrefixedReader<R> {
    half: R,
    buf: BytesMut,
    max: usize,
}

/// Writes length-prefixed frames to any byte stream.
struct PrefixedWriter<W> {
    half: W,
}

/// Splits a TCP stream into a frame reader and writer.
pub fn tcp(
    stream: TcpStream,
    frame_bytes_max: usize,
) -> (Box<dyn FrameReader>, Box<dyn FrameWriter>) {
    // A TCP stream splits without a lock, unlike the generic `stream`.
    let (r, w) = stream.into_split();
    prefixed(r, w, frame_bytes_max)
}

/// Splits any byte stream, such as a TLS session over TCP, into a frame
/// reader and writer with the same length-prefixed framing as [`tcp`].
pub fn stream<S>(stream: S, frame_bytes_max: usize) -> (Box<dyn FrameReader>, Box<dyn FrameWriter>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    prefixed(r, w, frame_bytes_max)
}

fn prefixed<R, W>(
    read: R,
    write: W,
    frame_bytes_max: usize,
) -> (Box<dyn FrameReader>, Box<dyn FrameWriter>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // No buffer until bytes arrive: an idle connection should cost little.
    let reader = PrefixedReader {
        half: read,
        buf: BytesMut::new(),
        max: frame_bytes_max,
    };
    (Box::new(reader), Box::new(PrefixedWriter { half: write }))
}

#[async_trait]
impl<R: AsyncRead + Unpin + Send + 'static> FrameReader for PrefixedReader<R> {
    async fn next(&mut self) -> Inbound {
        loop {
            match try_decode_prefixed(&mut self.buf, self.max) {
                Ok(Some(frame)) => return Inbound::Frame(Box::new(frame)),
                Ok(None) => {}
                Err(e) => return violation(e),
            }
            if self.buf.is_empty() {
                // Between frames: give the buffer back and wait with a small
                // one on the stack, so idle connections hold no heap buffer.
                if self.buf.capacity() > IDLE_READ_BYTES {
                    self.buf = BytesMut::new();
                }
                let mut first = [0u8; IDLE_READ_BYTES];
                match self.half.read(&mut first).await {
                    Ok(0) | Err(_) => return Inbound::Closed,
                    Ok(n) => self.buf.extend_from_slice(&first[..n]),
                }
                continue;
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(STREAM_READ_CHUNK_BYTES);
            }
            match self.half.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Inbound::Closed,
                Ok(_) => {}
            }
        }
    }
}

#[async_trait]
impl<W: AsyncWrite + Unpin + Send + 'static> FrameWriter for PrefixedWriter<W> {
    async fn write(&mut self, frame: &Frame) -> io::Result<()> {
        self.half.write_all(&encode_frame_prefixed(frame)).await?;
        // A no-op on TCP; TLS may hold the last record until flushed.
        self.half.flush().await
    }

    async fn close(&mut self) {
        // On TLS this also sends close_notify.
        let _ = self.half.shutdown().await;
    }
}

struct WsReader {
    stream: SplitStream<WebSocket>,
}

struct WsWriter {
    sink: SplitSink<WebSocket, WsMessage>,
}

/// Splits an upgraded WebSocket into a frame reader and writer. The
/// message-size limit was set at upgrade time, so the reader only decodes.
pub fn websocket(socket: WebSocket) -> (Box<dyn FrameReader>, Box<dyn FrameWriter>) {
    let (sink, stream) = socket.split();
    (Box::new(WsReader { stream }), Box::new(WsWriter { sink }))
}

#[async_trait]
impl FrameReader for WsReader {
    async fn next(&mut self) -> Inbound {
        match self.stream.next().await {
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
        }
    }
}

#[async_trait]
impl FrameWriter for WsWriter {
    async fn write(&mut self, frame: &Frame) -> io::Result<()> {
        self.sink
            .send(WsMessage::Binary(encode_frame(frame).into()))
            .await
            .map_err(io::Error::other)
    }

    async fn close(&mut self) {
        let _ = self.sink.close().await;
    }
}
