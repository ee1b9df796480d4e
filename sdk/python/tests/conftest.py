"""Fixtures: every test gets its own embedded daemon (AGENTKEEPER_BIN, else the repo's build);
and the one way a test waits for something to happen (``wait_for``, ``finishes``)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any, Callable, TypeVar

import pytest

from agentkeeper import AgentKeeperClient, find_binary

T = TypeVar("T")

# How long a test waits for something that should happen before it calls it a hang. Only a
# guard: no test asserts that anything is fast, so a loaded machine makes a test slower, never red.
HANG_GUARD = 60.0


@pytest.fixture(scope="session")
def binary() -> str:
    try:
        return find_binary(os.environ.get("AGENTKEEPER_BIN") or None)
    except FileNotFoundError as e:
        pytest.exit(f"no daemon binary: {e} (run `cargo build` or set AGENTKEEPER_BIN)", returncode=2)
        raise


@pytest.fixture
def client(binary: str) -> Iterator[AgentKeeperClient]:
    """A real-clock embedded daemon."""
    with AgentKeeperClient.embedded(binary=binary, timeout=10) as c:
        yield c


@pytest.fixture
def manual(binary: str) -> Iterator[AgentKeeperClient]:
    """A manual-clock embedded daemon (seed 7): time moves only with client.advance()."""
    with AgentKeeperClient.embedded(binary=binary, clock="manual", seed=7, timeout=10) as c:
        yield c


def wait_for(predicate: Callable[[], object], what: str = "condition") -> None:
    """Polls ``predicate`` until it is true; fails naming ``what`` after HANG_GUARD seconds."""
    deadline = time.monotonic() + HANG_GUARD
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {HANG_GUARD}s")
        time.sleep(0.01)


async def wait_for_async(predicate: Callable[[], object], what: str = "condition") -> None:
    """``wait_for`` for asyncio tests: the event loop goes on running while it waits."""
    deadline = time.monotonic() + HANG_GUARD
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {HANG_GUARD}s")
        await asyncio.sleep(0.01)


def finishes(call: Callable[[], T], what: str = "the call") -> T:
    """Runs ``call`` on a thread and returns its result (or raises its exception); fails naming
    ``what`` if it is still running after HANG_GUARD seconds: for calls that would block for
    good if the feature under test broke."""
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as e:  # handed to the test's thread
            outcome.append((False, e))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG_GUARD)
    if not outcome:
        raise AssertionError(f"{what} did not return within {HANG_GUARD}s")
    ok, value = outcome[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def metric(client: Any, sample: str) -> float:
    """One unlabelled sample of an embedded daemon's /metrics (0 when absent); ``client`` is a
    blocking or an asyncio client."""
    assert client.daemon is not None, "an embedded daemon"
    with urllib.request.urlopen(f"{client.daemon.metrics_url}/metrics", timeout=HANG_GUARD) as response:
        text = response.read().decode()
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == sample:
            return float(value)
    return 0.0


def wait_for_metric(client: Any, sample: str, want: float) -> None:
    """Waits until the embedded daemon's /metrics shows ``sample`` at ``want``."""
    wait_for(lambda: metric(client, sample) == want, what=f"{sample} = {want}")


class RefusingPort:
    """A local port nobody listens on while this lives: bound, not listening, so connections are
    refused and no other socket can bind the port meanwhile (as one could a port merely found
    free a moment ago)."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]

    def __enter__(self) -> int:
        return self.port

    def __exit__(self, *exc: object) -> None:
        self._socket.close()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = f.read().split()
            return int(low), int(high)
    except OSError:
        return 32768, 60999  # Linux's default


def port_outside_the_ephemeral_range() -> int:
    """A free port that no bind to port 0 (every other daemon and test here) can be given.

    For the few tests whose client must reach a daemon that is not running yet, or one that
    comes back on the same address after a restart: they need a fixed port, and this one can
    only be taken by a process that names it. If one does, the daemon's start fails saying so.
    """
    low, _ = _ephemeral_range()
    for _ in range(100):
        port = random.randrange(20000, low) if low > 20000 else random.randrange(1024, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")
