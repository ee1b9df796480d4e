"""The v1 SDK README's flows, run unchanged with the published agentkeeper 0.1.1 package."""

import threading
import uuid
from datetime import datetime, timezone

import grpc
import pytest
from agentkeeper import (
    AgentInfo,
    AgentKeeperClient,
    AgentStatus,
    ElectionState,
    Lease,
    PolicyEffect,
    WatchEvent,
)
from agentkeeper.v1 import agentkeeper_pb2 as pb
from agentkeeper.v1 import agentkeeper_pb2_grpc as stubs

from conftest import daemon_binary, wait_for


def test_quick_start_orchestrator_and_agent_sides(client, daemon):
    events: list[WatchEvent] = []
    sub = client.watch(["agent."], events.append)
    daemon.wait_for_watchers(1)
    task_id = f"task:{uuid.uuid4()}"
    with client.register(
        name="scraper-1",
        description="Fetches and parses web pages",
        version="1.0.0",
        tools=["browser", "http_client"],
    ) as agent:
        agents = client.find(query="fetch and parse web pages", tools=["browser"])
        assert [a.agent_id for a in agents] == [agent.agent_id]
        lease = client.acquire_lease(task_id, agents[0].agent_id, ttl=120)
        assert lease is not None
        with lease:
            assert client.acquire_lease(task_id, agent.agent_id, ttl=120).lease.token == lease.lease.token
    wait_for(lambda: [e.topic for e in events] == ["agent.registered", "agent.died"])
    died = events[1].payload
    assert isinstance(died, AgentInfo) and died.status == AgentStatus.DEAD
    assert client.get_agent(agent.agent_id).status == AgentStatus.DEAD
    sub.cancel()


def test_embedded_mode_starts_and_stops_the_daemon(tmp_path):
    with AgentKeeperClient.embedded(binary=daemon_binary()) as client:
        with client.register("my-agent", "does things", "1.0.0") as agent:
            assert client.get_agent(agent.agent_id).card.name == "my-agent"


def test_register_card_fields_and_inspect(client):
    with client.register(
        name="analyst-1",
        description="Reads data and produces summaries using GPT-4",
        version="2.1.0",
        tools=["sql_runner", "pdf_reader"],
        metadata={"team": "data", "region": "us-east"},
        ttl=30,
    ) as agent:
        info = client.get_agent(agent.agent_id)
        assert len(agent.agent_id) == 32
        assert info.card.name == "analyst-1"
        assert info.card.version == "2.1.0"
        assert info.card.tools == ["sql_runner", "pdf_reader"]
        assert info.card.metadata == {"team": "data", "region": "us-east"}
        assert info.status == AgentStatus.ALIVE
        assert isinstance(info.registered_at, datetime) and info.registered_at.tzinfo == timezone.utc
        assert abs((datetime.now(timezone.utc) - info.registered_at).total_seconds()) < 5
        assert info.last_heartbeat_at >= info.registered_at


def test_find_semantic_ranking_tool_filter_and_limit(client):
    with client.register("scraper", "Fetches and parses web pages", "1", tools=["browser", "http_client"]) as s, \
            client.register("analyst", "Runs SQL queries and summarises tables", "1", tools=["sql_runner"]), \
            client.register("reader", "Extracts text from PDF files", "1", tools=["pdf_reader", "browser"]):
        ranked = client.find(query="fetch and parse web pages", limit=5)
        assert ranked[0].agent_id == s.agent_id
        assert len(ranked) == 3
        assert {a.card.name for a in client.find(tools=["browser"])} == {"scraper", "reader"}
        assert [a.card.name for a in client.find(tools=["browser", "http_client"])] == ["scraper"]
        combined = client.find(query="scrape structured data from HTML", tools=["browser"], limit=3)
        assert {a.card.name for a in combined} == {"scraper", "reader"}
        assert len(client.find(limit=1)) == 1


def test_leases_exclusive_renew_release_and_token_mismatch(client):
    with client.register("a", "first", "1") as a, client.register("b", "second", "1") as b:
        lease = client.acquire_lease(task_id="task:process-invoice-42", agent_id=a.agent_id, ttl=120)
        assert lease is not None
        token = lease.lease.token
        assert client.acquire_lease("task:process-invoice-42", b.agent_id) is None
        renewed = lease.renew(ttl=60)
        assert renewed.token == token
        lease_stub = stubs.LeaseServiceStub(client._channel)
        with pytest.raises(grpc.RpcError) as error:
            lease_stub.RenewLease(pb.RenewLeaseRequest(
                task_id="task:process-invoice-42", agent_id=a.agent_id,
                token=pb.FencingToken(value=token + 1000)))
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        lease.release()
        second = client.acquire_lease("task:process-invoice-42", b.agent_id)
        assert second is not None and second.lease.token > token
        second.release()
        with pytest.raises(grpc.RpcError) as error:
            second.renew()
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_crashed_agent_dies_by_ttl_and_its_lease_is_released(client, daemon):
    events: list[WatchEvent] = []
    sub = client.watch(["agent.died", "lease."], events.append)
    daemon.wait_for_watchers(1)
    # A crashed agent: registered, then never heartbeats again.
    registry = stubs.RegistryServiceStub(client._channel)
    agent_id = registry.Register(pb.RegisterRequest(card=pb.AgentCard(name="crashy"), ttl_seconds=1)).agent_id
    assert client.acquire_lease("task:9", agent_id, ttl=120) is not None
    wait_for(lambda: [e.topic for e in events] == ["lease.acquired", "agent.died", "lease.released"])
    assert isinstance(events[2].payload, Lease) and events[2].payload.task_id == "task:9"
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    assert client.get_agent(agent_id).status == AgentStatus.DEAD
    sub.cancel()


