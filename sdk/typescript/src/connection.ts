//! One live connection: the handshake, request/answer matching by request
//! id with timeouts, and the queue of server pushes. No reconnects (see
//! `PigeonClient`).

import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { PigeonError } from "./errors.js";
import {
  ErrorCode,
  FrameSchema,
  SyncNoticeSchema,
  type AddMembersResponse,
  type ContentSchema,
  type EditMessageResponse,
  type Frame,
  type GetGroupResponse,
  type GroupInfo,
  type GroupRole,
  type GroupSettingsSchema,
  type HistoryResponse,
  type ListConversationsResponse,
  type ListMembersResponse,
  type LoginResponse,
  type MarkReadResponse,
  type Pong,
  type Presence,
  type ReceiptSummary,
  type RegisterResponse,
  type RemoveMembersResponse,
  type SendResponse,
  type SyncResponse,
  type TargetSchema,
  type UpdateGroupRequestSchema,
  type Welcome,
} from "./gen/pigeon/v1/pigeon_pb.js";
import { unpackFrame } from "./packing.js";
import { after } from "./timers.js";
import { isOpen, messageBytes, openWebSocket, type WebSocketConstructor, type WebSocketFactory, type WebSocketLike } from "./transport.js";
import { parseUrl } from "./url.js";

/** The protocol versions this SDK speaks (protocol §17). */
export const PROTOCOL_VERSION_MIN = 1;
export const PROTOCOL_VERSION_MAX = 2;
/** The SDK's name in Hello.client_name unless told otherwise. */
export const CLIENT_NAME_DEFAULT = "pigeon-ts/0.1.0";
/** Pushes queued for `nextPush`; beyond it they collapse into one `SyncNotice`. */
export const PUSH_QUEUE_FRAMES_MAX = 1024;
/** Frame maximum before the Welcome says otherwise (protocol §2). */
const FRAME_BYTES_MAX_DEFAULT = 1024 * 1024;
/** Largest frame any server sends; bigger ones end the connection. */
const FRAME_BYTES_MAX_CEILING = 16 * 1024 * 1024;
/** Concurrent requests when the Welcome does not say. */
const INFLIGHT_REQUESTS_DEFAULT = 64;
/** Upper bound on concurrent requests whatever the Welcome says. */
const INFLIGHT_REQUESTS_CEILING = 4096;
/** The request id of the Hello (any value is allowed; the Welcome echoes it). */
const HELLO_REQUEST_ID = 1n;

/** How to reach a server and how long to wait for it. */
export interface ConnectOptions {
  /** `ws://host[:port][/path]` or `wss://...` (default port 7780, path `/ws`). */
  url: string;
  /** A session token from a LoginResponse; absent for an anonymous connection. */
  token?: string | undefined;
  /** The WebSocket class or a factory; default `globalThis.WebSocket`. */
  webSocket?: WebSocketConstructor | WebSocketFactory | undefined;
  /** Sent in the Hello, for the server's logs. */
  clientName?: string | undefined;
  /** Limit for opening the socket plus the Hello/Welcome exchange, ms (default 10 000). */
  connectTimeoutMs?: number | undefined;
  /** Limit for each request, from sending to its answer, ms (default 30 000). */
  requestTimeoutMs?: number | undefined;
}

/** A frame body: `{ case: "pingRequest", value: ... }` and so on. */
export type Body = Frame["body"];
/** The name of a body variant, e.g. `"sendRequest"`. */
export type BodyCase = NonNullable<Body["case"]>;
/** The message type of body variant `C`. */
export type BodyValue<C extends BodyCase> = Extract<Body, { case: C }>["value"];
/** A body variant for `request`, nested messages given as plain objects. */
export type BodyInit = NonNullable<MessageInitShape<typeof FrameSchema>["body"]>;
/** The pushes a connection queues (request_id 0), and the final Goodbye. */
export type Push = Extract<Body, { case: "eventsPush" | "syncNotice" | "presencePush" | "typingPush" | "goodbye" }>;

export type TargetInit = MessageInitShape<typeof TargetSchema>;
export type ContentValue = MessageInitShape<typeof ContentSchema>;
export type GroupSettingsInit = MessageInitShape<typeof GroupSettingsSchema>;
export type UpdateGroupInit = MessageInitShape<typeof UpdateGroupRequestSchema>;

