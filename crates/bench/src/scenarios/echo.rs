//! The raw loopback baseline: a plain TCP echo of frames of the same size
//! as the benchmark's send requests, over as many connections with as many
//! frames in flight, with no protocol and no storage. Both ends run in this
//! process; the ratio of Pigeon's throughput to this one is what holds on a
//! noisy machine.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Frames written in one socket write at most (the SDK batches up to 64 too).
const WRITE_BATCH_FRAMES_MAX: usize = 64;

/// What the echo run measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Echo {
    pub(crate) frames: u64,
    pub(crate) frame_bytes: usize,
    pub(crate) connections: usize,
    pub(crate) window: usize,
    pub(crate) seconds: f64,
    pub(crate) frames_per_sec: f64,
}

/// Echoes `frames` frames of `frame_bytes` over `connections` connections
/// with `window` frames in flight on each.
pub(crate) async fn run(
    frames: u64,
    frame_bytes: usize,
    connections: usize,
    window: usize,
) -> anyhow::Result<Echo> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let per_conn = frames / connections as u64;
    let frame = vec![0x5au8; frame_bytes];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let frame = frame.clone();
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        tasks.push(tokio::spawn(client(sock, frame, per_conn, window)));
    }
    for t in tasks {
        t.await.context("echo client panicked")??;
    }
    let seconds = start.elapsed().as_secs_f64();
    server.abort();
    let total = per_conn * connections as u64;
    Ok(Echo {
        frames: total,
        frame_bytes,
        connections,
        window,
        seconds,
        frames_per_sec: total as f64 / seconds,
    })
}

async fn client(sock: TcpStream, frame: Vec<u8>, count: u64, window: usize) -> anyhow::Result<()> {
    let (mut r, mut w) = sock.into_split();
    let frame_len = frame.len();
    let permits = Arc::new(Semaphore::new(window));
    let writer_permits = permits.clone();
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        let mut batch = Vec::with_capacity(frame.len() * WRITE_BATCH_FRAMES_MAX);
        while sent < count {
            writer_permits.acquire().await?.forget();
            let mut n = 1;
            while n < WRITE_BATCH_FRAMES_MAX as u64
                && sent + n < count
                && let Ok(p) = writer_permits.try_acquire()
            {
                p.forget();
                n += 1;
            }
            batch.clear();
            for _ in 0..n {
                batch.extend_from_slice(&frame);
            }
            w.write_all(&batch).await?;
            sent += n;
        }
        anyhow::Ok(w)
    });
    let want = count * frame_len as u64;
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut partial = 0usize;
    while got < want {
        let n = r.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "the echo server closed early");
        got += n as u64;
        partial += n;
        let whole = partial / frame_len;
        partial %= frame_len;
        permits.add_permits(whole);
    }
    let _w = writer.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a small echo run completes and counts every frame.
    #[tokio::test]
    async fn small_echo_run() {
        let e = run(1000, 100, 4, 8).await.unwrap();
        assert_eq!(e.frames, 1000);
        assert!(e.frames_per_sec > 0.0);
    }
}
