// A room's messages as the page holds them: confirmed ones by seq (each seq once, whichever
// way it arrived -- history, backfill, live, or our own ack), and our own pending ones by
// client_msg_id until the server confirms them. The view keeps the list in seq order.

import { el } from "./dom.js";

export class RoomStore {
  constructor(slug) {
    this.slug = slug;
    this.bySeq = new Map();
    this.pending = new Map(); // client_msg_id -> {body, failed}
    this.lastSeq = 0; // the newest seq held: resume from here
    this.oldestSeq = null;
    this.hasOlder = true; // until a history page says otherwise
    this.loaded = false; // the newest page was fetched
  }

  /** Keep a confirmed message; false if that seq is already held. */
  add(message) {
    if (this.bySeq.has(message.seq)) return false;
    this.bySeq.set(message.seq, message);
    if (message.seq > this.lastSeq) this.lastSeq = message.seq;
    if (this.oldestSeq === null || message.seq < this.oldestSeq) this.oldestSeq = message.seq;
    return true;
  }

  sorted() {
    return [...this.bySeq.values()].sort((a, b) => a.seq - b.seq);
  }
}

function timeOf(ts) {
  const date = ts ? new Date(ts) : new Date();
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function messageItem(message, state) {
  const item = el(
    "li",
    { class: `message ${state}`, "data-state": state, "data-seq": message.seq ?? "", "data-client-msg-id": message.client_msg_id },
    el("span", { class: "sender", text: message.sender }),
    " ",
    el("time", { datetime: message.ts || "", text: timeOf(message.ts) }),
    el("p", { class: "body", text: message.body }),
  );
  if (state === "pending") item.append(el("span", { class: "note", text: "sending…" }));
  if (state === "failed") item.append(el("span", { class: "note", text: "not sent" }));
  return item;
}

/** The message list of the room on screen, kept in seq order with pending ones last. */
export class MessageView {
  constructor(log, list) {
    this.log = log; // the scrolling role="log" element
    this.list = list;
    this.store = null;
  }

  show(store) {
    this.store = store;
    const items = store.sorted().map((m) => messageItem(m, "confirmed"));
    for (const [id, p] of store.pending) items.push(messageItem({ client_msg_id: id, body: p.body, sender: p.sender }, p.failed ? "failed" : "pending"));
    this.list.replaceChildren(...items);
    this.scrollToEnd();
  }

  nearEnd() {
    return this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 80;
  }

  scrollToEnd() {
    this.log.scrollTop = this.log.scrollHeight;
  }

  /** Place a confirmed message (already added to the store); replaces its pending copy. */
  insert(message) {
    const stick = this.nearEnd();
    this.list.querySelector(`li[data-state="pending"][data-client-msg-id="${CSS.escape(message.client_msg_id)}"]`)?.remove();
    const item = messageItem(message, "confirmed");
    // Usually the newest: walk back from the end past pending items and newer seqs.
    let after = this.list.lastElementChild;
    while (after && (after.dataset.state !== "confirmed" || Number(after.dataset.seq) > message.seq)) {
      after = after.previousElementSibling;
    }
    if (after) after.after(item);
    else this.list.prepend(item);
    if (stick) this.scrollToEnd();
  }

  /** Older messages above the ones shown, keeping what the reader looks at in place. */
  prependOlder(messages) {
    const before = this.log.scrollHeight;
    const first = this.list.querySelector('li[data-state="confirmed"]');
    const items = messages.map((m) => messageItem(m, "confirmed"));
    if (first) first.before(...items);
    else this.list.prepend(...items);
    this.log.scrollTop += this.log.scrollHeight - before;
  }

  addPending(id, pending) {
    this.list.append(messageItem({ client_msg_id: id, body: pending.body, sender: pending.sender }, "pending"));
    this.scrollToEnd();
  }

  markFailed(id) {
    const item = this.list.querySelector(`li[data-client-msg-id="${CSS.escape(id)}"][data-state="pending"]`);
    if (!item) return;
    item.dataset.state = "failed";
    item.className = "message failed";
    item.querySelector(".note").textContent = "not sent";
  }
}
