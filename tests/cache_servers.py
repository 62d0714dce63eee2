"""Throwaway cache servers for tests/test_cache*.py, and reading what the cache answers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import Any

from django.core.cache import caches
from prometheus_client import REGISTRY
from pytest_redis.executor import RedisExecutor

from cluster.procs import free_port
from project.settings import cache_settings
from web.access import rooms_for_user

RETRY = 0.2  # CACHE_RETRY_SECONDS here: faults heal quickly
MEMCACHED = shutil.which("memcached")  # Debian's memcached (`make services`)


def use_cache(settings: Any, url: str | None) -> None:
    """Point CACHES at this server (None: local memory), built the way settings.py builds it."""
    settings.CACHE_RETRY_SECONDS = RETRY
    settings.CACHES = {
        "default": cache_settings(url, several_processes=False, timeout=0.25, retry=RETRY)
    }
    caches["default"].clear()


class MemcachedServer:
    """A throwaway memcached on a free loopback port."""

    def __init__(self, binary: str):
        self.binary, self.port = binary, free_port()
        self.url = f"memcache://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        root = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root
        self.process = subprocess.Popen(
            [self.binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "16", *root]
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def pid(server: RedisExecutor) -> int:
    assert server.process is not None
    return int(server.process.pid)


def listed(user: Any) -> dict[str, tuple[bool, int, int]]:
    """The user's room list: slug -> (member, last_seq, unread)."""
    return {r["slug"]: (r["member"], r["last_seq"], r["unread"]) for r in rooms_for_user(user)}


def errors(op: str) -> float:
    return REGISTRY.get_sample_value("chat_cache_errors_total", {"op": op}) or 0.0


def unavailable(kind: str) -> float:
    labels = {"kind": kind, "result": "unavailable"}
    return REGISTRY.get_sample_value("chat_cache_lookups_total", labels) or 0.0
