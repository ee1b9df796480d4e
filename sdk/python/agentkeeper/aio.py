"""The asyncio client: the same calls as :class:`agentkeeper.AgentKeeperClient`, awaitable.

::

    from agentkeeper import aio

    async with aio.AgentKeeperClient.embedded() as client:
        async with client.register("worker", tools=["browser"]) as agent:
            async with client.watch(["agent."]) as events:
                ...
                async for event in events:
                    print(event.topic)
            async for task in client.tasks(agent):   # the task queue's worker loop
                async with task:
                    await task.complete(b"done")

``register``, ``acquire_lease``, ``watch``, ``watch_election`` and ``embedded`` return objects
that can be awaited *or* used directly with ``async with``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Callable, Generic, Optional, TypeVar, Union, overload

import grpc
import grpc.aio

from agentkeeper import _convert as cv
from agentkeeper._auth import aio_bearer_interceptors
from agentkeeper._common import (
    CHANNEL_OPTIONS,
    CLAIM_POLL_SECONDS,
    DEFAULT_TIMEOUT,
    EMPTY_POLL_PAUSE,
    STREAM_RETRYABLE,
    EventCursor,
    RetryPolicy,
    deref,
    effective_ttl,
    failure_reason,
    interval_for,
    keep_claiming,
    lease_ttl,
    poll_timed_out,
    resolve_address,
    should_retry,
)
from agentkeeper._embedded import EmbeddedDaemon
from agentkeeper._errors import (
    AgentKeeperError,
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    from_rpc_error,
)
from agentkeeper._types import (
    AgentInfo,
    Capability,
    CheckResult,
    ElectionGroup,
    ElectionState,
    Lease,
    Policy,
    PolicyEffect,
    Task,
    TaskStatus,
    WatchEvent,
)
from agentkeeper.v1 import agentkeeper_pb2 as pb
from agentkeeper.v1 import agentkeeper_pb2_grpc as stubs

__all__ = [
    "AgentKeeperClient",
    "AgentHandle",
    "LeaseHandle",
    "WatchStream",
    "ElectionWatch",
    "ClaimedTask",
    "TaskWorker",
]

log = logging.getLogger("agentkeeper")

T = TypeVar("T")
E = TypeVar("E")
_Timeout = Optional[float]
_St = TypeVar("_St", bound="_AsyncStream[Any]")
Callback = Callable[[T], Union[None, Awaitable[None], Any]]


async def _maybe_await(result: Any) -> None:
    if inspect.isawaitable(result):
        await result



_Item = TypeVar("_Item")


async def _every_page(fetch: Callable[[str], Awaitable[tuple[list[_Item], str]]]) -> AsyncIterator[_Item]:
    """The items of a paged listing, lazily: ``await fetch(token)`` returns a page and the next
    token (``""`` first, and after the last page)."""
    token = ""
    while True:
        items, token = await fetch(token)
        for item in items:
            yield item
        if not token:
            return

class _Pending(Generic[T]):
    """Something that is both awaitable (``await x``) and an async context manager (``async with x``)."""

    def __init__(self, factory: Callable[[], Awaitable[T]], none_error: Optional[Callable[[], Exception]] = None):
        self._factory = factory
        self._none_error = none_error
        self._task: Optional[asyncio.Future[T]] = None
        self._value: Any = None

    def _get(self) -> asyncio.Future[T]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._factory())
        return self._task

    def __await__(self) -> Any:
        return self._get().__await__()

    async def __aenter__(self) -> T:
        value = await self._get()
        if value is None:
            raise (self._none_error() if self._none_error else FailedPrecondition("nothing to enter"))
        self._value = value
        entered: T = await value.__aenter__()  # type: ignore[attr-defined]
        return entered

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> Optional[bool]:
        result: Optional[bool] = await self._value.__aexit__(exc_type, exc, tb)
        return result


async def _stop_task(task: Optional[asyncio.Task[Any]]) -> None:
    if task is None or task.done() or task is asyncio.current_task():
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass


# ── handles ──────────────────────────────────────────────────────────────────────────────────────


class AgentHandle:
    """A registered agent (asyncio). Heartbeats every ``ttl/2`` s in a background task;
    ``async with`` deregisters on exit; ``on_lost(handle)`` (sync or async) when a heartbeat
    answers NOT_FOUND."""

    def __init__(
        self,
        client: AgentKeeperClient,
        agent_id: str,
        ttl: int,
        on_lost: Optional[Callback[AgentHandle]] = None,
        heartbeat: bool = True,
    ) -> None:
        self._client = client
        self._agent_id = agent_id
        self._ttl = ttl
        self._on_lost = on_lost
        self._closing = False
        self._lost = False
        self._task: Optional[asyncio.Task[None]] = None
        if heartbeat:
            self._task = asyncio.ensure_future(self._loop(interval_for(ttl, 30, 0.5)))
            client._track(self)

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

    async def heartbeat(self, timeout: _Timeout = None) -> None:
        """Send one heartbeat now (:class:`NotFound` if the agent is DEAD or unknown)."""
        await self._client._unary("registry", "Heartbeat", pb.HeartbeatRequest(agent_id=self._agent_id), timeout)

    async def info(self, timeout: _Timeout = None) -> AgentInfo:
        """This agent as the daemon sees it (``get_agent``)."""
        return await self._client.get_agent(self._agent_id, timeout=timeout)

    async def _loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.heartbeat()
            except NotFound:
                if self._closing:
                    return
                self._lost = True
                log.warning("agentkeeper: agent %s was declared dead by the daemon", self._agent_id)
                if self._on_lost is not None:
                    try:
                        await _maybe_await(self._on_lost(self))
                    except Exception:
                        log.exception("agentkeeper: on_lost callback for agent %s raised", self._agent_id)
                return
            except AgentKeeperError as e:
                log.warning("agentkeeper: heartbeat for %s failed: %s", self._agent_id, e)

    async def stop_heartbeat(self) -> None:
        """Stop heartbeating without deregistering."""
        self._closing = True
        await _stop_task(self._task)

    async def deregister(self, timeout: _Timeout = None) -> None:
        """Stop heartbeating and mark the agent DEAD now."""
        await self.stop_heartbeat()
        await self._client._unary(
            "registry", "Deregister", pb.DeregisterRequest(agent_id=self._agent_id), timeout
        )

    async def __aenter__(self) -> AgentHandle:
        return self

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        try:
            await self.deregister()
        except NotFound:
            pass

    def __repr__(self) -> str:
        return f"aio.AgentHandle(agent_id={self._agent_id!r}, ttl={self._ttl}, lost={self._lost})"


class LeaseHandle:
    """A held lease (asyncio). ``async with`` releases on exit; :attr:`token` is the fencing token.

    ``keep_alive=True`` renews every ``ttl/3`` s in a background task; ``on_lost(handle)`` (sync
    or async) is called once when a renewal answers NOT_FOUND or PERMISSION_DENIED, or when
    renewals kept failing for a whole ttl (the lease may belong to someone else by now).
    """

    def __init__(
        self,
        client: AgentKeeperClient,
        lease: Lease,
        ttl: int,
        keep_alive: bool = False,
        on_lost: Optional[Callback[LeaseHandle]] = None,
        *,
        requested_at: Optional[float] = None,
    ) -> None:
        self._client = client
        self._lease = lease
        self._ttl = ttl
        self._on_lost = on_lost
        self._closing = False
        self._lost = False
        self._released = False
        self.lost_reason = ""
        """Why the lease was declared lost ("" while it is not)."""
        self._valid_until = (time.monotonic() if requested_at is None else requested_at) + effective_ttl(ttl, 60)
        self._task: Optional[asyncio.Task[None]] = None
        if keep_alive:
            self._task = asyncio.ensure_future(self._loop(interval_for(ttl, 60, 1 / 3)))
            client._track(self)

    @property
    def lease(self) -> Lease:
        """The lease as last seen (updated by :meth:`renew`)."""
        return self._lease

    @property
    def token(self) -> int:
        """The fencing token."""
        return self._lease.token

    @property
    def task_id(self) -> str:
        """The task id the lease is on."""
        return self._lease.task_id

    @property
    def agent_id(self) -> str:
        """The holder agent's id."""
        return self._lease.holder_agent_id

    @property
    def expires_at(self) -> datetime:
        """When the lease expires (daemon clock, UTC) as of the last acquire/renew."""
        return self._lease.expires_at

    @property
    def lost(self) -> bool:
        """True once the lease is known or presumed gone (see the class docstring)."""
        return self._lost

    async def renew(self, ttl: Optional[int] = None, timeout: _Timeout = None) -> Lease:
        """Move the expiry to now + ``ttl`` (default: the lease's own ttl)."""
        request = pb.RenewLeaseRequest(
            task_id=self._lease.task_id,
            agent_id=self._lease.holder_agent_id,
            token=pb.FencingToken(value=self._lease.token),
            ttl_seconds=0 if ttl is None else cv.check_uint("ttl", ttl),
        )
        sent = time.monotonic()
        try:
            response = await self._client._unary("lease", "RenewLease", request, timeout)
        except (NotFound, PermissionDenied) as e:
            self._lost = True
            self.lost_reason = self.lost_reason or e.details()
            raise
        self._lease = cv.lease_from_pb(response.lease)
        self._valid_until = sent + effective_ttl(ttl or self._ttl, 60)
        return self._lease

    async def _loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew(self._ttl or None)
            except (NotFound, PermissionDenied) as e:
                await self._declare_lost(e.details())
                return
            except AgentKeeperError as e:
                if time.monotonic() >= self._valid_until:
                    await self._declare_lost(f"no successful renewal for a whole ttl (last error: {e})")
                    return
                log.warning("agentkeeper: renewing lease %r failed: %s", self._lease.task_id, e)

    async def _declare_lost(self, reason: str) -> None:
        if self._closing:
            return
        self._lost = True
        self.lost_reason = reason
        log.warning("agentkeeper: lease %r lost: %s", self._lease.task_id, reason)
        if self._on_lost is not None:
            try:
                await _maybe_await(self._on_lost(self))
            except Exception:
                log.exception("agentkeeper: on_lost callback for lease %r raised", self._lease.task_id)

    async def stop_keep_alive(self) -> None:
        """Stop background renewal (the lease will then expire by its ttl)."""
        self._closing = True
        await _stop_task(self._task)

    async def release(self, timeout: _Timeout = None) -> None:
        """Give the lease up now (:class:`NotFound` if it already expired)."""
        await self.stop_keep_alive()
        request = pb.ReleaseLeaseRequest(
            task_id=self._lease.task_id,
            agent_id=self._lease.holder_agent_id,
            token=pb.FencingToken(value=self._lease.token),
        )
        await self._client._unary("lease", "ReleaseLease", request, timeout)
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
        except (NotFound, PermissionDenied):
            self._lost = True

    def __repr__(self) -> str:
        return f"aio.LeaseHandle(task_id={self.task_id!r}, token={self.token}, lost={self._lost})"


