//! The reconnecting client: keeps one connection up (exponential backoff
//! with full jitter), runs the sync loop from a persisted key and hands
//! events to the application's handlers, heartbeats, honours Goodbye
//! (redirects, retry-after), and retries sends with the same client message
//! id until they are acknowledged. Mirrors the Rust SDK's `Client`.

import { Backoff } from "./backoff.js";
import {
  Connection,
  type ConnectOptions,
  type ContentValue,
  type GroupSettingsInit,
  type TargetInit,
} from "./connection.js";
import { PigeonError } from "./errors.js";
import {
  toLogEvent,
  type AnyHandler,
  type ConnectionState,
  type Handler,
  type PigeonEvent,
  type PigeonEventType,
} from "./events.js";
import {
  ErrorCode,
  type AddMembersResponse,
  type ConversationSummary,
  type EditMessageResponse,
  type Event,
  type GetGroupResponse,
  type GroupInfo,
  type GroupRole,
  type HistoryResponse,
  type ListMembersResponse,
  type LoginResponse,
  type MarkReadResponse,
  type Pong,
  type Presence,
  type ReceiptSummary,
  type RegisterResponse,
  type RemoveMembersResponse,
  type SendResponse,
  type Welcome,
} from "./gen/pigeon/v1/pigeon_pb.js";
import { MemorySyncKeyStorage, type SyncKeyStorage } from "./storage.js";
import { after, newClientMsgId, sleep } from "./timers.js";
import { parseUrl } from "./url.js";

/** Heartbeat period when the Welcome does not give one, ms. */
const HEARTBEAT_INTERVAL_DEFAULT_MS = 30_000;
/** Shortest heartbeat period, whatever the Welcome says, ms. */
const HEARTBEAT_INTERVAL_MIN_MS = 100;
/** Events asked for per SyncRequest (0: the server's maximum). */
const SYNC_LIMIT = 0;

/** How the reconnecting client behaves. */
export interface ClientOptions extends ConnectOptions {
  /** Where the sync key is kept; default a new `MemorySyncKeyStorage`. */
  storage?: SyncKeyStorage | undefined;
  /** Names this server in storage (default: the URL); keys are per scope, user and device. */
  storageScope?: string | undefined;
  /** Overall deadline of `send` (retries included), and how long other requests wait for a connection, ms (default 60 000). */
  sendTimeoutMs?: number | undefined;
  /** Shortest wait before a reconnect, ms (default 200). */
  backoffMinMs?: number | undefined;
  /** Longest wait before a reconnect, ms (default 30 000). */
  backoffMaxMs?: number | undefined;
  /** Other ws:// URLs of the same service, tried in turn when `url` cannot be reached. */
  endpoints?: string[] | undefined;
  /** Overrides Welcome.heartbeat_interval_ms (for tests), ms. */
  heartbeatIntervalMs?: number | undefined;
  /** Jitter source in [0, 1); default Math.random. */
  random?: (() => number) | undefined;
  /** Called when an event handler throws; default `console.error`. */
  onHandlerError?: ((error: unknown, event: PigeonEvent) => void) | undefined;
}

/** Where a message goes: a username, a conversation id, or either spelled out. */
export type To = string | { username: string } | { conversationId: string };
/** Message content: plain text, or the fields of `Content`. */
export type ContentInit = string | { text?: string; payload?: Uint8Array; payloadType?: string };

export interface SendOptions {
  /** Reuse an id from the application's own outbox; default a new UUIDv7. */
  clientMsgId?: string;
  /** Overall deadline, retries included, ms (default `sendTimeoutMs`). */
  timeoutMs?: number;
}

/** A target for `to`: a string with ":" is a conversation id (usernames cannot contain one). */
export function toTarget(to: To): TargetInit {
  if (typeof to === "string") {
    return to.includes(":") ? { to: { case: "conversationId", value: to } } : { to: { case: "username", value: to } };
  }
  return "username" in to ? { to: { case: "username", value: to.username } } : { to: { case: "conversationId", value: to.conversationId } };
}

/** Content from text or from its fields. */
export function toContent(content: ContentInit): ContentValue {
  return typeof content === "string" ? { text: content } : { ...content };
}

function big(n: bigint | number): bigint {
  return typeof n === "bigint" ? n : BigInt(n);
}

