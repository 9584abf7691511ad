// The app's state and the rules that change it. Pure: no DOM, no network, no
// SDK types (backend.ts converts the SDK's protobuf objects into these), so
// the rules can be read and reasoned about on their own.
//
// Every apply function is idempotent (protocol §7.4: events may arrive more
// than once, and the conversation list and history overlap with sync).

/** A message as the app shows it. Numbers, not bigints: ids and sequence
 * numbers of a chat server stay far below 2^53. */
export interface Msg {
  convId: string;
  convSeq: number;
  senderId: number;
  sender: string;
  clientMsgId: string;
  sentAtMs: number;
  text: string;
  recalled: boolean;
  editedAtMs: number;
}

/** A message of ours not yet acknowledged by the server. */
export interface Pending {
  clientMsgId: string;
  convId: string;
  text: string;
  createdAtMs: number;
  /** Set when the server refused it for good. */
  error?: string;
}

export interface GroupState {
  name: string;
  memberCount: number;
  dissolved: boolean;
  /** Member usernames by user id, when known (from group events). */
  members: Map<number, string>;
  /** Whether we are (still) a member. */
  isMember: boolean;
}

/** What one other participant has received and read in a conversation. */
export interface PeerPosition {
  username: string;
  delivered: number;
  read: number;
}

export interface Conversation {
  id: string;
  /** Direct: the other participant (ourselves for notes to self). */
  peerId: number;
  peer: string;
  group?: GroupState;
  /** Messages we hold, by conv_seq. */
  messages: Map<number, Msg>;
  /** conv_seqs deleted for us (§8.8): never shown, also when replayed. */
  hidden: Set<number>;
  last?: Msg;
  /** Our read position (protocol §8.2). */
  readUpTo: number;
  /** The server's unread count as of `baselineSeq` (from ListConversations
   * or MarkRead); messages above it are counted here, from `messages`. */
  baselineSeq: number;
  baselineUnread: number;
  /** conv_seqs of messages from others above `baselineSeq`. */
  unreadAbove: Set<number>;
  /** Receipts for our messages, by the other user's id. */
  receipts: Map<number, PeerPosition>;
  /** History paging: the oldest conv_seq loaded, and whether older exist. */
  historyLoaded: boolean;
  hasOlder: boolean;
  /** Sort key: activity time. */
  activityMs: number;
}

export type PresenceInfo = { state: "online" | "offline" | "unknown"; lastSeenMs: number };

export interface Notice {
  id: number;
  convId: string;
  title: string;
  text: string;
}

export interface State {
  me: { userId: number; username: string; deviceId: number } | null;
  connection: "connecting" | "connected" | "disconnected" | "stopped";
  conversations: Map<string, Conversation>;
  pending: Map<string, Pending>;
  presence: Map<string, PresenceInfo>;
  /** Who is typing where: convId -> username -> expiry time (ms). */
  typing: Map<string, Map<string, number>>;
  openId: string | null;
  notices: Notice[];
}

export function newState(): State {
  return {
    me: null,
    connection: "connecting",
    conversations: new Map(),
    pending: new Map(),
    presence: new Map(),
    typing: new Map(),
    openId: null,
    notices: [],
  };
}

/** How long a typing indicator lasts without being refreshed (§13.2). */
export const TYPING_SHOW_MS = 6000;

export function isGroupId(id: string): boolean {
  return id.startsWith("g:");
}

/** The other participant's user id in a direct conversation id `d:a:b`. */
export function directPeerId(id: string, myId: number): number {
  const [, a, b] = id.split(":");
  const x = Number(a);
  const y = Number(b);
  return x === myId ? y : x;
}

export function ensureConversation(s: State, id: string): Conversation {
  let c = s.conversations.get(id);
  if (!c) {
    c = {
      id,
      peerId: 0,
      peer: "",
      group: isGroupId(id)
        ? { name: id, memberCount: 0, dissolved: false, members: new Map(), isMember: true }
        : undefined,
      messages: new Map(),
      hidden: new Set(),
      readUpTo: 0,
      baselineSeq: 0,
      baselineUnread: 0,
      unreadAbove: new Set(),
      receipts: new Map(),
      historyLoaded: false,
      hasOlder: false,
      activityMs: 0,
    };
    if (!isGroupId(id) && s.me) c.peerId = directPeerId(id, s.me.userId);
    s.conversations.set(id, c);
  }
  return c;
}

/** Stores a message (from sync, a push or history). Returns true when it was
 * new to us and from someone else (worth a notice). */
