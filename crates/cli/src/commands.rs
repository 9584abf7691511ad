//! The client commands: each connects, does one thing, prints JSON lines.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};
use pigeon_client::v1::{self, ErrorCode};
use pigeon_client::{Client, ClientError, ClientEvent, ClientOptions, ConnectOptions, Connection};

use crate::format;
use crate::profile::{Profile, ProfileDir};
use crate::{ClientArgs, ClientCommand, GroupCommand, RoleArg};

/// Events asked for per SyncRequest (0: the server's maximum).
const SYNC_LIMIT: u32 = 0;

pub(crate) async fn run(args: ClientArgs, cmd: ClientCommand) -> anyhow::Result<()> {
    let dir = ProfileDir::resolve(args.profile.as_deref());
    let server = &Remote::from_args(&args)?;
    match cmd {
        ClientCommand::Register { username } => register(server, &username).await,
        ClientCommand::Login { username, device } => login(server, &dir, &username, &device).await,
        ClientCommand::Logout => logout(server, &dir).await,
        ClientCommand::Send {
            words,
            group,
            conversation,
        } => {
            let (target, text) = send_target(words, group.or(conversation))?;
            send(server, &dir, target, &text).await
        }
        ClientCommand::Sync => sync(server, &dir).await,
        ClientCommand::Listen => listen(server, &dir).await,
        ClientCommand::Chat => crate::chat::run(&args).await,
        ClientCommand::History {
            user,
            conversation,
            before,
            limit,
            all,
        } => {
            let target = match (user, conversation) {
                (_, Some(id)) => pigeon_client::to_conversation(&id),
                (Some(user), None) => pigeon_client::to_user(&user),
                (None, None) => bail!("history of whom? give a USER or --conversation ID"),
            };
            let pages = if all { Pages::All } else { Pages::One(limit) };
            history(server, &dir, target, before, pages).await
        }
        ClientCommand::Conversations { limit } => conversations(server, &dir, limit).await,
        ClientCommand::Group { cmd } => group(server, &dir, cmd).await,
        ClientCommand::Read {
            conversation_id,
            up_to,
        } => {
            let id = conversation_id.as_str();
            let read = with_conn(server, &dir, async |c| {
                let up_to = match up_to {
                    Some(n) => n,
                    None => last_conv_seq(c, id).await?,
                };
                c.mark_read(id, up_to).await
            })
            .await?;
            print_lines([format::read_json(&read)])
        }
        ClientCommand::Recall {
            conversation_id: id,
            conv_seq,
        } => {
            with_conn(server, &dir, async |c| c.recall(&id, conv_seq).await).await?;
            print_lines([format::recalled_json(&id, conv_seq)])
        }
        ClientCommand::Edit {
            conversation_id: id,
            conv_seq,
            text,
        } => {
            let content = pigeon_client::text(&text);
            let edited =
                with_conn(server, &dir, async |c| c.edit(&id, conv_seq, content).await).await?;
            print_lines([format::edited_json(&id, conv_seq, edited.edited_at_ms)])
        }
        ClientCommand::Delete {
            conversation_id: id,
            conv_seq,
        } => {
            with_conn(server, &dir, async |c| c.delete_for_me(&id, conv_seq).await).await?;
            print_lines([format::deleted_json(&id, conv_seq)])
        }
        ClientCommand::Receipts {
            conversation_id: id,
            conv_seqs,
        } => {
            let receipts = with_conn(server, &dir, async |c| {
                c.get_receipts(&id, &conv_seqs).await
            })
            .await?;
            print_lines(receipts.iter().map(format::receipt_summary_json))
        }
        ClientCommand::Typing {
            conversation_id: id,
            stop,
        } => {
            with_conn(server, &dir, async |c| c.set_typing(&id, !stop).await).await?;
            print_lines([format::typing_json(&id, !stop)])
        }
        ClientCommand::Presence { users } => {
            let users = strs(&users);
            let presences = with_conn(server, &dir, async |c| c.get_presence(&users).await).await?;
            print_lines(presences.iter().map(format::presence_json))
        }
        ClientCommand::Privacy { hide_presence } => {
            let hidden =
                with_conn(server, &dir, async |c| c.set_privacy(hide_presence).await).await?;
            print_lines([format::privacy_json(hidden)])
        }
        ClientCommand::Block { user } => {
            with_conn(server, &dir, async |c| c.block(&user).await).await?;
            print_lines([format::block_json(&user, true)])
        }
        ClientCommand::Unblock { user } => {
            with_conn(server, &dir, async |c| c.unblock(&user).await).await?;
            print_lines([format::block_json(&user, false)])
        }
        ClientCommand::Blocked => {
            let users = with_conn(server, &dir, async |c| c.list_blocked().await).await?;
            print_lines(users.iter().map(|u| format::blocked_user_json(u)))
        }
    }
}

