// Unit tests of the app's state rules (src/model.ts), which have no DOM and
// no SDK: compiled with TypeScript's transpiler at load time, then imported.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import ts from "typescript";

const source = readFileSync(new URL("../src/model.ts", import.meta.url), "utf8");
const js = ts.transpileModule(source, {
  compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
}).outputText;
const M = await import(`data:text/javascript;base64,${Buffer.from(js).toString("base64")}`);

const ME = { userId: 1, username: "alice", deviceId: 1 };
const msg = (seq, senderId, text = `m${seq}`, convId = "d:1:2") => ({
  convId,
  convSeq: seq,
  senderId,
  sender: senderId === 1 ? "alice" : senderId === 2 ? "bob" : "carol",
  clientMsgId: `c${seq}`,
  sentAtMs: 1000 + seq,
  text,
  recalled: false,
  editedAtMs: 0,
});

function state() {
  const s = M.newState();
  s.me = { ...ME };
  return s;
}

describe("model", () => {
  it("counts unread messages from others once, however often they are replayed", () => {
    const s = state();
    for (const seq of [1, 2, 3]) M.applyMessage(s, msg(seq, 2));
    for (const seq of [1, 2, 3]) M.applyMessage(s, msg(seq, 2)); // replay
    const c = s.conversations.get("d:1:2");
    assert.equal(M.unreadCount(c), 3);
    M.applyMessage(s, msg(4, 1)); // writing means having read
    assert.equal(M.unreadCount(c), 0);
    M.applyMessage(s, msg(5, 2));
    assert.equal(M.unreadCount(c), 1);
    M.applyRead(s, "d:1:2", 5);
    assert.equal(M.unreadCount(c), 0);
  });

  it("merges the conversation list with events applied before and after it", () => {
    const s = state();
    // Sync delivered 1..2 before the list (which counted up to 3) arrived.
    M.applyMessage(s, msg(1, 2));
    M.applyMessage(s, msg(2, 2));
    M.applySummary(s, { id: "d:1:2", peerId: 2, peer: "bob", last: msg(3, 2), unread: 3, readUpTo: 0, isMember: true });
    const c = s.conversations.get("d:1:2");
    assert.equal(M.unreadCount(c), 3);
    // The sync goes on: 3 again (replay), then 4 (new).
    M.applyMessage(s, msg(3, 2));
    M.applyMessage(s, msg(4, 2));
    assert.equal(M.unreadCount(c), 4);
    assert.equal(c.peer, "bob");
    assert.equal(c.last.convSeq, 4);
    // Marked read on another device up to 4.
    M.applyRead(s, "d:1:2", 4);
    assert.equal(M.unreadCount(c), 0);
  });

  it("shows delivered and read marks from receipts, read counting as delivered", () => {
    const s = state();
    M.applyMessage(s, msg(1, 1));
    M.applyMessage(s, msg(2, 1));
    const c = s.conversations.get("d:1:2");
    const status = (seq) => M.messageStatus(s, c, c.messages.get(seq)).status;
    assert.equal(status(1), "sent");
    M.applyReceipt(s, { convId: "d:1:2", userId: 2, username: "bob", kind: "delivered", upTo: 1 });
    assert.deepEqual([status(1), status(2)], ["delivered", "sent"]);
    M.applyReceipt(s, { convId: "d:1:2", userId: 2, username: "bob", kind: "read", upTo: 2 });
    assert.deepEqual([status(1), status(2)], ["read", "read"]);
    // An older receipt arriving late changes nothing.
    M.applyReceipt(s, { convId: "d:1:2", userId: 2, username: "bob", kind: "read", upTo: 1 });
    assert.equal(status(2), "read");
  });

  it("marks a group message read only when every other member has read it", () => {
    const s = state();
    M.applyGroup(s, { convId: "g:1", name: "trip", memberCount: 3, dissolved: false, createdAtMs: 1 });
    M.applyMessage(s, msg(1, 1, "hi", "g:1"));
    const c = s.conversations.get("g:1");
    const st = () => M.messageStatus(s, c, c.messages.get(1));
    M.applyReceipt(s, { convId: "g:1", userId: 2, username: "bob", kind: "read", upTo: 1 });
    assert.equal(st().status, "sent");
    M.applyReceipt(s, { convId: "g:1", userId: 3, username: "carol", kind: "delivered", upTo: 1 });
    assert.equal(st().status, "delivered");
    M.applyReceipt(s, { convId: "g:1", userId: 3, username: "carol", kind: "read", upTo: 1 });
    assert.equal(st().status, "read");
    assert.match(st().detail, /read by 2 of 2/);
  });

  it("never lets a replayed message undo a recall or an edit, and keeps deleted ones hidden", () => {
    const s = state();
    M.applyMessage(s, msg(1, 2, "typo"));
    M.applyEdit(s, "d:1:2", 1, "fixed", 5000);
    M.applyMessage(s, msg(1, 2, "typo"));
    assert.equal(s.conversations.get("d:1:2").messages.get(1).text, "fixed");
    M.applyRecall(s, "d:1:2", 1);
    M.applyMessage(s, msg(1, 2, "typo"));
    assert.equal(s.conversations.get("d:1:2").messages.get(1).recalled, true);
    assert.equal(s.conversations.get("d:1:2").messages.get(1).text, "");
    M.applyMessage(s, msg(2, 2));
    M.applyDeleted(s, "d:1:2", 2);
    M.applyMessage(s, msg(2, 2));
    assert.equal(s.conversations.get("d:1:2").messages.has(2), false);
  });

  it("lets typing indicators lapse", () => {
    const s = state();
    M.setTyping(s, "d:1:2", "bob", true, 0);
    assert.deepEqual(M.typingIn(s, "d:1:2", 1000), ["bob"]);
    assert.deepEqual(M.typingIn(s, "d:1:2", M.TYPING_SHOW_MS + 1), []);
    M.setTyping(s, "d:1:2", "bob", true, 0);
    M.setTyping(s, "d:1:2", "bob", false, 10);
    assert.deepEqual(M.typingIn(s, "d:1:2", 20), []);
  });

  it("round-trips receipts through JSON for the sync-key storage", () => {
    const s = state();
    M.applyReceipt(s, { convId: "d:1:2", userId: 2, username: "bob", kind: "read", upTo: 7 });
    const t = state();
    M.receiptsFromJson(t, JSON.parse(JSON.stringify(M.receiptsToJson(s))));
    assert.deepEqual(t.conversations.get("d:1:2").receipts.get(2), { username: "bob", delivered: 0, read: 7 });
  });
});