/** Opens an anonymous connection, creates an account, closes. Does not log in. */
export async function register(opts: ConnectOptions, username: string, password: string): Promise<RegisterResponse> {
  const conn = await Connection.connect({ ...opts, token: undefined });
  try {
    return await conn.register(username, password);
  } finally {
    conn.close();
  }
}

/** Opens an anonymous connection, logs in as a new device, closes; keep the token. */
export async function login(opts: ConnectOptions, username: string, password: string, deviceName = ""): Promise<LoginResponse> {
  const conn = await Connection.connect({ ...opts, token: undefined });
  try {
    return await conn.login(username, password, deviceName);
  } finally {
    conn.close();
  }
}

/** What a send should do after a failed attempt. */
type Retry = { kind: "never" } | { kind: "newConnection" } | { kind: "after"; ms: number };

function retryFor(error: unknown, backoff: Backoff): Retry {
  if (!(error instanceof PigeonError)) return { kind: "never" };
  switch (error.kind) {
    case "closed":
    case "goodbye":
    case "transport":
      return { kind: "newConnection" };
    case "timeout":
      // The answer may still come on a slow but live connection; the heartbeat replaces a dead one.
      return { kind: "after", ms: 0 };
    case "server":
      switch (error.code) {
        case ErrorCode.SHUTTING_DOWN:
          return { kind: "newConnection" };
        case ErrorCode.BUSY:
          return { kind: "after", ms: Math.max(error.retryAfterMs, backoff.next()) };
        case ErrorCode.INTERNAL:
        case ErrorCode.TOO_MANY_REQUESTS:
          return { kind: "after", ms: backoff.next() };
        default:
          return { kind: "never" };
      }
    default:
      return { kind: "never" };
  }
}

/** Why a connection's session ended. */
type SessionEnd =
  | { kind: "lost"; error: PigeonError }
  | { kind: "redirected"; error: PigeonError; to: string[]; afterMs: number }
  | { kind: "fatal"; error: PigeonError };

function endFor(error: unknown): SessionEnd {
  const e = error instanceof PigeonError ? error : new PigeonError("protocol", String(error), { cause: error });
  return e.isFatal ? { kind: "fatal", error: e } : { kind: "lost", error: e };
}

/** The endpoints to try, the current one first. */
class Endpoints {
  private urls: string[] = [];

  constructor(first: string, others: string[]) {
    this.learn([first, ...others], false);
  }

  current(): string {
    return this.urls[0] ?? "";
  }

  get length(): number {
    return this.urls.length;
  }

  /** Tries the next endpoint next time. */
  rotate(): void {
    const first = this.urls.shift();
    if (first !== undefined) this.urls.push(first);
  }

  /** Adds WebSocket URLs (others are skipped: a browser cannot open them), first in line if `prefer`. */
  learn(urls: string[], prefer: boolean): void {
    const fresh: string[] = [];
    for (const u of urls) {
      let parsed: string;
      try {
        parsed = parseUrl(u);
      } catch {
        continue;
      }
      if (!fresh.includes(parsed)) fresh.push(parsed);
    }
    this.urls = this.urls.filter((u) => !fresh.includes(u));
    this.urls = prefer ? [...fresh, ...this.urls] : [...this.urls, ...fresh];
  }
}

type LinkState =
  | { kind: "idle" }
  | { kind: "connecting" }
  | { kind: "up"; conn: Connection }
  | { kind: "stopped"; error: PigeonError };

/**
 * A reconnecting client for one device of one account. Create it with a
 * token and `start()`, or without one and `login()`.
 */
export class PigeonClient {
  private readonly opts: ClientOptions;
  private readonly storage: SyncKeyStorage;
  private readonly scopeBase: string;
  private readonly sendTimeoutMs: number;
  private readonly random: () => number;
  private currentToken: string | undefined;
  private link: LinkState = { kind: "idle" };
  /** Counts connections made; a send that lost its connection waits for a newer one. */
  private generation = 0;
  /** The generation whose first full sync has finished. */
  private syncedGeneration = -1;
  private readonly linkWaiters = new Set<() => void>();
  private key: Uint8Array = new Uint8Array();
  private scope: string | undefined;
  private lastWelcome: Welcome | undefined;
  private uiState: ConnectionState = "idle";
  private readonly handlers = new Map<PigeonEventType, Set<AnyHandler>>();
  private readonly anyHandlers = new Set<AnyHandler>();
  private wakeSleep: (() => void) | undefined;
  /** `reconnect()` was called: the next attempt goes at once, the backoff starts over. */
  private reconnectRequested = false;

