"""The websocket server's tunables: flood control, timeouts, the fan-out, the drain, presence.

Part of the settings (project/settings.py imports every name), kept apart so each file stays
about one subject. Each comes from the environment, with the default given.
"""

from __future__ import annotations

from project.environment import env

# Flood control (realtime/limits.py). Load tests raise these on the server they target.
# Per-user limits are cluster-wide with REDIS_URL (shared through Redis); without it, and while
# Redis does not answer, each process keeps its own (K processes: up to K times as much).
PUBLISH_RATE = env.float("PUBLISH_RATE", default=10.0)  # per connection, per second
PUBLISH_BURST = env.float("PUBLISH_BURST", default=30.0)
# Per user. In Redis a sliding-window counter of USER_PUBLISH_BURST per ceil(burst / rate) s.
USER_PUBLISH_RATE = env.float("USER_PUBLISH_RATE", default=20.0)
USER_PUBLISH_BURST = env.float("USER_PUBLISH_BURST", default=60.0)
TYPING_RATE = env.float("TYPING_RATE", default=2.0)  # per connection; per user twice this
TYPING_BURST = env.float("TYPING_BURST", default=5.0)
# After RATE_STRIKES refusals (refilled at RATE_STRIKES_PER_SECOND) the socket is closed, 1008.
RATE_STRIKES = env.float("RATE_STRIKES", default=20.0)
RATE_STRIKES_PER_SECOND = env.float("RATE_STRIKES_PER_SECOND", default=1.0)
MAX_CONNECTIONS_PER_USER = env.int("MAX_CONNECTIONS_PER_USER", default=20)  # per user
# Websockets one process holds at most; past it a new one is closed with 1013 (try again later).
MAX_CONNECTIONS_PER_PROCESS = env.int("MAX_CONNECTIONS_PER_PROCESS", default=15000)
# With REDIS_URL each process re-announces its sockets every CONNECTION_REFRESH_SECONDS; those
# of a process that died stop counting CONNECTION_TTL_SECONDS after its last refresh.
CONNECTION_TTL_SECONDS = env.float("CONNECTION_TTL_SECONDS", default=60.0)
CONNECTION_REFRESH_SECONDS = env.float("CONNECTION_REFRESH_SECONDS", default=15.0)
# Each Redis call of the limits waits this long at most; after a failure, the per-process limits
# apply and Redis is tried again LIMITS_REDIS_RETRY_SECONDS later.
LIMITS_REDIS_TIMEOUT = env.float("LIMITS_REDIS_TIMEOUT", default=0.3)
LIMITS_REDIS_RETRY_SECONDS = env.float("LIMITS_REDIS_RETRY_SECONDS", default=1.0)
# A process takes this fraction of a user's burst from Redis at once and spends it without
# asking again, however long that takes (realtime/limits.py UserState): fewer round trips, at
# the cost of up to one lease per process more in a window. 0 asks Redis on every publish.
USER_BUDGET_LEASE = env.float("USER_BUDGET_LEASE", default=0.1)
# The longest a socket waits on one database call before answering `unavailable`.
DATABASE_DEADLINE_SECONDS = env.float("DATABASE_DEADLINE_SECONDS", default=10.0)
# A socket that cannot catch up within this many seconds is closed (4002); it resumes with since.
SLOW_CLIENT_SECONDS = env.float("SLOW_CLIENT_SECONDS", default=30.0)
# Sockets re-read their users and tokens this often: the bound for a deactivation, password
# change or revocation made behind Django's back (raw SQL); through Django it is at once.
AUTH_RECHECK_SECONDS = env.float("AUTH_RECHECK_SECONDS", default=30.0)
# A stored message or user event Redis did not take is published again this often until it
# is; at most REBROADCAST_MAX wait (older ones are then left to the database catch-up).
REBROADCAST_SECONDS = env.float("REBROADCAST_SECONDS", default=0.5)
REBROADCAST_MAX = env.int("REBROADCAST_MAX", default=10_000)
# Frames to a socket wait up to this long to go out in one write with the next ones (fewer
# system calls under load, that much more latency). 0: the end of the event loop's turn.
FANOUT_WRITE_DELAY_SECONDS = env.float("FANOUT_WRITE_DELAY_SECONDS", default=0.0)

