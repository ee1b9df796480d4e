"""A TLS + bearer-token session against a daemon started with --tls-cert/--tls-key and
--auth-tokens: the SDK's ``credentials=`` and ``token=`` options, sync and asyncio."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agentkeeper import AgentKeeperClient, AgentKeeperError, EmbeddedDaemon, PermissionDenied
from agentkeeper.aio import AgentKeeperClient as AsyncAgentKeeperClient

ADMIN = "admin-token-0123456789abcdef"
AGENT = "agent-token-0123456789abcdef"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_daemon(binary: str, tmp_path: Path) -> Iterator[tuple[EmbeddedDaemon, bytes]]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test ca", cwd=tmp_path)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=tmp_path)
    (tmp_path / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=tmp_path)
    (tmp_path / "tokens").write_text(f"admin {ADMIN}\nagent {AGENT}\n")
    daemon = EmbeddedDaemon(
        binary=binary,
        extra_args=[
            f"--tls-cert={tmp_path / 'server.pem'}",
            f"--tls-key={tmp_path / 'server.key'}",
            f"--auth-tokens={tmp_path / 'tokens'}",
        ],
    )
    daemon.start()
    try:
        yield daemon, (tmp_path / "ca.pem").read_bytes()
    finally:
        daemon.stop()


def test_a_tls_and_token_session_registers_heartbeats_and_is_refused_what_its_role_may_not(
    tls_daemon: tuple[EmbeddedDaemon, bytes],
) -> None:
    daemon, ca = tls_daemon
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    with AgentKeeperClient(daemon.host, daemon.port, credentials=credentials, token=AGENT, timeout=10) as agent:
        agent_id = agent.register("tls-agent", tools=["web"], ttl=30, heartbeat=False).agent_id
        agent.heartbeat(agent_id)
        lease = agent.acquire_lease("job-1", agent_id, ttl=30)
        assert lease is not None and lease.token > 0
        with pytest.raises(PermissionDenied, match="needs the admin role"):
            agent.set_policy("p", "tls-agent", "read", "*", "allow")
    with AgentKeeperClient(daemon.host, daemon.port, credentials=credentials, token=ADMIN, timeout=10) as admin:
        admin.set_policy("p", "tls-agent", "read", "*", "allow")
        assert admin.get_agent(agent_id).card.name == "tls-agent"
        admin_made = admin.register("admin-made", ttl=30, heartbeat=False).agent_id
    with AgentKeeperClient(daemon.host, daemon.port, credentials=credentials, token=AGENT, timeout=10) as agent:
        with pytest.raises(PermissionDenied, match="not registered with this agent token"):
            agent.heartbeat(admin_made)
    with AgentKeeperClient(daemon.host, daemon.port, credentials=credentials, timeout=10) as anonymous:
        with pytest.raises(AgentKeeperError) as refused:
            anonymous.get_agent(agent_id)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_asyncio_client_takes_the_same_credentials_and_token(
    tls_daemon: tuple[EmbeddedDaemon, bytes],
) -> None:
    daemon, ca = tls_daemon

    async def session() -> str:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        async with AsyncAgentKeeperClient(
            daemon.host, daemon.port, credentials=credentials, token=AGENT, timeout=10
        ) as agent:
            agent_id = (await agent.register("aio-agent", ttl=30, heartbeat=False)).agent_id
            await agent.heartbeat(agent_id)
            return (await agent.get_agent(agent_id)).card.name

    assert asyncio.run(session()) == "aio-agent"
