// The one websocket (/ws/, docs/protocol.md): reconnects with exponential backoff and jitter,
// resubscribes every followed room with `since` = the last seq the page holds, and sends
// again every publish that was not acked, with the same client_msg_id (the server stores a
// retried publish once and acks it with the same seq). States: connecting, connected,
// reconnecting (with the time of the next try), offline (the browser says it has no network).

const BASE_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;
const ACK_TIMEOUT_MS = 10000; // a publish not acked by then is sent again
const PING_EVERY_MS = 25000; // a silent dead connection is noticed within PING + PONG
const PONG_TIMEOUT_MS = 10000;
const CLOSE_SESSION_ENDED = 4001;

/** Delay before reconnect attempt n (0-based): half fixed, half random ("equal jitter"). */
export function backoff(attempt, random = Math.random) {
  const ceiling = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** attempt);
  return ceiling / 2 + (random() * ceiling) / 2;
}

export function socketUrl(location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/`;
}

export class Connection {
  constructor(url) {
    this.url = url;
    this.socket = null;
    this.state = "connecting";
    this.retryAt = 0;
    this.attempt = 0;
    this.nextRef = 1;
    this.rooms = new Map(); // slug -> () => the seq to resume after (a number)
    this.unacked = new Map(); // client_msg_id -> {frame, sentAt, socket}
    this.replies = new Map(); // ref -> {resolve, reject}
    this.handlers = new Map(); // frame type -> [fn]
    this.stateListeners = [];
    this.openListeners = [];
    this.timers = {};
    window.addEventListener("online", () => this.reconnectNow());
    window.addEventListener("offline", () => {
      this.setState("offline");
      if (this.socket) this.socket.close();
    });
  }

  /** Call fn(frame) for every frame of this type that is not a reply to a request. */
  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(fn);
  }

  onState(fn) {
    this.stateListeners.push(fn);
  }

  /** Called after every (re)connect, once the rooms are resubscribed. */
  onOpen(fn) {
    this.openListeners.push(fn);
  }

  start() {
    this.open();
    this.timers.ackCheck = setInterval(() => this.resendStale(), 1000);
  }

  setState(state) {
    this.state = state;
    for (const fn of this.stateListeners) fn(state, this.retryAt);
  }

  open() {
    clearTimeout(this.timers.retry);
    if (!navigator.onLine) {
      this.setState("offline");
      return;
    }
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.addEventListener("open", () => this.opened(socket));
    socket.addEventListener("message", (event) => this.received(event.data));
    socket.addEventListener("close", (event) => this.closed(socket, event.code));
  }

  opened(socket) {
    if (socket !== this.socket) return;
    this.attempt = 0;
    this.setState("connected");
    for (const slug of this.rooms.keys()) this.subscribe(slug);
    // In the order they were written: a retry keeps its client_msg_id, so it is stored once.
    for (const entry of this.unacked.values()) this.transmit(entry);
    this.timers.ping = setInterval(() => this.ping(socket), PING_EVERY_MS);
    for (const fn of this.openListeners) fn();
  }

  closed(socket, code) {
    if (socket !== this.socket) return;
    clearInterval(this.timers.ping);
    this.socket = null;
    for (const { reject } of this.replies.values()) reject(new Error("connection closed"));
    this.replies.clear();
    if (code === CLOSE_SESSION_ENDED) {
      // Logged out (here or in another tab): the login page, not a reconnect loop.
      window.location.assign("/accounts/login/");
      return;
    }
    if (!navigator.onLine) {
      this.setState("offline");
      return;
    }
    const delay = backoff(this.attempt);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.setState("reconnecting");
    this.timers.retry = setTimeout(() => this.open(), delay);
  }

  reconnectNow() {
    if (this.socket) return;
    this.attempt = 0;
    this.open();
  }

  get connected() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  send(frame) {
    if (!this.connected) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  /** Send a frame with a fresh ref; resolves with the reply carrying that ref. */
  request(frame) {
    const ref = String(this.nextRef++);
    return new Promise((resolve, reject) => {
      if (!this.send({ ...frame, ref })) {
        reject(new Error("not connected"));
        return;
      }
      this.replies.set(ref, { resolve, reject });
    });
  }

  received(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    const waiting = frame.ref !== undefined ? this.replies.get(frame.ref) : undefined;
    if (waiting) {
      this.replies.delete(frame.ref);
      waiting.resolve(frame);
    }
    if (frame.type === "ack" || (frame.type === "error" && frame.client_msg_id)) {
      this.unacked.delete(frame.client_msg_id);
    }
    // Unknown types are ignored: the server may be newer than this page.
    for (const fn of this.handlers.get(frame.type) || []) fn(frame);
  }

  /** Follow a room from now on and after every reconnect; `since` says where to resume. */
  follow(slug, since) {
    this.rooms.set(slug, since);
    if (this.connected) this.subscribe(slug);
  }

  unfollow(slug) {
    this.rooms.delete(slug);
  }

  subscribe(slug) {
    const since = this.rooms.get(slug)();
    const frame = { type: "subscribe", room: slug, since };
    this.request(frame).then(
      (reply) => {
        if (reply.type === "error") for (const fn of this.handlers.get("subscribe_failed") || []) fn(slug, reply);
      },
      () => {}, // the connection dropped: the reconnect subscribes again
    );
  }

  /** Send a message until it is acked, across reconnects, always with the same client_msg_id. */
  publish(slug, body, clientMsgId) {
    const entry = { frame: { type: "publish", room: slug, body, client_msg_id: clientMsgId }, sentAt: 0, socket: null };
    this.unacked.set(clientMsgId, entry);
    this.transmit(entry);
  }

  transmit(entry) {
    const ref = String(this.nextRef++);
    entry.sentAt = Date.now();
    entry.socket = this.socket;
    const frame = { ...entry.frame, ref };
    if (!this.send(frame)) return;
    const id = entry.frame.client_msg_id;
    this.replies.set(ref, {
      resolve: (reply) => {
        if (reply.type !== "error") return;
        if (reply.code === "unavailable" || reply.code === "rate_limited") {
          entry.sentAt = Date.now() - ACK_TIMEOUT_MS + 1000; // try again in about a second
          return;
        }
        // Refused for good (too large, forbidden...): no retry.
        this.unacked.delete(id);
        for (const fn of this.handlers.get("publish_failed") || []) fn(entry.frame, reply);
      },
      reject: () => {},
    });
  }

  resendStale() {
    if (!this.connected) return;
    const now = Date.now();
    for (const entry of this.unacked.values()) {
      if (entry.socket === this.socket && now - entry.sentAt >= ACK_TIMEOUT_MS) this.transmit(entry);
    }
  }

  ping(socket) {
    const timeout = setTimeout(() => socket.close(), PONG_TIMEOUT_MS);
    this.request({ type: "ping" }).then(
      () => clearTimeout(timeout),
      () => clearTimeout(timeout),
    );
  }
}