export function applyMessage(s: State, m: Msg): boolean {
  const c = ensureConversation(s, m.convId);
  const mine = s.me !== null && m.senderId === s.me.userId;
  if (c.hidden.has(m.convSeq)) return false;
  const had = c.messages.get(m.convSeq);
  if (had) {
    // Keep later changes (§8.1): a replayed event never undoes a recall or edit.
    if (!had.recalled && m.recalled) had.recalled = true;
    if (m.editedAtMs > had.editedAtMs && !had.recalled) {
      had.text = m.text;
      had.editedAtMs = m.editedAtMs;
    }
    if (had.recalled) had.text = "";
  } else {
    c.messages.set(m.convSeq, { ...m });
  }
  if (!c.last || m.convSeq >= c.last.convSeq) {
    c.last = c.messages.get(m.convSeq);
    c.activityMs = Math.max(c.activityMs, m.sentAtMs);
  }
  if (!c.group && !c.peer) {
    if (!mine) c.peer = m.sender;
    if (s.me && c.peerId === s.me.userId) c.peer = s.me.username;
  }
  if (mine) {
    c.readUpTo = Math.max(c.readUpTo, m.convSeq);
    s.pending.delete(m.clientMsgId);
  } else if (m.convSeq > c.baselineSeq) {
    c.unreadAbove.add(m.convSeq);
  }
  return !had && !mine && m.convSeq > c.readUpTo;
}

/** Conversation summary from ListConversations: replaces the baseline. */
export function applySummary(
  s: State,
  sum: {
    id: string;
    peerId: number;
    peer: string;
    last?: Msg;
    unread: number;
    readUpTo: number;
    group?: { name: string; memberCount: number; dissolved: boolean; createdAtMs: number };
    isMember: boolean;
  },
): void {
  const c = ensureConversation(s, sum.id);
  if (sum.peer) {
    c.peerId = sum.peerId;
    c.peer = sum.peer;
  }
  if (sum.group && c.group) {
    c.group.name = sum.group.name;
    c.group.memberCount = sum.group.memberCount;
    c.group.dissolved = sum.group.dissolved;
    c.group.isMember = sum.isMember;
    c.activityMs = Math.max(c.activityMs, sum.group.createdAtMs);
  }
  c.readUpTo = Math.max(c.readUpTo, sum.readUpTo);
  const seq = sum.last?.convSeq ?? 0;
  if (seq >= c.baselineSeq) {
    c.baselineSeq = seq;
    c.baselineUnread = sum.unread;
    for (const x of [...c.unreadAbove]) if (x <= seq) c.unreadAbove.delete(x);
  }
  if (sum.last) applyMessage(s, sum.last);
}

/** Our read position moved (a ReadMarker, a MarkRead answer, or our send). */
export function applyRead(s: State, convId: string, upTo: number, unreadAtUpTo?: number): void {
  const c = ensureConversation(s, convId);
  c.readUpTo = Math.max(c.readUpTo, upTo);
  if (unreadAtUpTo !== undefined && upTo >= c.baselineSeq) {
    // The server counted afresh at upTo.
    c.baselineSeq = upTo;
    c.baselineUnread = unreadAtUpTo;
    for (const x of [...c.unreadAbove]) if (x <= upTo) c.unreadAbove.delete(x);
  }
}

export function unreadCount(c: Conversation): number {
  const base = c.readUpTo >= c.baselineSeq ? 0 : c.baselineUnread;
  const floor = Math.max(c.readUpTo, c.baselineSeq);
  let n = 0;
  for (const x of c.unreadAbove) if (x > floor) n++;
  return base + n;
}

export function applyReceipt(
  s: State,
  r: { convId: string; userId: number; username: string; kind: "delivered" | "read"; upTo: number },
): void {
  const c = ensureConversation(s, r.convId);
  const p = c.receipts.get(r.userId) ?? { username: r.username, delivered: 0, read: 0 };
  if (r.kind === "read") p.read = Math.max(p.read, r.upTo);
  else p.delivered = Math.max(p.delivered, r.upTo);
  c.receipts.set(r.userId, p);
}

export type Status = "sending" | "failed" | "sent" | "delivered" | "read";

/** The mark on one of our messages: read when every other participant has
 * read it, delivered when every one has received it (a read counts as
 * received, §8.4). */
