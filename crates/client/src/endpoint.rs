//! Server URLs: `tcp://host[:port]` (length-prefixed frames) and
//! `ws://host[:port][/path]` (one binary WebSocket message per frame).

use crate::error::ClientError;

/// The TCP port a `tcp://` URL without a port uses.
pub(crate) const TCP_PORT_DEFAULT: u16 = 7700;
/// The HTTP port a `ws://` URL without a port uses.
pub(crate) const WS_PORT_DEFAULT: u16 = 7780;
/// The WebSocket path a `ws://` URL without a path uses.
pub(crate) const WS_PATH_DEFAULT: &str = "/ws";
/// Longest URL accepted; anything longer is a mistake, not a server.
const URL_BYTES_MAX: usize = 2048;

/// Where and how to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// A TCP stream; `addr` is `host:port` (IPv6 hosts in brackets).
    Tcp { addr: String },
    /// A WebSocket; `url` is the full `ws://host:port/path` to request.
    Ws { url: String },
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
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected tcp://host:port or ws://host:port/ws"))?;
        match scheme.to_ascii_lowercase().as_str() {
            "tcp" => {
                let (authority, path) = split_authority(rest);
                if !(path.is_empty() || path == "/") {
                    return Err(bad("a tcp:// URL has no path"));
                }
                let (host, port) = parse_authority(authority, TCP_PORT_DEFAULT).map_err(bad)?;
                Ok(Endpoint::Tcp {
                    addr: format!("{host}:{port}"),
                })
            }
            "ws" => {
                let (authority, path) = split_authority(rest);
                let (host, port) = parse_authority(authority, WS_PORT_DEFAULT).map_err(bad)?;
                let path = if path.is_empty() {
                    WS_PATH_DEFAULT
                } else {
                    path
                };
                Ok(Endpoint::Ws {
                    url: format!("ws://{host}:{port}{path}"),
                })
            }
            "wss" => Err(bad(
                "wss:// (TLS) is not supported by this client; use a TLS-terminating proxy's plain side",
            )),
            _ => Err(bad("unknown scheme; expected tcp:// or ws://")),
        }
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
        Endpoint::Tcp { addr: addr.into() }
    }

    fn ws(url: &str) -> Endpoint {
        Endpoint::Ws { url: url.into() }
    }

    /// Checks well-formed URLs parse, with default ports and path filled in.
    #[test]
    fn parses_tcp_and_ws_urls() {
        let cases = [
            ("tcp://127.0.0.1:7700", tcp("127.0.0.1:7700")),
            ("tcp://example.org", tcp("example.org:7700")),
            ("TCP://example.org:1/", tcp("example.org:1")),
            ("tcp://[::1]:9000", tcp("[::1]:9000")),
            ("tcp://[::1]", tcp("[::1]:7700")),
            ("ws://localhost:7780/ws", ws("ws://localhost:7780/ws")),
            ("ws://localhost", ws("ws://localhost:7780/ws")),
            ("ws://h:80/custom/path?x=1", ws("ws://h:80/custom/path?x=1")),
            ("ws://[::1]:7780/ws", ws("ws://[::1]:7780/ws")),
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
            "wss://h/ws",
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
