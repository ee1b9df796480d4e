"""Embedded mode: binary resolution, flags, ports from the ready file, side-by-side daemons,
shutdown; manual clock calls."""

import json
import os
import socket
import stat
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

import agentkeeper._embedded as embedded_module
from agentkeeper import (
    AgentKeeperClient,
    EmbeddedDaemon,
    FailedPrecondition,
    InvalidArgument,
    OutOfRange,
    find_binary,
)

from conftest import HANG_GUARD, port_outside_the_ephemeral_range, wait_for


def _fake_binary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_binary_resolution_order(tmp_path, monkeypatch):
    explicit = _fake_binary(tmp_path / "explicit" / "agentkeeper")
    env = _fake_binary(tmp_path / "env" / "agentkeeper")
    on_path = _fake_binary(tmp_path / "bin" / "agentkeeper")
    project = tmp_path / "project"
    release = _fake_binary(project / "target" / "release" / "agentkeeper")
    debug = _fake_binary(project / "target" / "debug" / "agentkeeper")
    v1 = _fake_binary(project / "daemon" / "agentkeeper")
    elsewhere = tmp_path / "nowhere"
    elsewhere.mkdir()
    monkeypatch.setattr(embedded_module, "_REPO_FROM_PACKAGE", elsewhere)
    monkeypatch.chdir(project)
    monkeypatch.setenv("AGENTKEEPER_BIN", str(env))
    monkeypatch.setenv("PATH", f"{on_path.parent}{os.pathsep}{os.environ.get('PATH', '')}")

    assert find_binary(explicit) == str(explicit)
    assert find_binary() == str(env)
    monkeypatch.delenv("AGENTKEEPER_BIN")
    assert find_binary() == str(on_path)
    monkeypatch.setenv("PATH", str(elsewhere))
    assert find_binary() == str(project / "target" / "release" / "agentkeeper")
    release.unlink()
    assert find_binary() == str(project / "target" / "debug" / "agentkeeper")
    debug.unlink()
    assert find_binary() == str(project / "daemon" / "agentkeeper")
    v1.unlink()
    with pytest.raises(FileNotFoundError, match="cargo build"):
        find_binary()


def test_build_output_is_found_relative_to_the_sdk_source(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    debug = _fake_binary(repo / "target" / "debug" / "agentkeeper")
    monkeypatch.setattr(embedded_module, "_REPO_FROM_PACKAGE", repo)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTKEEPER_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_binary() == str(debug)


def test_a_missing_explicit_binary_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="binary="):
        find_binary(tmp_path / "nope")
    monkeypatch.setenv("AGENTKEEPER_BIN", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="AGENTKEEPER_BIN"):
        find_binary()


def test_command_line(binary, tmp_path):
    d = EmbeddedDaemon(binary=binary, port=7171, clock="manual", seed=9)
    cmd = d.command()
    assert cmd[:3] == [binary, "--addr=127.0.0.1:7171", "--metrics-addr=127.0.0.1:0"]
    assert "--clock=manual" in cmd and "--seed=9" in cmd
    assert not any(a.startswith("--data-dir") for a in cmd), "only passed when data_dir is given"
    assert f"--data-dir={tmp_path}" in EmbeddedDaemon(binary=binary, data_dir=tmp_path).command()
    assert EmbeddedDaemon(binary=binary).command()[1] == "--addr=127.0.0.1:0", "no port: the OS picks one"
    with pytest.raises(ValueError):
        EmbeddedDaemon(binary=binary, clock="sundial")


def test_the_ports_come_from_the_daemons_ready_file_and_it_goes_with_the_daemon(binary):
    d = EmbeddedDaemon(binary=binary)
    assert (d.port, d.metrics_port) == (None, None), "not known before the daemon binds them"
    d.start()
    try:
        ready_flag = [a for a in d.command() if a.startswith("--ready-file=")]
        assert len(ready_flag) == 1
        ready_file = Path(ready_flag[0].split("=", 1)[1])
        assert json.loads(ready_file.read_text()) == {
            "grpc": f"127.0.0.1:{d.port}",
            "http": f"127.0.0.1:{d.metrics_port}",
            "pid": d.process.pid,
        }
        with urllib.request.urlopen(f"{d.metrics_url}/readyz", timeout=10) as response:
            assert response.read() == b"ready"
        with AgentKeeperClient("127.0.0.1", d.port) as c:
            assert c.find() == []
    finally:
        assert d.stop() == 0
    assert not ready_file.parent.exists(), "the ready file's directory is removed with the daemon"


def test_a_daemon_that_cannot_start_is_an_error_with_its_log(binary):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        d = EmbeddedDaemon(binary=binary, port=taken)
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{taken}"):
            d.start()
    assert not d.running


