// Accounts against a real server: register, login, logout, refused tokens,
// anonymous connections, each failure a PigeonError with its stable code.

import { describe, expect, inject, it } from "vitest";
import WebSocket from "ws";
import { Connection, ErrorCode, login, MemorySyncKeyStorage, PigeonClient, PigeonError, register } from "../src/index.js";
import { device, eventually, newUser, PASSWORD, Recorder, track, uniqueName } from "./helpers.js";

const url = inject("pigeonUrl");
const opts = { url, webSocket: WebSocket };

async function errorOf(p: Promise<unknown>): Promise<PigeonError> {
  const e = await p.then(() => undefined, (err: unknown) => err);
  expect(e).toBeInstanceOf(PigeonError);
  return e as PigeonError;
}

describe("accounts", () => {
  it("registers and logs in, refusing bad names, passwords and credentials with their codes", async () => {
    const name = uniqueName("acc");
    const reg = await register(opts, name, PASSWORD);
    expect(reg.username).toBe(name);
    expect(reg.userId).toBeGreaterThan(0n);
    expect((await errorOf(register(opts, name, PASSWORD))).code).toBe(ErrorCode.USERNAME_TAKEN);
    expect((await errorOf(register(opts, "Alice", PASSWORD))).code).toBe(ErrorCode.INVALID_USERNAME);
    expect((await errorOf(register(opts, uniqueName("acc"), "short"))).code).toBe(ErrorCode.INVALID_PASSWORD);
    const bad = await errorOf(login(opts, name, "wrong password"));
    expect(bad).toMatchObject({ kind: "server", code: ErrorCode.INVALID_CREDENTIALS, codeName: "INVALID_CREDENTIALS" });
    const first = await login(opts, name, PASSWORD, "laptop");
    const second = await login(opts, name, PASSWORD, "phone");
    expect(first.token).toMatch(/^[0-9a-f]{64}$/);
    expect([first.userId, first.username, first.deviceId]).toEqual([reg.userId, name, 1n]);
    expect(second.deviceId).toBe(2n);
    expect(first.expiresAtMs).toBeGreaterThan(BigInt(Date.now()));
  });

  it("keeps the login connection as the client's session, with the new identity", async () => {
    const name = await newUser(url, "acc");
    const client = track(new PigeonClient(opts));
    const rec = new Recorder(client);
    const r = await client.login(name, PASSWORD, "web");
    expect(client.token).toBe(r.token);
    const welcome = await client.waitConnected(5_000);
    expect([welcome.username, welcome.deviceId]).toEqual([name, r.deviceId]);
    await client.waitSynced(5_000);
    expect(client.state).toBe("connected");
    // One connection only: no "connecting" before the first "connected".
    expect(rec.of("connection").map((e) => e.state)).toEqual(["connected"]);
    expect(() => client.start()).toThrow(PigeonError);
  });

  it("stops for good on a refused token and fails sends with that error", async () => {
    const client = track(new PigeonClient({ ...opts, token: "0".repeat(64) }));
    const rec = new Recorder(client);
    client.start();
    const stopped = await rec.waitFor("connection", (e) => e.state === "stopped");
    expect(stopped.error?.code).toBe(ErrorCode.INVALID_TOKEN);
    const e = await errorOf(client.send("bob", "hi"));
    expect(e.code).toBe(ErrorCode.INVALID_TOKEN);
    expect(e.isFatal).toBe(true);
    expect(() => new PigeonClient({ ...opts }).start()).toThrow(/no token/);
  });

  it("logs out: the token is revoked, the stored key deleted, the client stopped", async () => {
    const [alice, bob] = [await newUser(url, "al"), await newUser(url, "bo")];
    const storage = new MemorySyncKeyStorage();
    const a = await device(url, alice, { storage });
    await (await device(url, bob)).client.send(alice, "so the key moves");
    await a.rec.waitFor("message");
    const welcome = a.client.welcome!;
    const scopeKey = `${url}|${welcome.userId}|${welcome.deviceId}`;
    expect(a.client.syncKeyScope).toBe(scopeKey);
    // The key is stored once the handlers are done with the batch.
    await eventually(() => expect(storage.load(scopeKey)).toEqual(a.client.syncKey));
    expect(a.client.syncKey.length).toBeGreaterThan(0);
    await a.client.logout();
    expect(a.client.state).toBe("stopped");
    expect(a.client.token).toBeUndefined();
    expect(storage.load(scopeKey)).toBeUndefined();
    const again = track(new PigeonClient({ ...opts, token: a.token }));
    const rec = new Recorder(again);
    again.start();
    const stopped = await rec.waitFor("connection", (e) => e.state === "stopped");
    expect(stopped.error?.code).toBe(ErrorCode.TOKEN_REVOKED);
  });

  it("refuses requests on an anonymous connection with UNAUTHENTICATED, keeping it open", async () => {
    const conn = await Connection.connect(opts);
    try {
      expect(conn.welcome.userId).toBe(0n);
      expect(conn.welcome.version).toBe(2);
      const e = await errorOf(conn.sync(new Uint8Array()));
      expect(e.code).toBe(ErrorCode.UNAUTHENTICATED);
      const pong = await conn.ping();
      expect(pong.serverTimeMs).toBeGreaterThan(0n);
    } finally {
      conn.close();
    }
  });
});
