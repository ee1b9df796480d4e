"""The task queue's client side: a claimed task (its claim lease, complete/fail/renew) and the
worker loop that claims tasks for one agent, one at a time.

The one source of both clients: ``scripts/unasync.py`` makes ``agentkeeper/_sync/tasks.py``.
It never leaves a claimed task unfinished when its loop ends: the task is failed at once, so it is
retried without waiting for its claim lease to run out.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Callable, Optional, Union

from agentkeeper._async.handles import LeaseHandle
from agentkeeper._common import failure_reason, lease_ttl
from agentkeeper._convert import check_card_tools
from agentkeeper._errors import AgentKeeperError, FailedPrecondition, NotFound, Unavailable
from agentkeeper._runtime import ASYNC_REPR_PREFIX, AsyncFlag
from agentkeeper._transport import AsyncUnaryCall
from agentkeeper._types import Lease, Task
from agentkeeper.v1 import agentkeeper_pb2 as pb

if TYPE_CHECKING:
    from agentkeeper._async.client import AgentKeeperClient

__all__ = ["ClaimedTask", "TaskWorker"]

log = logging.getLogger("agentkeeper")

_Timeout = Optional[float]


class ClaimedTask(Task):
    """A task this client claimed for an agent (``claim_task``, ``tasks``): every
    :class:`~agentkeeper.Task` field as it was at the claim, plus the claim lease and calls bound
    to the client and the claiming agent.

    Finish it with :meth:`complete` or :meth:`fail`. Until then the daemon holds a lease on the
    task's id for the claiming agent (:attr:`lease`, :attr:`token`, the task's ``ttl``); if it
    expires (or the agent dies) the task fails with reason "lease expired" ("agent died") and is
    retried or DEAD. For work longer than the ttl call :meth:`renew` now and then, or
    :meth:`keep_alive` once to renew in the background until the task is finished.

    As a context manager it finishes the task for you: if the block raises, the task is failed
    with the error's text (``"ValueError: bad input"``) and the error propagates, unless
    :attr:`raise_errors` is False (as in ``tasks()`` by default), in which case it is logged and
    swallowed. A block that ends without finishing the task completes it with empty output.

    The fields are not updated after the claim; ``client.get_task(task.id)`` gives the current
    state. ``task.finished`` tells whether this object completed or failed it.
    """

    # Set by _bind(), not dataclass fields: dataclasses.fields()/asdict()/== see a Task's fields.
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
        """The claim lease's fencing token: pass it with every write this task makes, so that the
        resource can refuse a worker whose claim ran out and was handed to another (higher token)."""
        return self._handle.token

    @property
    def agent_id(self) -> str:
        """The claiming agent's id."""
        return self._handle.agent_id

    @property
    def ttl(self) -> int:
        """The claim lease's ttl in seconds, as claimed: the task's ``ttl`` (renewals keep it unless
        given another)."""
        return self._handle.ttl

    @property
    def finished(self) -> bool:
        """True once :meth:`complete` or :meth:`fail` succeeded through this object."""
        return bool(self._finished)

    @property
    def lease_lost(self) -> bool:
        """True once a renewal found the claim gone (see :meth:`keep_alive`)."""
        return self._handle.lost

    async def complete(self, output: Union[bytes, str] = b"", timeout: _Timeout = None) -> None:
        """Mark the task COMPLETED with ``output`` (<= 4 MiB; a ``str`` is UTF-8 encoded).

        Raises :class:`FailedPrecondition` if the claim is gone (the lease expired, the task was
        already finished).
        """
        try:
            await self._client.complete_task(self.id, self.agent_id, output, timeout=timeout)
        except (NotFound, FailedPrecondition):
            await self._handle.stop_keep_alive()  # the claim is gone: nothing left to renew
            raise
        self._finished = "completed"
        await self._handle.stop_keep_alive()

    async def fail(self, reason: str = "", timeout: _Timeout = None) -> None:
        """Record a failure: the task goes back to PENDING while ``retry_count <= max_retries``
        after this one, else DEAD. Raises :class:`FailedPrecondition` if the claim is gone."""
        try:
            await self._client.fail_task(self.id, self.agent_id, reason, timeout=timeout)
        except (NotFound, FailedPrecondition):
            await self._handle.stop_keep_alive()  # the claim is gone: nothing left to renew
            raise
        self._finished = "failed"
        await self._handle.stop_keep_alive()

    async def renew(self, ttl: Optional[int] = None, timeout: _Timeout = None) -> Lease:
        """Push the claim lease's expiry to now + ``ttl`` (default: the task's ttl). Returns the
        lease. Raises :class:`NotFound` if it already expired (the task was failed meanwhile)."""
        return await self._handle.renew(ttl, timeout)

    def keep_alive(self, on_lost: Optional[Callable[[ClaimedTask], object]] = None) -> ClaimedTask:
        """Renew the claim lease every ttl/3 seconds in the background until the task is completed
        or failed (or the client closes). ``on_lost(task)`` is called once if a renewal finds the
        claim gone: stop working on it. Returns the task itself."""
        if self._finished or self._handle.keeping_alive:
            return self
        if on_lost is not None:
            callback = on_lost
            self._handle._on_lost = lambda handle: callback(self)
        self._handle.start_keep_alive()
        return self

    async def _abandon(self, reason: str) -> None:
        """Fail the task if it is still unfinished (best effort) and stop renewing."""
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
    """Claims tasks for one agent, one at a time: iterate over it (``client.tasks(agent_id)``
    documents the loop).

    Each iteration starts a claiming loop; as a context manager it stops the loop on exit and,
    if the block raised, fails the task in hand with the error's text. :meth:`stop` (for the
    blocking client from any thread, e.g. a signal handler) ends the loop after the current
    task; a claim waiting for a task is cancelled.
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
        self._stop = AsyncFlag()
        self._lock = threading.Lock()
        self._call: Optional[AsyncUnaryCall[pb.ClaimTaskResponse]] = None
        self._current: Optional[ClaimedTask] = None
        # The claiming loops (generators) started by iterating. Held strongly only inside `with
        # worker:`, so that its exit sees the exception that left the loop and fails the task in
        # hand with its text; otherwise weakly, so that a plain loop left by break or an
        # exception closes its generator at once (which fails the unfinished task).
        self._entered = False
        self._loops: list[Union[AsyncGenerator[ClaimedTask, None], weakref.ref[AsyncGenerator[ClaimedTask, None]]]] = []

    def __aiter__(self) -> AsyncIterator[ClaimedTask]:
        loop = self._run()
        self._loops = [r for r in self._loops if not isinstance(r, weakref.ref) or r() is not None]
        self._loops.append(loop if self._entered else weakref.ref(loop))
        return loop

    def _set_call(self, call: Optional[AsyncUnaryCall[pb.ClaimTaskResponse]]) -> None:
        with self._lock:
            self._call = call
        if call is not None and self._stop.is_set():
            call.cancel()

    def stop(self) -> None:
        """End the loop: no further task is claimed; a claim waiting for one is cancelled."""
        self._stop.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    async def start(self) -> TaskWorker:
        """Check, once, that the agent's card lists the ``tools`` the loop was asked for (see
        ``tasks()``). The blocking client does it before ``tasks()`` returns, the asyncio client
        before the first claim."""
        tools, self._tools = self._tools, None
        if tools is not None:
            check_card_tools(self.agent_id, tools, await self._client.get_agent(self.agent_id))
        return self

    async def _shutdown(self) -> None:
        self.stop()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    async def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; False if the worker was stopped meanwhile."""
        return not await self._stop.wait(seconds)

    async def _run(self) -> AsyncGenerator[ClaimedTask, None]:
        client = self._client
        await self.start()
        idle_since = time.monotonic()
        backoff = 0.0
        current: Optional[ClaimedTask] = None
        try:
            while not self._stop.is_set():
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
                    if not await self._sleep(backoff):
                        return
                    continue
                backoff = 0.0
                if task is None:
                    if wait is None:
                        continue
                    return  # idle_timeout passed with no task (or stop())
                task.raise_errors = self.raise_errors
                if self.keep_alive:
                    task.keep_alive()
                current = self._current = task
                self.claimed += 1
                yield task
                # The loop body ran to its end: a task it left unfinished counts as done.
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
            loop = ref() if isinstance(ref, weakref.ref) else ref
            if loop is None:
                continue
            try:
                await loop.aclose()
            except (RuntimeError, ValueError):  # running elsewhere: stop() ends it there
                pass

    def __repr__(self) -> str:
        return f"{ASYNC_REPR_PREFIX}TaskWorker(agent_id={self.agent_id!r}, claimed={self.claimed}, stopped={self.stopped})"

