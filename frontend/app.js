// The chat page: wires the room list, the message view, the socket and the bell together.
// How the pieces behave (connection states, resume, dedupe, CSP) is in docs/frontend.md.

import { api } from "./api.js";
import { Connection, socketUrl } from "./connection.js";
import { byId, el, setText } from "./dom.js";
import { MessageView, RoomStore } from "./messages.js";
import { Notifications } from "./notifications.js";
import { RoomList, wireAddMember, wireCreateRoom } from "./rooms.js";

const HISTORY_PAGE = 50;
const TYPING_SEND_EVERY_MS = 3000; // the server allows a few per second; one every 3 s is plenty
const TYPING_SHOW_MS = 5000;
const READ_DELAY_MS = 300;
const LAST_ROOM_KEY = "chat:last-room";

const me = byId("me").textContent;
const connection = new Connection(socketUrl(window.location));
const stores = new Map(); // slug -> RoomStore
const view = new MessageView(byId("log"), byId("messages"));
const rooms = new RoomList(openRoom);
const notifications = new Notifications(connection);
const presence = new Map(); // slug -> Set of usernames online
const typists = new Map(); // slug -> Map username -> timer
const readSent = new Map(); // slug -> the last read seq sent
let current = null;
let loadingOlder = false;
let typingSentAt = 0;
let readTimer = null;

function store(slug) {
  if (!stores.has(slug)) stores.set(slug, new RoomStore(slug));
  return stores.get(slug);
}

function follow(slug) {
  // On every (re)connect the room resumes after the newest seq this page holds.
  if (!connection.rooms.has(slug)) connection.follow(slug, () => store(slug).lastSeq);
}

// Opening a room

async function openRoom(slug) {
  if (!rooms.get(slug)) slug = rooms.get("general") ? "general" : [...rooms.rooms.keys()][0];
  if (!slug) return;
  current = slug;
  localStorage.setItem(LAST_ROOM_KEY, slug);
  window.history.replaceState(null, "", `#${encodeURIComponent(slug)}`);
  const room = rooms.get(slug);
  rooms.setCurrent(slug);
  setText(byId("room-title"), room.title || slug);
  byId("room-title").dataset.room = slug;
  document.title = `${room.title || slug} · chat`;
  byId("members").hidden = !(room.private && room.owner); // adding members: owner only
  closeSidebar();
  renderPresence();
  renderTyping();
  const held = store(slug);
  view.show(held);
  if (!held.loaded) {
    const page = await api("GET", `/api/rooms/${encodeURIComponent(slug)}/messages?limit=${HISTORY_PAGE}`);
    for (const message of page.messages) held.add(message);
    held.loaded = true;
    held.hasOlder = page.has_more;
    if (current === slug) view.show(held);
  }
  follow(slug);
  noteSeen();
  if (current === slug) fillScreen();
}

/** Load older pages until the log can scroll (so scrolling up can ask for more). */
async function fillScreen() {
  const log = byId("log");
  while (current && store(current).hasOlder && log.scrollHeight <= log.clientHeight && (await loadOlder())) {
    // each round adds a page above
  }
}

async function loadOlder() {
  const slug = current;
  const held = store(slug);
  if (loadingOlder || !held.loaded || !held.hasOlder || held.oldestSeq === null) return false;
  loadingOlder = true;
  const status = byId("history-status");
  status.hidden = false;
  setText(status, "Loading older messages…");
  try {
    const page = await api("GET", `/api/rooms/${encodeURIComponent(slug)}/messages?before=${held.oldestSeq}&limit=${HISTORY_PAGE}`);
    held.hasOlder = page.has_more;
    const fresh = page.messages.filter((m) => held.add(m));
    if (current === slug) view.prependOlder(fresh);
    status.hidden = true;
    return fresh.length > 0;
  } catch (failure) {
    setText(status, `Could not load older messages: ${failure.message}`);
    return false;
  } finally {
    loadingOlder = false;
  }
}

// Reading

function noteSeen() {
  if (!current || document.visibilityState !== "visible" || !view.nearEnd()) return;
  rooms.setUnread(current, 0);
  clearTimeout(readTimer);
  readTimer = setTimeout(sendRead, READ_DELAY_MS, current);
}

async function sendRead(slug) {
  const seq = store(slug).lastSeq;
  if (!seq || (readSent.get(slug) || 0) >= seq) return;
  readSent.set(slug, seq);
  try {
    // Reading a public room makes you a member (the server keeps your read position).
    await api("POST", `/api/rooms/${encodeURIComponent(slug)}/read`, { seq });
    if (!rooms.get(slug)?.member) rooms.upsert({ slug, member: true });
  } catch {
    readSent.delete(slug); // sent again when the next message is seen
  }
}

// Frames from the server

connection.on("message", (message) => {
  const held = store(message.room);
  if (message.sender === me) held.pending.delete(message.client_msg_id);
  if (!held.add(message)) return; // a seq already shown: never twice
  if (message.room === current) {
    view.insert(message);
    clearTypist(message.room, message.sender);
    noteSeen();
  } else if (message.sender !== me) {
    rooms.setUnread(message.room, (rooms.get(message.room)?.unread || 0) + 1);
  }
});

connection.on("ack", (ack) => {
  const held = store(ack.room);
  const pending = held.pending.get(ack.client_msg_id);
  if (!pending) return; // the message itself came first
  held.pending.delete(ack.client_msg_id);
  const message = { type: "message", room: ack.room, seq: ack.seq, sender: me, body: pending.body, client_msg_id: ack.client_msg_id, ts: new Date().toISOString() };
  if (held.add(message) && ack.room === current) view.insert(message);
});