_END = object()


class _AsyncStream(Generic[E]):
    """A server stream that is reopened when it drops. Either calls ``callback`` for each item
    (from a background task) or is consumed with ``async for``."""

    _kind = "watch"

    def __init__(
        self,
        client: AgentKeeperClient,
        callback: Optional[Callback[E]],
        on_error: Optional[Callback[AgentKeeperError]],
        timeout: _Timeout,
        queue_max: int = 1024,
    ) -> None:
        self._client = client
        self._callback = callback
        self._on_error = on_error
        self._timeout = timeout
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_max)
        self._channel: Optional[grpc.aio.Channel] = None
        self._call: Any = None
        self._task: Optional[asyncio.Task[None]] = None
        self._ready: Optional[asyncio.Event] = None
        self._startup_error: Optional[AgentKeeperError] = None
        self._drop_requested = False
        self._cancelled = False
        self._finished = False
        self.error: Optional[AgentKeeperError] = None
        """The error that ended the stream (OUT_OF_RANGE, RESOURCE_EXHAUSTED, ...), if any."""
        self.reconnects = 0

    # subclass hooks
    def _open(self) -> Any:
        raise NotImplementedError

    def _accept(self, message: Any) -> Optional[E]:
        raise NotImplementedError

    async def start(self: _St) -> _St:
        """Open the stream and wait until the daemon has subscribed us (idempotent)."""
        if self._task is not None:
            return self
        self._ready = asyncio.Event()
        self._channel = self._client._new_channel(own_connection=True)
        self._task = asyncio.ensure_future(self._pump())
        self._client._track(self)
        wait = self._client._timeout if self._timeout is None else self._timeout
        try:
            await asyncio.wait_for(self._ready.wait(), wait)
        except asyncio.TimeoutError:
            await self.cancel()
            raise Unavailable(f"{self._kind} stream did not open within {wait}s") from None
        if self._startup_error is not None:
            await self.cancel()
            raise self._startup_error
        return self

    def __await__(self) -> Any:
        return self.start().__await__()

    async def _pump(self) -> None:
        assert self._ready is not None
        delay = 0.0
        try:
            while not self._cancelled:
                error: Optional[AgentKeeperError] = None
                call = None
                try:
                    call = self._open()
                    self._call = call
                    await call.initial_metadata()
                    if not call.done():
                        self._ready.set()
                    while True:
                        message = await call.read()
                        if message is grpc.aio.EOF:
                            break
                        self._ready.set()
                        item = self._accept(message)
                        if item is not None:
                            await self._emit(item)
                            delay = 0.0
                except grpc.RpcError as e:  # also an AgentKeeperError raised by _accept
                    error = from_rpc_error(e)
                    if call is not None:
                        call.cancel()  # no-op when the stream already ended
                except asyncio.CancelledError:
                    call = self._call
                    if self._cancelled or call is None or not call.cancelled() or _being_cancelled():
                        raise
                    error = Cancelled("watch call cancelled")  # the call, not this task: a drop
                finally:
                    self._call = None
                if self._cancelled:
                    break
                dropped_on_purpose, self._drop_requested = self._drop_requested, False
                if error is not None and error.code() not in STREAM_RETRYABLE:
                    if self._reopen_after(error):
                        continue
                    if not self._ready.is_set():
                        self._startup_error = error
                        self._ready.set()
                        return
                    await self._fail(error)
                    return
                self.reconnects += 1
                self._warn_if_no_resume_point()
                if dropped_on_purpose:
                    continue
                delay = self._client._retry.next_delay(delay)
                log.info("agentkeeper: %s stream dropped (%s); reopening in %.2fs", self._kind, error, delay)
                await asyncio.sleep(delay)
        finally:
            self._finished = True
            if self._callback is None:
                self._put_nowait_end()
            if self._channel is not None and not self._cancelled:
                await self._channel.close()

    def _warn_if_no_resume_point(self) -> None:
        """Election watches restart from the current state; nothing to resume."""

    def _reopen_after(self, error: AgentKeeperError) -> bool:
        """Whether a stream that ended with ``error`` should be reopened at once after all."""
        return False

    def _put_nowait_end(self) -> None:
        try:
            self._queue.put_nowait(_END)
        except asyncio.QueueFull:
            pass  # the consumer sees _finished once it drains the queue

    async def _emit(self, item: E) -> None:
        if self._callback is None:
            await self._queue.put(item)
            return
        try:
            await _maybe_await(self._callback(item))
        except Exception:
            log.exception("agentkeeper: %s callback raised", self._kind)

    async def _fail(self, error: AgentKeeperError) -> None:
        self.error = error
        if self._on_error is not None:
            try:
                await _maybe_await(self._on_error(error))
            except Exception:
                log.exception("agentkeeper: on_error callback raised")
        elif self._callback is not None:
            log.error("agentkeeper: %s stream ended: %s (pass on_error= to handle this)", self._kind, error)
        # iterator mode without on_error: __anext__ raises self.error

    @property
    def active(self) -> bool:
        """True while items may still arrive (started, not cancelled, not ended by an error)."""
        return self._task is not None and not self._finished and not self._cancelled

    async def cancel(self) -> None:
        """Stop the stream. Safe to call more than once."""
        self._cancelled = True
        call = self._call
        if call is not None:
            call.cancel()
        await _stop_task(self._task)
        self._finished = True
        if self._callback is None:
            self._put_nowait_end()
        if self._channel is not None:
            await self._channel.close()

    aclose = cancel

    async def wait(self) -> None:
        """Until the stream ends (cancelled or failed)."""
        if self._task is not None:
            try:
                await asyncio.shield(self._task)
            except (asyncio.CancelledError, Exception):
                pass

    def _force_reconnect(self) -> None:
        """Test hook: cancel the underlying gRPC call as if the connection dropped."""
        call = self._call
        if call is None:
            return
        self._drop_requested = True
        call.cancel()

    def __aiter__(self) -> AsyncIterator[E]:
        if self._callback is not None:
            raise TypeError("this stream delivers to its callback; call watch() without one to iterate")
        return self

    async def __anext__(self) -> E:
        await self.start()
        if self._finished and self._queue.empty():
            return self._end()
        item = await self._queue.get()
        if item is _END:
            return self._end()
        result: E = item
        return result

    def _end(self) -> E:
        self._put_nowait_end()
        if self.error is not None and self._on_error is None and not self._cancelled:
            raise self.error
        raise StopAsyncIteration

    async def __aenter__(self: _St) -> _St:
        return await self.start()

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.cancel()


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


