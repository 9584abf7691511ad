// Pure pieces: backoff, URL parsing, base64, client message ids, targets, error codes, packed events.

import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { EventSchema, PackedTablesSchema, unpackEvents, Backoff, base64Decode, base64Encode, codeFromWire, ErrorCode, LocalStorageSyncKeyStorage, newClientMsgId, parseUrl, PigeonError, toTarget } from "../src/index.js";

describe("backoff", () => {
  it("keeps every delay within [min, ceiling] and the ceiling doubling up to max", () => {
    let x = 0.37;
    const random = () => (x = (x * 9301 + 49297) % 233280 / 233280);
    const b = new Backoff(200, 30_000, random);
    for (let n = 0; n < 40; n++) {
      const ceiling = b.ceiling();
      expect(ceiling).toBe(Math.min(200 * 2 ** Math.min(n, 20), 30_000));
      const d = b.next();
      expect(d).toBeGreaterThanOrEqual(200);
      expect(d).toBeLessThanOrEqual(ceiling);
    }
    b.reset();
    expect(b.next()).toBe(200);
  });

  it("spreads delays (full jitter)", () => {
    const delays = new Set<number>();
    for (let i = 0; i < 50; i++) {
      const b = new Backoff(200, 30_000);
      for (let k = 0; k < 10; k++) b.next();
      delays.add(b.next());
    }
    expect(delays.size).toBeGreaterThan(40);
  });

  it("treats an inverted range as the minimum", () => {
    const b = new Backoff(2000, 1000);
    for (let i = 0; i < 5; i++) expect(b.next()).toBe(2000);
  });
});

describe("urls", () => {
  it("fills in the default port and path", () => {
    expect(parseUrl("ws://localhost")).toBe("ws://localhost:7780/ws");
    expect(parseUrl("WSS://chat.example.org")).toBe("wss://chat.example.org:7780/ws");
    expect(parseUrl("ws://h:80/custom?x=1")).toBe("ws://h:80/custom?x=1");
    expect(parseUrl("ws://[::1]:9000/ws")).toBe("ws://[::1]:9000/ws");
  });

  it("refuses what is not a ws:// or wss:// URL", () => {
    for (const bad of ["", "localhost:7780", "http://h:1", "tcp://h:7700", "ws://", "ws://h:0", "ws://h:70000", "ws://u@h", "ws://h :1", "ws://[::1"]) {
      expect(() => parseUrl(bad), bad).toThrow(PigeonError);
    }
  });
});

