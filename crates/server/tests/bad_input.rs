//! Bad input gets its documented error code, and the server keeps serving
//! everyone else. These tests speak raw frames where the SDK would refuse
//! to send such input.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use pigeon_client::v1::{self, ErrorCode, Frame, Hello, frame::Body};
use pigeon_client::{text as content, to_user};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw TCP peer.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    async fn bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).await.unwrap();
    }

    async fn frame(&mut self, f: &Frame) {
        self.bytes(&pigeon_proto::encode_frame_prefixed(f)).await;
    }

    async fn hello(&mut self, token: &str) -> Frame {
        let hello = Hello {
            min_version: 1,
            max_version: 1,
            token: token.into(),
            client_name: "raw".into(),
        };
        self.frame(&Frame {
            request_id: 1,
            body: Some(Body::Hello(hello)),
        })
        .await;
        self.recv().await.expect("an answer to Hello")
    }

    /// The next frame that is not a push, or None once the server closed
    /// the connection.
    async fn recv(&mut self) -> Option<Frame> {
        within(async {
            loop {
                if let Some(f) = pigeon_proto::try_decode_prefixed(&mut self.buf, 1 << 24).unwrap()
                {
                    // Pushes come whenever they come; tests look at answers.
                    let push = matches!(
                        f.body,
                        Some(
                            Body::EventsPush(_)
                                | Body::SyncNotice(_)
                                | Body::PresencePush(_)
                                | Body::TypingPush(_)
                        )
                    );
                    if !push {
                        return Some(f);
                    }
                    continue;
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// Expects a Goodbye with `code`, then the connection closing.
    async fn expect_goodbye(&mut self, code: ErrorCode) {
        let f = self.recv().await;
        match f.and_then(|f| f.body) {
            Some(Body::Goodbye(g)) => assert_eq!(g.code, code as i32, "{}", g.message),
            other => panic!("expected Goodbye({code:?}), got {other:?}"),
        }
        assert!(
            self.recv().await.is_none(),
            "connection closed after goodbye"
        );
    }

    async fn expect_error(&mut self, id: u64, code: ErrorCode) -> String {
        let f = self.recv().await.expect("an answer");
        assert_eq!(f.request_id, id, "{f:?}");
        match f.body {
            Some(Body::Error(e)) => {
                assert_eq!(e.code, code as i32, "{}", e.message);
                assert!(!e.message.is_empty(), "errors carry a readable reason");
                e.message
            }
            other => panic!("expected Error({code:?}), got {other:?}"),
        }
    }
}

/// Runs a full exchange on a fresh client to show the server still serves.
async fn still_serving(server: &Server) {
    let url = server.tcp_url();
    let c = connect(&url, &login(&url, "alice", "check").await).await;
    c.send(
        &pigeon_client::new_client_msg_id(),
        to_user("bob"),
        content("still here"),
    )
    .await
    .unwrap();
}

/// Every framing and handshake violation is answered with its code and a
/// closed connection, and the server keeps serving others throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_and_handshake_violations() {
    let server = Server::start("handshake_timeout_ms = 500");
    register_and_login(&server.tcp_url(), "alice").await;
    register_and_login(&server.tcp_url(), "bob").await;

    // A length prefix above the frame limit.
    let mut r = Raw::connect(&server.tcp).await;
    r.bytes(&(2u32 << 20).to_be_bytes()).await;
    r.expect_goodbye(ErrorCode::FrameTooLarge).await;

    // Garbage that is not a protobuf frame.
    let mut r = Raw::connect(&server.tcp).await;
    r.bytes(&[0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await;
    r.expect_goodbye(ErrorCode::BadFrame).await;

    // Random bytes in bulk.
    let mut r = Raw::connect(&server.tcp).await;
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    r.bytes(&noise).await;
    assert!(matches!(
        r.recv().await.and_then(|f| f.body),
        Some(Body::Goodbye(_))
    ));

    // A first frame that is not a Hello.
    let mut r = Raw::connect(&server.tcp).await;
    r.frame(&Frame {
        request_id: 1,
        body: Some(Body::Ping(v1::Ping { nonce: 1 })),
    })
    .await;
    r.expect_goodbye(ErrorCode::HandshakeRequired).await;

    // No common protocol version.
    let mut r = Raw::connect(&server.tcp).await;
    let hello = Hello {
        min_version: 7,
        max_version: 9,
        ..Default::default()
    };
    r.frame(&Frame {
        request_id: 1,
        body: Some(Body::Hello(hello)),
    })
    .await;
    r.expect_goodbye(ErrorCode::UpgradeRequired).await;

    // Silence after connecting.
    let mut r = Raw::connect(&server.tcp).await;
    r.expect_goodbye(ErrorCode::HandshakeTimeout).await;

    // A token that was never issued.
    let mut r = Raw::connect(&server.tcp).await;
    let bye = r.hello("not-a-token").await;
    assert!(matches!(bye.body, Some(Body::Goodbye(g)) if g.code == ErrorCode::InvalidToken as i32));
    let mut r = Raw::connect(&server.tcp).await;
    let bye = r.hello(&"ab".repeat(32)).await;
    assert!(matches!(bye.body, Some(Body::Goodbye(g)) if g.code == ErrorCode::InvalidToken as i32));

    // WebSocket: a text message is not a frame.
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        "hello?".into(),
    ))
    .await
    .unwrap();
    let msg = within(ws.next()).await.unwrap().unwrap();
    let frame = Frame::decode(msg.into_data()).unwrap();
    assert!(matches!(frame.body, Some(Body::Goodbye(g)) if g.code == ErrorCode::BadFrame as i32));

    // WebSocket pings before the Hello are keep-alives, not a wrong first frame.
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::Ping(
        vec![1].into(),
    ))
    .await
    .unwrap();
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        ..Default::default()
    };
    let bytes = Frame {
        request_id: 1,
        body: Some(Body::Hello(hello)),
    }
    .encode_to_vec();
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        bytes.into(),
    ))
    .await
    .unwrap();
    let frame = loop {
        match within(ws.next()).await.unwrap().unwrap() {
            tokio_tungstenite::tungstenite::Message::Binary(b) => break Frame::decode(b).unwrap(),
            _ => continue,
        }
    };
    assert!(matches!(frame.body, Some(Body::Welcome(_))), "{frame:?}");

    still_serving(&server).await;
}

