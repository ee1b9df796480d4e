"""A cluster of real daemons on this host for the SDK's tests: three ``agentkeeper`` processes on
raft-rs, each with its own data dir, serving clients on 127.0.0.1 (ports the OS picks) and
talking to each other on loopback addresses of their own.

Peer addresses must be known before the nodes start (each names the others), so a cluster's
nodes listen for peers on 127.P.Q.N (P.Q from this process's id, N the node id) at one port
that is free on all of them; the clients' ports come from each node's ready file.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from agentkeeper import AgentKeeperClient, EmbeddedDaemon

from conftest import port_outside_the_ephemeral_range, wait_for

# A node waits for a quorum of the others before it serves: starting three takes an election.
_START_SECONDS = 60.0


def _peer_hosts(size: int) -> list[str]:
    pid = os.getpid()
    return [f"127.{(pid >> 8) & 0xFF}.{pid & 0xFF}.{n}" for n in range(1, size + 1)]


def _port_free_on(hosts: list[str]) -> int:
    for _ in range(100):
        port = port_outside_the_ephemeral_range()
        try:
            for host in hosts:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on every one of {hosts}")


class LocalCluster:
    """Nodes 1..size, started together; ``kill``, ``stop_process``/``resume_process`` one."""

    def __init__(self, binary: str, size: int = 3) -> None:
        hosts = _peer_hosts(size)
        port = _port_free_on(hosts)
        self.peers = {n: f"{host}:{port}" for n, host in enumerate(hosts, start=1)}
        members = ",".join(f"{n}={addr}" for n, addr in self.peers.items())
        self._dirs = tempfile.TemporaryDirectory(prefix="agentkeeper-cluster-")
        self.nodes = {
            n: EmbeddedDaemon(
                binary=binary,
                data_dir=os.path.join(self._dirs.name, f"node-{n}"),
                extra_args=[f"--node-id={n}", f"--peer-addr={addr}", f"--initial-cluster={members}"],
            )
            for n, addr in self.peers.items()
        }
        self._stopped: set[int] = set()

    def start(self) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for started in [pool.submit(node.start, _START_SECONDS) for node in self.nodes.values()]:
                started.result()

    def close(self) -> None:
        """Kills every node: a graceful stop of a node whose peers still run waits out the
        daemon's 5 s drain (their consensus streams are calls that never end)."""
        for n in list(self._stopped):
            self.resume_process(n)
        for node in self.nodes.values():
            node.kill()
            node.stop()
        self._dirs.cleanup()

    def address(self, n: int) -> str:
        """Node ``n``'s client (gRPC) address."""
        return self.nodes[n].address

    def node_at(self, address: str) -> int:
        return next(n for n, node in self.nodes.items() if node.address == address)

    @property
    def running(self) -> list[int]:
        return [n for n, node in self.nodes.items() if node.running and n not in self._stopped]

    def endpoints(self, first: Optional[int] = None) -> list[str]:
        """Every node's client address, node ``first``'s first."""
        order = sorted(self.nodes, key=lambda n: (n != first, n))
        return [self.address(n) for n in order]

    def kill(self, n: int) -> None:
        """SIGKILL node ``n`` (a crash)."""
        self.nodes[n].kill()

    def stop_process(self, n: int) -> None:
        """SIGSTOP node ``n``: its sockets stay open, it answers nothing (a hung node)."""
        process = self.nodes[n].process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)
        self._stopped.add(n)

    def resume_process(self, n: int) -> None:
        process = self.nodes[n].process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
        self._stopped.discard(n)

    def leader(self) -> int:
        """Waits until every running node names the same running leader, and gives it."""
        found: list[int] = []

        def agreed() -> bool:
            seen = []
            for n in self.running:
                with AgentKeeperClient(endpoints=[self.address(n)], timeout=10) as probe:
                    seen.append(probe.cluster_status().leader)
            if seen and seen[0] in self.running and all(leader == seen[0] for leader in seen):
                found[:] = [seen[0]]
                return True
            return False

        wait_for(agreed, what="every running node names the same running leader")
        return found[0]
