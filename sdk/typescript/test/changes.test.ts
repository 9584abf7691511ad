// Receipts (delivered and read), recall, edit and delete-for-me against a
// real server, as events on the right devices and in history.

import { describe, expect, inject, it } from "vitest";
import { ErrorCode, PigeonError } from "../src/index.js";
import { device, newUser } from "./helpers.js";

const url = inject("pigeonUrl");

describe("receipts and message changes", () => {
  it("gives the sender delivered and read receipts", async () => {
    // Bob is online when Alice sends: a DELIVERED receipt comes back; when he
    // marks the conversation read, a READ receipt; Alice's other device too.
    const [alice, bob] = [await newUser(url, "al"), await newUser(url, "bo")];
    const a = await device(url, alice);
    const a2 = await device(url, alice);
    const b = await device(url, bob);
    const ack = await a.client.send(bob, "did you get this?");
    const delivered = await a.rec.waitFor("receipt", (e) => e.kind === "delivered");
    expect(delivered.receipt).toMatchObject({ conversationId: ack.conversationId, username: bob, upTo: ack.convSeq });
    await b.rec.waitFor("message", (e) => e.message.convSeq === ack.convSeq);
    const read = await b.client.markRead(ack.conversationId, ack.convSeq);
    expect(read).toMatchObject({ readUpTo: ack.convSeq, unreadCount: 0n });
    const readReceipt = await a.rec.waitFor("receipt", (e) => e.kind === "read");
    expect(readReceipt.receipt).toMatchObject({ conversationId: ack.conversationId, username: bob, upTo: ack.convSeq });
    await a2.rec.waitFor("receipt", (e) => e.kind === "read");
    // Bob's own devices get the marker, not a receipt.
    await b.rec.waitFor("readMarker", (e) => e.marker.readUpTo === ack.convSeq);
    expect(b.rec.of("receipt")).toHaveLength(0);
  });

  it("recalls, edits and deletes for me, with events and history to match", async () => {
    const [alice, bob] = [await newUser(url, "al"), await newUser(url, "bo")];
    const a = await device(url, alice);
    const b = await device(url, bob);
    const first = await a.client.send(bob, "statoin");
    const second = await a.client.send(bob, "oops");
    const third = await a.client.send(bob, "keep me");
    const conv = first.conversationId;
    await b.rec.waitFor("message", (e) => e.message.convSeq === third.convSeq);

    const edited = await a.client.edit(conv, first.convSeq, "station");
    expect(edited.editedAtMs).toBeGreaterThan(0n);
    const editEvent = await b.rec.waitFor("edit");
    expect(editEvent.edit).toMatchObject({ conversationId: conv, convSeq: first.convSeq, editedAtMs: edited.editedAtMs });
    expect(editEvent.edit.content?.text).toBe("station");

    await a.client.recall(conv, second.convSeq);
    const recallEvent = await b.rec.waitFor("recall");
    expect(recallEvent.recall).toMatchObject({ conversationId: conv, convSeq: second.convSeq });
    await a.rec.waitFor("recall");

    await b.client.deleteForMe(conv, third.convSeq);
    await b.rec.waitFor("delete", (e) => e.deleted.convSeq === third.convSeq);
    expect(a.rec.of("delete")).toHaveLength(0);

    const bobView = await b.client.history(conv);
    expect(bobView.messages.map((m) => [m.convSeq, m.recalled, m.content?.text, m.editedAtMs > 0n])).toEqual([
      [second.convSeq, true, undefined, false],
      [first.convSeq, false, "station", true],
    ]);
    const aliceView = await a.client.history(conv);
    expect(aliceView.messages.map((m) => m.convSeq)).toEqual([third.convSeq, second.convSeq, first.convSeq]);

    // Only the sender may change a message; a recalled one cannot be edited.
    const code = async (p: Promise<unknown>) => ((await p.catch((e: unknown) => e)) as PigeonError).code;
    expect(await code(b.client.recall(conv, first.convSeq))).toBe(ErrorCode.FORBIDDEN);
    expect(await code(b.client.edit(conv, first.convSeq, "mine"))).toBe(ErrorCode.FORBIDDEN);
    expect(await code(a.client.edit(conv, second.convSeq, "back"))).toBe(ErrorCode.MESSAGE_NOT_FOUND);
    expect(await code(a.client.edit(conv, 999, "x"))).toBe(ErrorCode.MESSAGE_NOT_FOUND);
  });

  it("answers GetReceipts for a group and refuses it for a direct conversation", async () => {
    const [alice, bob] = [await newUser(url, "al"), await newUser(url, "bo")];
    const a = await device(url, alice);
    const g = await a.client.createGroup({ name: "r", members: [bob] });
    const ack = await a.client.send(g.conversationId, "count me");
    const receipts = await a.client.getReceipts(g.conversationId, [ack.convSeq, 99]);
    expect(receipts.map((r) => r.convSeq)).toEqual([ack.convSeq, 99n]);
    const direct = await a.client.send(bob, "hi");
    const e = await a.client.getReceipts(direct.conversationId, [1]).catch((err: unknown) => err);
    expect((e as PigeonError).code).toBe(ErrorCode.INVALID_ARGUMENT);
  });
});