interface Pending {
  resolve(body: Body): void;
  reject(error: PigeonError): void;
}

/** Counts concurrent requests; waiters queue in order. */
class Semaphore {
  private readonly waiters: Array<() => void> = [];
  constructor(private permits: number) {}

  acquire(): Promise<void> | undefined {
    if (this.permits > 0) {
      this.permits--;
      return undefined;
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.permits++;
  }
}

/** Rejects with a timeout error after `ms` unless `promise` settles first. */
function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const cancel = after(ms, () => reject(new PigeonError("timeout", `${what}: timed out after ${ms} ms`)));
    promise.then(
      (v) => {
        cancel();
        resolve(v);
      },
      (e: unknown) => {
        cancel();
        reject(e);
      },
    );
  });
}

/**
 * One live connection (no reconnect). Made by `Connection.connect`, which
 * does the handshake; requests are matched to answers by request id.
 */
export class Connection {
  /** The server's Welcome; after a successful `login` it carries the new identity. */
  readonly welcome: Welcome;
  /** `Date.now()` of the last frame sent (the heartbeat pings when this gets old). */
  lastSentAt = Date.now();
  /** `Date.now()` of the last frame received. */
  lastReceivedAt = Date.now();

  private readonly socket: WebSocketLike;
  private readonly requestTimeoutMs: number;
  private readonly frameBytesMax: number;
  private readonly inflight: Semaphore;
  private readonly pending = new Map<bigint, Pending>();
  private readonly pushes: Push[] = [];
  private pushesOverflowed = false;
  private pushWaiter: (() => void) | undefined;
  private nextRequestId = 1n;
  private nextNonce = 1n;
  private endError: PigeonError | undefined;
  private readonly endListeners: Array<(e: PigeonError) => void> = [];

  private constructor(socket: WebSocketLike, welcome: Welcome, opts: ConnectOptions) {
    this.socket = socket;
    this.welcome = welcome;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 30_000;
    const limits = welcome.limits;
    const announced = limits?.frameBytesMax ?? 0;
    this.frameBytesMax = announced > 0 ? Math.min(announced, FRAME_BYTES_MAX_CEILING) : FRAME_BYTES_MAX_DEFAULT;
    const inflight = limits?.inflightRequestsMax ?? 0;
    this.inflight = new Semaphore(inflight > 0 ? Math.min(inflight, INFLIGHT_REQUESTS_CEILING) : INFLIGHT_REQUESTS_DEFAULT);
    socket.onmessage = (ev: { data: unknown }) => this.onMessage(ev.data);
    socket.onclose = () => this.end(new PigeonError("closed", "connection closed"));
    socket.onerror = () => this.end(new PigeonError("closed", "connection failed"));
  }