connection.on("publish_failed", (frame, error) => {
  const held = store(frame.room);
  const pending = held.pending.get(frame.client_msg_id);
  if (pending) pending.failed = true;
  if (frame.room === current) view.markFailed(frame.client_msg_id);
  setText(byId("typing"), `Not sent: ${error.message}`);
});

connection.on("resync", (frame) => connection.subscribe(frame.room));

connection.on("unsubscribed", (frame) => {
  if (frame.reason !== "removed") return;
  connection.unfollow(frame.room);
  rooms.remove(frame.room);
  if (frame.room === current) openRoom("general");
});

connection.on("subscribe_failed", (slug) => {
  connection.unfollow(slug);
  if (slug === current) setText(byId("typing"), `You cannot read #${slug}.`);
});

connection.on("unread", (frame) => {
  // Another tab (or device) read, or the server counted for us.
  if (frame.room === current && document.visibilityState === "visible" && view.nearEnd()) return;
  rooms.setUnread(frame.room, frame.count);
});

connection.on("presence", (frame) => {
  let online = presence.get(frame.room);
  if (Array.isArray(frame.online) || !online) {
    online = new Set(frame.online || []);
    presence.set(frame.room, online);
  }
  for (const name of frame.joined || []) online.add(name);
  for (const name of frame.left || []) online.delete(name);
  if (frame.room === current) renderPresence();
});

connection.on("typing", (frame) => {
  if (frame.user === me) return;
  if (!typists.has(frame.room)) typists.set(frame.room, new Map());
  const room = typists.get(frame.room);
  clearTimeout(room.get(frame.user));
  room.set(frame.user, setTimeout(() => clearTypist(frame.room, frame.user), TYPING_SHOW_MS));
  if (frame.room === current) renderTyping();
});

function clearTypist(slug, user) {
  const room = typists.get(slug);
  if (!room || !room.has(user)) return;
  clearTimeout(room.get(user));
  room.delete(user);
  if (slug === current) renderTyping();
}

function renderPresence() {
  const online = [...(presence.get(current) || [])].sort();
  byId("presence").replaceChildren(...online.map((name) => el("li", { class: "online", text: name })));
}

function renderTyping() {
  const names = [...(typists.get(current)?.keys() || [])].sort();
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length > 1) text = `${names.join(", ")} are typing…`;
  setText(byId("typing"), text);
}

// The connection state, always on screen (role="status")

function renderState() {
  const node = byId("connection");
  const state = connection.state;
  node.dataset.state = state;
  const wait = Math.ceil((connection.retryAt - Date.now()) / 1000);
  const word = { connected: "connected", reconnecting: "reconnecting", offline: "offline" }[state] || "connecting";
  // The countdown is for the eye: screen readers hear the state word change, not every second.
  const detail = state === "reconnecting" && wait > 0 ? ` in ${wait} s` : state === "connecting" || state === "reconnecting" ? "…" : "";
  node.replaceChildren(el("span", { text: word }), el("span", { "aria-hidden": "true", text: detail }));
}

// Writing

function newClientMsgId() {
  // crypto.randomUUID needs a secure context; getRandomValues works on plain http too.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function send() {
  const box = byId("message");
  const body = box.value;
  if (!current || !body.trim()) return;
  const id = newClientMsgId();
  const pending = { body, sender: me, failed: false };
  store(current).pending.set(id, pending);
  view.addPending(id, pending);
  connection.publish(current, body, id);
  box.value = "";
  typingSentAt = 0;
}

function wireComposer() {
  const box = byId("message");
  byId("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  box.addEventListener("input", () => {
    const now = Date.now();
    if (current && box.value && now - typingSentAt > TYPING_SEND_EVERY_MS) {
      typingSentAt = now;
      connection.send({ type: "typing", room: current });
    }
  });
}

function closeSidebar() {
  byId("sidebar").classList.remove("open");
  byId("nav-toggle").setAttribute("aria-expanded", "false");
}

function wireLayout() {
  const toggle = byId("nav-toggle");
  toggle.addEventListener("click", () => {
    const open = byId("sidebar").classList.toggle("open");
    toggle.setAttribute("aria-expanded", String(open));
  });
  byId("log").addEventListener("scroll", () => {
    if (byId("log").scrollTop < 120) loadOlder();
    noteSeen();
  });
  document.addEventListener("visibilitychange", noteSeen);
  window.addEventListener("hashchange", () => {
    const slug = decodeURIComponent(window.location.hash.slice(1));
    if (slug && slug !== current) openRoom(slug);
  });
}

async function main() {
  connection.onState(renderState);
  setInterval(() => connection.state === "reconnecting" && renderState(), 1000);
  wireComposer();
  wireLayout();
  wireCreateRoom(rooms, openRoom);
  wireAddMember(() => current);
  connection.start();
  const [profile] = await Promise.all([api("GET", "/api/me"), rooms.load()]);
  for (const room of rooms.rooms.values()) {
    if (!room.member) continue;
    // Followed for the badges: live from the newest seq the list reported.
    store(room.slug).lastSeq = room.last_seq;
    follow(room.slug);
  }
  notifications.start(profile.notifications_unread);
  const wanted = decodeURIComponent(window.location.hash.slice(1)) || localStorage.getItem(LAST_ROOM_KEY) || "general";
  await openRoom(wanted);
}

main();
