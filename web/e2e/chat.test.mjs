// End-to-end: the web app served by a real `pigeon serve`, driven in
// headless Chromium by three people. Each step builds on the previous one
// (the same server and browser contexts throughout), as a conversation
// would. Screenshots go to e2e/artifacts/.

import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { PASSWORD, WAIT_MS, artifacts, dumpPages, launchBrowser, newUser, problems, screenshot, startServer } from "./harness.mjs";

/** Polls `read` until `ok(value)`; fails with `what` and the last value. */
async function until(what, read, ok = Boolean, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await read();
      if (ok(last)) return last;
    } catch (e) {
      last = `(threw: ${e.message})`;
    }
    if (Date.now() > deadline) {
      await dumpPages();
      assert.fail(`timed out waiting for ${what}; last value: ${JSON.stringify(last)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function register(page, name) {
  await page.goto("/");
  await page.getByTestId("auth-mode-toggle").click();
  await page.getByTestId("auth-username").fill(name);
  await page.getByTestId("auth-password").fill(PASSWORD);
  await page.getByTestId("auth-submit").click();
  await until(`${name} logged in`, () => page.getByTestId("me").textContent(), (t) => t === name);
  await connected(page);
}

async function login(page, name) {
  await page.goto("/");
  await page.getByTestId("auth-username").fill(name);
  await page.getByTestId("auth-password").fill(PASSWORD);
  await page.getByTestId("auth-submit").click();
  await until(`${name} logged in`, () => page.getByTestId("me").textContent(), (t) => t === name);
  await connected(page);
}

async function connected(page) {
  await until("connected", () => page.getByTestId("conn-status").getAttribute("data-state"), (s) => s === "connected");
}

const convItem = (page, title) => page.locator(`[data-testid=conv-item][data-title="${title}"]`);

async function open(page, title) {
  await convItem(page, title).click();
  await until(`${title} open`, () => page.getByTestId("conv-header-title").textContent(), (t) => t === title);
}

async function send(page, text) {
  const input = page.getByTestId("composer-input");
  await input.fill(text);
  await input.press("Enter");
}

/** The messages of the open conversation, as the page shows them. */
function messages(page) {
  return page.getByTestId("message").evaluateAll((els) =>
    els.map((e) => ({
      text: e.querySelector("[data-testid=message-text]")?.textContent ?? "",
      sender: e.querySelector("[data-testid=message-sender]")?.textContent ?? "",
      mine: e.dataset.mine === "true",
      status: e.dataset.status ?? "",
    })),
  );
}

async function messageStatus(page, text) {
  const all = await messages(page);
  return all.find((m) => m.text === text)?.status;
}

async function unread(page, title) {
  const n = await convItem(page, title).getAttribute("data-unread", { timeout: 1000 });
  return Number(n);
}

describe("web chat app", () => {
  let server;
  let browser;
  let alice;
  let bob;
  let carol;

  before(async () => {
    rmSync(artifacts, { recursive: true, force: true }); // pictures of this run only
    server = await startServer();
    browser = await launchBrowser();
    alice = await newUser(browser, server.base, "alice");
    bob = await newUser(browser, server.base, "bob");
  });

  after(async () => {
    await browser?.close();
    if (server && process.exitCode) console.log(`# server log (tail):\n${server.log().slice(-3000)}`);
    // The server's warnings and errors, as diagnostics (they do not fail the run).
    const noisy = (server?.log() ?? "").split("\n").filter((l) => / (WARN|ERROR) /.test(l.replace(/\x1b\[[0-9;]*m/g, "")));
    for (const l of noisy.slice(0, 20)) console.log(`# server: ${l.replace(/\x1b\[[0-9;]*m/g, "")}`);
    await server?.stop();
  });

  it("two people register through the page", async () => {
    await register(alice.page, "alice");
    await register(bob.page, "bob");
    const empty = await alice.page.getByTestId("conv-list").textContent();
    assert.match(empty, /No conversations yet/);
  });

  it("a direct conversation: delivered, then read, both directions, typing and presence", async () => {
    const a = alice.page;
    const b = bob.page;
    await a.getByTestId("new-chat").click();
    await a.getByTestId("new-chat-username").fill("bob");
    await a.getByTestId("new-chat-submit").click();
    await until("conversation with bob open", () => a.getByTestId("conv-header-title").textContent(), (t) => t === "bob");

    await send(a, "hi bob");
    // Bob is online with no conversation open: his device gets the message
    // (delivered) but he has not read it.
    await until("hi bob delivered", () => messageStatus(a, "hi bob"), (s) => s === "delivered");
    await screenshot(a, "direct-delivered-alice");
    // Presence is shown once they share a conversation (protocol §13.1).
    await until("bob shown online", () => a.getByTestId("presence").getAttribute("data-state"), (s) => s === "online");
    await until("bob sees the conversation, 1 unread", () => unread(b, "alice"), (n) => n === 1);
    await until("bob sees a notice", () => b.getByTestId("notice").first().textContent(), (t) => t.includes("hi bob"));
    assert.match(await convItem(b, "alice").getByTestId("conv-last").textContent(), /hi bob/);

    await open(b, "alice");
    await until("bob reads hi bob", async () => (await messages(b)).map((m) => m.text), (t) => t.includes("hi bob"));
    await until("bob's unread count cleared", () => unread(b, "alice"), (n) => n === 0);
    await until("hi bob read", () => messageStatus(a, "hi bob"), (s) => s === "read");

    // Bob types: alice, who has the conversation open, sees it.
    await b.getByTestId("composer-input").pressSequentially("hello alice", { delay: 60 });
    await until("alice sees bob typing", () => a.getByTestId("typing-indicator").textContent(), (t) => /typing/.test(t));
    await b.getByTestId("composer-input").press("Enter");
    await until("alice gets hello alice", async () => (await messages(a)).map((m) => m.text), (t) => t.includes("hello alice"));
    await until("typing indicator gone", () => a.getByTestId("typing-indicator").count(), (n) => n === 0);
    await until("bob's reply read by alice", () => messageStatus(b, "hello alice"), (s) => s === "read");

    const seen = await messages(a);
    assert.deepEqual(
      seen.map((m) => [m.text, m.mine]),
      [
        ["hi bob", true],
        ["hello alice", false],
      ],
    );
    await send(a, "how are you?");
    await until("how are you? read", () => messageStatus(a, "how are you?"), (s) => s === "read");
    await screenshot(a, "direct-conversation-alice");
    await screenshot(b, "direct-conversation-bob");
  });

  it("a group with a third person registered through the API", async () => {
    server.cli(["register", "carol"], { PIGEON_PROFILE: `${server.dir}/carol-cli` });
    carol = await newUser(browser, server.base, "carol");
    const a = alice.page;
    const b = bob.page;
    const c = carol.page;

    await a.getByTestId("new-group").click();
    await a.getByTestId("group-name").fill("trip");
    await a.getByTestId("group-members").fill("bob, carol");
    await a.getByTestId("group-submit").click();
    await until("group open", () => a.getByTestId("conv-header-title").textContent(), (t) => t === "trip");
    assert.equal(await a.getByTestId("conv-members").textContent(), "3 members");
    await send(a, "welcome to the trip");

    await login(c, "carol");
    await until("carol sees the group with 1 unread", () => unread(c, "trip"), (n) => n === 1);
    await open(c, "trip");
    await until("carol sees alice's message", async () => await messages(c), (ms) =>
      ms.some((m) => m.text === "welcome to the trip" && m.sender === "alice"),
    );
    // Typing shows in a group too, with the typist's name.
    await c.getByTestId("composer-input").pressSequentially("hi a", { delay: 50 });
    await until("alice sees carol typing", () => a.getByTestId("typing-indicator").textContent(), (t) => t === "carol is typing…");
    await c.getByTestId("composer-input").fill("");
    await send(c, "hi all");

    await until("bob sees the group, 2 unread", () => unread(b, "trip"), (n) => n === 2);
    await open(b, "trip");
    await until("bob sees both", async () => (await messages(b)).map((m) => `${m.sender}:${m.text}`), (t) =>
      t.join("|") === "alice:welcome to the trip|carol:hi all",
    );
    await send(b, "count me in");
    await until("alice gets bob's and carol's messages", async () => (await messages(a)).map((m) => m.text), (t) =>
      t.join("|") === "welcome to the trip|hi all|count me in",
    );
    // Read by both others.
    await until("welcome read by all", () => messageStatus(a, "welcome to the trip"), (s) => s === "read");
    await until("carol's message read by all", () => messageStatus(c, "hi all"), (s) => s === "read");
    await screenshot(a, "group-conversation-alice");
  });

  it("reloading keeps the login and shows the history from the server", async () => {
    const a = alice.page;
    await a.reload();
    await until("still alice", () => a.getByTestId("me").textContent(), (t) => t === "alice");
    await connected(a);
    await until("both conversations listed", () =>
      a.getByTestId("conv-item").evaluateAll((els) => els.map((e) => e.dataset.title).sort().join(",")),
      (t) => t === "bob,trip",
    );
    await open(a, "bob");
    await until("history shown with receipt marks", () => messages(a), (ms) =>
      JSON.stringify(ms.map((m) => [m.text, m.status])) ===
      JSON.stringify([
        ["hi bob", "read"],
        ["hello alice", ""],
        ["how are you?", "read"],
      ]),
    );
    // A fresh page in the same browser profile (a new tab) is logged in too.
    const tab = await alice.context.newPage();
    await tab.goto("/#/c/" + encodeURIComponent(await a.getByTestId("conv-view").getAttribute("data-conv-id")));
    await until("new tab shows the conversation", async () => (await messages(tab)).length, (n) => n === 3);
    // An address naming somebody else's conversation leads back to the list.
    await tab.goto("/#/c/d:998:999");
    await until("back to the list", () => tab.evaluate(() => location.hash), (h) => h === "#/");
    assert.equal(await tab.getByTestId("conv-view").count(), 0);
    await tab.close();
  });

  it("history pages back", async () => {
    const a = alice.page;
    for (let i = 1; i <= 35; i++) await send(a, `line ${i}`);
    await until("all 35 acknowledged", async () => (await messages(a)).filter((m) => m.status === "sending").length, (n) => n === 0);
    await a.reload();
    await connected(a);
    await open(a, "bob");
    await until("newest page", async () => (await messages(a)).length, (n) => n === 30);
    assert.equal((await messages(a)).at(-1).text, "line 35");
    // Scrolling to the top loads the older page (as the button does).
    assert.equal(await a.getByTestId("load-older").count(), 1);
    await a.getByTestId("message-list").evaluate((el) => el.scrollTo(0, 0));
    await until("older page", async () => (await messages(a)).length, (n) => n === 38);
    assert.equal((await messages(a))[0].text, "hi bob");
    await a.getByTestId("history-start").waitFor({ timeout: WAIT_MS });
  });

  it("offline, messages arrive, back online with the right unread count", async () => {
    const a = alice.page;
    const b = bob.page;
    // Bob reads what alice wrote, then looks at the group while he is
    // offline; alice writes to him directly.
    await open(b, "alice");
    await until("bob caught up", () => unread(b, "alice"), (n) => n === 0);
    await open(b, "trip");
    await bob.context.setOffline(true);
    await until("bob's page knows it is offline", () => b.getByTestId("conn-status").getAttribute("data-state"), (s) =>
      s === "disconnected",
    );
    await open(a, "bob");
    await until("alice sees bob offline", () => a.getByTestId("presence").getAttribute("data-state"), (s) => s === "offline");
    assert.match(await a.getByTestId("presence").textContent(), /last seen/);
    for (const t of ["are you there?", "ping", "call me"]) await send(a, t);
    await until("sent, not delivered", () => messageStatus(a, "call me"), (s) => s === "sent");
    // Bob writes in the group while offline: it waits in his outbox.
    await send(b, "written offline");
    await until("bob's message waits", () => messageStatus(b, "written offline"), (s) => s === "sending");

    await bob.context.setOffline(false);
    await connected(b);
    await until("bob has 3 unread from alice", () => unread(b, "alice"), (n) => n === 3);
    await until("bob is told", () => b.getByTestId("notice").first().textContent(), (t) => t.includes("alice"));
    await until("now delivered", () => messageStatus(a, "call me"), (s) => s === "delivered");
    await until("alice sees bob online again", () => a.getByTestId("presence").getAttribute("data-state"), (s) => s === "online");
    await until("bob's outbox went out", () => messageStatus(b, "written offline"), (s) => ["sent", "delivered", "read"].includes(s));
    await until("alice has it in the group", () => unread(a, "trip"), (n) => n === 1);
    await screenshot(b, "back-online-bob");
    // The notice opens the conversation.
    await b.getByTestId("notice").first().click();
    await until("alice's conversation open", () => b.getByTestId("conv-header-title").textContent(), (t) => t === "alice");
    await until("bob reads them", () => unread(b, "alice"), (n) => n === 0);
    await until("read", () => messageStatus(a, "call me"), (s) => s === "read");
  });

  it("log out, a wrong password, and back in on a new device", async () => {
    const c = carol.page;
    await c.getByTestId("logout").click();
    await c.getByTestId("auth-form").waitFor();
    assert.equal(await c.evaluate(() => localStorage.getItem("pigeon.session")), null);
    await c.getByTestId("auth-username").fill("carol");
    await c.getByTestId("auth-password").fill("not her password");
    await c.getByTestId("auth-submit").click();
    await until("refused", () => c.getByTestId("auth-error").textContent(), (t) => /Wrong username or password/.test(t));
    await c.getByTestId("auth-password").fill(PASSWORD);
    await c.getByTestId("auth-submit").click();
    await connected(c);
    // A new device syncs from the start: the group, its history and no
    // unread messages (carol read them before logging out).
    await until("the group is back, read", () => unread(c, "trip"), (n) => n === 0);
    await open(c, "trip");
    await until("history", async () => (await messages(c)).map((m) => m.text).join("|"), (t) =>
      t === "welcome to the trip|hi all|count me in|written offline",
    );
  });

  it("no page threw and the Content-Security-Policy blocked nothing", () => {
    assert.deepEqual(problems, []);
  });
});