class WatchStream(_AsyncStream[WatchEvent]):
    """Events from :meth:`AgentKeeperClient.watch`, exactly once and in order across reconnects;
    ends with :class:`~agentkeeper.OutOfRange` when the daemon cannot resume where it stopped."""

    def __init__(
        self,
        client: AgentKeeperClient,
        topics: list[str],
        callback: Optional[Callback[WatchEvent]],
        on_error: Optional[Callback[AgentKeeperError]],
        from_sequence: int,
        timeout: _Timeout,
    ) -> None:
        super().__init__(client, callback, on_error, timeout)
        self.topics = topics
        self._cursor = EventCursor(from_sequence)

    @property
    def last_sequence(self) -> int:
        """Sequence of the last event handed out (0: none yet)."""
        return self._cursor.last_sequence

    def _open(self) -> Any:
        assert self._channel is not None
        request = pb.WatchRequest(topics=self.topics, from_sequence=self._cursor.request_from())
        return stubs.RegistryServiceStub(self._channel).Watch(request)

    def _warn_if_no_resume_point(self) -> None:
        if not self._cursor.has_resume_point:
            log.warning(
                "agentkeeper: watch stream dropped before its first event; events published while "
                "it was down are not replayed (pass from_sequence= to resume from a known point)"
            )

    def _reopen_after(self, error: AgentKeeperError) -> bool:
        return error.code() == grpc.StatusCode.OUT_OF_RANGE and self._cursor.reopen_after_out_of_range()

    def _accept(self, message: Any) -> Optional[WatchEvent]:
        at = message.occurred_at
        if not self._cursor.accept(
            int(message.sequence_number), message.topic, at.seconds, at.nanos, message.payload.type_url
        ):
            return None
        return cv.watch_event_from_pb(message)


class ElectionWatch(_AsyncStream[ElectionState]):
    """States from :meth:`AgentKeeperClient.watch_election`: the current one, then each change."""

    _kind = "election watch"

    def __init__(
        self,
        client: AgentKeeperClient,
        group: str,
        callback: Optional[Callback[ElectionState]],
        on_error: Optional[Callback[AgentKeeperError]],
        timeout: _Timeout,
    ) -> None:
        super().__init__(client, callback, on_error, timeout)
        self.group = group
        self.last_state: Optional[ElectionState] = None

    def _open(self) -> Any:
        assert self._channel is not None
        return stubs.ElectionServiceStub(self._channel).WatchElection(pb.WatchElectionRequest(group=self.group))

    def _accept(self, message: Any) -> Optional[ElectionState]:
        state = cv.election_event_state(message)
        if state is None:
            return None
        last = self.last_state
        if last is not None and (last.term, last.leader_agent_id) == (state.term, state.leader_agent_id):
            return None
        self.last_state = state
        return state


