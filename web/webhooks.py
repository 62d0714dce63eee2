"""Outgoing webhooks: which notifications go to which URLs, and how one is signed and sent.

Deliveries are Celery tasks (web/tasks.py `deliver_webhook`); this module decides what to
deliver and does one try. The signature follows Stripe's scheme: the receiver recomputes
`HMAC-SHA256(secret, "<t>.<body>")` and compares it with `v1` (docs/protocol.md).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson
from django.conf import settings
from django.db import connection, transaction

from web.models import Notification, Webhook, WebhookDelivery
from web.ssrf import Target, check_url

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Chat-Signature"
# Only the status matters; a receiver's body is read this far so the connection ends cleanly.
RESPONSE_READ_BYTES = 64 * 1024


def schedule_deliveries(notification_ids: Sequence[int]) -> None:
    """After the current transaction commits, POST these notifications to matching webhooks."""
    ids = list(notification_ids)
    if ids:
        # robust: a broker that is down is logged, not raised into the request that committed.
        transaction.on_commit(lambda: _create_and_enqueue(ids), robust=True)


def _create_and_enqueue(notification_ids: list[int]) -> None:
    """One row per (webhook, notification) that wants it, then one task per row: 3 queries."""
    notifications = list(
        Notification.objects.filter(pk__in=notification_ids).values_list("pk", "user_id", "kind")
    )
    hooks: dict[int, list[Webhook]] = {}
    for hook in Webhook.objects.filter(user_id__in={user for _, user, _ in notifications}):
        hooks.setdefault(hook.user_id, []).append(hook)
    rows = [
        WebhookDelivery(webhook=hook, notification_id=pk)
        for pk, user, kind in notifications
        for hook in hooks.get(user, ())
        if hook.wants(kind)
    ]
    if not rows:
        return
    delivery_ids = [row.pk for row in WebhookDelivery.objects.bulk_create(rows)]
    _enqueue(delivery_ids)


def _enqueue(delivery_ids: list[int]) -> None:
    from web.tasks import deliver_webhook

    if settings.CELERY_TASK_ALWAYS_EAGER:
        # No worker (`make run`): deliver on a thread of our own, so the request or socket that
        # caused them never waits on a receiver.
        threading.Thread(
            target=_deliver_here, args=(delivery_ids,), name="webhooks", daemon=True
        ).start()
        return
    for delivery_id in delivery_ids:
        deliver_webhook.delay(delivery_id)


def _deliver_here(delivery_ids: list[int]) -> None:
    from web.tasks import deliver_webhook

    try:
        for delivery_id in delivery_ids:
            deliver_webhook.apply(args=(delivery_id,))
    finally:
        # This thread's own database connection; nothing else would close it.
        connection.close()


def body(notification: Notification) -> bytes:
    """The JSON a receiver gets for one notification."""
    frame = notification.to_frame()  # the websocket's notification frame, less its type
    del frame["type"]
    return orjson.dumps({"id": notification.pk, **frame, "user": notification.user.get_username()})


def sign(secret: str, payload: bytes, timestamp: int) -> str:
    """The X-Chat-Signature value: `t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def post(webhook: Webhook, payload: bytes) -> int:
    """One signed POST; the response status. UnsafeURL or OSError when it could not be sent."""
    # Checked again at every try: what the host resolves to may have changed since creation.
    target = check_url(webhook.url, allow_private=settings.WEBHOOK_ALLOW_PRIVATE)
    conn = _connection(target, settings.WEBHOOK_TIMEOUT_SECONDS)
    try:
        conn.request(
            "POST",
            target.path,
            body=payload,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "chat-webhooks/1",
                SIGNATURE_HEADER: sign(webhook.secret, payload, int(time.time())),
            },
        )
        response = conn.getresponse()
        response.read(RESPONSE_READ_BYTES)
        return response.status
    except http.client.HTTPException as error:
        raise OSError(f"bad HTTP answer: {error!r}") from error
    finally:
        conn.close()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address, not to whatever the host resolves to now."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """The same over TLS: the certificate is checked against the host name (SNI too)."""

    tls = ssl.create_default_context()

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=self.tls)
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def _connection(target: Target, timeout: float) -> http.client.HTTPConnection:
    if target.scheme == "https":
        return _PinnedHTTPSConnection(target, timeout)
    return _PinnedHTTPConnection(target, timeout)


def webhook_json(webhook: Webhook, *, secret: str | None = None) -> dict[str, Any]:
    """A webhook as the API shows it; the secret only at creation."""
    data: dict[str, Any] = {
        "id": webhook.pk,
        "url": webhook.url,
        "kinds": webhook.kinds,
        "created_at": webhook.created_at.isoformat(),
    }
    if secret is not None:
        data["secret"] = secret
    return data
