"""What ``watch`` and ``watch_election`` return: a server stream that is reopened where it stopped
when it drops, consumed by iterating over it or handed item by item to a callback.

The one source of both clients: ``scripts/unasync.py`` makes ``agentkeeper/_sync/streams.py``
(where the classes keep the v1 SDK's names, ``EventSubscription`` and ``ElectionSubscription``).
A stream never skips or repeats an event silently: a gap it cannot close ends it with OutOfRange.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Callable, Generic, Optional, TypeVar

import grpc

from agentkeeper import _convert as cv
from agentkeeper import _rpc as rpc
from agentkeeper._common import STREAM_RETRYABLE, EventCursor
from agentkeeper._errors import AgentKeeperError, Cancelled, Unavailable
from agentkeeper._runtime import AsyncFlag, AsyncOpenedByAwait, AsyncWorker, async_maybe_await
from agentkeeper._transport import AsyncStreamCall, AsyncTransport
from agentkeeper._types import ElectionState, WatchEvent
from agentkeeper.v1 import agentkeeper_pb2 as pb

if TYPE_CHECKING:
    from typing_extensions import Self

    from agentkeeper._async.client import AgentKeeperClient

__all__ = ["Subscription", "WatchStream", "ElectionWatch"]

log = logging.getLogger("agentkeeper")

E = TypeVar("E")
_Timeout = Optional[float]


class Subscription(AsyncOpenedByAwait, Generic[E]):
    """A server stream that is reopened (with backoff) when it drops.

    Iterate over it, or pass a callback: then a background worker hands each item to it (a
    coroutine function is awaited). Opening it (entering it, iterating, or, with a callback,
    starting it; the asyncio client's stream is also opened by awaiting it) returns once the
    daemon has subscribed us, so nothing that happens afterwards is missed. :meth:`cancel`
    stops it; as a context manager it is cancelled on exit. An error that ends it for good goes
    to ``on_error`` and is kept in :attr:`error`; without ``on_error``, iterating raises it.
    """

    _kind = "watch"

    def __init__(
        self,
        client: AgentKeeperClient,
        callback: Optional[Callable[[E], object]],
        on_error: Optional[Callable[[AgentKeeperError], object]],
        timeout: _Timeout,
    ) -> None:
        self._client = client
        self._callback = callback
        self._on_error = on_error
        self._timeout = timeout
        self._lock = threading.Lock()
        self._transport: Optional[AsyncTransport] = None
        self._call: Optional[AsyncStreamCall[pb.Event]] = None
        self._runner: Optional[AsyncWorker] = None
        self._cancelled = AsyncFlag()
        self._drop_requested = False
        self._first: Optional[pb.Event] = None  # a message read while opening
        self._open_error: Optional[AgentKeeperError] = None  # why the last reopening failed
        self._finished = False
        self._delay = 0.0
        self.error: Optional[AgentKeeperError] = None
        """The error that ended the stream (OUT_OF_RANGE, RESOURCE_EXHAUSTED, ...), if any."""
        self.reconnects = 0
        """How many times the stream was reopened after a drop."""

    # ── what a kind of stream says ──

    def _open_call(self, transport: AsyncTransport) -> AsyncStreamCall[pb.Event]:
        raise NotImplementedError

    def _accept(self, message: pb.Event) -> Optional[E]:
        """The item for a message, or None when it is not to be handed out (a repeat)."""
        raise NotImplementedError

    def _warn_if_no_resume_point(self) -> None:
        """Election watches restart from the current state; nothing to resume."""

    def _reopen_after(self, error: AgentKeeperError) -> bool:
        """Whether a stream that ended with ``error`` should be reopened at once after all."""
        return False

    # ── opening ──

    async def start(self) -> Self:
        """Open the stream and wait until the daemon has subscribed us (a no-op once started).

        A daemon that cannot be reached is tried again with backoff for the call's timeout (the
        client's default), then :class:`Unavailable`; an error the daemon answers with (such as
        OUT_OF_RANGE for a ``from_sequence`` it no longer retains) is raised.
        """
        if self._transport is not None:
            return self
        self._transport = self._client._transport.own_connection()
        self._client._track(self)
        budget = self._client._timeout if self._timeout is None else self._timeout
        delays = self._client._retry.delays()
        while True:
            try:
                await self._connect()
                break
            except AgentKeeperError as error:
                if self._reopen_after(error):
                    continue
                delay = next(delays, None)
                if error.code() not in STREAM_RETRYABLE or delay is None or self._cancelled.is_set():
                    await self.cancel()
                    if error.code() in STREAM_RETRYABLE:
                        raise Unavailable(f"{self._kind} stream did not open within {budget}s: {error}") from None
                    raise
                if await self._cancelled.wait(delay):
                    raise Unavailable(f"{self._kind} stream was cancelled while opening") from None
        if self._callback is not None:
            self._runner = AsyncWorker(self._deliver_all, f"agentkeeper-{self._kind.replace(' ', '-')}")
        return self

    async def _connect(self) -> None:
        """Open a call, on the node the client talks to now, and wait until the daemon has
        subscribed us; raises how it ended if it ended at once."""
        assert self._transport is not None
        self._transport = transport = await self._client._follow_current(self._transport)
        if self._cancelled.is_set():  # cancel() may have closed the transport this one replaced
            await transport.close()
            raise Cancelled(f"the {self._kind} stream was cancelled")
        call = self._open_call(transport)
        with self._lock:
            self._call = call
        if not await call.opened():
            try:
                self._first = await call.read()  # raises the error the stream ended with
            except AgentKeeperError as error:
                with self._lock:
                    self._call = None
                self._node_failed(error)
                raise

    def _node_failed(self, error: AgentKeeperError) -> None:
        """The stream's node is down or answered UNAVAILABLE: the client moves to the next
        endpoint, where the stream is reopened."""
        if error.code() == grpc.StatusCode.UNAVAILABLE and self._transport is not None:
            self._client._move_on(self._transport.target)

    # ── reading ──

    async def _next(self) -> Optional[E]:
        """The next item; None once the stream is over (cancelled, or ended by an error that went
        to ``on_error``). Raises that error when there is no ``on_error``."""
        await self.start()
        while not self._finished:
            call = self._call
            error: Optional[AgentKeeperError] = None
            if call is None:
                error, self._open_error = self._open_error, None
            else:
                try:
                    message = self._first if self._first is not None else await call.read()
                    self._first = None
                except AgentKeeperError as e:
                    error = e
                    self._node_failed(e)
                else:
                    if message is not None:
                        try:
                            item = self._accept(message)
                        except AgentKeeperError as e:  # the cursor saw another history
                            error = e
                        else:
                            if item is not None:
                                self._delay = 0.0
                                return item
                            continue
            await self._after_drop(error)
        return self._end()

    async def _after_drop(self, error: Optional[AgentKeeperError]) -> None:
        """The stream ended (cleanly, with ``error``, or never reopened): reopen it, or finish."""
        with self._lock:
            self._call = None
            dropped_on_purpose, self._drop_requested = self._drop_requested, False
        if self._cancelled.is_set():
            self._finished = True
            return
        if error is not None and error.code() not in STREAM_RETRYABLE and not self._reopen_after(error):
            self._finished = True
            self.error = error
            if self._on_error is not None:
                try:
                    await async_maybe_await(self._on_error(error))
                except Exception:
                    log.exception("agentkeeper: on_error callback raised")
            elif self._callback is not None:
                log.error("agentkeeper: %s stream ended: %s (pass on_error= to handle this)", self._kind, error)
            return
        if error is None or error.code() in STREAM_RETRYABLE:
            self.reconnects += 1
            self._warn_if_no_resume_point()
            if not dropped_on_purpose:
                self._delay = self._client._retry.next_delay(self._delay)
                log.info("agentkeeper: %s stream dropped (%s); reopening in %.2fs", self._kind, error, self._delay)
                if await self._cancelled.wait(self._delay):
                    self._finished = True
                    return
        try:
            await self._connect()
        except AgentKeeperError as e:
            self._open_error = e  # the next turn of _next() decides: try again, or finish

    def _end(self) -> Optional[E]:
        if self.error is not None and self._on_error is None and self._callback is None:
            raise self.error
        return None

    async def _deliver_all(self, worker: AsyncWorker) -> None:
        assert self._callback is not None
        while True:
            try:
                item = await self._next()
            except AgentKeeperError:
                return
            if item is None:
                return
            try:
                await async_maybe_await(self._callback(item))
            except Exception:
                log.exception("agentkeeper: %s callback raised", self._kind)

    # ── state and control ──

    @property
    def active(self) -> bool:
        """True while items may still arrive (opened, not cancelled, not ended by an error)."""
        return self._transport is not None and not self._finished and not self._cancelled.is_set()

    async def cancel(self) -> None:
        """Stop receiving. Safe to call more than once, and from inside the callback."""
        self._cancelled.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()
        if self._runner is not None:
            await self._runner.stop()
        self._finished = True
        if self._transport is not None:
            await self._transport.close()

    async def _shutdown(self) -> None:
        await self.cancel()

    async def aclose(self) -> None:
        """The same as :meth:`cancel`."""
        await self.cancel()

    async def wait(self, timeout: Optional[float] = None) -> bool:
        """Until a callback subscription ends (cancelled or failed); False if ``timeout`` seconds
        passed first."""
        if self._runner is None:
            return self._finished
        return await self._runner.join(timeout)

    def _force_reconnect(self) -> None:
        """Test hook: cancel the underlying gRPC call as if the connection dropped."""
        with self._lock:
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
        item = await self._next()
        if item is None:
            raise StopAsyncIteration
        return item

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.cancel()


class WatchStream(Subscription[WatchEvent]):
    """Events from ``watch``, exactly once and in order across reconnects (while the daemon
    retains them); ends with :class:`~agentkeeper.OutOfRange` when the daemon cannot resume
    where it stopped (it no longer retains the events, or it is another history: a daemon
    restarted without ``--data-dir``)."""

    def __init__(
        self,
        client: AgentKeeperClient,
        topics: list[str],
        callback: Optional[Callable[[WatchEvent], object]],
        on_error: Optional[Callable[[AgentKeeperError], object]],
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

    def _open_call(self, transport: AsyncTransport) -> AsyncStreamCall[pb.Event]:
        request = pb.WatchRequest(topics=self.topics, from_sequence=self._cursor.request_from())
        return transport.stream(rpc.WATCH, request)

    def _warn_if_no_resume_point(self) -> None:
        if not self._cursor.has_resume_point:
            log.warning(
                "agentkeeper: watch stream dropped before its first event; events published while "
                "it was down are not replayed (pass from_sequence= to resume from a known point)"
            )

    def _reopen_after(self, error: AgentKeeperError) -> bool:
        return error.code() == grpc.StatusCode.OUT_OF_RANGE and self._cursor.reopen_after_out_of_range()

    def _accept(self, message: pb.Event) -> Optional[WatchEvent]:
        at = message.occurred_at
        if not self._cursor.accept(
            int(message.sequence_number), message.topic, at.seconds, at.nanos, message.payload.type_url
        ):
            return None  # delivered before a reconnect
        return cv.watch_event_from_pb(message)


class ElectionWatch(Subscription[ElectionState]):
    """States from ``watch_election``: the group's current state, then each change. After a
    reconnect the current state is handed out only if it differs from the last one."""

    _kind = "election watch"

    def __init__(
        self,
        client: AgentKeeperClient,
        group: str,
        callback: Optional[Callable[[ElectionState], object]],
        on_error: Optional[Callable[[AgentKeeperError], object]],
        timeout: _Timeout,
    ) -> None:
        super().__init__(client, callback, on_error, timeout)
        self.group = group
        self.last_state: Optional[ElectionState] = None

    def _open_call(self, transport: AsyncTransport) -> AsyncStreamCall[pb.Event]:
        return transport.stream(rpc.WATCH_ELECTION, pb.WatchElectionRequest(group=self.group))

    def _accept(self, message: pb.Event) -> Optional[ElectionState]:
        state = cv.election_event_state(message)
        if state is None:
            return None
        last = self.last_state
        if last is not None and (last.term, last.leader_agent_id) == (state.term, state.leader_agent_id):
            return None
        self.last_state = state
        return state
