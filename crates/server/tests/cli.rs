//! The README walk-through, run for real: two people chat with the `pigeon`
//! command-line client against a `pigeon serve` process.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

/// Runs `pigeon <args>` with a profile directory and returns stdout, failing
/// the test with stderr if the command fails.
fn pigeon(server: &Server, profile: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args(args)
        .arg("--server")
        .arg(server.tcp_url())
        .arg("--profile")
        .arg(profile)
        .env("PIGEON_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pigeon {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Alice and bob register, log in, exchange messages, sync (printing JSON
/// lines and remembering their key), read history and log out.
#[test]
fn two_users_chat_with_the_cli() {
    let server = Server::start("");
    let home = tempfile::tempdir().unwrap();
    let (alice, bob) = (home.path().join("alice"), home.path().join("bob"));

    let reg = json_lines(&pigeon(&server, &alice, &["register", "alice"]));
    assert_eq!(reg[0]["username"], "alice");
    pigeon(&server, &bob, &["register", "bob"]);
    pigeon(&server, &alice, &["login", "alice"]);
    pigeon(&server, &bob, &["login", "bob", "--device", "phone"]);

    let ack = json_lines(&pigeon(&server, &alice, &["send", "bob", "hello bob"]));
    assert_eq!(ack[0]["duplicate"], false);
    let conv = ack[0]["conversation_id"].as_str().unwrap().to_string();
    pigeon(&server, &alice, &["send", "bob", "are you there?"]);

    let events = json_lines(&pigeon(&server, &bob, &["sync"]));
    let texts: Vec<&str> = events.iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(texts, vec!["hello bob", "are you there?"]);
    assert_eq!(events[0]["type"], "message");
    assert_eq!(events[0]["from"], "alice");
    assert_eq!(events[0]["conversation_id"], conv.as_str());
    assert!(
        json_lines(&pigeon(&server, &bob, &["sync"])).is_empty(),
        "the key was stored"
    );

    pigeon(&server, &bob, &["send", "alice", "yes!"]);
    let history = json_lines(&pigeon(&server, &alice, &["history", "bob"]));
    let texts: Vec<&str> = history
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        vec!["hello bob", "are you there?", "yes!"],
        "oldest first"
    );

    let convs = json_lines(&pigeon(&server, &bob, &["conversations"]));
    assert_eq!(convs.len(), 1);

    pigeon(&server, &alice, &["logout"]);
    let out = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args([
            "send",
            "bob",
            "after logout",
            "--server",
            &server.tcp_url(),
            "--profile",
        ])
        .arg(&alice)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a logged-out profile cannot send");
}

/// `pigeon serve` exits 0 on SIGTERM and keeps what was acknowledged.
#[test]
fn serve_exits_cleanly_on_sigterm() {
    let mut server = Server::start("");
    let home = tempfile::tempdir().unwrap();
    let alice = home.path().join("alice");
    pigeon(&server, &alice, &["register", "alice"]);
    pigeon(&server, &alice, &["login", "alice"]);
    pigeon(&server, &alice, &["send", "alice", "note to self"]);
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(server.log().contains("stopped"));
    server.restart();
    let events = json_lines(&pigeon(&server, &alice, &["sync"]));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["text"], "note to self");
}

/// The group commands of the CLI: create with members, add, send to the
/// group, read, recall, role changes, and the events they produce.
#[test]
fn group_commands_with_the_cli() {
    let server = Server::start("");
    let home = tempfile::tempdir().unwrap();
    let p = |n: &str| home.path().join(n);
    for name in ["olga", "pete", "quin"] {
        pigeon(&server, &p(name), &["register", name]);
        pigeon(&server, &p(name), &["login", name]);
    }
    let group = json_lines(&pigeon(
        &server,
        &p("olga"),
        &["group", "create", "book club", "--members", "pete"],
    ));
    let id = group[0]["conversation_id"].as_str().unwrap().to_string();
    assert_eq!(group[0]["member_count"], 2);
    pigeon(&server, &p("olga"), &["group", "add", &id, "quin"]);
    pigeon(
        &server,
        &p("olga"),
        &["group", "role", &id, "pete", "admin"],
    );
    let ack = json_lines(&pigeon(
        &server,
        &p("olga"),
        &["send", "--group", &id, "first chapter"],
    ));
    let seq = ack[0]["conv_seq"].as_u64().unwrap().to_string();
    pigeon(
        &server,
        &p("olga"),
        &["send", "--group", &id, "second chapter"],
    );

    let events = json_lines(&pigeon(&server, &p("quin"), &["sync"]));
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        vec!["group_change", "group_change", "message", "message"]
    );
    assert_eq!(events[1]["kind"], "role_changed");
    let read = json_lines(&pigeon(&server, &p("quin"), &["read", &id]));
    assert_eq!(read[0]["unread_count"], 0);

    pigeon(&server, &p("olga"), &["recall", &id, &seq]);
    let events = json_lines(&pigeon(&server, &p("quin"), &["sync"]));
    assert!(events.iter().any(|e| e["type"] == "message_recalled"));
    let history = json_lines(&pigeon(&server, &p("pete"), &["history", "--group", &id]));
    assert_eq!(history[0]["recalled"], true);
    let info = json_lines(&pigeon(&server, &p("pete"), &["group", "info", &id]));
    assert_eq!(info[0]["my_role"], "admin");
    let members = json_lines(&pigeon(&server, &p("pete"), &["group", "members", &id]));
    assert_eq!(members.len(), 3);
    pigeon(&server, &p("quin"), &["group", "leave", &id]);
    let out = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args([
            "send",
            "--group",
            &id,
            "still here?",
            "--server",
            &server.tcp_url(),
            "--profile",
        ])
        .arg(p("quin"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FORBIDDEN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
