//! Protocol version 2's packed events, through the real binary: a client
//! that speaks version 2 unpacks exactly what a version 1 client is sent
//! (less the sender's device details on other users' copies), in sync
//! answers and pushes, in fewer bytes. These tests speak raw frames so that
//! the version and the bytes are the test's own.

mod common;

use bytes::BytesMut;
use common::*;
use pigeon_client::v1::{self, Event, Frame, Hello, event::Kind, frame::Body};
use pigeon_client::{new_client_msg_id, text as content, to_group, to_user};
use pigeon_proto::packing::unpack;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw TCP client that says Hello with a chosen protocol version and
/// counts the bytes it reads.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    bytes_read: usize,
    next_id: u64,
    /// Pushes read while waiting for answers.
    pushes: Vec<Body>,
}

impl Raw {
    async fn connect(addr: &str, token: &str, version: u32) -> Raw {
        let mut raw = Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            bytes_read: 0,
            next_id: 1,
            pushes: Vec::new(),
        };
        let welcome = raw
            .request(Body::Hello(Hello {
                min_version: version,
                max_version: version,
                token: token.into(),
                client_name: "raw".into(),
            }))
            .await;
        match welcome {
            Body::Welcome(w) => assert_eq!(w.version, version),
            other => panic!("expected Welcome, got {other:?}"),
        }
        raw
    }

    async fn read_frame(&mut self) -> Frame {
        within(async {
            loop {
                if let Some(f) = pigeon_proto::try_decode_prefixed(&mut self.buf, 1 << 24).unwrap()
                {
                    return f;
                }
                let n = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert_ne!(n, 0, "the server closed the connection");
                self.bytes_read += n;
            }
        })
        .await
    }

    /// Sends `body` and returns the answer's body; pushes read meanwhile
    /// are kept.
    async fn request(&mut self, body: Body) -> Body {
        let id = self.next_id;
        self.next_id += 1;
        let frame = Frame {
            request_id: id,
            body: Some(body),
        };
        self.stream
            .write_all(&pigeon_proto::encode_frame_prefixed(&frame))
            .await
            .unwrap();
        loop {
            let f = self.read_frame().await;
            if f.request_id == id {
                return f.body.expect("an answer has a body");
            }
            assert_eq!(f.request_id, 0, "an answer to another request: {f:?}");
            self.pushes.extend(f.body);
        }
    }

    /// Syncs from the start to the head; returns each answer as sent.
    async fn sync_all(&mut self) -> Vec<v1::SyncResponse> {
        let mut key = Vec::new();
        let mut answers = Vec::new();
        loop {
            let answer = self
                .request(Body::SyncRequest(v1::SyncRequest { key, limit: 0 }))
                .await;
            let Body::SyncResponse(r) = answer else {
                panic!("expected SyncResponse, got {answer:?}")
            };
            key = r.key.clone();
            let more = r.has_more;
            answers.push(r);
            if !more {
                return answers;
            }
        }
    }

    /// The next EventsPush.
    async fn next_events_push(&mut self) -> v1::EventsPush {
        loop {
            let body = if self.pushes.is_empty() {
                let f = self.read_frame().await;
                assert_eq!(f.request_id, 0);
                f.body.expect("a push has a body")
            } else {
                self.pushes.remove(0)
            };
            if let Body::EventsPush(p) = body {
                return p;
            }
        }
    }
}

/// Version 1's events as version 2 tells them to `reader`: other users'
/// copies of a message without the sender's device and retry key.
fn as_told_to(events: &[Event], reader: u64) -> Vec<Event> {
    events
        .iter()
        .cloned()
        .map(|mut e| {
            if let Some(Kind::Message(m)) = &mut e.kind
                && m.sender_id != reader
            {
                m.client_msg_id.clear();
                m.sender_device_id = 0;
            }
            e
        })
        .collect()
}

fn unpacked(answers: Vec<v1::SyncResponse>) -> Vec<Event> {
    answers
        .into_iter()
        .flat_map(|mut r| {
            let tables = r.packed.take().expect("a version 2 answer is packed");
            unpack(&mut r.events, &tables).expect("the server's batch unpacks");
            r.events
        })
        .collect()
}