/// The target and text of `send`: `USER TEXT`, or `TEXT` with a conversation id.
pub(crate) fn send_target(
    words: Vec<String>,
    conversation_id: Option<String>,
) -> anyhow::Result<(v1::Target, String)> {
    let mut words = words.into_iter();
    match (conversation_id, words.next(), words.next()) {
        (Some(id), Some(text), None) => Ok((pigeon_client::to_conversation(&id), text)),
        (Some(_), Some(_), Some(_)) => {
            bail!("with --group or --conversation give only the text (quote it if it has spaces)")
        }
        (None, Some(user), Some(text)) => Ok((pigeon_client::to_user(&user), text)),
        (None, Some(_), None) | (_, None, _) => {
            bail!("missing the text: pigeon send USER TEXT, or pigeon send --group ID TEXT")
        }
    }
}

/// The conv_seq of a conversation's newest message (0: none).
async fn last_conv_seq(conn: &Connection, conversation_id: &str) -> Result<u64, ClientError> {
    let page = conn
        .history(pigeon_client::to_conversation(conversation_id), 0, 1)
        .await?;
    Ok(page.messages.first().map_or(0, |m| m.conv_seq))
}

fn strs(items: &[String]) -> Vec<&str> {
    items.iter().map(String::as_str).collect()
}

/// The settings `group create` asks for.
pub(crate) fn create_settings(
    admins_only_post: bool,
    members_can_add: bool,
    max_members: Option<u32>,
) -> v1::GroupSettings {
    let post = if admins_only_post {
        v1::PostPolicy::Admins
    } else {
        v1::PostPolicy::Everyone
    };
    let add = if members_can_add {
        v1::AddPolicy::Everyone
    } else {
        v1::AddPolicy::Admins
    };
    v1::GroupSettings {
        post_policy: post as i32,
        add_policy: add as i32,
        max_members: max_members.unwrap_or(0),
    }
}

/// `current` with the changes `group settings` was given.
pub(crate) fn changed_settings(
    mut current: v1::GroupSettings,
    admins_only_post: Option<bool>,
    members_can_add: Option<bool>,
    max_members: Option<u32>,
) -> v1::GroupSettings {
    if let Some(admins) = admins_only_post {
        current.post_policy = if admins {
            v1::PostPolicy::Admins
        } else {
            v1::PostPolicy::Everyone
        } as i32;
    }
    if let Some(everyone) = members_can_add {
        current.add_policy = if everyone {
            v1::AddPolicy::Everyone
        } else {
            v1::AddPolicy::Admins
        } as i32;
    }
    if let Some(n) = max_members {
        current.max_members = n;
    }
    current
}

