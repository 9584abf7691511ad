//! The admin HTTP API through the real binary: every route refuses a
//! missing or wrong token with 401 and nothing else; accounts, groups,
//! messages as a bot and statistics do what they say and their effects
//! reach connected devices; the served OpenAPI document matches the routes
//! and the copy in `docs/openapi.json`.

mod common;

use std::collections::BTreeSet;

use common::*;
use pigeon_client::v1::{self, ErrorCode, event, frame::Body};
use pigeon_client::{ConnectOptions, Connection, text as content, to_user};
use serde_json::{Value, json};

const TOKEN: &str = "admin-token-for-tests-0123456789";

fn admin_server() -> Server {
    Server::start(&format!("admin_token = \"{TOKEN}\""))
}

/// A JSON admin request with the right token.
async fn admin(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let body = body.map(|b| b.to_string());
    let (status, text) = http_request(
        &server.http,
        method,
        path,
        &[("Authorization", &auth)],
        body.as_deref(),
    )
    .await;
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: {status} {text:?} is not JSON: {e}"));
    (status, value)
}

/// The error code of an error answer.
fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("{v}"))
}

/// One admin route: the method and path as in the OpenAPI document, a
/// concrete path and a body for the matrix.
struct Route {
    method: &'static str,
    template: &'static str,
    path: &'static str,
    body: Option<Value>,
}

/// Every admin route, with requests that are valid against the fixtures
/// of [`fixtures`] (user `alice`, `bob`, group 1).
fn routes() -> Vec<Route> {
    let r = |method, template, path, body| Route {
        method,
        template,
        path,
        body,
    };
    vec![
        r(
            "POST",
            "/admin/v1/users",
            "/admin/v1/users",
            Some(json!({"username": "matrix", "password": PASSWORD})),
        ),
        r("GET", "/admin/v1/users", "/admin/v1/users?limit=5", None),
        r(
            "GET",
            "/admin/v1/users/{username}",
            "/admin/v1/users/alice",
            None,
        ),
        r(
            "POST",
            "/admin/v1/users/{username}/disable",
            "/admin/v1/users/alice/disable",
            None,
        ),
        r(
            "POST",
            "/admin/v1/users/{username}/enable",
            "/admin/v1/users/alice/enable",
            None,
        ),
        r(
            "POST",
            "/admin/v1/users/{username}/password",
            "/admin/v1/users/alice/password",
            Some(json!({"password": "another password"})),
        ),
        r(
            "POST",
            "/admin/v1/users/{username}/revoke-sessions",
            "/admin/v1/users/alice/revoke-sessions",
            None,
        ),
        r(
            "POST",
            "/admin/v1/groups",
            "/admin/v1/groups",
            Some(json!({"name": "matrix", "owner": "alice", "members": ["bob"]})),
        ),
        r("GET", "/admin/v1/groups/{id}", "/admin/v1/groups/1", None),
        r(
            "GET",
            "/admin/v1/groups/{id}/members",
            "/admin/v1/groups/g:1/members",
            None,
        ),
        r(
            "POST",
            "/admin/v1/groups/{id}/members",
            "/admin/v1/groups/1/members",
            Some(json!({"usernames": ["bob"]})),
        ),
        r(
            "DELETE",
            "/admin/v1/groups/{id}/members/{username}",
            "/admin/v1/groups/1/members/bob",
            None,
        ),
        r(
            "POST",
            "/admin/v1/groups/{id}/dissolve",
            "/admin/v1/groups/1/dissolve",
            None,
        ),
        r(
            "POST",
            "/admin/v1/messages",
            "/admin/v1/messages",
            Some(json!({"from": "alice", "to_user": "bob", "text": "hi"})),
        ),
        r("GET", "/admin/v1/stats", "/admin/v1/stats", None),
        r("GET", "/admin/v1/flags", "/admin/v1/flags", None),
        r(
            "GET",
            "/admin/v1/webhooks/failed",
            "/admin/v1/webhooks/failed?limit=10",
            None,
        ),
        r(
            "PUT",
            "/admin/v1/flags/{name}",
            "/admin/v1/flags/new-composer",
            Some(json!({"percent": 10, "allow": ["alice"]})),
        ),
        r(
            "DELETE",
            "/admin/v1/flags/{name}",
            "/admin/v1/flags/new-composer",
            None,
        ),
    ]
}

