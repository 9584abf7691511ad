// Groups against a real server: every group request, the GroupChange events
// members receive, and the permission errors.

import { describe, expect, inject, it } from "vitest";
import { AddPolicy, ErrorCode, GroupRole, PigeonError, PostPolicy } from "../src/index.js";
import { device, newUser } from "./helpers.js";

const url = inject("pigeonUrl");

async function codeOf(p: Promise<unknown>): Promise<ErrorCode | undefined> {
  const e = await p.then(() => undefined, (err: unknown) => err);
  expect(e).toBeInstanceOf(PigeonError);
  return (e as PigeonError).code;
}

describe("groups", () => {
  it("creates a group, posts to it, and tells every member", async () => {
    // Alice creates "crew" with Bob and Carol: all three get CREATED, then a message.
    const [alice, bob, carol] = [await newUser(url, "al"), await newUser(url, "bo"), await newUser(url, "ca")];
    const [a, b, c] = [await device(url, alice), await device(url, bob), await device(url, carol)];
    const group = await a.client.createGroup({ name: "crew", description: "the crew", members: [bob, carol] });
    expect(group).toMatchObject({ name: "crew", description: "the crew", ownerUsername: alice, memberCount: 3, large: false, dissolved: false });
    expect(group.conversationId).toMatch(/^g:\d+$/);
    const id = group.conversationId;
    for (const d of [a, b, c]) {
      const created = await d.rec.waitFor("groupChange", (e) => e.change.conversationId === id && e.kind === "created");
      expect(created.change.members.map((m) => [m.username, m.role])).toEqual([
        [alice, GroupRole.OWNER],
        [bob, GroupRole.MEMBER],
        [carol, GroupRole.MEMBER],
      ]);
    }
    const ack = await b.client.send(id, "where do we meet?");
    expect(ack.conversationId).toBe(id);
    for (const d of [a, c]) await d.rec.waitFor("message", (e) => e.message.conversationId === id && e.message.senderUsername === bob);
    const info = await c.client.getGroup(id);
    expect(info.myRole).toBe(GroupRole.MEMBER);
    expect(info.group?.memberCount).toBe(3);
    const convs = await c.client.listConversations();
    expect(convs.find((s) => s.conversationId === id)?.group?.name).toBe("crew");
  });

  it("adds, removes, re-roles, transfers, renames, reconfigures, and dissolves", async () => {
    const [alice, bob, carol, dave] = [await newUser(url, "al"), await newUser(url, "bo"), await newUser(url, "ca"), await newUser(url, "da")];
    const [a, b, d] = [await device(url, alice), await device(url, bob), await device(url, dave)];
    const g = await a.client.createGroup({ name: "team", members: [bob] });
    const id = g.conversationId;

    const added = await a.client.addMembers(id, [carol, dave, bob]);
    expect(added.added.map((m) => m.username).sort()).toEqual([carol, dave].sort());
    expect(added.group?.memberCount).toBe(4);
    await d.rec.waitFor("groupChange", (e) => e.kind === "membersAdded" && e.change.conversationId === id);

    // A plain member may not rename; the owner may. Only the given fields change.
    expect(await codeOf(b.client.updateGroup(id, { name: "mine now" }))).toBe(ErrorCode.FORBIDDEN);
    const renamed = await a.client.updateGroup(id, { name: "team 2" });
    expect(renamed).toMatchObject({ name: "team 2", description: "" });
    const described = await a.client.updateGroup(id, { description: "we ship" });
    expect(described).toMatchObject({ name: "team 2", description: "we ship" });
    const configured = await a.client.updateGroup(id, { settings: { postPolicy: PostPolicy.ADMINS, addPolicy: AddPolicy.EVERYONE, maxMembers: 10 } });
    expect(configured.settings).toMatchObject({ postPolicy: PostPolicy.ADMINS, addPolicy: AddPolicy.EVERYONE, maxMembers: 10 });
    await b.rec.waitFor("groupChange", (e) => e.kind === "updated" && e.change.group?.description === "we ship");

    // With POST_POLICY_ADMINS Bob may not post until he is made an admin.
    expect(await codeOf(b.client.send(id, "hello?"))).toBe(ErrorCode.FORBIDDEN);
    const promoted = await a.client.setRole(id, bob, GroupRole.ADMIN);
    expect(promoted.conversationId).toBe(id);
    const roleEvent = await b.rec.waitFor("groupChange", (e) => e.kind === "roleChanged");
    expect(roleEvent.change.members.map((m) => [m.username, m.role])).toEqual([[bob, GroupRole.ADMIN]]);
    await b.client.send(id, "now I can");

    const page1 = await b.client.listMembers(id, { limit: 2 });
    expect(page1.members).toHaveLength(2);
    expect(page1.hasMore).toBe(true);
    const page2 = await b.client.listMembers(id, { afterUserId: page1.members[1]!.userId, limit: 2 });
    const all = [...page1.members, ...page2.members].map((m) => m.username).sort();
    expect(all).toEqual([alice, bob, carol, dave].sort());

    const removed = await b.client.removeMembers(id, [dave]);
    expect(removed.removed.map((m) => [m.username, m.role])).toEqual([[dave, GroupRole.NONE]]);
    await d.rec.waitFor("groupChange", (e) => e.kind === "membersRemoved");
    expect((await d.client.getGroup(id)).myRole).toBe(GroupRole.NONE);
    expect(await codeOf(d.client.listMembers(id))).toBe(ErrorCode.FORBIDDEN);

    // The owner cannot leave; after transferring, the old owner is an admin and can.
    expect(await codeOf(a.client.leaveGroup(id))).toBe(ErrorCode.FORBIDDEN);
    const transferred = await a.client.transferOwnership(id, bob);
    expect(transferred.ownerUsername).toBe(bob);
    const tEvent = await a.rec.waitFor("groupChange", (e) => e.kind === "ownershipTransferred");
    expect(tEvent.change.members.map((m) => [m.username, m.role])).toEqual([
      [bob, GroupRole.OWNER],
      [alice, GroupRole.ADMIN],
    ]);
    await a.client.leaveGroup(id);
    await b.rec.waitFor("groupChange", (e) => e.kind === "memberLeft" && e.change.actorUsername === alice);
    expect((await a.client.getGroup(id)).myRole).toBe(GroupRole.NONE);

    expect(await codeOf(a.client.dissolveGroup(id))).toBe(ErrorCode.FORBIDDEN);
    await b.client.dissolveGroup(id);
    await b.rec.waitFor("groupChange", (e) => e.kind === "dissolved");
    const after = await b.client.getGroup(id);
    expect(after.group?.dissolved).toBe(true);
    expect(await codeOf(b.client.send(id, "anyone?"))).toBe(ErrorCode.FORBIDDEN);
    // Reading still works after dissolution.
    const history = await b.client.history(id);
    expect(history.messages.map((m) => m.content?.text)).toEqual(["now I can"]);
  });

  it("refuses bad group requests with their codes", async () => {
    const alice = await newUser(url, "al");
    const a = await device(url, alice);
    expect(await codeOf(a.client.createGroup({ name: "" }))).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(await codeOf(a.client.createGroup({ name: "x", members: ["no-such-user-zz"] }))).toBe(ErrorCode.USER_NOT_FOUND);
    expect(await codeOf(a.client.getGroup("g:0"))).toBe(ErrorCode.CONVERSATION_NOT_FOUND);
    const g = await a.client.createGroup({ name: "solo" });
    expect(await codeOf(a.client.setRole(g.conversationId, alice, GroupRole.OWNER))).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(await codeOf(a.client.transferOwnership(g.conversationId, alice))).toBe(ErrorCode.INVALID_ARGUMENT);
    const outsider = await device(url, await newUser(url, "ou"));
    expect(await codeOf(outsider.client.getGroup(g.conversationId))).toBe(ErrorCode.FORBIDDEN);
  });
});
