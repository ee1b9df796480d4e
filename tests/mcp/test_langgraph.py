"""A real LangGraph agent (langgraph's ReAct agent over langchain-mcp-adapters' tools) against the
daemon's /mcp: the README's example, run with a scripted chat model instead of an LLM (no
network). The model reads each tool's answer as a model would and decides the next call from it;
the fencing token the agent reports must be the one the gRPC API shows for the lease."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

from conftest import Daemon
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from agentkeeper import AgentKeeperClient

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Use it from an LLM agent (MCP)"


def readme_example() -> str:
    """The README section's python block: the code a reader copies."""
    text = README.read_text()
    section = text[text.index(SECTION):]
    section = section[: section.index("\n## ", len(SECTION))]
    [block] = re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)
    return block


def tool_answer(message: ToolMessage) -> Any:
    """A tool's JSON answer as the adapter hands it to the model (text content blocks)."""
    content = message.content
    if isinstance(content, list):
        content = "".join(part["text"] if isinstance(part, dict) else str(part) for part in content)
    return json.loads(content)


class ScriptedModel(BaseChatModel):
    """A chat model that follows a script: find an agent, lease the key for the best match, then
    report the token. Each step reads the previous tool's answer from the conversation."""

    calls: list[str] = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedModel":
        names = {tool.name for tool in tools}
        assert {"find_agents", "acquire_lease"} <= names, names
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        last = messages[-1]
        if not isinstance(last, ToolMessage):
            reply = self._call("find_agents", {"query": "translate invoices to German", "limit": 3})
        elif last.name == "find_agents":
            best = tool_answer(last)["agents"][0]
            reply = self._call("acquire_lease", {"key": "doc:42", "holder": best["agent_id"], "ttl_seconds": 60})
        else:
            lease = tool_answer(last)
            reply = AIMessage(content=(
                f"Lease {lease['key']} taken for agent {lease['holder_agent_id']}: "
                f"fencing token {lease['token']}, until {lease['expires_at']}."
            ))
        return ChatResult(generations=[ChatGeneration(message=reply)])

    def _call(self, name: str, args: dict[str, Any]) -> AIMessage:
        self.calls.append(name)
        return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": uuid.uuid4().hex}])


def test_the_readme_langgraph_agent_finds_an_agent_and_reports_the_leases_token(client: AgentKeeperClient):
    crawler = client.register("crawler", "fetches web pages", tools=["fetch"], ttl=60)
    client.acquire_lease("warm-up", crawler.agent_id, ttl=60)  # so doc:42's token is not the first
    translator = client.register("translator", "translates invoices to German", tools=["translate"], ttl=60)
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(readme_example(), "README.md (the LangGraph example)", "exec"), namespace)
    model = ScriptedModel()

    answer = asyncio.run(namespace["take_a_lease"](model, mcp_url=Daemon.of(client).mcp_url))
    print(answer)

    assert model.calls == ["find_agents", "acquire_lease"]
    [lease] = client.list_leases(prefix="doc:42")
    assert lease.holder_agent_id == translator.agent_id, "the best match for the query holds it"
    reported = re.search(r"fencing token (\d+)", answer)
    assert reported and int(reported.group(1)) == lease.token, answer