export function messageStatus(s: State, c: Conversation, m: Msg): { status: Status; detail: string } {
  const others = c.group ? Math.max(c.group.memberCount - 1, 0) : s.me && c.peerId === s.me.userId ? 0 : 1;
  if (others === 0) return { status: "sent", detail: "sent" };
  let delivered = 0;
  let read = 0;
  const readers: string[] = [];
  for (const p of c.receipts.values()) {
    if (p.read >= m.convSeq) {
      read++;
      readers.push(p.username);
    }
    if (Math.max(p.read, p.delivered) >= m.convSeq) delivered++;
  }
  const detail = c.group
    ? `delivered to ${delivered} of ${others}, read by ${read} of ${others}${readers.length ? ` (${readers.join(", ")})` : ""}`
    : read
      ? "read"
      : delivered
        ? "delivered"
        : "sent";
  if (read >= others) return { status: "read", detail };
  if (delivered >= others) return { status: "delivered", detail };
  return { status: "sent", detail };
}

export function applyGroup(
  s: State,
  g: {
    convId: string;
    name: string;
    memberCount: number;
    dissolved: boolean;
    createdAtMs: number;
    added?: { userId: number; username: string }[];
    removed?: number[];
  },
): void {
  const c = ensureConversation(s, g.convId);
  if (!c.group) return;
  c.group.name = g.name;
  c.group.memberCount = g.memberCount;
  c.group.dissolved = g.dissolved;
  c.activityMs = Math.max(c.activityMs, g.createdAtMs);
  for (const m of g.added ?? []) {
    c.group.members.set(m.userId, m.username);
    if (s.me && m.userId === s.me.userId) c.group.isMember = true;
  }
  for (const id of g.removed ?? []) {
    c.group.members.delete(id);
    if (s.me && id === s.me.userId) c.group.isMember = false;
  }
}

export function applyRecall(s: State, convId: string, convSeq: number): void {
  const m = s.conversations.get(convId)?.messages.get(convSeq);
  if (m) {
    m.recalled = true;
    m.text = "";
  }
}

export function applyEdit(s: State, convId: string, convSeq: number, text: string, editedAtMs: number): void {
  const m = s.conversations.get(convId)?.messages.get(convSeq);
  if (m && !m.recalled && editedAtMs >= m.editedAtMs) {
    m.text = text;
    m.editedAtMs = editedAtMs;
  }
}

export function applyDeleted(s: State, convId: string, convSeq: number): void {
  const c = ensureConversation(s, convId);
  c.hidden.add(convSeq);
  c.messages.delete(convSeq);
}

export function setTyping(s: State, convId: string, username: string, typing: boolean, now: number): void {
  let t = s.typing.get(convId);
  if (!t) {
    t = new Map();
    s.typing.set(convId, t);
  }
  if (typing) t.set(username, now + TYPING_SHOW_MS);
  else t.delete(username);
}

/** Who is typing in a conversation now (expired indicators left out). */
export function typingIn(s: State, convId: string, now: number): string[] {
  const t = s.typing.get(convId);
  if (!t) return [];
  return [...t].filter(([, until]) => until > now).map(([name]) => name);
}

export function title(s: State, c: Conversation): string {
  if (c.group) return c.group.name;
  if (c.peer) return c.peer;
  return s.me && c.peerId === s.me.userId ? s.me.username : `user ${c.peerId}`;
}

/** Conversations by activity, newest first (as ListConversations sorts). */
export function sortedConversations(s: State): Conversation[] {
  return [...s.conversations.values()]
    .filter((c) => c.last || c.group || c.id === s.openId)
    .sort((a, b) => b.activityMs - a.activityMs || (a.id < b.id ? -1 : 1));
}

/** Messages of a conversation in order, with our pending ones at the end. */
export function timeline(s: State, c: Conversation): { msgs: Msg[]; pending: Pending[] } {
  const msgs = [...c.messages.values()].sort((a, b) => a.convSeq - b.convSeq);
  const pending = [...s.pending.values()]
    .filter((p) => p.convId === c.id)
    .sort((a, b) => a.createdAtMs - b.createdAtMs);
  return { msgs, pending };
}

/** Receipts as plain JSON, to persist beside the sync key. */
export function receiptsToJson(s: State): Record<string, Record<string, PeerPosition>> {
  const out: Record<string, Record<string, PeerPosition>> = {};
  for (const c of s.conversations.values()) {
    if (c.receipts.size === 0) continue;
    out[c.id] = Object.fromEntries([...c.receipts].map(([id, p]) => [String(id), { ...p }]));
  }
  return out;
}

export function receiptsFromJson(s: State, json: unknown): void {
  if (!json || typeof json !== "object") return;
  for (const [convId, peers] of Object.entries(json as Record<string, Record<string, PeerPosition>>)) {
    for (const [id, p] of Object.entries(peers ?? {})) {
      applyReceipt(s, { convId, userId: Number(id), username: p.username, kind: "delivered", upTo: p.delivered });
      applyReceipt(s, { convId, userId: Number(id), username: p.username, kind: "read", upTo: p.read });
    }
  }
}