async fn group(server: &Remote, dir: &ProfileDir, cmd: GroupCommand) -> anyhow::Result<()> {
    let line = match cmd {
        GroupCommand::Create {
            name,
            members,
            description,
            admins_only_post,
            members_can_add,
            max_members,
        } => {
            let members = strs(&members);
            let settings = create_settings(admins_only_post, members_can_add, max_members);
            let group = with_conn(server, dir, async |c| {
                c.create_group(&name, &description, &members, Some(settings))
                    .await
            })
            .await?;
            format::group_json(&group)
        }
        GroupCommand::Add { id, users } => {
            let users = strs(&users);
            let added = with_conn(server, dir, async |c| c.add_members(&id, &users).await).await?;
            format::members_added_json(&added)
        }
        GroupCommand::Remove { id, users } => {
            let users = strs(&users);
            let removed =
                with_conn(server, dir, async |c| c.remove_members(&id, &users).await).await?;
            format::members_removed_json(&removed)
        }
        GroupCommand::Leave { id } => {
            with_conn(server, dir, async |c| c.leave_group(&id).await).await?;
            format::left_json(&id)
        }
        GroupCommand::Role { id, user, role } => {
            let role = match role {
                RoleArg::Admin => v1::GroupRole::Admin,
                RoleArg::Member => v1::GroupRole::Member,
            };
            let group =
                with_conn(server, dir, async |c| c.set_role(&id, &user, role).await).await?;
            format::group_json(&group)
        }
        GroupCommand::Transfer { id, user } => {
            let group = with_conn(server, dir, async |c| {
                c.transfer_ownership(&id, &user).await
            })
            .await?;
            format::group_json(&group)
        }
        GroupCommand::Dissolve { id } => {
            with_conn(server, dir, async |c| c.dissolve_group(&id).await).await?;
            format::dissolved_json(&id)
        }
        GroupCommand::Info { id } => {
            let info = with_conn(server, dir, async |c| c.get_group(&id).await).await?;
            format::group_info_json(&info)
        }
        GroupCommand::Members { id, after, limit } => {
            let page = with_conn(server, dir, async |c| {
                c.list_members(&id, after, limit).await
            })
            .await?;
            print_lines(page.members.iter().map(format::member_json))?;
            if let (true, Some(last)) = (page.has_more, page.members.last()) {
                eprintln!("note: more members: --after {}", last.user_id);
            }
            return Ok(());
        }
        GroupCommand::Rename { id, name } => {
            let req = v1::UpdateGroupRequest {
                conversation_id: id,
                update_name: true,
                name,
                ..Default::default()
            };
            let group = with_conn(server, dir, async |c| c.update_group(req).await).await?;
            format::group_json(&group)
        }
        GroupCommand::Describe { id, text } => {
            let req = v1::UpdateGroupRequest {
                conversation_id: id,
                update_description: true,
                description: text,
                ..Default::default()
            };
            let group = with_conn(server, dir, async |c| c.update_group(req).await).await?;
            format::group_json(&group)
        }
        GroupCommand::Settings {
            id,
            admins_only_post,
            members_can_add,
            max_members,
        } => {
            if admins_only_post.is_none() && members_can_add.is_none() && max_members.is_none() {
                bail!(
                    "nothing to change: give --admins-only-post, --members-can-add or --max-members"
                );
            }
            let group = with_conn(server, dir, async |c| {
                // Settings change as a whole: start from the current ones.
                let current = c.get_group(&id).await?;
                let current = current.group.and_then(|g| g.settings).unwrap_or_default();
                let settings =
                    changed_settings(current, admins_only_post, members_can_add, max_members);
                let req = v1::UpdateGroupRequest {
                    conversation_id: id.clone(),
                    update_settings: true,
                    settings: Some(settings),
                    ..Default::default()
                };
                c.update_group(req).await
            })
            .await?;
            format::group_json(&group)
        }
    };
    print_lines([line])
}

/// The server to talk to: its URL and the extra CA to trust (`--ca`).
pub(crate) struct Remote {
    url: String,
    ca_pem: Option<Vec<u8>>,
}

impl Remote {
    /// Reads the `--ca` file, if given, so every command trusts it.
    pub(crate) fn from_args(args: &ClientArgs) -> anyhow::Result<Remote> {
        let ca_pem = match &args.ca {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading the CA file {} (--ca)", path.display()))?,
            ),
            None => None,
        };
        Ok(Remote {
            url: args.server.clone(),
            ca_pem,
        })
    }
}

