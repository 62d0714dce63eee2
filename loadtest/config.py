"""What one load-test run does: the command line, checked and resolved."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Config:
    url: str  # subscribers connect here
    publish_url: str  # publishers connect here (another process of the same deployment, say)
    rooms: list[str]
    connections: int
    connect_rate: float
    max_pending: int  # handshakes in flight at most; 0: no limit
    publishers: int
    rate: float  # messages per second, all publishers together
    duration: float
    warmup: float
    drain: float
    body_size: int
    procs: int
    connect_timeout: float
    max_seconds: float
    insecure: bool = False
    ready_file: str | None = None
    tokens: list[str] = field(default_factory=list, repr=False)

    def public(self) -> dict[str, Any]:
        """The settings for the report: everything but the tokens."""
        return {
            "url": self.url,
            "publish_url": self.publish_url,
            "rooms": len(self.rooms),
            "connections": self.connections,
            "connect_rate": self.connect_rate,
            "max_pending": self.max_pending,
            "publishers": self.publishers,
            "rate": self.rate,
            "duration": self.duration,
            "warmup": self.warmup,
            "drain": self.drain,
            "body_size": self.body_size,
            "procs": self.procs,
            "connect_timeout": self.connect_timeout,
            "max_seconds": self.max_seconds,
            "tokens": len(self.tokens),
        }
