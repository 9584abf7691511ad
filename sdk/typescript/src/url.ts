//! Server URLs: `ws://host[:port][/path]` and `wss://...` (one binary
//! WebSocket message per frame). `tcp://` and `tls://` are the Rust SDK's
//! byte-stream transports, which a browser cannot open.

import { PigeonError } from "./errors.js";

/** The HTTP port a `ws://` or `wss://` URL without a port uses. */
export const WS_PORT_DEFAULT = 7780;
/** The WebSocket path a URL without a path uses. */
export const WS_PATH_DEFAULT = "/ws";
/** Longest URL accepted; anything longer is a mistake, not a server. */
const URL_BYTES_MAX = 2048;

/**
 * Parses a server URL and fills in the default port and path:
 * `ws://localhost` becomes `ws://localhost:7780/ws`. Throws a
 * `PigeonError` of kind `invalid-url` for anything else.
 */
export function parseUrl(url: string): string {
  const bad = (why: string) => new PigeonError("invalid-url", `invalid server url ${JSON.stringify(url)}: ${why}`);
  if (url.length > URL_BYTES_MAX) throw bad("too long");
  if (/[\s\u0000-\u001f\u007f]/.test(url)) throw bad("contains whitespace");
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)(.*)$/.exec(url);
  if (!m) throw bad("expected ws://host:port/ws or wss://host:port/ws");
  const scheme = m[1]!.toLowerCase();
  const authority = m[2]!;
  const rest = m[3]!;
  if (scheme === "tcp" || scheme === "tls") throw bad("tcp:// and tls:// need a byte-stream socket; use ws:// or wss://");
  if (scheme !== "ws" && scheme !== "wss") throw bad("unknown scheme; expected ws:// or wss://");
  if (authority.includes("@")) throw bad("user info is not supported");
  let host: string;
  let port: string | undefined;
  if (authority.startsWith("[")) {
    const end = authority.indexOf("]");
    if (end < 0) throw bad("unclosed '[' in host");
    host = authority.slice(0, end + 1);
    const after = authority.slice(end + 1);
    if (after !== "") {
      if (!after.startsWith(":")) throw bad("junk after ']'");
      port = after.slice(1);
    }
  } else {
    const colon = authority.lastIndexOf(":");
    if (colon >= 0) {
      host = authority.slice(0, colon);
      port = authority.slice(colon + 1);
    } else {
      host = authority;
    }
  }
  if (host === "" || host === "[]") throw bad("missing host");
  let portNumber = WS_PORT_DEFAULT;
  if (port !== undefined) {
    if (!/^[0-9]{1,5}$/.test(port)) throw bad("bad port");
    portNumber = Number(port);
    if (portNumber === 0 || portNumber > 65535) throw bad("bad port");
  }
  const path = rest === "" ? WS_PATH_DEFAULT : rest;
  return `${scheme}://${host}:${portNumber}${path}`;
}
