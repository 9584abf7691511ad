//! A scripted stand-in for a Pigeon server, for tests: a TCP listener whose
//! connections the test drives frame by frame.

use std::time::Duration;

use bytes::BytesMut;
use pigeon_proto::v1::{self, Frame, frame::Body};
use pigeon_proto::{encode_frame_prefixed, try_decode_prefixed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// How long a test waits for the client before failing.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

pub(crate) struct FakeServer {
    listener: TcpListener,
}

impl FakeServer {
    /// Binds a free local port; returns the server and its `tcp://` URL.
    pub(crate) async fn bind() -> (FakeServer, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("tcp://{}", listener.local_addr().unwrap());
        (FakeServer { listener }, url)
    }

    pub(crate) async fn accept(&self) -> FakePeer {
        let (stream, _) = timeout(WAIT, self.listener.accept())
            .await
            .expect("no connection")
            .unwrap();
        FakePeer {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Accepts a connection and answers its Hello with [`welcome`].
    pub(crate) async fn accept_hello(&self) -> (FakePeer, v1::Hello) {
        let mut peer = self.accept().await;
        let (id, body) = peer.recv().await.expect("no hello");
        let Body::Hello(hello) = body else {
            panic!("expected hello, got {body:?}")
        };
        peer.send(Frame::new(id, Body::Welcome(welcome()))).await;
        (peer, hello)
    }
}

pub(crate) struct FakePeer {
    pub(crate) stream: TcpStream,
    buf: BytesMut,
}

impl FakePeer {
    /// The next frame from the client (request id, body), skipping Pings;
    /// `None` once the client closed.
    pub(crate) async fn recv(&mut self) -> Option<(u64, Body)> {
        loop {
            if let Some(frame) = try_decode_prefixed(&mut self.buf, 1 << 20).unwrap() {
                match frame.body.unwrap() {
                    Body::Ping(p) => self.send(Frame::new(frame.request_id, pong(p.nonce))).await,
                    body => return Some((frame.request_id, body)),
                }
                continue;
            }
            let n = timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("client sent nothing")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Expects a SyncRequest; returns its request id and key.
    pub(crate) async fn expect_sync(&mut self) -> (u64, Vec<u8>) {
        match self.recv().await {
            Some((id, Body::SyncRequest(r))) => (id, r.key),
            other => panic!("expected a sync request, got {other:?}"),
        }
    }

    pub(crate) async fn send(&mut self, frame: Frame) {
        // The client may be gone already; tests check what they need elsewhere.
        let _ = self.stream.write_all(&encode_frame_prefixed(&frame)).await;
    }

    pub(crate) async fn send_sync(&mut self, id: u64, seqs: &[u64], key: &str, has_more: bool) {
        let body = Body::SyncResponse(v1::SyncResponse {
            events: seqs.iter().map(|&s| event(s)).collect(),
            key: key.as_bytes().to_vec(),
            has_more,
            packed: None,
        });
        self.send(Frame::new(id, body)).await;
    }

    pub(crate) async fn push_events(&mut self, prev_key: &str, seqs: &[u64], key: &str) {
        let body = Body::EventsPush(v1::EventsPush {
            prev_key: prev_key.as_bytes().to_vec(),
            events: seqs.iter().map(|&s| event(s)).collect(),
            key: key.as_bytes().to_vec(),
            packed: None,
        });
        self.send(Frame::push(body)).await;
    }
}

pub(crate) fn welcome() -> v1::Welcome {
    v1::Welcome {
        version: 1,
        server_min_version: 1,
        server_max_version: 1,
        user_id: 1,
        username: "alice".into(),
        device_id: 1,
        heartbeat_interval_ms: 60_000,
        idle_timeout_ms: 180_000,
        limits: Some(v1::Limits {
            frame_bytes_max: 1 << 20,
            message_bytes_max: 64 << 10,
            sync_batch_events_max: 256,
            history_page_max: 100,
            inflight_requests_max: 64,
            client_msg_id_bytes_max: 64,
        }),
        server_name: "fake".into(),
        flags: Vec::new(),
    }
}

pub(crate) fn pong(nonce: u64) -> Body {
    Body::Pong(v1::Pong {
        nonce,
        server_time_ms: 0,
    })
}

/// A message event with sequence number `seq`.
pub(crate) fn event(seq: u64) -> v1::Event {
    v1::Event {
        seq,
        created_at_ms: 0,
        kind: Some(v1::event::Kind::Message(v1::Message {
            conversation_id: "d:1:2".into(),
            conv_seq: seq,
            sender_id: 2,
            sender_username: "bob".into(),
            sender_device_id: 1,
            client_msg_id: format!("m{seq}"),
            sent_at_ms: 0,
            content: Some(crate::text("hi")),
            ..Default::default()
        })),
        ..Default::default()
    }
}
