// The room list (the navigation landmark "Rooms"): your rooms with unread badges, public
// rooms you can join, and the form to create one.

import { api } from "./api.js";
import { byId, el } from "./dom.js";

export class RoomList {
  constructor(onOpen) {
    this.onOpen = onOpen; // (slug) => void
    this.rooms = new Map(); // slug -> {slug, title, private, last_seq, member, unread}
    this.current = null;
    this.mine = byId("my-rooms");
    this.others = byId("public-rooms");
  }

  async load() {
    const { rooms } = await api("GET", "/api/rooms");
    for (const room of rooms) this.rooms.set(room.slug, room);
    this.render();
    return rooms;
  }

  get(slug) {
    return this.rooms.get(slug);
  }

  upsert(room) {
    this.rooms.set(room.slug, { ...(this.rooms.get(room.slug) || { unread: 0 }), ...room });
    this.render();
  }

  remove(slug) {
    this.rooms.delete(slug);
    this.render();
  }

  setUnread(slug, count) {
    const room = this.rooms.get(slug);
    if (!room || room.unread === count) return;
    room.unread = count;
    this.render();
  }

  setCurrent(slug) {
    this.current = slug;
    this.render();
  }

  render() {
    // The links are rebuilt; a keyboard user's focus on one of them moves to its new self.
    const active = document.activeElement;
    const focused = active && (this.mine.contains(active) || this.others.contains(active)) ? active.dataset.room : null;
    const sorted = [...this.rooms.values()].sort((a, b) => a.slug.localeCompare(b.slug));
    this.mine.replaceChildren(...sorted.filter((r) => r.member).map((r) => this.item(r)));
    const others = sorted.filter((r) => !r.member);
    this.others.replaceChildren(...(others.length ? others.map((r) => this.item(r)) : [el("li", { class: "none", text: "None" })]));
    if (focused) [...this.mine.querySelectorAll("a"), ...this.others.querySelectorAll("a")].find((a) => a.dataset.room === focused)?.focus();
  }

  item(room) {
    const label = [room.title || room.slug];
    const link = el(
      "a",
      {
        href: `#${encodeURIComponent(room.slug)}`,
        "data-room": room.slug,
        "aria-current": room.slug === this.current ? "page" : null,
      },
      el("span", { class: "room-name", text: label[0] }),
      room.private ? el("span", { class: "tag", text: "private" }) : null,
      !room.member ? el("span", { class: "tag", text: "join" }) : null,
    );
    if (room.unread > 0 && room.slug !== this.current) {
      link.append(el("span", { class: "badge", "data-unread": room.unread, text: room.unread }, el("span", { class: "visually-hidden", text: " unread" })));
    }
    link.addEventListener("click", (event) => {
      event.preventDefault();
      this.onOpen(room.slug);
    });
    return el("li", {}, link);
  }
}

/** The "New room" form: POST /api/rooms, then open it. */
export function wireCreateRoom(rooms, onCreated) {
  const form = byId("create-room");
  const error = byId("create-room-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const slug = byId("new-room-slug").value.trim();
    const title = byId("new-room-title-input").value.trim() || slug;
    const isPrivate = byId("new-room-private").checked;
    try {
      const room = await api("POST", "/api/rooms", { slug, title, private: isPrivate });
      rooms.upsert({ ...room, member: true, owner: true, unread: 0 });
      form.reset();
      onCreated(room.slug);
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
    }
  });
}

/** "Add a member" for a private room: POST /api/rooms/<slug>/members (owner only). */
export function wireAddMember(currentRoom) {
  const form = byId("add-member");
  const result = byId("add-member-result");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = byId("member-name");
    const username = input.value.trim();
    try {
      await api("POST", `/api/rooms/${encodeURIComponent(currentRoom())}/members`, { username });
      result.textContent = `${username} was added.`;
      input.value = "";
    } catch (failure) {
      result.textContent = failure.message;
    }
  });
}
