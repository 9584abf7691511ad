// The screens: log in / register, and the chat (conversation list, one
// conversation, composer, notices). Plain DOM; each state change re-renders
// the list and the open conversation in the next animation frame, while the
// forms (and what the user is typing) stay in place. `data-testid`s are the
// contract with the end-to-end tests in e2e/.

import type { App } from "./app";
import { h, replace } from "./dom";
import * as M from "./model";

const STATUS_MARK: Record<M.Status, string> = {
  sending: "◷",
  failed: "!",
  sent: "○",
  delivered: "✓",
  read: "✓✓",
};

function clock(ms: number): string {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function lastSeen(ms: number, now: number): string {
  if (!ms) return "offline";
  const min = Math.floor((now - ms) / 60000);
  if (min < 1) return "last seen just now";
  if (min < 60) return `last seen ${min} min ago`;
  const d = new Date(ms);
  const today = new Date(now).toDateString() === d.toDateString();
  return `last seen ${today ? "today" : d.toLocaleDateString()} at ${clock(ms)}`;
}

function initials(name: string): string {
  return (name.replace(/[^a-z0-9]/gi, "").slice(0, 1) || "?").toUpperCase();
}

/** A stable hue per name, for avatars. */
function hue(name: string): number {
  let x = 0;
  for (const ch of name) x = (x * 31 + ch.charCodeAt(0)) % 360;
  return x;
}

function avatar(name: string, group: boolean): HTMLElement {
  const el = h("span", { class: `avatar${group ? " group" : ""}`, "aria-hidden": "true" }, group ? "#" : initials(name));
  // Through the CSSOM: the page's CSP refuses style attributes.
  el.style.setProperty("--hue", String(hue(name)));
  return el;
}

const SVG = "http://www.w3.org/2000/svg";

/** The logo: a speech bubble with a wing, drawn inline (no image files, no
 * emoji font needed). */
function logo(size: number): SVGSVGElement {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 32 32");
  svg.setAttribute("width", String(size));
  svg.setAttribute("height", String(size));
  svg.setAttribute("class", "logo");
  svg.setAttribute("aria-hidden", "true");
  const bubble = document.createElementNS(SVG, "path");
  bubble.setAttribute("d", "M16 3C8.8 3 3 8.1 3 14.4c0 3.5 1.8 6.6 4.6 8.7L6.5 29l6.1-3.4c1.1.2 2.2.4 3.4.4 7.2 0 13-5.1 13-11.6S23.2 3 16 3z");
  bubble.setAttribute("fill", "currentColor");
  const wing = document.createElementNS(SVG, "path");
  wing.setAttribute("d", "M9.5 15.5c3-.2 5.6-1.6 7.5-4.2 1 2.9.4 5.7-1.9 7.6 2.6-.3 5-1.6 6.9-3.9-.9 4.1-4.8 6.6-9.3 6.1-1.6-.2-2.8-1.2-3.2-2.6z");
  wing.setAttribute("fill", "var(--panel)");
  svg.append(bubble, wing);
  return svg;
}

export class Ui {
  private root: HTMLElement;
  private frame = 0;
  private drafts = new Map<string, string>();
  private shownConv: string | null = null;
  private authMode: "login" | "register" = "login";
  // Persistent parts of the chat screen.
  private shell?: HTMLElement;
  private list?: HTMLElement;
  private status?: HTMLElement;
  private chat?: HTMLElement;
  private header?: HTMLElement;
  private messages?: HTMLElement;
  private composer?: HTMLFormElement;
  private input?: HTMLTextAreaElement;
  private notices?: HTMLElement;
  private panel?: HTMLElement;
  private loadingOlder = false;

  constructor(
    root: HTMLElement,
    private app: App,
  ) {
    this.root = root;
    app.subscribe(() => this.schedule());
    // Back and forward, and addresses typed or pasted.
    window.addEventListener("hashchange", () => this.followHash());
    window.addEventListener("popstate", () => this.followHash());
    document.addEventListener("visibilitychange", () => this.app.maybeMarkRead());
    window.addEventListener("offline", () => this.app.networkChanged());
    window.addEventListener("online", () => this.app.networkChanged());
    // Typing indicators and "last seen" age without events.
    setInterval(() => this.schedule(), 15000);
  }

  /** Opens the conversation named in the address (#/c/<id>). */
  followHash(): void {
    const m = /^#\/c\/(.+)$/.exec(location.hash);
    const id = m ? decodeURIComponent(m[1]!) : null;
    if (this.app.loggedIn && (id !== this.app.state.openId || id === null)) this.app.open(id);
    this.schedule();
  }

  /** Opens a conversation and records it in the address. Synchronously: a
   * render between setting the hash and its hashchange event would see no
   * conversation open and reset the address. */
  private go(id: string | null): void {
    const hash = id ? `#/c/${encodeURIComponent(id)}` : "#/";
    if (location.hash !== hash) history.pushState(null, "", hash);
    this.followHash();
  }

  schedule(): void {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  render(): void {
    const s = this.app.state;
    // The address names no conversation once none is open (logged out, or
    // the conversation turned out not to be ours).
    if (!s.openId && location.hash.startsWith("#/c/")) history.replaceState(null, "", "#/");
    if (!this.app.loggedIn) {
      if (!this.root.querySelector("[data-testid=auth]")) this.renderAuth();
      this.shell = undefined;
      return;
    }
    if (!this.shell) this.buildShell();
    this.renderStatus();
    this.renderList(s);
    this.renderChat(s);
    this.renderNotices(s);
    const total = [...s.conversations.values()].reduce((a, c) => a + M.unreadCount(c), 0);
    document.title = total ? `(${total}) Pigeon` : "Pigeon";
  }

  // ------------------------------------------------------------ auth

  private renderAuth(): void {
    const register = this.authMode === "register";
    const error = h("p", { class: "error", "data-testid": "auth-error", role: "alert" }, this.app.authMessage);
    const user = h("input", {
      name: "username",
      autocomplete: "username",
      autocapitalize: "none",
      spellcheck: "false",
      required: true,
      placeholder: "username",
      "data-testid": "auth-username",
    });
    const pass = h("input", {
      name: "password",
      type: "password",
      autocomplete: register ? "new-password" : "current-password",
      required: true,
      placeholder: "password",
      minlength: register ? 8 : undefined,
      "data-testid": "auth-password",
    });
    const submit = h(
      "button",
      { type: "submit", class: "primary", "data-testid": "auth-submit" },
      register ? "Create account" : "Log in",
    );
    const form = h(
      "form",
      {
        class: "auth-form",
        "data-testid": "auth-form",
        "data-mode": this.authMode,
        onsubmit: (ev: Event) => {
          ev.preventDefault();
          submit.disabled = true;
          error.textContent = "";
          const name = user.value.trim().toLowerCase();
          const done = register ? this.app.register(name, pass.value) : this.app.login(name, pass.value);
          done
            .then(() => {
              this.root.textContent = "";
              this.followHash();
            })
            .catch((e: Error) => {
              error.textContent = e.message;
              submit.disabled = false;
            });
        },
      },
      h("label", {}, "Username", user),
      h("label", {}, "Password", pass),
      error,
      submit,
      h(
        "p",
        { class: "switch" },
        register ? "Have an account? " : "New here? ",
        h(
          "button",
          {
            type: "button",
            class: "link",
            "data-testid": "auth-mode-toggle",
            onclick: () => {
              this.authMode = register ? "login" : "register";
              this.app.authMessage = "";
              this.renderAuth();
            },
          },
          register ? "Log in" : "Create an account",
        ),
      ),
    );
    replace(
      this.root,
      h(
        "section",
        { class: "auth", "data-testid": "auth" },
        h("div", { class: "brand" }, logo(40), h("h1", {}, "Pigeon")),
        form,
      ),
    );
    user.focus();
  }

  // ------------------------------------------------------------ shell

  private buildShell(): void {
    const s = this.app.state;
    this.status = h("span", { class: "conn", "data-testid": "conn-status" });
    this.list = h("ul", { class: "conv-list", "data-testid": "conv-list" });
    this.panel = h("div", { class: "panel" });
    const newChat = h("button", { type: "button", "data-testid": "new-chat", onclick: () => this.showNewChat() }, "New chat");
    const newGroup = h(
      "button",
      { type: "button", "data-testid": "new-group", onclick: () => this.showNewGroup() },
      "New group",
    );
    const sidebar = h(
      "aside",
      { class: "sidebar" },
      h(
        "header",
        { class: "me" },
        avatar(s.me?.username ?? "?", false),
        h("div", { class: "who" }, h("strong", { "data-testid": "me" }, s.me?.username ?? ""), this.status),
        h(
          "button",
          { type: "button", class: "link", "data-testid": "logout", onclick: () => void this.app.logout() },
          "Log out",
        ),
      ),
      h("div", { class: "actions" }, newChat, newGroup),
      this.panel,
      this.list,
    );
    this.header = h("header", { class: "chat-header" });
    this.messages = h("div", {
      class: "messages",
      "data-testid": "message-list",
      onscroll: () => {
        if (this.messages!.scrollTop < 40) void this.loadOlder();
      },
    });
    this.input = h("textarea", {
      rows: 1,
      placeholder: "Write a message",
      "data-testid": "composer-input",
      "aria-label": "Message",
      oninput: () => {
        const id = this.app.state.openId;
        if (!id) return;
        this.drafts.set(id, this.input!.value);
        this.app.typed(id, this.input!.value.trim() === "");
      },
      onkeydown: (ev: Event) => {
        const k = ev as KeyboardEvent;
        if (k.key === "Enter" && !k.shiftKey && !k.isComposing) {
          ev.preventDefault();
          this.composer!.requestSubmit();
        }
      },
    });
    this.composer = h(
      "form",
      {
        class: "composer",
        "data-testid": "composer",
        onsubmit: (ev: Event) => {
          ev.preventDefault();
          const id = this.app.state.openId;
          if (!id || !this.input!.value.trim()) return;
          this.app.send(id, this.input!.value);
          this.input!.value = "";
          this.drafts.delete(id);
          this.stickToBottom = true;
        },
      },
      this.input,
      h("button", { type: "submit", class: "primary", "data-testid": "composer-send" }, "Send"),
    );
    this.chat = h("main", { class: "chat" });
    this.notices = h("div", { class: "notices", "data-testid": "notices", "aria-live": "polite" });
    this.shell = h("div", { class: "shell" }, sidebar, this.chat, this.notices);
    replace(this.root, this.shell);
    this.shownConv = null;
  }

  private renderStatus(): void {
    const label = {
      connected: "online",
      connecting: "connecting…",
      disconnected: "offline — reconnecting…",
      stopped: "stopped",
    }[this.app.connectionShown];
    this.status!.textContent = label;
    this.status!.dataset.state = this.app.connectionShown;
  }

  private showNewChat(): void {
    const input = h("input", {
      placeholder: "username",
      required: true,
      autocapitalize: "none",
      spellcheck: "false",
      "data-testid": "new-chat-username",
    });
    const error = h("p", { class: "error", role: "alert", "data-testid": "new-chat-error" });
    const form = h(
      "form",
      {
        class: "inline-form",
        onsubmit: (ev: Event) => {
          ev.preventDefault();
          error.textContent = "";
          this.app
            .startDirect(input.value)
            .then((id) => {
              replace(this.panel!);
              this.go(id);
              this.input?.focus();
            })
            .catch((e: Error) => (error.textContent = e.message));
        },
      },
      h("label", {}, "Chat with", input),
      error,
      h(
        "div",
        { class: "row" },
        h("button", { type: "button", class: "link", onclick: () => replace(this.panel!) }, "Cancel"),
        h("button", { type: "submit", class: "primary", "data-testid": "new-chat-submit" }, "Start"),
      ),
    );
    replace(this.panel!, form);
    input.focus();
  }

  private showNewGroup(): void {
    const name = h("input", { placeholder: "group name", required: true, "data-testid": "group-name" });
    const members = h("input", {
      placeholder: "alice, bob",
      autocapitalize: "none",
      spellcheck: "false",
      "data-testid": "group-members",
    });
    const error = h("p", { class: "error", role: "alert", "data-testid": "group-error" });
    const form = h(
      "form",
      {
        class: "inline-form",
        onsubmit: (ev: Event) => {
          ev.preventDefault();
          error.textContent = "";
          const list = members.value
            .split(/[\s,]+/)
            .map((x) => x.trim())
            .filter(Boolean);
          this.app
            .createGroup(name.value, list)
            .then((id) => {
              replace(this.panel!);
              this.go(id);
              this.input?.focus();
            })
            .catch((e: Error) => (error.textContent = e.message));
        },
      },
      h("label", {}, "Group name", name),
      h("label", {}, "Members (usernames)", members),
      error,
      h(
        "div",
        { class: "row" },
        h("button", { type: "button", class: "link", onclick: () => replace(this.panel!) }, "Cancel"),
        h("button", { type: "submit", class: "primary", "data-testid": "group-submit" }, "Create"),
      ),
    );
    replace(this.panel!, form);
    name.focus();
  }

  // ------------------------------------------------------------ list

  private renderList(s: M.State): void {
    const now = Date.now();
    const items = M.sortedConversations(s).map((c) => {
      const name = M.title(s, c);
      const unread = M.unreadCount(c);
      const typing = M.typingIn(s, c.id, now);
      const online = !c.group && s.presence.get(c.peer)?.state === "online";
      const last = c.last;
      const preview = typing.length
        ? h("em", { class: "typing" }, "typing…")
        : last
          ? [
              c.group || (s.me && last.senderId === s.me.userId)
                ? h("span", { class: "from" }, s.me && last.senderId === s.me.userId ? "You: " : `${last.sender}: `)
                : null,
              last.recalled ? h("em", {}, "message recalled") : last.text,
            ]
          : h("em", {}, c.group ? "no messages yet" : "");
      return h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            class: `conv${c.id === s.openId ? " active" : ""}${unread ? " unread" : ""}`,
            "data-testid": "conv-item",
            "data-conv-id": c.id,
            "data-title": name,
            "data-unread": unread,
            onclick: () => this.go(c.id),
          },
          h(
            "span",
            { class: "avatar-wrap" },
            avatar(name, !!c.group),
            online ? h("span", { class: "dot", "data-testid": "conv-online", title: "online" }) : null,
          ),
          h(
            "span",
            { class: "conv-main" },
            h(
              "span",
              { class: "conv-top" },
              h("span", { class: "conv-title", "data-testid": "conv-title" }, name),
              last ? h("time", {}, clock(last.sentAtMs)) : null,
            ),
            h(
              "span",
              { class: "conv-bottom" },
              h("span", { class: "conv-last", "data-testid": "conv-last" }, preview),
              unread ? h("span", { class: "badge", "data-testid": "conv-unread" }, String(unread)) : null,
            ),
          ),
        ),
      );
    });
    replace(
      this.list!,
      items.length ? items : h("li", { class: "empty" }, "No conversations yet. Start one with New chat."),
    );
  }

  // ------------------------------------------------------------ conversation

  private stickToBottom = true;

  private renderChat(s: M.State): void {
    const c = s.openId ? s.conversations.get(s.openId) : undefined;
    this.shell!.classList.toggle("has-open", !!c);
    if (!c) {
      this.chat!.removeAttribute("data-testid");
      delete this.chat!.dataset.convId;
      if (this.shownConv !== null || !this.chat!.firstChild) {
        replace(
          this.chat!,
          h("div", { class: "placeholder" }, logo(56), h("p", {}, "Pick a conversation or start a new one.")),
        );
        this.shownConv = null;
      }
      return;
    }
    if (this.shownConv !== c.id) {
      replace(this.chat!, this.header!, this.messages!, this.composer!);
      this.input!.value = this.drafts.get(c.id) ?? "";
      this.stickToBottom = true;
      this.shownConv = c.id;
      if (matchMedia("(min-width: 700px)").matches) this.input!.focus();
    }
    this.chat!.dataset.convId = c.id;
    this.chat!.setAttribute("data-testid", "conv-view");
    this.renderHeader(s, c);
    this.renderMessages(s, c);
    const canPost = !c.group || (c.group.isMember && !c.group.dissolved);
    this.input!.disabled = !canPost;
    this.input!.placeholder = canPost
      ? "Write a message"
      : c.group?.dissolved
        ? "This group was dissolved"
        : "You are no longer a member";
  }

  private renderHeader(s: M.State, c: M.Conversation): void {
    const now = Date.now();
    const typing = M.typingIn(s, c.id, now);
    let sub: HTMLElement;
    if (typing.length) {
      const who = c.group ? `${typing.join(", ")} ${typing.length > 1 ? "are" : "is"} typing…` : "typing…";
      sub = h("span", { class: "typing", "data-testid": "typing-indicator" }, who);
    } else if (c.group) {
      sub = h("span", { "data-testid": "conv-members" }, `${c.group.memberCount} members`);
    } else {
      const p = s.presence.get(c.peer);
      const self = s.me && c.peerId === s.me.userId;
      const text = self
        ? "notes to self"
        : p?.state === "online"
          ? "online"
          : p?.state === "offline"
            ? lastSeen(p.lastSeenMs, now)
            : "";
      sub = h("span", { "data-testid": "presence", "data-state": self ? "self" : (p?.state ?? "unknown") }, text);
    }
    const name = M.title(s, c);
    replace(
      this.header!,
      h("button", { type: "button", class: "back link", "aria-label": "Back", onclick: () => this.go(null) }, "‹"),
      avatar(name, !!c.group),
      h("div", { class: "who" }, h("strong", { "data-testid": "conv-header-title" }, name), sub),
    );
  }

  private async loadOlder(): Promise<void> {
    const id = this.app.state.openId;
    if (!id || this.loadingOlder) return;
    const c = this.app.state.conversations.get(id);
    if (!c?.hasOlder) return;
    this.loadingOlder = true;
    const el = this.messages!;
    const before = el.scrollHeight - el.scrollTop;
    try {
      await this.app.loadOlder(id);
      this.render();
      // Keep the messages that were on screen where they were.
      el.scrollTop = el.scrollHeight - before;
    } catch {
      // offline: try again on the next scroll
    } finally {
      this.loadingOlder = false;
    }
  }

  private renderMessages(s: M.State, c: M.Conversation): void {
    const el = this.messages!;
    const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 60;
    const { msgs, pending } = M.timeline(s, c);
    const me = s.me?.userId;
    const rows: Node[] = [];
    if (c.hasOlder) {
      rows.push(
        h(
          "button",
          { type: "button", class: "older link", "data-testid": "load-older", onclick: () => void this.loadOlder() },
          "Load older messages",
        ),
      );
    } else if (c.historyLoaded) {
      rows.push(h("p", { class: "start", "data-testid": "history-start" }, "This is the beginning of the conversation."));
    }
    let prevDay = "";
    for (const m of msgs) {
      const day = new Date(m.sentAtMs).toDateString();
      if (day !== prevDay) {
        rows.push(h("p", { class: "day" }, new Date(m.sentAtMs).toLocaleDateString()));
        prevDay = day;
      }
      const mine = m.senderId === me;
      const st = mine ? M.messageStatus(s, c, m) : undefined;
      rows.push(
        h(
          "div",
          {
            class: `msg ${mine ? "mine" : "theirs"}${m.recalled ? " recalled" : ""}`,
            "data-testid": "message",
            "data-seq": m.convSeq,
            "data-mine": mine ? "true" : "false",
            "data-status": st?.status,
          },
          c.group && !mine ? h("span", { class: "sender", "data-testid": "message-sender" }, m.sender) : null,
          h("span", { class: "text", "data-testid": "message-text" }, m.recalled ? "message recalled" : m.text),
          h(
            "span",
            { class: "meta" },
            m.editedAtMs ? "edited · " : "",
            h("time", { datetime: new Date(m.sentAtMs).toISOString() }, clock(m.sentAtMs)),
            st
              ? h(
                  "span",
                  { class: `mark ${st.status}`, "data-testid": "message-status", title: st.detail },
                  STATUS_MARK[st.status],
                )
              : null,
          ),
        ),
      );
    }
    for (const p of pending) {
      const status: M.Status = p.error ? "failed" : "sending";
      rows.push(
        h(
          "div",
          { class: `msg mine pending${p.error ? " failed" : ""}`, "data-testid": "message", "data-mine": "true", "data-status": status },
          h("span", { class: "text", "data-testid": "message-text" }, p.text),
          h(
            "span",
            { class: "meta" },
            p.error
              ? h(
                  "button",
                  { type: "button", class: "link", title: p.error, onclick: () => this.app.dismissFailed(p.clientMsgId) },
                  `not sent: ${p.error} — dismiss`,
                )
              : h("span", {}, "sending"),
            h("span", { class: `mark ${status}`, "data-testid": "message-status" }, STATUS_MARK[status]),
          ),
        ),
      );
    }
    replace(el, ...rows);
    if (atBottom || this.stickToBottom) {
      el.scrollTop = el.scrollHeight;
      this.stickToBottom = false;
    }
  }

  // ------------------------------------------------------------ notices

  private renderNotices(s: M.State): void {
    replace(
      this.notices!,
      s.notices.map((x) =>
        h(
          "button",
          {
            type: "button",
            class: "notice",
            "data-testid": "notice",
            "data-conv-id": x.convId,
            onclick: () => {
              this.app.dismissNotice(x.id);
              this.go(x.convId);
            },
          },
          h("strong", {}, x.title),
          h("span", {}, x.text),
        ),
      ),
    );
  }
}
