// What survives a reload, in localStorage: the session (token and who we
// are), and per account the sync key together with the receipts applied up
// to it (one JSON value, written in one go, so the key never runs ahead of
// the state it covers: protocol §7.6 rule 1), and the outbox.

export interface Session {
  token: string;
  userId: number;
  username: string;
  deviceId: number;
}

const SESSION_KEY = "pigeon.session";
const STATE_PREFIX = "pigeon.state.";
const OUTBOX_PREFIX = "pigeon.outbox.";

function read<T>(key: string): T | undefined {
  try {
    const raw = localStorage.getItem(key);
    return raw ? (JSON.parse(raw) as T) : undefined;
  } catch {
    return undefined;
  }
}

export function loadSession(): Session | undefined {
  const s = read<Session>(SESSION_KEY);
  return s && typeof s.token === "string" && s.token ? s : undefined;
}

export function saveSession(s: Session): void {
  localStorage.setItem(SESSION_KEY, JSON.stringify(s));
}

/** Forgets the session and everything stored for its account. */
export function clearSession(s: Session | undefined): void {
  localStorage.removeItem(SESSION_KEY);
  if (s) {
    localStorage.removeItem(STATE_PREFIX + s.userId);
    localStorage.removeItem(OUTBOX_PREFIX + s.userId);
  }
}

export interface SyncState {
  /** The SDK's storage scope the key belongs to. */
  scope: string;
  key: string; // base64
  receipts: unknown;
}

export function loadSyncState(userId: number): SyncState | undefined {
  return read<SyncState>(STATE_PREFIX + userId);
}

export function saveSyncState(userId: number, st: SyncState): void {
  localStorage.setItem(STATE_PREFIX + userId, JSON.stringify(st));
}

export function removeSyncState(userId: number): void {
  localStorage.removeItem(STATE_PREFIX + userId);
}

export interface OutboxEntry {
  clientMsgId: string;
  convId: string;
  text: string;
  createdAtMs: number;
}

export function loadOutbox(userId: number): OutboxEntry[] {
  const v = read<OutboxEntry[]>(OUTBOX_PREFIX + userId);
  return Array.isArray(v) ? v : [];
}

export function saveOutbox(userId: number, entries: OutboxEntry[]): void {
  if (entries.length === 0) localStorage.removeItem(OUTBOX_PREFIX + userId);
  else localStorage.setItem(OUTBOX_PREFIX + userId, JSON.stringify(entries));
}

export function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

export function fromBase64(text: string): Uint8Array {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** A client message id: random, 128 bits, UUID-shaped. crypto.randomUUID
 * exists only in secure contexts; getRandomValues works on plain http too. */
export function newClientMsgId(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
