//! Shared helpers: unique users, logged-in clients over the `ws` package,
//! and an event recorder to wait on.

import { randomBytes } from "node:crypto";
import WebSocket from "ws";
import { afterEach } from "vitest";
import {
  MemorySyncKeyStorage,
  PigeonClient,
  register,
  type ClientOptions,
  type PigeonEvent,
  type PigeonEventOf,
  type PigeonEventType,
} from "../src/index.js";

export const PASSWORD = "correct horse battery";

/** A username nobody else in this run has (lowercase, within 3..32 bytes). */
export function uniqueName(prefix: string): string {
  return `${prefix}-${randomBytes(5).toString("hex")}`;
}

/** Registers a new user and returns its name. */
export async function newUser(url: string, prefix = "u"): Promise<string> {
  const username = uniqueName(prefix);
  await register({ url, webSocket: WebSocket }, username, PASSWORD);
  return username;
}

/** Records every event of a client, to wait on. */
export class Recorder {
  readonly events: PigeonEvent[] = [];
  private readonly waiters = new Set<() => void>();

  constructor(client: PigeonClient) {
    client.onAny((e) => {
      this.events.push(e);
      for (const w of [...this.waiters]) w();
    });
  }

  of<T extends PigeonEventType>(type: T): PigeonEventOf<T>[] {
    return this.events.filter((e): e is PigeonEventOf<T> => e.type === type);
  }

  /** Waits until an event of `type` matching `pred` was recorded (also one recorded before). */
  async waitFor<T extends PigeonEventType>(type: T, pred: (e: PigeonEventOf<T>) => boolean = () => true, timeoutMs = 10_000): Promise<PigeonEventOf<T>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.of(type).find(pred);
      if (found) return found;
      const left = deadline - Date.now();
      if (left <= 0) {
        const seen = this.events.map((e) => e.type).join(", ");
        throw new Error(`no ${type} event matching in ${timeoutMs} ms; saw: ${seen}`);
      }
      await new Promise<void>((resolve) => {
        const done = () => {
          this.waiters.delete(done);
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(done, left);
        this.waiters.add(done);
      });
    }
  }

  /** Texts of the message events received so far, in order. */
  texts(conversationId?: string): string[] {
    return this.of("message")
      .filter((e) => conversationId === undefined || e.message.conversationId === conversationId)
      .map((e) => e.message.content?.text ?? "");
  }
}

const open: PigeonClient[] = [];

afterEach(async () => {
  await Promise.all(open.splice(0).map((c) => c.close()));
});

export interface Device {
  client: PigeonClient;
  rec: Recorder;
  token: string;
  storage: MemorySyncKeyStorage;
}

/** Logs `username` in as a new device, waits until it has synced; closed after the test. */
export async function device(url: string, username: string, opts: Partial<ClientOptions> = {}): Promise<Device> {
  const storage = (opts.storage as MemorySyncKeyStorage | undefined) ?? new MemorySyncKeyStorage();
  const client = new PigeonClient({ url, webSocket: WebSocket, backoffMinMs: 50, backoffMaxMs: 500, ...opts, storage });
  const rec = new Recorder(client);
  open.push(client);
  const login = await client.login(username, PASSWORD, "test");
  await client.waitSynced(10_000);
  return { client, rec, token: login.token, storage };
}

/** A client for an existing token, started and synced; closed after the test. */
export async function reconnectDevice(url: string, token: string, opts: Partial<ClientOptions> = {}): Promise<Device> {
  const storage = (opts.storage as MemorySyncKeyStorage | undefined) ?? new MemorySyncKeyStorage();
  const client = new PigeonClient({ url, webSocket: WebSocket, backoffMinMs: 50, backoffMaxMs: 500, ...opts, token, storage });
  const rec = new Recorder(client);
  open.push(client);
  client.start();
  await client.waitSynced(10_000);
  return { client, rec, token, storage };
}

/** Tracks a client for closing after the test. */
export function track(client: PigeonClient): PigeonClient {
  open.push(client);
  return client;
}

/** Retries `check` until it stops throwing (or rethrows after `timeoutMs`). */
export async function eventually(check: () => void | Promise<void>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await check();
      return;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/**
 * Waits until the device's storage holds its current key: the client stores
 * a batch's key right after the handlers are done with it, so a test that
 * closes a client and expects the next one to continue from the same key
 * waits for this first (otherwise the batch is, correctly, delivered again).
 */
export async function keyStored(d: Device): Promise<void> {
  const scope = d.client.syncKeyScope;
  if (scope === undefined) throw new Error("not connected");
  await eventually(() => {
    const stored = d.storage.load(scope) ?? new Uint8Array();
    if (!Buffer.from(stored).equals(Buffer.from(d.client.syncKey))) throw new Error("key not stored yet");
  });
}
