"""The concurrency the clients need, in two flavours with the same names but for an ``Async``
prefix: a background worker, a flag to wait on, "await this if it is awaitable", and the object
that a call returns before it has run.

The asyncio client (``agentkeeper/_async/``) is written against the ``Async*`` names;
``scripts/unasync.py`` turns it into the blocking client (``agentkeeper/_sync/``) by removing
``async``/``await`` and the prefix, so each pair here must keep one shape: the same methods, the
same arguments, ``async def`` on one side where the other has ``def``. Nothing here knows gRPC
or the daemon.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Callable, Generic, Optional, Protocol, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "AsyncWorker",
    "Worker",
    "AsyncFlag",
    "Flag",
    "AsyncPending",
    "async_pending",
    "pending",
    "async_maybe_await",
    "maybe_await",
    "AsyncOpenedByAwait",
    "OpenedByAwait",
    "async_opened",
    "opened",
    "async_sleep",
    "sleep",
    "run_blocking",
    "async_run_blocking",
    "being_cancelled",
    "ASYNC_REPR_PREFIX",
    "REPR_PREFIX",
]

log = logging.getLogger("agentkeeper")

T = TypeVar("T")

# How long stop() waits for a blocking worker's thread to finish its current step (a call in
# flight has its own deadline; this only bounds close()).
_JOIN_SECONDS = 5.0


# ── background workers ────────────────────────────────────────────────────────────────────────


class AsyncWorker:
    """Runs ``body(worker)`` as an asyncio task until it returns or :meth:`stop` is called."""

    def __init__(self, body: Callable[[AsyncWorker], Awaitable[None]], name: str) -> None:
        self.name = name
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] = asyncio.ensure_future(self._guarded(body))

    async def _guarded(self, body: Callable[[AsyncWorker], Awaitable[None]]) -> None:
        try:
            await body(self)
        except Exception:
            log.exception("agentkeeper: background task %s failed", self.name)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping.is_set()

    @property
    def running(self) -> bool:
        """True until the body has returned."""
        return not self._task.done()

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; False if the worker was told to stop meanwhile (or before)."""
        if self._stopping.is_set():
            return False
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            return True
        return False

    async def stop(self) -> None:
        """Stop the body (cancelled at its next await) and wait until it is gone."""
        self._stopping.set()
        task = self._task
        if task.done() or task is asyncio.current_task():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if being_cancelled():
                raise

    async def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until the body has returned; False if ``timeout`` seconds passed first."""
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            return False
        except asyncio.CancelledError:
            if being_cancelled():
                raise
        return True


class Worker:
    """Runs ``body(worker)`` on a daemon thread until it returns or :meth:`stop` is called."""

    def __init__(self, body: Callable[[Worker], None], name: str) -> None:
        self.name = name
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._guarded, args=(body,), name=name, daemon=True)
        self._thread.start()

    def _guarded(self, body: Callable[[Worker], None]) -> None:
        try:
            body(self)
        except Exception:
            log.exception("agentkeeper: background thread %s failed", self.name)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping.is_set()

    @property
    def running(self) -> bool:
        """True until the body has returned."""
        return self._thread.is_alive()

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; False if the worker was told to stop meanwhile (or before)."""
        return not self._stopping.wait(seconds)

    def stop(self) -> None:
        """Tell the body to stop (it sees it at its next sleep) and wait for its thread, unless
        called from that thread (a callback stopping its own worker)."""
        self._stopping.set()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(_JOIN_SECONDS)

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until the body has returned; False if ``timeout`` seconds passed first."""
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()


# ── flags ─────────────────────────────────────────────────────────────────────────────────────


class AsyncFlag:
    """A one-way switch to wait on (``asyncio.Event``), set from the event loop's thread."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout: Optional[float]) -> bool:
        """True once set; False if ``timeout`` seconds passed first."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


class Flag:
    """A one-way switch to wait on (``threading.Event``), set from any thread."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: Optional[float]) -> bool:
        """True once set; False if ``timeout`` seconds passed first."""
        return self._event.wait(timeout)


