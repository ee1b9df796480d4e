"""Fixtures for running the published v1 SDK (agentkeeper 0.1.1) against this repo's daemon.

The daemon binary comes from AGENTKEEPER_BIN (set by scripts/test.sh) or target/debug. Each
daemon starts on port 0 and says which ports it bound in its --ready-file.
"""

import json
import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# How long a test waits for something that should happen before it calls it a hang. Only a
# guard: no test asserts that anything is fast.
HANG_GUARD = 60.0


def daemon_binary() -> str:
    explicit = os.environ.get("AGENTKEEPER_BIN")
    if explicit:
        return explicit
    for profile in ("debug", "release"):
        candidate = REPO / "target" / profile / "agentkeeper"
        if candidate.exists():
            return str(candidate)
    raise RuntimeError("build the daemon first: cargo build")


def wait_for(predicate, what: str = "condition"):
    """Polls ``predicate`` until it is true; fails naming ``what`` after HANG_GUARD seconds."""
    deadline = time.monotonic() + HANG_GUARD
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {HANG_GUARD}s")
        time.sleep(0.01)


class Daemon:
    def __init__(self, *extra: str) -> None:
        self._files = tempfile.TemporaryDirectory(prefix="agentkeeper-compat-")
        ready_file = Path(self._files.name) / "ready.json"
        args = [
            daemon_binary(),
            "--addr=127.0.0.1:0",
            "--metrics-addr=127.0.0.1:0",
            f"--ready-file={ready_file}",
            *extra,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: ready_file.exists() or self.process.poll() is not None, "the daemon's ready file")
        if not ready_file.exists():
            raise RuntimeError(self.process.stderr.read().decode())
        ready = json.loads(ready_file.read_text())
        self.port = int(ready["grpc"].rsplit(":", 1)[1])
        self.metrics_port = int(ready["http"].rsplit(":", 1)[1])

    def metric(self, name: str) -> float:
        """An unlabelled sample of the daemon's /metrics (0 when absent)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=HANG_GUARD) as response:
            for line in response.read().decode().splitlines():
                sample, _, value = line.partition(" ")
                if sample == name:
                    return float(value)
        return 0.0

    def wait_for_watchers(self, n: int) -> None:
        """Waits until the daemon counts ``n`` open watch streams: v1 opens a watch on a
        background thread, so events before that would not reach it."""
        wait_for(lambda: self.metric("agentkeeper_watchers") == n, f"{n} open watch streams")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=HANG_GUARD)
        self._files.cleanup()


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