/// Users `alice` and `bob` and group 1 owned by alice.
async fn fixtures(server: &Server) {
    for name in ["alice", "bob"] {
        let (s, v) = admin(
            server,
            "POST",
            "/admin/v1/users",
            Some(json!({"username": name, "password": PASSWORD})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = admin(
        server,
        "POST",
        "/admin/v1/groups",
        Some(json!({"name": "fixture", "owner": "alice"})),
    )
    .await;
    assert_eq!((s, &v["id"]), (201, &json!(1)), "{v}");
}

/// Asserts a 401 answer carrying only the UNAUTHENTICATED error.
fn assert_refused(what: &str, status: u16, body: &str) {
    assert_eq!(status, 401, "{what}: {body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {body}: {e}"));
    assert_eq!(code(&v), "UNAUTHENTICATED", "{what}");
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["error"],
        "{what}: nothing but the error"
    );
}

/// Every admin route with no token, a wrong token, a token in the wrong
/// scheme and the right token: 401, 401, 401, then success or a domain
/// error, never a server error; refused requests change nothing. Unknown
/// admin paths and wrong methods are refused the same way without the
/// token, and a server with no admin token configured refuses everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_the_token() {
    let server = admin_server();
    fixtures(&server).await;
    let wrong = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    let mut probes: Vec<(&str, &str, Option<String>)> = routes()
        .iter()
        .map(|r| (r.method, r.path, r.body.as_ref().map(Value::to_string)))
        .collect();
    probes.push(("GET", "/admin", None));
    probes.push(("GET", "/admin/v2/nothing", None));
    probes.push(("PUT", "/admin/v1/users", Some("{}".into())));
    probes.push(("GET", "/admin/v1/users/alice/", None));
    for (method, path, body) in &probes {
        for headers in [
            vec![],
            vec![("Authorization", wrong.as_str())],
            vec![("Authorization", basic.as_str())],
        ] {
            let (status, text) =
                http_request(&server.http, method, path, &headers, body.as_deref()).await;
            assert_refused(&format!("{method} {path} {headers:?}"), status, &text);
        }
    }
    // Nothing happened: no user was created, alice is enabled, the group
    // is not dissolved.
    let (s, _) = admin(&server, "GET", "/admin/v1/users/matrix", None).await;
    assert_eq!(s, 404);
    let (_, alice) = admin(&server, "GET", "/admin/v1/users/alice", None).await;
    assert_eq!(alice["disabled"], json!(false));
    let (_, group) = admin(&server, "GET", "/admin/v1/groups/1", None).await;
    assert_eq!(group["dissolved"], json!(false));
    assert_eq!(group["member_count"], json!(1));

    for r in routes() {
        let (status, v) = admin(&server, r.method, r.path, r.body.clone()).await;
        assert!(
            (200..300).contains(&status) || (400..500).contains(&status) && status != 401,
            "{} {}: {status} {v}",
            r.method,
            r.path
        );
        assert!(
            (200..300).contains(&status),
            "the fixtures make every route succeed: {} {}: {status} {v}",
            r.method,
            r.path
        );
    }
    let (s, v) = admin(&server, "GET", "/admin/v2/nothing", None).await;
    assert_eq!((s, code(&v)), (404, "UNKNOWN_REQUEST"));

    // No token configured: even a guess of an empty token is refused.
    let closed = Server::start("");
    for r in routes() {
        for auth in ["Bearer ", "Bearer x", &format!("Bearer {TOKEN}")] {
            let body = r.body.as_ref().map(Value::to_string);
            let (status, text) = http_request(
                &closed.http,
                r.method,
                r.path,
                &[("Authorization", auth)],
                body.as_deref(),
            )
            .await;
            assert_refused(&format!("closed {} {}", r.method, r.path), status, &text);
        }
    }
}

