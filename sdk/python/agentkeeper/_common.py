"""Pieces shared by the sync and asyncio clients: retry policy, call table, address defaults."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import grpc

__all__ = ["RetryPolicy", "IDEMPOTENT", "STREAM_RETRYABLE", "DEFAULT_TIMEOUT", "resolve_address", "CHANNEL_OPTIONS"]

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 7070
DEFAULT_TIMEOUT = 30.0
"""Seconds a unary call may take before it fails with ``DeadlineExceeded`` (``None``: no limit)."""

# Calls that are safe to send again when the first attempt may or may not have arrived:
# Deregister of a DEAD agent is OK, AcquireLease is re-entrant for its holder, Campaign of a
# candidate and Resign of a non-candidate are no-ops, SetPolicy is an upsert, the rest only read
# or refresh a deadline. Register, ReleaseLease, DeletePolicy, Advance and the task mutations are not.
IDEMPOTENT = frozenset(
    {
        "Heartbeat",
        "Deregister",
        "GetAgent",
        "Find",
        "AcquireLease",
        "RenewLease",
        "Campaign",
        "Resign",
        "SetPolicy",
        "ListPolicies",
        "CheckPolicy",
        "GetTask",
        "ListTasks",
        "Now",
    }
)

# A watch stream that ends with one of these (or ends cleanly) is reopened from where it left off;
# anything else (OUT_OF_RANGE, RESOURCE_EXHAUSTED, INVALID_ARGUMENT, ...) goes to on_error.
STREAM_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    # Reconnect quickly after a daemon restart instead of grpc's default 1 s+ first backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for idempotent calls that fail with UNAVAILABLE,
    and for reopening dropped watch streams.

    ``max_attempts`` counts the first try (1 disables retries). Watch streams retry forever
    with the same backoff until cancelled.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        """Sleeps between attempts: ``max_attempts - 1`` of them."""
        delay = self.initial_backoff
        for _ in range(max(0, self.max_attempts - 1)):
            yield delay * random.uniform(0.5, 1.0)
            delay = min(delay * self.multiplier, self.max_backoff)

    def next_delay(self, previous: float) -> float:
        """The stream-reconnect delay after ``previous`` (0 for the first)."""
        if previous <= 0:
            return self.initial_backoff
        return min(previous * self.multiplier, self.max_backoff)


def resolve_address(host: Optional[str], port: Optional[int]) -> tuple[str, int]:
    """``host``/``port`` as given, else from ``$AGENTKEEPER_ADDRESS`` (``host:port``), else localhost:7070."""
    env = os.environ.get("AGENTKEEPER_ADDRESS", "").strip()
    env_host, env_port = DEFAULT_HOST, DEFAULT_PORT
    if env:
        h, sep, p = env.rpartition(":")
        if sep and p.isdigit():
            env_host, env_port = (h or DEFAULT_HOST), int(p)
        else:
            env_host = env
    if host is None and port is None:
        return env_host, env_port
    return (host if host is not None else DEFAULT_HOST), (port if port is not None else DEFAULT_PORT)


def interval_for(ttl: int, default_ttl: int, fraction: float) -> float:
    """Background refresh period: ``fraction`` of the effective ttl, at least 50 ms."""
    effective = ttl if ttl > 0 else default_ttl
    return max(0.05, effective * fraction)
