// Direct messages against a real server: acks, pushes, idempotent retries,
// catching up from a stored key, several devices of one user, typed errors.

import { describe, expect, inject, it } from "vitest";
import WebSocket from "ws";
import { fromBinary } from "@bufbuild/protobuf";
import { ErrorCode, FrameSchema, PigeonError, type WebSocketLike } from "../src/index.js";
import { device, keyStored, newUser, reconnectDevice } from "./helpers.js";

const url = inject("pigeonUrl");

describe("messaging", () => {
  it("sends a message, resolves on the ack, and pushes it to the recipient and the sender", async () => {
    // Alice sends to online Bob: the ack names the new conversation, and both get the message event.
    const [alice, bob] = [await newUser(url, "al"), await newUser(url, "bo")];
    const a = await device(url, alice);
    const b = await device(url, bob);
    const ack = await a.client.send(bob, "hi bob");
    expect(ack.duplicate).toBe(false);
    expect(ack.convSeq).toBe(1n);
    expect(ack.conversationId).toMatch(/^d:\d+:\d+$/);
    const got = await b.rec.waitFor("message", (e) => e.message.content?.text === "hi bob");
    expect(got.message.senderUsername).toBe(alice);
    expect(got.message.conversationId).toBe(ack.conversationId);
    expect(got.message.convSeq).toBe(1n);
    // Protocol version 2 (packed events): unpacked before the app sees them;
    // the sender's device and client message id only on the sender's copies.
    expect(a.client.welcome?.version).toBe(2);
    expect(got.message.sentAtMs).toBeGreaterThan(0n);
    expect(got.meta.createdAtMs).toBe(got.message.sentAtMs);
    expect(got.message.clientMsgId).toBe("");
    expect(got.message.senderDeviceId).toBe(0n);
    const own = await a.rec.waitFor("message", (e) => e.message.content?.text === "hi bob");
    expect(own.message.senderDeviceId).toBe(a.client.welcome?.deviceId);
    expect(own.message.clientMsgId).not.toBe("");
    expect(own.message.conversationId).toBe(ack.conversationId);
    // A second message in the conversation, by id, gets the next conv_seq.
    const ack2 = await b.client.send({ conversationId: ack.conversationId }, "hello alice");
    expect(ack2.convSeq).toBe(2n);
    await a.rec.waitFor("message", (e) => e.message.content?.text === "hello alice");
    const history = await a.client.history(bob);
    expect(history.messages.map((m) => m.content?.text)).toEqual(["hello alice", "hi bob"]);
  });

  it("pages history backwards with before and has_more", async () => {
    const [alice, bob] = [await newUser(url, "al"), await newUser(url, "bo")];
    const a = await device(url, alice);
    for (let i = 1; i <= 5; i++) await a.client.send(bob, `m${i}`);
    const seen: string[] = [];
    let before: bigint = 0n;
    let pages = 0;
    for (;;) {
      const page = await a.client.history(bob, { before, limit: 2 });
      pages++;
      seen.push(...page.messages.map((m) => m.content?.text ?? ""));
      if (!page.hasMore) break;
      before = page.messages[page.messages.length - 1]!.convSeq;
    }
    expect(seen).toEqual(["m5", "m4", "m3", "m2", "m1"]);
    expect(pages).toBe(3);
    const empty = await a.client.history(await newUser(url, "em"));
    expect(empty).toMatchObject({ messages: [], hasMore: false });
    expect(empty.conversationId).toMatch(/^d:/);
  });

  it("catches up an offline recipient from its persisted sync key", async () => {
    // Bob syncs, goes offline keeping his key; Alice sends three messages; Bob's
    // new client with the same token and storage gets exactly those three.
    const [alice, bob] = [await newUser(url, "al"), await newUser(url, "bo")];
    const a = await device(url, alice);
    const b = await device(url, bob);
    await a.client.send(bob, "before");
    await b.rec.waitFor("message", (e) => e.message.content?.text === "before");
    await keyStored(b);
    await b.client.close();
    for (const text of ["one", "two", "three"]) await a.client.send(bob, text);
    const again = await reconnectDevice(url, b.token, { storage: b.storage });
    await again.rec.waitFor("message", (e) => e.message.content?.text === "three");
    expect(again.rec.texts()).toEqual(["one", "two", "three"]);
    expect(again.rec.of("message").every((e) => e.meta.source === "sync")).toBe(true);
    // Unpacked from one sync answer: every message names its conversation and sender.
    const synced = again.rec.of("message");
    expect(new Set(synced.map((e) => e.message.conversationId)).size).toBe(1);
    expect(synced.every((e) => e.message.conversationId.startsWith("d:") && e.message.senderUsername === alice)).toBe(true);
    // A client without the stored key starts from the beginning of the log.
    const fresh = await reconnectDevice(url, b.token);
    await fresh.rec.waitFor("message", (e) => e.message.content?.text === "three");
    expect(fresh.rec.texts()).toEqual(["before", "one", "two", "three"]);
  });

  it("retries a send whose ack was lost with the same client message id; nothing is stored twice", async () => {
    // A WebSocket wrapper swallows the first SendResponse and kills the socket:
    // the message is durable but the client never heard. It must reconnect,
    // resend with the same id, get duplicate = true, and Bob sees one message.
    const [alice, bob] = [await newUser(url, "al"), await newUser(url, "bo")];
    const b = await device(url, bob);
    let dropAcks = 1;
    const sentIds: string[] = [];
    // A factory wrapping `ws`: records client message ids, swallows the first ack.
    const ackDropping = (address: string): WebSocketLike => {
      const ws = new WebSocket(address);
      return {
        get binaryType() {
          return ws.binaryType;
        },
        set binaryType(v: string) {
          ws.binaryType = v as typeof ws.binaryType;
        },
        get readyState() {
          return ws.readyState;
        },
        send(data: Uint8Array) {
          const f = fromBinary(FrameSchema, data);
          if (f.body.case === "sendRequest") sentIds.push(f.body.value.clientMsgId);
          ws.send(data);
        },
        close: (code?: number, reason?: string) => ws.close(code, reason),
        set onopen(h: ((ev: unknown) => void) | null) {
          ws.onopen = h;
        },
        get onopen(): ((ev: unknown) => void) | null {
          return ws.onopen as ((ev: unknown) => void) | null;
        },
        set onclose(h: ((ev: unknown) => void) | null) {
          ws.onclose = h;
        },
        get onclose(): ((ev: unknown) => void) | null {
          return ws.onclose as ((ev: unknown) => void) | null;
        },
        set onerror(h: ((ev: unknown) => void) | null) {
          ws.onerror = h;
        },
        get onerror(): ((ev: unknown) => void) | null {
          return ws.onerror as ((ev: unknown) => void) | null;
        },
        set onmessage(h: ((ev: { data: unknown }) => void) | null) {
          ws.onmessage =
            h === null
              ? null
              : (ev) => {
                  const f = fromBinary(FrameSchema, new Uint8Array(ev.data as ArrayBuffer));
                  if (f.body.case === "sendResponse" && dropAcks > 0) {
                    dropAcks--;
                    ws.terminate();
                    return;
                  }
                  h(ev);
                };
        },
        get onmessage() {
          return ws.onmessage as ((ev: { data: unknown }) => void) | null;
        },
      };
    };
    const a = await device(url, alice, { webSocket: ackDropping });
    const ack = await a.client.send(bob, "exactly once");
    expect(ack.duplicate).toBe(true);
    expect(sentIds.length).toBe(2);
    expect(sentIds[0]).toBe(sentIds[1]);
    await a.rec.waitFor("connection", (e) => e.state === "disconnected");
    await b.rec.waitFor("message", (e) => e.message.content?.text === "exactly once");
    const history = await b.client.history(alice);
    expect(history.messages.map((m) => m.content?.text)).toEqual(["exactly once"]);
    expect(history.messages[0]!.clientMsgId).toBe(sentIds[0]);
    // Give a duplicate push time to show up if one were stored, then count.
    await b.client.ping();
    expect(b.rec.texts().filter((t) => t === "exactly once")).toHaveLength(1);
  });

  it("converges several devices of one user", async () => {
    // Alice's laptop sends and marks read; her phone sees the message, Bob's
    // reply and the read marker; a third device syncing later sees the same.
    const [alice, bob] = [await newUser(url, "al"), await newUser(url, "bo")];
    const laptop = await device(url, alice);
    const phone = await device(url, alice);
    const b = await device(url, bob);
    expect(laptop.client.welcome?.deviceId).not.toBe(phone.client.welcome?.deviceId);
    const ack = await laptop.client.send(bob, "from the laptop");
    await phone.rec.waitFor("message", (e) => e.message.content?.text === "from the laptop");
    const reply = await b.client.send(alice, "reply");
    await phone.rec.waitFor("message", (e) => e.message.content?.text === "reply");
    await laptop.rec.waitFor("message", (e) => e.message.content?.text === "reply");
    const read = await laptop.client.markRead(ack.conversationId, reply.convSeq);
    expect(read.unreadCount).toBe(0n);
    const marker = await phone.rec.waitFor("readMarker");
    expect(marker.marker).toMatchObject({ conversationId: ack.conversationId, readUpTo: reply.convSeq });
    const tablet = await device(url, alice);
    await tablet.rec.waitFor("readMarker");
    expect(tablet.rec.texts()).toEqual(phone.rec.texts());
    expect(tablet.rec.texts()).toEqual(["from the laptop", "reply"]);
    const convs = await tablet.client.listConversations();
    expect(convs.map((c) => [c.conversationId, c.peerUsername, c.unreadCount])).toEqual([[ack.conversationId, bob, 0n]]);
  });

  it("surfaces bad input as typed errors with the stable code, without retrying", async () => {
    const alice = await newUser(url, "al");
    const a = await device(url, alice);
    const code = async (p: Promise<unknown>) => {
      const e = await p.then(() => undefined, (err: unknown) => err);
      expect(e).toBeInstanceOf(PigeonError);
      return (e as PigeonError).code;
    };
    const started = Date.now();
    expect(await code(a.client.send("nobody-" + Date.now(), "hi"))).toBe(ErrorCode.USER_NOT_FOUND);
    expect(await code(a.client.send(alice, ""))).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(await code(a.client.send(alice, "x".repeat(70_000)))).toBe(ErrorCode.MESSAGE_TOO_LARGE);
    expect(await code(a.client.send({ conversationId: "d:0:1" }, "hi"))).toBe(ErrorCode.CONVERSATION_NOT_FOUND);
    expect(await code(a.client.history({ conversationId: "g:999999" }))).toBe(ErrorCode.CONVERSATION_NOT_FOUND);
    expect(await code(a.client.recall("d:1:1", 1))).toBe(ErrorCode.CONVERSATION_NOT_FOUND);
    expect(Date.now() - started).toBeLessThan(5_000);
    const e = await a.client.send(alice, "").catch((err: PigeonError) => err);
    expect(e).toMatchObject({ kind: "server", codeName: "INVALID_ARGUMENT" });
    // The connection stayed up through all of it.
    expect(a.rec.of("connection").filter((c) => c.state === "disconnected")).toHaveLength(0);
  });
});