pub(crate) fn connect_options(server: &Remote, token: Option<&str>) -> ConnectOptions {
    let mut opts = ConnectOptions::new(&server.url);
    opts.ca_pem = server.ca_pem.clone();
    opts.client_name = concat!("pigeon-cli/", env!("CARGO_PKG_VERSION")).to_string();
    opts.token = token.map(str::to_string);
    opts
}

async fn connect(server: &Remote, token: Option<&str>) -> anyhow::Result<Connection> {
    Ok(Connection::connect(&connect_options(server, token)).await?)
}

async fn connect_logged_in(server: &Remote, dir: &ProfileDir) -> anyhow::Result<Connection> {
    let (_, token) = dir.load_logged_in()?;
    connect(server, Some(&token)).await
}

/// Connects with the profile's session, runs `f`, and closes the connection.
async fn with_conn<T>(
    server: &Remote,
    dir: &ProfileDir,
    f: impl AsyncFnOnce(&Connection) -> Result<T, ClientError>,
) -> anyhow::Result<T> {
    let conn = connect_logged_in(server, dir).await?;
    let result = f(&conn).await;
    conn.close().await;
    Ok(result?)
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

async fn register(server: &Remote, username: &str) -> anyhow::Result<()> {
    let password = read_password().await?;
    let conn = connect(server, None).await?;
    let registered = conn.register(username, &password).await?;
    conn.close().await;
    print_lines([format::registered_json(&registered)])
}

async fn login(
    server: &Remote,
    dir: &ProfileDir,
    username: &str,
    device: &str,
) -> anyhow::Result<()> {
    let password = read_password().await?;
    let conn = connect(server, None).await?;
    let session = conn.login(username, &password, device).await?;
    conn.close().await;
    dir.save(&Profile {
        server: server.url.clone(),
        username: session.username.clone(),
        user_id: session.user_id,
        device_id: session.device_id,
        token: Some(session.token.clone()),
        expires_at_ms: session.expires_at_ms,
    })?;
    // A key belongs to one user's log: a new login starts from the beginning,
    // and forgets what the chat derived from the old log.
    dir.save_sync_key(&[])?;
    dir.forget_chat_state()?;
    print_lines([format::logged_in_json(&session)])
}

async fn logout(server: &Remote, dir: &ProfileDir) -> anyhow::Result<()> {
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
                Some(
                    ErrorCode::InvalidToken
                        | ErrorCode::TokenExpired
                        | ErrorCode::TokenRevoked
                        | ErrorCode::AccountDisabled
                )
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

async fn send(
    server: &Remote,
    dir: &ProfileDir,
    target: v1::Target,
    text: &str,
) -> anyhow::Result<()> {
    let id = pigeon_client::new_client_msg_id();
    let content = pigeon_client::text(text);
    let ack = with_conn(server, dir, async |c| c.send(&id, target, content).await).await?;
    print_lines([format::ack_json(&ack)])
}

fn is_stale_key(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::ResyncRequired | ErrorCode::InvalidSyncKey)
    )
}

const RESYNC_NOTE: &str = "note: the stored sync key is no longer valid; syncing from the oldest retained event (reload history for older messages)";