# ── tasks ────────────────────────────────────────────────────────────────────────────────────────


class ClaimedTask(Task):
    """A task this client claimed for an agent (asyncio; see the blocking
    :class:`agentkeeper.ClaimedTask`): the :class:`~agentkeeper.Task` fields as claimed, the claim
    :attr:`lease`, and ``await task.complete(output)`` / ``await task.fail(reason)`` /
    ``await task.renew()`` bound to the client and the claiming agent. :meth:`keep_alive` renews
    in a background task until the task is finished.

    ``async with task:`` fails the task with the error's text if the block raises (the error
    propagates unless :attr:`raise_errors` is False, as in :meth:`AgentKeeperClient.tasks` by
    default: then it is logged and swallowed), and completes it with empty output if the block
    ends without finishing it.
    """

    _client: AgentKeeperClient
    _handle: LeaseHandle
    _finished: str
    raise_errors: bool

    @classmethod
    def _bind(cls, client: AgentKeeperClient, task: Task, lease: Lease, requested_at: float) -> ClaimedTask:
        claimed = cls(**{f.name: getattr(task, f.name) for f in dataclasses.fields(Task)})
        claimed._client = client
        claimed._handle = LeaseHandle(client, lease, lease_ttl(lease), requested_at=requested_at)
        claimed._finished = ""
        claimed.raise_errors = True
        return claimed

    @property
    def lease(self) -> Lease:
        """The claim lease (on the task's id, held by the claiming agent) as last seen."""
        return self._handle.lease

    @property
    def token(self) -> int:
        """The claim lease's fencing token."""
        return self._handle.token

    @property
    def agent_id(self) -> str:
        """The claiming agent's id."""
        return self._handle.agent_id

    @property
    def ttl(self) -> int:
        """The claim lease's ttl in seconds, as claimed: the task's ``ttl`` (renewals keep it unless
        given another)."""
        return self._handle._ttl

    @property
    def finished(self) -> bool:
        """True once :meth:`complete` or :meth:`fail` succeeded through this object."""
        return bool(self._finished)

    @property
    def lease_lost(self) -> bool:
        """True once a renewal found the claim gone."""
        return self._handle.lost

    async def complete(self, output: bytes = b"", timeout: _Timeout = None) -> None:
        """Mark the task COMPLETED with ``output`` (:class:`FailedPrecondition` if the claim is gone)."""
        await self._finish("completed", self._client.complete_task, output, timeout)

    async def fail(self, reason: str = "", timeout: _Timeout = None) -> None:
        """Record a failure: PENDING again while retries remain, else DEAD."""
        await self._finish("failed", self._client.fail_task, reason, timeout)

    async def _finish(self, outcome: str, call: Callable[..., Awaitable[None]], value: Any, timeout: _Timeout) -> None:
        try:
            await call(self.id, self.agent_id, value, timeout=timeout)
        except (NotFound, FailedPrecondition):
            await self._handle.stop_keep_alive()
            raise
        self._finished = outcome
        await self._handle.stop_keep_alive()

    async def renew(self, ttl: Optional[int] = None, timeout: _Timeout = None) -> Lease:
        """Push the claim lease's expiry to now + ``ttl`` (default: the task's ttl)."""
        return await self._handle.renew(ttl, timeout)

    def keep_alive(self, on_lost: Optional[Callback[ClaimedTask]] = None) -> ClaimedTask:
        """Renew the claim lease every ttl/3 s in a background task until the task is finished;
        ``on_lost(task)`` (sync or async) if a renewal finds the claim gone. Returns the task."""
        if self._finished or self._handle._task is not None:
            return self

        async def lost(handle: LeaseHandle) -> None:
            if on_lost is not None:
                await _maybe_await(on_lost(self))

        old = self._handle
        self._handle = LeaseHandle(self._client, old.lease, old._ttl, keep_alive=True, on_lost=lost)
        self._handle._valid_until = old._valid_until  # as of the claim or the last renewal
        return self

    async def _abandon(self, reason: str) -> None:
        try:
            if not self._finished:
                await self.fail(reason)
        except AgentKeeperError as e:
            log.warning("agentkeeper: could not fail task %s (%s): %s", self.id, reason, e)
        finally:
            await self._handle.stop_keep_alive()

    async def __aenter__(self) -> ClaimedTask:
        return self

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> bool:
        if exc is None:
            if not self._finished:
                try:
                    await self.complete()
                except AgentKeeperError as e:
                    if self.raise_errors:
                        raise
                    log.warning("agentkeeper: completing task %s at the end of its block failed: %s", self.id, e)
            return False
        if not self._finished:
            await self._abandon(failure_reason(exc))
        if isinstance(exc, Exception) and not self.raise_errors:
            log.error("agentkeeper: task %s (%s) raised; it was failed", self.id, self.type, exc_info=exc)
            return True
        return False


