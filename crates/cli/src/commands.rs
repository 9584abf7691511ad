//! The client commands: each connects, does one thing, prints JSON lines.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};
use pigeon_client::v1::{self, ErrorCode};
use pigeon_client::{Client, ClientError, ClientEvent, ClientOptions, ConnectOptions, Connection};

use crate::format;
use crate::profile::{Profile, ProfileDir};
use crate::{ClientArgs, ClientCommand};

/// Events asked for per SyncRequest (0: the server's maximum).
const SYNC_LIMIT: u32 = 0;

pub(crate) async fn run(args: ClientArgs, cmd: ClientCommand) -> anyhow::Result<()> {
    let dir = ProfileDir::resolve(args.profile.as_deref());
    let server = args.server.as_str();
    match cmd {
        ClientCommand::Register { username } => register(server, &username).await,
        ClientCommand::Login { username, device } => login(server, &dir, &username, &device).await,
        ClientCommand::Logout => logout(server, &dir).await,
        ClientCommand::Send { user, text } => send(server, &dir, &user, &text).await,
        ClientCommand::Sync => sync(server, &dir).await,
        ClientCommand::Listen => listen(server, &dir).await,
        ClientCommand::History {
            user,
            before,
            limit,
        } => history(server, &dir, &user, before, limit).await,
        ClientCommand::Conversations { limit } => conversations(server, &dir, limit).await,
    }
}

fn connect_options(server: &str, token: Option<&str>) -> ConnectOptions {
    let mut opts = ConnectOptions::new(server);
    opts.client_name = concat!("pigeon-cli/", env!("CARGO_PKG_VERSION")).to_string();
    opts.token = token.map(str::to_string);
    opts
}

async fn connect(server: &str, token: Option<&str>) -> anyhow::Result<Connection> {
    Ok(Connection::connect(&connect_options(server, token)).await?)
}

async fn connect_logged_in(server: &str, dir: &ProfileDir) -> anyhow::Result<Connection> {
    let (_, token) = dir.load_logged_in()?;
    connect(server, Some(&token)).await
}

/// Writes lines to stdout and flushes, so a pipe sees each batch at once.
fn print_lines<I: IntoIterator<Item = String>>(lines: I) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

/// The password from `PIGEON_PASSWORD`, else one line from stdin (prompting on a terminal).
async fn read_password() -> anyhow::Result<String> {
    if let Ok(password) = std::env::var("PIGEON_PASSWORD") {
        return Ok(password);
    }
    tokio::task::spawn_blocking(|| {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprint!("password: ");
            let _ = std::io::stderr().flush();
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            bail!("no password: set PIGEON_PASSWORD or type it on stdin");
        }
        let password = line.strip_suffix('\n').unwrap_or(&line);
        Ok(password.strip_suffix('\r').unwrap_or(password).to_string())
    })
    .await
    .context("reading the password")?
}

async fn register(server: &str, username: &str) -> anyhow::Result<()> {
    let password = read_password().await?;
    let conn = connect(server, None).await?;
    let registered = conn.register(username, &password).await?;
    conn.close().await;
    print_lines([format::registered_json(&registered)])
}

async fn login(server: &str, dir: &ProfileDir, username: &str, device: &str) -> anyhow::Result<()> {
    let password = read_password().await?;
    let conn = connect(server, None).await?;
    let session = conn.login(username, &password, device).await?;
    conn.close().await;
    dir.save(&Profile {
        server: server.to_string(),
        username: session.username.clone(),
        user_id: session.user_id,
        device_id: session.device_id,
        token: Some(session.token.clone()),
        expires_at_ms: session.expires_at_ms,
    })?;
    // A key belongs to one user's log: a new login starts from the beginning.
    dir.save_sync_key(&[])?;
    print_lines([format::logged_in_json(&session)])
}

async fn logout(server: &str, dir: &ProfileDir) -> anyhow::Result<()> {
    let (mut profile, token) = dir.load_logged_in()?;
    match Connection::connect(&connect_options(server, Some(&token))).await {
        Ok(conn) => {
            conn.logout().await?;
            conn.close().await;
        }
        // The session is over already; forgetting the token is all that is left.
        Err(e @ ClientError::Goodbye { .. })
            if matches!(
                e.code(),
                Some(ErrorCode::InvalidToken | ErrorCode::TokenExpired | ErrorCode::TokenRevoked)
            ) =>
        {
            eprintln!("note: {e}");
        }
        Err(e) => return Err(e.into()),
    }
    profile.token = None;
    dir.save(&profile)?;
    eprintln!("logged out {}", profile.username);
    Ok(())
}