describe("storage and ids", () => {
  it("round-trips base64 and stores keys in web storage", () => {
    for (let n = 0; n < 40; n++) {
      const b = Uint8Array.from({ length: n }, (_, i) => (i * 37 + n) % 256);
      expect(base64Decode(base64Encode(b))).toEqual(b);
    }
    expect(base64Encode(new TextEncoder().encode("hello"))).toBe("aGVsbG8=");
    const map = new Map<string, string>();
    const web = { getItem: (k: string) => map.get(k) ?? null, setItem: (k: string, v: string) => void map.set(k, v), removeItem: (k: string) => void map.delete(k) };
    const s = new LocalStorageSyncKeyStorage(web);
    s.save("a|1|2", Uint8Array.of(0, 255, 7));
    expect(map.get("pigeon.syncKey.a|1|2")).toBe("AP8H");
    expect(s.load("a|1|2")).toEqual(Uint8Array.of(0, 255, 7));
    map.set("pigeon.syncKey.bad", "!!!");
    expect(s.load("bad")).toBeUndefined();
    s.remove("a|1|2");
    expect(s.load("a|1|2")).toBeUndefined();
  });

  it("makes distinct UUIDv7 client message ids", () => {
    const ids = new Set(Array.from({ length: 1000 }, newClientMsgId));
    expect(ids.size).toBe(1000);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it("reads a string target with ':' as a conversation id, else a username", () => {
    expect(toTarget("bob")).toEqual({ to: { case: "username", value: "bob" } });
    expect(toTarget("g:12")).toEqual({ to: { case: "conversationId", value: "g:12" } });
    expect(toTarget({ conversationId: "d:1:2" })).toEqual({ to: { case: "conversationId", value: "d:1:2" } });
    expect(toTarget({ username: "x" })).toEqual({ to: { case: "username", value: "x" } });
  });

  it("maps unknown wire codes to UNSPECIFIED and labels errors", () => {
    expect(codeFromWire(206)).toBe(ErrorCode.USERNAME_TAKEN);
    expect(codeFromWire(9999)).toBe(ErrorCode.UNSPECIFIED);
    const e = new PigeonError("server", "username taken", { code: ErrorCode.USERNAME_TAKEN });
    expect(e.message).toBe("username taken (code USERNAME_TAKEN 206)");
    expect(e.isFatal).toBe(false);
    expect(new PigeonError("goodbye", "x", { code: ErrorCode.TOKEN_REVOKED }).isFatal).toBe(true);
  });
});

describe("packed events (protocol version 2)", () => {
  const message = (conversationId: string, senderId: bigint, senderUsername: string, sentAtMs: bigint, createdAtMs: bigint, extra: { conversationRef?: number; createdDeltaMs?: bigint } = {}) =>
    create(EventSchema, {
      seq: 1n,
      createdAtMs,
      ...extra,
      kind: { case: "message", value: { conversationId, convSeq: 1n, senderId, senderUsername, sentAtMs, content: { text: "hi" } } },
    });
  const marker = (createdDeltaMs: bigint) => create(EventSchema, { createdDeltaMs, kind: { case: "readMarker", value: { conversationId: "d:1:2", readUpTo: 3n } } });
  const tables = create(PackedTablesSchema, { conversationIds: ["d:1:2", "g:7"], users: [{ id: 1n, username: "alice" }, { id: 2n, username: "bob" }], baseMs: 1_000n });

  it("gives back conversations, senders and times the way version 1 sends them", () => {
    const packed = [
      message("", 1n, "", 0n, 0n, { conversationRef: 1, createdDeltaMs: 0n }),
      message("", 2n, "", 0n, 0n, { createdDeltaMs: 5n }),
      marker(2n),
      message("", 2n, "", 990n, 0n, { conversationRef: 2, createdDeltaMs: -7n }),
      message("", 1n, "carol-renamed", 0n, 0n, { createdDeltaMs: 1n }),
    ];
    unpackEvents(packed, tables);
    const seen = packed.map((e) => ({
      at: e.createdAtMs,
      ref: e.conversationRef,
      delta: e.createdDeltaMs,
      ...(e.kind.case === "message" ? { conv: e.kind.value.conversationId, from: e.kind.value.senderUsername, sent: e.kind.value.sentAtMs } : { marker: e.kind.case }),
    }));
    expect(seen).toEqual([
      { at: 1_000n, ref: 0, delta: 0n, conv: "d:1:2", from: "alice", sent: 1_000n },
      { at: 1_005n, ref: 0, delta: 0n, conv: "d:1:2", from: "bob", sent: 1_005n },
      { at: 1_007n, ref: 0, delta: 0n, marker: "readMarker" },
      { at: 1_000n, ref: 0, delta: 0n, conv: "g:7", from: "bob", sent: 990n },
      { at: 1_001n, ref: 0, delta: 0n, conv: "g:7", from: "carol-renamed", sent: 1_001n },
    ]);
  });

  it("refuses batches that break the rules with a protocol error", () => {
    const cases: [ReturnType<typeof message>[], RegExp][] = [
      [[message("", 1n, "", 5n, 0n, { conversationRef: 3 })], /conversation_ref 3/],
      [[marker(0n), message("", 1n, "", 5n, 0n)], /no earlier message/],
      [[message("", 9n, "", 5n, 0n, { conversationRef: 1 })], /sender 9/],
    ];
    for (const [events, why] of cases) {
      let error: unknown;
      try {
        unpackEvents(events, tables);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(PigeonError);
      expect((error as PigeonError).kind).toBe("protocol");
      expect((error as PigeonError).message).toMatch(why);
    }
  });
});
