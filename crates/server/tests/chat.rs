//! `pigeon chat` against a real `pigeon serve`: the chat's `App` is driven
//! by key presses through `pigeon_cli::chat::Chat` (the same session the
//! terminal loop runs, minus the TTY), with profiles made by the `pigeon`
//! binary's own `register` and `login`, and its screen read from a ratatui
//! `TestBackend`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use pigeon_cli::ClientArgs;
use pigeon_cli::chat::{App, Chat, Input, KeyCode, KeyEvent, KeyModifiers, screen_text};
use pigeon_cli::profile::ProfileDir;

/// How long one wait for the chat to reach a state may take.
const WAIT: Duration = Duration::from_secs(20);

/// Runs `pigeon <args>` against `url` with a profile directory, failing
/// the test with stderr if the command fails.
fn pigeon(url: &str, ca: Option<&Path>, profile: &Path, args: &[&str]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pigeon"));
    cmd.args(args)
        .arg("--server")
        .arg(url)
        .arg("--profile")
        .arg(profile)
        .env("PIGEON_PASSWORD", PASSWORD);
    if let Some(ca) = ca {
        cmd.arg("--ca").arg(ca);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "pigeon {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Everyone's chat in one place: the server URL, its CA and a home for profiles.
struct Setup {
    url: String,
    ca: Option<std::path::PathBuf>,
    home: tempfile::TempDir,
}

impl Setup {
    fn profile(&self, name: &str) -> std::path::PathBuf {
        self.home.path().join(name)
    }

    /// Registers and logs `name` in with the CLI, as a person would first.
    fn account(&self, name: &str) {
        let dir = self.profile(name);
        pigeon(&self.url, self.ca.as_deref(), &dir, &["register", name]);
        pigeon(&self.url, self.ca.as_deref(), &dir, &["login", name]);
    }

    fn args(&self, name: &str) -> ClientArgs {
        ClientArgs {
            server: self.url.clone(),
            profile: Some(self.profile(name)),
            ca: self.ca.clone(),
        }
    }

    /// Starts `name`'s chat and waits until it is connected.
    async fn chat(&self, name: &str) -> Chat {
        let mut chat = Chat::start(&self.args(name)).expect("starting the chat");
        chat.handle(Input::Resize {
            width: 100,
            height: 20,
        })
        .unwrap();
        // Connected and the first listing applied: a message sent after
        // this arrives as news (with a notice), not as part of the list.
        until(&mut chat, "connected and listed", |app| {
            *app.link() == pigeon_cli::chat::app::Link::Connected && !app.listing()
        })
        .await;
        chat
    }
}

/// Feeds the chat what arrives until `done` holds, failing with the screen
/// after [`WAIT`].
async fn until(chat: &mut Chat, what: &str, done: impl Fn(&App) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(chat.app()) {
        match tokio::time::timeout_at(deadline, chat.next()).await {
            Ok(input) => chat.handle(input).unwrap(),
            Err(_) => panic!(
                "timed out waiting for {what}:\n{}",
                screen_text(chat.app(), 100, 20).join("\n")
            ),
        }
    }
}

fn key(chat: &mut Chat, code: KeyCode) {
    chat.handle(Input::Key(KeyEvent::new(code, KeyModifiers::NONE)))
        .unwrap();
}

fn ctrl(chat: &mut Chat, c: char) {
    chat.handle(Input::Key(KeyEvent::new(
        KeyCode::Char(c),
        KeyModifiers::CONTROL,
    )))
    .unwrap();
}

fn type_line(chat: &mut Chat, text: &str) {
    for c in text.chars() {
        key(chat, KeyCode::Char(c));
    }
    key(chat, KeyCode::Enter);
}

/// The screen's rows with runs of spaces squeezed to one.
fn screen(chat: &Chat) -> Vec<String> {
    screen_text(chat.app(), 100, 20)
        .iter()
        .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn shows(chat: &Chat, needle: &str) -> bool {
    screen(chat).iter().any(|r| r.contains(needle))
}

fn unread(app: &App, title: &str) -> Option<u64> {
    app.conversations()
        .find(|c| c.title() == title)
        .map(|c| c.unread)
}

fn has_text(app: &App, text: &str) -> bool {
    app.selected()
        .is_some_and(|c| c.pending.is_empty() && c.messages.values().any(|m| m.text == text))
}

/// Alice opens a conversation with `/new` and writes; bob sees the unread
/// count and the notice, opens the conversation (the count clears, alice's
/// mark turns to read), types (alice sees it) and answers; bob's chat
/// restarts from the stored sync key and gets only what is new; alice
/// creates a group that bob's list shows.
async fn scenario(s: &Setup) {
    s.account("alice");
    s.account("bob");
    let mut alice = s.chat("alice").await;
    let mut bob = s.chat("bob").await;
    assert!(
        alice.resumed_from().is_empty(),
        "a fresh login starts empty"
    );
    assert!(shows(&alice, "● connected"), "{:#?}", screen(&alice));

    ctrl(&mut alice, 'n');
    type_line(&mut alice, "bob");
    until(&mut alice, "the conversation with bob", |a| {
        a.selected().is_some_and(|c| c.title() == "bob")
    })
    .await;
    type_line(&mut alice, "hello bob");
    until(&mut alice, "the message stored", |a| {
        has_text(a, "hello bob")
    })
    .await;

    until(&mut bob, "one unread from alice", |b| {
        unread(b, "alice") == Some(1)
    })
    .await;
    let rows = screen(&bob);
    assert!(rows[1].starts_with("│ alice (1)│"), "{rows:#?}");
    assert!(rows[2].starts_with("│ alice: hello bob │"), "{rows:#?}");
    assert!(
        rows.last().unwrap().contains("new message from alice"),
        "{rows:#?}"
    );

    key(&mut bob, KeyCode::Tab);
    until(&mut bob, "alice's message in view", |b| {
        has_text(b, "hello bob") && unread(b, "alice") == Some(0)
    })
    .await;
    assert!(shows(&bob, "alice: hello bob"), "{:#?}", screen(&bob));
    assert!(!shows(&bob, "alice (1)"), "{:#?}", screen(&bob));
    until(&mut alice, "bob's read receipt", |a| {
        a.selected().is_some_and(|c| {
            let seq = c.newest_seq;
            c.mark(seq) == "✓✓ read"
        })
    })
    .await;
    assert!(
        shows(&alice, "alice: hello bob ✓✓ read"),
        "{:#?}",
        screen(&alice)
    );

    for c in "hi alice".chars() {
        key(&mut bob, KeyCode::Char(c));
    }
    until(&mut alice, "bob typing", |a| {
        a.selected()
            .is_some_and(|c| c.typing_now(a.now_ms()) == ["bob"])
    })
    .await;
    assert!(shows(&alice, "bob is typing…"), "{:#?}", screen(&alice));
    key(&mut bob, KeyCode::Enter);
    until(&mut alice, "bob's answer", |a| has_text(a, "hi alice")).await;
    assert_eq!(unread(alice.app(), "bob"), Some(0), "in view: read at once");
    // Bob applies his own message's event and alice's read receipt before
    // he quits, so his stored key is past them.
    until(&mut bob, "bob's own message applied and read", |b| {
        b.stats().message_events == 2
            && has_text(b, "hi alice")
            && b.selected()
                .is_some_and(|c| c.mark(c.newest_seq) == "✓✓ read")
    })
    .await;
    assert!(bob.keys_persisted() >= 2);
    bob.shutdown().await;

    let stored = ProfileDir::resolve(Some(&s.profile("bob")))
        .load_sync_key()
        .unwrap();
    assert!(!stored.is_empty());
    let mut bob = s.chat("bob").await;
    assert_eq!(
        bob.resumed_from(),
        stored,
        "the restart uses the stored key"
    );
    type_line(&mut alice, "after restart");
    until(&mut bob, "the new message after the restart", |b| {
        unread(b, "alice") == Some(1)
            && b.conversations()
                .any(|c| c.preview == "alice: after restart")
    })
    .await;
    assert_eq!(
        bob.app().stats().message_events,
        1,
        "only the new message came by sync; the earlier two were not downloaded again"
    );
    key(&mut bob, KeyCode::Tab);
    until(&mut bob, "the history after the restart", |b| {
        ["hello bob", "hi alice", "after restart"]
            .iter()
            .all(|t| has_text(b, t))
    })
    .await;
    assert_eq!(unread(bob.app(), "alice"), Some(0));
    // The read receipt came before the stored key; the chat kept it on disk.
    assert!(shows(&bob, "bob: hi alice ✓✓ read"), "{:#?}", screen(&bob));

    type_line(&mut alice, "/group crew bob");
    until(&mut alice, "the new group in view", |a| {
        a.selected().is_some_and(|c| c.title() == "crew")
    })
    .await;
    type_line(&mut alice, "hi crew");
    until(&mut bob, "the group with one unread", |b| {
        unread(b, "crew") == Some(1)
    })
    .await;
    assert!(shows(&bob, "│ # crew (1)│"), "{:#?}", screen(&bob));
    assert!(
        shows(&bob, "new message from alice in crew"),
        "{:#?}",
        screen(&bob)
    );
    key(&mut alice, KeyCode::Esc);
    assert!(alice.should_quit());
    alice.shutdown().await;
    bob.shutdown().await;
}

/// The scenario over the length-prefixed TCP protocol.
#[tokio::test]
async fn chat_over_tcp() {
    let server = Server::start("");
    let setup = Setup {
        url: server.tcp_url(),
        ca: None,
        home: tempfile::tempdir().unwrap(),
    };
    scenario(&setup).await;
}

/// The scenario over WebSocket.
#[tokio::test]
async fn chat_over_websocket() {
    let server = Server::start("");
    let setup = Setup {
        url: server.ws_url(),
        ca: None,
        home: tempfile::tempdir().unwrap(),
    };
    scenario(&setup).await;
}

/// The scenario over WebSocket inside TLS, trusting the server's CA with
/// `--ca` as the other commands do.
#[tokio::test]
async fn chat_over_wss() {
    let server = Server::start_tls("");
    let setup = Setup {
        url: server.wss_url(),
        ca: Some(server.ca_file()),
        home: tempfile::tempdir().unwrap(),
    };
    scenario(&setup).await;
}