async fn sync(server: &Remote, dir: &ProfileDir) -> anyhow::Result<()> {
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

async fn listen(server: &Remote, dir: &ProfileDir) -> anyhow::Result<()> {
    let (_, token) = dir.load_logged_in()?;
    let opts = ClientOptions::new(connect_options(server, Some(&token)))
        .with_sync_key(dir.load_sync_key()?);
    let (client, mut events) = Client::start(opts);
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            event = events.recv() => event,
        };
        match event {
            None => break,
            Some(ClientEvent::Connected { welcome }) => {
                eprintln!(
                    "connected to {} as {} (device {})",
                    server.url, welcome.username, welcome.device_id
                );
            }
            Some(ClientEvent::Disconnected { reason }) => {
                eprintln!("disconnected: {reason}; reconnecting")
            }
            Some(ClientEvent::Events { events, key }) => {
                print_lines(events.iter().map(format::event_json))?;
                dir.save_sync_key(&key)?;
            }
            Some(ClientEvent::Presence(presence)) => {
                print_lines([format::presence_push_json(&presence)])?
            }
            Some(ClientEvent::Typing(typing)) => print_lines([format::typing_push_json(&typing)])?,
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

/// How much history to print: one page of at most N, or everything.
enum Pages {
    One(u32),
    All,
}

/// Ctrl-C, or SIGTERM (a script or a service manager stopping `listen`):
/// either ends it cleanly, after the last line it printed.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn history(
    server: &Remote,
    dir: &ProfileDir,
    target: v1::Target,
    before: u64,
    pages: Pages,
) -> anyhow::Result<()> {
    let messages = with_conn(server, dir, async |c| match pages {
        Pages::One(limit) => Ok(c.history(target, before, limit).await?.messages),
        Pages::All => all_history(c, target, before).await,
    })
    .await?;
    // The server pages newest first; a terminal reads oldest first.
    print_lines(messages.iter().rev().map(format::message_json))
}

/// Every message below `before` (0: all), newest first: pages of the
/// server's largest size, each ending below the previous one's oldest.
async fn all_history(
    c: &Connection,
    target: v1::Target,
    mut before: u64,
) -> Result<Vec<v1::Message>, ClientError> {
    let mut messages = Vec::new();
    loop {
        let page = c.history(target.clone(), before, 0).await?;
        let oldest = page.messages.last().map(|m| m.conv_seq);
        messages.extend(page.messages);
        match oldest {
            // A page that does not move back would repeat forever.
            Some(seq) if page.has_more && (before == 0 || seq < before) => before = seq,
            _ => return Ok(messages),
        }
    }
}

async fn conversations(server: &Remote, dir: &ProfileDir, limit: u32) -> anyhow::Result<()> {
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
            ca: None,
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
            ..Default::default()
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
                            packed: None,
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
            words: vec!["nobody".into(), "hi".into()],
            group: None,
            conversation: None,
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
                words: vec!["bob".into(), "x".into()],
                group: None,
                conversation: None,
            },
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("not logged in"), "{err}");
        server.await.unwrap();
    }

    /// Answers one request of the client with `reply(body)`.
    async fn answer(peer: &mut Peer, reply: impl FnOnce(Body) -> Body) {
        let (id, body) = peer.recv().await;
        peer.send(Frame::new(id, reply(body))).await;
    }

    /// Checks `history --all` pages back from each page's oldest message at
    /// the server's page size until the server says there is no more, and
    /// stops at a page that would not move back.
    #[tokio::test]
    async fn all_history_pages_to_the_oldest() {
        let (listener, args, dir, _tmp) = setup().await;
        let page = |seqs: &[u64], has_more| {
            Body::HistoryResponse(v1::HistoryResponse {
                conversation_id: "g:7".into(),
                messages: seqs
                    .iter()
                    .map(|&conv_seq| v1::Message {
                        conv_seq,
                        ..Default::default()
                    })
                    .collect(),
                has_more,
            })
        };
        let server = tokio::spawn(async move {
            let mut peer = Peer::accept(&listener).await;
            peer.welcome("tok").await;
            let script = [
                (0, page(&[9, 8, 6], true)),
                (6, page(&[5, 2], true)),
                (2, page(&[1], false)),
                (0, page(&[4, 3], true)),
                (3, page(&[3], true)), // does not move back: the end
            ];
            for (want_before, reply) in script {
                answer(&mut peer, |body| {
                    let Body::HistoryRequest(r) = body else {
                        panic!("{body:?}")
                    };
                    assert_eq!(r.target, Some(pigeon_client::to_conversation("g:7")));
                    assert_eq!((r.before, r.limit), (want_before, 0));
                    reply
                })
                .await;
            }
        });
        let remote = Remote::from_args(&args).unwrap();
        let target = pigeon_client::to_conversation("g:7");
        let seqs = |c: &[v1::Message]| c.iter().map(|m| m.conv_seq).collect::<Vec<_>>();
        let (all, stuck) = with_conn(&remote, &dir, async |c| {
            let all = all_history(c, target.clone(), 0).await?;
            let stuck = all_history(c, target, 0).await?;
            Ok((all, stuck))
        })
        .await
        .unwrap();
        assert_eq!(seqs(&all), [9, 8, 6, 5, 2, 1]);
        assert_eq!(seqs(&stuck), [4, 3, 3]);
        server.await.unwrap();
    }

    /// Checks `send` targets: a user, or a conversation id with the text alone.
    #[test]
    fn send_targets() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (target, text) = send_target(words(&["bob", "hi"]), None).unwrap();
        assert_eq!(target, pigeon_client::to_user("bob"));
        assert_eq!(text, "hi");
        let (target, text) = send_target(words(&["hi all"]), Some("g:7".into())).unwrap();
        assert_eq!(target, pigeon_client::to_group("g:7"));
        assert_eq!(text, "hi all");
        let err = send_target(words(&["bob"]), None).unwrap_err();
        assert!(err.to_string().contains("missing the text"), "{err}");
        let err = send_target(words(&["bob", "hi"]), Some("g:7".into())).unwrap_err();
        assert!(err.to_string().contains("only the text"), "{err}");
    }

    /// Checks the settings of `group create` and the merge of `group settings`.
    #[test]
    fn group_settings_from_flags() {
        let s = create_settings(false, false, None);
        assert_eq!(s.post_policy(), v1::PostPolicy::Everyone);
        assert_eq!(s.add_policy(), v1::AddPolicy::Admins);
        assert_eq!(s.max_members, 0);
        let s = create_settings(true, true, Some(9));
        assert_eq!(s.post_policy(), v1::PostPolicy::Admins);
        assert_eq!(s.add_policy(), v1::AddPolicy::Everyone);
        assert_eq!(s.max_members, 9);
        let merged = changed_settings(s, None, Some(false), None);
        assert_eq!(merged.post_policy(), v1::PostPolicy::Admins, "kept");
        assert_eq!(merged.add_policy(), v1::AddPolicy::Admins, "changed");
        assert_eq!(merged.max_members, 9, "kept");
        let merged = changed_settings(merged, Some(false), None, Some(0));
        assert_eq!(merged.post_policy(), v1::PostPolicy::Everyone);
        assert_eq!(merged.max_members, 0);
    }

    /// Checks `send --group` sends to the conversation id, `read` without
    /// --up-to marks up to the newest message, and `group create` and
    /// `group settings` send what their flags say (settings merged into the
    /// current ones).
    #[tokio::test]
    async fn group_send_read_and_settings() {
        let (listener, args, _dir, _tmp) = setup().await;
        let group = |settings| v1::GroupInfo {
            conversation_id: "g:7".into(),
            settings: Some(settings),
            ..Default::default()
        };
        let server = tokio::spawn(async move {
            let mut peer = Peer::accept(&listener).await;
            peer.welcome("tok").await;
            answer(&mut peer, |body| {
                let Body::SendRequest(r) = body else {
                    panic!("{body:?}")
                };
                assert_eq!(r.target, Some(pigeon_client::to_conversation("g:7")));
                assert_eq!(r.content.unwrap().text, "hi all");
                Body::SendResponse(v1::SendResponse {
                    conversation_id: "g:7".into(),
                    conv_seq: 12,
                    ..Default::default()
                })
            })
            .await;

            let mut peer = Peer::accept(&listener).await;
            peer.welcome("tok").await;
            answer(&mut peer, |body| {
                let Body::HistoryRequest(r) = body else {
                    panic!("{body:?}")
                };
                assert_eq!(r.target, Some(pigeon_client::to_conversation("g:7")));
                assert_eq!((r.before, r.limit), (0, 1));
                let newest = v1::Message {
                    conv_seq: 12,
                    ..Default::default()
                };
                Body::HistoryResponse(v1::HistoryResponse {
                    messages: vec![newest],
                    ..Default::default()
                })
            })
            .await;
            answer(&mut peer, |body| {
                let Body::MarkReadRequest(r) = body else {
                    panic!("{body:?}")
                };
                assert_eq!((r.conversation_id.as_str(), r.read_up_to), ("g:7", 12));
                Body::MarkReadResponse(v1::MarkReadResponse {
                    read_up_to: 12,
                    unread_count: 0,
                })
            })
            .await;

            let mut peer = Peer::accept(&listener).await;
            peer.welcome("tok").await;
            answer(&mut peer, |body| {
                let Body::CreateGroupRequest(r) = body else {
                    panic!("{body:?}")
                };
                assert_eq!(r.name, "crew");
                assert_eq!(r.members, ["bob", "carol"]);
                let settings = r.settings.unwrap();
                assert_eq!(settings.post_policy(), v1::PostPolicy::Admins);
                assert_eq!(settings.add_policy(), v1::AddPolicy::Admins);
                Body::CreateGroupResponse(v1::CreateGroupResponse {
                    group: Some(group(settings)),
                })
            })
            .await;

            let mut peer = Peer::accept(&listener).await;
            peer.welcome("tok").await;
            let current = v1::GroupSettings {
                post_policy: v1::PostPolicy::Admins as i32,
                add_policy: v1::AddPolicy::Admins as i32,
                max_members: 40,
            };
            answer(&mut peer, |body| {
                assert!(matches!(body, Body::GetGroupRequest(ref r) if r.conversation_id == "g:7"));
                Body::GetGroupResponse(v1::GetGroupResponse {
                    group: Some(group(current)),
                    my_role: v1::GroupRole::Owner as i32,
                })
            })
            .await;
            answer(&mut peer, |body| {
                let Body::UpdateGroupRequest(r) = body else {
                    panic!("{body:?}")
                };
                assert!(r.update_settings && !r.update_name && !r.update_description);
                let settings = r.settings.unwrap();
                assert_eq!(settings.post_policy(), v1::PostPolicy::Admins, "kept");
                assert_eq!(settings.add_policy(), v1::AddPolicy::Everyone, "changed");
                assert_eq!(settings.max_members, 40, "kept");
                Body::UpdateGroupResponse(v1::UpdateGroupResponse {
                    group: Some(group(settings)),
                })
            })
            .await;
        });
        let send = ClientCommand::Send {
            words: vec!["hi all".into()],
            group: Some("g:7".into()),
            conversation: None,
        };
        run(args.clone(), send).await.unwrap();
        let read = ClientCommand::Read {
            conversation_id: "g:7".into(),
            up_to: None,
        };
        run(args.clone(), read).await.unwrap();
        let create = GroupCommand::Create {
            name: "crew".into(),
            members: vec!["bob".into(), "carol".into()],
            description: String::new(),
            admins_only_post: true,
            members_can_add: false,
            max_members: None,
        };
        run(args.clone(), ClientCommand::Group { cmd: create })
            .await
            .unwrap();
        let settings = GroupCommand::Settings {
            id: "g:7".into(),
            admins_only_post: None,
            members_can_add: Some(true),
            max_members: None,
        };
        run(args.clone(), ClientCommand::Group { cmd: settings })
            .await
            .unwrap();
        // Nothing to change: refused before connecting.
        let nothing = GroupCommand::Settings {
            id: "g:7".into(),
            admins_only_post: None,
            members_can_add: None,
            max_members: None,
        };
        let err = run(args, ClientCommand::Group { cmd: nothing })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nothing to change"), "{err}");
        server.await.unwrap();
    }
}
