"""Which Redis the app uses (project/redis_config.py): REDIS_URL, Sentinel or Cluster, only one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from project.redis_config import ClusterConfig, SentinelConfig, cluster_of, redis_url, sentinel_of

REPO = Path(__file__).resolve().parents[1]


def configured(**values: str) -> str | None:
    return redis_url(values.get)


def test_redis_url_alone_is_used_as_it_is() -> None:
    assert configured(REDIS_URL="redis://h:6380/0") == "redis://h:6380/0"
    assert configured() is None
    assert configured(REDIS_URL="", REDIS_SENTINELS="") is None


def test_sentinels_become_a_sentinel_url_with_master_and_passwords() -> None:
    url = configured(
        REDIS_SENTINELS="s1:26379, s2:26380,[::1]:26381",
        REDIS_SENTINEL_MASTER="my master",
        REDIS_PASSWORD="p@ss:w/rd?&=",
        REDIS_SENTINEL_PASSWORD="sentinel secret",
    )
    assert url is not None
    assert url.startswith("redis+sentinel://")
    assert sentinel_of(url) == SentinelConfig(
        nodes=(("s1", 26379), ("s2", 26380), ("::1", 26381)),
        master="my master",
        password="p@ss:w/rd?&=",
        sentinel_password="sentinel secret",
    )
    assert sentinel_of("redis://h:6379/0") is None
    assert sentinel_of(None) is None


def test_without_passwords_the_sentinel_url_has_none() -> None:
    url = configured(REDIS_SENTINELS="s1:26379", REDIS_SENTINEL_MASTER="mymaster")
    assert url == "redis+sentinel://s1:26379/mymaster"
    assert sentinel_of(url) == SentinelConfig(nodes=(("s1", 26379),), master="mymaster")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"REDIS_URL": "redis://h", "REDIS_SENTINELS": "s:1"}, "REDIS_URL and REDIS_SENTINELS"),
        ({"REDIS_URL": "redis://h", "REDIS_CLUSTER_NODES": "c:1"}, "REDIS_CLUSTER_NODES"),
        ({"REDIS_SENTINELS": "s:1", "REDIS_CLUSTER_NODES": "c:1"}, "not both"),
        ({"REDIS_CLUSTER_NODES": "c:7000,c"}, "REDIS_CLUSTER_NODES: host:port"),
        ({"REDIS_CLUSTER_NODES": "c:7000", "REDIS_SENTINEL_MASTER": "m"}, "SENTINELS is not"),
        ({"REDIS_SENTINELS": "s:26379"}, "needs REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_MASTER": "mymaster"}, "REDIS_SENTINELS is not"),
        ({"REDIS_SENTINELS": "s:26379,s2", "REDIS_SENTINEL_MASTER": "m"}, "'s2'"),
        ({"REDIS_SENTINELS": "s:port", "REDIS_SENTINEL_MASTER": "m"}, "'s:port'"),
        ({"REDIS_SENTINELS": ":26379", "REDIS_SENTINEL_MASTER": "m"}, "':26379'"),
        ({"REDIS_SENTINELS": "s:70000", "REDIS_SENTINEL_MASTER": "m"}, "'s:70000'"),
        ({"REDIS_SENTINELS": "s:1,,s:2", "REDIS_SENTINEL_MASTER": "m"}, "''"),
    ],
)
def test_anything_but_one_redis_setup_is_refused(values: dict[str, str], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message.replace("?", r"\?")):
        redis_url(values.get)


def test_cluster_nodes_become_a_cluster_url_with_the_password() -> None:
    url = configured(REDIS_CLUSTER_NODES="c1:7000, c2:7001", REDIS_PASSWORD="p@ss word")
    assert url == "redis+cluster://c1:7000,c2:7001?password=p%40ss+word"
    assert cluster_of(url) == ClusterConfig(
        nodes=(("c1", 7000), ("c2", 7001)), password="p@ss word"
    )
    assert configured(REDIS_CLUSTER_NODES="c1:7000") == "redis+cluster://c1:7000"
    assert cluster_of("redis://h:6379/0") is None
    assert sentinel_of(url) is None


def test_celery_broker_is_kombus_sentinel_transport() -> None:
    config = SentinelConfig(nodes=(("s1", 1), ("s2", 2)), master="m", password="a b")
    assert config.celery_broker() == (
        "sentinel://:a%20b@s1:1;sentinel://:a%20b@s2:2",
        {"master_name": "m"},
    )
    with_sentinel_password = SentinelConfig(nodes=(("s1", 1),), master="m", sentinel_password="x")
    assert with_sentinel_password.celery_broker() == (
        "sentinel://s1:1",
        {"master_name": "m", "sentinel_kwargs": {"password": "x"}},
    )


def _run_with(extra: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """Python with these settings in a clean environment (the settings read them at import)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "SECRET_KEY": "x" * 50,
        **extra,
    }
    return subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _settings_with(extra: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    return _run_with(extra, "-c", f"import django; django.setup(); {code}")


def test_a_bad_mix_stops_the_start_up(tmp_path: Path) -> None:
    """The settings module itself refuses it: `manage.py check` exits with the message."""
    mix = {
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "REDIS_SENTINELS": "127.0.0.1:2",
        "REDIS_SENTINEL_MASTER": "mymaster",
    }
    done = _run_with(mix, "manage.py", "check")
    assert done.returncode != 0
    assert "ImproperlyConfigured: set one of REDIS_URL and REDIS_SENTINELS" in done.stderr


def test_sentinel_settings_give_the_broker_and_the_layer(tmp_path: Path) -> None:
    """With REDIS_SENTINELS the settings load; Celery gets kombu's Sentinel transport."""
    code = (
        "from django.conf import settings as s; "
        "print(s.REDIS_URL); print(s.CELERY_BROKER_URL); "
        "print(s.CELERY_BROKER_TRANSPORT_OPTIONS); print(s.CACHES['default']['BACKEND'])"
    )
    sentinels = {
        "REDIS_SENTINELS": "127.0.0.1:26379,127.0.0.1:26380",
        "REDIS_SENTINEL_MASTER": "mymaster",
    }
    done = _settings_with(sentinels, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster",
        "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380",
        "{'master_name': 'mymaster'}",
        # No CACHE_URL and several processes: no cache, as with REDIS_URL.
        "django.core.cache.backends.dummy.DummyCache",
    ]


def test_cluster_needs_a_broker_of_its_own() -> None:
    """kombu has no Cluster transport: without CELERY_BROKER_URL the start-up says so; with
    one, the layer gets the cluster and Celery its broker."""
    nodes = {"REDIS_CLUSTER_NODES": "127.0.0.1:7000,127.0.0.1:7001"}
    refused = _settings_with(nodes, "pass")
    assert refused.returncode != 0
    assert "Celery cannot use a Redis Cluster as its broker" in refused.stderr
    code = "from django.conf import settings as s; print(s.REDIS_URL); print(s.CELERY_BROKER_URL)"
    done = _settings_with({**nodes, "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
        "redis://127.0.0.1:1/0",
    ]
