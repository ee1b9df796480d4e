"""Fixtures for the MCP and A2A tests: an embedded daemon (AGENTKEEPER_BIN, else the repo's
build) with a client of its gRPC API, and MCP client sessions over Streamable HTTP and stdio."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from agentkeeper import AgentKeeperClient, EmbeddedDaemon, find_binary

# Only a guard against a hang: no test asserts that anything is fast.
HANG_GUARD = 60.0


@pytest.fixture(scope="session")
def binary() -> str:
    try:
        return find_binary(os.environ.get("AGENTKEEPER_BIN") or None)
    except FileNotFoundError as e:
        pytest.exit(f"no daemon binary: {e} (run `cargo build` or set AGENTKEEPER_BIN)", returncode=2)
        raise


@pytest.fixture
def client(binary: str) -> Iterator[AgentKeeperClient]:
    """A real-clock embedded daemon and a gRPC client of it."""
    with AgentKeeperClient.embedded(binary=binary, timeout=10) as c:
        yield c


@dataclass
class Daemon:
    """Where a daemon serves: its gRPC address (HOST:PORT) and its MCP endpoint's URL."""

    address: str
    mcp_url: str

    @staticmethod
    def of(client: AgentKeeperClient) -> "Daemon":
        assert client.daemon is not None, "an embedded daemon"
        return Daemon.at(client.daemon)

    @staticmethod
    def at(daemon: EmbeddedDaemon) -> "Daemon":
        return Daemon(daemon.address, f"{daemon.metrics_url}/mcp")


@contextlib.asynccontextmanager
async def mcp_session(
    transport: str, binary: str, daemon: Daemon, token: str | None = None
) -> AsyncIterator[ClientSession]:
    """An initialised MCP session with the daemon's tools: over Streamable HTTP at /mcp, or over
    stdio through `agentkeeper mcp --endpoint` (a subprocess, as an MCP host starts it)."""
    if transport == "http":
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(headers=headers, timeout=HANG_GUARD) as http:
            async with streamable_http_client(daemon.mcp_url, http_client=http) as (read, write, _):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    yield session
    else:
        env = dict(os.environ)
        env.pop("AGENTKEEPER_TOKEN", None)
        if token is not None:
            env["AGENTKEEPER_TOKEN"] = token
        server = StdioServerParameters(command=binary, args=["mcp", "--endpoint", daemon.address], env=env)
        async with stdio_client(server) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def structured(result: Any) -> Any:
    """A successful tool call's JSON answer."""
    assert not result.isError, result.content
    return result.structuredContent
