"""A sidecar on the same host talks to the daemon's Unix socket (``--uds PATH``) with the target
``unix:PATH``: calls, background heartbeats on the keep-alive stream, and the asyncio client."""

from __future__ import annotations

import pytest

from agentkeeper import AgentKeeperClient, AgentStatus, EmbeddedDaemon, InvalidArgument, aio

from conftest import wait_for


@pytest.fixture
def socket_daemon(binary, tmp_path):
    path = tmp_path / "agentkeeper.sock"
    daemon = EmbeddedDaemon(binary=binary, extra_args=[f"--uds={path}", "--uds-mode=0600"])
    daemon.start()
    yield daemon, f"unix:{path}"
    daemon.stop()


def metric(daemon: EmbeddedDaemon, sample: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return next((float(line.split(" ")[1]) for line in text.splitlines() if line.startswith(sample + " ")), 0.0)


def test_a_unix_target_registers_heartbeats_and_reads_through_the_socket(socket_daemon):
    daemon, target = socket_daemon
    with AgentKeeperClient(target, timeout=10) as client:
        assert (client.address, client.host, client.port) == (target, target, 0)
        agent = client.register("sidecar", tools=["x"], ttl=1)
        wait_for(
            lambda: metric(daemon, 'agentkeeper_keepalive_messages_total{stream="registry"}') >= 4,
            what="heartbeats on the keep-alive stream over the socket",
        )
        assert client.get_agent(agent.agent_id).status == AgentStatus.ALIVE
    with AgentKeeperClient(daemon.host, daemon.port, timeout=10) as over_tcp:
        assert over_tcp.get_agent(agent.agent_id).card.name == "sidecar", "one daemon behind both"


async def test_the_asyncio_client_takes_a_unix_target_too(socket_daemon):
    _, target = socket_daemon
    async with aio.AgentKeeperClient(target, timeout=10) as client:
        agent = await client.register("async-sidecar")
        assert (await client.get_agent(agent.agent_id)).status == AgentStatus.ALIVE
        await agent.deregister()


def test_a_unix_target_with_a_port_or_without_a_path_is_invalid():
    with pytest.raises(InvalidArgument, match="has no port"):
        AgentKeeperClient("unix:/tmp/x.sock", 7070)
    with pytest.raises(InvalidArgument, match="no socket path"):
        AgentKeeperClient("unix:")
    with pytest.raises(InvalidArgument, match="no socket path"):
        AgentKeeperClient(endpoints=["unix:"])
