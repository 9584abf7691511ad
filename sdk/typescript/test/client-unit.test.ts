// Client behaviour against a scripted fake server: the sync loop's key
// rules, RESYNC_REQUIRED, Goodbye redirects and send retries with one id.

import { afterEach, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { Connection, ErrorCode, MemorySyncKeyStorage, PigeonClient, PigeonError, type ClientOptions } from "../src/index.js";
import { bytes, FakeServer } from "./fake-server.js";
import { Recorder } from "./helpers.js";

const servers: FakeServer[] = [];
const clients: PigeonClient[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function fake(): Promise<FakeServer> {
  const s = await FakeServer.start();
  servers.push(s);
  return s;
}

function client(url: string, opts: Partial<ClientOptions> = {}): { client: PigeonClient; rec: Recorder } {
  const c = new PigeonClient({ url, token: "t0k3n", webSocket: WebSocket, backoffMinMs: 10, backoffMaxMs: 50, requestTimeoutMs: 2_000, sendTimeoutMs: 5_000, ...opts });
  clients.push(c);
  const rec = new Recorder(c);
  return { client: c, rec };
}

const seqs = (rec: Recorder) => rec.of("message").map((e) => Number(e.meta.seq));

describe("client against a fake server", () => {
  it("follows keys: syncs while has_more, applies a continuing push, syncs on a mismatched push and on a notice, stops on TOKEN_REVOKED", async () => {
    const server = await fake();
    const storage = new MemorySyncKeyStorage();
    const { client: c, rec } = client(server.url, { storage });
    c.start();
    const peer = await server.acceptHello();
    expect(server.hellos[0]!.body.value).toMatchObject({ minVersion: 1, maxVersion: 2, token: "t0k3n" });
    let s = await peer.expectSync();
    expect(s.key).toBe("");
    peer.sendSync(s.id, [1], "k1", true);
    s = await peer.expectSync();
    expect(s.key).toBe("k1");
    peer.sendSync(s.id, [2], "k2", false);
    await rec.waitFor("synced");
    peer.pushEvents("k2", [3], "k3");
    // Does not continue from the client's key: must not be applied.
    peer.pushEvents("kX", [99], "k99");
    s = await peer.expectSync();
    expect(s.key).toBe("k3");
    peer.sendSync(s.id, [4], "k4", false);
    peer.send({ body: { case: "syncNotice", value: {} } });
    s = await peer.expectSync();
    expect(s.key).toBe("k4");
    peer.sendSync(s.id, [], "k4", false);
    peer.pushEvents("k4", [5], "k5");
    peer.goodbye(ErrorCode.TOKEN_REVOKED, "revoked");
    const stopped = await rec.waitFor("connection", (e) => e.state === "stopped");
    expect(stopped.error?.code).toBe(ErrorCode.TOKEN_REVOKED);
    expect(seqs(rec)).toEqual([1, 2, 3, 4, 5]);
    expect(rec.of("message").map((e) => e.meta.source)).toEqual(["sync", "sync", "push", "sync", "push"]);
    expect(new TextDecoder().decode(c.syncKey)).toBe("k5");
    expect(new TextDecoder().decode(storage.load("ws://127.0.0.1:" + new URL(server.url).port + "/ws|7|1"))).toBe("k5");
    const e = await c.send("bob", "hi").catch((err: unknown) => err);
    expect((e as PigeonError).code).toBe(ErrorCode.TOKEN_REVOKED);
  });

  it("persists the key only after async handlers have finished with the batch", async () => {
    const server = await fake();
    const storage = new MemorySyncKeyStorage();
    const { client: c } = client(server.url, { storage });
    const scope = `${server.url}|7|1`;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const seen: string[] = [];
    c.on("message", async (e) => {
      seen.push(e.message.content?.text ?? "");
      await gate;
    });
    c.start();
    const peer = await server.acceptHello();
    const s = await peer.expectSync();
    peer.sendSync(s.id, [1, 2], "k2", false);
    await new Promise((r) => setTimeout(r, 100));
    expect(seen).toEqual(["1"]);
    expect(storage.load(scope)).toBeUndefined();
    release();
    await c.waitSynced(2_000);
    expect(seen).toEqual(["1", "2"]);
    expect(new TextDecoder().decode(storage.load(scope))).toBe("k2");
  });

  it("keeps going when a handler throws or the storage fails, reporting the handler error", async () => {
    const server = await fake();
    const failing = { load: () => { throw new Error("no storage"); }, save: () => { throw new Error("full"); }, remove: () => {} };
    const reported: string[] = [];
    const { client: c, rec } = client(server.url, {
      storage: failing,
      onHandlerError: (e, event) => reported.push(`${(e as Error).message} on ${event.type}`),
    });
    c.on("message", (e) => {
      if (e.message.content?.text === "1") throw new Error("boom");
    });
    const errors: unknown[] = [];
    const origError = console.error;
    console.error = (...a: unknown[]) => void errors.push(a[0]);
    try {
      c.start();
      const peer = await server.acceptHello();
      const s = await peer.expectSync();
      expect(s.key).toBe("");
      peer.sendSync(s.id, [1, 2], "k2", false);
      await rec.waitFor("synced");
    } finally {
      console.error = origError;
    }
    expect(seqs(rec)).toEqual([1, 2]);
    expect(reported).toEqual(["boom on message"]);
    expect(new TextDecoder().decode(c.syncKey)).toBe("k2");
    expect(errors).toEqual(["pigeon: loading the sync key failed; syncing from the start", "pigeon: storing the sync key failed"]);
    // Not started: requests fail at once rather than waiting.
    const idle = new PigeonClient({ url: server.url, token: "t", webSocket: WebSocket });
    const e = await idle.listBlocked().catch((err: unknown) => err);
    expect(e).toMatchObject({ kind: "closed" });
  });

  it("on RESYNC_REQUIRED tells the application and restarts from the empty key", async () => {
    const server = await fake();
    const storage = new MemorySyncKeyStorage();
    storage.save(`${server.url}|7|1`, bytes("old"));
    const { client: c, rec } = client(server.url, { storage });
    c.start();
    const peer = await server.acceptHello();
    let s = await peer.expectSync();
    expect(s.key).toBe("old");
    peer.error(s.id, ErrorCode.RESYNC_REQUIRED, "too old");
    s = await peer.expectSync();
    expect(s.key).toBe("");
    peer.sendSync(s.id, [10], "k10", false);
    await rec.waitFor("synced");
    expect(rec.events.map((e) => (e.type === "connection" ? e.state : e.type))).toEqual(["connecting", "connected", "resyncRequired", "message", "synced"]);
  });

  it("honours a Goodbye redirect and its retry-after, then resends the unacknowledged message with the same id", async () => {
    const [first, second] = [await fake(), await fake()];
    const { client: c, rec } = client(first.url);
    c.start();
    const peer1 = await first.acceptHello();
    const s = await peer1.expectSync();
    peer1.sendSync(s.id, [], "k0", false);
    const sending = c.send("bob", "hello");
    const req1 = await peer1.recvRequest();
    expect(req1.body.case).toBe("sendRequest");
    const goneAt = Date.now();
    peer1.goodbye(ErrorCode.SHUTTING_DOWN, "draining", { redirectTo: [second.url, "tcp://127.0.0.1:1"], retryAfterMs: 300 });
    const peer2 = await second.acceptHello();
    expect(Date.now() - goneAt).toBeGreaterThanOrEqual(290);
    const gone = rec.of("connection").find((e) => e.state === "disconnected");
    expect(gone).toMatchObject({ retryInMs: 300, error: { code: ErrorCode.SHUTTING_DOWN } });
    // The second server says BUSY once; the client waits and retries, same id.
    const frames: string[] = [];
    for (;;) {
      const f = await peer2.recvRequest();
      if (f.body.case === "syncRequest") {
        expect(new TextDecoder().decode(f.body.value.key)).toBe("k0");
        peer2.sendSync(f.requestId, [], "k0", false);
        continue;
      }
      if (f.body.case !== "sendRequest") throw new Error(`unexpected ${f.body.case}`);
      frames.push(f.body.value.clientMsgId);
      if (frames.length === 1) {
        peer2.error(f.requestId, ErrorCode.BUSY, "busy", 50);
        continue;
      }
      peer2.send({ requestId: f.requestId, body: { case: "sendResponse", value: { conversationId: "d:1:2", convSeq: 7n, duplicate: true } } });
      break;
    }
    const ack = await sending;
    expect(ack).toMatchObject({ convSeq: 7n, duplicate: true });
    const firstId = req1.body.case === "sendRequest" ? req1.body.value.clientMsgId : "";
    expect(frames).toEqual([firstId, firstId]);
    expect(firstId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it("returns permanent send errors at once, without a retry", async () => {
    const server = await fake();
    const { client: c } = client(server.url);
    c.start();
    const peer = await server.acceptHello();
    const s = await peer.expectSync();
    peer.sendSync(s.id, [], "", false);
    const sending = c.send("nobody", "hi");
    const f = await peer.recvRequest();
    peer.error(f.requestId, ErrorCode.USER_NOT_FOUND, "no such user");
    const e = await sending.catch((err: unknown) => err);
    expect(e).toMatchObject({ kind: "server", code: ErrorCode.USER_NOT_FOUND });
    // The next frame the client sends is this ping, not a resend.
    const pinging = c.ping();
    const next = await peer.recv();
    expect(next?.body.case).toBe("ping");
    if (next?.body.case === "ping") peer.send({ requestId: next.requestId, body: { case: "pong", value: { nonce: next.body.value.nonce } } });
    await pinging;
  });

  it("ends the connection on a text message, and times out an unanswered request", async () => {
    const server = await fake();
    const connecting = Connection.connect({ url: server.url, webSocket: WebSocket, requestTimeoutMs: 200 });
    const peer = await server.acceptHello();
    const conn = await connecting;
    const e = await conn.listBlocked().catch((err: unknown) => err);
    expect(e).toMatchObject({ kind: "timeout" });
    peer.socket.send("not a frame");
    const ended = await new Promise<PigeonError>((resolve) => conn.onEnd(resolve));
    expect(ended.kind).toBe("protocol");
    expect((await conn.ping().catch((err: unknown) => err)) as PigeonError).toBe(ended);
  });

  it("refuses a request larger than the server's frame maximum without sending it", async () => {
    const server = await fake();
    const connecting = Connection.connect({ url: server.url, webSocket: WebSocket });
    await server.acceptHello();
    const conn = await connecting;
    const e = await conn.send("id", { to: { case: "username", value: "bob" } }, { text: "x".repeat(2 << 20) }).catch((err: unknown) => err);
    expect(e).toMatchObject({ kind: "server", code: ErrorCode.FRAME_TOO_LARGE });
    expect(conn.isClosed).toBe(false);
    conn.close();
  });
});
