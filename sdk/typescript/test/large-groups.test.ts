// A large (read-diffused) group against a server of its own with a tiny
// threshold: its events come only through SyncNotice and sync, from the
// shared log (seq 0, group_seq set), and receipts come as counts.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { device, newUser } from "./helpers.js";
import { TestServer } from "./server.js";

let server: TestServer;
let url: string;

beforeAll(async () => {
  server = await TestServer.start("group_large_threshold = 2");
  url = server.wsUrl;
});

afterAll(async () => {
  await server.dispose();
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
    const [counts] = await a.client.getReceipts(g.conversationId, [ack.convSeq]);
    expect(counts?.readCount).toBe(1);
    expect(counts?.deliveredCount).toBeGreaterThanOrEqual(1);
    // No pushes carried the group's events: every one came by sync.
    expect(b.rec.of("message").every((e) => e.meta.source === "sync")).toBe(true);
  });
});
