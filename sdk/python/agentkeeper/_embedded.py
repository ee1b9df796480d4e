"""Embedded mode: find the ``agentkeeper`` binary, start it on free ports, stop it on close."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Optional, Union

__all__ = ["EmbeddedDaemon", "find_binary", "free_port"]

_EXE = ".exe" if sys.platform == "win32" else ""
_NAME = f"agentkeeper{_EXE}"
# sdk/python/agentkeeper/_embedded.py -> the repository root is three levels up.
_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_FROM_PACKAGE = _PACKAGE_DIR.parents[2] if len(_PACKAGE_DIR.parents) > 2 else _PACKAGE_DIR


def _candidates(explicit: Optional[str]) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    on_path = shutil.which("agentkeeper")
    if on_path:
        found.append(("PATH", Path(on_path)))
    roots = []
    for root in (_REPO_FROM_PACKAGE, Path.cwd()):
        if root not in roots:
            roots.append(root)
    for profile in ("release", "debug"):
        for root in roots:
            found.append((f"target/{profile}", root / "target" / profile / _NAME))
    for root in (Path.cwd(), _REPO_FROM_PACKAGE):
        found.append(("v1 dev layout", root / "daemon" / _NAME))
    return found


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_binary(explicit: Optional[Union[str, os.PathLike[str]]] = None) -> str:
    """Locate the daemon binary.

    Order: ``explicit``; ``$AGENTKEEPER_BIN``; ``agentkeeper`` on ``PATH``; this repository's
    ``target/release/agentkeeper`` then ``target/debug/agentkeeper`` (looked up from the SDK's
    source directory and from the current directory); v1's ``./daemon/agentkeeper``.
    An explicit path or ``$AGENTKEEPER_BIN`` that does not exist is an error, not skipped.
    """
    if explicit is not None:
        path = Path(explicit)
        if not _executable(path):
            raise FileNotFoundError(f"agentkeeper binary {str(path)!r} (binary=) is not an executable file")
        return str(path)
    env = os.environ.get("AGENTKEEPER_BIN")
    if env:
        if not _executable(Path(env)):
            raise FileNotFoundError(f"AGENTKEEPER_BIN={env!r} is not an executable file")
        return env
    tried = []
    for _, path in _candidates(None):
        if _executable(path):
            return str(path)
        tried.append(str(path))
    raise FileNotFoundError(
        "agentkeeper binary not found. Pass binary=, set AGENTKEEPER_BIN, put agentkeeper on PATH, "
        "or build it with `cargo build`. Tried: " + ", ".join(tried)
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass


class EmbeddedDaemon:
    """A daemon subprocess owned by a client (see ``AgentKeeperClient.embedded``)."""

    host = "127.0.0.1"

    def __init__(
        self,
        binary: Optional[Union[str, os.PathLike[str]]] = None,
        port: Optional[int] = None,
        data_dir: Optional[Union[str, os.PathLike[str]]] = None,
        clock: str = "real",
        seed: Optional[int] = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if clock not in ("real", "manual"):
            raise ValueError(f"clock must be 'real' or 'manual', got {clock!r}")
        self.binary = find_binary(binary)
        self._port_fixed = port is not None
        self.port = port if port is not None else free_port()
        self.metrics_port = free_port()
        self.data_dir = None if data_dir is None else str(data_dir)
        self.clock = clock
        self.seed = seed
        self.extra_args = list(extra_args)
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._log: Optional[IO[bytes]] = None
        self._finalizer: Any = None  # weakref.finalize killing the process if the owner is lost

    @property
    def address(self) -> str:
        """``host:port`` of the gRPC listener."""
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Base URL of the dashboard, ``/healthz`` and ``/metrics``."""
        return f"http://{self.host}:{self.metrics_port}"

    def command(self) -> list[str]:
        """The command line used to start the daemon."""
        cmd = [
            self.binary,
            f"--addr={self.host}:{self.port}",
            f"--metrics-addr={self.host}:{self.metrics_port}",
        ]
        if self.clock != "real":
            cmd.append(f"--clock={self.clock}")
        if self.seed is not None:
            cmd.append(f"--seed={int(self.seed)}")
        if self.data_dir is not None:
            cmd.append(f"--data-dir={self.data_dir}")
        cmd.extend(self.extra_args)
        return cmd

    def log_text(self) -> str:
        """Everything the daemon wrote to stderr/stdout so far."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        data = self._log.read()
        self._log.seek(0, os.SEEK_END)
        return data.decode(errors="replace")

    def start(self, timeout: float = 15.0) -> None:
        """Start the process and wait until its gRPC port accepts connections."""
        attempts = 1 if self._port_fixed else 3
        for attempt in range(attempts):
            if attempt:
                self.port, self.metrics_port = free_port(), free_port()
            if self._try_start(timeout):
                return
        raise RuntimeError(f"agentkeeper daemon failed to start: {self.command()}\n{self.log_text()}")

    def _try_start(self, timeout: float) -> bool:
        if self._log is None:
            self._log = tempfile.TemporaryFile(prefix="agentkeeper-", suffix=".log")
        process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.process = process
        self._finalizer = weakref.finalize(self, _kill, process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.02)
                continue
            if process.poll() is None:
                return True
        _kill(process)
        raise TimeoutError(f"agentkeeper daemon did not listen on {self.address} within {timeout}s\n{self.log_text()}")

    @property
    def running(self) -> bool:
        """True while the daemon process is alive."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM, wait (the daemon drains calls for up to 5 s), then SIGKILL. Returns the exit code."""
        process, self.process = self.process, None
        code: Optional[int] = None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _kill(process)
            code = process.returncode
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> None:
        """SIGKILL the daemon (a crash, for tests)."""
        if self.process is not None:
            _kill(self.process)