  /**
   * Opens a WebSocket to `opts.url`, sends a Hello with this SDK's protocol
   * versions and the token, and waits for the Welcome. A Goodbye answer is
   * a `PigeonError` of kind `goodbye`; the whole exchange is bounded by
   * `connectTimeoutMs`.
   */
  static connect(opts: ConnectOptions): Promise<Connection> {
    const url = parseUrl(opts.url);
    const timeoutMs = opts.connectTimeoutMs ?? 10_000;
    return new Promise<Connection>((resolve, reject) => {
      let socket: WebSocketLike;
      try {
        socket = openWebSocket(url, opts.webSocket);
      } catch (e) {
        reject(e instanceof PigeonError ? e : new PigeonError("transport", `cannot open ${url}`, { cause: e }));
        return;
      }
      let settled = false;
      const fail = (error: PigeonError) => {
        if (settled) return;
        settled = true;
        cancelTimer();
        detach(socket);
        try {
          socket.close();
        } catch {
          // Closing a socket that never opened may throw; it is gone either way.
        }
        reject(error);
      };
      const cancelTimer = after(timeoutMs, () => fail(new PigeonError("timeout", `connecting to ${url}: timed out after ${timeoutMs} ms`)));
      socket.onopen = () => {
        const hello = create(FrameSchema, {
          requestId: HELLO_REQUEST_ID,
          body: {
            case: "hello",
            value: {
              minVersion: PROTOCOL_VERSION_MIN,
              maxVersion: PROTOCOL_VERSION_MAX,
              token: opts.token ?? "",
              clientName: opts.clientName ?? CLIENT_NAME_DEFAULT,
            },
          },
        });
        try {
          socket.send(toBinary(FrameSchema, hello));
        } catch (e) {
          fail(new PigeonError("transport", `sending the Hello to ${url} failed`, { cause: e }));
        }
      };
      socket.onerror = () => fail(new PigeonError("transport", `cannot connect to ${url}`));
      socket.onclose = () => fail(new PigeonError("transport", `${url} closed the connection during the handshake`));
      socket.onmessage = (ev: { data: unknown }) => {
        if (settled) return;
        const frame = decode(ev.data, FRAME_BYTES_MAX_DEFAULT * 16);
        if (frame instanceof PigeonError) return fail(frame);
        const body = frame.body;
        if (body.case === "goodbye") return fail(PigeonError.fromGoodbye(body.value));
        if (body.case !== "welcome") return fail(new PigeonError("protocol", `expected a Welcome, got ${body.case ?? "a frame without a body"}`));
        settled = true;
        cancelTimer();
        resolve(new Connection(socket, body.value, opts));
      };
    });
  }

  /** True once the connection has ended (closed, Goodbye, socket error). */
  get isClosed(): boolean {
    return this.endError !== undefined;
  }

  /** Why the connection ended, once it has. */
  get endReason(): PigeonError | undefined {
    return this.endError;
  }

  /** Calls `listener` once with the reason when the connection ends. */
  onEnd(listener: (e: PigeonError) => void): void {
    if (this.endError) listener(this.endError);
    else this.endListeners.push(listener);
  }

  /** Closes the connection; waiting requests fail with kind `closed`. */
  close(reason = "closed by the client"): void {
    this.end(new PigeonError("closed", reason));
  }

  /**
   * Sends a request and waits for its answer (at most `requestTimeoutMs`, or
   * `timeoutMs`). An `Error` answer rejects with kind `server`; the
   * connection ending meanwhile with `closed` or the `goodbye`. A request
   * larger than the server's frame maximum is refused here with code
   * FRAME_TOO_LARGE, since sending it would only make the server hang up.
   */
  async request(body: BodyInit, timeoutMs = this.requestTimeoutMs): Promise<Body> {
    if (this.endError) throw this.endError;
    const deadline = Date.now() + timeoutMs;
    const waiting = this.inflight.acquire();
    if (waiting) {
      try {
        await withTimeout(waiting, timeoutMs, String(body.case));
      } catch (e) {
        // The permit may still be granted later; hand it straight back then.
        void waiting.then(() => this.inflight.release());
        throw e;
      }
    }
    try {
      if (this.endError) throw this.endError;
      const requestId = this.nextRequestId++;
      const frame = create(FrameSchema, { requestId, body });
      const bytes = toBinary(FrameSchema, frame);
      if (bytes.length > this.frameBytesMax) {
        throw new PigeonError(
          "server",
          `request of ${bytes.length} bytes exceeds the server's frame maximum of ${this.frameBytesMax} bytes (refused by the client)`,
          { code: ErrorCode.FRAME_TOO_LARGE },
        );
      }
      const answer = new Promise<Body>((resolve, reject) => this.pending.set(requestId, { resolve, reject }));
      try {
        this.write(bytes);
        return await withTimeout(answer, Math.max(0, deadline - Date.now()), String(body.case));
      } finally {
        this.pending.delete(requestId);
      }
    } finally {
      this.inflight.release();
    }
  }

  /**
   * The next push (`eventsPush`, `syncNotice`, `presencePush`,
   * `typingPush`, and last a `goodbye`) in arrival order; undefined once
   * the connection has ended and the queue is drained.
   */
  async nextPush(): Promise<Push | undefined> {
    for (;;) {
      const push = this.pushes.shift();
      if (push) return push;
      if (this.pushesOverflowed) {
        this.pushesOverflowed = false;
        return { case: "syncNotice", value: create(SyncNoticeSchema) };
      }
      if (this.endError) return undefined;
      await new Promise<void>((resolve) => (this.pushWaiter = resolve));
    }
  }

