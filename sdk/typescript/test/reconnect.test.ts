// Reconnects against a server of its own that is stopped and restarted on
// the same ports and data: heartbeats keep an idle connection alive, a dead
// one is noticed, Goodbye(SHUTTING_DOWN) is honoured, and the sync loop and
// sends carry on from where they were.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { Connection, ErrorCode } from "../src/index.js";
import { device, keyStored, newUser, reconnectDevice } from "./helpers.js";
import { TestServer } from "./server.js";

let server: TestServer;
let url: string;

beforeAll(async () => {
  // Short timers so that idling out and heartbeats show within seconds.
  server = await TestServer.start(["heartbeat_interval_ms = 300", "idle_timeout_ms = 1200", "drain_reconnect_spread_ms = 200", "shutdown_grace_secs = 2"].join("\n"));
  url = server.wsUrl;
});

afterAll(async () => {
  await server.dispose();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("reconnect", () => {
  it("heartbeats keep an idle client connected past the idle timeout; a silent connection is closed", async () => {
    const a = await device(url, await newUser(url, "hb"));
    expect(a.client.welcome?.heartbeatIntervalMs).toBe(300);
    const silent = await Connection.connect({ url, webSocket: WebSocket });
    const ended = new Promise<unknown>((resolve) => silent.onEnd(resolve));
    await sleep(2_500);
    expect(a.rec.of("connection").filter((e) => e.state !== "connected")).toEqual([]);
    expect(a.client.state).toBe("connected");
    expect(silent.isClosed).toBe(true);
    expect(await ended).toMatchObject({ kind: "goodbye", code: ErrorCode.IDLE_TIMEOUT });
    await a.client.ping();
  });

  it("notices a dead connection by its missing pong and reconnects when the server answers again", async () => {
    const a = await device(url, await newUser(url, "dd"), { connectTimeoutMs: 1_000 });
    process.kill(serverPid(), "SIGSTOP");
    try {
      const lost = await a.rec.waitFor("connection", (e) => e.state === "disconnected", 5_000);
      expect(lost.reason).toMatch(/heartbeat/);
    } finally {
      process.kill(serverPid(), "SIGCONT");
    }
    await a.rec.waitFor("connection", (e) => e.state === "connected" && a.rec.of("connection").indexOf(e) > 0, 10_000);
    await a.client.ping();
  });

  it("reconnect() drops the connection and connects again at once, also cutting a backoff wait short", async () => {
    const [alice, bob] = [await newUser(url, "al"), await newUser(url, "bo")];
    const a = await device(url, alice, { backoffMinMs: 5_000, backoffMaxMs: 10_000 });
    const b = await device(url, bob);
    const connected = () => a.rec.of("connection").filter((e) => e.state === "connected").length;
    let started = Date.now();
    a.client.reconnect();
    await a.rec.waitFor("connection", () => connected() >= 2, 3_000);
    expect(Date.now() - started).toBeLessThan(2_000);
    const dropped = a.rec.of("connection").find((e) => e.state === "disconnected");
    expect(dropped).toMatchObject({ retryInMs: 0, reason: expect.stringMatching(/reconnect requested/) });

    // Server down: the client backs off for at least 5 s; reconnect() after the
    // restart cuts that short, and the send made meanwhile goes through once.
    await server.kill();
    const waiting = await a.rec.waitFor("connection", (e) => e.state === "disconnected" && (e.retryInMs ?? 0) >= 5_000, 10_000);
    expect(waiting.retryInMs).toBeGreaterThanOrEqual(5_000);
    const pending = a.client.send(bob, "after reconnect()");
    await server.restart();
    started = Date.now();
    a.client.reconnect();
    const ack = await pending;
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(ack.duplicate).toBe(false);
    await b.rec.waitFor("message", (e) => e.message.content?.text === "after reconnect()", 15_000);
  });

  it("survives a server restart (SIGTERM, then SIGKILL): sends complete once, sync resumes from the key", async () => {
    const [alice, bob] = [await newUser(url, "al"), await newUser(url, "bo")];
    const a = await device(url, alice);
    const b = await device(url, bob);
    await a.client.send(bob, "before");
    await b.rec.waitFor("message", (e) => e.message.content?.text === "before");

    // A drain: every connection gets Goodbye(SHUTTING_DOWN) with a retry-after.
    await server.terminate();
    const gone = await a.rec.waitFor("connection", (e) => e.state === "disconnected");
    expect(gone.error).toMatchObject({ kind: "goodbye", code: ErrorCode.SHUTTING_DOWN });
    // Sent while the server is down: resolves after the restart, once.
    const pending = a.client.send(bob, "during the outage");
    await sleep(300);
    await server.restart();
    const ack = await pending;
    expect(ack.convSeq).toBeGreaterThan(1n);
    await b.rec.waitFor("message", (e) => e.message.content?.text === "during the outage", 15_000);

    // A crash: no Goodbye at all. Bob is offline across it and catches up by key.
    await keyStored(b);
    const bobKey = b.client.syncKey;
    await b.client.close();
    await server.kill();
    await server.restart();
    await a.rec.waitFor("connection", (e) => e.state === "connected" && a.rec.of("connection").filter((c) => c.state === "connected").length >= 3, 15_000);
    await a.client.send(bob, "after the crash");
    const b2 = await reconnectDevice(url, b.token, { storage: b.storage });
    expect(b2.client.syncKey).not.toEqual(new Uint8Array());
    expect(bobKey.length).toBeGreaterThan(0);
    await b2.rec.waitFor("message", (e) => e.message.content?.text === "after the crash", 15_000);
    expect(b2.rec.texts()).toEqual(["after the crash"]);
    const history = await b2.client.history(alice);
    expect(history.messages.map((m) => m.content?.text)).toEqual(["after the crash", "during the outage", "before"]);
  });
});

function serverPid(): number {
  const pid = (server as unknown as { child?: { pid?: number } }).child?.pid;
  if (pid === undefined) throw new Error("server not running");
  return pid;
}
