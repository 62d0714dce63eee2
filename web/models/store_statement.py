"""The message store's statement (Message.objects.store_batch on PostgreSQL)."""

from __future__ import annotations

import functools

from django.db import connection

# Message.objects.store_batch on PostgreSQL. Drafts already stored (retries) are returned as
# they are; the rest are numbered in order after their room's last_seq, which the UPDATE
# advances under the room's row lock. The rooms are locked in id order first (`locked`), so
# two processes storing batches for the same rooms wait for each other instead of
# deadlocking. All parts of one statement run on one snapshot: a retry committed by another
# process after it began makes the INSERT fail on the idempotency constraint, and the whole
# statement (seqs included) rolls back.
#
# Drafts of senders who are not active are stored by no part of it and come back as rows
# with `created` NULL: the check is in the storing transaction, so a socket that has not yet
# heard of its user's deactivation stores nothing.
#
# It is prepared and every batch runs one generic plan (web/models/prepared.py), made once
# from what PostgreSQL then thought of the tables' sizes. So web_message, the table that
# grows fast, is read by key one draft at a time (LATERAL with LIMIT, which PostgreSQL cannot
# turn into a join), and so is the sender (a subquery): written as joins, a plan made while
# web_message was new hashed the whole table at every batch until the next ANALYZE
# (docs/performance.md). Each room's fresh drafts travel as arrays from `counts` through the
# UPDATE's RETURNING to the INSERT, so no part joins drafts to rooms after the locks are
# taken (a join PostgreSQL planned for ten rows ran as a nested loop over every pair).
STORE_BATCH_SQL = """
WITH given AS (
    SELECT * FROM unnest(
        %(rooms)s::bigint[], %(senders)s::bigint[], %(bodies)s::text[], %(ids)s::text[]
    ) WITH ORDINALITY AS d(room_id, sender_id, body, client_msg_id, ord)
), draft AS MATERIALIZED (
    SELECT g.*, s.id AS s_id, s.seq AS s_seq, s.body AS s_body, s.created_at AS s_created,
        coalesce((SELECT u.is_active FROM {users} u WHERE u.id = g.sender_id), false) AS active
    FROM given g
    LEFT JOIN LATERAL (
        SELECT m.id, m.seq, m.body, m.created_at FROM web_message m
        WHERE m.room_id = g.room_id AND m.sender_id = g.sender_id
        AND m.client_msg_id = g.client_msg_id
        LIMIT 1
    ) s ON true
), counts AS (
    SELECT room_id, count(*) AS k, array_agg(sender_id ORDER BY ord) AS senders,
        array_agg(body ORDER BY ord) AS bodies, array_agg(client_msg_id ORDER BY ord) AS ids
    FROM draft WHERE active AND s_id IS NULL
    GROUP BY room_id
), locked AS MATERIALIZED (
    SELECT r.id FROM web_room r WHERE r.id IN (SELECT room_id FROM counts)
    ORDER BY r.id FOR UPDATE
), room AS (
    UPDATE web_room r SET last_seq = r.last_seq + c.k
    FROM counts c WHERE r.id = c.room_id AND r.id IN (SELECT id FROM locked)
    RETURNING r.id, r.last_seq - c.k AS base, c.senders, c.bodies, c.ids
), inserted AS (
    INSERT INTO web_message (room_id, seq, sender_id, body, client_msg_id, created_at)
    SELECT room.id, room.base + m.n, m.sender_id, m.body, m.client_msg_id, now()
    FROM room, unnest(room.senders, room.bodies, room.ids)
        WITH ORDINALITY AS m(sender_id, body, client_msg_id, n)
    RETURNING id, room_id, seq, sender_id, body, client_msg_id, created_at
)
SELECT *, true FROM inserted
UNION ALL
SELECT s_id, room_id, s_seq, sender_id, s_body, client_msg_id, s_created, false
FROM draft WHERE active AND s_id IS NOT NULL
UNION ALL
SELECT NULL, room_id, NULL, sender_id, NULL, client_msg_id, NULL, NULL FROM draft WHERE NOT active
"""


@functools.cache
def store_batch_sql() -> str:
    from django.contrib.auth import get_user_model

    users = connection.ops.quote_name(get_user_model()._meta.db_table)
    return STORE_BATCH_SQL.replace("{users}", users)
