//! The web chat app on the HTTP port: the page, its hashed assets, cache
//! headers, the fallback for app routes, and that API routes stay theirs.

mod common;

use common::*;

/// One HTTP/1.1 exchange; returns the status, the raw header block (lower
/// case) and the body.
async fn fetch(addr: &str, method: &str, path: &str, extra: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    within(s.read_to_end(&mut raw)).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_lowercase(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

/// Fetches `/`, the script it names and an app route from the real binary:
/// status, content type and cache headers; a conditional GET answers 304;
/// `/healthz`, `/metrics`, `/v1/endpoints`, `/openapi.json`, `/admin/…` and
/// `/ws` keep their own answers; missing files and unknown API paths are 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_app_without_shadowing_the_api() {
    let server = Server::start("");
    let addr = &server.http;

    let (status, head, page) = fetch(addr, "GET", "/", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(header(&head, "cache-control"), Some("no-cache"));
    assert!(header(&head, "content-security-policy").is_some());
    assert!(page.contains("<div id=\"app\">"), "{page}");

    // The page's script, by the hashed name it refers to.
    let script = page
        .split('"')
        .find(|s| s.starts_with("/assets/") && s.ends_with(".js"))
        .expect("index.html names a script under /assets/")
        .to_string();
    let (status, head, body) = fetch(addr, "GET", &script, "").await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        header(&head, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert!(body.len() > 1000);
    let etag = header(&head, "etag").unwrap().to_string();
    let (status, _, body) =
        fetch(addr, "GET", &script, &format!("If-None-Match: {etag}\r\n")).await;
    assert_eq!((status, body.as_str()), (304, ""));
    let (status, head, body) = fetch(addr, "HEAD", &script, "").await;
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert!(
        header(&head, "content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 1000
    );

    // App routes get the page; missing files do not.
    let (status, head, body) = fetch(addr, "GET", "/c/d:1:2", "").await;
    assert_eq!(status, 200);
    assert!(
        header(&head, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(body, page);
    assert_eq!(fetch(addr, "GET", "/assets/nope-123.js", "").await.0, 404);
    assert_eq!(fetch(addr, "GET", "/robots.txt", "").await.0, 404);
    assert_eq!(
        fetch(addr, "POST", "/", "Content-Length: 0\r\n").await.0,
        405
    );

    // The API keeps its routes, and unknown API paths are not the page.
    let (status, _, body) = fetch(addr, "GET", "/healthz", "").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(http_get(addr, "/readyz").await, (200, "ready".to_string()));
    let (status, head, body) = fetch(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        header(&head, "content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(body.contains("pigeon_open_connections"));
    let (status, _, body) = fetch(addr, "GET", "/v1/endpoints", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"endpoints\""), "{body}");
    let (status, _, body) = fetch(addr, "GET", "/openapi.json", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"openapi\""));
    let (status, _, body) = fetch(addr, "GET", "/admin/v1/users", "").await;
    assert_eq!(status, 401, "the admin API answers, not the page: {body}");
    for path in ["/v1/nothing", "/v1", "/healthz/x", "/ws/x", "/metrics/x"] {
        let (status, _, body) = fetch(addr, "GET", path, "").await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("<html"), "{path}");
    }
    // /ws is still the WebSocket endpoint: a plain GET is refused by the
    // upgrade extractor rather than answered with the page.
    let (status, _, body) = fetch(addr, "GET", "/ws", "").await;
    assert!((400..500).contains(&status), "{status}");
    assert!(!body.contains("<html"));
    let url = server.ws_url();
    register_and_login(&url, "webber").await;
}

/// With `web_app = false` the page is gone and the API is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_can_be_turned_off() {
    let server = Server::start("web_app = false");
    assert_eq!(http_get(&server.http, "/").await.0, 404);
    assert_eq!(http_get(&server.http, "/c/d:1:2").await.0, 404);
    assert_eq!(http_get(&server.http, "/healthz").await.0, 200);
}
