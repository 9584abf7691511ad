//! The WebSocket seen through the small browser-style interface both the
//! browser's `WebSocket` and the `ws` package's implement: one binary
//! message per frame, no length prefix (protocol §2.2).

import { PigeonError } from "./errors.js";

/**
 * The part of a browser-style WebSocket the SDK uses. The browser's
 * `WebSocket` and the `ws` package's class both fit.
 */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  // `any`: the event types differ between implementations (DOM, ws).
  /* eslint-disable @typescript-eslint/no-explicit-any */
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  /* eslint-enable @typescript-eslint/no-explicit-any */
}

/** A WebSocket class such as the browser's `WebSocket` or `ws`'s default export. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;
/** A function opening a WebSocket to `url`. */
export type WebSocketFactory = (url: string) => WebSocketLike;

/** `WebSocket.OPEN` (the same number everywhere). */
const WS_OPEN = 1;

/** Opens a WebSocket with the given constructor or factory, else the global `WebSocket`. */
export function openWebSocket(url: string, ws: WebSocketConstructor | WebSocketFactory | undefined): WebSocketLike {
  const impl = ws ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (impl === undefined) {
    throw new PigeonError(
      "transport",
      "no WebSocket implementation: pass options.webSocket (in Node 20, the `ws` package's WebSocket)",
    );
  }
  // A class has a prototype with `send`; a factory (arrow or plain function) does not.
  const proto = (impl as { prototype?: { send?: unknown } }).prototype;
  const socket =
    proto !== undefined && typeof proto.send === "function"
      ? new (impl as WebSocketConstructor)(url)
      : (impl as WebSocketFactory)(url);
  socket.binaryType = "arraybuffer";
  return socket;
}

export function isOpen(socket: WebSocketLike): boolean {
  return socket.readyState === WS_OPEN;
}

/**
 * The bytes of a received message, or undefined for a text message (a
 * protocol violation: frames are binary).
 */
export function messageBytes(data: unknown): Uint8Array | undefined {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  // ws with binaryType "nodebuffer" and fragmented messages: a list of Buffers.
  if (Array.isArray(data) && data.every((d) => ArrayBuffer.isView(d))) {
    const parts = data as Uint8Array[];
    const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.byteLength;
    }
    return out;
  }
  return undefined;
}