/// The served OpenAPI document equals `docs/openapi.json` (regenerate with
/// `PIGEON_UPDATE_OPENAPI=1 cargo nextest run -p pigeon-server --test admin
/// openapi`), lists exactly the admin routes the other tests exercise, and
/// declares the bearer scheme.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes() {
    let server = admin_server();
    let (status, text) = http_get(&server.http, "/openapi.json").await;
    assert_eq!(status, 200);
    let served: Value = serde_json::from_str(&text).unwrap();
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    if std::env::var_os("PIGEON_UPDATE_OPENAPI").is_some() {
        let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
        std::fs::write(&file, pretty).unwrap();
    }
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("docs/openapi.json exists"))
            .unwrap();
    assert!(
        served == committed,
        "docs/openapi.json differs from the served document; regenerate it with \
         PIGEON_UPDATE_OPENAPI=1 cargo nextest run -p pigeon-server --test admin openapi"
    );

    let documented: BTreeSet<(String, String)> = served["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let routes: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|r| (r.method.to_string(), r.template.to_string()))
        .collect();
    assert_eq!(documented, routes);
    assert_eq!(
        served["components"]["securitySchemes"]["admin_token"]["scheme"],
        json!("bearer")
    );
    for (method, path) in &documented {
        let op = &served["paths"][path][method.to_lowercase()];
        assert!(op["responses"]["401"].is_object(), "{method} {path}");
    }
}

/// The next Goodbye on a connection (pushes before it skipped).
async fn goodbye(c: &Connection) -> v1::Goodbye {
    loop {
        match within(c.next_push()).await {
            Some(Body::Goodbye(g)) => return g,
            Some(_) => continue,
            None => panic!("closed without a Goodbye"),
        }
    }
}

