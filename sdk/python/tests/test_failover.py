"""Several endpoints without a cluster: which failures move the client to the next endpoint and
send the call again, and which raise OutcomeUnknownError, checked against the daemon's exact
messages. Small in-process gRPC servers stand in for the nodes, so each answer is scripted."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Optional

import grpc
import pytest

from agentkeeper import (
    AgentKeeperClient,
    DeadlineExceeded,
    InvalidArgument,
    OutcomeUnknownDeadlineError,
    OutcomeUnknownError,
    RetryPolicy,
    Unavailable,
)
from agentkeeper._common import failed_for_good, should_retry
from agentkeeper._errors import error_for
from agentkeeper.v1 import agentkeeper_pb2 as pb
from agentkeeper.v1 import agentkeeper_pb2_grpc as stubs

from conftest import HANG_GUARD, RefusingPort, finishes

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.02)

# The daemon's words (src/cluster/mod.rs), as a client receives them.
NO_LEADER = "node 2 has known no leader for 5000 ms (no quorum reachable?): retry"
REFUSED = "the cluster refused the write (raft: proposal dropped): retry"
LEADER_CHANGED = "the leader changed (node 1 to node 3) before the write was committed; it may yet take effect"
NOT_COMMITTED = "the write was not committed in time (no quorum?); it may yet take effect"
READ_UNCONFIRMED = "the read could not be confirmed by a quorum in time: retry"
SHUTTING_DOWN = "the daemon is shutting down"
STOPPED = "the daemon stopped before answering: the call may yet take effect"
NOT_SENT_TO_LEADER = "node 2 could not reach the leader (node 1): the write was not sent; retry"
NOT_SENT = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused"
RESET = "Socket closed"

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "details, write_retried",
    [
        (NOT_SENT, True),  # never left this process
        (NO_LEADER, True),  # waited for a leader, never proposed
        (REFUSED, True),  # the leader could not propose it
        (LEADER_CHANGED, False),  # forwarded to a leader that went away: may yet commit
        (NOT_COMMITTED, False),  # proposed, not committed in time: may yet commit
        (SHUTTING_DOWN, True),  # a stopping daemon refused it before taking it
        (STOPPED, False),  # a daemon that took it stopped before answering
        (NOT_SENT_TO_LEADER, True),  # the follower could not hand it to the leader
        (RESET, False),  # the connection broke after it was sent
    ],
)
def test_unavailable_is_retried_for_writes_only_when_surely_not_carried_out(details, write_retried):
    error = error_for(UNAVAILABLE, details)
    assert should_retry("Register", UNAVAILABLE, details) is write_retried
    assert should_retry("Find", UNAVAILABLE, details), "a read is always sent again"
    assert should_retry("RenewLease", UNAVAILABLE, details), "RenewLease is idempotent given its token"
    final = failed_for_good("Register", error)
    if write_retried:
        assert final is error and not isinstance(final, OutcomeUnknownError), "not carried out: nothing unknown"
    else:
        assert isinstance(final, OutcomeUnknownError) and isinstance(final, Unavailable)
        assert final.code() == UNAVAILABLE
        assert details in final.details() and "may or may not have taken effect" in final.details()
    assert failed_for_good("Find", error) is error, "a read's outcome is never in doubt"


def test_a_write_past_its_deadline_is_outcome_unknown_and_still_a_deadline_exceeded():
    error = error_for(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    final = failed_for_good("CreateTask", error)
    assert isinstance(final, OutcomeUnknownDeadlineError)
    assert isinstance(final, DeadlineExceeded) and isinstance(final, OutcomeUnknownError)
    assert final.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not should_retry("CreateTask", grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert failed_for_good("GetTask", error) is error


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(host="a", endpoints=["b:1"]), "either endpoints= or host/port"),
        (dict(port=1, endpoints=["b:1"]), "either endpoints= or host/port"),
        (dict(endpoints="a:1,b:2"), "not one string"),
        (dict(endpoints=[]), "at least one"),
        (dict(endpoints=["a:1", "a:1"]), "more than once"),
        (dict(endpoints=["a:0"]), "not a number 1..=65535"),
        (dict(endpoints=["a:x"]), "not a number 1..=65535"),
        (dict(endpoints=[":7070"]), "no host"),
        (dict(endpoints=["::1:7070"]), "in brackets"),
        (dict(endpoints=[7070]), "host:port"),
        (dict(host="a:7071", port=7072), "already names a port"),
    ],
)
def test_endpoints_are_checked_and_exclusive_with_host_and_port(kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        AgentKeeperClient(**kwargs)


def test_a_host_that_names_its_port_is_that_address_and_a_bare_ipv6_host_is_a_host():
    for host, address in [("127.0.0.1:7071", "127.0.0.1:7071"), ("[::1]:7072", "[::1]:7072"), ("::1", "[::1]:7070")]:
        with AgentKeeperClient(host) as client:
            assert client.address == address, host


def test_endpoints_keep_their_order_and_default_to_port_7070():
    with AgentKeeperClient(endpoints=["b:7071", "a", "[::1]:7072"]) as client:
        assert client.endpoints == ["b:7071", "a:7070", "[::1]:7072"]
        assert (client.address, client.host, client.port) == ("b:7071", "b", 7071)
        assert "of 3 endpoints" in repr(client)


class ScriptedNode(stubs.RegistryServiceServicer):
    """Answers Register, Find and DeletePolicy with ``fail`` (UNAVAILABLE with that text) or
    success, and counts the calls (and each Register's request number); ``hold`` keeps a call
    unanswered until ``released``."""

    def __init__(self, name: str, fail: Optional[str] = None) -> None:
        self.name = name
        self.fail = fail
        self.calls = {"Register": 0, "Find": 0, "DeletePolicy": 0}
        self.numbers: list[tuple[Optional[str], Optional[str]]] = []
        self.hold = False
        self.released = threading.Event()

    def _answer(self, method: str, context: grpc.ServicerContext) -> None:
        self.calls[method] += 1
        if self.hold:
            self.released.wait(HANG_GUARD)
        if self.fail is not None:
            context.abort(UNAVAILABLE, self.fail)

    def Register(self, request, context):
        headers = dict(context.invocation_metadata())
        self.numbers.append((headers.get("agentkeeper-client-id"), headers.get("agentkeeper-request-seq")))
        self._answer("Register", context)
        return pb.RegisterResponse(agent_id=self.name * 32)

    def Find(self, request, context):
        self._answer("Find", context)
        return pb.FindResponse()


class ScriptedPolicies(stubs.EntitlementsServiceServicer):
    """A node's DeletePolicy: a write neither safe to repeat nor numbered."""

    def __init__(self, node: ScriptedNode) -> None:
        self.node = node

    def DeletePolicy(self, request, context):
        self.node._answer("DeletePolicy", context)
        return pb.DeletePolicyResponse()


class Nodes:
    def __init__(self) -> None:
        self.servers: list[grpc.Server] = []
        self.nodes: list[ScriptedNode] = []
        self.endpoints: list[str] = []

    def add(self, node: ScriptedNode) -> ScriptedNode:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        stubs.add_RegistryServiceServicer_to_server(node, server)
        stubs.add_EntitlementsServiceServicer_to_server(ScriptedPolicies(node), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.servers.append(server)
        self.nodes.append(node)
        self.endpoints.append(f"127.0.0.1:{port}")
        return node


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    scripted = Nodes()
    yield scripted
    for node in scripted.nodes:
        node.released.set()
    for server in scripted.servers:
        server.stop(0)


@pytest.mark.parametrize("refusal", [NO_LEADER, REFUSED])
def test_a_write_a_node_refused_before_proposing_it_is_sent_to_the_next_endpoint(nodes, refusal):
    first = nodes.add(ScriptedNode("a", fail=refusal))
    second = nodes.add(ScriptedNode("b"))
    with AgentKeeperClient(endpoints=nodes.endpoints, retry=FAST, timeout=5) as client:
        agent = client.register("w", heartbeat=False)
        assert agent.agent_id == "b" * 32
        assert (first.calls["Register"], second.calls["Register"]) == (1, 1)
        assert client.address == nodes.endpoints[1], "the client stays on the node that answered"
        client.find()
        assert (first.calls["Find"], second.calls["Find"]) == (0, 1)


@pytest.mark.parametrize("unknown", [LEADER_CHANGED, NOT_COMMITTED])
def test_a_write_that_may_yet_take_effect_raises_outcome_unknown_and_is_sent_nowhere_else(nodes, unknown):
    first = nodes.add(ScriptedNode("a", fail=unknown))
    second = nodes.add(ScriptedNode("b"))
    with AgentKeeperClient(endpoints=nodes.endpoints, retry=FAST, timeout=5) as client:
        with pytest.raises(OutcomeUnknownError, match="may yet take effect") as raised:
            client.delete_policy("p")
        assert isinstance(raised.value, Unavailable) and isinstance(raised.value, grpc.RpcError)
        assert (first.calls["DeletePolicy"], second.calls["DeletePolicy"]) == (1, 0)


@pytest.mark.parametrize("unknown", [LEADER_CHANGED, NOT_COMMITTED])
def test_a_register_that_may_yet_take_effect_is_sent_to_the_next_endpoint_under_the_same_number(nodes, unknown):
    first = nodes.add(ScriptedNode("a", fail=unknown))
    second = nodes.add(ScriptedNode("b"))
    with AgentKeeperClient(endpoints=nodes.endpoints, retry=FAST, timeout=5) as client:
        assert client.register("w", heartbeat=False).agent_id == "b" * 32
        assert (first.calls["Register"], second.calls["Register"]) == (1, 1)
        assert first.numbers == second.numbers, "the same client id and request number on the retry"
        assert first.numbers[0][0] is not None and first.numbers[0][1] == "1"


def test_a_read_answered_unavailable_moves_to_the_next_endpoint(nodes):
    first = nodes.add(ScriptedNode("a", fail=READ_UNCONFIRMED))
    second = nodes.add(ScriptedNode("b"))
    with AgentKeeperClient(endpoints=nodes.endpoints, retry=FAST, timeout=5) as client:
        assert client.find() == []
        assert (first.calls["Find"], second.calls["Find"]) == (1, 1)


def test_a_node_that_refuses_connections_is_passed_over_even_for_writes(nodes):
    live = nodes.add(ScriptedNode("b"))
    with RefusingPort() as down:
        endpoints = [f"127.0.0.1:{down}", nodes.endpoints[0]]
        with AgentKeeperClient(endpoints=endpoints, retry=FAST, timeout=5) as client:
            assert client.register("w", heartbeat=False).agent_id == "b" * 32
            assert live.calls["Register"] == 1
            assert client.address == nodes.endpoints[0]


def test_retries_round_the_ring_stay_bounded_by_the_policy(nodes):
    first = nodes.add(ScriptedNode("a", fail=READ_UNCONFIRMED))
    second = nodes.add(ScriptedNode("b", fail=READ_UNCONFIRMED))
    with AgentKeeperClient(endpoints=nodes.endpoints, retry=FAST, timeout=5) as client:
        with pytest.raises(Unavailable) as raised:
            client.find()
        assert not isinstance(raised.value, OutcomeUnknownError)
        # Four attempts, taking turns.
        assert (first.calls["Find"], second.calls["Find"]) == (2, 2)


def test_a_write_past_its_deadline_on_a_node_raises_outcome_unknown(nodes):
    slow = nodes.add(ScriptedNode("a"))
    nodes.add(ScriptedNode("b"))
    slow.hold = True  # never answers until released: only the deadline ends the call
    with AgentKeeperClient(endpoints=nodes.endpoints, retry=FAST, timeout=5) as client:
        with pytest.raises(OutcomeUnknownDeadlineError):
            finishes(lambda: client.register("w", heartbeat=False, timeout=0.2), "register(timeout=0.2)")
        assert slow.calls["Register"] == 1 and nodes.nodes[1].calls["Register"] == 0


async def test_the_asyncio_client_moves_between_endpoints_alike(nodes):
    from agentkeeper import aio

    first = nodes.add(ScriptedNode("a", fail=NO_LEADER))
    second = nodes.add(ScriptedNode("b"))
    async with aio.AgentKeeperClient(endpoints=nodes.endpoints, retry=FAST, timeout=5) as client:
        agent = await client.register("w", heartbeat=False)
        assert agent.agent_id == "b" * 32
        assert (first.calls["Register"], second.calls["Register"]) == (1, 1)
        first.fail = LEADER_CHANGED  # the client is on the second now; make that one fail too
        second.fail = LEADER_CHANGED
        with pytest.raises(OutcomeUnknownError):
            await client.delete_policy("p")
        assert (first.calls["DeletePolicy"], second.calls["DeletePolicy"]) == (0, 1)


def test_channel_options_given_replace_the_defaults_of_the_same_name_and_add_the_rest():
    from agentkeeper._common import CHANNEL_OPTIONS, PING_TIMEOUT_MS, channel_options

    merged = channel_options([("grpc.http2.ping_timeout_ms", 60_000), ("grpc.enable_retries", 0)])
    names = [name for name, _ in merged]
    assert len(names) == len(set(names)), "each option once: gRPC reads the first of two"
    assert dict(merged)["grpc.http2.ping_timeout_ms"] == 60_000
    assert dict(CHANNEL_OPTIONS)["grpc.http2.ping_timeout_ms"] == PING_TIMEOUT_MS
    assert dict(merged)["grpc.enable_retries"] == 0
    assert set(names) == set(dict(CHANNEL_OPTIONS)) | {"grpc.enable_retries"}
