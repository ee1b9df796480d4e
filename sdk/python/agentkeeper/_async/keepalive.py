"""One client's background keep-alives: the heartbeats of its agents and the renewals of its
kept-alive leases, batched per tick into one message on one keep-alive stream per kind
(``RegistryService.KeepAlive``, ``LeaseService.KeepAlive``), on the node the client talks to
now. Against a daemon without the streams (UNIMPLEMENTED) it falls back to the unary Heartbeat
and RenewLease calls, one per item, for the rest of the client's life.

The one source of both clients: ``scripts/unasync.py`` makes ``agentkeeper/_sync/keepalive.py``.
Never raises from its background work: each item's outcome goes to its handle, which decides
(lost, or a warning); a failed stream is reopened at the next tick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Optional, TypeVar, Union

import grpc

from agentkeeper import _rpc as rpc
from agentkeeper._errors import AgentKeeperError, Unavailable, Unimplemented, error_for
from agentkeeper._runtime import AsyncWorker
from agentkeeper._transport import AsyncDuplexCall
from agentkeeper.v1 import agentkeeper_pb2 as pb

if TYPE_CHECKING:
    from agentkeeper._async.client import AgentKeeperClient
    from agentkeeper._async.handles import AgentHandle, LeaseHandle

__all__ = ["KeepAlives", "TICK_MAX", "ITEMS_MAX"]

log = logging.getLogger("agentkeeper")

# What a keep-alive round sends (its agents or its leases) and gets back.
_Items = TypeVar("_Items")
_Answer = TypeVar("_Answer")

TICK_MAX = 0.5
"""Seconds between two rounds at most; shorter when an interval is short (half the shortest)."""

ITEMS_MAX = 10_000
"""Items in one message at most: the daemon's bound. More wait for the next round."""

ANSWER_TIMEOUT = 10.0
"""Seconds to wait for a message's answer when the client has no default timeout."""

_CODES = {status.value[0]: status for status in grpc.StatusCode}

_Handle = Union["AgentHandle", "LeaseHandle"]


def item_error(code: int, message: str) -> Optional[AgentKeeperError]:
    """The error a keep-alive item's result stands for (``None``: it went through)."""
    if code == 0:
        return None
    return error_for(_CODES.get(code, grpc.StatusCode.UNKNOWN), message)


def _next_due(due: float, interval: float, now: float) -> float:
    """The due time after ``due``; from ``now`` when the round came late (a long pause)."""
    return due + interval if due + interval > now else now + interval