class TaskWorker:
    """Claims tasks for one agent, one at a time: ``async for task in client.tasks(agent_id)``
    (asyncio; the loop is documented at :meth:`AgentKeeperClient.tasks`).

    ``async with client.tasks(...) as worker:`` stops it on exit and, if the block raised, fails
    the task in hand with the error's text. :meth:`stop` ends the loop after the current task; a
    claim waiting for a task is cancelled.
    """

    def __init__(
        self,
        client: AgentKeeperClient,
        agent_id: str,
        tools: Optional[list[str]],
        *,
        raise_errors: bool,
        keep_alive: bool,
        idle_timeout: Optional[float],
        max_tasks: Optional[int],
    ) -> None:
        self._client = client
        self.agent_id = agent_id
        self._tools = tools
        self.raise_errors = raise_errors
        self.keep_alive = keep_alive
        self.idle_timeout = idle_timeout
        self.max_tasks = max_tasks
        self.claimed = 0
        """How many tasks this worker has handed out so far."""
        self._stopped = False
        self._call: Any = None
        self._current: Optional[ClaimedTask] = None
        self._entered = False
        self._loops: list[Any] = []  # strongly inside `async with`, else weakly (see the blocking TaskWorker)

    def __aiter__(self) -> AsyncIterator[ClaimedTask]:
        loop = self._run()
        self._loops = [r for r in self._loops if deref(r) is not None]
        self._loops.append(loop if self._entered else weakref.ref(loop))
        return loop

    def _set_call(self, call: Any) -> None:
        self._call = call
        if call is not None and self._stopped:
            call.cancel()

    def stop(self) -> None:
        """End the loop: no further task is claimed; a claim waiting for one is cancelled."""
        self._stopped = True
        call = self._call
        if call is not None:
            call.cancel()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopped

    async def _run(self) -> AsyncIterator[ClaimedTask]:
        client = self._client
        if self._tools is not None:
            cv.check_card_tools(self.agent_id, self._tools, await client.get_agent(self.agent_id))
        idle_since = time.monotonic()
        backoff = 0.0
        current: Optional[ClaimedTask] = None
        try:
            while not self._stopped:
                if self.max_tasks is not None and self.claimed >= self.max_tasks:
                    return
                wait: Optional[float] = None
                if self.idle_timeout is not None:
                    wait = self.idle_timeout - (time.monotonic() - idle_since)
                    if wait <= 0:
                        return
                try:
                    task = await client._claim(self.agent_id, wait, worker=self)
                except Unavailable as e:
                    backoff = client._retry.next_delay(backoff)
                    log.warning("agentkeeper: claiming for %s failed (%s); again in %.2fs", self.agent_id, e, backoff)
                    await asyncio.sleep(backoff)
                    continue
                backoff = 0.0
                if task is None:
                    if wait is None:
                        continue
                    return
                task.raise_errors = self.raise_errors
                if self.keep_alive:
                    task.keep_alive()
                current = self._current = task
                self.claimed += 1
                yield task
                if not task.finished:
                    try:
                        await task.complete()
                    except AgentKeeperError as e:
                        log.warning("agentkeeper: completing task %s after the loop body failed: %s", task.id, e)
                current = self._current = None
                idle_since = time.monotonic()
        finally:
            if current is not None:
                await current._abandon("the worker loop ended before the task was finished")
            self._current = None

    async def __aenter__(self) -> TaskWorker:
        self._entered = True
        return self

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.stop()
        current = self._current
        if exc is not None and current is not None and not current.finished:
            await current._abandon(failure_reason(exc))
        loops, self._loops = self._loops, []
        self._entered = False
        for ref in loops:
            loop = deref(ref)
            if loop is not None:
                try:
                    await loop.aclose()
                except RuntimeError:  # running elsewhere: stop() ends it there
                    pass

    def __repr__(self) -> str:
        return f"aio.TaskWorker(agent_id={self.agent_id!r}, claimed={self.claimed}, stopped={self.stopped})"


# ── client ───────────────────────────────────────────────────────────────────────────────────────


