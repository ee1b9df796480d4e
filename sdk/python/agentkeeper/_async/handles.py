"""What ``register`` and ``acquire_lease`` return: a registered agent that heartbeats in the
background, and a held lease that can renew itself in the background.

The one source of both clients: ``scripts/unasync.py`` makes ``agentkeeper/_sync/handles.py``.
A handle never keeps the process alive (its workers are daemon threads or tasks of the client)
and never raises from its background work: failures go to ``on_lost`` or the log.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Callable, Optional

from agentkeeper import _convert as cv
from agentkeeper import _rpc as rpc
from agentkeeper._common import effective_ttl, interval_for
from agentkeeper._errors import AgentKeeperError, NotFound, PermissionDenied
from agentkeeper._runtime import ASYNC_REPR_PREFIX, AsyncWorker, async_maybe_await
from agentkeeper._types import AgentInfo, Lease
from agentkeeper.v1 import agentkeeper_pb2 as pb

if TYPE_CHECKING:
    from agentkeeper._async.client import AgentKeeperClient

__all__ = ["AgentHandle", "LeaseHandle"]

log = logging.getLogger("agentkeeper")

_Timeout = Optional[float]


class AgentHandle:
    """A registered agent. Returned by ``register``.

    The client's keep-alives heartbeat it every ``ttl/2`` seconds, batched with the client's other
    agents on one keep-alive stream (unary calls against a daemon without it). As a context manager it deregisters
    on exit (an agent that is already gone is fine). If a heartbeat answers NOT_FOUND (the
    daemon declared the agent DEAD), heartbeating stops, :attr:`lost` becomes True and
    ``on_lost(handle)`` is called (a coroutine function is awaited).
    """

    def __init__(
        self,
        client: AgentKeeperClient,
        agent_id: str,
        ttl: int,
        on_lost: Optional[Callable[[AgentHandle], object]] = None,
        heartbeat: bool = True,
    ) -> None:
        self._client = client
        self._agent_id = agent_id
        self._ttl = ttl
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._closing = False
        self._lost = False
        self._interval = interval_for(ttl, 30, 0.5)
        if heartbeat:
            client._keepalives.add_agent(self)

    @property
    def agent_id(self) -> str:
        """The daemon-assigned id (32 lowercase hex characters)."""
        return self._agent_id

    @property
    def ttl(self) -> int:
        """The registration ttl in seconds (0 means the daemon's default, 30)."""
        return self._ttl

    @property
    def lost(self) -> bool:
        """True once a heartbeat was answered with NOT_FOUND."""
        return self._lost

    @property
    def heartbeating(self) -> bool:
        """True while the background heartbeat runs."""
        return self._client._keepalives.has(self)

    async def heartbeat(self, timeout: _Timeout = None) -> None:
        """Send one heartbeat now. Raises :class:`NotFound` if the agent is DEAD or unknown."""
        await self._client._unary(rpc.HEARTBEAT, pb.HeartbeatRequest(agent_id=self._agent_id), timeout)

    async def info(self, timeout: _Timeout = None) -> AgentInfo:
        """This agent as the daemon sees it (``get_agent``)."""
        return await self._client.get_agent(self._agent_id, timeout=timeout)

    async def _beat_answered(self, error: Optional[AgentKeeperError]) -> bool:
        """A background heartbeat's outcome (sent by the client's keep-alives); False once the
        agent is lost, which ends its heartbeats."""
        if error is None:
            return True
        if not isinstance(error, NotFound):
            log.warning("agentkeeper: heartbeat for %s failed: %s", self._agent_id, error)
            return True
        with self._lock:
            if self._closing:
                return False
            self._lost = True
        self._client._keepalives.remove_agent(self)
        log.warning("agentkeeper: agent %s was declared dead by the daemon", self._agent_id)
        if self._on_lost is not None:
            # On a worker of its own: a slow callback must not hold up the other agents' heartbeats.
            AsyncWorker(self._tell_lost, f"agentkeeper-lost-{self._agent_id[:8]}")
        return False

    async def _tell_lost(self, worker: AsyncWorker) -> None:
        if self._on_lost is None:
            return
        try:
            await async_maybe_await(self._on_lost(self))
        except Exception:
            log.exception("agentkeeper: on_lost callback for agent %s raised", self._agent_id)

    async def stop_heartbeat(self) -> None:
        """Stop the background heartbeat without deregistering (the agent will expire by ttl)."""
        with self._lock:
            self._closing = True
        self._client._keepalives.remove_agent(self)

    async def _shutdown(self) -> None:
        await self.stop_heartbeat()

    async def deregister(self, timeout: _Timeout = None) -> None:
        """Stop heartbeating and mark the agent DEAD now (releases its leases, leaves elections)."""
        await self.stop_heartbeat()
        await self._client._unary(rpc.DEREGISTER, pb.DeregisterRequest(agent_id=self._agent_id), timeout)

    async def __aenter__(self) -> AgentHandle:
        return self

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        try:
            await self.deregister()
        except NotFound:
            pass  # already forgotten by the daemon: nothing left to clean up

    def __repr__(self) -> str:
        return f"{ASYNC_REPR_PREFIX}AgentHandle(agent_id={self._agent_id!r}, ttl={self._ttl}, lost={self._lost})"


class LeaseHandle:
    """A lease this client holds. Returned by ``acquire_lease``.

    As a context manager it releases on exit, even on an exception (a lease that already expired
    or was released by the daemon is fine). :attr:`token` is the fencing token to pass along with
    every write the lease protects.

    With ``keep_alive=True`` the client's keep-alives renew it every ``ttl/3`` seconds, batched
    with its other leases on one keep-alive stream (unary calls against a daemon without it). The lease is
    declared :attr:`lost` and ``on_lost(handle)`` is called (once) when a renewal answers
    NOT_FOUND or PERMISSION_DENIED, or when renewals kept failing (daemon unreachable) for a
    whole ttl, so the lease may already belong to someone else. Renewal stops then: stop the
    work, the lease no longer protects it.
    """

    def __init__(
        self,
        client: AgentKeeperClient,
        lease: Lease,
        ttl: int,
        keep_alive: bool = False,
        on_lost: Optional[Callable[[LeaseHandle], object]] = None,
        *,
        requested_at: Optional[float] = None,
    ) -> None:
        self._client = client
        self._lease = lease
        self._ttl = ttl
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._closing = False
        self._lost = False
        self._released = False
        self.lost_reason = ""
        """Why the lease was declared lost ("" while it is not)."""
        # Local (monotonic) time until which the lease is surely still ours: the send time of the
        # last successful acquire/renew plus its ttl. Past it with no successful renewal, the
        # daemon may have handed the lease to someone else.
        self._valid_until = (time.monotonic() if requested_at is None else requested_at) + effective_ttl(ttl, 60)
        self._interval = interval_for(ttl, 60, 1 / 3)
        self._keeping_alive = False
        if keep_alive:
            self.start_keep_alive()

    @property
    def lease(self) -> Lease:
        """The lease as last seen (updated by :meth:`renew`)."""
        return self._lease

    @property
    def token(self) -> int:
        """The fencing token: pass it to the resource you protect and reject lower ones."""
        return self._lease.token

    @property
    def task_id(self) -> str:
        """The task id (key) the lease is on."""
        return self._lease.task_id

    @property
    def agent_id(self) -> str:
        """The holder agent's id."""
        return self._lease.holder_agent_id

    @property
    def ttl(self) -> int:
        """The ttl in seconds the lease was taken with (0: the daemon's 60)."""
        return self._ttl

    @property
    def expires_at(self) -> datetime:
        """When the lease expires (daemon clock, UTC) as of the last acquire/renew."""
        return self._lease.expires_at

    @property
    def lost(self) -> bool:
        """True once the lease is known or presumed gone (see the class docstring)."""
        return self._lost

    @property
    def keeping_alive(self) -> bool:
        """True while background renewal runs."""
        return self._client._keepalives.has(self)

    def start_keep_alive(self) -> None:
        """Renew every ``ttl/3`` seconds in the background until released (see the class docstring)."""
        if not self._keeping_alive:
            self._keeping_alive = True
            self._client._keepalives.add_lease(self)

    async def renew(self, ttl: Optional[int] = None, timeout: _Timeout = None) -> Lease:
        """Move the expiry to now + ``ttl`` (default: the lease's own ttl). Returns the new Lease.

        Raises :class:`NotFound` if the lease is gone, :class:`PermissionDenied` on a token mismatch.
        """
        request = pb.RenewLeaseRequest(
            task_id=self._lease.task_id,
            agent_id=self._lease.holder_agent_id,
            token=pb.FencingToken(value=self._lease.token),
            ttl_seconds=0 if ttl is None else cv.check_uint("ttl", ttl),
        )
        sent = time.monotonic()
        try:
            response = await self._client._unary(rpc.RENEW_LEASE, request, timeout)
        except (NotFound, PermissionDenied) as e:
            self._lost = True
            self.lost_reason = self.lost_reason or e.details()
            raise
        self._lease = cv.lease_from_pb(response.lease)
        self._valid_until = sent + effective_ttl(ttl or self._ttl, 60)
        return self._lease

    def _renewal(self) -> pb.RenewLeaseRequest:
        """The background renewal's request: for the lease's own ttl."""
        return pb.RenewLeaseRequest(
            task_id=self._lease.task_id,
            agent_id=self._lease.holder_agent_id,
            token=pb.FencingToken(value=self._lease.token),
            ttl_seconds=self._ttl,
        )

    def _renewed(self, lease: pb.Lease, sent: float) -> None:
        """A background renewal sent at ``sent`` (monotonic) went through."""
        self._lease = cv.lease_from_pb(lease)
        self._valid_until = sent + effective_ttl(self._ttl, 60)

    async def _renewal_failed(self, error: AgentKeeperError) -> bool:
        """A background renewal failed; False once the lease is lost, which ends its renewals."""
        if isinstance(error, (NotFound, PermissionDenied)):
            await self._declare_lost(error.details())
            return False
        if time.monotonic() >= self._valid_until:
            await self._declare_lost(f"no successful renewal for a whole ttl (last error: {error})")
            return False
        log.warning("agentkeeper: renewing lease %r failed: %s", self._lease.task_id, error)
        return True

    async def _declare_lost(self, reason: str) -> None:
        with self._lock:
            if self._closing:
                return
            self._lost = True
            self.lost_reason = reason
        self._client._keepalives.remove_lease(self)
        log.warning("agentkeeper: lease %r lost: %s", self._lease.task_id, reason)
        if self._on_lost is not None:
            # On a worker of its own: a slow callback must not hold up the other renewals.
            AsyncWorker(self._tell_lost, f"agentkeeper-lost-{self._lease.task_id[:16]}")

    async def _tell_lost(self, worker: AsyncWorker) -> None:
        if self._on_lost is None:
            return
        try:
            await async_maybe_await(self._on_lost(self))
        except Exception:
            log.exception("agentkeeper: on_lost callback for lease %r raised", self._lease.task_id)

    async def stop_keep_alive(self) -> None:
        """Stop background renewal (the lease will then expire by its ttl)."""
        with self._lock:
            self._closing = True
        self._client._keepalives.remove_lease(self)

    async def _shutdown(self) -> None:
        await self.stop_keep_alive()

    async def release(self, timeout: _Timeout = None) -> None:
        """Give the lease up now. Raises :class:`NotFound` if it already expired."""
        await self.stop_keep_alive()
        request = pb.ReleaseLeaseRequest(
            task_id=self._lease.task_id,
            agent_id=self._lease.holder_agent_id,
            token=pb.FencingToken(value=self._lease.token),
        )
        await self._client._unary(rpc.RELEASE_LEASE, request, timeout)
        self._released = True

    async def __aenter__(self) -> LeaseHandle:
        return self

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if self._released:
            return
        try:
            await self.release()
        except (NotFound, PermissionDenied) as e:
            self._lost = True
            log.warning("agentkeeper: lease %r was already gone on release: %s", self._lease.task_id, e)

    def __repr__(self) -> str:
        return f"{ASYNC_REPR_PREFIX}LeaseHandle(task_id={self.task_id!r}, token={self.token}, lost={self._lost})"