def test_two_embedded_daemons_side_by_side_and_stopped_on_close(binary):
    with AgentKeeperClient.embedded(binary=binary) as a, AgentKeeperClient.embedded(binary=binary) as b:
        assert a.port != b.port and a.daemon.metrics_port != b.daemon.metrics_port
        agent = a.register("only-in-a")
        assert [x.card.name for x in a.find()] == ["only-in-a"] and b.find() == []
        process = a.daemon.process
        agent.deregister()
    assert process.poll() is not None, "the daemon is stopped when the client closes"
    assert process.returncode == 0, "SIGTERM: clean exit"


def test_explicit_port(binary):
    port = port_outside_the_ephemeral_range()
    with AgentKeeperClient.embedded(binary=binary, port=port) as c:
        assert c.port == port and c.daemon.port == port and c.find() == []


def test_manual_clock_now_and_advance(manual):
    start = manual.now()
    assert start.tzinfo is not None
    assert manual.now() == start, "a manual clock stands still"
    after = manual.advance(1.5)
    assert (after - start).total_seconds() == pytest.approx(1.5)
    assert manual.advance(timedelta(minutes=1)) - after == timedelta(minutes=1)
    with pytest.raises(InvalidArgument):
        manual.advance(-5)
    assert manual.now() == after + timedelta(minutes=1)


def test_clock_calls_on_a_real_clock_are_failed_precondition(client):
    with pytest.raises(FailedPrecondition):
        client.advance(1)
    with pytest.raises(FailedPrecondition):
        client.now()


def test_daemon_restart_watch_resumes_and_state_survives(binary, tmp_path):
    """The restart case: daemon A publishes, its stream drops when A stops, daemon B (same port,
    same --data-dir) takes over; the watcher resumes at the next sequence, nothing lost or repeated."""
    seen = []
    errors = []
    # The watcher must find daemon B at A's address: a fixed port, which no other test's daemon
    # (all on port 0) can take while A is gone.
    port = port_outside_the_ephemeral_range()
    with AgentKeeperClient.embedded(binary=binary, port=port, data_dir=tmp_path) as client:
        with client.watch([], seen.append, on_error=errors.append) as sub:
            keeper = client.register("keeper", ttl=3600, heartbeat=False)
            client.register("before").deregister()
            client.set_policy("p", "agent:*", "call", "tool:*", "ALLOW")
            wait_for(lambda: [e.sequence for e in seen] == [1, 2, 3])
            assert client.daemon.stop() == 0  # daemon A: SIGTERM, the stream ends with UNAVAILABLE
            restarted = EmbeddedDaemon(binary=binary, port=port, data_dir=tmp_path)
            restarted.start()
            try:
                client.register("after").deregister()
                wait_for(lambda: [e.sequence for e in seen] == [1, 2, 3, 4, 5], what="resume")
                assert [e.topic for e in seen] == ["agent.registered"] * 2 + ["agent.died", "agent.registered",
                                                                             "agent.died"]
                assert sub.reconnects >= 1 and sub.active and errors == []
                assert client.get_agent(keeper.agent_id).card.name == "keeper"
                assert client.check_policy("agent:x", "call", "tool:y").allowed
            finally:
                restarted.stop()


def test_in_memory_restart_is_reported_not_silently_skipped(binary):
    """Without --data-dir a restarted daemon numbers its events from 1 again. A resuming watcher
    must not mix the two histories or skip events quietly: it asks for its last event again,
    sees that the daemon has another one under that number and ends with OutOfRange.

    (The daemon answers a from_sequence beyond its newest event by waiting, so the watcher can
    only tell once the new daemon has reached the old sequence: see the SDK report.)
    """
    seen = []
    errors = []
    port = port_outside_the_ephemeral_range()  # the same address after the restart, as above
    with AgentKeeperClient.embedded(binary=binary, port=port) as client:
        with client.watch([], seen.append, on_error=errors.append) as sub:
            client.register("a", heartbeat=False)
            client.register("b", heartbeat=False)
            wait_for(lambda: len(seen) == 2)
            client.daemon.stop()
            fresh = EmbeddedDaemon(binary=binary, port=port)
            fresh.start()
            try:
                for name in ("c", "d", "e"):  # sequences 1, 2, 3 of the new daemon
                    client.register(name, heartbeat=False)
                assert sub.wait(HANG_GUARD), "the subscription must end"
                assert [e.payload.card.name for e in seen] == ["a", "b"], "nothing from another history"
                assert len(errors) == 1 and isinstance(errors[0], OutOfRange), errors
                assert "restarted without --data-dir" in errors[0].details()
            finally:
                fresh.stop()