  constructor(options: ClientOptions) {
    parseUrl(options.url);
    this.opts = { ...options };
    this.storage = options.storage ?? new MemorySyncKeyStorage();
    this.scopeBase = options.storageScope ?? parseUrl(options.url);
    this.sendTimeoutMs = options.sendTimeoutMs ?? 60_000;
    this.random = options.random ?? Math.random;
    this.currentToken = options.token;
  }

  // ------------------------------------------------------------- lifecycle

  /** The state last announced in a `connection` event. */
  get state(): ConnectionState {
    return this.uiState;
  }

  /** The Welcome of the current (or last) connection. */
  get welcome(): Welcome | undefined {
    return this.lastWelcome;
  }

  /** The session token in use (set by `login`, cleared by `logout`). */
  get token(): string | undefined {
    return this.currentToken;
  }

  /** The storage scope of the sync key (`"<storageScope>|<userId>|<deviceId>"`), once connected. */
  get syncKeyScope(): string | undefined {
    return this.scope;
  }

  /** The key after the last batch handed to the handlers. */
  get syncKey(): Uint8Array {
    return this.key.slice();
  }

  /** Connects with the token and keeps connected until `close`, `logout` or a fatal error. */
  start(): void {
    if (this.link.kind !== "idle") throw new PigeonError("protocol", "the client was already started");
    if (this.currentToken === undefined || this.currentToken === "") {
      throw new PigeonError("protocol", "no token: pass options.token, or use login()");
    }
    this.run(undefined);
  }

  /**
   * Logs in as a new device on an anonymous connection, then keeps that
   * connection as the client's first session (no second handshake) and
   * starts. The client must not have been started.
   */
  async login(username: string, password: string, deviceName = ""): Promise<LoginResponse> {
    if (this.link.kind !== "idle") throw new PigeonError("protocol", "the client was already started");
    const conn = await Connection.connect({ ...this.opts, token: undefined });
    let response: LoginResponse;
    try {
      response = await conn.login(username, password, deviceName);
    } catch (e) {
      conn.close();
      throw e;
    }
    this.currentToken = response.token;
    this.run(conn);
    return response;
  }

  /** Creates an account on an anonymous connection. Does not log in. */
  register(username: string, password: string): Promise<RegisterResponse> {
    return register(this.opts, username, password);
  }

  /**
   * Revokes this device's session, deletes its stored sync key and stops
   * the client (state "stopped").
   */
  async logout(): Promise<void> {
    const conn = await this.current();
    const scope = this.scope;
    await conn.logout();
    if (scope !== undefined) await this.storage.remove(scope);
    this.currentToken = undefined;
    await this.stop(new PigeonError("goodbye", "logged out", { code: ErrorCode.TOKEN_REVOKED }), "logged out");
  }

  /**
   * Drops the current connection (if any) and connects again at once,
   * starting the backoff over; a wait for the next attempt is cut short.
   * Pending sends stay pending and are retried on the new connection, as
   * after any lost connection. For a browser's `online` event, say. Does
   * nothing on a client that is not started or has stopped.
   */
  reconnect(): void {
    const link = this.link;
    if (link.kind === "idle" || link.kind === "stopped") return;
    this.reconnectRequested = true;
    if (link.kind === "up") link.conn.close("reconnect requested by the application");
    this.wakeSleep?.();
  }

  /** Stops for good: the connection is closed and waiting sends fail with kind "closed". */
  async close(): Promise<void> {
    await this.stop(new PigeonError("closed", "the client was closed"), "closed by the application");
  }

  /** Waits for a connection (up to `timeoutMs`, default `sendTimeoutMs`) and returns its Welcome. */
  async waitConnected(timeoutMs = this.sendTimeoutMs): Promise<Welcome> {
    const { conn } = await this.waitUp(0, Date.now() + timeoutMs);
    return conn.welcome;
  }

