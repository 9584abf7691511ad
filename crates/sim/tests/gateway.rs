//! Gateway bugs the simulation found, reproduced without it on a plain
//! tokio runtime (this crate already depends on the store and the gateway;
//! the gateway itself has no store to build a `Service` with in its tests).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pigeon_core::accounts::HashCost;
use pigeon_core::{CoreConfig, Service, SystemClock};
use pigeon_gateway::{Gateway, GatewayConfig, Registry};
use pigeon_proto::version::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use pigeon_proto::{Body, Frame, encode_frame_prefixed, v1};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A socket that delivers one Hello, then never anything else, and fails
/// every write: a peer that vanished while the server had something to
/// tell it.
struct WriteFails {
    hello: Option<Vec<u8>>,
}

impl AsyncRead for WriteFails {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.hello.take() {
            Some(bytes) => {
                buf.put_slice(&bytes);
                Poll::Ready(Ok(()))
            }
            None => Poll::Pending,
        }
    }
}

impl AsyncWrite for WriteFails {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A connection whose socket fails to write (its writer task ends first)
/// closes cleanly: before the fix, the connection task polled the writer's
/// finished JoinHandle again and panicked ("JoinHandle polled after
/// completion"), skipping the rest of its clean-up (the offline presence
/// update, the connection gauge).
#[tokio::test]
async fn a_connection_whose_writes_fail_ends_without_panicking() {
    let store = Arc::new(pigeon_store::open_memory(Default::default()));
    let registry = Arc::new(Registry::default());
    let config = CoreConfig {
        password_hash_cost: HashCost {
            memory_kib: 8,
            iterations: 1,
        },
        ..CoreConfig::default()
    };
    let service = Service::new(store, registry.clone(), Arc::new(SystemClock), config)
        .await
        .expect("service");
    let gateway = Gateway::new(Arc::new(service), registry, GatewayConfig::default());
    let hello = Frame::new(
        1,
        Body::Hello(v1::Hello {
            min_version: PROTOCOL_VERSION_MIN,
            max_version: PROTOCOL_VERSION_MAX,
            ..Default::default()
        }),
    );
    let socket = WriteFails {
        hello: Some(encode_frame_prefixed(&hello)),
    };
    let peer = "127.0.0.1:9".parse().expect("address");
    let served = tokio::spawn(gateway.clone().serve_stream(socket, peer));
    let ended = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the connection ends once its writer failed");
    assert!(ended.is_ok(), "the connection task panicked: {ended:?}");
    assert_eq!(gateway.open_connections(), 0);
}