class KeepAlives:
    """The client's agents and leases to keep alive, each with its next due time, and the one
    worker that sends them."""

    def __init__(self, client: AgentKeeperClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._agents: dict[AgentHandle, float] = {}
        self._leases: dict[LeaseHandle, float] = {}
        self._worker: Optional[AsyncWorker] = None
        self._stopped = False
        self._heartbeats: Optional[AsyncDuplexCall[pb.KeepAliveRequest, pb.KeepAliveResponse]] = None
        self._renewals: Optional[AsyncDuplexCall[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]] = None
        self._target = ""
        self._batch_id = 0
        self.unary_only = False
        """True once the daemon answered UNIMPLEMENTED: background work uses the unary calls."""

    def add_agent(self, handle: AgentHandle) -> None:
        """Heartbeat ``handle`` every ``handle._interval`` seconds from now on."""
        with self._lock:
            self._agents[handle] = time.monotonic() + handle._interval
            self._start()

    def remove_agent(self, handle: AgentHandle) -> None:
        with self._lock:
            self._agents.pop(handle, None)

    def add_lease(self, handle: LeaseHandle) -> None:
        """Renew ``handle`` every ``handle._interval`` seconds from now on."""
        with self._lock:
            self._leases[handle] = time.monotonic() + handle._interval
            self._start()

    def remove_lease(self, handle: LeaseHandle) -> None:
        with self._lock:
            self._leases.pop(handle, None)

    def has(self, handle: _Handle) -> bool:
        with self._lock:
            return handle in self._agents or handle in self._leases

    def _start(self) -> None:
        if self._worker is None and not self._stopped:
            self._worker = AsyncWorker(self._run, "agentkeeper-keepalive")
            self._client._track(self)

    async def _shutdown(self) -> None:
        with self._lock:
            self._stopped = True
            worker = self._worker
        self._close_streams()  # first: a round waiting for an answer ends at once
        if worker is not None:
            await worker.stop()
        self._close_streams()

    def _tick(self) -> float:
        with self._lock:
            intervals = [h._interval for h in self._agents] + [h._interval for h in self._leases]
        return min([TICK_MAX, *(interval / 2 for interval in intervals)])

    async def _run(self, worker: AsyncWorker) -> None:
        while await worker.sleep(self._tick()):
            now = time.monotonic()
            # Whatever falls due before the next round goes now: a little early, never late.
            horizon = now + self._tick()
            with self._lock:
                agents = [h for h, due in self._agents.items() if due <= horizon][:ITEMS_MAX]
                leases = [h for h, due in self._leases.items() if due <= horizon][:ITEMS_MAX]
                # The next due time counts from this one, not from now: sent early, a beat
                # does not shorten the period (on average it stays the interval).
                for agent in agents:
                    self._agents[agent] = _next_due(self._agents[agent], agent._interval, now)
                for lease in leases:
                    self._leases[lease] = _next_due(self._leases[lease], lease._interval, now)
            if agents:
                await self._beat(agents)
            if leases:
                await self._renew(leases)

    # ── heartbeats ──

    async def _beat(self, agents: list[AgentHandle]) -> None:
        if not self.unary_only:
            try:
                answer = await self._round(self._beat_on_stream, agents)
            except Unimplemented:
                self._fall_back()
            except AgentKeeperError as error:
                for agent in agents:
                    self._settle_agent(agent, await agent._beat_answered(error))
                return
            else:
                for agent, result in zip(agents, answer.results):
                    self._settle_agent(agent, await agent._beat_answered(item_error(result.code, result.message)))
                return
        for agent in agents:
            try:
                await agent.heartbeat()
            except AgentKeeperError as error:
                self._settle_agent(agent, await agent._beat_answered(error))

    async def _beat_on_stream(self, agents: list[AgentHandle]) -> pb.KeepAliveResponse:
        self._follow_client()
        if self._heartbeats is None:
            self._heartbeats = self._client._transport.duplex(rpc.KEEP_ALIVE)
        self._batch_id += 1
        batch_id = self._batch_id
        await self._heartbeats.write(pb.KeepAliveRequest(agent_ids=[a.agent_id for a in agents], batch_id=batch_id))
        answer = await self._heartbeats.read(self._answer_timeout())
        if answer is None or answer.batch_id != batch_id or len(answer.results) != len(agents):
            raise Unavailable("the heartbeat stream ended or answered another message")
        return answer

    def _settle_agent(self, agent: AgentHandle, keep: bool) -> None:
        if not keep:
            self.remove_agent(agent)

    # ── renewals ──

    async def _renew(self, leases: list[LeaseHandle]) -> None:
        if not self.unary_only:
            sent = time.monotonic()
            try:
                answer = await self._round(self._renew_on_stream, leases)
            except Unimplemented:
                self._fall_back()
            except AgentKeeperError as error:
                for lease in leases:
                    self._settle_lease(lease, await lease._renewal_failed(error))
                return
            else:
                for lease, result in zip(leases, answer.results):
                    failure = item_error(result.code, result.message)
                    if failure is None:
                        lease._renewed(result.lease, sent)
                    else:
                        self._settle_lease(lease, await lease._renewal_failed(failure))
                return
        for lease in leases:
            try:
                await lease.renew(lease.ttl or None)
            except AgentKeeperError as error:
                self._settle_lease(lease, await lease._renewal_failed(error))

    async def _renew_on_stream(self, leases: list[LeaseHandle]) -> pb.LeaseKeepAliveResponse:
        self._follow_client()
        if self._renewals is None:
            self._renewals = self._client._transport.duplex(rpc.LEASE_KEEP_ALIVE)
        self._batch_id += 1
        batch_id = self._batch_id
        request = pb.LeaseKeepAliveRequest(renewals=[lease._renewal() for lease in leases], batch_id=batch_id)
        await self._renewals.write(request)
        answer = await self._renewals.read(self._answer_timeout())
        if answer is None or answer.batch_id != batch_id or len(answer.results) != len(leases):
            raise Unavailable("the renewal stream ended or answered another message")
        return answer

    def _settle_lease(self, lease: LeaseHandle, keep: bool) -> None:
        if not keep:
            self.remove_lease(lease)

    # ── the streams ──

    def _answer_timeout(self) -> float:
        timeout = self._client._timeout
        return ANSWER_TIMEOUT if timeout is None else timeout

    def _follow_client(self) -> None:
        """Streams go to the node the client talks to now: reopened there when it moved."""
        target = self._client._transport.target
        if target != self._target:
            self._close_streams()
            self._target = target

    def _fall_back(self) -> None:
        log.info("agentkeeper: the daemon has no keep-alive streams; heartbeats and renewals use unary calls")
        self.unary_only = True
        self._close_streams()

    async def _round(self, send: Callable[[_Items], Awaitable[_Answer]], items: _Items) -> _Answer:
        """One message on its stream and its answer. When the stream failed UNAVAILABLE and the
        client moved to another node (its node went away or hung), the message goes there at once
        rather than at the next tick: a beat lost on a hung node must not cost an agent its TTL."""
        try:
            return await send(items)
        except AgentKeeperError as error:
            if not self._failed_and_moved(error):
                raise
        try:
            return await send(items)
        except AgentKeeperError as error:
            self._failed_and_moved(error)
            raise

    def _failed_and_moved(self, error: AgentKeeperError) -> bool:
        """Closes the streams after a failed round (not on UNIMPLEMENTED: the caller falls back
        to unary calls); True when the client moved to another node."""
        if isinstance(error, Unimplemented):
            return False
        self._stream_failed(error)
        return error.code() == grpc.StatusCode.UNAVAILABLE and self._client._transport.target != self._target

    def _stream_failed(self, error: AgentKeeperError) -> None:
        log.warning("agentkeeper: keep-alive stream failed (reopened at once on another node, else at the next tick): %s", error)
        self._close_streams()
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            self._client._move_on(self._target)

    def _close_streams(self) -> None:
        for stream in (self._heartbeats, self._renewals):
            if stream is not None:
                stream.cancel()
        self._heartbeats = None
        self._renewals = None