  /** Waits until a sync on the current connection ended with nothing more to fetch. */
  async waitSynced(timeoutMs = this.sendTimeoutMs): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { generation } = await this.waitUp(0, deadline);
      if (this.syncedGeneration === generation) return;
      await this.waitLinkChange(deadline);
    }
  }

  // ---------------------------------------------------------------- events

  /** Calls `handler` for each event of `type`; returns a function that unsubscribes. */
  on<T extends PigeonEventType>(type: T, handler: Handler<T>): () => void {
    let set = this.handlers.get(type);
    if (!set) {
      set = new Set();
      this.handlers.set(type, set);
    }
    set.add(handler as unknown as AnyHandler);
    return () => this.off(type, handler);
  }

  off<T extends PigeonEventType>(type: T, handler: Handler<T>): void {
    this.handlers.get(type)?.delete(handler as unknown as AnyHandler);
  }

  /** Calls `handler` for every event; returns a function that unsubscribes. */
  onAny(handler: AnyHandler): () => void {
    this.anyHandlers.add(handler);
    return () => this.anyHandlers.delete(handler);
  }

  /** Hands `event` to its handlers in order, waiting for async ones. */
  private async emit(event: PigeonEvent): Promise<void> {
    const typed = [...(this.handlers.get(event.type) ?? [])];
    for (const h of [...typed, ...this.anyHandlers]) {
      try {
        await h(event);
      } catch (e) {
        if (this.opts.onHandlerError) this.opts.onHandlerError(e, event);
        else report("pigeon: event handler failed", e);
      }
    }
  }

  // --------------------------------------------------------------- sending

  /**
   * Sends a message and resolves with the durable acknowledgement. The
   * client message id is made once and reused on every retry: after a lost
   * connection, a Goodbye, a timeout, BUSY, INTERNAL, SHUTTING_DOWN or
   * TOO_MANY_REQUESTS it tries again (on a new connection where needed)
   * until `timeoutMs` has passed (then kind "timeout"). Other errors are
   * thrown at once; after the client stopped, the stop reason.
   */
  async send(to: To, content: ContentInit, opts: SendOptions = {}): Promise<SendResponse> {
    const clientMsgId = opts.clientMsgId ?? newClientMsgId();
    const target = toTarget(to);
    const body = toContent(content);
    const deadline = Date.now() + (opts.timeoutMs ?? this.sendTimeoutMs);
    const backoff = new Backoff(this.opts.backoffMinMs ?? 200, this.opts.backoffMaxMs ?? 30_000, this.random);
    let generationMin = 0;
    for (;;) {
      const { generation, conn } = await this.waitUp(generationMin, deadline);
      let error: unknown;
      try {
        return await conn.send(clientMsgId, target, body);
      } catch (e) {
        error = e;
      }
      if (this.link.kind === "stopped") throw this.link.error;
      const retry = retryFor(error, backoff);
      if (retry.kind === "never") throw error;
      if (retry.kind === "newConnection") generationMin = generation + 1;
      else if (retry.ms > 0) await sleep(Math.min(retry.ms, Math.max(0, deadline - Date.now())));
      if (Date.now() >= deadline) {
        throw new PigeonError("timeout", `send ${clientMsgId}: not acknowledged in time`, { cause: error });
      }
    }
  }

  // ----------------------------------------------------- forwarded requests

  /** The current connection, waiting up to `sendTimeoutMs` for one. */
  private async current(): Promise<Connection> {
    return (await this.waitUp(0, Date.now() + this.sendTimeoutMs)).conn;
  }

  /** The caller's conversations, most recently active first (at most `limit`; 0: the server's maximum). */
  async listConversations(limit = 0): Promise<ConversationSummary[]> {
    return (await (await this.current()).listConversations(limit)).conversations;
  }

  /** A page of a conversation, newest first: messages with `convSeq < before` (0 or absent: from the newest). */
  async history(to: To, opts: { before?: bigint | number; limit?: number } = {}): Promise<HistoryResponse> {
    return (await this.current()).history(toTarget(to), big(opts.before ?? 0n), opts.limit ?? 0);
  }

  async markRead(conversationId: string, readUpTo: bigint | number): Promise<MarkReadResponse> {
    return (await this.current()).markRead(conversationId, big(readUpTo));
  }

  async createGroup(req: { name: string; description?: string; members?: string[]; settings?: GroupSettingsInit }): Promise<GroupInfo> {
    return (await this.current()).createGroup(req.name, req.description ?? "", req.members ?? [], req.settings);
  }

  /** Changes only the given fields (name, description, settings). */
  async updateGroup(conversationId: string, change: { name?: string; description?: string; settings?: GroupSettingsInit }): Promise<GroupInfo> {
    return (await this.current()).updateGroup({
      conversationId,
      updateName: change.name !== undefined,
      name: change.name ?? "",
      updateDescription: change.description !== undefined,
      description: change.description ?? "",
      updateSettings: change.settings !== undefined,
      settings: change.settings,
    });
  }

  async addMembers(conversationId: string, usernames: string[]): Promise<AddMembersResponse> {
    return (await this.current()).addMembers(conversationId, usernames);
  }

  async removeMembers(conversationId: string, usernames: string[]): Promise<RemoveMembersResponse> {
    return (await this.current()).removeMembers(conversationId, usernames);
  }

  async leaveGroup(conversationId: string): Promise<void> {
    return (await this.current()).leaveGroup(conversationId);
  }

  async setRole(conversationId: string, username: string, role: GroupRole): Promise<GroupInfo> {
    return (await this.current()).setRole(conversationId, username, role);
  }

  async transferOwnership(conversationId: string, username: string): Promise<GroupInfo> {
    return (await this.current()).transferOwnership(conversationId, username);
  }

  async dissolveGroup(conversationId: string): Promise<void> {
    return (await this.current()).dissolveGroup(conversationId);
  }

  async getGroup(conversationId: string): Promise<GetGroupResponse> {
    return (await this.current()).getGroup(conversationId);
  }

  async listMembers(conversationId: string, opts: { afterUserId?: bigint | number; limit?: number } = {}): Promise<ListMembersResponse> {
    return (await this.current()).listMembers(conversationId, big(opts.afterUserId ?? 0n), opts.limit ?? 0);
  }

  async recall(conversationId: string, convSeq: bigint | number): Promise<void> {
    return (await this.current()).recall(conversationId, big(convSeq));
  }

  async edit(conversationId: string, convSeq: bigint | number, content: ContentInit): Promise<EditMessageResponse> {
    return (await this.current()).edit(conversationId, big(convSeq), toContent(content));
  }

  async deleteForMe(conversationId: string, convSeq: bigint | number): Promise<void> {
    return (await this.current()).deleteForMe(conversationId, big(convSeq));
  }

  async getReceipts(conversationId: string, convSeqs: Array<bigint | number>): Promise<ReceiptSummary[]> {
    return (await this.current()).getReceipts(conversationId, convSeqs.map(big));
  }

  async getPresence(usernames: string[]): Promise<Presence[]> {
    return (await this.current()).getPresence(usernames);
  }

  async setPrivacy(hidePresence: boolean): Promise<boolean> {
    return (await this.current()).setPrivacy(hidePresence);
  }

  async setTyping(conversationId: string, typing: boolean): Promise<void> {
    return (await this.current()).setTyping(conversationId, typing);
  }

  async block(username: string): Promise<void> {
    return (await this.current()).block(username);
  }

  async unblock(username: string): Promise<void> {
    return (await this.current()).unblock(username);
  }

  async listBlocked(): Promise<string[]> {
    return (await this.current()).listBlocked();
  }

  async ping(): Promise<Pong> {
    return (await this.current()).ping();
  }

  // ------------------------------------------------------------ link state

  private setLink(state: LinkState): void {
    if (this.link.kind === "stopped") return;
    if (state.kind === "up") this.generation++;
    this.link = state;
    for (const w of [...this.linkWaiters]) w();
  }

  /** Resolves at the next change of the link (or sync progress), or at `deadline`. */
  private waitLinkChange(deadline: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.linkWaiters.delete(done);
        cancel();
        resolve();
      };
      const cancel = after(deadline - Date.now(), done);
      this.linkWaiters.add(done);
    });
  }

  /** Waits until a connection of generation `generationMin` or newer is up (or the client stopped, or `deadline`). */
  private async waitUp(generationMin: number, deadline: number): Promise<{ generation: number; conn: Connection }> {
    for (;;) {
      const link = this.link;
      if (link.kind === "stopped") throw link.error;
      if (link.kind === "up" && this.generation >= generationMin && !link.conn.isClosed) {
        return { generation: this.generation, conn: link.conn };
      }
      if (link.kind === "idle") {
        throw new PigeonError("closed", "the client is not started (call start() or login())");
      }
      if (Date.now() >= deadline) throw new PigeonError("timeout", "no connection in time");
      await this.waitLinkChange(deadline);
    }
  }

  private async stop(error: PigeonError, reason: string): Promise<void> {
    const previous = this.link;
    if (previous.kind === "stopped") return;
    this.link = { kind: "stopped", error };
    for (const w of [...this.linkWaiters]) w();
    this.wakeSleep?.();
    if (previous.kind === "up") previous.conn.close(reason);
    this.uiState = "stopped";
    await this.emit({ type: "connection", state: "stopped", reason, error });
  }

  private get stopped(): boolean {
    return this.link.kind === "stopped";
  }

  /** Sleeps `ms` unless the client stops meanwhile. */
  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const cancel = after(ms, () => {
        this.wakeSleep = undefined;
        resolve();
      });
      this.wakeSleep = () => {
        cancel();
        this.wakeSleep = undefined;
        resolve();
      };
    });
  }

  // --------------------------------------------------------- the main loop

  /** The background task: connect, run a session, back off, repeat. */
  private run(first: Connection | undefined): void {
    this.setLink({ kind: "connecting" });
    void this.loop(first);
  }

  private async loop(first: Connection | undefined): Promise<void> {
    const backoff = new Backoff(this.opts.backoffMinMs ?? 200, this.opts.backoffMaxMs ?? 30_000, this.random);
    const endpoints = new Endpoints(this.opts.url, this.opts.endpoints ?? []);
    let initial = first;
    while (!this.stopped) {
      let end: SessionEnd;
      if (initial === undefined) {
        this.uiState = "connecting";
        await this.emit({ type: "connection", state: "connecting" });
        if (this.stopped) return;
      }
      try {
        const conn = initial ?? (await Connection.connect({ ...this.opts, url: endpoints.current(), token: this.currentToken }));
        initial = undefined;
        if (this.stopped) {
          conn.close();
          return;
        }
        this.reconnectRequested = false;
        backoff.reset();
        end = await this.session(conn);
        conn.close();
        if (!this.stopped) this.setLink({ kind: "connecting" });
      } catch (e) {
        // Unreachable: try the next known endpoint.
        endpoints.rotate();
        end = endFor(e);
      }
      if (this.stopped) return;
      if (end.kind === "fatal") {
        await this.stop(end.error, end.error.message);
        return;
      }
      let wait = backoff.next();
      if (end.kind === "redirected") {
        endpoints.learn(end.to, true);
        // The server said when; 0 means "use your own backoff" (protocol §3.4).
        if (end.afterMs > 0) wait = end.afterMs;
      }
      if (this.reconnectRequested) {
        this.reconnectRequested = false;
        backoff.reset();
        wait = 0;
      }
      this.uiState = "disconnected";
      await this.emit({ type: "connection", state: "disconnected", reason: end.error.message, error: end.error, retryInMs: wait });
      if (this.stopped) return;
      await this.pause(wait);
      if (this.reconnectRequested) {
        // Woken by reconnect(): this attempt goes now, later ones start from the shortest delay.
        this.reconnectRequested = false;
        backoff.reset();
      }
    }
  }

  /** One connection's life: the initial sync, then pushes, with heartbeats beside. */
  private async session(conn: Connection): Promise<SessionEnd> {
    const welcome = conn.welcome;
    this.lastWelcome = welcome;
    const scope = `${this.scopeBase}|${welcome.userId}|${welcome.deviceId}`;
    if (scope !== this.scope) {
      this.scope = scope;
      let stored: Uint8Array | undefined;
      try {
        stored = await this.storage.load(scope);
      } catch (e) {
        // Without the stored key the client syncs from the start: slower, never wrong.
        report("pigeon: loading the sync key failed; syncing from the start", e);
      }
      this.key = stored?.slice() ?? new Uint8Array();
    }
    this.setLink({ kind: "up", conn });
    const generation = this.generation;
    const stopHeartbeat = this.heartbeat(conn);
    try {
      this.uiState = "connected";
      await this.emit({ type: "connection", state: "connected", welcome });
      await this.syncAll(conn, generation);
      for (;;) {
        const push = await conn.nextPush();
        if (push === undefined) return endFor(conn.endReason ?? new PigeonError("closed", "connection closed"));
        switch (push.case) {
          case "eventsPush": {
            const p = push.value;
            if (!bytesEqual(p.prevKey, this.key)) {
              // We missed something (or applied it by sync already): pull instead.
              await this.syncAll(conn, generation);
            } else {
              await this.apply(p.events, p.key, "push");
            }
            break;
          }
          case "syncNotice":
            await this.syncAll(conn, generation);
            break;
          case "presencePush":
            if (push.value.presence) await this.emit({ type: "presence", presence: push.value.presence });
            break;
          case "typingPush":
            await this.emit({ type: "typing", typing: push.value });
            break;
          case "goodbye": {
            const error = PigeonError.fromGoodbye(push.value);
            if (error.isFatal) return { kind: "fatal", error };
            return { kind: "redirected", error, to: [...push.value.redirectTo], afterMs: push.value.retryAfterMs };
          }
        }
      }
    } catch (e) {
      return endFor(e);
    } finally {
      stopHeartbeat();
    }
  }

  /** Hands a batch to the handlers, then stores the key after it. */
  private async apply(events: Event[], key: Uint8Array, source: "sync" | "push"): Promise<void> {
    for (const raw of events) await this.emit(toLogEvent(raw, source));
    const changed = !bytesEqual(key, this.key);
    this.key = key.slice();
    if (changed && this.scope !== undefined) {
      try {
        await this.storage.save(this.scope, this.key);
      } catch (e) {
        // The next run gets these events again (applying them is idempotent).
        report("pigeon: storing the sync key failed", e);
      }
    }
  }

  /** Syncs from the current key until the server has nothing more. */
  private async syncAll(conn: Connection, generation: number): Promise<void> {
    for (;;) {
      const key = this.key;
      let resp;
      try {
        resp = await conn.sync(key, SYNC_LIMIT);
      } catch (e) {
        if (e instanceof PigeonError && (e.code === ErrorCode.RESYNC_REQUIRED || e.code === ErrorCode.INVALID_SYNC_KEY)) {
          if (key.length === 0) {
            throw new PigeonError("protocol", `the server refuses the empty sync key: ${e.message}`, { cause: e });
          }
          await this.emit({ type: "resyncRequired" });
          await this.apply([], new Uint8Array(), "sync");
          continue;
        }
        throw e;
      }
      // has_more without progress would loop forever.
      const stalled = resp.events.length === 0 && bytesEqual(resp.key, key);
      await this.apply(resp.events, resp.key, "sync");
      if (!resp.hasMore || stalled) break;
    }
    if (this.syncedGeneration !== generation) {
      this.syncedGeneration = generation;
      for (const w of [...this.linkWaiters]) w();
    }
    await this.emit({ type: "synced", key: this.key.slice() });
  }

  /**
   * Pings whenever nothing was sent for the heartbeat interval (protocol
   * §3.3); a ping with neither a pong nor any other frame back within the
   * interval means the connection is dead: it is closed, and the session
   * reconnects.
   */
  private heartbeat(conn: Connection): () => void {
    const announced = conn.welcome.heartbeatIntervalMs;
    const interval = Math.max(
      HEARTBEAT_INTERVAL_MIN_MS,
      this.opts.heartbeatIntervalMs ?? (announced > 0 ? announced : HEARTBEAT_INTERVAL_DEFAULT_MS),
    );
    // Background timers: the socket keeps a Node process alive, not the heartbeat.
    let cancel = () => {};
    let stopped = false;
    const tick = () => {
      if (stopped || conn.isClosed) return;
      const idle = Date.now() - conn.lastSentAt;
      if (idle < interval) {
        cancel = after(interval - idle, tick, true);
        return;
      }
      const sentAt = Date.now();
      conn.ping(interval).then(
        () => {
          cancel = after(interval, tick, true);
        },
        (e: unknown) => {
          if (stopped || conn.isClosed) return;
          if (e instanceof PigeonError && e.kind === "timeout" && conn.lastReceivedAt <= sentAt) {
            conn.close("heartbeat: no pong in time");
          } else {
            cancel = after(interval, tick, true);
          }
        },
      );
    };
    cancel = after(interval, tick, true);
    return () => {
      stopped = true;
      cancel();
    };
  }
}

/** Logs to the console where there is one. */
function report(what: string, error: unknown): void {
  (globalThis as { console?: { error(...a: unknown[]): void } }).console?.error(what, error);
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