# ── a call that has not run yet ───────────────────────────────────────────────────────────────


class _AsyncEnterable(Protocol):
    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> Optional[bool]: ...


_E = TypeVar("_E", bound=Optional[_AsyncEnterable])


class AsyncPending(Generic[_E]):
    """What ``register``, ``acquire_lease`` and ``embedded`` return in the asyncio client: await it
    for the value, or ``async with`` it to enter (and later exit) the value itself."""

    def __init__(self, factory: Callable[[], Awaitable[_E]], none_error: Optional[Callable[[], Exception]]) -> None:
        self._factory = factory
        self._none_error = none_error
        self._future: Optional[asyncio.Future[_E]] = None
        self._value: Optional[_AsyncEnterable] = None

    def _get(self) -> asyncio.Future[_E]:
        if self._future is None:
            self._future = asyncio.ensure_future(self._factory())
        return self._future

    def __await__(self) -> Generator[object, None, _E]:
        return self._get().__await__()

    async def __aenter__(self) -> _E:
        value = await self._get()
        if value is None:
            if self._none_error is None:
                raise RuntimeError("nothing to enter")
            raise self._none_error()
        self._value = value
        await value.__aenter__()
        return value

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> Optional[bool]:
        assert self._value is not None, "__aexit__ without __aenter__"
        return await self._value.__aexit__(exc_type, exc, tb)


def async_pending(
    factory: Callable[[], Awaitable[_E]], none_error: Optional[Callable[[], Exception]] = None
) -> AsyncPending[_E]:
    """The asyncio flavour: the call runs when the result is awaited or entered."""
    return AsyncPending(factory, none_error)


def pending(factory: Callable[[], T], none_error: Optional[Callable[[], Exception]] = None) -> T:
    """The blocking flavour: the call runs now and its value is returned."""
    return factory()


# ── a stream that opens before it is returned ─────────────────────────────────────────────────


class _Startable(Protocol):
    def start(self) -> object: ...


_S = TypeVar("_S", bound=_Startable)


def async_opened(stream: _S) -> _S:
    """The asyncio flavour: a plain function cannot wait, so the stream opens when it is awaited,
    entered or iterated."""
    return stream


def opened(stream: _S) -> _S:
    """The blocking flavour: the stream opens (the daemon subscribes us) before it is returned."""
    stream.start()
    return stream


# ── a stream that is opened by awaiting it ─────────────────────────────────────────────────────


class AsyncOpenedByAwait:
    """``await stream`` opens it, as ``await stream.start()`` does (the v1 asyncio client's
    ``await client.watch(...)``)."""

    async def start(self) -> Self:
        raise NotImplementedError

    def __await__(self) -> Generator[object, None, Self]:
        return self.start().__await__()


class OpenedByAwait:
    """The blocking flavour: nothing to await; the stream is opened before it is returned."""

    def start(self) -> Self:
        raise NotImplementedError


# ── small helpers ─────────────────────────────────────────────────────────────────────────────


async def async_maybe_await(result: object) -> None:
    """Await a callback's result when it is awaitable (callbacks may be coroutine functions)."""
    if inspect.isawaitable(result):
        await result


def maybe_await(result: object) -> None:
    """The blocking flavour: callbacks are plain functions, their result is dropped."""


async def async_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def sleep(seconds: float) -> None:
    time.sleep(seconds)


async def async_run_blocking(fn: Callable[[], T]) -> T:
    """Run a blocking function (starting or stopping the daemon process) off the event loop."""
    return await asyncio.to_thread(fn)


def run_blocking(fn: Callable[[], T]) -> T:
    return fn()


def being_cancelled() -> bool:
    """True when the current asyncio task itself is being cancelled (as opposed to a gRPC call it
    awaited being cancelled, which also raises ``CancelledError``)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


ASYNC_REPR_PREFIX = "aio."
"""Put before class names in reprs: ``aio.AgentHandle(...)`` in the asyncio flavour."""
REPR_PREFIX = ""