# Python's garbage collector (realtime/garbage.py): what start-up made is frozen (never walked
# again), a young collection runs once 10,000 more objects are alive than at the last, and a
# full collection (a pause of the event loop) at most every GC_THRESHOLDS[2] collections of the
# middle generation. Python's own thresholds are 700,10,10.
GC_FREEZE = env.bool("GC_FREEZE", default=True)
GC_THRESHOLDS: list[int] = env.list("GC_THRESHOLDS", cast=int, default=[10_000, 10, 100])

# Redis clients (realtime/redis_clients.py): how long each kind of call may wait.
REDIS_CONNECT_TIMEOUT_SECONDS = env.float("REDIS_CONNECT_TIMEOUT_SECONDS", default=5.0)
# The pub/sub feed (realtime/pubsub_connection.py): PINGed when quiet for
# REDIS_HEALTH_CHECK_SECONDS, given up (reconnected, sockets catch up) after
# REDIS_FEED_TIMEOUT_SECONDS without a reply.
REDIS_FEED_TIMEOUT_SECONDS = env.float("REDIS_FEED_TIMEOUT_SECONDS", default=15.0)
REDIS_HEALTH_CHECK_SECONDS = env.int("REDIS_HEALTH_CHECK_SECONDS", default=10)
# A PUBLISH (then the broadcast is retried every REBROADCAST_SECONDS).
REDIS_PUBLISH_TIMEOUT_SECONDS = env.float("REDIS_PUBLISH_TIMEOUT_SECONDS", default=2.0)
# A socket joining a group waits this long for Redis to confirm the subscription.
FEED_JOIN_TIMEOUT_SECONDS = env.float("FEED_JOIN_TIMEOUT_SECONDS", default=5.0)
# After the feed is lost, reconnect attempts back off up to this.
FEED_RECONNECT_MAX_SECONDS = env.float("FEED_RECONNECT_MAX_SECONDS", default=5.0)
# Broadcasts that overtook each other are held this long (at most this many per room) for the
# ones before them, so each process restores seq order once instead of each socket catching up.
FANOUT_REORDER_SECONDS = env.float("FANOUT_REORDER_SECONDS", default=0.05)
FANOUT_REORDER_MAX = env.int("FANOUT_REORDER_MAX", default=1000)
# A socket with more than this queued for it is too slow (it catches up from the database, and
# is closed with 4002 after SLOW_CLIENT_SECONDS); the close frame's grace period after that.
SLOW_CLIENT_BUFFER_BYTES = env.int("SLOW_CLIENT_BUFFER_BYTES", default=512 * 1024)
SLOW_CLIENT_PENDING_SENDS = env.int("SLOW_CLIENT_PENDING_SENDS", default=256)
CLOSE_GRACE_SECONDS = env.float("CLOSE_GRACE_SECONDS", default=5.0)
# Rooms a socket remembers it was let into (those it used), so publishing is not a query each.
SOCKET_ROOMS_REMEMBERED = env.int("SOCKET_ROOMS_REMEMBERED", default=256)
# On SIGTERM the process drains (realtime/drain.py): not ready at once, new sockets refused,
# open ones closed with 1012 spread evenly over this many seconds, then it exits. Keep it well
# under Kubernetes' terminationGracePeriodSeconds (docs/operations.md).
DRAIN_SECONDS = env.float("DRAIN_SECONDS", default=20.0)

# Presence (realtime/presence.py). Each process re-scores its users in Redis every
# PRESENCE_HEARTBEAT_SECONDS (and sweeps its rooms' expired ones then); a process killed
# without a goodbye loses its users PRESENCE_TTL_SECONDS after its last heartbeat, seen by
# the next sweep and sent at the next flush: at most TTL + HEARTBEAT + FLUSH (25.5 s) after
# it died. Joins and leaves go out batched, one frame per room every PRESENCE_FLUSH_SECONDS.
PRESENCE_HEARTBEAT_SECONDS = env.float("PRESENCE_HEARTBEAT_SECONDS", default=5.0)
PRESENCE_TTL_SECONDS = env.float("PRESENCE_TTL_SECONDS", default=20.0)
PRESENCE_FLUSH_SECONDS = env.float("PRESENCE_FLUSH_SECONDS", default=0.5)
# A typing notice is relayed at most once per this many seconds per user and room (cluster-wide
# with REDIS_URL); the others are dropped without an error.
TYPING_INTERVAL_SECONDS = env.float("TYPING_INTERVAL_SECONDS", default=3.0)
