"""Background heartbeats and lease renewals ride the daemon's keep-alive streams: one stream per
kind and client, one message per tick for every agent (or lease) due; against a daemon without
the streams (UNIMPLEMENTED) they fall back to the unary calls."""

from __future__ import annotations

import asyncio
import threading
from concurrent import futures

import grpc
import pytest

from agentkeeper import AgentKeeperClient, AgentStatus, RetryPolicy, aio
from agentkeeper.v1 import agentkeeper_pb2 as pb
from agentkeeper.v1 import agentkeeper_pb2_grpc as stubs

from conftest import HANG_GUARD, metric, wait_for, wait_for_async

REGISTRY_MESSAGES = 'agentkeeper_keepalive_messages_total{stream="registry"}'
REGISTRY_ITEMS = 'agentkeeper_keepalive_items_total{result="ok",stream="registry"}'
LEASE_MESSAGES = 'agentkeeper_keepalive_messages_total{stream="lease"}'
UNARY_HEARTBEATS = 'agentkeeper_rpc_total{method="Heartbeat"}'
UNARY_RENEWALS = 'agentkeeper_rpc_total{method="RenewLease"}'
UNREACHABLE = 'agentkeeper_agents{status="unreachable"}'


def test_agents_and_a_lease_stay_alive_on_the_streams_while_the_keep_alive_metric_moves(client):
    agents = [client.register(f"worker-{i}", ttl=1) for i in range(20)]
    lease = client.acquire_lease("job", agents[0].agent_id, ttl=1, keep_alive=True)
    first_expiry = lease.expires_at
    # Several seconds of 1 s ttls: alive only if the streams carry every agent's heartbeats.
    wait_for(lambda: metric(client, REGISTRY_MESSAGES) >= 8, what="eight heartbeat messages")
    wait_for(lambda: metric(client, LEASE_MESSAGES) >= 8, what="eight renewal messages")
    for agent in agents:
        assert agent.heartbeating and not agent.lost
        assert client.get_agent(agent.agent_id).status == AgentStatus.ALIVE
    assert metric(client, UNREACHABLE) == 0
    assert lease.keeping_alive and not lease.lost
    assert lease.expires_at > first_expiry, "renewals on the stream update the handle"
    # Nothing went through the unary calls, and messages carried several agents each (20 agents
    # due within every 0.5 s interval, rounds every 0.25 s: at least one round held two).
    assert metric(client, UNARY_HEARTBEATS) == 0 and metric(client, UNARY_RENEWALS) == 0
    assert metric(client, REGISTRY_ITEMS) > metric(client, REGISTRY_MESSAGES)
    lease.release()
    for agent in agents:
        agent.deregister()
        assert not agent.heartbeating


def test_an_agent_declared_dead_is_reported_lost_from_its_stream_answer(manual):
    lost = threading.Event()
    agent = manual.register("doomed", ttl=1, on_lost=lambda handle: lost.set())
    manual.advance(5)  # past 2 x ttl before a heartbeat could be sent: DEAD
    assert lost.wait(HANG_GUARD), "the stream's NOT_FOUND for the agent makes it lost"
    assert agent.lost and not agent.heartbeating
    assert metric(manual, 'agentkeeper_keepalive_items_total{result="error",stream="registry"}') >= 1
    assert metric(manual, UNARY_HEARTBEATS) == 0


async def test_async_agents_stay_alive_on_the_stream(binary):
    async with aio.AgentKeeperClient.embedded(binary=binary, timeout=10) as client:
        agents = [await client.register(f"worker-{i}", ttl=1) for i in range(5)]
        await wait_for_async(lambda: metric(client, REGISTRY_MESSAGES) >= 6, what="six heartbeat messages")
        for agent in agents:
            assert (await client.get_agent(agent.agent_id)).status == AgentStatus.ALIVE
        assert metric(client, UNARY_HEARTBEATS) == 0
        lease = await client.acquire_lease("job", agents[0].agent_id, ttl=1, keep_alive=True)
        await wait_for_async(lambda: metric(client, LEASE_MESSAGES) >= 4, what="four renewal messages")
        assert not lease.lost and metric(client, UNARY_RENEWALS) == 0
        await lease.release()
        await asyncio.gather(*(agent.deregister() for agent in agents))


class DaemonWithoutStreams(stubs.RegistryServiceServicer, stubs.LeaseServiceServicer):
    """A daemon of the v1 protocol: Register, Heartbeat and the lease calls, no KeepAlive."""

    def __init__(self) -> None:
        self.stream_attempts = 0
        self.heartbeats = 0
        self.renewals = 0

    def Register(self, request, context):
        return pb.RegisterResponse(agent_id="a" * 32)

    def Heartbeat(self, request, context):
        self.heartbeats += 1
        return pb.HeartbeatResponse()

    def Deregister(self, request, context):
        return pb.DeregisterResponse()

    def AcquireLease(self, request, context):
        lease = pb.Lease(task_id=request.task_id, holder_agent_id=request.agent_id, token=pb.FencingToken(value=7))
        return pb.AcquireLeaseResponse(acquired=True, lease=lease)

    def RenewLease(self, request, context):
        self.renewals += 1
        lease = pb.Lease(task_id=request.task_id, holder_agent_id=request.agent_id, token=request.token)
        return pb.RenewLeaseResponse(lease=lease)

    def ReleaseLease(self, request, context):
        return pb.ReleaseLeaseResponse()

    def KeepAlive(self, request_iterator, context):
        self.stream_attempts += 1
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


@pytest.fixture
def old_daemon():
    servicer = DaemonWithoutStreams()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    stubs.add_RegistryServiceServicer_to_server(servicer, server)
    stubs.add_LeaseServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


def test_against_a_daemon_without_streams_heartbeats_and_renewals_fall_back_to_unary(old_daemon):
    servicer, port = old_daemon
    fast = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02)
    with AgentKeeperClient("127.0.0.1", port, retry=fast, timeout=5) as client:
        with client.register("old", ttl=1) as agent, client.acquire_lease("k", agent.agent_id, ttl=1, keep_alive=True):
            wait_for(lambda: servicer.heartbeats >= 4 and servicer.renewals >= 4, what="unary heartbeats and renewals")
            assert agent.heartbeating and not agent.lost
        # Tried once per kind at most, then never again: the client remembers the daemon's age.
        assert 1 <= servicer.stream_attempts <= 2, servicer.stream_attempts
