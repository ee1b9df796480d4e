"""Every ```python block of README.md runs, in order, in one namespace, against a real daemon.

The README's sidecar examples connect to ``AgentKeeperClient()``; here $AGENTKEEPER_ADDRESS points
that at an embedded daemon. Time-dependent examples use their own manual-clock daemon.
"""

import contextlib
import io
import re
from pathlib import Path

from agentkeeper import AgentKeeperClient

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[tuple[int, str]]:
    text = README.read_text()
    blocks = []
    for match in BLOCK.finditer(text):
        if match.group(1).strip() == "python":
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((line, match.group(2)))
    return blocks


def test_readme_has_examples_for_every_feature():
    code = "\n".join(block for _, block in python_blocks())
    for call in ["register(", "find(", "get_agent(", "acquire_lease(", "renew(", "release()", "keep_alive=True",
                 "campaign(", "resign(", "watch_election(", "set_policy(", "check_policy(", "list_policies(",
                 "delete_policy(", "watch(", "from_sequence=", "on_error=", "embedded(", 'clock="manual"',
                 "advance(", "now()", "aio.AgentKeeperClient", "async for", "create_task(", "RetryPolicy(",
                 "on_lost=", "claim_task(", ".tasks(", "complete(", "list_tasks(", "from_url(", "add_listener(",
                 "wait=10", "for event in stream:", "endpoints=", "OutcomeUnknownError"]:
        assert call in code, f"README has no example of {call}"


def test_readme_python_blocks_run(binary, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 15
    with AgentKeeperClient.embedded(binary=binary) as daemon_client:
        monkeypatch.setenv("AGENTKEEPER_ADDRESS", daemon_client.address)
        monkeypatch.setenv("AGENTKEEPER_BIN", binary)
        namespace: dict = {"__name__": "readme"}
        out = io.StringIO()
        try:
            for line, block in blocks:
                code = compile(block, f"README.md:{line}", "exec")
                with contextlib.redirect_stdout(out):
                    exec(code, namespace)
        finally:
            client = namespace.get("client")
            if isinstance(client, AgentKeeperClient):
                client.close()
    printed = out.getvalue()
    assert "owns task:42 (fencing token" in printed
    assert 'False denied by policy "deny-scraper-write"' in printed
    assert "agent.died" in printed and "token" in printed
    assert "DEAD 2 ValueError: cannot fetch 'not a url'" in printed  # the task queue's worker loop
    assert "TaskStatus.PENDING lease expired 1" in printed
    assert "None\nTrue\n" in printed  # acquire_lease(wait=): none while held, then taken
