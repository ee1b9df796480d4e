"""Registry: register (heartbeat thread, deregister on exit, on_lost), find, get_agent."""

import threading
from datetime import datetime, timezone

import grpc
import pytest

from agentkeeper import AgentCard, AgentInfo, AgentStatus, Capability, InvalidArgument, NotFound

from conftest import HANG_GUARD, wait_for


def test_register_inspect_and_deregister_on_exit(client):
    with client.register(
        name="analyst-1",
        description="Reads data and produces summaries",
        version="2.1.0",
        tools=["sql_runner", "pdf_reader"],
        metadata={"team": "data"},
        ttl=30,
        capabilities=[Capability("summarise", "short summaries"), "sql"],
    ) as agent:
        assert len(agent.agent_id) == 32 and int(agent.agent_id, 16) >= 0
        info = client.get_agent(agent.agent_id)
        assert isinstance(info, AgentInfo)
        assert info.card == AgentCard(
            name="analyst-1",
            description="Reads data and produces summaries",
            version="2.1.0",
            tools=["sql_runner", "pdf_reader"],
            metadata={"team": "data"},
            capabilities=[Capability("summarise", "short summaries"), Capability("sql", "")],
        )
        assert info.status == AgentStatus.ALIVE
        assert info.registered_at.tzinfo == timezone.utc and isinstance(info.registered_at, datetime)
        assert agent.info().agent_id == agent.agent_id
    assert client.get_agent(agent.agent_id).status == AgentStatus.DEAD


def test_v1_positional_signature(client):
    with client.register("orchestrator", "Pipeline orchestrator", "1.0.0") as orch:
        assert client.get_agent(orch.agent_id).card.version == "1.0.0"


def test_background_heartbeat_keeps_a_short_ttl_agent_alive(manual):
    with manual.register("beater", ttl=1) as agent:
        # Time moves only when the test moves it, each step shorter than the 1 s ttl, and each
        # next step waits for a background heartbeat at the new time: three steps take the agent
        # well past its ttl, which would make it UNREACHABLE without the heartbeats.
        for _ in range(3):
            now = manual.advance(0.6)
            wait_for(lambda: manual.get_agent(agent.agent_id).last_heartbeat_at == now, what="a heartbeat")
        assert manual.get_agent(agent.agent_id).status == AgentStatus.ALIVE


def test_heartbeat_recovers_an_unreachable_agent(manual):
    events = []
    with manual.watch(["agent."], events.append):
        agent = manual.register("sleepy", ttl=10, heartbeat=False)
        manual.advance(11)
        assert manual.get_agent(agent.agent_id).status == AgentStatus.UNREACHABLE
        agent.heartbeat()
        assert manual.get_agent(agent.agent_id).status == AgentStatus.ALIVE
        wait_for(lambda: [e.topic for e in events] == ["agent.registered", "agent.unreachable", "agent.recovered"])
        agent.deregister()


def test_on_lost_when_the_daemon_declares_the_agent_dead(manual):
    lost = threading.Event()
    seen = []

    def on_lost(handle):
        seen.append(handle)
        lost.set()

    with manual.register("doomed", ttl=1, on_lost=on_lost) as agent:
        manual.advance(5)  # two ttls pass at once: DEAD
        assert manual.get_agent(agent.agent_id).status == AgentStatus.DEAD
        assert lost.wait(HANG_GUARD), "on_lost not called"
        assert seen == [agent] and agent.lost
        with pytest.raises(NotFound):
            agent.heartbeat()
    # leaving the block deregisters an already-dead agent: no error


def test_deregister_twice_is_fine_and_unknown_is_not_found(client):
    agent = client.register("twice")
    agent.deregister()
    agent.deregister()
    with pytest.raises(NotFound):
        client.deregister("0" * 32)
    with pytest.raises(NotFound) as e:
        client.heartbeat("0" * 32)
    assert isinstance(e.value, grpc.RpcError) and e.value.code() == grpc.StatusCode.NOT_FOUND


def test_find_ranks_filters_by_tools_and_limits(client):
    with client.register("scraper", "Fetches and parses web pages", "1", tools=["browser", "http_client"]) as s, \
            client.register("analyst", "Runs SQL queries and summarises tables", "1", tools=["sql_runner"]) as a, \
            client.register("reader", "Extracts text from PDF files", "1", tools=["pdf_reader", "browser"]) as r:
        assert [x.agent_id for x in client.find()] == [s.agent_id, a.agent_id, r.agent_id]
        ranked = client.find(query="fetch and parse web pages", limit=5)
        assert ranked[0].agent_id == s.agent_id and len(ranked) == 3
        assert [x.card.name for x in client.find(tools=["browser"])] == ["scraper", "reader"]
        assert [x.card.name for x in client.find(tools=["browser", "http_client"])] == ["scraper"]
        assert len(client.find(limit=1)) == 1
        assert client.find(tools=["nope"]) == []
    assert client.find() == [], "dead agents are not found"


def test_get_agent_unknown_is_not_found(client):
    with pytest.raises(NotFound, match="not found"):
        client.get_agent("f" * 32)


def test_bad_registrations_are_invalid_argument_and_rpc_errors(client):
    for kwargs in [dict(name=""), dict(name="a", ttl=86401), dict(name="x" * 300), dict(name="a", version="v" * 65)]:
        with pytest.raises(InvalidArgument) as e:
            client.register(**kwargs)
        assert isinstance(e.value, grpc.RpcError)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details()
    with pytest.raises(grpc.RpcError):
        client.find(limit=-1)
