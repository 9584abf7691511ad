//! The two transports behind one interface: a frame reader and a frame
//! writer over TCP (4-byte length prefix) or WebSocket (one binary message
//! per frame). Only this module touches sockets.

use bytes::BytesMut;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use pigeon_proto::v1::Frame;
use pigeon_proto::{
    FrameError, decode_frame, encode_frame, encode_frame_prefixed, try_decode_prefixed,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::endpoint::Endpoint;
use crate::error::ClientError;

/// Bytes the TCP reader asks the socket for at a time.
const TCP_READ_CHUNK_BYTES: usize = 64 * 1024;

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The receiving half of a connection.
pub(crate) enum FrameReader {
    Tcp { half: OwnedReadHalf, buf: BytesMut },
    Ws(SplitStream<WsStream>),
}

/// The sending half of a connection.
pub(crate) enum FrameWriter {
    Tcp(OwnedWriteHalf),
    Ws(SplitSink<WsStream, Message>),
}

/// Opens a transport to `endpoint`; incoming frames above `frame_bytes_max` are refused.
pub(crate) async fn dial(
    endpoint: &Endpoint,
    frame_bytes_max: usize,
) -> Result<(FrameReader, FrameWriter), ClientError> {
    match endpoint {
        Endpoint::Tcp { addr } => {
            let stream = TcpStream::connect(addr.as_str()).await?;
            stream.set_nodelay(true)?;
            let (read, write) = stream.into_split();
            let reader = FrameReader::Tcp {
                half: read,
                buf: BytesMut::with_capacity(TCP_READ_CHUNK_BYTES),
            };
            Ok((reader, FrameWriter::Tcp(write)))
        }
        Endpoint::Ws { url } => {
            // tungstenite's defaults accept 64 MiB messages; a frame never exceeds our maximum.
            let config = WebSocketConfig::default()
                .max_message_size(Some(frame_bytes_max))
                .max_frame_size(Some(frame_bytes_max));
            let (ws, _response) =
                tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true)
                    .await
                    .map_err(ws_error)?;
            let (sink, stream) = ws.split();
            Ok((FrameReader::Ws(stream), FrameWriter::Ws(sink)))
        }
    }
}

impl FrameReader {
    /// The next frame; `Ok(None)` when the peer closed cleanly.
    pub(crate) async fn next_frame(
        &mut self,
        frame_bytes_max: usize,
    ) -> Result<Option<Frame>, ClientError> {
        match self {
            FrameReader::Tcp { half, buf } => loop {
                if let Some(frame) =
                    try_decode_prefixed(buf, frame_bytes_max).map_err(frame_error)?
                {
                    return Ok(Some(frame));
                }
                buf.reserve(TCP_READ_CHUNK_BYTES);
                if half.read_buf(buf).await? == 0 {
                    return if buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(ClientError::Protocol(
                            "the connection ended inside a frame".into(),
                        ))
                    };
                }
            },
            FrameReader::Ws(stream) => loop {
                let Some(message) = stream.next().await else {
                    return Ok(None);
                };
                match message.map_err(ws_error)? {
                    Message::Binary(bytes) => {
                        return decode_frame(&bytes, frame_bytes_max)
                            .map(Some)
                            .map_err(frame_error);
                    }
                    Message::Text(_) => {
                        return Err(ClientError::Protocol("a text WebSocket message".into()));
                    }
                    Message::Close(_) => return Ok(None),
                    // tungstenite answers pings itself.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
            },
        }
    }
}

impl FrameWriter {
    /// Writes `frames` in order and flushes them.
    pub(crate) async fn write_frames(&mut self, frames: &[Frame]) -> Result<(), ClientError> {
        match self {
            FrameWriter::Tcp(half) => {
                let mut bytes = Vec::new();
                for frame in frames {
                    bytes.extend_from_slice(&encode_frame_prefixed(frame));
                }
                half.write_all(&bytes).await?;
                half.flush().await?;
            }
            FrameWriter::Ws(sink) => {
                for frame in frames {
                    sink.feed(Message::Binary(encode_frame(frame).into()))
                        .await
                        .map_err(ws_error)?;
                }
                sink.flush().await.map_err(ws_error)?;
            }
        }
        Ok(())
    }

    /// Ends the sending direction politely (TCP FIN or WebSocket Close); errors are ignored.
    pub(crate) async fn close(&mut self) {
        match self {
            FrameWriter::Tcp(half) => {
                let _ = half.shutdown().await;
            }
            FrameWriter::Ws(sink) => {
                let _ = sink.send(Message::Close(None)).await;
                let _ = sink.close().await;
            }
        }
    }
}

fn frame_error(e: FrameError) -> ClientError {
    ClientError::Protocol(e.to_string())
}

fn ws_error(e: tungstenite::Error) -> ClientError {
    use tungstenite::Error as E;
    match e {
        E::Io(e) => ClientError::Io(e),
        E::ConnectionClosed | E::AlreadyClosed => ClientError::Closed,
        E::Url(e) => ClientError::InvalidUrl(e.to_string()),
        E::Http(response) => ClientError::Protocol(format!(
            "the WebSocket upgrade was refused with HTTP {}",
            response.status()
        )),
        other => ClientError::Protocol(format!("websocket: {other}")),
    }
}
