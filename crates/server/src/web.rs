//! The web chat app (`web/`), embedded at build time from `web-dist/` by
//! `build.rs` and served on the HTTP port as the router's fallback, so it
//! never shadows `/ws`, the health and metrics routes, `/v1/…`, `/admin/…`
//! or `/openapi.json`. Hashed files under `assets/` are cached for good;
//! `index.html` is revalidated on every load, so a new server version is
//! picked up at the next reload.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// `(path below web-dist/, content type, ETag, bytes)` of every embedded file.
static ASSETS: &[(&str, &str, &str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// Paths owned by the server's other routes: below them an unknown path is a
/// 404, never the app's page (a client probing an API must not get HTML).
const RESERVED_PREFIXES: &[&str] = &[
    "/ws",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1",
    "/admin",
    "/openapi.json",
];

/// Files whose names carry a content hash (Vite's output) and so never change.
const IMMUTABLE_PREFIX: &str = "assets/";
const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
const CACHE_REVALIDATE: &str = "no-cache";
/// The page loads only its own scripts and styles and talks only to its own
/// origin (`/ws`; CSP 'self' covers ws: and wss: on the same host).
const INDEX_CSP: &str = "default-src 'self'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// What a request path resolves to.
#[derive(Debug, PartialEq, Eq)]
enum Resolved {
    /// An embedded file, by its index in [`ASSETS`].
    File(usize),
    /// Nothing: 404.
    NotFound,
}

/// Maps a request path to an embedded file: the file itself, `index.html`
/// for `/` and for app routes (paths without a file extension, outside
/// `assets/` and the reserved prefixes), else nothing.
fn resolve(path: &str) -> Resolved {
    let reserved = RESERVED_PREFIXES.iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    });
    if reserved {
        return Resolved::NotFound;
    }
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    if let Some(i) = ASSETS.iter().position(|(p, ..)| *p == rel) {
        return Resolved::File(i);
    }
    let last = rel.rsplit('/').next().unwrap_or_default();
    if rel.starts_with(IMMUTABLE_PREFIX) || last.contains('.') {
        // A missing script or image must not be answered with the page.
        return Resolved::NotFound;
    }
    match ASSETS.iter().position(|(p, ..)| *p == "index.html") {
        Some(i) => Resolved::File(i),
        None => Resolved::NotFound,
    }
}

/// The fallback handler: serves the web app.
pub(crate) async fn serve(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
            "method not allowed\n",
        )
            .into_response();
    }
    let Resolved::File(i) = resolve(uri.path()) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let (path, content_type, etag, bytes) = ASSETS[i];
    let cache = if path.starts_with(IMMUTABLE_PREFIX) {
        CACHE_IMMUTABLE
    } else {
        CACHE_REVALIDATE
    };
    let mut out = HeaderMap::new();
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    out.insert(header::ETAG, HeaderValue::from_static(etag));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if path == "index.html" {
        out.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(INDEX_CSP),
        );
        out.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if fresh {
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // For HEAD, hyper sends the headers (Content-Length included) and drops
    // the body.
    (out, bytes).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the path rules on the embedded copy: `/` and app routes give
    /// the page, files give themselves, reserved prefixes and missing files
    /// give nothing.
    #[test]
    fn paths_resolve_to_the_page_files_or_nothing() {
        let index = ASSETS
            .iter()
            .position(|(p, ..)| *p == "index.html")
            .expect("web-dist/ holds index.html (run npm run build in web/)");
        assert_eq!(resolve("/"), Resolved::File(index));
        assert_eq!(resolve("/index.html"), Resolved::File(index));
        assert_eq!(resolve("/c/d:1:2"), Resolved::File(index));
        assert_eq!(resolve("/login"), Resolved::File(index));
        let (asset, ..) = ASSETS
            .iter()
            .find(|(p, ..)| p.starts_with(IMMUTABLE_PREFIX) && p.ends_with(".js"))
            .expect("a hashed script under assets/");
        assert!(matches!(resolve(&format!("/{asset}")), Resolved::File(i) if i != index));
        for path in [
            "/ws",
            "/ws/x",
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1",
            "/v1/nothing",
            "/admin",
            "/admin/v1/users",
            "/openapi.json",
            "/assets/missing-123.js",
            "/favicon-missing.ico",
        ] {
            assert_eq!(resolve(path), Resolved::NotFound, "{path}");
        }
        // Only whole segments are reserved.
        assert_eq!(resolve("/wsx"), Resolved::File(index));
        assert_eq!(resolve("/v1x"), Resolved::File(index));
    }

    /// Every embedded file has a content type a browser accepts for it.
    #[test]
    fn content_types_match_extensions() {
        for (path, ty, etag, _) in ASSETS {
            assert!(etag.starts_with('"') && etag.ends_with('"'), "{path}");
            if path.ends_with(".js") {
                assert!(ty.starts_with("text/javascript"), "{path}: {ty}");
            } else if path.ends_with(".css") {
                assert!(ty.starts_with("text/css"), "{path}: {ty}");
            } else if path.ends_with(".html") {
                assert!(ty.starts_with("text/html"), "{path}: {ty}");
            }
        }
    }
}