/// The user's admin view once it shows `online` connections, or after 10
/// s, whatever it shows then: connections a client closed leave the
/// server's registry a moment later.
async fn user_when_online(server: &Server, username: &str, online: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let path = format!("/admin/v1/users/{username}");
        let (_, v) = admin(server, "GET", &path, None).await;
        if v["online_connections"] == json!(online) || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Connects with a token, expecting a refusal with `code`.
async fn refused_token(url: &str, token: &str, expected: ErrorCode) {
    let err = Connection::connect(&ConnectOptions::new(url).with_token(token))
        .await
        .expect_err("token refused");
    assert_eq!(err.code(), Some(expected), "{err}");
}

/// Logs in, expecting a refusal with `code`.
async fn refused_login(url: &str, name: &str, password: &str, expected: ErrorCode) {
    let c = anon(url).await;
    let err = c
        .login(name, password, "test")
        .await
        .expect_err("login refused");
    assert_eq!(err.code(), Some(expected), "{err}");
    c.close().await;
}

/// Accounts created through the API log in; the list comes in pages by id
/// with a cursor; bad names, duplicates and unknown users get their codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_accounts_log_in_and_list_in_pages() {
    let server = Server::start(&format!(
        "admin_token = \"{TOKEN}\"\nopen_registration = false"
    ));
    let url = server.tcp_url();
    for i in 0..25 {
        let (s, v) = admin(
            &server,
            "POST",
            "/admin/v1/users",
            Some(json!({"username": format!("user{i:02}"), "password": PASSWORD})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["username"], json!(format!("user{i:02}")));
    }
    // Registration is closed, yet the administrator's accounts work.
    let c = connect(&url, &login(&url, "user07", "laptop").await).await;
    // The login's own connection counts until the server has seen it close,
    // which `close` does not wait for.
    let v = user_when_online(&server, "user07", 1).await;
    assert_eq!(v["online_connections"], json!(1), "{v}");
    assert_eq!(v["disabled"], json!(false));
    c.close().await;

    let mut seen = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let (s, v) = admin(
            &server,
            "GET",
            &format!("/admin/v1/users?after_id={after}&limit=10"),
            None,
        )
        .await;
        assert_eq!(s, 200);
        pages += 1;
        let users = v["users"].as_array().unwrap();
        seen.extend(users.iter().map(|u| u["id"].as_u64().unwrap()));
        match v["next_after_id"].as_u64() {
            Some(next) => {
                assert_eq!(users.len(), 10);
                assert_eq!(Some(next), seen.last().copied());
                after = next;
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (1..=25).collect::<Vec<u64>>());
    let (_, v) = admin(&server, "GET", "/admin/v1/users?limit=5000", None).await;
    assert_eq!(
        v["users"].as_array().unwrap().len(),
        25,
        "clamped, not refused"
    );
    assert!(v.get("next_after_id").is_none());
    let (_, v) = admin(&server, "GET", "/admin/v1/users?after_id=25", None).await;
    assert_eq!(v["users"], json!([]));

    let create = |name: &str, password: &str| json!({"username": name, "password": password});
    let cases = [
        (create("user03", PASSWORD), 409, "USERNAME_TAKEN"),
        (create("Bad Name", PASSWORD), 400, "INVALID_USERNAME"),
        (create("shortpw", "x"), 400, "INVALID_PASSWORD"),
        (json!({"username": "x"}), 400, "INVALID_ARGUMENT"),
        (
            json!({"username": "extra1", "password": PASSWORD, "admin": true}),
            400,
            "INVALID_ARGUMENT",
        ),
    ];
    for (body, status, expected) in cases {
        let (s, v) = admin(&server, "POST", "/admin/v1/users", Some(body.clone())).await;
        assert_eq!((s, code(&v)), (status, expected), "{body}");
    }
    for path in ["/admin/v1/users/nobody", "/admin/v1/users/NO%20BODY"] {
        let (s, v) = admin(&server, "GET", path, None).await;
        assert_eq!((s, code(&v)), (404, "USER_NOT_FOUND"), "{path}");
    }
    let (s, v) = admin(&server, "GET", "/admin/v1/users?limit=lots", None).await;
    assert_eq!((s, code(&v)), (400, "INVALID_ARGUMENT"));
}

/// Disabling closes the account's open connections with ACCOUNT_DISABLED
/// and refuses its logins and tokens with that code; enabling allows
/// logins again while the old sessions stay revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_accounts_are_shut_out_until_enabled() {
    let server = admin_server();
    let url = server.tcp_url();
    let token = register_and_login(&url, "alice").await;
    let other = login(&url, "alice", "phone").await;
    let c1 = connect(&url, &token).await;
    let c2 = connect(&url, &other).await;
    register_and_login(&url, "bob").await;

    let (s, v) = admin(&server, "POST", "/admin/v1/users/alice/disable", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["disabled"], json!(true));
    for c in [&c1, &c2] {
        assert_eq!(goodbye(c).await.code, ErrorCode::AccountDisabled as i32);
    }
    refused_login(&url, "alice", PASSWORD, ErrorCode::AccountDisabled).await;
    // A wrong password does not learn that the account is disabled.
    refused_login(
        &url,
        "alice",
        "wrong password",
        ErrorCode::InvalidCredentials,
    )
    .await;
    refused_token(&url, &token, ErrorCode::AccountDisabled).await;
    let (s, v) = admin(
        &server,
        "POST",
        "/admin/v1/messages",
        Some(json!({"from": "alice", "to_user": "bob", "text": "hi"})),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "ACCOUNT_DISABLED"));
    // The goodbye reaches the client before the server has dropped the
    // connection from its registry.
    let v = user_when_online(&server, "alice", 0).await;
    assert_eq!(
        (v["disabled"].clone(), v["online_connections"].clone()),
        (json!(true), json!(0))
    );

    let (s, v) = admin(&server, "POST", "/admin/v1/users/alice/enable", None).await;
    assert_eq!((s, v["disabled"].clone()), (200, json!(false)));
    refused_token(&url, &token, ErrorCode::TokenRevoked).await;
    let fresh = login(&url, "alice", "again").await;
    connect(&url, &fresh).await.ping().await.unwrap();

    let (s, v) = admin(&server, "POST", "/admin/v1/users/nobody/disable", None).await;
    assert_eq!((s, code(&v)), (404, "USER_NOT_FOUND"));
}

