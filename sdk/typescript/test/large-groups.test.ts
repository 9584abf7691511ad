// A large (read-diffused) group against a server of its own with a tiny
// threshold: its events come only through SyncNotice and sync, from the
// shared log (seq 0, group_seq set), and receipts come as counts.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { device, eventually, newUser } from "./helpers.js";
import { TestServer } from "./server.js";

const ADMIN_TOKEN = "test-admin-token-0123456789";

let server: TestServer;
let url: string;

beforeAll(async () => {
  server = await TestServer.start(`group_large_threshold = 2\nadmin_token = "${ADMIN_TOKEN}"`);
  url = server.wsUrl;
});

afterAll(async () => {
  await server.dispose();
});

describe("server-wide shared log", () => {
  it("delivers a feature flag change to every user as flagsChanged with their complete set", async () => {
    // The operator turns a flag on for Alice only: both get the event (from the
    // server-wide shared log), Alice's set holds the flag, Bob's is empty.
    const [alice, bob] = [await newUser(url, "al"), await newUser(url, "bo")];
    const [a, b] = [await device(url, alice), await device(url, bob)];
    const r = await fetch(`http://127.0.0.1:${server.httpPort}/admin/v1/flags/new-composer`, {
      method: "PUT",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
      body: JSON.stringify({ percent: 0, allow: [alice] }),
    });
    expect(r.status).toBe(200);
    const forAlice = await a.rec.waitFor("flagsChanged");
    expect(forAlice.enabled).toEqual(["new-composer"]);
    expect(forAlice.meta.groupSeq).toBeGreaterThan(0n);
    const forBob = await b.rec.waitFor("flagsChanged");
    expect(forBob.enabled).toEqual([]);
    // A device connecting later sees the flag in its Welcome.
    const later = await device(url, alice);
    expect(later.client.welcome?.flags).toEqual(["new-composer"]);
  });
});

describe("large groups", () => {
  it("delivers shared-log events by sync after a notice, and receipt counts to the sender", async () => {
    const [alice, bob, carol] = [await newUser(url, "al"), await newUser(url, "bo"), await newUser(url, "ca")];
    const [a, b, c] = [await device(url, alice), await device(url, bob), await device(url, carol)];
    const g = await a.client.createGroup({ name: "big", members: [bob, carol] });
    expect(g.large).toBe(true);
    const created = await b.rec.waitFor("groupChange", (e) => e.kind === "created");
    expect(created.meta).toMatchObject({ seq: 0n, source: "sync" });
    expect(created.meta.groupSeq).toBeGreaterThan(0n);
    const ack = await a.client.send(g.conversationId, "to everyone");
    for (const d of [b, c, a]) {
      const m = await d.rec.waitFor("message", (e) => e.message.conversationId === g.conversationId);
      expect(m.meta.seq).toBe(0n);
      expect(m.meta.source).toBe("sync");
    }
    await b.client.markRead(g.conversationId, ack.convSeq);
    const summary = await a.rec.waitFor("receiptSummary", (e) => e.summary.readCount >= 1);
    expect(summary.summary).toMatchObject({ conversationId: g.conversationId, convSeq: ack.convSeq, memberCount: 3 });
    // Deliveries are gathered for delivery_receipt_delay_ms before they are
    // counted, so the read count may come first.
    await eventually(async () => {
      const [counts] = await a.client.getReceipts(g.conversationId, [ack.convSeq]);
      expect(counts?.readCount).toBe(1);
      expect(counts?.deliveredCount).toBeGreaterThanOrEqual(1);
    });
    // No pushes carried the group's events: every one came by sync.
    expect(b.rec.of("message").every((e) => e.meta.source === "sync")).toBe(true);
  });
});