async fn send(server: &str, dir: &ProfileDir, user: &str, text: &str) -> anyhow::Result<()> {
    let conn = connect_logged_in(server, dir).await?;
    let id = pigeon_client::new_client_msg_id();
    let ack = conn
        .send(&id, pigeon_client::to_user(user), pigeon_client::text(text))
        .await?;
    conn.close().await;
    print_lines([format::ack_json(&ack)])
}

fn is_stale_key(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::ResyncRequired | ErrorCode::InvalidSyncKey)
    )
}

const RESYNC_NOTE: &str = "note: the stored sync key is no longer valid; syncing from the oldest retained event (reload history for older messages)";

async fn sync(server: &str, dir: &ProfileDir) -> anyhow::Result<()> {
    let conn = connect_logged_in(server, dir).await?;
    let mut key = dir.load_sync_key()?;
    loop {
        let resp = match conn.sync(&key, SYNC_LIMIT).await {
            Ok(resp) => resp,
            Err(e) if is_stale_key(&e) && !key.is_empty() => {
                eprintln!("{RESYNC_NOTE}");
                key.clear();
                dir.save_sync_key(&key)?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // Print first, then store the key: a crash in between prints again rather than losing events.
        print_lines(resp.events.iter().map(format::event_json))?;
        let progressed = !resp.events.is_empty() || resp.key != key;
        if resp.key != key {
            dir.save_sync_key(&resp.key)?;
            key = resp.key;
        }
        if !resp.has_more || !progressed {
            break;
        }
    }
    conn.close().await;
    Ok(())
}

async fn listen(server: &str, dir: &ProfileDir) -> anyhow::Result<()> {
    let (_, token) = dir.load_logged_in()?;
    let opts = ClientOptions::new(connect_options(server, Some(&token)))
        .with_sync_key(dir.load_sync_key()?);
    let (client, mut events) = Client::start(opts);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let event = tokio::select! {
            _ = &mut ctrl_c => break,
            event = events.recv() => event,
        };
        match event {
            None => break,
            Some(ClientEvent::Connected { welcome }) => {
                eprintln!(
                    "connected to {server} as {} (device {})",
                    welcome.username, welcome.device_id
                );
            }
            Some(ClientEvent::Disconnected { reason }) => {
                eprintln!("disconnected: {reason}; reconnecting")
            }
            Some(ClientEvent::Events { events, key }) => {
                print_lines(events.iter().map(format::event_json))?;
                dir.save_sync_key(&key)?;
            }
            Some(ClientEvent::ResyncRequired) => {
                eprintln!("{RESYNC_NOTE}");
                dir.save_sync_key(&[])?;
            }
            Some(ClientEvent::Stopped { error }) => return Err(error.into()),
        }
    }
    client.shutdown().await;
    Ok(())
}

async fn history(
    server: &str,
    dir: &ProfileDir,
    user: &str,
    before: u64,
    limit: u32,
) -> anyhow::Result<()> {
    let conn = connect_logged_in(server, dir).await?;
    let page = conn
        .history(pigeon_client::to_user(user), before, limit)
        .await?;
    conn.close().await;
    // The server pages newest first; a terminal reads oldest first.
    print_lines(page.messages.iter().rev().map(format::message_json))
}

async fn conversations(server: &str, dir: &ProfileDir, limit: u32) -> anyhow::Result<()> {
    let conn = connect_logged_in(server, dir).await?;
    let list: v1::ListConversationsResponse = conn.list_conversations(limit).await?;
    conn.close().await;
    print_lines(list.conversations.iter().map(format::conversation_json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use pigeon_client::v1::{Frame, frame::Body};
    use pigeon_proto::{encode_frame_prefixed, try_decode_prefixed};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const WAIT: Duration = Duration::from_secs(5);

    /// A scripted sync answer: one event's seq, the new key, has_more (None: RESYNC_REQUIRED).
    type SyncAnswer = (u64, &'static [u8], bool);

    /// One scripted server connection: `recv` returns the client's frames.
    struct Peer {
        stream: TcpStream,
        buf: BytesMut,
    }

    impl Peer {
        async fn accept(listener: &TcpListener) -> Peer {
            let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
                .await
                .unwrap()
                .unwrap();
            Peer {
                stream,
                buf: BytesMut::new(),
            }
        }

        async fn recv(&mut self) -> (u64, Body) {
            loop {
                if let Some(f) = try_decode_prefixed(&mut self.buf, 1 << 20).unwrap() {
                    return (f.request_id, f.body.unwrap());
                }
                let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "client went away");
            }
        }

        async fn send(&mut self, frame: Frame) {
            self.stream
                .write_all(&encode_frame_prefixed(&frame))
                .await
                .unwrap();
        }

        /// Answers the Hello with a Welcome, checking the token.
        async fn welcome(&mut self, token: &str) {
            let (id, body) = self.recv().await;
            let Body::Hello(hello) = body else {
                panic!("{body:?}")
            };
            assert_eq!(hello.token, token);
            let welcome = v1::Welcome {
                version: 1,
                username: "alice".into(),
                ..Default::default()
            };
            self.send(Frame::new(id, Body::Welcome(welcome))).await;
        }
    }

    async fn setup() -> (TcpListener, ClientArgs, ProfileDir, tempfile::TempDir) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let args = ClientArgs {
            server: format!("tcp://{}", listener.local_addr().unwrap()),
            profile: Some(tmp.path().to_path_buf()),
        };
        let dir = ProfileDir::resolve(Some(tmp.path()));
        dir.save(&Profile {
            server: args.server.clone(),
            username: "alice".into(),
            user_id: 1,
            device_id: 1,
            token: Some("tok".into()),
            expires_at_ms: 0,
        })
        .unwrap();
        (listener, args, dir, tmp)
    }

    fn event(seq: u64) -> v1::Event {
        v1::Event {
            seq,
            created_at_ms: 0,
            kind: Some(v1::event::Kind::ReadMarker(v1::ReadMarker {
                conversation_id: "d:1:2".into(),
                read_up_to: seq,
            })),
        }
    }

    /// Checks `sync` restarts from an empty key on RESYNC_REQUIRED, follows
    /// has_more, and stores the final key.
    #[tokio::test]
    async fn sync_stores_the_final_key() {
        let (listener, args, dir, _tmp) = setup().await;
        dir.save_sync_key(b"stale").unwrap();
        let server = tokio::spawn(async move {
            let mut peer = Peer::accept(&listener).await;
            peer.welcome("tok").await;
            let script: [(&[u8], Option<SyncAnswer>); 3] = [
                (b"stale", None),
                (b"", Some((1, b"k1", true))),
                (b"k1", Some((2, b"k2", false))),
            ];
            for (want_key, answer) in script {
                let (id, body) = peer.recv().await;
                let Body::SyncRequest(r) = body else {
                    panic!("{body:?}")
                };
                assert_eq!(r.key, want_key);
                let reply = match answer {
                    None => Frame::error(id, ErrorCode::ResyncRequired, "too old"),
                    Some((seq, key, has_more)) => Frame::new(
                        id,
                        Body::SyncResponse(v1::SyncResponse {
                            events: vec![event(seq)],
                            key: key.to_vec(),
                            has_more,
                        }),
                    ),
                };
                peer.send(reply).await;
            }
        });
        run(args, ClientCommand::Sync).await.unwrap();
        assert_eq!(dir.load_sync_key().unwrap(), b"k2");
        server.await.unwrap();
    }

    /// Checks a server error comes back as an error whose line names the code.
    #[tokio::test]
    async fn send_reports_server_errors() {
        let (listener, args, _dir, _tmp) = setup().await;
        let server = tokio::spawn(async move {
            let mut peer = Peer::accept(&listener).await;
            peer.welcome("tok").await;
            let (id, body) = peer.recv().await;
            assert!(
                matches!(body, Body::SendRequest(ref r) if r.content.as_ref().unwrap().text == "hi")
            );
            peer.send(Frame::error(id, ErrorCode::UserNotFound, "no such user"))
                .await;
        });
        let cmd = ClientCommand::Send {
            user: "nobody".into(),
            text: "hi".into(),
        };
        let err = run(args, cmd).await.unwrap_err();
        assert_eq!(
            crate::error_line(&err),
            "error: no such user (code USER_NOT_FOUND 301)"
        );
        server.await.unwrap();
    }

    /// Checks `logout` forgets the token even when the server says the session is already revoked.
    #[tokio::test]
    async fn logout_forgets_a_dead_token() {
        let (listener, args, dir, _tmp) = setup().await;
        let server = tokio::spawn(async move {
            let mut peer = Peer::accept(&listener).await;
            let _ = peer.recv().await;
            peer.send(Frame::goodbye(ErrorCode::TokenRevoked, "revoked"))
                .await;
        });
        run(args.clone(), ClientCommand::Logout).await.unwrap();
        let profile = dir.load().unwrap().unwrap();
        assert_eq!(profile.token, None);
        assert_eq!(profile.username, "alice");
        let err = run(
            args,
            ClientCommand::Send {
                user: "bob".into(),
                text: "x".into(),
            },
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("not logged in"), "{err}");
        server.await.unwrap();
    }
}