  private write(bytes: Uint8Array): void {
    if (!isOpen(this.socket)) throw this.endError ?? new PigeonError("closed", "connection closed");
    try {
      this.socket.send(bytes);
    } catch (e) {
      const error = new PigeonError("closed", "sending on the connection failed", { cause: e });
      this.end(error);
      throw error;
    }
    this.lastSentAt = Date.now();
  }

  private wakePushReader(): void {
    const waiter = this.pushWaiter;
    this.pushWaiter = undefined;
    waiter?.();
  }

  /** Queues a push, or when the queue is full owes the reader a SyncNotice. */
  private queuePush(push: Push): void {
    if (this.endError || this.pushesOverflowed) return;
    const last = this.pushes[this.pushes.length - 1];
    if (push.case === "syncNotice" && last?.case === "syncNotice") return;
    if (this.pushes.length >= PUSH_QUEUE_FRAMES_MAX) {
      // Syncing recovers whatever the dropped pushes carried.
      this.pushesOverflowed = true;
    } else {
      this.pushes.push(push);
    }
    this.wakePushReader();
  }

  private onMessage(data: unknown): void {
    if (this.endError) return;
    this.lastReceivedAt = Date.now();
    const frame = decode(data, this.frameBytesMax);
    if (frame instanceof PigeonError) {
      this.end(frame);
      return;
    }
    const { requestId, body } = frame;
    if (body.case === "goodbye") {
      const error = PigeonError.fromGoodbye(body.value);
      this.pushes.push(body);
      this.end(error);
      return;
    }
    if (requestId === 0n) {
      switch (body.case) {
        case "eventsPush":
        case "syncNotice":
        case "presencePush":
        case "typingPush":
          this.queuePush(body);
          return;
        default:
          // A push from a newer server, or nothing: ignored (protocol §4.4).
          return;
      }
    }
    const waiter = this.pending.get(requestId);
    if (!waiter) return; // The request timed out meanwhile.
    this.pending.delete(requestId);
    if (body.case === "error") waiter.reject(PigeonError.fromWire(body.value));
    else if (body.case === undefined) waiter.reject(new PigeonError("protocol", "an answer with a body this client does not know"));
    else waiter.resolve(body);
  }

  /** Marks the connection ended (the first reason wins) and fails waiting requests. */
  private end(error: PigeonError): void {
    if (this.endError) return;
    this.endError = error;
    detach(this.socket);
    try {
      this.socket.close();
    } catch {
      // Already closing.
    }
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
    this.wakePushReader();
    for (const l of this.endListeners.splice(0)) l(error);
  }

  // ------------------------------------------------------------ typed requests

  private async call<C extends BodyCase>(body: BodyInit, expected: C, timeoutMs?: number): Promise<BodyValue<C>> {
    const answer = await this.request(body, timeoutMs);
    if (answer.case !== expected) {
      throw new PigeonError("protocol", `expected ${expected}, got ${answer.case ?? "nothing"}`);
    }
    return answer.value as BodyValue<C>;
  }

  /** Creates an account (allowed on an anonymous connection; does not log in). */
  register(username: string, password: string): Promise<RegisterResponse> {
    return this.call({ case: "registerRequest", value: { username, password } }, "registerResponse");
  }

  /**
   * Logs in as a new device; on success this connection is authenticated as
   * it, and `welcome` carries the new user and device.
   */
  async login(username: string, password: string, deviceName = ""): Promise<LoginResponse> {
    const r = await this.call({ case: "loginRequest", value: { username, password, deviceName } }, "loginResponse");
    this.welcome.userId = r.userId;
    this.welcome.username = r.username;
    this.welcome.deviceId = r.deviceId;
    this.welcome.flags = [...r.flags];
    return r;
  }

  /** Revokes this connection's session; the server then closes the connection. */
  async logout(): Promise<void> {
    await this.call({ case: "logoutRequest", value: {} }, "logoutResponse");
  }

