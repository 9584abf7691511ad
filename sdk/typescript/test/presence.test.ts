// Presence, typing, privacy and blocking against a real server.

import { describe, expect, inject, it } from "vitest";
import { ErrorCode, PigeonError, PresenceState } from "../src/index.js";
import { device, newUser } from "./helpers.js";

const url = inject("pigeonUrl");

describe("presence, typing and blocking", () => {
  it("pushes presence changes to contacts and answers GetPresence", async () => {
    // Alice and Bob share a conversation. Bob's connecting and leaving are
    // pushed to Alice; GetPresence tells the same; hiding makes it UNKNOWN.
    const [alice, bob, stranger] = [await newUser(url, "al"), await newUser(url, "bo"), await newUser(url, "st")];
    const a = await device(url, alice);
    const b1 = await device(url, bob);
    await a.client.send(bob, "hi");
    await b1.client.close();
    await a.rec.waitFor("presence", (e) => e.presence.username === bob && e.presence.state === PresenceState.OFFLINE);
    const b = await device(url, bob);
    await a.rec.waitFor("presence", (e) => e.presence.username === bob && e.presence.state === PresenceState.ONLINE);
    const [ofBob, ofStranger, ofMe] = await a.client.getPresence([bob, stranger, alice]);
    expect(ofBob?.state).toBe(PresenceState.ONLINE);
    expect(ofStranger?.state).toBe(PresenceState.UNKNOWN);
    expect(ofMe?.state).toBe(PresenceState.ONLINE);
    expect(await b.client.setPrivacy(true)).toBe(true);
    expect((await a.client.getPresence([bob]))[0]?.state).toBe(PresenceState.UNKNOWN);
    expect(await b.client.setPrivacy(false)).toBe(false);
    const e = await a.client.getPresence(["no-such-user-zz"]).catch((err: unknown) => err);
    expect((e as PigeonError).code).toBe(ErrorCode.USER_NOT_FOUND);
  });

  it("relays typing to the other participant", async () => {
    const [alice, bob] = [await newUser(url, "al"), await newUser(url, "bo")];
    const a = await device(url, alice);
    const b = await device(url, bob);
    const ack = await a.client.send(bob, "hi");
    await a.client.setTyping(ack.conversationId, true);
    const t = await b.rec.waitFor("typing");
    expect(t.typing).toMatchObject({ conversationId: ack.conversationId, username: alice, typing: true });
    await a.client.setTyping(ack.conversationId, false);
    await b.rec.waitFor("typing", (e) => !e.typing.typing);
    expect(a.rec.of("typing")).toHaveLength(0);
  });

  it("blocks and unblocks, on every device of the blocker", async () => {
    const [alice, bob] = [await newUser(url, "al"), await newUser(url, "bo")];
    const a = await device(url, alice);
    const a2 = await device(url, alice);
    const b = await device(url, bob);
    await b.client.send(alice, "hello");
    await a.client.block(bob);
    const changed = await a2.rec.waitFor("blockChanged");
    expect(changed.change).toMatchObject({ username: bob, blocked: true });
    expect(await a2.client.listBlocked()).toEqual([bob]);
    const refused = await b.client.send(alice, "let me in").catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(PigeonError);
    expect((refused as PigeonError).code).toBe(ErrorCode.FORBIDDEN);
    expect((await b.client.getPresence([alice]))[0]?.state).toBe(PresenceState.UNKNOWN);
    await a.client.unblock(bob);
    await a2.rec.waitFor("blockChanged", (e) => !e.change.blocked);
    expect(await a.client.listBlocked()).toEqual([]);
    await b.client.send(alice, "thanks");
    await a.rec.waitFor("message", (e) => e.message.content?.text === "thanks");
    const self = await a.client.block(alice).catch((err: unknown) => err);
    expect((self as PigeonError).code).toBe(ErrorCode.INVALID_ARGUMENT);
  });
});
