"""Shared fixtures: throwaway PostgreSQL and Redis servers, and the users alice, bob and charlie;
the webhooks' private-address flag and the rendered k8s/ overlays, each used by two modules.

Charlie belongs to nothing: he should have no access to Alice's private rooms.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice
from pytest_postgresql import factories as pg_factories
from pytest_redis import factories as redis_factories

from realtime import events
from realtime.process import close_process, get_process
from tests.k8s_manifests import K8S, OVERLAYS, need, run
from web.models import Room

# PostgreSQL refuses to run as root; the wrapper runs it as the postgres user when needed.
postgresql_proc = pg_factories.postgresql_proc(
    port=None, executable=str(Path(__file__).parent / "bin" / "pg_ctl")
)
redis_proc = redis_factories.redis_proc(port=None)  # type: ignore[arg-type]  # None: any free port, per its docs


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """A throwaway Redis Cluster of three masters (bench/redis_cluster.py), for the session."""
    from bench.redis_cluster import RedisCluster

    with RedisCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: Any) -> str:
    """settings.REDIS_URL for that cluster, emptied first (tests use fixed key names)."""
    import redis

    for port in redis_cluster.master_ports():
        with redis.Redis(host="127.0.0.1", port=port) as client:
            client.flushall()
    return f"redis+cluster://{redis_cluster.seeds}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The browser tests last. Playwright's sync API (pytest-playwright's session fixtures)
    keeps an event loop marked running in the main thread until the session ends; every
    asyncio test collected after it would fail with "Runner.run() cannot be called from a
    running event loop"."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)  # stable


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    """Each test starts with an empty cache: one test's entries may name rows it rolled back."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(postgresql_proc: Any) -> None:
    from django.conf import settings

    settings.DATABASES["default"].update(
        HOST=postgresql_proc.host, PORT=str(postgresql_proc.port), USER=postgresql_proc.user
    )


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """pytest-django's, and at the end the sessions other threads keep open (the publisher's
    store threads, the reads' thread) ended first, so that the test database can be dropped."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def _user(username: str) -> Any:
    return get_user_model().objects.create_user(username, password=f"{username}-password")


@pytest.fixture
def alice(db: None) -> Any:
    return _user("alice")


@pytest.fixture
def bob(db: None) -> Any:
    return _user("bob")


@pytest.fixture
def charlie(db: None) -> Any:
    return _user("charlie")


@pytest.fixture
async def fresh_process() -> AsyncIterator[Any]:
    """A process of its own (realtime/process.py): no store thread started, no pool made yet;
    closed after the test."""
    await close_process()
    yield get_process()
    await close_process()


Captured = list[tuple[str, dict[str, Any]]]
CaptureEvents = Callable[[int], AbstractContextManager[Captured]]


@pytest.fixture
def capture_events(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> CaptureEvents:
    """Like Zulip's capture_send_event_calls: record the (group, event) pairs that actions
    broadcast inside the block, still sending them through the real channel layer, and
    check how many there were. on_commit callbacks run when the block ends."""

    @contextmanager
    def capture(expected_num_events: int) -> Iterator[Captured]:
        captured: Captured = []
        real = {name: getattr(events, name) for name in ("_publish",)}

        def recorder(name: str) -> Callable[..., None]:
            def record(*items: tuple[str, dict[str, Any]]) -> None:
                captured.extend(items)
                real[name](*items)

            return record

        for name in real:
            monkeypatch.setattr(events, name, recorder(name))
        with django_capture_on_commit_callbacks(execute=True):
            yield captured
        for name, function in real.items():
            monkeypatch.setattr(events, name, function)
        assert len(captured) == expected_num_events, captured

    return capture


@pytest.fixture
def admin_client(db: None) -> Client:
    """A superuser past both factors (tests/test_admin_otp.py logs in the real way)."""
    root = get_user_model().objects.create_superuser("root", password="root-password")
    device = TOTPDevice.objects.create(user=root, name="phone", confirmed=True)
    client = Client()
    client.force_login(root)
    # What django_otp.login() stores after a valid token: force_login for the second factor.
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


@pytest.fixture
def general(db: None) -> Room:
    """The public room every user can post in (made by a migration)."""
    # Transactional tests flush the migration-made row, so make sure it is there.
    room, _ = Room.objects.get_or_create(slug="general", defaults={"title": "General"})
    return room


# Outgoing webhooks (tests/test_webhooks.py, tests/test_webhook_deliveries.py).


@pytest.fixture
def allow_private(settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True


# k8s/ rendered (tests/test_k8s.py, tests/test_k8s_monitoring.py).


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each overlay rendered by `kubectl kustomize` into a file."""
    kubectl = need("kubectl", "the machine image ships it (kubectl kustomize renders k8s/)")
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for overlay in OVERLAYS:
        result = run(kubectl, "kustomize", K8S / "overlays" / overlay)
        assert result.returncode == 0, f"{overlay} does not render:\n{result.stderr}"
        files[overlay] = out / f"{overlay}.yaml"
        files[overlay].write_text(result.stdout)
    return files


@pytest.fixture(scope="session")
def docs(rendered: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    return {o: [d for d in yaml.safe_load_all(f.read_text()) if d] for o, f in rendered.items()}
