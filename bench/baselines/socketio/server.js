// The Socket.IO baseline: what a Node team would pick instead of the product.
//
// Socket.IO 4 with @socket.io/redis-adapter (every broadcast also goes out on Redis,
// so that other processes' sockets get it), serving the room shape chat-loadtest
// drives: events named after docs/protocol.md's frame types, each carrying that frame
// ("subscribe" -> join the room and answer "subscribed"; "publish" -> one broadcast of
// "message" to the room and an "ack" to the publisher). The per-room seq is a Redis
// INCR, as the floor takes it, because that is what two processes behind the adapter
// would need to agree on; no database, no auth.
//
//     REDIS_URL=redis://127.0.0.1:6380/0 node server.js --host 127.0.0.1 --port 8302
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at > 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

async function main() {
  const host = option("host", "127.0.0.1");
  const port = Number(option("port", "8302"));
  const url = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";
  const pubClient = createClient({ url });
  const subClient = pubClient.duplicate();
  const seqs = pubClient.duplicate(); // INCR and GET, off the adapter's own connections
  for (const client of [pubClient, subClient, seqs]) {
    client.on("error", (error) => console.error("redis:", error.message));
  }
  await Promise.all([pubClient.connect(), subClient.connect(), seqs.connect()]);

  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    adapter: createAdapter(pubClient, subClient),
    // chat-loadtest opens websockets directly (no long-polling first), like the product's
    // clients; no compression and 64 KiB frames at most, as the product is served.
    transports: ["websocket"],
    perMessageDeflate: false,
    maxHttpBufferSize: 65536,
    serveClient: false,
  });

  io.on("connection", (socket) => {
    socket.on("subscribe", async (frame) => {
      const room = String(frame.room);
      socket.join(room);
      const lastSeq = Number((await seqs.get(`seq:${room}`)) || 0);
      socket.emit("subscribed", { type: "subscribed", ref: frame.ref, room, last_seq: lastSeq });
    });
    socket.on("publish", async (frame) => {
      const room = String(frame.room);
      // node-redis answers one connection's commands in order, and both emits below run
      // in the same tick as that answer, so broadcasts leave in seq order.
      const seq = await seqs.incr(`seq:${room}`);
      io.to(room).emit("message", {
        type: "message",
        room,
        seq,
        sender: "load",
        body: frame.body,
        client_msg_id: frame.client_msg_id,
        ts: new Date().toISOString(),
      });
      socket.emit("ack", {
        type: "ack",
        ref: frame.ref,
        room,
        seq,
        client_msg_id: frame.client_msg_id,
      });
    });
    socket.on("ping", (frame) => socket.emit("pong", { type: "pong", ref: frame.ref }));
  });

  // The same listen backlog as uvicorn and the ceiling (2048).
  httpServer.listen({ host, port, backlog: 2048 });
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
