//! Where the sync key is kept between runs: a pluggable interface, an
//! in-memory default and a `localStorage` adapter for browsers.

/**
 * Persists sync keys. `scope` names one device of one account on one
 * server (`"<storageScope>|<userId>|<deviceId>"`). The client saves a key
 * only after the events it covers were handed to every handler.
 */
export interface SyncKeyStorage {
  load(scope: string): Promise<Uint8Array | undefined> | Uint8Array | undefined;
  save(scope: string, key: Uint8Array): Promise<void> | void;
  remove(scope: string): Promise<void> | void;
}

/** Keeps keys in memory (lost on restart: the next run syncs from the start). */
export class MemorySyncKeyStorage implements SyncKeyStorage {
  private readonly keys = new Map<string, Uint8Array>();

  load(scope: string): Uint8Array | undefined {
    const key = this.keys.get(scope);
    return key === undefined ? undefined : key.slice();
  }

  save(scope: string, key: Uint8Array): void {
    this.keys.set(scope, key.slice());
  }

  remove(scope: string): void {
    this.keys.delete(scope);
  }
}

/** The part of the Web Storage API the adapter uses (`localStorage`, `sessionStorage`). */
export interface WebStorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** Keeps keys in Web Storage, base64-encoded, under `prefix + scope`. */
export class LocalStorageSyncKeyStorage implements SyncKeyStorage {
  private readonly storage: WebStorageLike;

  constructor(
    storage?: WebStorageLike,
    private readonly prefix = "pigeon.syncKey.",
  ) {
    const found = storage ?? (globalThis as { localStorage?: WebStorageLike }).localStorage;
    if (found === undefined) throw new Error("LocalStorageSyncKeyStorage: no localStorage here; pass a storage");
    this.storage = found;
  }

  load(scope: string): Uint8Array | undefined {
    const text = this.storage.getItem(this.prefix + scope);
    if (text === null) return undefined;
    try {
      return base64Decode(text);
    } catch {
      // A damaged entry is the same as none: sync from the start.
      return undefined;
    }
  }

  save(scope: string, key: Uint8Array): void {
    this.storage.setItem(this.prefix + scope, base64Encode(key));
  }

  remove(scope: string): void {
    this.storage.removeItem(this.prefix + scope);
  }
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** Standard base64 with padding (no dependency on `btoa` or `Buffer`). */
export function base64Encode(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const a = bytes[i]!;
    const b = bytes[i + 1];
    const c = bytes[i + 2];
    out += B64[a >> 2];
    out += B64[((a & 3) << 4) | ((b ?? 0) >> 4)];
    out += b === undefined ? "=" : B64[((b & 15) << 2) | ((c ?? 0) >> 6)];
    out += c === undefined ? "=" : B64[c & 63];
  }
  return out;
}

export function base64Decode(text: string): Uint8Array {
  if (text.length % 4 !== 0) throw new Error("bad base64 length");
  const pad = text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0;
  const out = new Uint8Array((text.length / 4) * 3 - pad);
  let o = 0;
  for (let i = 0; i < text.length; i += 4) {
    const n = [0, 1, 2, 3].map((j) => {
      const ch = text[i + j]!;
      if (ch === "=") return 0;
      const v = B64.indexOf(ch);
      if (v < 0) throw new Error("bad base64 character");
      return v;
    });
    const bits = (n[0]! << 18) | (n[1]! << 12) | (n[2]! << 6) | n[3]!;
    for (const shift of [16, 8, 0]) {
      if (o < out.length) out[o++] = (bits >> shift) & 255;
    }
  }
  return out;
}