class AgentKeeperClient:
    """asyncio client for the AgentKeeper daemon (``grpc.aio``); the same calls as the blocking
    :class:`agentkeeper.AgentKeeperClient`, as coroutines. Create it inside a running event loop."""

    def __init__(
        self,
        host: Optional[str] = None,
        port: Optional[int] = None,
        *,
        timeout: _Timeout = DEFAULT_TIMEOUT,
        retry: Optional[RetryPolicy] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        token: Optional[str] = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.host, self.port = resolve_address(host, port)
        self._interceptors = aio_bearer_interceptors(token) if token is not None else None
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._options = list(CHANNEL_OPTIONS) + list(channel_options)
        self._credentials = credentials
        self._channel = self._new_channel()
        self._registry = stubs.RegistryServiceStub(self._channel)
        self._lease = stubs.LeaseServiceStub(self._channel)
        self._election = stubs.ElectionServiceStub(self._channel)
        self._entitlements = stubs.EntitlementsServiceStub(self._channel)
        self._task = stubs.TaskServiceStub(self._channel)
        self._clock = stubs.ClockServiceStub(self._channel)
        self._stubs = {
            "registry": self._registry,
            "lease": self._lease,
            "election": self._election,
            "entitlements": self._entitlements,
            "task": self._task,
            "clock": self._clock,
        }
        self._daemon: Optional[EmbeddedDaemon] = None
        self._background: list[Any] = []
        self._closed = False

    @classmethod
    def embedded(
        cls,
        binary: Optional[Union[str, os.PathLike[str]]] = None,
        port: Optional[int] = None,
        data_dir: Optional[Union[str, os.PathLike[str]]] = None,
        *,
        clock: str = "real",
        seed: Optional[int] = None,
        extra_args: Sequence[str] = (),
        timeout: _Timeout = DEFAULT_TIMEOUT,
        retry: Optional[RetryPolicy] = None,
        startup_timeout: float = 15.0,
    ) -> _Pending[AgentKeeperClient]:
        """Start a private daemon (see the blocking client's ``embedded``).

        ``client = await aio.AgentKeeperClient.embedded(...)`` or
        ``async with aio.AgentKeeperClient.embedded(...) as client:``.
        """

        async def start() -> AgentKeeperClient:
            daemon = EmbeddedDaemon(
                binary=binary, port=port, data_dir=data_dir, clock=clock, seed=seed, extra_args=extra_args
            )
            await asyncio.to_thread(daemon.start, startup_timeout)
            try:
                client = cls(host=daemon.host, port=daemon.port, timeout=timeout, retry=retry)
                client._daemon = daemon
                await asyncio.wait_for(client._channel.channel_ready(), startup_timeout)
            except BaseException:
                await asyncio.to_thread(daemon.stop)
                raise
            return client

        return _Pending(start)

    @property
    def daemon(self) -> Optional[EmbeddedDaemon]:
        """The embedded daemon (``None`` in sidecar mode)."""
        return self._daemon

    @property
    def address(self) -> str:
        """``host:port`` this client talks to."""
        return f"{self.host}:{self.port}"

    def _new_channel(self, own_connection: bool = False) -> grpc.aio.Channel:
        options = list(self._options)
        if own_connection:
            # One connection per watch stream, so a slow watcher's HTTP/2 flow control cannot
            # stall this client's unary calls (heartbeats included).
            options.append(("grpc.use_local_subchannel_pool", 1))
        target = f"{self.host}:{self.port}"
        if self._credentials is not None:
            return grpc.aio.secure_channel(
                target, self._credentials, options=options, interceptors=self._interceptors
            )
        return grpc.aio.insecure_channel(target, options=options, interceptors=self._interceptors)

    def _track(self, obj: Any) -> None:
        self._background = [o for o in self._background if _still_running(o)]
        self._background.append(obj)

    async def close(self) -> None:
        """Stop background tasks, close the channel, stop an embedded daemon."""
        if self._closed:
            return
        self._closed = True
        for obj in list(self._background):
            if isinstance(obj, _AsyncStream):
                await obj.cancel()
            elif isinstance(obj, AgentHandle):
                await obj.stop_heartbeat()
            elif isinstance(obj, LeaseHandle):
                await obj.stop_keep_alive()
            elif isinstance(obj, TaskWorker):
                obj.stop()
        self._background.clear()
        await self._channel.close()
        if self._daemon is not None:
            daemon, self._daemon = self._daemon, None
            await asyncio.to_thread(daemon.stop)

    async def __aenter__(self) -> AgentKeeperClient:
        return self

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        mode = "embedded" if self._daemon is not None else "sidecar"
        return f"aio.AgentKeeperClient({self.address!r}, {mode})"

    async def _unary(self, service: str, method: str, request: Any, timeout: _Timeout) -> Any:
        call = getattr(self._stubs[service], method)
        budget = self._timeout if timeout is None else timeout  # for the call, retries included
        end = None if budget is None else time.monotonic() + budget
        delays = self._retry.delays()
        while True:
            remaining = None if end is None else max(0.001, end - time.monotonic())
            try:
                return await call(request, timeout=remaining)
            except grpc.RpcError as e:
                error = from_rpc_error(e)
                if not self._closed and should_retry(method, error.code(), error.details()):
                    delay = next(delays, None)
                    if delay is not None and (end is None or time.monotonic() + delay < end):
                        await asyncio.sleep(delay)
                        continue
                raise error from None

    # ── registry ──

    def register(
        self,
        name: str,
        description: str = "",
        version: str = "",
        tools: Optional[Iterable[str]] = None,
        metadata: Optional[Mapping[str, str]] = None,
        ttl: int = 30,
        *,
        capabilities: Optional[Sequence[Union[Capability, str]]] = None,
        on_lost: Optional[Callback[AgentHandle]] = None,
        heartbeat: bool = True,
        timeout: _Timeout = None,
    ) -> _Pending[AgentHandle]:
        """Register an agent and heartbeat it in the background (``await`` or ``async with``)."""
        card = cv.make_card(name, description, version, tools, metadata, capabilities)
        ttl = cv.check_uint("ttl", ttl)

        async def run() -> AgentHandle:
            request = pb.RegisterRequest(card=cv.card_to_pb(card), ttl_seconds=ttl)
            response = await self._unary("registry", "Register", request, timeout)
            return AgentHandle(self, response.agent_id, ttl, on_lost=on_lost, heartbeat=heartbeat)

        return _Pending(run)

    async def heartbeat(self, agent_id: str, timeout: _Timeout = None) -> None:
        """Send one heartbeat for ``agent_id``."""
        await self._unary("registry", "Heartbeat", pb.HeartbeatRequest(agent_id=cv.check_str("agent_id", agent_id)), timeout)

    async def deregister(self, agent_id: str, timeout: _Timeout = None) -> None:
        """Mark ``agent_id`` DEAD now (already DEAD is fine)."""
        request = pb.DeregisterRequest(agent_id=cv.check_str("agent_id", agent_id))
        await self._unary("registry", "Deregister", request, timeout)

    async def get_agent(self, agent_id: str, timeout: _Timeout = None) -> AgentInfo:
        """Any known agent, DEAD ones included; :class:`NotFound` otherwise."""
        request = pb.GetAgentRequest(agent_id=cv.check_str("agent_id", agent_id))
        return cv.agent_info_from_pb((await self._unary("registry", "GetAgent", request, timeout)).agent)

    async def find(
        self, query: str = "", tools: Optional[Iterable[str]] = None, limit: int = 10, timeout: _Timeout = None
    ) -> list[AgentInfo]:
        """ALIVE agents with every tool in ``tools``, ranked by relevance to ``query``."""
        request = pb.FindRequest(
            query=cv.check_str("query", query),
            tools=cv.check_str_list("tools", tools),
            limit=cv.check_uint("limit", limit),
        )
        return [cv.agent_info_from_pb(a) for a in (await self._unary("registry", "Find", request, timeout)).agents]

    # ── leases ──

    def acquire_lease(
        self,
        task_id: str,
        agent_id: str,
        ttl: int = 60,
        *,
        keep_alive: bool = False,
        on_lost: Optional[Callback[LeaseHandle]] = None,
        timeout: _Timeout = None,
    ) -> _Pending[Optional[LeaseHandle]]:
        """Try to take the lease on ``task_id``: ``await`` gives a :class:`LeaseHandle` or ``None``
        (held by another agent); ``async with`` raises :class:`FailedPrecondition` in that case."""
        request = pb.AcquireLeaseRequest(
            task_id=cv.check_str("task_id", task_id),
            agent_id=cv.check_str("agent_id", agent_id),
            ttl_seconds=cv.check_uint("ttl", ttl),
        )
        holder: list[str] = []

        async def run() -> Optional[LeaseHandle]:
            sent = time.monotonic()
            response = await self._unary("lease", "AcquireLease", request, timeout)
            if not response.acquired:
                holder.append(response.lease.holder_agent_id)
                return None
            lease = cv.lease_from_pb(response.lease)
            return LeaseHandle(self, lease, ttl, keep_alive=keep_alive, on_lost=on_lost, requested_at=sent)

        def not_acquired() -> Exception:
            who = holder[0] if holder else "another agent"
            return FailedPrecondition(f'lease "{task_id}" is held by agent "{who}"')

        return _Pending(run, not_acquired)

    # ── elections ──

    async def campaign(self, group: str, agent_id: str, timeout: _Timeout = None) -> ElectionState:
        """Stand for ``group``; returns the current state (never displaces a leader)."""
        request = pb.CampaignRequest(group=cv.check_str("group", group), agent_id=cv.check_str("agent_id", agent_id))
        return cv.election_state_from_pb((await self._unary("election", "Campaign", request, timeout)).state)

    async def resign(self, group: str, agent_id: str, timeout: _Timeout = None) -> None:
        """Leave ``group``; the next candidate leads if ``agent_id`` led."""
        request = pb.ResignRequest(group=cv.check_str("group", group), agent_id=cv.check_str("agent_id", agent_id))
        await self._unary("election", "Resign", request, timeout)

    async def list_elections(self, timeout: _Timeout = None) -> list[ElectionGroup]:
        """Every election group, by name, with the head of its line of candidates (the leader
        first; ``candidates_total`` counts them all), fetched page by page (``timeout`` is per
        page)."""

        async def page(token: str) -> tuple[list[ElectionGroup], str]:
            request = pb.ListElectionsRequest(page_token=token)
            response = await self._unary("election", "ListElections", request, timeout)
            return [cv.election_group_from_pb(g) for g in response.groups], response.next_page_token

        return [group async for group in _every_page(page)]

    # ── listing leases ──

    async def list_leases(self, prefix: str = "", page_size: int = 0, timeout: _Timeout = None) -> list[Lease]:
        """Every lease held whose key starts with ``prefix``, by key, fetched page by page
        (``page_size`` a call, 0: 1000, at most 2000; ``timeout`` is per page). Pages are read one
        after the other, not as one snapshot."""
        return [lease async for lease in self.iter_leases(prefix, page_size, timeout)]

    async def iter_leases(self, prefix: str = "", page_size: int = 0, timeout: _Timeout = None) -> AsyncIterator[Lease]:
        """:meth:`list_leases` lazily: fetches the next page when the previous one is used up."""
        async for lease in _every_page(lambda token: self.list_leases_page(prefix, page_size, token, timeout)):
            yield lease

    async def list_leases_page(
        self, prefix: str = "", page_size: int = 0, page_token: str = "", timeout: _Timeout = None
    ) -> tuple[list[Lease], str]:
        """One page of :meth:`list_leases`: ``(leases, next_page_token)``; the token is ``""`` after
        the last page."""
        request = pb.ListLeasesRequest(
            prefix=cv.check_str("prefix", prefix),
            page_size=cv.check_uint("page_size", page_size),
            page_token=cv.check_str("page_token", page_token),
        )
        response = await self._unary("lease", "ListLeases", request, timeout)
        return [cv.lease_from_pb(lease) for lease in response.leases], response.next_page_token

    def watch_election(
        self,
        group: str,
        callback: Optional[Callback[ElectionState]] = None,
        on_error: Optional[Callback[AgentKeeperError]] = None,
        *,
        timeout: _Timeout = None,
    ) -> ElectionWatch:
        """The group's current state, then each leader change: to ``callback`` (sync or async)
        from a background task, or by ``async for state in client.watch_election(group)``.
        ``await`` / ``async with`` it to wait until subscribed."""
        return ElectionWatch(self, cv.check_str("group", group), callback, on_error, timeout)

    # ── entitlements ──

    async def set_policy(
        self,
        id: str,
        subject: str,
        action: str,
        resource: str,
        effect: Union[PolicyEffect, str],
        timeout: _Timeout = None,
    ) -> Policy:
        """Create or replace (by ``id``) a policy."""
        policy = Policy(
            id=cv.check_str("id", id),
            subject=cv.check_str("subject", subject),
            action=cv.check_str("action", action),
            resource=cv.check_str("resource", resource),
            effect=cv.to_effect(effect),
        )
        response = await self._unary("entitlements", "SetPolicy", pb.SetPolicyRequest(policy=cv.policy_to_pb(policy)), timeout)
        return cv.policy_from_pb(response.policy)

    async def check_policy(self, subject: str, action: str, resource: str, timeout: _Timeout = None) -> CheckResult:
        """DENY wins, then ALLOW, else default deny."""
        request = pb.CheckPolicyRequest(
            subject=cv.check_str("subject", subject),
            action=cv.check_str("action", action),
            resource=cv.check_str("resource", resource),
        )
        return cv.check_result_from_pb(await self._unary("entitlements", "CheckPolicy", request, timeout))

    async def list_policies(self, subject_prefix: str = "", timeout: _Timeout = None) -> list[Policy]:
        """Policies sorted by id, optionally filtered by subject prefix, fetched page by page (each
        as much as fits ~3 MiB; ``timeout`` is per page)."""
        prefix = cv.check_str("subject_prefix", subject_prefix)

        async def page(token: str) -> tuple[list[Policy], str]:
            request = pb.ListPoliciesRequest(subject_prefix=prefix, page_token=token)
            response = await self._unary("entitlements", "ListPolicies", request, timeout)
            return [cv.policy_from_pb(p) for p in response.policies], response.next_page_token

        return [policy async for policy in _every_page(page)]

    async def delete_policy(self, id: str, timeout: _Timeout = None) -> None:
        """Delete a policy (:class:`NotFound` for an unknown id)."""
        await self._unary("entitlements", "DeletePolicy", pb.DeletePolicyRequest(id=cv.check_str("id", id)), timeout)

    # ── event bus ──

    def watch(
        self,
        topics: Iterable[str] = (),
        callback: Optional[Callback[WatchEvent]] = None,
        on_error: Optional[Callback[AgentKeeperError]] = None,
        *,
        from_sequence: int = 0,
        timeout: _Timeout = None,
    ) -> WatchStream:
        """Events whose topic starts with one of ``topics`` (empty: all), in order, exactly once
        across reconnects: ``async for event in client.watch([...])``, or to ``callback``.

        ``await`` / ``async with`` it to wait until the daemon has subscribed us. Errors that end
        the stream go to ``on_error``; without one, ``async for`` raises them.
        """
        topic_list = cv.check_str_list("topics", topics)
        start = cv.check_uint("from_sequence", from_sequence, cv.UINT64_MAX)
        return WatchStream(self, topic_list, callback, on_error, start, timeout)

    # ── tasks ──

    async def create_task(
        self,
        type: str,
        input: bytes = b"",
        required_tools: Optional[Iterable[str]] = None,
        max_retries: int = 0,
        ttl: int = 60,
        timeout: _Timeout = None,
    ) -> Task:
        """Enqueue a PENDING task (see the blocking client's ``create_task``)."""
        request = pb.CreateTaskRequest(
            type=cv.check_str("type", type),
            input=cv.check_bytes("input", input),
            required_tools=cv.check_str_list("required_tools", required_tools),
            max_retries=cv.check_uint("max_retries", max_retries),
            ttl_seconds=cv.check_uint("ttl", ttl),
        )
        return cv.task_from_pb((await self._unary("task", "CreateTask", request, timeout)).task)

    @overload
    async def claim_task(self, agent_id: str, timeout: None = None) -> ClaimedTask: ...

    @overload
    async def claim_task(self, agent_id: str, timeout: Union[float, timedelta]) -> Optional[ClaimedTask]: ...

    async def claim_task(self, agent_id: str, timeout: Union[float, timedelta, None] = None) -> Optional[ClaimedTask]:
        """Claim the oldest PENDING task ``agent_id`` has the tools for, waiting up to ``timeout``
        seconds (``None``, the default: until one comes; ``0``: only one pending now). Returns a
        :class:`ClaimedTask`, or ``None`` if none came in time. Cancelling the awaiting task
        cancels the claim (a task handed over meanwhile goes back to PENDING)."""
        cv.check_str("agent_id", agent_id)
        wait = None if timeout is None else cv.seconds_of("timeout", timeout)
        if wait is not None and wait < 0:
            raise InvalidArgument(f"timeout must not be negative, got {wait}")
        return await self._claim(agent_id, wait)

    async def _claim(
        self, agent_id: str, wait: Optional[float], *, worker: Optional[TaskWorker] = None
    ) -> Optional[ClaimedTask]:
        """Long-polls ClaimTask until a task is claimed, ``wait`` seconds passed (None: never) or
        ``worker`` is stopped (see the blocking client's ``_claim``)."""
        request = pb.ClaimTaskRequest(agent_id=agent_id)
        if wait == 0:
            request.wait_ms = 0
        end = None if wait is None else time.monotonic() + wait
        delays = self._retry.delays()
        while True:
            if worker is not None and worker.stopped:
                return None
            if wait == 0:
                poll: Optional[float] = self._timeout
            elif end is None:
                poll = CLAIM_POLL_SECONDS
            else:
                poll = end - time.monotonic()
                if poll <= 0:
                    return None
            sent = time.monotonic()
            call = self._task.ClaimTask(request, timeout=poll)
            if worker is not None:
                worker._set_call(call)
            try:
                response = await call
            except asyncio.CancelledError:
                if worker is not None and worker.stopped and call.cancelled() and not _being_cancelled():
                    return None
                raise
            except grpc.RpcError as e:
                error = from_rpc_error(e)
                code = error.code()
                if not self._closed and should_retry("ClaimTask", code, error.details()):
                    delay = next(delays, None)
                    if delay is not None and (end is None or time.monotonic() + delay < end):
                        await asyncio.sleep(delay)
                        continue
                if worker is not None and worker.stopped and code == grpc.StatusCode.CANCELLED:
                    return None
                if not poll_timed_out(code, poll, sent, self._closed):
                    raise error from None
                response = None  # the poll's deadline passed with no task (see poll_timed_out)
            finally:
                if worker is not None:
                    worker._set_call(None)
            if response is not None and response.HasField("task"):
                task = cv.task_from_pb(response.task)
                return ClaimedTask._bind(self, task, cv.lease_from_pb(response.lease), sent)
            delays = self._retry.delays()
            if wait == 0:
                return None
            if end is not None and poll is not None and not keep_claiming(end - time.monotonic(), poll):
                return None
            pause = EMPTY_POLL_PAUSE - (time.monotonic() - sent)
            if pause > 0:  # answered empty at once (a daemon with --claim-wait-max 0?): do not spin
                await asyncio.sleep(pause)

    def tasks(
        self,
        agent: Union[str, AgentHandle],
        *,
        tools: Optional[Iterable[str]] = None,
        raise_errors: bool = False,
        keep_alive: bool = False,
        idle_timeout: Optional[float] = None,
        max_tasks: Optional[int] = None,
    ) -> TaskWorker:
        """Work loop: ``async for task in client.tasks(agent_id):`` claims tasks for the agent one
        at a time (long-polling) and yields each as a :class:`ClaimedTask`; use
        ``async with task:`` in the body so that an exception fails the task with its text.
        Everything else (the outcome of a task the body leaves unfinished, ``raise_errors``,
        ``keep_alive``, ``idle_timeout``, ``max_tasks``, what ``tools`` checks) is as in the
        blocking client's ``tasks``; the ``tools`` check is made before the first claim."""
        agent_id = agent.agent_id if isinstance(agent, AgentHandle) else cv.check_str("agent", agent)
        worker = TaskWorker(
            self,
            agent_id,
            None if tools is None else cv.check_str_list("tools", tools),
            raise_errors=raise_errors,
            keep_alive=keep_alive,
            idle_timeout=None if idle_timeout is None else cv.seconds_of("idle_timeout", idle_timeout),
            max_tasks=None if max_tasks is None else cv.check_uint("max_tasks", max_tasks),
        )
        self._track(worker)
        return worker

    async def complete_task(self, task_id: str, agent_id: str, output: bytes = b"", timeout: _Timeout = None) -> None:
        """Mark a task ``agent_id`` claimed COMPLETED (:class:`FailedPrecondition` if it is not
        claimed by that agent, :class:`NotFound` for an unknown task)."""
        request = pb.CompleteTaskRequest(
            task_id=cv.check_str("task_id", task_id),
            agent_id=cv.check_str("agent_id", agent_id),
            output=cv.check_bytes("output", output),
        )
        await self._unary("task", "CompleteTask", request, timeout)

    async def fail_task(self, task_id: str, agent_id: str, reason: str = "", timeout: _Timeout = None) -> None:
        """Record a failure of a task ``agent_id`` claimed: PENDING again while
        ``retry_count <= max_retries``, else DEAD."""
        request = pb.FailTaskRequest(
            task_id=cv.check_str("task_id", task_id),
            agent_id=cv.check_str("agent_id", agent_id),
            reason=cv.check_str("reason", reason),
        )
        await self._unary("task", "FailTask", request, timeout)

    async def get_task(self, task_id: str, timeout: _Timeout = None) -> Task:
        """One task, any status, with its input and output."""
        request = pb.GetTaskRequest(task_id=cv.check_str("task_id", task_id))
        return cv.task_from_pb((await self._unary("task", "GetTask", request, timeout)).task)

    async def list_tasks(
        self,
        status: Optional[Union[TaskStatus, str]] = None,
        page_size: int = 0,
        timeout: _Timeout = None,
    ) -> list[Task]:
        """All tasks in creation order (optionally with ``status``), every page of them."""
        return [task async for task in self.iter_tasks(status, page_size, timeout)]

    async def iter_tasks(
        self,
        status: Optional[Union[TaskStatus, str]] = None,
        page_size: int = 0,
        timeout: _Timeout = None,
    ) -> AsyncIterator[Task]:
        """``async for task in client.iter_tasks()``: :meth:`list_tasks` a page at a time."""
        async for task in _every_page(lambda token: self.list_tasks_page(status, page_size, token, timeout)):
            yield task

    async def list_tasks_page(
        self,
        status: Optional[Union[TaskStatus, str]] = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: _Timeout = None,
    ) -> tuple[list[Task], str]:
        """One page: ``(tasks, next_page_token)``, the token ``""`` after the last page."""
        request = pb.ListTasksRequest(
            status=cv.task_status_to_pb(status),
            page_size=cv.check_uint("page_size", page_size),
            page_token=cv.check_str("page_token", page_token),
        )
        response = await self._unary("task", "ListTasks", request, timeout)
        return [cv.task_from_pb(t) for t in response.tasks], response.next_page_token

    # ── manual clock ──

    async def advance(self, seconds: Union[float, timedelta], timeout: _Timeout = None) -> datetime:
        """Move a manual clock forward; due timers fire before this returns. Returns the new time."""
        request = pb.AdvanceRequest(duration=cv.duration(cv.seconds_of("seconds", seconds)))
        return cv.ts((await self._unary("clock", "Advance", request, timeout)).now)

    async def now(self, timeout: _Timeout = None) -> datetime:
        """The manual clock's current time (UTC)."""
        return cv.ts((await self._unary("clock", "Now", pb.NowRequest(), timeout)).now)


def _still_running(obj: Any) -> bool:
    if isinstance(obj, _AsyncStream):
        return obj.active
    if isinstance(obj, (AgentHandle, LeaseHandle)):
        return obj._task is not None and not obj._task.done()
    if isinstance(obj, TaskWorker):
        return not obj.stopped
    return False