/// A new password replaces the old one at once (sessions stay); revoking
/// sessions closes every open connection with TOKEN_REVOKED and kills the
/// tokens, and counts the sessions it revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_reset_and_session_revocation() {
    let server = admin_server();
    let url = server.tcp_url();
    let t1 = register_and_login(&url, "alice").await;
    let t2 = login(&url, "alice", "phone").await;
    let c1 = connect(&url, &t1).await;

    let (s, v) = admin(
        &server,
        "POST",
        "/admin/v1/users/alice/password",
        Some(json!({"password": "a brand new password"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    refused_login(&url, "alice", PASSWORD, ErrorCode::InvalidCredentials).await;
    let c = anon(&url).await;
    let t3 = c
        .login("alice", "a brand new password", "tablet")
        .await
        .unwrap()
        .token;
    c.close().await;
    c1.ping().await.expect("sessions outlive a password reset");
    let c2 = connect(&url, &t2).await;
    let c3 = connect(&url, &t3).await;
    let (s, v) = admin(
        &server,
        "POST",
        "/admin/v1/users/alice/password",
        Some(json!({"password": "short"})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "INVALID_PASSWORD"));

    let (s, v) = admin(
        &server,
        "POST",
        "/admin/v1/users/alice/revoke-sessions",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["revoked_sessions"], json!(3));
    for c in [&c1, &c2, &c3] {
        assert_eq!(goodbye(c).await.code, ErrorCode::TokenRevoked as i32);
    }
    for t in [&t1, &t2, &t3] {
        refused_token(&url, t, ErrorCode::TokenRevoked).await;
    }
    let (_, v) = admin(
        &server,
        "POST",
        "/admin/v1/users/alice/revoke-sessions",
        None,
    )
    .await;
    assert_eq!(v["revoked_sessions"], json!(0));
    // The account itself is fine.
    let c = anon(&url).await;
    c.login("alice", "a brand new password", "laptop")
        .await
        .unwrap();
}

/// Waits for a sync push, then syncs from `key`; returns the new events
/// and key.
async fn next_events(c: &Connection, key: &[u8]) -> (Vec<v1::Event>, Vec<u8>) {
    next_sync_push(c).await;
    sync_all(c, key).await
}

/// The group changes among `events`: kind, actor id and member names.
fn changes(events: &[v1::Event]) -> Vec<(v1::GroupChangeKind, u64, Vec<String>)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::GroupChange(c)) => Some((
                v1::GroupChangeKind::try_from(c.kind).unwrap(),
                c.actor_id,
                c.members.iter().map(|m| m.username.clone()).collect(),
            )),
            _ => None,
        })
        .collect()
}

