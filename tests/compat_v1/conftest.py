"""Fixtures for running the published v1 SDK (agentkeeper 0.1.1) against this repo's daemon.

The daemon binary comes from AGENTKEEPER_BIN (set by scripts/test.sh) or target/debug.
"""

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def daemon_binary() -> str:
    explicit = os.environ.get("AGENTKEEPER_BIN")
    if explicit:
        return explicit
    for profile in ("debug", "release"):
        candidate = REPO / "target" / profile / "agentkeeper"
        if candidate.exists():
            return str(candidate)
    raise RuntimeError("build the daemon first: cargo build")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        args = [
            daemon_binary(),
            f"--addr=127.0.0.1:{self.port}",
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            *extra,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(self.process.stderr.read().decode())
                time.sleep(0.05)
        raise RuntimeError("daemon did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def daemon():
    d = Daemon()
    yield d
    d.stop()


@pytest.fixture
def client(daemon):
    from agentkeeper import AgentKeeperClient

    with AgentKeeperClient(host="localhost", port=daemon.port) as c:
        yield c


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")