/// Checks a version 2 reader gets, unpacked, exactly what a version 1
/// reader of the same log gets (direct and group messages, its own and
/// others', receipts, a group change), both from sync and from a push, and
/// that the packed answers are smaller.
#[tokio::test]
async fn version_two_unpacks_to_what_version_one_sends() {
    let server = Server::start("");
    let url = server.tcp_url();
    let addr = server.tcp.clone();
    let alice = connect(&url, &register_and_login(&url, "pk-alice").await).await;
    let bob_token = register_and_login(&url, "pk-bob").await;
    let bob = connect(&url, &bob_token).await;
    let _carol = register_and_login(&url, "pk-carol").await;
    let group = alice
        .create_group("packed", "", &["pk-bob", "pk-carol"], None)
        .await
        .unwrap();
    for i in 0..40 {
        let (from, to) = if i % 4 == 3 {
            (&bob, to_user("pk-alice"))
        } else {
            (&alice, to_user("pk-bob"))
        };
        from.send(&new_client_msg_id(), to, content(&format!("direct {i}")))
            .await
            .unwrap();
        if i % 5 == 0 {
            alice
                .send(
                    &new_client_msg_id(),
                    to_group(&group.conversation_id),
                    content(&format!("group {i}")),
                )
                .await
                .unwrap();
        }
    }
    let bob_id = bob.welcome().user_id;

    let mut v1_reader = Raw::connect(&addr, &bob_token, 1).await;
    let v1_answers = v1_reader.sync_all().await;
    assert!(v1_answers.iter().all(|r| r.packed.is_none()));
    let v1_events: Vec<Event> = v1_answers.into_iter().flat_map(|r| r.events).collect();
    let v1_bytes = v1_reader.bytes_read;

    let mut v2_reader = Raw::connect(&addr, &bob_token, 2).await;
    let before = v2_reader.bytes_read;
    let v2_answers = v2_reader.sync_all().await;
    let v2_bytes = v2_reader.bytes_read - before;
    let packed_messages = v2_answers
        .iter()
        .flat_map(|r| &r.events)
        .filter_map(|e| match &e.kind {
            Some(Kind::Message(m)) => Some(m),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert!(
        packed_messages
            .iter()
            .all(|m| m.conversation_id.is_empty() && m.sender_username.is_empty()),
        "message events go packed"
    );
    let v2_events = unpacked(v2_answers);

    let kinds = |events: &[Event]| {
        let mut k: Vec<&str> = events
            .iter()
            .map(|e| match &e.kind {
                Some(Kind::Message(_)) => "message",
                Some(Kind::GroupChange(_)) => "group_change",
                Some(Kind::Receipt(_)) => "receipt",
                _ => "other",
            })
            .collect();
        k.dedup();
        k
    };
    assert!(kinds(&v1_events).contains(&"group_change"));
    assert!(v1_events.len() >= 49, "{} events", v1_events.len());
    assert_eq!(v2_events, as_told_to(&v1_events, bob_id));
    // Bob's own messages keep the retry key his devices match acks by.
    let own = v2_events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Message(m)) if m.sender_id == bob_id => Some(m),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(own.len(), 10);
    assert!(own.iter().all(|m| !m.client_msg_id.is_empty()));
    assert!(
        v2_bytes * 2 < v1_bytes,
        "packed answers are smaller: {v2_bytes} bytes against {v1_bytes}"
    );

    // Both readers are at the head: the next message is pushed to each.
    alice
        .send(&new_client_msg_id(), to_user("pk-bob"), content("pushed"))
        .await
        .unwrap();
    let v1_push = v1_reader.next_events_push().await;
    let mut v2_push = v2_reader.next_events_push().await;
    assert!(v1_push.packed.is_none());
    let tables = v2_push.packed.take().expect("a version 2 push is packed");
    unpack(&mut v2_push.events, &tables).unwrap();
    assert_eq!(v2_push.events, as_told_to(&v1_push.events, bob_id));
    assert_eq!(text(&v2_push.events[0]), "pushed");
}
