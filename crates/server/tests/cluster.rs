//! Cluster mode through the real binary: nodes joined by a real
//! `nats-server` (started by the test) list each other in
//! `GET /v1/endpoints`, least loaded first, and a draining node sends its
//! clients to the others.

mod common;

use std::time::Duration;

use common::*;
use pigeon_client::v1::{ErrorCode, frame::Body};
use pigeon_testkit::{NatsServer, PgServer};

/// One database and one bus for the nodes of a test.
struct Cluster {
    nats: NatsServer,
    db: String,
    _pg: PgServer,
}

impl Cluster {
    fn start() -> Cluster {
        let pg = PgServer::start().expect("starting PostgreSQL");
        let db = pg.create_database().unwrap();
        Cluster {
            nats: NatsServer::start(),
            db,
            _pg: pg,
        }
    }

    fn node(&self, id: &str) -> Server {
        Server::start_with_args(
            &format!(
                "bus = \"{}\"\nnode_id = \"{id}\"\ncluster_beat_ms = 100\ncluster_node_timeout_ms = 1000",
                self.nats.url()
            ),
            &["--store".to_string(), self.db.clone()],
        )
    }
}

async fn endpoints(server: &Server) -> Vec<String> {
    let (status, body) = http_get(&server.http, "/v1/endpoints").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect()
}

async fn eventually_endpoints(
    server: &Server,
    what: &str,
    cond: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let mut last = Vec::new();
    for _ in 0..200 {
        last = endpoints(server).await;
        if cond(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}; endpoints: {last:?}");
}

fn own(server: &Server) -> Vec<String> {
    vec![server.tcp_url(), server.ws_url()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_list_each_other_and_drain_redirects() {
    let cluster = Cluster::start();
    let a = cluster.node("a");
    let mut b = cluster.node("b");
    let mut c = cluster.node("c");
    let all = eventually_endpoints(&a, "three nodes", |l| l.len() == 6).await;
    for node in [&a, &b, &c] {
        for url in own(node) {
            assert!(all.contains(&url), "{url} listed in {all:?}");
        }
    }
    // Least loaded first: two connections on a put it last.
    let url_a = a.tcp_url();
    let token = register_and_login(&url_a, "alice").await;
    let _c1 = connect(&url_a, &token).await;
    let _c2 = connect(&url_a, &token).await;
    eventually_endpoints(&b, "a listed last", |l| {
        l.len() == 6 && l[4..] == own(&a)[..]
    })
    .await;

    // c drains: its client is sent to the other nodes, and nobody lists c.
    let url_c = c.tcp_url();
    let token = register_and_login(&url_c, "carol").await;
    let conn = connect(&url_c, &token).await;
    let pid = c.child.as_ref().unwrap().id();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let bye = loop {
        match within(conn.next_push()).await.expect("a goodbye") {
            Body::Goodbye(g) => break g,
            _ => continue,
        }
    };
    assert_eq!(bye.code, ErrorCode::ShuttingDown as i32);
    let mut expected: Vec<String> = own(&a).into_iter().chain(own(&b)).collect();
    let mut got = bye.redirect_to.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "redirected to the live nodes");
    assert!(c.terminate_wait().success());
    let left = eventually_endpoints(&a, "c gone", |l| l.len() == 4).await;
    assert!(!left.contains(&url_c));

    // b dies without a word: it is dropped after the node timeout.
    b.kill9();
    let left = eventually_endpoints(&a, "b forgotten", |l| l.len() == 2).await;
    assert_eq!(left, own(&a));
}
