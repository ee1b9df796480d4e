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


def test_should_retry_table():
    from agentkeeper._common import should_retry

    refused = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused"
    unavailable = grpc.StatusCode.UNAVAILABLE
    assert should_retry("Find", unavailable, "shutting down")
    assert should_retry("DeletePolicy", unavailable, refused), "never sent: safe to send again"
    assert not should_retry("DeletePolicy", unavailable, "shutting down"), "may have been carried out"
    assert not should_retry("Register", unavailable, "Socket closed")
    assert not should_retry("Find", grpc.StatusCode.NOT_FOUND, "agent not found")
    assert not should_retry("Find", grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


def test_non_idempotent_calls_are_retried_while_nothing_was_sent(binary):
    """Register and DeletePolicy are sent again only while the daemon cannot be reached at all."""
    port = free_port()
    daemon = EmbeddedDaemon(binary=binary, port=port)
    starter = threading.Timer(0.3, daemon.start)
    starter.start()
    try:
        policy = RetryPolicy(max_attempts=40, initial_backoff=0.05, max_backoff=0.2)
        with AgentKeeperClient("127.0.0.1", port, retry=policy) as client:
            agent = client.register("patient", heartbeat=False)  # sent while nothing listens yet
            assert [a.agent_id for a in client.find()] == [agent.agent_id], "registered exactly once"
            client.set_policy("p", "s", "a", "r", "ALLOW")
            starter.join()
            daemon.stop()
            starter = threading.Timer(0.3, daemon.start)  # in memory: a fresh state on the same port
            starter.start()
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as e:
                client.delete_policy("p")  # retried until it reaches the new daemon, which has no "p"
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            assert time.monotonic() - started >= 0.25, "it waited for the daemon to come back"
    finally:
        starter.join()
        daemon.stop()


class ScriptedLeases(stubs.LeaseServiceServicer):
    def __init__(self):
        self.renewals = 0
        self.fail_renewals = False

    def AcquireLease(self, request, context):
        return pb.AcquireLeaseResponse(acquired=True, lease=pb.Lease(
            task_id=request.task_id, holder_agent_id=request.agent_id, token=pb.FencingToken(value=7)))

    def RenewLease(self, request, context):
        self.renewals += 1
        if self.fail_renewals:
            context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")
        return pb.RenewLeaseResponse(lease=pb.Lease(
            task_id=request.task_id, holder_agent_id=request.agent_id, token=request.token))

    def ReleaseLease(self, request, context):
        return pb.ReleaseLeaseResponse()


@pytest.fixture
def scripted_leases():
    servicer = ScriptedLeases()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    stubs.add_LeaseServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


def test_keep_alive_declares_the_lease_lost_after_a_ttl_without_a_successful_renewal(scripted_leases):
    servicer, port = scripted_leases
    lost = threading.Event()
    with AgentKeeperClient("127.0.0.1", port, retry=FAST, timeout=2) as client:
        with client.acquire_lease("task:1", "a" * 32, ttl=1, keep_alive=True, on_lost=lambda h: lost.set()) as lease:
            assert lease.token == 7
            time.sleep(0.8)  # two renewals at ttl/3 succeed: still ours well past the first ttl
            assert servicer.renewals >= 2 and not lease.lost
            servicer.fail_renewals = True
            started = time.monotonic()
            assert lost.wait(3), "on_lost must fire once renewals failed for a whole ttl"
            assert 0.3 < time.monotonic() - started < 2.5
            assert lease.lost and "no successful renewal" in lease.lost_reason
            renewals = servicer.renewals
            time.sleep(0.5)
            assert servicer.renewals == renewals, "renewal stops once the lease is declared lost"


async def test_async_keep_alive_declares_the_lease_lost_too(scripted_leases):
    import asyncio

    from agentkeeper import aio

    servicer, port = scripted_leases
    servicer.fail_renewals = True
    lost = asyncio.Event()
    async with aio.AgentKeeperClient("127.0.0.1", port, retry=FAST, timeout=2) as client:
        lease = await client.acquire_lease("task:1", "a" * 32, ttl=1, keep_alive=True, on_lost=lambda h: lost.set())
        await asyncio.wait_for(lost.wait(), 3)
        assert lease.lost and "no successful renewal" in lease.lost_reason
        await lease.release()


def test_the_timeout_bounds_the_call_retries_included():
    """A patient retry policy does not outlive the call's timeout."""
    patient = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.1)
    with AgentKeeperClient("127.0.0.1", free_port(), retry=patient, timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises((Unavailable, DeadlineExceeded)):
            client.find()
        assert time.monotonic() - started < 1.0
