"""Fixtures: every test gets its own embedded daemon (AGENTKEEPER_BIN, else the repo's build)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Callable

import pytest

from agentkeeper import AgentKeeperClient, find_binary


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


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} not met within {timeout}s")
