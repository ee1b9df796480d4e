"""Embedded mode: find the ``agentkeeper`` binary, start it on port 0 (the OS picks free ports)
and learn them from its ready file, stop it on close."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import IO, Any, Optional, Union

__all__ = ["EmbeddedDaemon", "find_binary"]

# How often start() looks for the ready file (or the process's exit) while the daemon starts.
_READY_POLL_SECONDS = 0.01

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
    wheel = _wheel_binary()
    if wheel is not None:
        found.append(("this wheel", wheel))
    return found


def _wheel_binary() -> Optional[Path]:
    """The daemon installed with this package, when it came from the wheel that carries it.

    pip puts the wheel's binary in the environment's scripts directory (``bin/``), which is on
    ``PATH`` only while the environment is activated; the installed files' record says where it
    went either way (a venv, ``--user``, ``--prefix``). None for an install without the binary.
    """
    try:
        files = importlib.metadata.distribution("agentkeeper").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if PurePath(file).name == _NAME:
            return Path(str(file.locate())).resolve()
    return None


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_binary(explicit: Optional[Union[str, os.PathLike[str]]] = None) -> str:
    """Locate the daemon binary.

    Order: ``explicit``; ``$AGENTKEEPER_BIN``; ``agentkeeper`` on ``PATH``; this repository's
    ``target/release/agentkeeper`` then ``target/debug/agentkeeper`` (looked up from the SDK's
    source directory and from the current directory); v1's ``./daemon/agentkeeper``; last, the
    binary installed with this package by the wheel that carries it (``pip install
    agentkeeper-*.whl``), also when its environment is not activated.
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
        "install the wheel that carries it (`make wheel`), or build it with `cargo build`. "
        "Tried: " + ", ".join(tried)
    )


def _port_of(address: str) -> int:
    """The port of ``host:port`` (``[v6]:port`` too), as the daemon's ready file writes it."""
    return int(address.rsplit(":", 1)[1])


def _read_ready(path: Path) -> Optional[dict[str, Any]]:
    """The daemon's ready file, or None while it is not there. The daemon renames it into place
    whole, so a file that exists is complete."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    ready = json.loads(text)
    if not isinstance(ready, dict) or not isinstance(ready.get("grpc"), str):
        raise RuntimeError(f"agentkeeper daemon wrote an unexpected ready file: {text!r}")
    return ready


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
        self._requested_port = port
        self.port: Optional[int] = port
        """The gRPC port: the one asked for, else the one the OS picked (known once started)."""
        self.metrics_port: Optional[int] = None
        """The HTTP port the OS picked (known once started)."""
        self.data_dir = None if data_dir is None else str(data_dir)
        self.clock = clock
        self.seed = seed
        self.extra_args = list(extra_args)
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._log: Optional[IO[bytes]] = None
        self._ready_dir: Optional[tempfile.TemporaryDirectory[str]] = None  # holds the ready file
        self._finalizer: Any = None  # weakref.finalize killing the process if the owner is lost

    @property
    def address(self) -> str:
        """``host:port`` of the gRPC listener."""
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Base URL of the dashboard, ``/healthz`` and ``/metrics``."""
        return f"http://{self.host}:{self.metrics_port}"

    @property
    def _ready_file(self) -> Optional[Path]:
        return None if self._ready_dir is None else Path(self._ready_dir.name) / "ready.json"

    def command(self) -> list[str]:
        """The command line used to start the daemon (``--ready-file`` once it is started).

        Port 0 lets the OS pick a free port, so no other process can take it between a probe
        and the daemon's bind; the daemon writes the ports it bound to its ``--ready-file``.
        """
        cmd = [
            self.binary,
            f"--addr={self.host}:{self._requested_port or 0}",
            f"--metrics-addr={self.host}:0",
        ]
        if self._ready_file is not None:
            cmd.append(f"--ready-file={self._ready_file}")
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
        """Start the process and wait until it serves: its ready file appears (after any recovery
        of ``data_dir``). ``timeout`` only guards against a daemon that hangs.

        Raises RuntimeError with the daemon's log if it exits instead (a taken ``port``, say),
        TimeoutError if it neither serves nor exits within ``timeout``.
        """
        self._ready_dir = tempfile.TemporaryDirectory(prefix="agentkeeper-")
        if self._log is None:
            self._log = tempfile.TemporaryFile(prefix="agentkeeper-", suffix=".log")
        process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.process = process
        self._finalizer = weakref.finalize(self, _kill, process)
        ready = self._wait_ready(process, timeout)
        self.port = _port_of(ready["grpc"])
        self.metrics_port = None if ready.get("http") is None else _port_of(ready["http"])

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
        """The ready file's contents once it appears. If the process exits first, or neither
        happens within ``timeout``, stops it and raises with its log."""
        ready_file = self._ready_file
        assert ready_file is not None
        deadline = time.monotonic() + timeout
        while True:
            ready = _read_ready(ready_file)
            if ready is not None:
                return ready
            if process.poll() is not None:
                raise RuntimeError(f"agentkeeper daemon failed to start: {self.command()}\n{self._give_up()}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"agentkeeper daemon did not serve within {timeout}s\n{self._give_up()}")
            time.sleep(_READY_POLL_SECONDS)

    def _give_up(self) -> str:
        """Kills a daemon that did not start and cleans up after it; returns its log."""
        if self.process is not None:
            _kill(self.process)
        log = self.log_text()
        self.stop()
        return log

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
        if self._ready_dir is not None:
            self._ready_dir.cleanup()
            self._ready_dir = None
        return code

    def kill(self) -> None:
        """SIGKILL the daemon (a crash, for tests)."""
        if self.process is not None:
            _kill(self.process)
