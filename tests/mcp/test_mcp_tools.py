"""The daemon's MCP tools through the Python `mcp` package's client, over Streamable HTTP (/mcp on
the HTTP port) and over stdio (`agentkeeper mcp --endpoint`): the tool list, every tool called
and its answer checked against the gRPC API's (the Python SDK), errors as tool errors carrying
the gRPC status's words, and bearer tokens with roles."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from conftest import Daemon, mcp_session, structured

from agentkeeper import AgentKeeperClient, EmbeddedDaemon, NotFound, PolicyEffect

TOOLS = {
    "find_agents", "get_agent", "acquire_lease", "renew_lease", "release_lease", "check_policy",
    "create_task", "claim_task", "complete_task", "fail_task", "get_task", "current_leader",
}
TRANSPORTS = ["http", "stdio"]


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tools_are_listed_each_with_a_description_and_a_schema_whose_fields_are_described(binary, client, transport):
    async def run():
        async with mcp_session(transport, binary, Daemon.of(client)) as session:
            return (await session.list_tools()).tools

    tools = asyncio.run(run())
    assert {t.name for t in tools} == TOOLS
    assert not {"register", "heartbeat"} & {t.name for t in tools}, "a model cannot keep a heartbeat going"
    for tool in tools:
        assert len(tool.description) > 120, tool.name
        schema = tool.inputSchema
        assert schema["type"] == "object" and schema["properties"], tool.name
        for name, field in schema["properties"].items():
            assert field.get("description"), f"{tool.name}.{name} has no description"
    acquire = next(t for t in tools if t.name == "acquire_lease")
    assert set(acquire.inputSchema["required"]) == {"key", "holder", "ttl_seconds"}
    assert "fencing token" in acquire.description


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_tool_answers_what_the_grpc_api_answers(binary, client: AgentKeeperClient, transport):
    translator = client.register("translator", "translates invoices to German", "1.2", tools=["translate"], ttl=60)
    other = client.register("crawler", "fetches web pages", tools=["fetch"], ttl=60)
    client.set_policy("p1", "agent:translator", "call", "tool:*", PolicyEffect.ALLOW)

    async def run():
        out = {}
        async with mcp_session(transport, binary, Daemon.of(client)) as s:
            out["find"] = structured(await s.call_tool("find_agents", {"query": "German invoices", "limit": 5}))
            out["find_tool"] = structured(await s.call_tool("find_agents", {"tools": ["fetch"]}))
            out["get"] = structured(await s.call_tool("get_agent", {"agent_id": translator.agent_id}))
            out["acquire"] = structured(await s.call_tool(
                "acquire_lease", {"key": "doc:42", "holder": translator.agent_id, "ttl_seconds": 30}))
            out["refused"] = structured(await s.call_tool(
                "acquire_lease", {"key": "doc:42", "holder": other.agent_id, "ttl_seconds": 30}))
            token = out["acquire"]["token"]
            out["renew"] = structured(await s.call_tool(
                "renew_lease", {"key": "doc:42", "holder": translator.agent_id, "token": token, "ttl_seconds": 90}))
            out["leases_after_renew"] = client.list_leases(prefix="doc:")
            out["release"] = structured(await s.call_tool(
                "release_lease", {"key": "doc:42", "holder": translator.agent_id, "token": token}))
            out["check"] = structured(await s.call_tool(
                "check_policy", {"subject": "agent:translator", "action": "call", "resource": "tool:x"}))
            out["check_no"] = structured(await s.call_tool(
                "check_policy", {"subject": "agent:crawler", "action": "call", "resource": "tool:x"}))
            out["created"] = structured(await s.call_tool(
                "create_task", {"type": "translate", "input": "Rechnung 7", "required_tools": ["translate"]}))
            out["claim_other"] = structured(await s.call_tool("claim_task", {"agent_id": other.agent_id}))
            out["claimed"] = structured(await s.call_tool("claim_task", {"agent_id": translator.agent_id}))
            task_id = out["claimed"]["task"]["id"]
            out["claim_lease"] = client.list_leases(prefix=task_id)
            out["completed"] = structured(await s.call_tool(
                "complete_task", {"task_id": task_id, "agent_id": translator.agent_id, "output": "Invoice 7"}))
            out["get_task"] = structured(await s.call_tool("get_task", {"task_id": task_id}))
            second = structured(await s.call_tool("create_task", {"type": "translate", "max_retries": 1}))
            claimed = structured(await s.call_tool("claim_task", {"agent_id": translator.agent_id, "wait_seconds": 1}))
            assert claimed["task"]["id"] == second["id"]
            out["failed"] = structured(await s.call_tool(
                "fail_task", {"task_id": second["id"], "agent_id": translator.agent_id, "reason": "no dictionary"}))
            out["second_id"] = second["id"]
            out["no_leader"] = structured(await s.call_tool("current_leader", {"group": "scheduler"}))
            client.campaign("scheduler", other.agent_id)
            out["leader"] = structured(await s.call_tool("current_leader", {"group": "scheduler"}))
        return out

    out = asyncio.run(run())

    assert [a["agent_id"] for a in out["find"]["agents"]] == [
        a.agent_id for a in client.find("German invoices", limit=5)
    ]
    assert out["find"]["agents"][0]["agent_id"] == translator.agent_id
    assert [a["agent_id"] for a in out["find_tool"]["agents"]] == [other.agent_id]
    info = client.get_agent(translator.agent_id)
    assert (out["get"]["name"], out["get"]["version"], out["get"]["status"], out["get"]["tools"]) == (
        info.card.name, info.card.version, info.status.value, info.card.tools)
    assert when(out["get"]["registered_at"]) == info.registered_at

    assert out["acquire"]["acquired"] is True and out["acquire"]["holder_agent_id"] == translator.agent_id
    assert out["refused"]["acquired"] is False
    assert out["refused"]["holder_agent_id"] == translator.agent_id, "a refusal shows who holds the key"
    assert out["refused"]["token"] == out["acquire"]["token"]
    [held] = out["leases_after_renew"]
    assert (held.token, held.holder_agent_id) == (out["acquire"]["token"], translator.agent_id)
    assert out["renew"]["token"] == held.token and when(out["renew"]["expires_at"]) == held.expires_at
    assert out["release"] == {"released": True, "key": "doc:42"}
    assert client.list_leases(prefix="doc:") == []

    expected = client.check_policy("agent:translator", "call", "tool:x")
    assert out["check"] == {"allowed": expected.allowed, "reason": expected.reason} and expected.allowed
    assert out["check_no"]["allowed"] is False

    assert out["created"]["status"] == "PENDING" and out["created"]["input"] == "Rechnung 7"
    assert out["claim_other"] == {"task": None, "lease": None}, "the crawler lacks the required tool"
    assert out["claimed"]["task"]["id"] == out["created"]["id"]
    [claim] = out["claim_lease"]
    assert out["claimed"]["lease"]["token"] == claim.token and claim.holder_agent_id == translator.agent_id
    assert out["completed"] == {"completed": True, "task_id": out["created"]["id"]}
    task = client.get_task(out["created"]["id"])
    assert task.status.value == "COMPLETED" and task.output == b"Invoice 7"
    assert out["get_task"]["status"] == "COMPLETED" and out["get_task"]["output"] == "Invoice 7"
    assert out["get_task"]["claimed_by_agent_id"] == task.claimed_by_agent_id == translator.agent_id

    failed = client.get_task(out["second_id"])
    assert out["failed"] == {"failed": True, "task_id": out["second_id"]}
    assert (failed.status.value, failed.failure_reason, failed.retry_count) == ("PENDING", "no dictionary", 1)

    assert out["no_leader"]["leader_agent_id"] == "" and out["no_leader"]["term"] == 0
    assert out["leader"]["leader_agent_id"] == other.agent_id and out["leader"]["term"] >= 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_failed_call_is_a_tool_error_with_the_grpc_status_words(binary, client, transport):
    unknown = "0" * 32
    with pytest.raises(NotFound) as grpc_error:
        client.get_agent(unknown)

    async def run():
        async with mcp_session(transport, binary, Daemon.of(client)) as s:
            missing = await s.call_tool("get_agent", {"agent_id": unknown})
            bad_ttl = await s.call_tool("acquire_lease", {"key": "k", "holder": unknown, "ttl_seconds": 999999})
            return missing, bad_ttl

    missing, bad_ttl = asyncio.run(run())
    assert missing.isError and missing.content[0].text.startswith("NOT_FOUND: ")
    assert str(grpc_error.value.args[0]) in missing.content[0].text
    assert bad_ttl.isError and bad_ttl.content[0].text.startswith("INVALID_ARGUMENT: "), bad_ttl.content[0].text
    assert "86400" in bad_ttl.content[0].text


ADMIN = "admin-0123456789abcdef"
READER = "reader-0123456789abcdef"
ORCHESTRATOR = "orchestrator-0123456789abcdef"


@pytest.fixture
def secured(binary, tmp_path: Path):
    """A daemon with --auth-tokens, and an admin's gRPC client of it."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin {ADMIN}\nreader {READER}\norchestrator {ORCHESTRATOR}\n")
    daemon = EmbeddedDaemon(binary=binary, extra_args=[f"--auth-tokens={tokens}"])
    daemon.start()
    try:
        with AgentKeeperClient(daemon.host, daemon.port, token=ADMIN, timeout=10) as admin:
            yield daemon, admin
    finally:
        daemon.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_with_auth_tokens_the_tools_take_the_grpc_tokens_and_roles(binary, secured, transport):
    daemon, admin = secured
    admin.register("translator", "translates", ttl=60)

    async def run():
        async with mcp_session(transport, binary, Daemon.at(daemon), token=READER) as s:
            as_reader = await s.call_tool("find_agents", {"query": "translate"})
            reader_check = await s.call_tool("check_policy", {"subject": "a", "action": "b", "resource": "c"})
        async with mcp_session(transport, binary, Daemon.at(daemon), token=ORCHESTRATOR) as s:
            as_orchestrator = await s.call_tool("find_agents", {"query": "translate"})
        return as_reader, reader_check, as_orchestrator

    as_reader, reader_check, as_orchestrator = asyncio.run(run())
    assert as_reader.isError
    assert as_reader.content[0].text == "PERMISSION_DENIED: Find needs the orchestrator or admin role; this token is reader"
    assert not reader_check.isError, "a reader may check policies, as over gRPC"
    assert [a["name"] for a in structured(as_orchestrator)["agents"]] == ["translator"]


def test_without_a_known_token_the_mcp_endpoint_answers_401(secured):
    url = Daemon.at(secured[0]).mcp_url
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    headers = {"accept": "application/json, text/event-stream"}
    none = httpx.post(url, json=initialize, headers=headers)
    wrong = httpx.post(url, json=initialize, headers={**headers, "authorization": "Bearer nope-nope-nope-nope"})
    right = httpx.post(url, json=initialize, headers={**headers, "authorization": f"Bearer {READER}"})
    assert (none.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert json.loads(right.text)["result"]["serverInfo"]["name"] == "agentkeeper"
