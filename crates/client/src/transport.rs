//! The two transports behind one interface: a frame reader and a frame
//! writer over a byte stream (4-byte length prefix) or WebSocket (one
//! binary message per frame), each over plain TCP or TLS. Only this module
//! touches sockets.

use bytes::BytesMut;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use pigeon_proto::v1::Frame;
use pigeon_proto::{
    FrameError, decode_frame, encode_frame, encode_frame_prefixed, try_decode_prefixed,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::endpoint::{Endpoint, Framing};
use crate::error::ClientError;

/// Bytes the stream reader asks the socket for at a time.
const STREAM_READ_CHUNK_BYTES: usize = 64 * 1024;

/// A byte stream: plain TCP, or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type WsStream = WebSocketStream<Box<dyn Io>>;

/// The receiving half of a connection.
pub(crate) enum FrameReader {
    Prefixed {
        half: Box<dyn AsyncRead + Send + Unpin>,
        buf: BytesMut,
    },
    Ws(SplitStream<WsStream>),
}

/// The sending half of a connection.
pub(crate) enum FrameWriter {
    Prefixed(Box<dyn AsyncWrite + Send + Unpin>),
    Ws(SplitSink<WsStream, Message>),
}

/// How to reach a server: the parsed URL and, for TLS, the extra CA.
pub(crate) struct DialOptions<'a> {
    pub(crate) endpoint: &'a Endpoint,
    /// PEM certificates trusted besides the webpki roots.
    pub(crate) extra_ca_pem: Option<&'a [u8]>,
    /// Incoming frames above this are refused.
    pub(crate) frame_bytes_max: usize,
}

/// Opens a transport: TCP, then TLS if the URL asks for it, then the
/// WebSocket upgrade for `ws://` and `wss://`.
pub(crate) async fn dial(
    opts: &DialOptions<'_>,
) -> Result<(FrameReader, FrameWriter), ClientError> {
    let endpoint = opts.endpoint;
    let tcp = TcpStream::connect(endpoint.addr.as_str()).await?;
    tcp.set_nodelay(true)?;
    let websocket = match &endpoint.framing {
        Framing::Prefixed => None,
        Framing::WebSocket { url } => Some(url.as_str()),
    };
    let stream: Box<dyn Io> = match &endpoint.tls_name {
        None if websocket.is_none() => {
            // A TCP stream splits without a lock.
            let (read, write) = tcp.into_split();
            return Ok(prefixed(Box::new(read), Box::new(write)));
        }
        None => Box::new(tcp),
        Some(name) => {
            let alpn = websocket.map(|_| &b"http/1.1"[..]);
            let config = crate::tls::client_config(opts.extra_ca_pem, alpn)?;
            Box::new(crate::tls::connect(tcp, name, config).await?)
        }
    };
    let Some(url) = websocket else {
        let (read, write) = tokio::io::split(stream);
        return Ok(prefixed(Box::new(read), Box::new(write)));
    };
    // tungstenite's defaults accept 64 MiB messages; a frame never exceeds our maximum.
    let config = WebSocketConfig::default()
        .max_message_size(Some(opts.frame_bytes_max))
        .max_frame_size(Some(opts.frame_bytes_max));
    let (ws, _response) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(ws_error)?;
    let (sink, stream) = ws.split();
    Ok((FrameReader::Ws(stream), FrameWriter::Ws(sink)))
}

pub(crate) fn prefixed(
    read: Box<dyn AsyncRead + Send + Unpin>,
    write: Box<dyn AsyncWrite + Send + Unpin>,
) -> (FrameReader, FrameWriter) {
    let reader = FrameReader::Prefixed {
        half: read,
        buf: BytesMut::with_capacity(STREAM_READ_CHUNK_BYTES),
    };
    (reader, FrameWriter::Prefixed(write))
}

impl FrameReader {
    /// The next frame; `Ok(None)` when the peer closed cleanly.
    pub(crate) async fn next_frame(
        &mut self,
        frame_bytes_max: usize,
    ) -> Result<Option<Frame>, ClientError> {
        match self {
            FrameReader::Prefixed { half, buf } => loop {
                if let Some(frame) =
                    try_decode_prefixed(buf, frame_bytes_max).map_err(frame_error)?
                {
                    return Ok(Some(frame));
                }
                buf.reserve(STREAM_READ_CHUNK_BYTES);
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
            FrameWriter::Prefixed(half) => {
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

    /// Ends the sending direction politely (TCP FIN, after TLS close_notify
    /// on TLS, or WebSocket Close); errors are ignored.
    pub(crate) async fn close(&mut self) {
        match self {
            FrameWriter::Prefixed(half) => {
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