/// WebSocket framing as a browser or tungstenite speaks it: a message larger
/// than the frame limit gets FRAME_TOO_LARGE and a close; a message just
/// under it, sent in fragments and arriving over many reads, is a frame; a
/// ping is answered with its pong; a close from the client is answered with
/// a close echoing its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_framing() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let server = Server::start("frame_bytes_max = 100000");
    register_and_login(&server.tcp_url(), "alice").await;
    register_and_login(&server.tcp_url(), "bob").await;
    let hello = Frame {
        request_id: 1,
        body: Some(Body::Hello(Hello {
            min_version: 1,
            max_version: 1,
            ..Default::default()
        })),
    };
    // Too large: refused with its code, then closed.
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    ws.send(Ws::Binary(hello.encode_to_vec().into()))
        .await
        .unwrap();
    let welcome = within(ws.next()).await.unwrap().unwrap();
    assert!(matches!(
        Frame::decode(welcome.into_data()).unwrap().body,
        Some(Body::Welcome(_))
    ));
    ws.send(Ws::Binary(vec![0u8; 100_001].into()))
        .await
        .unwrap();
    let bye = within(ws.next()).await.unwrap().unwrap();
    let bye = Frame::decode(bye.into_data()).unwrap();
    assert!(
        matches!(bye.body, Some(Body::Goodbye(ref g)) if g.code == ErrorCode::FrameTooLarge as i32),
        "{bye:?}"
    );
    assert!(matches!(
        within(ws.next()).await,
        Some(Ok(Ws::Close(_))) | None
    ));

    // Just under the limit, in two fragments with a ping between them: a
    // Hello padded with a long client name.
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    let mut big = hello.clone();
    if let Some(Body::Hello(h)) = &mut big.body {
        h.client_name = "x".repeat(99_000);
    }
    let bytes = big.encode_to_vec();
    assert!(bytes.len() <= 100_000);
    let (first, rest) = bytes.split_at(40_000);
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame as WsFrame,
        coding::{Data, OpCode},
    };
    ws.send(Ws::Frame(WsFrame::message(
        first.to_vec(),
        OpCode::Data(Data::Binary),
        false,
    )))
    .await
    .unwrap();
    ws.send(Ws::Ping(vec![7, 7].into())).await.unwrap();
    ws.send(Ws::Frame(WsFrame::message(
        rest.to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    let mut pong = false;
    let welcome = loop {
        match within(ws.next()).await.unwrap().unwrap() {
            Ws::Pong(p) => {
                assert_eq!(&p[..], &[7, 7]);
                pong = true;
            }
            Ws::Binary(b) => break Frame::decode(b).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(
        matches!(welcome.body, Some(Body::Welcome(_))),
        "{welcome:?}"
    );
    if !pong {
        assert!(matches!(within(ws.next()).await, Some(Ok(Ws::Pong(_)))));
    }

    // The client closes: the server answers in kind.
    ws.send(Ws::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "".into(),
    })))
    .await
    .unwrap();
    match within(ws.next()).await {
        Some(Ok(Ws::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("expected a close, got {other:?}"),
    }
    still_serving(&server).await;
}

/// Request-level mistakes get an Error with the request's id and leave the
/// connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_keep_the_connection() {
    let server = Server::start("message_bytes_max = 1000");
    let url = server.tcp_url();
    let token = register_and_login(&url, "alice").await;
    register_and_login(&url, "bob").await;
    let bob_key = {
        let bob = connect(&url, &login(&url, "bob", "k").await).await;
        sync_all(&bob, &[]).await;
        bob.send("b1", to_user("alice"), content("x"))
            .await
            .unwrap();
        sync_all(&bob, &[]).await.1
    };

    // Anonymous connections may not send.
    let mut anon = Raw::connect(&server.tcp).await;
    assert!(matches!(anon.hello("").await.body, Some(Body::Welcome(_))));
    let send = v1::SendRequest {
        client_msg_id: "x".into(),
        target: Some(to_user("bob")),
        content: Some(content("hi")),
    };
    anon.frame(&Frame {
        request_id: 3,
        body: Some(Body::SendRequest(send.clone())),
    })
    .await;
    anon.expect_error(3, ErrorCode::Unauthenticated).await;

    let mut r = Raw::connect(&server.tcp).await;
    assert!(matches!(r.hello(&token).await.body, Some(Body::Welcome(w)) if w.username == "alice"));

    // An unknown message type (a field this server does not know).
    let mut unknown = vec![0xBA, 0x3E, 0x02, 0x08, 0x01];
    Frame {
        request_id: 5,
        body: None,
    }
    .encode(&mut unknown)
    .unwrap();
    let mut prefixed = (unknown.len() as u32).to_be_bytes().to_vec();
    prefixed.extend(&unknown);
    r.bytes(&prefixed).await;
    r.expect_error(5, ErrorCode::UnknownRequest).await;

    // A body only a server sends.
    r.frame(&Frame {
        request_id: 6,
        body: Some(Body::SyncNotice(v1::SyncNotice {})),
    })
    .await;
    r.expect_error(6, ErrorCode::UnknownRequest).await;

    // Sending to nobody.
    let mut s = send.clone();
    s.target = Some(to_user("nobody"));
    r.frame(&Frame {
        request_id: 7,
        body: Some(Body::SendRequest(s)),
    })
    .await;
    r.expect_error(7, ErrorCode::UserNotFound).await;

    // A conversation alice is not in.
    let mut s = send.clone();
    s.target = Some(pigeon_client::to_conversation("d:100:200"));
    r.frame(&Frame {
        request_id: 8,
        body: Some(Body::SendRequest(s)),
    })
    .await;
    r.expect_error(8, ErrorCode::ConversationNotFound).await;

    // Too large, empty, bad client id.
    let mut s = send.clone();
    s.content = Some(content(&"x".repeat(1001)));
    r.frame(&Frame {
        request_id: 9,
        body: Some(Body::SendRequest(s)),
    })
    .await;
    r.expect_error(9, ErrorCode::MessageTooLarge).await;
    let mut s = send.clone();
    s.content = Some(v1::Content::default());
    r.frame(&Frame {
        request_id: 10,
        body: Some(Body::SendRequest(s)),
    })
    .await;
    r.expect_error(10, ErrorCode::InvalidArgument).await;
    let mut s = send.clone();
    s.client_msg_id = "x".repeat(65);
    r.frame(&Frame {
        request_id: 11,
        body: Some(Body::SendRequest(s)),
    })
    .await;
    r.expect_error(11, ErrorCode::InvalidArgument).await;

    // Forged, foreign and garbage sync keys.
    let mut forged = bob_key.clone();
    *forged.last_mut().unwrap() ^= 0x55;
    for (id, key) in [
        (12, forged),
        (13, bob_key.clone()),
        (14, b"garbage".to_vec()),
    ] {
        r.frame(&Frame {
            request_id: id,
            body: Some(Body::SyncRequest(v1::SyncRequest { key, limit: 0 })),
        })
        .await;
        r.expect_error(id, ErrorCode::InvalidSyncKey).await;
    }

    // A second Hello.
    r.frame(&Frame {
        request_id: 15,
        body: Some(Body::Hello(Hello::default())),
    })
    .await;
    r.expect_error(15, ErrorCode::HandshakeRequired).await;

    // Still open: a ping gets its pong.
    r.frame(&Frame {
        request_id: 16,
        body: Some(Body::Ping(v1::Ping { nonce: 42 })),
    })
    .await;
    let pong = r.recv().await.unwrap();
    assert!(matches!(pong.body, Some(Body::Pong(p)) if p.nonce == 42));

    // Request id 0 on a request is a protocol violation.
    r.frame(&Frame {
        request_id: 0,
        body: Some(Body::Ping(v1::Ping { nonce: 1 })),
    })
    .await;
    r.expect_goodbye(ErrorCode::BadRequestId).await;
}

/// Account errors: duplicate and malformed names, short passwords, wrong
/// passwords, closed registration, expired tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_errors() {
    let server = Server::start("session_ttl_secs = 1");
    let url = server.tcp_url();
    let c = anon(&url).await;
    c.register("alice", PASSWORD).await.unwrap();
    fn code<T>(r: Result<T, pigeon_client::ClientError>) -> Option<ErrorCode> {
        r.err().and_then(|e| e.code())
    }
    assert_eq!(
        code(c.register("alice", PASSWORD).await),
        Some(ErrorCode::UsernameTaken)
    );
    assert_eq!(
        code(c.register("Bad Name", PASSWORD).await),
        Some(ErrorCode::InvalidUsername)
    );
    assert_eq!(
        code(c.register("shorty", "short").await),
        Some(ErrorCode::InvalidPassword)
    );
    assert_eq!(
        code(c.login("alice", "wrong password", "d").await),
        Some(ErrorCode::InvalidCredentials)
    );
    assert_eq!(
        code(c.login("nobody", PASSWORD, "d").await),
        Some(ErrorCode::InvalidCredentials)
    );
    let token = c.login("alice", PASSWORD, "d").await.unwrap().token;
    assert_eq!(
        code(c.login("alice", PASSWORD, "d").await),
        Some(ErrorCode::AlreadyAuthenticated)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = pigeon_client::Connection::connect(
        &pigeon_client::ConnectOptions::new(&url).with_token(&token),
    )
    .await
    .expect_err("expired token refused");
    assert_eq!(err.code(), Some(ErrorCode::TokenExpired));

    let closed = Server::start("open_registration = false");
    let c = anon(&closed.tcp_url()).await;
    assert_eq!(
        code(c.register("alice", PASSWORD).await),
        Some(ErrorCode::RegistrationClosed)
    );
}

/// A connection that sends nothing after its handshake is closed with
/// IDLE_TIMEOUT; one that pings stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let server = Server::start("heartbeat_interval_ms = 100\nidle_timeout_ms = 400");
    let mut quiet = Raw::connect(&server.tcp).await;
    assert!(
        matches!(quiet.hello("").await.body, Some(Body::Welcome(w)) if w.idle_timeout_ms == 400)
    );
    let mut chatty = Raw::connect(&server.tcp).await;
    chatty.hello("").await;
    for i in 1..=8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        chatty
            .frame(&Frame {
                request_id: i,
                body: Some(Body::Ping(v1::Ping { nonce: i })),
            })
            .await;
        assert!(matches!(
            chatty.recv().await.unwrap().body,
            Some(Body::Pong(_))
        ));
    }
    quiet.expect_goodbye(ErrorCode::IdleTimeout).await;
}

