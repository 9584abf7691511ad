//! Timers, time and randomness through `globalThis`, so the SDK compiles
//! without the DOM or Node type libraries and runs under both.

type TimerHandle = unknown;

interface TimerGlobals {
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

interface CryptoGlobals {
  crypto?: { getRandomValues<T extends Uint8Array>(array: T): T };
}

const timers = globalThis as unknown as TimerGlobals;

/**
 * Runs `fn` after `ms`; returns a function that cancels it. In Node the
 * timer keeps the process alive (a client waiting to reconnect, or a send
 * waiting to retry, is work to do) unless `background` is set.
 */
export function after(ms: number, fn: () => void, background = false): () => void {
  const handle = timers.setTimeout(fn, Math.max(0, ms));
  if (background) (handle as { unref?: () => void }).unref?.();
  return () => timers.clearTimeout(handle);
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => {
    after(ms, resolve);
  });
}

/** Fills `bytes` with random bytes (Web Crypto where present). */
export function randomBytes(bytes: Uint8Array): Uint8Array {
  const c = (globalThis as unknown as CryptoGlobals).crypto;
  if (c) return c.getRandomValues(bytes);
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return bytes;
}

/**
 * A new client message id: a UUIDv7 string (time-ordered, 36 bytes), as the
 * Rust SDK makes. Built here because `crypto.randomUUID` is v4 and missing
 * outside secure browser contexts.
 */
export function newClientMsgId(): string {
  const b = randomBytes(new Uint8Array(16));
  let ms = Date.now();
  for (let i = 5; i >= 0; i--) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = (b[6]! & 0x0f) | 0x70;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
