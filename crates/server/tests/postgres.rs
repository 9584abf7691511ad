//! Cluster mode through the real binary: `pigeon serve --store postgres://…`
//! on a real PostgreSQL (pigeon-testkit), restarted, and joined by a second
//! node on the same database.

mod common;

use common::*;
use pigeon_client::{text as content, to_group, to_user};
use pigeon_testkit::PgServer;

/// Registers, chats directly and in a group through a node on PostgreSQL;
/// restarts the node and checks sync (from scratch and from the old key),
/// history and new sends; then checks a second node on the same database
/// serves the same accounts, sessions, sync keys and messages, and that
/// `/readyz` reflects the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_postgres_keeps_everything_across_a_restart_and_shares_it() {
    let mut pg = PgServer::start().expect("starting PostgreSQL");
    let db = pg.create_database().unwrap();
    let store = ["--store".to_string(), db.clone()];
    let mut node = Server::start_with_args("", &store);
    // The startup line names the store; the ports accept connections a
    // moment before it is written.
    for _ in 0..500 {
        if node.log().contains(&db) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(node.log().contains(&db), "{}", node.log());
    let url = node.tcp_url();
    let alice_token = register_and_login(&url, "alice").await;
    let bob_token = register_and_login(&url, "bob").await;
    let carol_token = register_and_login(&url, "carol").await;
    let alice = connect(&url, &alice_token).await;
    alice
        .send("m1", to_user("bob"), content("hello bob"))
        .await
        .unwrap();
    let group = alice
        .create_group("friends", "", &["bob", "carol"], None)
        .await
        .unwrap();
    let gid = group.conversation_id.clone();
    alice
        .send("m2", to_group(&gid), content("hello friends"))
        .await
        .unwrap();
    let bob = connect(&url, &bob_token).await;
    let (before, key) = sync_all(&bob, &[]).await;
    assert_eq!(texts(&before), vec!["hello bob", "hello friends"]);
    assert_eq!(http_get(&node.http, "/readyz").await.0, 200);
    assert!(
        !node.data_dir().join("data").join("db").exists(),
        "the embedded store was not opened"
    );
    drop((alice, bob));

    node.terminate();
    node.restart();
    let bob = connect(&url, &bob_token).await;
    let (again, _) = sync_all(&bob, &[]).await;
    assert_eq!(again, before, "the same log after the restart");
    let (nothing, key) = sync_all(&bob, &key).await;
    assert!(texts(&nothing).is_empty(), "the old key continues");
    let alice = connect(&url, &alice_token).await;
    let retry = alice
        .send("m1", to_user("bob"), content("hello bob"))
        .await
        .unwrap();
    assert!(retry.duplicate, "a retry after the restart stores nothing");
    alice
        .send("m3", to_group(&gid), content("after restart"))
        .await
        .unwrap();
    let (fresh, key) = sync_all(&bob, &key).await;
    assert_eq!(texts(&fresh), vec!["after restart"]);
    let page = bob.history(to_group(&gid), 0, 10).await.unwrap();
    let history: Vec<String> = page
        .messages
        .iter()
        .map(|m| m.content.clone().unwrap_or_default().text)
        .collect();
    assert_eq!(history, vec!["after restart", "hello friends"]);

    // A second node on the same database: same sessions, keys and data.
    let other = Server::start_with_args("", &store);
    let url2 = other.tcp_url();
    let bob2 = connect(&url2, &bob_token).await;
    let (nothing, _) = sync_all(&bob2, &key).await;
    assert!(
        texts(&nothing).is_empty(),
        "a key from node 1 works on node 2"
    );
    let carol = connect(&url2, &carol_token).await;
    let (carols, _) = sync_all(&carol, &[]).await;
    assert_eq!(texts(&carols), vec!["hello friends", "after restart"]);
    carol
        .send("c1", to_group(&gid), content("from node 2"))
        .await
        .unwrap();
    let (from_two, _) = sync_all(&bob, &key).await;
    assert_eq!(
        texts(&from_two),
        vec!["from node 2"],
        "node 1 reads node 2's write"
    );

    // Readiness follows the database.
    tokio::task::block_in_place(|| pg.stop());
    let (status, body) = http_get(&other.http, "/readyz").await;
    assert_eq!(status, 503, "{body}");
}
