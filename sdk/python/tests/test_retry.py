"""Retries with backoff on UNAVAILABLE for idempotent calls only; per-call timeouts.

A small in-process gRPC server stands in for the daemon so failures can be scripted exactly.
"""

import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest

from agentkeeper import AgentKeeperClient, DeadlineExceeded, EmbeddedDaemon, RetryPolicy, Unavailable
from agentkeeper.v1 import agentkeeper_pb2 as pb
from agentkeeper.v1 import agentkeeper_pb2_grpc as stubs

from conftest import HANG_GUARD, RefusingPort, finishes, port_outside_the_ephemeral_range, wait_for

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.02)


@dataclass(frozen=True)
class ObservedRetry(RetryPolicy):
    """A retry policy that reports each backoff delay it hands out (i.e. each failed attempt
    about to be retried) on a queue, so a test can act on "the client is retrying now"."""

    retries: "queue.Queue[float]" = field(default_factory=queue.Queue, compare=False)

    def delays(self):
        for delay in super().delays():
            self.retries.put(delay)
            yield delay


class ScriptedRegistry(stubs.RegistryServiceServicer):
    def __init__(self):
        self.calls = {"Find": 0, "Register": 0}
        self.unavailable_first = 0
        self.hold = False  # hold each call until `released`: then only a deadline ends it
        self.released = threading.Event()
        self.deadlines = []  # each call's time left, as the server saw it (None: no deadline)
        self.numbers = []  # each Register's (client id, request number) headers

    def _maybe_fail(self, name, context):
        self.calls[name] += 1
        self.deadlines.append(context.time_remaining())
        if self.hold:
            self.released.wait(HANG_GUARD)
        if self.calls[name] <= self.unavailable_first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")

    def Find(self, request, context):
        self._maybe_fail("Find", context)
        return pb.FindResponse()

    def Register(self, request, context):
        headers = dict(context.invocation_metadata())
        self.numbers.append((headers.get("agentkeeper-client-id"), headers.get("agentkeeper-request-seq")))
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
    servicer.released.set()
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


def test_register_is_retried_under_the_same_request_number_and_the_next_gets_a_new_one(scripted):
    servicer, client = scripted
    servicer.unavailable_first = 1
    client.register("once", heartbeat=False)
    assert servicer.calls["Register"] == 2, "numbered: safe to send again"
    first, retry = servicer.numbers
    assert first == retry, "a retry carries the same client id and request number"
    client_id, seq = first
    assert len(client_id) == 32 and int(client_id, 16) >= 0 and int(seq) >= 1
    client.register("next", heartbeat=False)
    assert servicer.numbers[2] == (client_id, str(int(seq) + 1))


def test_a_numbered_register_sent_twice_registers_one_agent_on_the_daemon(client):
    from agentkeeper import _rpc as rpc
    from agentkeeper._common import CLIENT_ID_HEADER, REQUEST_SEQ_HEADER

    request = pb.RegisterRequest(card=pb.AgentCard(name="twice"), ttl_seconds=60)
    numbered = ((CLIENT_ID_HEADER, "ab" * 16), (REQUEST_SEQ_HEADER, "1"))
    first = client._transport.call(rpc.REGISTER, request, 5, numbered)
    again = client._transport.call(rpc.REGISTER, request, 5, numbered)
    assert first.agent_id == again.agent_id, "the repeat is answered as the first time"
    assert len(client.find()) == 1, "one agent, not two"
    other = client._transport.call(rpc.REGISTER, request, 5, ((CLIENT_ID_HEADER, "ab" * 16), (REQUEST_SEQ_HEADER, "2")))
    assert other.agent_id != first.agent_id
    task = pb.CreateTaskRequest(type="build", input=b"x")
    numbered = ((CLIENT_ID_HEADER, "ab" * 16), (REQUEST_SEQ_HEADER, "3"))
    one = client._transport.call(rpc.CREATE_TASK, task, 5, numbered)
    two = client._transport.call(rpc.CREATE_TASK, task, 5, numbered)
    assert one.task.id == two.task.id
    assert len(client.list_tasks()) == 1


