"""Background work end to end: a real Celery worker process over the e2e stack's Redis broker
and PostgreSQL, delivering a webhook to an HTTP server and an email to an SMTP server, both
started by the test on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import psycopg
import pytest
from celery import Celery  # type: ignore[import-untyped]  # Celery ships no type information

from tests.e2e.servers import REPO, Stack, manage
from tests.receivers import Mailbox, http_receiver, smtp_server, verify

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 30.0
STOP_SECONDS = 10.0

# Runs in `manage.py shell` on the stack: a fresh user with an email address and a webhook for
# mentions, and one stored mention per purpose, its deliveries scheduled the way the
# notifications action does (inside the storing transaction).
SETUP = """
import json
from datetime import timedelta
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from web import webhooks
from web.actions.webhooks import do_create_webhook
from web.models import Inbox, Notification

user = get_user_model().objects.create_user(NAME, email=NAME + "@example.com")
hook, secret = do_create_webhook(user, URL, ["mention"])
with transaction.atomic():
    Inbox.objects.create(user=user, last_seq=1)
    note = Notification.objects.create(
        user=user, seq=1, kind="mention",
        payload={"room": "general", "sender": "bob", "excerpt": "are you there?"},
        created_at=timezone.now() - timedelta(seconds=30),
    )
    webhooks.schedule_deliveries([note.pk])
print(json.dumps({"hook": hook.pk, "secret": secret, "notification": note.pk}))
"""


class Worker:
    """`celery -A project worker` as a subprocess; its output goes to a log file."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "celery"),
                *("-A", "project", "worker", "--pool=solo", "--concurrency=1", "-l", "info"),
                *("-n", f"e2e-{uuid.uuid4().hex[:8]}@%h"),
                # No cluster chatter: one worker, and startup does not wait on its peers.
                *("--without-gossip", "--without-mingle", "--without-heartbeat"),
            ],
            cwd=REPO,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while " ready." not in self.output():
            assert self.proc.poll() is None, f"worker exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"worker not ready:\n{self.output()}"
            time.sleep(0.05)  # polling a process that offers no readiness event; bounded

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # a warm shutdown
            try:
                self.proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_SECONDS)
        self._log.close()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    with smtp_server() as started:
        yield started


def delivery_row(stack: Stack, webhook_id: int) -> tuple[str, int, int | None, str] | None:
    """The WebhookDelivery row the admin lists, read from the stack's database."""
    with psycopg.connect(
        stack.env["DATABASE_URL"], password=stack.env["DATABASE_PASSWORD"] or None
    ) as conn:
        row = conn.execute(
            "SELECT status, attempts, response_status, error FROM web_webhookdelivery"
            " WHERE webhook_id = %s",
            (webhook_id,),
        ).fetchone()
    return None if row is None else (row[0], row[1], row[2], row[3])


def test_a_worker_retries_a_webhook_and_emails_an_away_user(
    stack: Stack, mailbox: Mailbox, tmp_path: Path
) -> None:
    with http_receiver(statuses=[500, 500]) as receiver:
        env = {
            **stack.env,
            "WEBHOOK_ALLOW_PRIVATE": "1",
            "WEBHOOK_RETRY_BACKOFF_SECONDS": "0.2",
            "MENTION_EMAIL_AFTER_SECONDS": "1",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(mailbox.port),
            "CELERY_BEAT_SCHEDULE_FILENAME": str(tmp_path / "beat-schedule"),
        }
        worker = Worker(env, tmp_path / "worker.log")
        try:
            name = f"away-{uuid.uuid4().hex[:8]}"
            script = f"NAME = {name!r}\nURL = {receiver.url!r}\n{SETUP}"
            made = json.loads(manage(env, "shell", "-c", script).strip().splitlines()[-1])
            worker.wait_ready()

            # Two 500s, then 200: delivered on the third try, each try signed.
            requests = receiver.wait_for(3)
            assert len(requests) == 3
            for request in requests:
                assert verify(made["secret"], request.headers["x-chat-signature"], request.body)
            sent = json.loads(requests[-1].body)
            assert (sent["id"], sent["kind"], sent["user"]) == (
                made["notification"],
                "mention",
                name,
            )
            deadline = time.monotonic() + WAIT_SECONDS
            while (row := delivery_row(stack, made["hook"])) is None or row[0] == "pending":
                assert time.monotonic() < deadline, f"delivery not finished: {row}"
                time.sleep(0.05)  # the worker records the outcome after the answer; bounded
            assert row == ("delivered", 3, 200, "")

            # The chore, sent through the broker the way beat sends it.
            client = Celery(broker=stack.env["REDIS_URL"])
            try:
                client.send_task("web.tasks.send_mention_emails")
            finally:
                client.close()
            (message,) = mailbox.wait_for(1)
            assert message["To"] == f"{name}@example.com"
            assert message["Subject"] == "1 unread mention in chat"
            assert "- #general, bob: are you there?" in message.get_payload()
        finally:
            worker.stop()
    log = worker.output()
    assert "Traceback" not in log, log