def test_leader_election_failover_and_watch_election(client, daemon):
    changes: list[ElectionState] = []
    with client.register("orchestrator", "Pipeline orchestrator", "1.0.0") as orch, \
            client.register("orchestrator", "Pipeline orchestrator", "1.0.0") as standby:
        sub = client.watch_election("orchestrator:pipeline-A", changes.append)
        daemon.wait_for_watchers(1)
        state = client.campaign(group="orchestrator:pipeline-A", agent_id=orch.agent_id)
        assert state.leader_agent_id == orch.agent_id and state.term == 1
        state = client.campaign("orchestrator:pipeline-A", standby.agent_id)
        assert state.leader_agent_id == orch.agent_id, "a new candidate never displaces the leader"
        client.resign(group="orchestrator:pipeline-A", agent_id=orch.agent_id)
        state = client.campaign("orchestrator:pipeline-A", standby.agent_id)
        assert state.leader_agent_id == standby.agent_id and state.term == 2
        assert isinstance(state.elected_at, datetime)
        wait_for(lambda: [c.leader_agent_id for c in changes] == ["", orch.agent_id, standby.agent_id])
        sub.cancel()


def test_entitlements_readme_examples(client):
    client.set_policy(id="allow-orch-all", subject="agent:orchestrator", action="call",
                      resource="tool:*", effect=PolicyEffect.ALLOW)
    client.set_policy(id="deny-scraper-write", subject="agent:scraper", action="call",
                      resource="tool:write_file", effect=PolicyEffect.DENY)
    client.set_policy(id="allow-scraper-all", subject="agent:scraper", action="call",
                      resource="tool:*", effect=PolicyEffect.ALLOW)
    result = client.check_policy(subject="agent:scraper", action="call", resource="tool:write_file")
    assert result.allowed is False
    assert result.reason == 'denied by policy "deny-scraper-write"'
    assert client.check_policy("agent:orchestrator", "call", "tool:anything").allowed
    unknown = client.check_policy("agent:nobody", "call", "tool:x")
    assert (unknown.allowed, unknown.reason) == (False, "no matching policy: default deny")
    assert [p.id for p in client.list_policies()] == ["allow-orch-all", "allow-scraper-all", "deny-scraper-write"]
    assert [p.id for p in client.list_policies(subject_prefix="agent:scraper")] == [
        "allow-scraper-all", "deny-scraper-write"]
    client.delete_policy("deny-scraper-write")
    assert client.check_policy("agent:scraper", "call", "tool:write_file").allowed
    with pytest.raises(grpc.RpcError) as error:
        client.delete_policy("deny-scraper-write")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_watch_prefixes_payload_types_and_cancel(client, daemon):
    agent_events: list[WatchEvent] = []
    everything: list[WatchEvent] = []
    with client.watch(["agent."], agent_events.append), client.watch([], everything.append):
        daemon.wait_for_watchers(2)
        with client.register("w", "watched", "1") as agent:
            lease = client.acquire_lease("task:w", agent.agent_id)
            lease.release()
            client.campaign("g", agent.agent_id)
        wait_for(lambda: len(everything) == 6)
    assert [e.topic for e in agent_events] == ["agent.registered", "agent.died"]
    assert [e.topic for e in everything] == [
        "agent.registered", "lease.acquired", "lease.released", "leader.changed", "agent.died", "leader.changed"]
    sequences = [e.sequence for e in everything]
    assert sequences == list(range(sequences[0], sequences[0] + 6))
    assert isinstance(everything[0].payload, AgentInfo)
    assert isinstance(everything[1].payload, Lease)
    assert isinstance(everything[3].payload, ElectionState)
    assert everything[0].timestamp.tzinfo == timezone.utc


def test_errors_surface_as_rpc_error_with_codes(client):
    with pytest.raises(grpc.RpcError) as error:
        client.get_agent("0123456789abcdef0123456789abcdef")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        client.register(name="", description="no name", version="1")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "card.name" in error.value.details()


def test_context_manager_exit_never_throws_after_death(client):
    registry = stubs.RegistryServiceStub(client._channel)
    with client.register("short", "dies early", "1", ttl=1) as agent:
        registry.Deregister(pb.DeregisterRequest(agent_id=agent.agent_id))
    # The handle's own deregister on exit found the agent already DEAD and did not raise.
    assert client.get_agent(agent.agent_id).status == AgentStatus.DEAD