def test_per_call_timeout(scripted):
    servicer, client = scripted
    servicer.hold = True  # no answer until released: only the call's deadline can end it
    with pytest.raises(DeadlineExceeded) as e:
        finishes(lambda: client.find(timeout=0.1), "find(timeout=0.1)")
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The call's own 0.1 s went out as its deadline, not the client's 5 s. (The server reads the
    # time left against its own clock from a rounded grpc-timeout header: a hair over 0.1 s is
    # possible, anything near 5 s is not.)
    assert 0 < servicer.deadlines[-1] < 0.5, servicer.deadlines
    servicer.hold = False
    servicer.released.set()
    assert client.find(timeout=2) == []


def test_client_default_timeout(scripted):
    servicer, _ = scripted
    servicer.hold = True
    with AgentKeeperClient("127.0.0.1", _.port, timeout=0.1) as client:
        with pytest.raises(DeadlineExceeded):
            finishes(client.find, "find() with the client's 0.1 s timeout")
    # The client's 0.1 s went out as the call's deadline (a hair over it is the header's rounding).
    assert 0 < servicer.deadlines[-1] < 0.5, servicer.deadlines


class Starter:
    """Starts ``daemon`` on a thread once ``policy`` reports that the client is retrying, i.e.
    once a call has found nothing listening; ``join()`` re-raises a failed start (the fixed port
    taken by another process, say) so that the test fails saying why."""

    def __init__(self, daemon: EmbeddedDaemon, policy: ObservedRetry) -> None:
        while not policy.retries.empty():  # retries of earlier calls
            policy.retries.get_nowait()
        self._error = []
        self._thread = threading.Thread(target=self._run, args=(daemon, policy), daemon=True)
        self._thread.start()

    def _run(self, daemon: EmbeddedDaemon, policy: ObservedRetry) -> None:
        try:
            policy.retries.get(timeout=HANG_GUARD)
            daemon.start()
        except BaseException as e:
            self._error.append(e)

    def join(self) -> None:
        self._thread.join(HANG_GUARD)
        assert not self._thread.is_alive(), "the daemon did not start"
        if self._error:
            raise self._error[0]


# Patient enough for a daemon's start on a loaded machine; the call's timeout is the guard.
PATIENT = dict(max_attempts=10_000, initial_backoff=0.05, max_backoff=0.2)


def test_idempotent_calls_retry_until_the_daemon_comes_up(binary):
    # The client is made before the daemon runs, so it needs the daemon's port in advance.
    port = port_outside_the_ephemeral_range()
    daemon = EmbeddedDaemon(binary=binary, port=port)
    policy = ObservedRetry(**PATIENT)
    try:
        with AgentKeeperClient("127.0.0.1", port, retry=policy, timeout=HANG_GUARD) as client:
            starter = Starter(daemon, policy)
            assert client.find() == []  # sent while nothing listens, retried until it does
            starter.join()
    finally:
        daemon.stop()


def test_nothing_listening_is_unavailable_for_calls_and_watches():
    with RefusingPort() as port, AgentKeeperClient("127.0.0.1", port, retry=FAST, timeout=2) as client:
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
    assert should_retry("Register", unavailable, "Socket closed", numbered=True), "applied once by the daemon"
    assert not should_retry("Find", grpc.StatusCode.NOT_FOUND, "agent not found")
    assert not should_retry("Find", grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


def test_non_idempotent_calls_are_retried_while_nothing_was_sent(binary):
    """Register and DeletePolicy are sent again only while the daemon cannot be reached at all."""
    # The client is made before the daemon runs and must find it again after a restart on the
    # same address, so it needs a fixed port.
    port = port_outside_the_ephemeral_range()
    daemon = EmbeddedDaemon(binary=binary, port=port)
    policy = ObservedRetry(**PATIENT)
    try:
        with AgentKeeperClient("127.0.0.1", port, retry=policy, timeout=HANG_GUARD) as client:
            starter = Starter(daemon, policy)
            agent = client.register("patient", heartbeat=False)  # sent while nothing listens yet
            starter.join()
            assert [a.agent_id for a in client.find()] == [agent.agent_id], "registered exactly once"
            client.set_policy("p", "s", "a", "r", "ALLOW")
            daemon.stop()
            # In memory: a fresh state on the same port, started once DeletePolicy found nothing
            # listening and is about to try again.
            starter = Starter(daemon, policy)
            with pytest.raises(grpc.RpcError) as e:
                client.delete_policy("p")  # retried until it reaches the new daemon, which has no "p"
            starter.join()
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        daemon.stop()


class ScriptedLeases(stubs.LeaseServiceServicer):
    def __init__(self):
        self.renewals = 0
        self.fail_renewals = False
        self.fail_after = None  # renewals after this many fail
        self.last_success_at = None  # when the last successful renewal arrived (time.monotonic)

    def AcquireLease(self, request, context):
        return pb.AcquireLeaseResponse(acquired=True, lease=pb.Lease(
            task_id=request.task_id, holder_agent_id=request.agent_id, token=pb.FencingToken(value=7)))

    def RenewLease(self, request, context):
        self.renewals += 1
        if self.fail_renewals or (self.fail_after is not None and self.renewals > self.fail_after):
            context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")
        self.last_success_at = time.monotonic()
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
    servicer.fail_after = 3
    lost = threading.Event()
    with AgentKeeperClient("127.0.0.1", port, retry=FAST, timeout=2) as client:
        with client.acquire_lease("task:1", "a" * 32, ttl=1, keep_alive=True, on_lost=lambda h: lost.set()) as lease:
            assert lease.token == 7
            wait_for(lambda: servicer.renewals > 3, what="a failed renewal")
            assert lost.wait(HANG_GUARD), "on_lost must fire once renewals failed for a whole ttl"
            lost_at = time.monotonic()
            assert lease.lost and "no successful renewal" in lease.lost_reason
            # Not at the first failure: a whole ttl after the last success was sent (its arrival
            # here is later than that, by far less than half a second).
            assert lost_at - servicer.last_success_at > 0.5, lost_at - servicer.last_success_at
            # Nor much later: renewing every ttl/3, it is lost by the 4th failed renewal (each of
            # FAST.max_attempts attempts). A slow machine makes fewer renewals in a ttl, not more.
            failures, rest = divmod(servicer.renewals - servicer.fail_after, FAST.max_attempts)
            assert rest == 0 and 1 <= failures <= 4, (failures, rest)
            renewals = servicer.renewals
            # Real time has to pass to show that nothing more happens: three renewal intervals.
            time.sleep(1.0)
            assert servicer.renewals == renewals, "renewal stops once the lease is declared lost"


async def test_async_keep_alive_declares_the_lease_lost_too(scripted_leases):
    import asyncio

    from agentkeeper import aio

    servicer, port = scripted_leases
    servicer.fail_renewals = True
    lost = asyncio.Event()
    async with aio.AgentKeeperClient("127.0.0.1", port, retry=FAST, timeout=2) as client:
        lease = await client.acquire_lease("task:1", "a" * 32, ttl=1, keep_alive=True, on_lost=lambda h: lost.set())
        await asyncio.wait_for(lost.wait(), HANG_GUARD)
        assert lease.lost and "no successful renewal" in lease.lost_reason
        await lease.release()


def test_the_timeout_bounds_the_call_retries_included():
    """A patient retry policy does not outlive the call's timeout."""
    patient = ObservedRetry(max_attempts=1000, initial_backoff=0.05, max_backoff=0.1)
    with RefusingPort() as port, AgentKeeperClient("127.0.0.1", port, retry=patient, timeout=0.5) as client:
        with pytest.raises((Unavailable, DeadlineExceeded)):
            finishes(client.find, "find() under a 0.5 s timeout")
    delays = []
    while not patient.retries.empty():
        delays.append(patient.retries.get_nowait())
    # The client sleeps a delay only if it ends within the timeout, so what it slept (every
    # delay handed out but the last) fits in 0.5 s, however slow this machine is; the policy
    # alone would have gone on for 999 delays (about a minute).
    assert len(delays) < 999 and sum(delays[:-1]) < 0.5, delays
