//! A minimal protocol client over plain TCP that counts every byte it reads
//! and writes on the socket: the length prefixes, the frames, everything
//! the server put on the wire (TCP/IP headers excepted). One request at a
//! time; pushes that arrive meanwhile are skipped and counted.

use anyhow::{Context, bail};
use bytes::BytesMut;
use pigeon_proto::v1::{self, Frame, frame::Body};
use pigeon_proto::{encode_frame_prefixed, try_decode_prefixed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A counting connection.
pub(crate) struct RawConn {
    stream: TcpStream,
    buf: BytesMut,
    next_id: u64,
    /// Bytes read from the socket so far.
    pub(crate) bytes_read: u64,
    /// Bytes written to the socket so far.
    pub(crate) bytes_written: u64,
    /// Pushes (request id 0) skipped while waiting for answers.
    pub(crate) pushes_skipped: u64,
}

impl RawConn {
    /// Connects to `tcp://host:port` and says Hello with `token`, offering
    /// protocol versions up to `version`.
    pub(crate) async fn connect(
        url: &str,
        token: &str,
        version: u32,
    ) -> anyhow::Result<(RawConn, v1::Welcome)> {
        let addr = url
            .strip_prefix("tcp://")
            .context("the counting client speaks tcp:// only")?;
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut c = RawConn {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            next_id: 1,
            bytes_read: 0,
            bytes_written: 0,
            pushes_skipped: 0,
        };
        let hello = Body::Hello(v1::Hello {
            min_version: pigeon_proto::version::PROTOCOL_VERSION_MIN,
            max_version: version,
            token: token.into(),
            client_name: "pigeon-bench/raw".into(),
        });
        match c.request(hello).await? {
            Body::Welcome(w) => Ok((c, w)),
            other => bail!(
                "expected a Welcome, got {}",
                pigeon_proto::body_name(Some(&other))
            ),
        }
    }

    /// Sends a request and returns its answer (an `Error` answer is an error).
    pub(crate) async fn request(&mut self, body: Body) -> anyhow::Result<Body> {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = encode_frame_prefixed(&Frame::new(id, body));
        self.stream.write_all(&bytes).await?;
        self.bytes_written += bytes.len() as u64;
        loop {
            let frame = self.next_frame().await?;
            match frame.body {
                _ if frame.request_id == 0 => self.pushes_skipped += 1,
                Some(Body::Error(e)) if frame.request_id == id => {
                    bail!("server error {}: {}", e.code, e.message)
                }
                Some(b) if frame.request_id == id => return Ok(b),
                _ => bail!(
                    "an answer to request {} while waiting for {id}",
                    frame.request_id
                ),
            }
        }
    }

    /// A sync request; the answer.
    pub(crate) async fn sync(
        &mut self,
        key: &[u8],
        limit: u32,
    ) -> anyhow::Result<v1::SyncResponse> {
        let body = Body::SyncRequest(v1::SyncRequest {
            key: key.to_vec(),
            limit,
        });
        match self.request(body).await? {
            Body::SyncResponse(r) => Ok(r),
            other => bail!(
                "expected a SyncResponse, got {}",
                pigeon_proto::body_name(Some(&other))
            ),
        }
    }

    async fn next_frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(frame) = try_decode_prefixed(&mut self.buf, FRAME_BYTES_MAX)? {
                return Ok(frame);
            }
            self.buf.reserve(64 * 1024);
            let n = self.stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.bytes_read += n as u64;
        }
    }
}