/// A device that stops reading while messages pour in is disconnected once
/// its bounded queue fills; the sender and other devices are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_disconnected() {
    let server = Server::start("outbound_queue_frames_max = 4\nmessage_bytes_max = 60000");
    let url = server.tcp_url();
    let alice = connect(&url, &register_and_login(&url, "alice").await).await;
    let bob_token = register_and_login(&url, "bob").await;
    let mut stuck = Raw::connect(&server.tcp).await;
    stuck.hello(&bob_token).await;
    stuck
        .frame(&Frame {
            request_id: 2,
            body: Some(Body::SyncRequest(v1::SyncRequest::default())),
        })
        .await;
    let healthy = connect(&url, &bob_token).await;
    sync_all(&healthy, &[]).await;
    let big = "x".repeat(60_000);
    for i in 0..400 {
        alice
            .send(&format!("big{i}"), to_user("bob"), content(&big))
            .await
            .unwrap();
    }
    // The stuck reader is told why and cut off: its sync answer, then (the
    // pushes in between aside) a SLOW_CONSUMER goodbye and the end.
    assert!(matches!(
        stuck.recv().await.and_then(|f| f.body),
        Some(Body::SyncResponse(_))
    ));
    stuck.expect_goodbye(ErrorCode::SlowConsumer).await;
    let (events, _) = sync_all(&healthy, &[]).await;
    assert_eq!(events.len(), 400);
    assert!(server.log().contains("too slow"), "the server logs why");
}

