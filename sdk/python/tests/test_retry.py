"""Retries with backoff on UNAVAILABLE for idempotent calls only; per-call timeouts.

A small in-process gRPC server stands in for the daemon so failures can be scripted exactly.
"""

import threading
import time
from concurrent import futures

import grpc
import pytest

from agentkeeper import AgentKeeperClient, DeadlineExceeded, EmbeddedDaemon, RetryPolicy, Unavailable
from agentkeeper._embedded import free_port
from agentkeeper.v1 import agentkeeper_pb2 as pb
from agentkeeper.v1 import agentkeeper_pb2_grpc as stubs

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.02)


class ScriptedRegistry(stubs.RegistryServiceServicer):
    def __init__(self):
        self.calls = {"Find": 0, "Register": 0}
        self.unavailable_first = 0
        self.delay = 0.0

    def _maybe_fail(self, name, context):
        self.calls[name] += 1
        time.sleep(self.delay)
        if self.calls[name] <= self.unavailable_first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")

    def Find(self, request, context):
        self._maybe_fail("Find", context)
        return pb.FindResponse()

    def Register(self, request, context):
        self._maybe_fail("Register", context)
        return pb.RegisterResponse(agent_id="a" * 32)


@pytest.fixture
def scripted():
    servicer = ScriptedRegistry()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    stubs.add_RegistryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = AgentKeeperClient("127.0.0.1", port, retry=FAST, timeout=5)
    yield servicer, client
    client.close()
    server.stop(0)


def test_idempotent_calls_are_retried_on_unavailable(scripted):
    servicer, client = scripted
    servicer.unavailable_first = 2
    assert client.find() == []
    assert servicer.calls["Find"] == 3


def test_retries_are_bounded(scripted):
    servicer, client = scripted
    servicer.unavailable_first = 100
    with pytest.raises(Unavailable, match="shutting down") as e:
        client.find()
    assert isinstance(e.value, grpc.RpcError)
    assert servicer.calls["Find"] == FAST.max_attempts


def test_register_is_not_retried(scripted):
    servicer, client = scripted
    servicer.unavailable_first = 1
    with pytest.raises(Unavailable):
        client.register("once", heartbeat=False)
    assert servicer.calls["Register"] == 1, "a retry could register a second agent"


def test_per_call_timeout(scripted):
    servicer, client = scripted
    servicer.delay = 0.5
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as e:
        client.find(timeout=0.1)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.45
    assert client.find(timeout=2) == []


def test_client_default_timeout(scripted):
    servicer, _ = scripted
    servicer.delay = 0.5
    with AgentKeeperClient("127.0.0.1", _.port, timeout=0.1) as client:
        with pytest.raises(DeadlineExceeded):
            client.find()


def test_idempotent_calls_retry_until_the_daemon_comes_up(binary):
    port = free_port()
    daemon = EmbeddedDaemon(binary=binary, port=port)
    starter = threading.Timer(0.3, daemon.start)
    starter.start()
    try:
        policy = RetryPolicy(max_attempts=40, initial_backoff=0.05, max_backoff=0.2)
        with AgentKeeperClient("127.0.0.1", port, retry=policy) as client:
            assert client.find() == []
    finally:
        starter.join()
        daemon.stop()


def test_nothing_listening_is_unavailable_for_calls_and_watches():
    with AgentKeeperClient("127.0.0.1", free_port(), retry=FAST, timeout=2) as client:
        with pytest.raises(Unavailable):
            client.find()
        with pytest.raises(Unavailable):
            client.watch([], print, timeout=0.3)


def test_backoff_delays_grow_and_are_capped():
    delays = list(RetryPolicy(max_attempts=6, initial_backoff=0.1, max_backoff=0.4).delays())
    assert len(delays) == 5
    assert all(0.05 <= d <= 0.4 for d in delays) and delays[-1] >= 0.2