  /** Sends a message. Retrying with the same `clientMsgId` is safe. */
  send(clientMsgId: string, target: TargetInit, content: ContentValue): Promise<SendResponse> {
    return this.call({ case: "sendRequest", value: { clientMsgId, target, content } }, "sendResponse");
  }

  /** Fetches up to `limit` events after `key` (0: the server's maximum). */
  sync(key: Uint8Array, limit = 0): Promise<SyncResponse> {
    return this.call({ case: "syncRequest", value: { key, limit } }, "syncResponse");
  }

  /** A page of a conversation's messages with `conv_seq < before` (0: newest), newest first. */
  history(target: TargetInit, before: bigint = 0n, limit = 0): Promise<HistoryResponse> {
    return this.call({ case: "historyRequest", value: { target, before, limit } }, "historyResponse");
  }

  /** The caller's conversations, most recently active first. */
  listConversations(limit = 0): Promise<ListConversationsResponse> {
    return this.call({ case: "listConversationsRequest", value: { limit } }, "listConversationsResponse");
  }

  /** Marks a conversation read up to `readUpTo` (inclusive; never moves back). */
  markRead(conversationId: string, readUpTo: bigint): Promise<MarkReadResponse> {
    return this.call({ case: "markReadRequest", value: { conversationId, readUpTo } }, "markReadResponse");
  }

  /** Creates a group owned by the caller; `members` (usernames) join at once. */
  async createGroup(name: string, description: string, members: string[], settings?: GroupSettingsInit): Promise<GroupInfo> {
    const r = await this.call({ case: "createGroupRequest", value: { name, description, members, settings } }, "createGroupResponse");
    return groupIn(r.group);
  }

  /** Changes the parts of a group marked by `update*` (admins and the owner). */
  async updateGroup(req: UpdateGroupInit): Promise<GroupInfo> {
    const r = await this.call({ case: "updateGroupRequest", value: req }, "updateGroupResponse");
    return groupIn(r.group);
  }

  /** Adds members by username; current members are skipped. */
  addMembers(conversationId: string, usernames: string[]): Promise<AddMembersResponse> {
    return this.call({ case: "addMembersRequest", value: { conversationId, usernames } }, "addMembersResponse");
  }

  /** Removes members by username (the owner removes anyone, admins plain members). */
  removeMembers(conversationId: string, usernames: string[]): Promise<RemoveMembersResponse> {
    return this.call({ case: "removeMembersRequest", value: { conversationId, usernames } }, "removeMembersResponse");
  }

  /** Leaves a group (the owner must transfer ownership or dissolve instead). */
  async leaveGroup(conversationId: string): Promise<void> {
    await this.call({ case: "leaveGroupRequest", value: { conversationId } }, "leaveGroupResponse");
  }

  /** Makes a member an admin or an admin a member (the owner only). */
  async setRole(conversationId: string, username: string, role: GroupRole): Promise<GroupInfo> {
    const r = await this.call({ case: "setRoleRequest", value: { conversationId, username, role } }, "setRoleResponse");
    return groupIn(r.group);
  }

  /** Hands the group to another member (the owner only; they become an admin). */
  async transferOwnership(conversationId: string, username: string): Promise<GroupInfo> {
    const r = await this.call({ case: "transferOwnershipRequest", value: { conversationId, username } }, "transferOwnershipResponse");
    return groupIn(r.group);
  }

  /** Ends a group for everyone (the owner only); its history stays readable. */
  async dissolveGroup(conversationId: string): Promise<void> {
    await this.call({ case: "dissolveGroupRequest", value: { conversationId } }, "dissolveGroupResponse");
  }

  /** A group's state and the caller's role (members and former members). */
  getGroup(conversationId: string): Promise<GetGroupResponse> {
    return this.call({ case: "getGroupRequest", value: { conversationId } }, "getGroupResponse");
  }

  /** A page of members in user id order after `afterUserId` (0: from the start). */
  listMembers(conversationId: string, afterUserId: bigint = 0n, limit = 0): Promise<ListMembersResponse> {
    return this.call({ case: "listMembersRequest", value: { conversationId, afterUserId, limit } }, "listMembersResponse");
  }

  /** Deletes one of the caller's messages for everyone, within the recall window. */
  async recall(conversationId: string, convSeq: bigint): Promise<void> {
    await this.call({ case: "recallMessageRequest", value: { conversationId, convSeq } }, "recallMessageResponse");
  }

