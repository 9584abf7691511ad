//! The client auth matrix: every request without a token, with a malformed,
//! an expired and a revoked token, and with another user's token aimed at
//! someone else's conversations.

mod common;

use std::time::Duration;

use common::*;
use pigeon_client::v1::{self, ErrorCode, frame::Body};
use pigeon_client::{ConnectOptions, Connection, text as content, to_conversation, to_user};

/// One sample of every request a logged-in client can make.
fn every_request(conv: &str, group: &str, key: &[u8]) -> Vec<(&'static str, Body)> {
    use v1::*;
    vec![
        ("logout", Body::LogoutRequest(LogoutRequest {})),
        (
            "send",
            Body::SendRequest(SendRequest {
                client_msg_id: "x".into(),
                target: Some(to_conversation(conv)),
                content: Some(content("hi")),
            }),
        ),
        (
            "sync",
            Body::SyncRequest(SyncRequest {
                key: key.to_vec(),
                limit: 0,
            }),
        ),
        (
            "history",
            Body::HistoryRequest(HistoryRequest {
                target: Some(to_conversation(conv)),
                before: 0,
                limit: 0,
            }),
        ),
        (
            "list_conversations",
            Body::ListConversationsRequest(ListConversationsRequest { limit: 0 }),
        ),
        (
            "mark_read",
            Body::MarkReadRequest(MarkReadRequest {
                conversation_id: conv.into(),
                read_up_to: 1,
            }),
        ),
        (
            "create_group",
            Body::CreateGroupRequest(CreateGroupRequest {
                name: "g".into(),
                ..Default::default()
            }),
        ),
        (
            "update_group",
            Body::UpdateGroupRequest(UpdateGroupRequest {
                conversation_id: group.into(),
                update_name: true,
                name: "x".into(),
                ..Default::default()
            }),
        ),
        (
            "add_members",
            Body::AddMembersRequest(AddMembersRequest {
                conversation_id: group.into(),
                usernames: vec!["mallory".into()],
            }),
        ),
        (
            "remove_members",
            Body::RemoveMembersRequest(RemoveMembersRequest {
                conversation_id: group.into(),
                usernames: vec!["bob".into()],
            }),
        ),
        (
            "leave_group",
            Body::LeaveGroupRequest(LeaveGroupRequest {
                conversation_id: group.into(),
            }),
        ),
        (
            "set_role",
            Body::SetRoleRequest(SetRoleRequest {
                conversation_id: group.into(),
                username: "bob".into(),
                role: GroupRole::Admin as i32,
            }),
        ),
        (
            "transfer",
            Body::TransferOwnershipRequest(TransferOwnershipRequest {
                conversation_id: group.into(),
                username: "bob".into(),
            }),
        ),
        (
            "dissolve",
            Body::DissolveGroupRequest(DissolveGroupRequest {
                conversation_id: group.into(),
            }),
        ),
        (
            "get_group",
            Body::GetGroupRequest(GetGroupRequest {
                conversation_id: group.into(),
            }),
        ),
        (
            "list_members",
            Body::ListMembersRequest(ListMembersRequest {
                conversation_id: group.into(),
                after_user_id: 0,
                limit: 0,
            }),
        ),
        (
            "recall",
            Body::RecallMessageRequest(RecallMessageRequest {
                conversation_id: conv.into(),
                conv_seq: 1,
            }),
        ),
        (
            "edit",
            Body::EditMessageRequest(EditMessageRequest {
                conversation_id: conv.into(),
                conv_seq: 1,
                content: Some(content("x")),
            }),
        ),
        (
            "delete",
            Body::DeleteMessageRequest(DeleteMessageRequest {
                conversation_id: conv.into(),
                conv_seq: 1,
            }),
        ),
        (
            "receipts",
            Body::GetReceiptsRequest(GetReceiptsRequest {
                conversation_id: group.into(),
                conv_seqs: vec![1],
            }),
        ),
        (
            "typing",
            Body::SetTypingRequest(SetTypingRequest {
                conversation_id: conv.into(),
                typing: true,
            }),
        ),
        (
            "presence",
            Body::GetPresenceRequest(GetPresenceRequest {
                usernames: vec!["alice".into()],
            }),
        ),
        (
            "privacy",
            Body::SetPrivacyRequest(SetPrivacyRequest {
                hide_presence: true,
            }),
        ),
        (
            "block",
            Body::BlockRequest(BlockRequest {
                username: "alice".into(),
            }),
        ),
        (
            "unblock",
            Body::UnblockRequest(UnblockRequest {
                username: "alice".into(),
            }),
        ),
        (
            "list_blocked",
            Body::ListBlockedRequest(ListBlockedRequest {}),
        ),
    ]
}