/// A client that sends and hangs up at once, without waiting for the
/// answers: every send the server read is still carried out, stored and
/// pushed to the online recipient (the requests of a closed connection run
/// to the end rather than being dropped with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_of_a_client_that_hangs_up_are_carried_out() {
    const SENDS: usize = 20;
    let server = Server::start("");
    let url = server.tcp_url();
    let alice_token = register_and_login(&url, "alice").await;
    let bob = connect(&url, &register_and_login(&url, "bob").await).await;
    let (_, key) = sync_all(&bob, &[]).await;
    let mut alice = Raw::connect(&server.tcp).await;
    assert!(matches!(
        alice.hello(&alice_token).await.body,
        Some(Body::Welcome(_))
    ));
    // All the sends in one write, then the end of the stream.
    let mut bytes = Vec::new();
    for i in 0..SENDS {
        let send = v1::SendRequest {
            client_msg_id: format!("gone-{i}"),
            target: Some(to_user("bob")),
            content: Some(content(&format!("before hanging up {i}"))),
        };
        bytes.extend(pigeon_proto::encode_frame_prefixed(&Frame {
            request_id: 2 + i as u64,
            body: Some(Body::SendRequest(send)),
        }));
    }
    alice.bytes(&bytes).await;
    alice.stream.shutdown().await.unwrap();
    drop(alice);
    // Bob, online all along, gets them pushed (a push that follows on from
    // his key, or a notice and a sync).
    let mut got = Vec::new();
    let mut key = key;
    within(async {
        while got.len() < SENDS {
            match bob.next_push().await {
                Some(Body::EventsPush(p)) if p.prev_key == key => {
                    got.extend(texts(&p.events));
                    key = p.key;
                }
                Some(Body::EventsPush(_) | Body::SyncNotice(_)) => {
                    let (events, k) = sync_all(&bob, &key).await;
                    got.extend(texts(&events));
                    key = k;
                }
                Some(_) => {}
                None => panic!("bob was disconnected"),
            }
        }
    })
    .await;
    let expected: Vec<String> = (0..SENDS)
        .map(|i| format!("before hanging up {i}"))
        .collect();
    got.sort_by_key(|t| t.rsplit(' ').next().and_then(|n| n.parse::<usize>().ok()));
    assert_eq!(got, expected);
    still_serving(&server).await;
}