  /** Replaces the content of one of the caller's messages, within the edit window. */
  edit(conversationId: string, convSeq: bigint, content: ContentValue): Promise<EditMessageResponse> {
    return this.call({ case: "editMessageRequest", value: { conversationId, convSeq, content } }, "editMessageResponse");
  }

  /** Hides a message from the caller's own history (all their devices). */
  async deleteForMe(conversationId: string, convSeq: bigint): Promise<void> {
    await this.call({ case: "deleteMessageRequest", value: { conversationId, convSeq } }, "deleteMessageResponse");
  }

  /** Receipt counts for messages of a large group. */
  async getReceipts(conversationId: string, convSeqs: bigint[]): Promise<ReceiptSummary[]> {
    const r = await this.call({ case: "getReceiptsRequest", value: { conversationId, convSeqs } }, "getReceiptsResponse");
    return r.receipts;
  }

  /** Tells the other online members that the caller is (or stopped) typing. */
  async setTyping(conversationId: string, typing: boolean): Promise<void> {
    await this.call({ case: "setTypingRequest", value: { conversationId, typing } }, "setTypingResponse");
  }

  /** The presence of users, as far as the caller may see it. */
  async getPresence(usernames: string[]): Promise<Presence[]> {
    const r = await this.call({ case: "getPresenceRequest", value: { usernames } }, "getPresenceResponse");
    return r.presences;
  }

  /** Hides (or shows) the caller's presence; returns the setting now in force. */
  async setPrivacy(hidePresence: boolean): Promise<boolean> {
    const r = await this.call({ case: "setPrivacyRequest", value: { hidePresence } }, "setPrivacyResponse");
    return r.hidePresence;
  }

  /** Blocks a user. */
  async block(username: string): Promise<void> {
    await this.call({ case: "blockRequest", value: { username } }, "blockResponse");
  }

  /** Lifts a block. */
  async unblock(username: string): Promise<void> {
    await this.call({ case: "unblockRequest", value: { username } }, "unblockResponse");
  }

  /** The usernames the caller has blocked. */
  async listBlocked(): Promise<string[]> {
    const r = await this.call({ case: "listBlockedRequest", value: {} }, "listBlockedResponse");
    return r.usernames;
  }

  /** A round trip; also keeps the connection from idling out. */
  async ping(timeoutMs?: number): Promise<Pong> {
    const nonce = this.nextNonce++;
    const pong = await this.call({ case: "ping", value: { nonce } }, "pong", timeoutMs);
    if (pong.nonce !== nonce) {
      throw new PigeonError("protocol", `pong for nonce ${pong.nonce} answers the ping with nonce ${nonce}`);
    }
    return pong;
  }
}

/** Decodes one received message into a Frame, or the error that ends the connection. */
function decode(data: unknown, frameBytesMax: number): Frame | PigeonError {
  const bytes = messageBytes(data);
  if (bytes === undefined) return new PigeonError("protocol", "the server sent a text message (frames are binary)");
  if (bytes.length > frameBytesMax) {
    return new PigeonError("protocol", `the server sent a frame of ${bytes.length} bytes, over the maximum of ${frameBytesMax}`);
  }
  let frame: Frame;
  try {
    frame = fromBinary(FrameSchema, bytes);
  } catch (e) {
    return new PigeonError("protocol", "the server sent a frame that does not decode", { cause: e });
  }
  try {
    unpackFrame(frame);
  } catch (e) {
    return e instanceof PigeonError ? e : new PigeonError("protocol", "the server sent events that do not unpack", { cause: e });
  }
  return frame;
}

/**
 * Stops listening to a socket. No-op handlers rather than null: the `ws`
 * package throws an error event that has no listener.
 */
function detach(socket: WebSocketLike): void {
  const ignore = () => {};
  socket.onopen = ignore;
  socket.onmessage = ignore;
  socket.onclose = ignore;
  socket.onerror = ignore;
}

function groupIn(group: GroupInfo | undefined): GroupInfo {
  if (group === undefined) throw new PigeonError("protocol", "a group answer without its group");
  return group;
}