/// A group created for an owner, members added and removed, then
/// dissolved, all by the administrator with the owner's authority: every
/// change reaches the members' devices (the administrator's as actor 0),
/// the member list pages, and the owner cannot be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_managed_by_the_administrator() {
    use v1::GroupChangeKind as K;
    let server = admin_server();
    let url = server.tcp_url();
    let names = ["owner", "mem1", "mem2", "mem3", "mem4"].map(String::from);
    register_many(&url, &names).await;
    let m1 = connect(&url, &login(&url, "mem1", "test").await).await;
    let (_, key) = sync_all(&m1, &[]).await;

    let (s, g) = admin(
        &server,
        "POST",
        "/admin/v1/groups",
        Some(json!({
            "name": "ops", "description": "run by the admin", "owner": "owner",
            "members": ["mem1", "mem2"],
            "settings": {"post_policy": "admins", "add_policy": "admins", "max_members": 10}
        })),
    )
    .await;
    assert_eq!(s, 201, "{g}");
    assert_eq!(g["owner_username"], json!("owner"));
    assert_eq!(g["member_count"], json!(3));
    assert_eq!(g["settings"]["post_policy"], json!("admins"));
    let id = g["id"].as_u64().unwrap();
    let conv = g["conversation_id"].as_str().unwrap().to_string();
    assert_eq!(conv, format!("g:{id}"));
    let (events, key) = next_events(&m1, &key).await;
    let owner_id = g["owner_id"].as_u64().unwrap();
    assert_eq!(
        changes(&events),
        [(
            K::Created,
            owner_id,
            vec!["owner".into(), "mem1".into(), "mem2".into()]
        )]
    );

    let (s, v) = admin(
        &server,
        "POST",
        &format!("/admin/v1/groups/{id}/members"),
        Some(json!({"usernames": ["mem3", "mem4", "mem1"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["group"]["member_count"], json!(5));
    assert_eq!(
        v["members"].as_array().unwrap().len(),
        2,
        "mem1 was in already"
    );
    let (events, key) = next_events(&m1, &key).await;
    assert_eq!(
        changes(&events),
        [(K::MembersAdded, 0, vec!["mem3".into(), "mem4".into()])]
    );

    let (s, v) = admin(
        &server,
        "DELETE",
        &format!("/admin/v1/groups/{conv}/members/mem2"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["members"][0]["role"], json!("none"));
    let (events, key) = next_events(&m1, &key).await;
    assert_eq!(
        changes(&events),
        [(K::MembersRemoved, 0, vec!["mem2".into()])]
    );

    let (s, v) = admin(
        &server,
        "DELETE",
        &format!("/admin/v1/groups/{id}/members/owner"),
        None,
    )
    .await;
    assert_eq!((s, code(&v)), (403, "FORBIDDEN"));
    let (s, v) = admin(
        &server,
        "DELETE",
        &format!("/admin/v1/groups/{id}/members/mem2"),
        None,
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (400, "INVALID_ARGUMENT"),
        "not a member any more"
    );

    let mut members = Vec::new();
    let mut after = 0;
    loop {
        let (s, v) = admin(
            &server,
            "GET",
            &format!("/admin/v1/groups/{id}/members?after_id={after}&limit=2"),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        for m in v["members"].as_array().unwrap() {
            members.push((
                m["user_id"].as_u64().unwrap(),
                m["username"].as_str().unwrap().to_string(),
                m["role"].as_str().unwrap().to_string(),
            ));
        }
        match v["next_after_id"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert!(members.windows(2).all(|w| w[0].0 < w[1].0), "in id order");
    let mut roles: Vec<(&str, &str)> = members
        .iter()
        .map(|(_, n, r)| (n.as_str(), r.as_str()))
        .collect();
    roles.sort();
    assert_eq!(
        roles,
        [
            ("mem1", "member"),
            ("mem3", "member"),
            ("mem4", "member"),
            ("owner", "owner")
        ]
    );

    let (s, v) = admin(
        &server,
        "POST",
        &format!("/admin/v1/groups/{id}/dissolve"),
        None,
    )
    .await;
    assert_eq!((s, v["dissolved"].clone()), (200, json!(true)), "{v}");
    let (events, _) = next_events(&m1, &key).await;
    assert_eq!(changes(&events), [(K::Dissolved, 0, vec![])]);
    let (s, v) = admin(
        &server,
        "POST",
        &format!("/admin/v1/groups/{id}/dissolve"),
        None,
    )
    .await;
    assert_eq!((s, code(&v)), (403, "FORBIDDEN"));
    let (s, v) = admin(
        &server,
        "POST",
        &format!("/admin/v1/groups/{id}/members"),
        Some(json!({"usernames": ["mem2"]})),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "FORBIDDEN"));
    let (_, v) = admin(&server, "GET", &format!("/admin/v1/groups/{conv}"), None).await;
    assert_eq!(
        (v["dissolved"].clone(), v["member_count"].clone()),
        (json!(true), json!(4))
    );

    for (method, path, body) in [
        ("GET", "/admin/v1/groups/99".to_string(), None),
        ("GET", "/admin/v1/groups/g:0".to_string(), None),
        ("GET", "/admin/v1/groups/banana".to_string(), None),
        ("POST", "/admin/v1/groups/99/dissolve".to_string(), None),
        ("GET", "/admin/v1/groups/99/members".to_string(), None),
        (
            "POST",
            "/admin/v1/groups/99/members".to_string(),
            Some(json!({"usernames": ["mem1"]})),
        ),
    ] {
        let (s, v) = admin(&server, method, &path, body).await;
        assert_eq!((s, code(&v)), (404, "CONVERSATION_NOT_FOUND"), "{path}");
    }
    let (s, v) = admin(
        &server,
        "POST",
        "/admin/v1/groups",
        Some(json!({"name": "x", "owner": "nobody"})),
    )
    .await;
    assert_eq!((s, code(&v)), (404, "USER_NOT_FOUND"));
    let (s, v) = admin(
        &server,
        "POST",
        "/admin/v1/groups",
        Some(json!({"name": "x", "owner": "owner", "members": ["mem1", "ghost"]})),
    )
    .await;
    assert_eq!((s, code(&v)), (404, "USER_NOT_FOUND"));
    let (s, v) = admin(
        &server,
        "POST",
        "/admin/v1/groups",
        Some(json!({"name": "", "owner": "owner"})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "INVALID_ARGUMENT"));
}

/// A bot account created by the administrator messages a user directly
/// and posts in a group it belongs to; the recipients' devices get the
/// messages from the bot; a retry with the same client_msg_id stores
/// nothing new; the bot's own rules (membership) still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_as_a_bot_reach_recipients() {
    let server = admin_server();
    let url = server.tcp_url();
    let (s, _) = admin(
        &server,
        "POST",
        "/admin/v1/users",
        Some(json!({"username": "newsbot", "password": PASSWORD})),
    )
    .await;
    assert_eq!(s, 201);
    let alice = connect(&url, &register_and_login(&url, "alice").await).await;
    let (_, key) = sync_all(&alice, &[]).await;

    let msg = json!({"from": "newsbot", "to_user": "alice", "text": "good morning", "client_msg_id": "news-1"});
    let (s, first) = admin(&server, "POST", "/admin/v1/messages", Some(msg.clone())).await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["duplicate"], json!(false));
    let (events, key) = next_events(&alice, &key).await;
    let got: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::Message(m)) => Some((
                m.sender_username.clone(),
                m.content.clone().unwrap_or_default().text,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(got, [("newsbot".to_string(), "good morning".to_string())]);
    let (s, again) = admin(&server, "POST", "/admin/v1/messages", Some(msg)).await;
    assert_eq!(s, 200);
    assert_eq!(again["duplicate"], json!(true));
    assert_eq!(again["conv_seq"], first["conv_seq"]);

    // A group with the bot in it.
    let group = alice
        .create_group("news", "", &["newsbot"], None)
        .await
        .unwrap();
    let (_, key) = sync_all(&alice, &key).await;
    let (s, v) = admin(
        &server,
        "POST",
        "/admin/v1/messages",
        Some(json!({"from": "newsbot", "conversation_id": group.conversation_id, "text": "headline"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (events, _) = next_events(&alice, &key).await;
    assert_eq!(texts(&events), ["headline"]);
    // Without client_msg_id every request is a new message.
    let (_, v2) = admin(
        &server,
        "POST",
        "/admin/v1/messages",
        Some(json!({"from": "newsbot", "conversation_id": group.conversation_id, "text": "headline"})),
    )
    .await;
    assert_eq!(
        v2["conv_seq"].as_u64(),
        v["conv_seq"].as_u64().map(|n| n + 1)
    );

    // Alice answers the bot like anyone else.
    alice
        .send("reply-1", to_user("newsbot"), content("thanks"))
        .await
        .unwrap();

    let other = alice.create_group("private", "", &[], None).await.unwrap();
    let cases = [
        (
            json!({"from": "newsbot", "conversation_id": other.conversation_id, "text": "x"}),
            403,
            "FORBIDDEN",
        ),
        (
            json!({"from": "newsbot", "to_user": "alice", "conversation_id": "g:1", "text": "x"}),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            json!({"from": "newsbot", "text": "x"}),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            json!({"from": "newsbot", "to_user": "alice", "text": ""}),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            json!({"from": "ghost", "to_user": "alice", "text": "x"}),
            404,
            "USER_NOT_FOUND",
        ),
        (
            json!({"from": "newsbot", "to_user": "ghost", "text": "x"}),
            404,
            "USER_NOT_FOUND",
        ),
        (
            json!({"from": "newsbot", "conversation_id": "g:999", "text": "x"}),
            404,
            "CONVERSATION_NOT_FOUND",
        ),
        (
            json!({"from": "newsbot", "to_user": "alice", "text": "x".repeat(70_000)}),
            413,
            "MESSAGE_TOO_LARGE",
        ),
    ];
    for (body, status, expected) in cases {
        let (s, v) = admin(&server, "POST", "/admin/v1/messages", Some(body)).await;
        assert_eq!((s, code(&v)), (status, expected), "{v}");
    }
}

/// Statistics count accounts, groups, connections and commits as they
/// change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_follow_activity() {
    let server = admin_server();
    let url = server.tcp_url();
    let (s, before) = admin(&server, "GET", "/admin/v1/stats", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        (before["users"].clone(), before["groups"].clone()),
        (json!(0), json!(0))
    );
    let alice = connect(&url, &register_and_login(&url, "alice").await).await;
    register_and_login(&url, "bob").await;
    alice.create_group("g", "", &["bob"], None).await.unwrap();
    let (_, after) = admin(&server, "GET", "/admin/v1/stats", None).await;
    assert_eq!(after["users"], json!(2));
    assert_eq!(after["groups"], json!(1));
    assert!(after["open_connections"].as_u64().unwrap() >= 1, "{after}");
    assert!(after["store_commits"].as_u64() > before["store_commits"].as_u64());
    assert!(after["store_jobs"].as_u64() > before["store_jobs"].as_u64());
}

/// Gray release end to end: a flag rolled out to an allow-list reaches only
/// that user, in the handshake and as a FlagsChanged event to a connected
/// device; at 100% it reaches everyone; removing it turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_flags_reach_the_right_users() {
    use pigeon_client::v1::event;
    let server = Server::start(&format!("admin_token = \"{TOKEN}\""));
    let url = server.tcp_url();
    let alice_token = register_and_login(&url, "alice").await;
    let bob = connect(&url, &register_and_login(&url, "bob").await).await;
    let (_, mut bob_key) = sync_all(&bob, &[]).await;
    let flags_of = |events: &[pigeon_client::v1::Event]| -> Option<Vec<String>> {
        events.iter().rev().find_map(|e| match &e.kind {
            Some(event::Kind::FlagsChanged(f)) => Some(f.enabled.clone()),
            _ => None,
        })
    };

    let (s, v) = admin(
        &server,
        "PUT",
        "/admin/v1/flags/new-composer",
        Some(json!({"percent": 0, "allow": ["alice"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["allow"][0], "alice");
    let alice = connect(&url, &alice_token).await;
    assert_eq!(alice.welcome().flags, vec!["new-composer".to_string()]);
    let (events, key) = sync_all(&bob, &bob_key).await;
    bob_key = key;
    assert_eq!(
        flags_of(&events),
        Some(Vec::new()),
        "bob is told, and his set is empty: {events:?}"
    );

    admin(
        &server,
        "PUT",
        "/admin/v1/flags/new-composer",
        Some(json!({"percent": 100})),
    )
    .await;
    let push = next_sync_push(&bob).await;
    assert!(
        matches!(push, pigeon_client::v1::frame::Body::SyncNotice(_)),
        "{push:?}"
    );
    let (events, key) = sync_all(&bob, &bob_key).await;
    bob_key = key;
    assert_eq!(flags_of(&events), Some(vec!["new-composer".to_string()]));
    let (_, list) = admin(&server, "GET", "/admin/v1/flags", None).await;
    assert_eq!(list["flags"][0]["percent"], 100);

    let (s, _) = admin(&server, "DELETE", "/admin/v1/flags/new-composer", None).await;
    assert_eq!(s, 200);
    let (events, _) = sync_all(&bob, &bob_key).await;
    assert_eq!(flags_of(&events), Some(Vec::new()));
    let (s, v) = admin(
        &server,
        "PUT",
        "/admin/v1/flags/Bad%20Name",
        Some(json!({"percent": 5})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "INVALID_ARGUMENT"));
    let (s, v) = admin(
        &server,
        "PUT",
        "/admin/v1/flags/ok",
        Some(json!({"percent": 101})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "INVALID_ARGUMENT"));
}
