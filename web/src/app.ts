// The controller: owns the state and the SDK client, turns SDK events into
// model changes and user actions into requests. The only module that talks
// to the SDK.

import {
  PigeonClient,
  PigeonError,
  login as sdkLogin,
  register as sdkRegister,
  type SyncKeyStorage,
} from "@pigeon/sdk";
import type * as pb from "@pigeon/sdk";
import * as M from "./model";
import * as P from "./persist";

/** Messages per history page. */
export const HISTORY_PAGE = 30;
/** `typing = true` is repeated this often while the user types (the server
 * relays at most one per 2 s, protocol §13.2). */
const TYPING_REPEAT_MS = 2100;
/** Silence in the composer after which we say we stopped typing. */
const TYPING_IDLE_MS = 4000;
/** How long a notice stays up. */
const NOTICE_MS = 6000;
/** Usernames per presence query (the server's limit is 500). */
const PRESENCE_QUERY_MAX = 500;

/** The WebSocket address of the server that served this page. */
export function serverUrl(): string {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws`;
}

function errorText(e: unknown): string {
  if (e instanceof PigeonError) {
    switch (e.codeName) {
      case "INVALID_CREDENTIALS":
        return "Wrong username or password.";
      case "USERNAME_TAKEN":
        return "That username is taken.";
      case "INVALID_USERNAME":
        return "Usernames are 3–32 characters: a–z, 0–9, _ . - (starting with a letter or digit).";
      case "INVALID_PASSWORD":
        return "Passwords are at least 8 characters.";
      case "USER_NOT_FOUND":
        return e.message.includes(":") ? e.message : "No such user.";
      case "REGISTRATION_CLOSED":
        return "Registration is closed on this server.";
      case "BUSY":
        return "The server is busy; try again in a moment.";
      case undefined:
        break;
      default:
        return `${e.codeName}: ${e.message}`;
    }
    if (e.kind === "timeout" || e.kind === "transport" || e.kind === "closed") {
      return "Cannot reach the server.";
    }
  }
  return e instanceof Error ? e.message : String(e);
}

const n = (x: bigint | number | undefined): number => Number(x ?? 0);

function toMsg(m: pb.Message): M.Msg {
  return {
    convId: m.conversationId,
    convSeq: n(m.convSeq),
    senderId: n(m.senderId),
    sender: m.senderUsername,
    clientMsgId: m.clientMsgId,
    sentAtMs: n(m.sentAtMs),
    text: m.content?.text ?? "",
    recalled: m.recalled,
    editedAtMs: n(m.editedAtMs),
  };
}

export class App {
  readonly state = M.newState();
  private client: PigeonClient | null = null;
  private session: P.Session | undefined;
  private listeners = new Set<() => void>();
  private typingSentAt = new Map<string, number>();
  private typingIdle = new Map<string, ReturnType<typeof setTimeout>>();
  private inFlight = new Set<string>();
  private markingRead = new Set<string>();
  private caughtUp = false;
  private noticeSeq = 0;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private presenceTimer: ReturnType<typeof setTimeout> | undefined;
  /** Set when the login screen should say why it is shown. */
  authMessage = "";

  constructor() {
    this.session = P.loadSession();
  }

  get loggedIn(): boolean {
    return this.session !== undefined;
  }

  subscribe(f: () => void): void {
    this.listeners.add(f);
  }

  private changed(): void {
    for (const f of this.listeners) f();
  }

  // ------------------------------------------------------------ accounts

  async register(username: string, password: string): Promise<void> {
    try {
      await sdkRegister({ url: serverUrl() }, username, password);
    } catch (e) {
      throw new Error(errorText(e));
    }
    await this.login(username, password);
  }

  async login(username: string, password: string): Promise<void> {
    let r: pb.LoginResponse;
    try {
      r = await sdkLogin({ url: serverUrl() }, username, password, "web");
    } catch (e) {
      throw new Error(errorText(e));
    }
    this.session = { token: r.token, userId: n(r.userId), username: r.username, deviceId: n(r.deviceId) };
    P.saveSession(this.session);
    this.authMessage = "";
    await this.start();
  }

  async logout(): Promise<void> {
    const c = this.client;
    this.client = null;
    if (c) {
      try {
        await c.logout();
      } catch {
        await c.close().catch(() => {});
      }
    }
    this.forget("");
  }

  /** Drops the session and all local state (after logout or a dead token). */
  private forget(message: string): void {
    P.clearSession(this.session);
    this.session = undefined;
    this.authMessage = message;
    Object.assign(this.state, M.newState());
    this.changed();
  }

  // ------------------------------------------------------------ start

  /** Starts the client from the stored session: loads what was persisted,
   * connects, loads the conversation list, and syncs from the stored key. */
  async start(): Promise<void> {
    const sess = this.session;
    if (!sess) return;
    const s = this.state;
    s.me = { userId: sess.userId, username: sess.username, deviceId: sess.deviceId };
    s.connection = "connecting";
    M.receiptsFromJson(s, P.loadSyncState(sess.userId)?.receipts);
    for (const o of P.loadOutbox(sess.userId)) s.pending.set(o.clientMsgId, { ...o });

    const storage: SyncKeyStorage = {
      load: (scope) => {
        const st = P.loadSyncState(sess.userId);
        return st && st.scope === scope && st.key ? P.fromBase64(st.key) : undefined;
      },
      save: (scope, key) => {
        P.saveSyncState(sess.userId, { scope, key: P.toBase64(key), receipts: M.receiptsToJson(s) });
      },
      remove: () => P.removeSyncState(sess.userId),
    };
    const client = new PigeonClient({ url: serverUrl(), token: sess.token, storage, clientName: "pigeon-web/0.1.0" });
    this.client = client;
    // Notices are for news: not for the first catch-up of a page load (the
    // unread counts show it), but for what arrives after an outage.
    this.caughtUp = false;
    this.wire(client);
    client.start();
    this.changed();
  }

  /** The browser says the network went away or came back. A socket on a
   * dead network can look open until a heartbeat goes unanswered, and the
   * backoff grows while offline: drop the connection at once, and connect
   * at once when the network is back. Pending sends stay pending. */
  networkChanged(): void {
    this.client?.reconnect();
    if (!navigator.onLine) this.state.typing.clear();
    this.changed();
  }

  /** The connection state to show: the browser knows first when it is offline. */
  get connectionShown(): M.State["connection"] {
    return navigator.onLine ? this.state.connection : "disconnected";
  }

  private wire(client: PigeonClient): void {
    const s = this.state;
    const live = () => this.client === client;
    client.on("connection", (e) => {
      if (!live()) return;
      s.connection = e.state === "idle" ? "connecting" : e.state;
      if (e.state === "connected") {
        void this.refreshList();
        void this.refreshPresence();
        this.resendOutbox();
        if (s.openId) void this.loadNewest(s.openId);
      } else if (e.state === "disconnected") {
        s.typing.clear();
        for (const p of s.presence.values()) if (p.state === "online") p.state = "unknown";
      } else if (e.state === "stopped" && e.error?.isFatal) {
        this.client = null;
        this.forget(`Your session ended (${e.error.codeName ?? e.error.kind}). Please log in again.`);
        return;
      }
      this.changed();
    });
    client.on("message", (e) => {
      if (!live()) return;
      const m = toMsg(e.message);
      const fresh = M.applyMessage(s, m);
      const c = s.conversations.get(m.convId)!;
      if (!c.group && !c.peer) this.scheduleRefresh();
      this.presenceCheck(c);
      if (fresh && (e.meta.source === "push" || this.caughtUp)) this.notify(c, m);
      this.changed();
      this.maybeMarkRead();
    });
    client.on("readMarker", (e) => {
      if (!live()) return;
      M.applyRead(s, e.marker.conversationId, n(e.marker.readUpTo));
      this.changed();
    });
    client.on("receipt", (e) => {
      if (!live() || e.kind === "unknown") return;
      M.applyReceipt(s, {
        convId: e.receipt.conversationId,
        userId: n(e.receipt.userId),
        username: e.receipt.username,
        kind: e.kind,
        upTo: n(e.receipt.upTo),
      });
      this.changed();
    });
    client.on("groupChange", (e) => {
      if (!live()) return;
      const g = e.change.group;
      const members = e.change.members.map((m) => ({ userId: n(m.userId), username: m.username }));
      const removing = e.kind === "membersRemoved" || e.kind === "memberLeft";
      M.applyGroup(s, {
        convId: e.change.conversationId,
        name: g?.name ?? e.change.conversationId,
        memberCount: n(g?.memberCount),
        dissolved: g?.dissolved ?? false,
        createdAtMs: n(g?.createdAtMs),
        added: removing ? [] : members,
        removed: removing ? members.map((m) => m.userId) : [],
      });
      this.changed();
    });
    client.on("recall", (e) => {
      if (!live()) return;
      M.applyRecall(s, e.recall.conversationId, n(e.recall.convSeq));
      this.changed();
    });
    client.on("edit", (e) => {
      if (!live()) return;
      M.applyEdit(s, e.edit.conversationId, n(e.edit.convSeq), e.edit.content?.text ?? "", n(e.edit.editedAtMs));
      this.changed();
    });
    client.on("delete", (e) => {
      if (!live()) return;
      M.applyDeleted(s, e.deleted.conversationId, n(e.deleted.convSeq));
      this.changed();
    });
    client.on("presence", (e) => {
      if (!live()) return;
      s.presence.set(e.presence.username, presenceOf(e.presence));
      this.changed();
    });
    client.on("typing", (e) => {
      if (!live()) return;
      M.setTyping(s, e.typing.conversationId, e.typing.username, e.typing.typing, Date.now());
      this.changed();
      // Let the indicator lapse on screen when no refresh comes.
      setTimeout(() => this.changed(), M.TYPING_SHOW_MS + 50);
    });
    client.on("synced", () => {
      if (!live()) return;
      this.caughtUp = true;
      this.maybeMarkRead();
    });
    client.on("resyncRequired", () => {
      if (!live()) return;
      for (const c of s.conversations.values()) {
        c.historyLoaded = false;
      }
      void this.refreshList();
      if (s.openId) void this.loadNewest(s.openId);
    });
  }

  /** Presence is UNKNOWN between users who share no conversation yet
   * (protocol §13.1), and no push comes when the first message changes
   * that: ask again once a direct conversation has messages. */
  private presenceCheck(c: M.Conversation): void {
    if (c.group || !c.peer || !c.last || c.peerId === this.state.me?.userId) return;
    if ((this.state.presence.get(c.peer)?.state ?? "unknown") !== "unknown") return;
    clearTimeout(this.presenceTimer);
    this.presenceTimer = setTimeout(() => void this.refreshPresence(), 300);
  }

  private scheduleRefresh(): void {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => void this.refreshList(), 300);
  }

  /** Reloads the conversation list (names, unread counts, last messages). */
  async refreshList(): Promise<void> {
    const client = this.client;
    if (!client) return;
    let list: pb.ConversationSummary[];
    try {
      list = await client.listConversations(0);
    } catch {
      return; // offline: the next connect reloads it
    }
    if (this.client !== client) return;
    const me = this.state.me?.userId;
    for (const c of list) {
      M.applySummary(this.state, {
        id: c.conversationId,
        peerId: n(c.peerUserId),
        peer: c.peerUsername,
        last: c.lastMessage ? toMsg(c.lastMessage) : undefined,
        unread: n(c.unreadCount),
        readUpTo: n(c.readUpTo),
        group: c.group
          ? {
              name: c.group.name,
              memberCount: n(c.group.memberCount),
              dissolved: c.group.dissolved,
              createdAtMs: n(c.group.createdAtMs),
            }
          : undefined,
        isMember: c.group ? c.myRole !== 0 : true,
      });
      if (c.peerUsername && n(c.peerUserId) !== me && !this.state.presence.has(c.peerUsername)) {
        this.state.presence.set(c.peerUsername, { state: "unknown", lastSeenMs: 0 });
      }
    }
    this.changed();
    void this.refreshPresence();
    this.maybeMarkRead();
  }

  /** Asks for the presence of every direct peer (pushes only report changes). */
  async refreshPresence(): Promise<void> {
    const client = this.client;
    const me = this.state.me;
    if (!client || !me) return;
    const names = [...this.state.conversations.values()]
      .filter((c) => !c.group && c.peer && c.peerId !== me.userId)
      .map((c) => c.peer)
      .slice(0, PRESENCE_QUERY_MAX);
    if (names.length === 0) return;
    try {
      const ps = await client.getPresence(names);
      for (const p of ps) this.state.presence.set(p.username, presenceOf(p));
      this.changed();
    } catch {
      // offline, or a peer was deleted: the next connect asks again
    }
  }

  // ------------------------------------------------------------ conversations

  /** Opens a conversation: loads its newest page if not loaded yet. */
  open(id: string | null): void {
    const s = this.state;
    s.openId = id;
    if (id) {
      M.ensureConversation(s, id);
      s.notices = s.notices.filter((x) => x.convId !== id);
      if (!s.conversations.get(id)!.historyLoaded) void this.loadNewest(id);
    }
    this.changed();
    this.maybeMarkRead();
  }

  /** The direct conversation with `username` (looked up via History, which
   * names it even before its first message). Returns its id. */
  async startDirect(username: string): Promise<string> {
    const client = this.requireClient();
    const name = username.trim().toLowerCase();
    let r: pb.HistoryResponse;
    try {
      r = await client.history({ username: name }, { limit: HISTORY_PAGE });
    } catch (e) {
      throw new Error(errorText(e));
    }
    const c = M.ensureConversation(this.state, r.conversationId);
    c.peer = name;
    this.applyPage(c, r);
    if (!this.state.presence.has(name)) void this.refreshPresence();
    return r.conversationId;
  }

  async createGroup(name: string, members: string[]): Promise<string> {
    const client = this.requireClient();
    let g: pb.GroupInfo;
    try {
      g = await client.createGroup({ name: name.trim(), members: members.map((m) => m.trim().toLowerCase()) });
    } catch (e) {
      throw new Error(errorText(e));
    }
    M.applyGroup(this.state, {
      convId: g.conversationId,
      name: g.name,
      memberCount: n(g.memberCount),
      dissolved: g.dissolved,
      createdAtMs: n(g.createdAtMs),
    });
    const c = this.state.conversations.get(g.conversationId)!;
    c.historyLoaded = true;
    this.changed();
    return g.conversationId;
  }

  private async loadNewest(id: string): Promise<void> {
    const client = this.client;
    if (!client) return;
    try {
      const r = await client.history({ conversationId: id }, { limit: HISTORY_PAGE });
      const c = M.ensureConversation(this.state, id);
      this.applyPage(c, r);
    } catch (e) {
      // A conversation that is not ours (an old or mistyped address): drop
      // it. Anything else (offline): loaded again on the next connect.
      const code = e instanceof PigeonError ? e.codeName : undefined;
      if (code === "CONVERSATION_NOT_FOUND" || code === "FORBIDDEN") {
        const c = this.state.conversations.get(id);
        if (c && c.messages.size === 0) this.state.conversations.delete(id);
        if (this.state.openId === id) this.state.openId = null;
        this.changed();
      }
    }
  }

  async loadOlder(id: string): Promise<void> {
    const client = this.requireClient();
    const c = this.state.conversations.get(id);
    if (!c || !c.hasOlder) return;
    const oldest = Math.min(...c.messages.keys());
    const r = await client.history({ conversationId: id }, { before: oldest, limit: HISTORY_PAGE });
    this.applyPage(c, r, true);
  }

  private applyPage(c: M.Conversation, r: pb.HistoryResponse, older = false): void {
    for (const m of r.messages) M.applyMessage(this.state, toMsg(m));
    // A newest page loaded again (after a reconnect) says nothing about the
    // older pages already loaded.
    if (older || !c.historyLoaded) c.hasOlder = r.hasMore;
    c.historyLoaded = true;
    this.changed();
    this.maybeMarkRead();
  }

  /** Marks the open conversation read when the page is visible and it has
   * unread messages. */
  maybeMarkRead(): void {
    const s = this.state;
    const client = this.client;
    if (!client || !s.openId || document.visibilityState !== "visible") return;
    const c = s.conversations.get(s.openId);
    if (!c || !c.last || this.markingRead.has(c.id)) return;
    const newest = c.last.convSeq;
    if (newest <= c.readUpTo && M.unreadCount(c) === 0) return;
    this.markingRead.add(c.id);
    client
      .markRead(c.id, newest)
      .then((r) => {
        this.markingRead.delete(c.id);
        M.applyRead(s, c.id, n(r.readUpTo), n(r.unreadCount) === 0 ? 0 : undefined);
        this.changed();
        // More arrived meanwhile.
        if (c.last && c.last.convSeq > c.readUpTo) setTimeout(() => this.maybeMarkRead(), 200);
      })
      .catch(() => {
        // Offline: the next connect (or message, or visibility change) tries again.
        this.markingRead.delete(c.id);
      });
  }

  // ------------------------------------------------------------ sending

  send(convId: string, text: string): void {
    const body = text.trim();
    const me = this.state.me;
    if (!body || !me) return;
    const p: M.Pending = { clientMsgId: P.newClientMsgId(), convId, text: body, createdAtMs: Date.now() };
    this.state.pending.set(p.clientMsgId, p);
    this.saveOutbox();
    this.stopTyping(convId);
    this.changed();
    void this.deliver(p);
  }

  /** Sends one outbox entry until the server acknowledges or refuses it. */
  private async deliver(p: M.Pending): Promise<void> {
    const client = this.client;
    const me = this.state.me;
    if (!client || !me || this.inFlight.has(p.clientMsgId)) return;
    this.inFlight.add(p.clientMsgId);
    try {
      const ack = await client.send({ conversationId: p.convId }, p.text, { clientMsgId: p.clientMsgId });
      M.applyMessage(this.state, {
        convId: ack.conversationId,
        convSeq: n(ack.convSeq),
        senderId: me.userId,
        sender: me.username,
        clientMsgId: p.clientMsgId,
        sentAtMs: n(ack.sentAtMs),
        text: p.text,
        recalled: false,
        editedAtMs: 0,
      });
      this.state.pending.delete(p.clientMsgId);
      const c = this.state.conversations.get(ack.conversationId);
      if (c) this.presenceCheck(c);
    } catch (e) {
      // Final refusals stay on screen, marked; anything else (offline for
      // longer than the SDK's send deadline) is retried at the next connect.
      if (e instanceof PigeonError && e.kind === "server" && !retryable(e)) {
        p.error = errorText(e);
        this.state.pending.delete(p.clientMsgId);
        this.state.pending.set(p.clientMsgId, p);
      }
    } finally {
      this.inFlight.delete(p.clientMsgId);
      this.saveOutbox();
      this.changed();
    }
  }

  private resendOutbox(): void {
    for (const p of this.state.pending.values()) if (!p.error) void this.deliver(p);
  }

  dismissFailed(clientMsgId: string): void {
    this.state.pending.delete(clientMsgId);
    this.saveOutbox();
    this.changed();
  }

  private saveOutbox(): void {
    const me = this.state.me;
    if (!me) return;
    P.saveOutbox(
      me.userId,
      [...this.state.pending.values()]
        .filter((p) => !p.error)
        .map(({ clientMsgId, convId, text, createdAtMs }) => ({ clientMsgId, convId, text, createdAtMs })),
    );
  }

  // ------------------------------------------------------------ typing

  /** The composer changed: tell the peer we type (repeated while typing). */
  typed(convId: string, empty: boolean): void {
    const client = this.client;
    if (!client || this.state.connection !== "connected") return;
    if (empty) {
      this.stopTyping(convId);
      return;
    }
    const now = Date.now();
    const last = this.typingSentAt.get(convId) ?? 0;
    if (now - last >= TYPING_REPEAT_MS) {
      this.typingSentAt.set(convId, now);
      client.setTyping(convId, true).catch(() => {});
    }
    clearTimeout(this.typingIdle.get(convId));
    this.typingIdle.set(
      convId,
      setTimeout(() => this.stopTyping(convId), TYPING_IDLE_MS),
    );
  }

  private stopTyping(convId: string): void {
    clearTimeout(this.typingIdle.get(convId));
    this.typingIdle.delete(convId);
    if (!this.typingSentAt.has(convId)) return;
    this.typingSentAt.delete(convId);
    this.client?.setTyping(convId, false).catch(() => {});
  }

  // ------------------------------------------------------------ notices

  private notify(c: M.Conversation, m: M.Msg): void {
    const s = this.state;
    if (c.id === s.openId && document.visibilityState === "visible") return;
    const id = ++this.noticeSeq;
    const from = c.group ? `${m.sender} in ${c.group.name}` : m.sender;
    s.notices = [...s.notices.filter((x) => x.convId !== c.id), { id, convId: c.id, title: from, text: m.text }].slice(-3);
    setTimeout(() => {
      s.notices = s.notices.filter((x) => x.id !== id);
      this.changed();
    }, NOTICE_MS);
  }

  dismissNotice(id: number): void {
    this.state.notices = this.state.notices.filter((x) => x.id !== id);
    this.changed();
  }

  private requireClient(): PigeonClient {
    if (!this.client) throw new Error("Not logged in.");
    return this.client;
  }
}

function retryable(e: PigeonError): boolean {
  return ["BUSY", "INTERNAL", "SHUTTING_DOWN", "TOO_MANY_REQUESTS"].includes(e.codeName ?? "");
}

function presenceOf(p: pb.Presence): M.PresenceInfo {
  const state = p.state === 1 ? "online" : p.state === 2 ? "offline" : "unknown";
  return { state, lastSeenMs: n(p.lastSeenMs) };
}
