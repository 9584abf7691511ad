//! Pigeon's TypeScript SDK: connect over WebSocket (browsers, Node 20+), log
//! in, send messages with idempotent retries, and follow a user's sync log
//! with reconnects.
//!
//! Layout:
//! - `client.ts`: `PigeonClient`, the reconnecting client (sync loop,
//!   events, heartbeats, send retries, every other request forwarded).
//! - `connection.ts`: `Connection`, one live connection (handshake,
//!   requests matched by id with timeouts, the push queue).
//! - `events.ts`: the `PigeonEvent` union handed to handlers.
//! - `storage.ts`: where sync keys are kept (memory, localStorage).
//! - `transport.ts`: the browser-style WebSocket interface.
//! - `errors.ts`: `PigeonError`, the one error type.
//! - `backoff.ts`, `url.ts`, `timers.ts`: reconnect delays, URL parsing,
//!   timers and ids without DOM or Node types.
//! - `gen/`: the wire types, generated from `proto/` by protoc-gen-es.

export { PigeonClient, register, login, toTarget, toContent } from "./client.js";
export type { ClientOptions, To, ContentInit, SendOptions } from "./client.js";
export { Connection, PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX, CLIENT_NAME_DEFAULT } from "./connection.js";
export type { ConnectOptions, Body, BodyCase, BodyValue, BodyInit, Push, TargetInit, ContentValue, GroupSettingsInit, UpdateGroupInit } from "./connection.js";
export { PigeonError, codeName, codeFromWire } from "./errors.js";
export type { PigeonErrorKind } from "./errors.js";
export { toLogEvent } from "./events.js";
export type {
  PigeonEvent,
  PigeonEventType,
  PigeonEventOf,
  LogEvent,
  EventMeta,
  ConnectionState,
  GroupChangeKindName,
  Handler,
  AnyHandler,
} from "./events.js";
export { MemorySyncKeyStorage, LocalStorageSyncKeyStorage, base64Encode, base64Decode } from "./storage.js";
export type { SyncKeyStorage, WebStorageLike } from "./storage.js";
export type { WebSocketLike, WebSocketConstructor, WebSocketFactory } from "./transport.js";
export { Backoff } from "./backoff.js";
export { parseUrl } from "./url.js";
export { newClientMsgId } from "./timers.js";
export { unpackEvents, unpackFrame } from "./packing.js";
export * from "./gen/pigeon/v1/pigeon_pb.js";