fn code(r: Result<Body, pigeon_client::ClientError>) -> Option<ErrorCode> {
    r.err().and_then(|e| e.code())
}

/// Without a token every request but register, login and ping is refused
/// with UNAUTHENTICATED, and the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_means_unauthenticated() {
    let server = Server::start("");
    let c = anon(&server.tcp_url()).await;
    for (name, body) in every_request("d:1:2", "g:1", &[]) {
        assert_eq!(
            code(c.request(body).await),
            Some(ErrorCode::Unauthenticated),
            "{name}"
        );
    }
    c.ping().await.unwrap();
}

/// A malformed, an unknown, an expired and a revoked token are refused at
/// the handshake with their own codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_at_the_handshake() {
    let server = Server::start("session_ttl_secs = 1");
    let url = server.tcp_url();
    let try_token = |t: String| {
        let url = url.clone();
        async move {
            Connection::connect(&ConnectOptions::new(&url).with_token(t))
                .await
                .err()
                .and_then(|e| e.code())
        }
    };
    assert_eq!(
        try_token("not hex at all".into()).await,
        Some(ErrorCode::InvalidToken)
    );
    assert_eq!(
        try_token("00".repeat(32)).await,
        Some(ErrorCode::InvalidToken)
    );
    let revoked = register_and_login(&url, "alice").await;
    connect(&url, &revoked).await.logout().await.unwrap();
    assert_eq!(try_token(revoked).await, Some(ErrorCode::TokenRevoked));
    let expiring = login(&url, "alice", "second").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(try_token(expiring).await, Some(ErrorCode::TokenExpired));
}

/// With his own valid token, mallory cannot reach alice and bob's direct
/// conversation or their group, read alice's log, or change alice's
/// messages: each request gets a refusal that reveals nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_resources_are_out_of_reach() {
    let server = Server::start("");
    let url = server.tcp_url();
    register_many(&url, &["alice".into(), "bob".into(), "mallory".into()]).await;
    let alice = connect(&url, &login(&url, "alice", "a").await).await;
    let ack = alice
        .send("m1", to_user("bob"), content("private"))
        .await
        .unwrap();
    let group = alice
        .create_group("secret", "", &["bob"], None)
        .await
        .unwrap()
        .conversation_id;
    let (_, alice_key) = sync_all(&alice, &[]).await;
    let mallory = connect(&url, &login(&url, "mallory", "m").await).await;
    for (name, body) in every_request(&ack.conversation_id, &group, &alice_key) {
        let expected = match name {
            // Requests about mallory's own account and nothing else's.
            "logout" | "list_conversations" | "create_group" | "presence" | "privacy" | "block"
            | "unblock" | "list_blocked" => None,
            "sync" => Some(ErrorCode::InvalidSyncKey),
            "send" | "history" | "mark_read" | "recall" | "edit" | "delete" | "typing" => {
                Some(ErrorCode::ConversationNotFound)
            }
            _ => Some(ErrorCode::Forbidden),
        };
        if name == "logout" {
            continue;
        }
        let got = code(mallory.request(body).await);
        assert_eq!(got, expected, "{name}");
    }
    // And what mallory did learn: alice's presence is unknown to him.
    let p = mallory.get_presence(&["alice"]).await.unwrap();
    assert_eq!(p[0].state, v1::PresenceState::Unknown as i32);
    let list = mallory.list_conversations(0).await.unwrap().conversations;
    assert!(
        list.iter()
            .all(|c| c.conversation_id != ack.conversation_id && c.conversation_id != group)
    );
}
