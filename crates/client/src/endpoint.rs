//! Server URLs: `tcp://host[:port]` (length-prefixed frames) and
//! `ws://host[:port][/path]` (one binary WebSocket message per frame), and
//! their TLS forms `tls://` and `wss://` (the same framing inside TLS, the
//! certificate checked against the host).

use crate::error::ClientError;

/// The TCP port a `tcp://` or `tls://` URL without a port uses.
pub(crate) const TCP_PORT_DEFAULT: u16 = 7700;
/// The HTTP port a `ws://` or `wss://` URL without a port uses.
pub(crate) const WS_PORT_DEFAULT: u16 = 7780;
/// The WebSocket path a `ws://` or `wss://` URL without a path uses.
pub(crate) const WS_PATH_DEFAULT: &str = "/ws";
/// Longest URL accepted; anything longer is a mistake, not a server.
const URL_BYTES_MAX: usize = 2048;

/// Where and how to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `host:port` to open a TCP connection to (IPv6 hosts in brackets).
    pub(crate) addr: String,
    /// With TLS, the name the server's certificate must be valid for: the
    /// URL's host (an IPv6 address without its brackets).
    pub(crate) tls_name: Option<String>,
    /// How frames are delimited on the connection.
    pub(crate) framing: Framing,
}

/// How frames are delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Framing {
    /// A 4-byte length prefix per frame.
    Prefixed,
    /// One binary WebSocket message per frame; `url` is the full
    /// `ws://` or `wss://host:port/path` to request.
    WebSocket { url: String },
}

impl Endpoint {
    /// Parses a server URL, filling in the default port and WebSocket path.
    pub(crate) fn parse(url: &str) -> Result<Endpoint, ClientError> {
        let bad = |why: &str| ClientError::InvalidUrl(format!("{url:?}: {why}"));
        if url.len() > URL_BYTES_MAX {
            return Err(bad("too long"));
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("contains whitespace"));
        }
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad("expected tcp://host:port or ws://host:port/ws (or tls://, wss://)")
        })?;
        let scheme = scheme.to_ascii_lowercase();
        let (authority, path) = split_authority(rest);
        let (tls, websocket) = match scheme.as_str() {
            "tcp" => (false, false),
            "tls" => (true, false),
            "ws" => (false, true),
            "wss" => (true, true),
            _ => {
                return Err(bad(
                    "unknown scheme; expected tcp://, tls://, ws:// or wss://",
                ));
            }
        };
        let port_default = if websocket {
            WS_PORT_DEFAULT
        } else {
            TCP_PORT_DEFAULT
        };
        let (host, port) = parse_authority(authority, port_default).map_err(bad)?;
        let framing = if websocket {
            let path = if path.is_empty() {
                WS_PATH_DEFAULT
            } else {
                path
            };
            Framing::WebSocket {
                url: format!("{scheme}://{host}:{port}{path}"),
            }
        } else {
            if !(path.is_empty() || path == "/") {
                return Err(bad("a tcp:// or tls:// URL has no path"));
            }
            Framing::Prefixed
        };
        let tls_name = tls.then(|| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        });
        Ok(Endpoint {
            addr: format!("{host}:{port}"),
            tls_name,
            framing,
        })
    }
}

/// Splits `host:port/path?q` into the authority and the rest (starting at `/` or `?`).
fn split_authority(rest: &str) -> (&str, &str) {
    match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    }
}

/// Parses `host`, `host:port`, `[v6]` or `[v6]:port`; returns the host (v6
/// in brackets) and the port.
fn parse_authority(authority: &str, port_default: u16) -> Result<(&str, u16), &'static str> {
    if authority.contains('@') {
        return Err("user info is not supported");
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or("unclosed '[' in host")?;
        let host = &authority[..=end];
        match &authority[end + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or("junk after ']'")?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err("missing host");
    }
    if !host.starts_with('[') && host.contains(':') {
        return Err("an IPv6 host must be in brackets");
    }
    let port = match port {
        None => port_default,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 => n,
            _ => return Err("bad port"),
        },
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: &str) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            tls_name: None,
            framing: Framing::Prefixed,
        }
    }

    fn tls(addr: &str, name: &str) -> Endpoint {
        Endpoint {
            tls_name: Some(name.into()),
            ..tcp(addr)
        }
    }

    fn ws(addr: &str, url: &str) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            tls_name: None,
            framing: Framing::WebSocket { url: url.into() },
        }
    }

    fn wss(addr: &str, name: &str, url: &str) -> Endpoint {
        Endpoint {
            tls_name: Some(name.into()),
            ..ws(addr, url)
        }
    }

    /// Checks well-formed URLs parse, with default ports and path filled in,
    /// and the TLS forms carry the host as the certificate name.
    #[test]
    fn parses_tcp_and_ws_urls() {
        let cases = [
            ("tcp://127.0.0.1:7700", tcp("127.0.0.1:7700")),
            ("tcp://example.org", tcp("example.org:7700")),
            ("TCP://example.org:1/", tcp("example.org:1")),
            ("tcp://[::1]:9000", tcp("[::1]:9000")),
            ("tcp://[::1]", tcp("[::1]:7700")),
            (
                "ws://localhost:7780/ws",
                ws("localhost:7780", "ws://localhost:7780/ws"),
            ),
            (
                "ws://localhost",
                ws("localhost:7780", "ws://localhost:7780/ws"),
            ),
            (
                "ws://h:80/custom/path?x=1",
                ws("h:80", "ws://h:80/custom/path?x=1"),
            ),
            ("ws://[::1]:7780/ws", ws("[::1]:7780", "ws://[::1]:7780/ws")),
            (
                "tls://chat.example.org",
                tls("chat.example.org:7700", "chat.example.org"),
            ),
            ("TLS://127.0.0.1:9/", tls("127.0.0.1:9", "127.0.0.1")),
            ("tls://[::1]:9000", tls("[::1]:9000", "::1")),
            (
                "wss://chat.example.org",
                wss(
                    "chat.example.org:7780",
                    "chat.example.org",
                    "wss://chat.example.org:7780/ws",
                ),
            ),
            ("wss://h:443/p", wss("h:443", "h", "wss://h:443/p")),
            (
                "wss://[::1]",
                wss("[::1]:7780", "::1", "wss://[::1]:7780/ws"),
            ),
        ];
        for (url, want) in cases {
            assert_eq!(Endpoint::parse(url).unwrap(), want, "{url}");
        }
    }

    /// Checks malformed or unsupported URLs are refused with InvalidUrl.
    #[test]
    fn refuses_bad_urls() {
        let bad = [
            "",
            "127.0.0.1:7700",
            "http://h:1",
            "https://h:1",
            "tls://h:1/path",
            "wss://",
            "wss://u@h/ws",
            "tcp://",
            "tcp://:7700",
            "tcp://h:0",
            "tcp://h:70000",
            "tcp://h:x",
            "tcp://h:1/path",
            "tcp://::1:7700",
            "tcp://[::1",
            "tcp://[::1]x",
            "tcp://u@h:1",
            "tcp://h :1",
        ];
        for url in bad {
            assert!(
                matches!(Endpoint::parse(url), Err(ClientError::InvalidUrl(_))),
                "{url:?} should be refused"
            );
        }
        assert!(Endpoint::parse(&format!("tcp://{}", "a".repeat(3000))).is_err());
    }
}
