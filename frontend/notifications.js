// The bell: the unread count, the list, and a toast for each new notification. Live
// notifications arrive on every socket; after a reconnect `subscribe_notifications` with
// `since` fills in the missed ones. If the server has no notifications yet (an older
// deployment answers 404 for /api/notifications) the bell stays quiet.

import { api } from "./api.js";
import { byId, el, setBadge } from "./dom.js";

const TOAST_MS = 6000;

export function describe(notification) {
  const p = notification.payload || {};
  if (notification.kind === "mention") {
    return `${p.sender || "Someone"} mentioned you in #${p.room || "?"}: ${p.excerpt || ""}`;
  }
  return p.text || p.title || p.message || notification.kind;
}

export class Notifications {
  constructor(connection) {
    this.connection = connection;
    this.available = false;
    this.bySeq = new Map();
    this.lastSeq = 0;
    this.unread = 0;
    this.button = byId("bell");
    this.panel = byId("notifications");
    this.list = byId("notifications-list");
    this.count = byId("bell-count");
    this.button.addEventListener("click", () => this.toggle());
    connection.on("notification", (frame) => this.received(frame, true));
    connection.on("notifications_read", (frame) => this.setUnread(frame.unread));
    connection.on("notifications_subscribed", (frame) => {
      if (typeof frame.last_seq === "number" && frame.last_seq > this.lastSeq) this.lastSeq = frame.last_seq;
    });
    connection.onOpen(() => {
      // Resume after a drop; a server without the feature answers `error`, which is ignored.
      if (this.available) this.connection.request({ type: "subscribe_notifications", since: this.lastSeq }).catch(() => {});
    });
  }

  async start(unread) {
    try {
      const page = await api("GET", "/api/notifications?after=0&limit=50");
      this.available = true;
      // The newest 50 are enough for the list: page forward to them.
      let current = page;
      for (const n of current.notifications) this.received(n, false);
      while (current.has_more) {
        current = await api("GET", `/api/notifications?after=${this.lastSeq}&limit=200`);
        for (const n of current.notifications) this.received(n, false);
      }
    } catch {
      this.available = false;
    }
    this.setUnread(typeof unread === "number" ? unread : 0);
    if (this.available && this.connection.connected) {
      this.connection.request({ type: "subscribe_notifications", since: this.lastSeq }).catch(() => {});
    }
  }

  received(notification, live) {
    if (this.bySeq.has(notification.seq)) return;
    this.bySeq.set(notification.seq, notification);
    if (notification.seq > this.lastSeq) this.lastSeq = notification.seq;
    byId("notifications-empty").hidden = true;
    this.list.prepend(el("li", { "data-seq": notification.seq }, el("p", { text: describe(notification) })));
    while (this.list.children.length > 50) this.list.lastElementChild.remove();
    if (live) {
      this.setUnread(this.unread + 1);
      toast(describe(notification));
    }
  }

  setUnread(count) {
    this.unread = Math.max(0, count);
    setBadge(this.count, this.unread);
    byId("bell-label").textContent = this.unread ? `Notifications (${this.unread} unread)` : "Notifications";
  }

  toggle() {
    const open = this.panel.hidden;
    this.panel.hidden = !open;
    this.button.setAttribute("aria-expanded", String(open));
    if (open && this.unread && this.lastSeq) {
      api("POST", "/api/notifications/read", { up_to: this.lastSeq }).then(
        (answer) => this.setUnread(answer.unread),
        () => {},
      );
    }
  }
}

export function toast(text) {
  const item = el("p", { class: "toast", text });
  byId("toasts").append(item);
  setTimeout(() => item.remove(), TOAST_MS);
}
