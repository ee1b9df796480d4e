"""The blocking client: :class:`AgentKeeperClient` and the handles it returns."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Callable, Optional, TypeVar, Union, overload

import grpc

from agentkeeper import _convert as cv
from agentkeeper._auth import bearer_interceptor
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
    "Subscription",
    "EventSubscription",
    "ElectionSubscription",
    "ClaimedTask",
    "TaskWorker",
]

log = logging.getLogger("agentkeeper")

_Timeout = Optional[float]
_S = TypeVar("_S", bound="Subscription")



_Item = TypeVar("_Item")


def _every_page(fetch: Callable[[str], tuple[list[_Item], str]]) -> Iterator[_Item]:
    """The items of a paged listing, lazily: ``fetch(token)`` returns a page and the next token
    (``""`` first, and after the last page)."""
    token = ""
    while True:
        items, token = fetch(token)
        yield from items
        if not token:
            return

class _Repeater:
    """Calls ``fn`` every ``interval`` seconds on a daemon thread until ``fn`` returns False or stop()."""

    def __init__(self, interval: float, fn: Callable[[], bool], name: str) -> None:
        self.interval = interval
        self._fn = fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self._fn():
                    return
            except Exception:  # pragma: no cover - fn handles its own errors
                log.exception("agentkeeper: background task %s failed", self._thread.name)

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)


# ── handles ──────────────────────────────────────────────────────────────────────────────────────


class AgentHandle:
    """A registered agent. Returned by :meth:`AgentKeeperClient.register`.

    A background thread heartbeats every ``ttl/2`` seconds. As a context manager it deregisters
    on exit (an agent that is already gone is fine). If a heartbeat answers NOT_FOUND (the
    daemon declared the agent DEAD), heartbeating stops, :attr:`lost` becomes True and
    ``on_lost(handle)`` is called from the heartbeat thread.
    """

    def __init__(
        self,
        client: AgentKeeperClient,
        agent_id: str,
        ttl: int,
        on_lost: Optional[Callable[[AgentHandle], Any]] = None,
        heartbeat: bool = True,
    ) -> None:
        self._client = client
        self._agent_id = agent_id
        self._ttl = ttl
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._closing = False
        self._lost = False
        self._repeater: Optional[_Repeater] = None
        if heartbeat:
            self._repeater = _Repeater(
                interval_for(ttl, 30, 0.5), self._beat, name=f"agentkeeper-heartbeat-{agent_id[:8]}"
            )
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

    def heartbeat(self, timeout: _Timeout = None) -> None:
        """Send one heartbeat now. Raises :class:`NotFound` if the agent is DEAD or unknown."""
        self._client._unary("registry", "Heartbeat", pb.HeartbeatRequest(agent_id=self._agent_id), timeout)

    def info(self, timeout: _Timeout = None) -> AgentInfo:
        """This agent as the daemon sees it (``get_agent``)."""
        return self._client.get_agent(self._agent_id, timeout=timeout)

    def _beat(self) -> bool:
        try:
            self.heartbeat()
            return True
        except NotFound:
            with self._lock:
                if self._closing:
                    return False
                self._lost = True
            log.warning("agentkeeper: agent %s was declared dead by the daemon", self._agent_id)
            if self._on_lost is not None:
                try:
                    self._on_lost(self)
                except Exception:
                    log.exception("agentkeeper: on_lost callback for agent %s raised", self._agent_id)
            return False
        except AgentKeeperError as e:
            log.warning("agentkeeper: heartbeat for %s failed: %s", self._agent_id, e)
            return True

    def stop_heartbeat(self) -> None:
        """Stop the background heartbeat without deregistering (the agent will expire by ttl)."""
        with self._lock:
            self._closing = True
        if self._repeater is not None:
            self._repeater.stop()

    def deregister(self, timeout: _Timeout = None) -> None:
        """Stop heartbeating and mark the agent DEAD now (releases its leases, leaves elections)."""
        self.stop_heartbeat()
        self._client._unary("registry", "Deregister", pb.DeregisterRequest(agent_id=self._agent_id), timeout)

    def __enter__(self) -> AgentHandle:
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        try:
            self.deregister()
        except NotFound:
            pass  # already forgotten by the daemon: nothing left to clean up

    def __repr__(self) -> str:
        return f"AgentHandle(agent_id={self._agent_id!r}, ttl={self._ttl}, lost={self._lost})"


class LeaseHandle:
    """A lease this client holds. Returned by :meth:`AgentKeeperClient.acquire_lease`.

    ``with lease:`` releases on exit, even on exception (a lease that already expired or was
    released by the daemon is fine). :attr:`token` is the fencing token to pass along with
    every write the lease protects.

    With ``keep_alive=True`` a background thread renews every ``ttl/3`` seconds. The lease is
    declared :attr:`lost` and ``on_lost(handle)`` is called (once, from that thread) when a
    renewal answers NOT_FOUND or PERMISSION_DENIED, or when renewals kept failing (daemon
    unreachable) for a whole ttl, so the lease may already belong to someone else. Renewal
    stops then: stop the work, the lease no longer protects it.
    """

    def __init__(
        self,
        client: AgentKeeperClient,
        lease: Lease,
        ttl: int,
        keep_alive: bool = False,
        on_lost: Optional[Callable[[LeaseHandle], Any]] = None,
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
        self._repeater: Optional[_Repeater] = None
        if keep_alive:
            self._repeater = _Repeater(
                interval_for(ttl, 60, 1 / 3), self._keep_alive, name=f"agentkeeper-lease-{lease.task_id[:16]}"
            )
            client._track(self)

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

    def renew(self, ttl: Optional[int] = None, timeout: _Timeout = None) -> Lease:
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
            response = self._client._unary("lease", "RenewLease", request, timeout)
        except (NotFound, PermissionDenied) as e:
            self._lost = True
            self.lost_reason = self.lost_reason or e.details()
            raise
        self._lease = cv.lease_from_pb(response.lease)
        self._valid_until = sent + effective_ttl(ttl or self._ttl, 60)
        return self._lease

    def _keep_alive(self) -> bool:
        try:
            self.renew(self._ttl or None)
            return True
        except (NotFound, PermissionDenied) as e:
            return self._declare_lost(e.details())
        except AgentKeeperError as e:
            if time.monotonic() >= self._valid_until:
                return self._declare_lost(f"no successful renewal for a whole ttl (last error: {e})")
            log.warning("agentkeeper: renewing lease %r failed: %s", self._lease.task_id, e)
            return True

    def _declare_lost(self, reason: str) -> bool:
        with self._lock:
            if self._closing:
                return False
            self._lost = True
            self.lost_reason = reason
        log.warning("agentkeeper: lease %r lost: %s", self._lease.task_id, reason)
        if self._on_lost is not None:
            try:
                self._on_lost(self)
            except Exception:
                log.exception("agentkeeper: on_lost callback for lease %r raised", self._lease.task_id)
        return False

    def stop_keep_alive(self) -> None:
        """Stop background renewal (the lease will then expire by its ttl)."""
        with self._lock:
            self._closing = True
        if self._repeater is not None:
            self._repeater.stop()

    def release(self, timeout: _Timeout = None) -> None:
        """Give the lease up now. Raises :class:`NotFound` if it already expired."""
        self.stop_keep_alive()
        request = pb.ReleaseLeaseRequest(
            task_id=self._lease.task_id,
            agent_id=self._lease.holder_agent_id,
            token=pb.FencingToken(value=self._lease.token),
        )
        self._client._unary("lease", "ReleaseLease", request, timeout)
        self._released = True

    def __enter__(self) -> LeaseHandle:
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if self._released:
            return
        try:
            self.release()
        except (NotFound, PermissionDenied) as e:
            self._lost = True
            log.warning("agentkeeper: lease %r was already gone on release: %s", self._lease.task_id, e)

    def __repr__(self) -> str:
        return f"LeaseHandle(task_id={self.task_id!r}, token={self.token}, lost={self._lost})"


class Subscription:
    """A running :meth:`AgentKeeperClient.watch` or :meth:`AgentKeeperClient.watch_election`.

    A background thread reads the server stream, hands each item to the callback and reopens the
    stream (with backoff) when it drops. ``cancel()`` stops it; as a context manager it cancels
    on exit. An error that ends it for good goes to ``on_error`` and is kept in :attr:`error`.
    """

    _kind = "watch"

    def __init__(
        self,
        client: AgentKeeperClient,
        on_error: Optional[Callable[[AgentKeeperError], Any]],
        name: str,
    ) -> None:
        self._client = client
        self._on_error = on_error
        self._channel = client._new_channel(own_connection=True)
        self._lock = threading.Lock()
        self._call: Any = None
        self._cancelled = threading.Event()
        self._ready = threading.Event()
        self._done = threading.Event()
        self._drop_requested = False
        self._startup_error: Optional[AgentKeeperError] = None
        self.error: Optional[AgentKeeperError] = None
        """The error that ended the subscription (OUT_OF_RANGE, RESOURCE_EXHAUSTED, ...), if any."""
        self.reconnects = 0
        """How many times the stream was reopened after a drop."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # subclass hooks
    def _open(self) -> Any:
        raise NotImplementedError

    def _deliver(self, message: Any) -> None:
        raise NotImplementedError

    def _start(self, timeout: _Timeout) -> None:
        self._thread.start()
        wait = self._client._timeout if timeout is None else timeout
        if not self._ready.wait(wait):
            self.cancel()
            raise Unavailable(f"{self._kind} stream did not open within {wait}s")
        if self._startup_error is not None:
            self.cancel()
            raise self._startup_error

    def _run(self) -> None:
        delay = 0.0
        try:
            while not self._cancelled.is_set():
                error: Optional[AgentKeeperError] = None
                call = None
                try:
                    call = self._open()
                    with self._lock:
                        self._call = call
                    if self._cancelled.is_set():
                        call.cancel()
                        break
                    call.initial_metadata()  # returns once the daemon has subscribed us
                    if call.is_active():
                        self._ready.set()
                    for message in call:
                        self._ready.set()
                        self._deliver(message)
                        delay = 0.0
                except grpc.RpcError as e:  # also an AgentKeeperError raised by _deliver
                    error = from_rpc_error(e)
                finally:
                    with self._lock:
                        self._call = None
                    if call is not None:
                        call.cancel()  # no-op when the stream already ended
                if self._cancelled.is_set():
                    break
                with self._lock:
                    dropped_on_purpose, self._drop_requested = self._drop_requested, False
                if error is not None and error.code() not in STREAM_RETRYABLE:
                    if self._reopen_after(error):
                        continue
                    if not self._ready.is_set():
                        self._startup_error = error
                        self._ready.set()
                        return
                    self._fail(error)
                    return
                self.reconnects += 1
                self._warn_if_no_resume_point()
                if dropped_on_purpose:
                    continue
                delay = self._client._retry.next_delay(delay)
                log.info("agentkeeper: %s stream dropped (%s); reopening in %.2fs", self._kind, error, delay)
                if self._cancelled.wait(delay):
                    break
        finally:
            self._done.set()
            if self._cancelled.is_set() or self.error is not None or self._startup_error is not None:
                self._channel.close()

    def _warn_if_no_resume_point(self) -> None:
        """Election watches restart from the current state; nothing to resume."""

    def _reopen_after(self, error: AgentKeeperError) -> bool:
        """Whether a stream that ended with ``error`` should be reopened at once after all."""
        return False

    def _fail(self, error: AgentKeeperError) -> None:
        self.error = error
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                log.exception("agentkeeper: on_error callback raised")
        else:
            log.error("agentkeeper: %s stream ended: %s (pass on_error= to handle this)", self._kind, error)

    @property
    def active(self) -> bool:
        """True while events may still arrive (not cancelled, not ended by an error)."""
        return not self._done.is_set() and not self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop receiving events. Safe to call more than once and from inside the callback."""
        self._cancelled.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(timeout=5)
        self._channel.close()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the subscription ends (cancelled or failed); False on timeout."""
        return self._done.wait(timeout)

    def _force_reconnect(self) -> None:
        """Test hook: cancel the underlying gRPC call as if the connection dropped."""
        with self._lock:
            call = self._call
            if call is None:
                return
            self._drop_requested = True
        call.cancel()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.cancel()


class EventSubscription(Subscription):
    """A running :meth:`AgentKeeperClient.watch`. ``cancel()`` or use as a context manager.

    The callback runs on the subscription's thread, once per event, in sequence order. If the
    stream drops it is reopened (with backoff) where it stopped, so no event is lost or repeated
    while the daemon still retains it. If it no longer does (or it is not the same history any
    more: a daemon restarted without ``--data-dir``), the subscription ends with
    :class:`~agentkeeper.OutOfRange` to ``on_error``.
    """

    def __init__(
        self,
        client: AgentKeeperClient,
        topics: list[str],
        callback: Callable[[WatchEvent], Any],
        on_error: Optional[Callable[[AgentKeeperError], Any]],
        from_sequence: int,
    ) -> None:
        super().__init__(client, on_error, name="agentkeeper-watch")
        self.topics = topics
        self._callback = callback
        self._cursor = EventCursor(from_sequence)

    @property
    def last_sequence(self) -> int:
        """Sequence of the last event delivered to the callback (0: none yet)."""
        return self._cursor.last_sequence

    def _open(self) -> Any:
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

    def _deliver(self, message: Any) -> None:
        sequence = int(message.sequence_number)
        at = message.occurred_at
        if not self._cursor.accept(sequence, message.topic, at.seconds, at.nanos, message.payload.type_url):
            return  # already delivered before a reconnect
        event = cv.watch_event_from_pb(message)
        try:
            self._callback(event)
        except Exception:
            log.exception("agentkeeper: watch callback raised on %s #%d", event.topic, sequence)


class ElectionSubscription(Subscription):
    """A running :meth:`AgentKeeperClient.watch_election`.

    The callback first gets the group's current state, then every change. After a reconnect the
    current state is delivered only if it differs from the last one delivered.
    """

    _kind = "election watch"

    def __init__(
        self,
        client: AgentKeeperClient,
        group: str,
        callback: Callable[[ElectionState], Any],
        on_error: Optional[Callable[[AgentKeeperError], Any]],
    ) -> None:
        super().__init__(client, on_error, name=f"agentkeeper-election-{group[:16]}")
        self.group = group
        self._callback = callback
        self.last_state: Optional[ElectionState] = None

    def _open(self) -> Any:
        return stubs.ElectionServiceStub(self._channel).WatchElection(pb.WatchElectionRequest(group=self.group))

    def _deliver(self, message: Any) -> None:
        state = cv.election_event_state(message)
        if state is None:
            return
        last = self.last_state
        if last is not None and (last.term, last.leader_agent_id) == (state.term, state.leader_agent_id):
            return
        self.last_state = state
        try:
            self._callback(state)
        except Exception:
            log.exception("agentkeeper: watch_election callback raised")


# ── tasks ────────────────────────────────────────────────────────────────────────────────────────


class ClaimedTask(Task):
    """A task this client claimed for an agent (:meth:`AgentKeeperClient.claim_task`,
    :meth:`AgentKeeperClient.tasks`): every :class:`~agentkeeper.Task` field as it was at the
    claim, plus the claim lease and calls bound to the client and the claiming agent.

    Finish it with :meth:`complete` or :meth:`fail`. Until then the daemon holds a lease on the
    task's id for the claiming agent (:attr:`lease`, :attr:`token`, the task's ``ttl``); if it
    expires (or the agent dies) the task fails with reason "lease expired" ("agent died") and is
    retried or DEAD. For work longer than the ttl call :meth:`renew` now and then, or
    :meth:`keep_alive` once to renew in the background until the task is finished.

    ``with task:`` finishes it for you: if the block raises, the task is failed with the error's
    text (``"ValueError: bad input"``) and the error propagates, unless :attr:`raise_errors` is
    False (as in :meth:`AgentKeeperClient.tasks` by default), in which case it is logged and
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
        return self._handle._ttl

    @property
    def finished(self) -> bool:
        """True once :meth:`complete` or :meth:`fail` succeeded through this object."""
        return bool(self._finished)

    @property
    def lease_lost(self) -> bool:
        """True once a renewal found the claim gone (see :meth:`keep_alive`)."""
        return self._handle.lost

    def complete(self, output: bytes = b"", timeout: _Timeout = None) -> None:
        """Mark the task COMPLETED with ``output`` (<= 4 MiB; a ``str`` is UTF-8 encoded).

        Raises :class:`FailedPrecondition` if the claim is gone (the lease expired, the task was
        already finished).
        """
        self._finish("completed", self._client.complete_task, output, timeout)

    def fail(self, reason: str = "", timeout: _Timeout = None) -> None:
        """Record a failure: the task goes back to PENDING while ``retry_count <= max_retries``
        after this one, else DEAD. Raises :class:`FailedPrecondition` if the claim is gone."""
        self._finish("failed", self._client.fail_task, reason, timeout)

    def _finish(self, outcome: str, call: Callable[..., None], value: Any, timeout: _Timeout) -> None:
        try:
            call(self.id, self.agent_id, value, timeout=timeout)
        except (NotFound, FailedPrecondition):
            self._handle.stop_keep_alive()  # the claim is gone: nothing left to renew
            raise
        self._finished = outcome
        self._handle.stop_keep_alive()

    def renew(self, ttl: Optional[int] = None, timeout: _Timeout = None) -> Lease:
        """Push the claim lease's expiry to now + ``ttl`` (default: the task's ttl). Returns the
        lease. Raises :class:`NotFound` if it already expired (the task was failed meanwhile)."""
        return self._handle.renew(ttl, timeout)

    def keep_alive(self, on_lost: Optional[Callable[[ClaimedTask], Any]] = None) -> ClaimedTask:
        """Renew the claim lease every ttl/3 seconds on a background thread until the task is
        completed or failed (or the client closes). ``on_lost(task)`` is called once if a renewal
        finds the claim gone: stop working on it. Returns the task itself."""
        if self._finished or self._handle._repeater is not None:
            return self

        def lost(handle: LeaseHandle) -> None:
            if on_lost is not None:
                on_lost(self)

        old = self._handle
        self._handle = LeaseHandle(self._client, old.lease, old._ttl, keep_alive=True, on_lost=lost)
        self._handle._valid_until = old._valid_until  # as of the claim or the last renewal
        return self

    def _abandon(self, reason: str) -> None:
        """Fail the task if it is still unfinished (best effort) and stop renewing."""
        try:
            if not self._finished:
                self.fail(reason)
        except AgentKeeperError as e:
            log.warning("agentkeeper: could not fail task %s (%s): %s", self.id, reason, e)
        finally:
            self._handle.stop_keep_alive()

    def __enter__(self) -> ClaimedTask:
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> bool:
        if exc is None:
            if not self._finished:
                try:
                    self.complete()
                except AgentKeeperError as e:
                    if self.raise_errors:
                        raise
                    log.warning("agentkeeper: completing task %s at the end of its block failed: %s", self.id, e)
            return False
        if not self._finished:
            self._abandon(failure_reason(exc))
        if isinstance(exc, Exception) and not self.raise_errors:
            log.error("agentkeeper: task %s (%s) raised; it was failed", self.id, self.type, exc_info=exc)
            return True
        return False


class TaskWorker:
    """Claims tasks for one agent, one at a time: ``for task in client.tasks(agent_id)``.

    Made by :meth:`AgentKeeperClient.tasks`, which documents the loop. Each ``iter()`` starts a
    claiming loop; ``with client.tasks(...) as worker:`` stops it on exit and, if the block raised,
    fails the task in hand with the error's text. :meth:`stop` (from any thread, e.g. a signal
    handler) ends the loop after the current task; a claim waiting for a task is cancelled.
    """

    def __init__(
        self,
        client: AgentKeeperClient,
        agent_id: str,
        *,
        raise_errors: bool,
        keep_alive: bool,
        idle_timeout: Optional[float],
        max_tasks: Optional[int],
    ) -> None:
        self._client = client
        self.agent_id = agent_id
        self.raise_errors = raise_errors
        self.keep_alive = keep_alive
        self.idle_timeout = idle_timeout
        self.max_tasks = max_tasks
        self.claimed = 0
        """How many tasks this worker has handed out so far."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._current: Optional[ClaimedTask] = None
        # The claiming loops (generators) started by iter(). Held strongly only inside `with
        # worker:`, so that __exit__ sees the exception that left the loop and fails the task in
        # hand with its text; otherwise weakly, so that a plain `for` loop left by break or an
        # exception closes its generator at once (which fails the unfinished task).
        self._entered = False
        self._loops: list[Any] = []

    def __iter__(self) -> Iterator[ClaimedTask]:
        loop = self._run()
        self._loops = [r for r in self._loops if deref(r) is not None]
        self._loops.append(loop if self._entered else weakref.ref(loop))
        return loop

    def _set_call(self, call: Any) -> None:
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

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def _run(self) -> Iterator[ClaimedTask]:
        client = self._client
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
                    task = client._claim(self.agent_id, wait, stop=self._stop, on_call=self._set_call)
                except Unavailable as e:
                    backoff = client._retry.next_delay(backoff)
                    log.warning("agentkeeper: claiming for %s failed (%s); again in %.2fs", self.agent_id, e, backoff)
                    if self._stop.wait(backoff):
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
                        task.complete()
                    except AgentKeeperError as e:
                        log.warning("agentkeeper: completing task %s after the loop body failed: %s", task.id, e)
                current = self._current = None
                idle_since = time.monotonic()
        finally:
            if current is not None:
                current._abandon("the worker loop ended before the task was finished")
            self._current = None

    def __enter__(self) -> TaskWorker:
        self._entered = True
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.stop()
        current = self._current
        if exc is not None and current is not None and not current.finished:
            current._abandon(failure_reason(exc))
        loops, self._loops = self._loops, []
        self._entered = False
        for ref in loops:
            loop = deref(ref)
            if loop is None:
                continue
            try:
                loop.close()
            except ValueError:  # running on another thread: stop() ends it there
                pass

    def __repr__(self) -> str:
        return f"TaskWorker(agent_id={self.agent_id!r}, claimed={self.claimed}, stopped={self.stopped})"


# ── client ───────────────────────────────────────────────────────────────────────────────────────


class AgentKeeperClient:
    """Blocking client for the AgentKeeper daemon: registry, leases, elections, entitlements,
    the event bus, tasks and the manual clock, over one gRPC channel.

    ``AgentKeeperClient()`` connects to ``localhost:7070`` (or ``$AGENTKEEPER_ADDRESS``);
    :meth:`embedded` starts a private daemon. Use it as a context manager to close on exit.

    ``timeout`` is the default per-call deadline in seconds (``None``: none), retries included;
    every call also takes ``timeout=``. Calls are retried with backoff on UNAVAILABLE per
    ``retry``: idempotent ones always, the others only while no request could be sent (see
    README, "Errors, timeouts and retries"). Failures raise
    :class:`~agentkeeper.AgentKeeperError` subclasses, which are ``grpc.RpcError``.

    ``credentials`` (e.g. ``grpc.ssl_channel_credentials(ca, key, cert)``) connects over TLS to a
    daemon started with ``--tls-cert`` (and mutual TLS with ``--tls-client-ca``); ``token`` sends
    ``authorization: Bearer TOKEN`` on every call, for a daemon started with ``--auth-tokens``.
    """

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
        self._token = token
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
        self._background: weakref.WeakSet[Any] = weakref.WeakSet()
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
    ) -> AgentKeeperClient:
        """Start a private daemon and return a client connected to it; ``close()`` stops it.

        ``binary``: path to the daemon (else ``$AGENTKEEPER_BIN``, ``PATH``, this repo's
        ``target/{release,debug}``, ``./daemon/agentkeeper``, the wheel's own binary). ``port``:
        gRPC port (default: one the OS picks; the HTTP port is always one the OS picks, so
        daemons run side by side).
        ``data_dir``: persist state there (passed as ``--data-dir``). ``clock="manual"``: time
        stands still until :meth:`advance`. ``seed``: deterministic ids.
        """
        daemon = EmbeddedDaemon(
            binary=binary, port=port, data_dir=data_dir, clock=clock, seed=seed, extra_args=extra_args
        )
        daemon.start(timeout=startup_timeout)
        try:
            client = cls(host=daemon.host, port=daemon.port, timeout=timeout, retry=retry)
            client._daemon = daemon
            grpc.channel_ready_future(client._channel).result(timeout=startup_timeout)
        except BaseException:
            daemon.stop()
            raise
        return client

    @property
    def daemon(self) -> Optional[EmbeddedDaemon]:
        """The embedded daemon (``None`` in sidecar mode)."""
        return self._daemon

    @property
    def address(self) -> str:
        """``host:port`` this client talks to."""
        return f"{self.host}:{self.port}"

    def _new_channel(self, own_connection: bool = False) -> grpc.Channel:
        options = list(self._options)
        if own_connection:
            # Each watch stream gets its own connection: with HTTP/2 a slow watcher would
            # otherwise hold the shared connection's flow-control window and stall every unary
            # call (heartbeats included) of this client.
            options.append(("grpc.use_local_subchannel_pool", 1))
        target = f"{self.host}:{self.port}"
        if self._credentials is not None:
            channel = grpc.secure_channel(target, self._credentials, options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        if self._token is not None:
            channel = grpc.intercept_channel(channel, bearer_interceptor(self._token))
        return channel

    def _track(self, obj: Any) -> None:
        self._background.add(obj)

    def close(self) -> None:
        """Stop background heartbeats, renewals and watches, close the channel, stop an embedded daemon."""
        if self._closed:
            return
        self._closed = True
        for obj in list(self._background):
            if isinstance(obj, Subscription):
                obj.cancel()
            elif isinstance(obj, AgentHandle):
                obj.stop_heartbeat()
            elif isinstance(obj, LeaseHandle):
                obj.stop_keep_alive()
            elif isinstance(obj, TaskWorker):
                obj.stop()
        self._channel.close()
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None

    def __enter__(self) -> AgentKeeperClient:
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "embedded" if self._daemon is not None else "sidecar"
        return f"AgentKeeperClient({self.address!r}, {mode})"

    # ── plumbing ──

    def _unary(self, service: str, method: str, request: Any, timeout: _Timeout) -> Any:
        call = getattr(self._stubs[service], method)
        budget = self._timeout if timeout is None else timeout  # for the call, retries included
        end = None if budget is None else time.monotonic() + budget
        delays = self._retry.delays()
        while True:
            remaining = None if end is None else max(0.001, end - time.monotonic())
            try:
                return call(request, timeout=remaining)
            except grpc.RpcError as e:
                error = from_rpc_error(e)
                if not self._closed and should_retry(method, error.code(), error.details()):
                    delay = next(delays, None)
                    if delay is not None and (end is None or time.monotonic() + delay < end):
                        time.sleep(delay)
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
        on_lost: Optional[Callable[[AgentHandle], Any]] = None,
        heartbeat: bool = True,
        timeout: _Timeout = None,
    ) -> AgentHandle:
        """Register an agent and heartbeat it in the background every ``ttl/2`` seconds.

        Returns an :class:`AgentHandle`; ``with client.register(...) as agent:`` deregisters on
        exit. ``on_lost(handle)`` is called if the daemon declares the agent DEAD.
        ``heartbeat=False`` leaves heartbeating to you (``agent.heartbeat()``).
        Not retried: a retry after a lost reply would register a second agent.
        """
        card = cv.make_card(name, description, version, tools, metadata, capabilities)
        ttl = cv.check_uint("ttl", ttl)
        request = pb.RegisterRequest(card=cv.card_to_pb(card), ttl_seconds=ttl)
        response = self._unary("registry", "Register", request, timeout)
        return AgentHandle(self, response.agent_id, ttl, on_lost=on_lost, heartbeat=heartbeat)

    def heartbeat(self, agent_id: str, timeout: _Timeout = None) -> None:
        """Send one heartbeat for ``agent_id`` (NOT_FOUND if it is DEAD or unknown)."""
        self._unary("registry", "Heartbeat", pb.HeartbeatRequest(agent_id=cv.check_str("agent_id", agent_id)), timeout)

    def deregister(self, agent_id: str, timeout: _Timeout = None) -> None:
        """Mark ``agent_id`` DEAD now. Already DEAD is fine; unknown raises :class:`NotFound`."""
        self._unary(
            "registry", "Deregister", pb.DeregisterRequest(agent_id=cv.check_str("agent_id", agent_id)), timeout
        )

    def get_agent(self, agent_id: str, timeout: _Timeout = None) -> AgentInfo:
        """Any known agent, DEAD ones included. Raises :class:`NotFound` for an unknown id."""
        request = pb.GetAgentRequest(agent_id=cv.check_str("agent_id", agent_id))
        return cv.agent_info_from_pb(self._unary("registry", "GetAgent", request, timeout).agent)

    def find(
        self,
        query: str = "",
        tools: Optional[Iterable[str]] = None,
        limit: int = 10,
        timeout: _Timeout = None,
    ) -> list[AgentInfo]:
        """ALIVE agents that have every tool in ``tools``, ranked by relevance to ``query``
        (registration order when ``query`` is empty). ``limit`` 0 means 10; at most 1000."""
        request = pb.FindRequest(
            query=cv.check_str("query", query),
            tools=cv.check_str_list("tools", tools),
            limit=cv.check_uint("limit", limit),
        )
        return [cv.agent_info_from_pb(a) for a in self._unary("registry", "Find", request, timeout).agents]

    # ── leases ──

    def acquire_lease(
        self,
        task_id: str,
        agent_id: str,
        ttl: int = 60,
        *,
        keep_alive: bool = False,
        on_lost: Optional[Callable[[LeaseHandle], Any]] = None,
        timeout: _Timeout = None,
    ) -> Optional[LeaseHandle]:
        """Try to take the exclusive lease on ``task_id`` for ``agent_id``.

        Returns a :class:`LeaseHandle` (``.token`` is the fencing token), or ``None`` if another
        agent holds it. Acquiring a lease you already hold returns the same token with a fresh
        expiry. ``keep_alive=True`` renews every ``ttl/3`` seconds until released;
        ``on_lost(handle)`` is called if a renewal finds the lease gone.
        """
        request = pb.AcquireLeaseRequest(
            task_id=cv.check_str("task_id", task_id),
            agent_id=cv.check_str("agent_id", agent_id),
            ttl_seconds=cv.check_uint("ttl", ttl),
        )
        sent = time.monotonic()
        response = self._unary("lease", "AcquireLease", request, timeout)
        if not response.acquired:
            return None
        lease = cv.lease_from_pb(response.lease)
        return LeaseHandle(self, lease, ttl, keep_alive=keep_alive, on_lost=on_lost, requested_at=sent)

    # ── elections ──

    def campaign(self, group: str, agent_id: str, timeout: _Timeout = None) -> ElectionState:
        """Stand ``agent_id`` for ``group`` (FIFO; a no-op if already standing). Returns the current
        state: you lead iff ``state.leader_agent_id == agent_id``. Never displaces a leader."""
        request = pb.CampaignRequest(group=cv.check_str("group", group), agent_id=cv.check_str("agent_id", agent_id))
        return cv.election_state_from_pb(self._unary("election", "Campaign", request, timeout).state)

    def resign(self, group: str, agent_id: str, timeout: _Timeout = None) -> None:
        """Leave ``group``; if ``agent_id`` led, the next candidate leads (``term`` + 1)."""
        request = pb.ResignRequest(group=cv.check_str("group", group), agent_id=cv.check_str("agent_id", agent_id))
        self._unary("election", "Resign", request, timeout)

    def list_elections(self, timeout: _Timeout = None) -> list[ElectionGroup]:
        """Every election group, by name, with the head of its line of candidates (the leader
        first; ``candidates_total`` counts them all), fetched page by page (``timeout`` is per
        page)."""

        def page(token: str) -> tuple[list[ElectionGroup], str]:
            request = pb.ListElectionsRequest(page_token=token)
            response = self._unary("election", "ListElections", request, timeout)
            return [cv.election_group_from_pb(g) for g in response.groups], response.next_page_token

        return list(_every_page(page))

    # ── listing leases ──

    def list_leases(self, prefix: str = "", page_size: int = 0, timeout: _Timeout = None) -> list[Lease]:
        """Every lease held whose key starts with ``prefix``, by key, fetched page by page
        (``page_size`` a call, 0: 1000, at most 2000; ``timeout`` is per page). Pages are read one
        after the other, not as one snapshot."""
        return list(self.iter_leases(prefix, page_size, timeout))

    def iter_leases(self, prefix: str = "", page_size: int = 0, timeout: _Timeout = None) -> Iterator[Lease]:
        """:meth:`list_leases` lazily: fetches the next page when the previous one is used up."""
        return _every_page(lambda token: self.list_leases_page(prefix, page_size, token, timeout))

    def list_leases_page(
        self, prefix: str = "", page_size: int = 0, page_token: str = "", timeout: _Timeout = None
    ) -> tuple[list[Lease], str]:
        """One page of :meth:`list_leases`: ``(leases, next_page_token)``; the token is ``""`` after
        the last page."""
        request = pb.ListLeasesRequest(
            prefix=cv.check_str("prefix", prefix),
            page_size=cv.check_uint("page_size", page_size),
            page_token=cv.check_str("page_token", page_token),
        )
        response = self._unary("lease", "ListLeases", request, timeout)
        return [cv.lease_from_pb(lease) for lease in response.leases], response.next_page_token

    def watch_election(
        self,
        group: str,
        callback: Callable[[ElectionState], Any],
        on_error: Optional[Callable[[AgentKeeperError], Any]] = None,
        *,
        timeout: _Timeout = None,
    ) -> ElectionSubscription:
        """Call ``callback(state)`` with ``group``'s current state, then on every leader change.

        Returns once the daemon has subscribed us; ``cancel()`` or use as a context manager.
        """
        cv.check_str("group", group)
        sub = ElectionSubscription(self, group, callback, on_error)
        self._track(sub)
        sub._start(timeout)
        return sub

    # ── entitlements ──

    def set_policy(
        self,
        id: str,
        subject: str,
        action: str,
        resource: str,
        effect: Union[PolicyEffect, str],
        timeout: _Timeout = None,
    ) -> Policy:
        """Create or replace (by ``id``) a policy. ``*`` in subject/action/resource matches any run."""
        policy = Policy(
            id=cv.check_str("id", id),
            subject=cv.check_str("subject", subject),
            action=cv.check_str("action", action),
            resource=cv.check_str("resource", resource),
            effect=cv.to_effect(effect),
        )
        request = pb.SetPolicyRequest(policy=cv.policy_to_pb(policy))
        return cv.policy_from_pb(self._unary("entitlements", "SetPolicy", request, timeout).policy)

    def check_policy(self, subject: str, action: str, resource: str, timeout: _Timeout = None) -> CheckResult:
        """May ``subject`` do ``action`` on ``resource``? Any matching DENY wins, else any ALLOW,
        else denied by default; ``reason`` names the deciding policy."""
        request = pb.CheckPolicyRequest(
            subject=cv.check_str("subject", subject),
            action=cv.check_str("action", action),
            resource=cv.check_str("resource", resource),
        )
        return cv.check_result_from_pb(self._unary("entitlements", "CheckPolicy", request, timeout))

    def list_policies(self, subject_prefix: str = "", timeout: _Timeout = None) -> list[Policy]:
        """Policies sorted by id, optionally only those whose subject starts with ``subject_prefix``,
        fetched page by page (each as much as fits ~3 MiB; ``timeout`` is per page)."""
        prefix = cv.check_str("subject_prefix", subject_prefix)

        def page(token: str) -> tuple[list[Policy], str]:
            request = pb.ListPoliciesRequest(subject_prefix=prefix, page_token=token)
            response = self._unary("entitlements", "ListPolicies", request, timeout)
            return [cv.policy_from_pb(p) for p in response.policies], response.next_page_token

        return list(_every_page(page))

    def delete_policy(self, id: str, timeout: _Timeout = None) -> None:
        """Delete a policy. Raises :class:`NotFound` for an unknown id."""
        self._unary("entitlements", "DeletePolicy", pb.DeletePolicyRequest(id=cv.check_str("id", id)), timeout)

    # ── event bus ──

    def watch(
        self,
        topics: Iterable[str],
        callback: Callable[[WatchEvent], Any],
        on_error: Optional[Callable[[AgentKeeperError], Any]] = None,
        *,
        from_sequence: int = 0,
        timeout: _Timeout = None,
    ) -> EventSubscription:
        """Call ``callback(event)`` on a background thread for every event whose topic starts with
        one of ``topics`` (empty: all), in sequence order.

        Returns once the daemon has subscribed us, so nothing that happens afterwards is missed.
        A dropped stream is reopened with backoff, resuming at the last delivered sequence + 1:
        each event reaches the callback exactly once. ``from_sequence`` > 0 first replays
        retained events from there. Errors that end the stream (OUT_OF_RANGE: resumed too far
        back; RESOURCE_EXHAUSTED: the callback fell too far behind) go to ``on_error(error)``.
        """
        topic_list = cv.check_str_list("topics", topics)
        start = cv.check_uint("from_sequence", from_sequence, cv.UINT64_MAX)
        sub = EventSubscription(self, topic_list, callback, on_error, start)
        self._track(sub)
        sub._start(timeout)
        return sub

    # ── tasks ──

    def create_task(
        self,
        type: str,
        input: bytes = b"",
        required_tools: Optional[Iterable[str]] = None,
        max_retries: int = 0,
        ttl: int = 60,
        timeout: _Timeout = None,
    ) -> Task:
        """Enqueue a task; returns it PENDING (``task.created`` on the bus).

        ``type``: 1..=256 bytes, free text for your workers. ``input``: <= 4 MiB (a ``str`` is
        UTF-8 encoded). Only agents whose card lists every one of ``required_tools`` can claim
        it. A failure (FailTask, its claim lease running out, its claimer dying) puts it back to
        PENDING while ``retry_count <= max_retries``, else it is DEAD. ``ttl``: seconds of the
        claim lease a claimer gets (0 means 60). Not retried: a retry after a lost reply would
        enqueue it twice.
        """
        request = pb.CreateTaskRequest(
            type=cv.check_str("type", type),
            input=cv.check_bytes("input", input),
            required_tools=cv.check_str_list("required_tools", required_tools),
            max_retries=cv.check_uint("max_retries", max_retries),
            ttl_seconds=cv.check_uint("ttl", ttl),
        )
        return cv.task_from_pb(self._unary("task", "CreateTask", request, timeout).task)

    @overload
    def claim_task(self, agent_id: str, timeout: None = None) -> ClaimedTask: ...

    @overload
    def claim_task(self, agent_id: str, timeout: Union[float, timedelta]) -> Optional[ClaimedTask]: ...

    def claim_task(self, agent_id: str, timeout: Union[float, timedelta, None] = None) -> Optional[ClaimedTask]:
        """Claim the oldest PENDING task that ``agent_id`` has the tools for, waiting for one.

        ``timeout`` is how long to wait, in seconds: ``None`` (the default, as in v1) waits until
        a task comes, however long; ``0`` only takes one that is pending now. Returns a
        :class:`ClaimedTask` (``task.complete(output)``, ``task.fail(reason)``, ``task.lease``,
        ``task.renew()``), or ``None`` if no task came within ``timeout``.

        Waiters are served in arrival order. The agent must be ALIVE: UNREACHABLE raises
        :class:`FailedPrecondition`, unknown or DEAD :class:`NotFound`. Matching uses the tools
        on the agent's card, so register the agent with the tools it can use.
        """
        cv.check_str("agent_id", agent_id)
        wait = None if timeout is None else cv.seconds_of("timeout", timeout)
        if wait is not None and wait < 0:
            raise InvalidArgument(f"timeout must not be negative, got {wait}")
        return self._claim(agent_id, wait)

    def _claim(
        self,
        agent_id: str,
        wait: Optional[float],
        *,
        stop: Optional[threading.Event] = None,
        on_call: Optional[Callable[[Any], None]] = None,
    ) -> Optional[ClaimedTask]:
        """Long-polls ClaimTask until a task is claimed, ``wait`` seconds passed (None: never) or
        ``stop`` is set. The deadline of each poll tells the daemon how long to wait (wait_ms
        unset); ``wait == 0`` sends wait_ms=0 instead."""
        request = pb.ClaimTaskRequest(agent_id=agent_id)
        if wait == 0:
            request.wait_ms = 0
        end = None if wait is None else time.monotonic() + wait
        delays = self._retry.delays()
        while True:
            if stop is not None and stop.is_set():
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
            call = self._task.ClaimTask.future(request, timeout=poll)
            if on_call is not None:
                on_call(call)
            try:
                response = call.result()
            except grpc.FutureCancelledError:
                if stop is not None and stop.is_set():
                    return None
                raise Cancelled("the claim was cancelled") from None
            except grpc.RpcError as e:
                error = from_rpc_error(e)
                code = error.code()
                if not self._closed and should_retry("ClaimTask", code, error.details()):
                    delay = next(delays, None)
                    if delay is not None and (end is None or time.monotonic() + delay < end):
                        if stop is not None and stop.wait(delay):
                            return None
                        if stop is None:
                            time.sleep(delay)
                        continue
                if stop is not None and stop.is_set() and code == grpc.StatusCode.CANCELLED:
                    return None
                if not poll_timed_out(code, poll, sent, self._closed):
                    raise error from None
                response = None  # the poll's deadline passed with no task (see poll_timed_out)
            finally:
                if on_call is not None:
                    on_call(None)
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
                if stop is not None:
                    stop.wait(pause)
                else:
                    time.sleep(pause)

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
        """Work loop: claim tasks for ``agent`` (an agent id or :class:`AgentHandle` you
        registered, with the tools on its card) one at a time and yield each as a
        :class:`ClaimedTask`::

            for task in client.tasks(worker.agent_id):
                with task:                    # raises: the task fails with the error's text
                    task.complete(do(task.input))

        The loop long-polls, so it costs nothing while the queue is empty. It ends after
        ``max_tasks`` tasks, when no task came for ``idle_timeout`` seconds (``None``: never),
        or on ``worker.stop()``. UNAVAILABLE (daemon restarting) is retried with backoff; other
        errors (the agent is DEAD: :class:`NotFound`, UNREACHABLE: :class:`FailedPrecondition`)
        end the loop.

        What happens to the task in hand:

        - the body calls ``task.complete(output)`` / ``task.fail(reason)``: that is its outcome;
        - the body finishes without doing either: it is completed with empty output;
        - inside ``with task:``, the body raises an ``Exception``: the task is failed with
          ``"ExceptionType: message"`` as the reason; the error is logged and the loop goes on,
          or, with ``raise_errors=True``, the error propagates and ends the loop;
        - the loop is left otherwise (``break``, an exception outside ``with task:``): the task
          is failed at once with reason "the worker loop ended before the task was finished"
          (inside ``with client.tasks(...) as worker:``, with the exception's text), so it is
          retried now instead of when its lease runs out. Finish a task before ``break``.

        ``keep_alive=True`` renews each task's claim lease in the background until it is
        finished (long work); otherwise the task's ttl is the time the body has.

        ``tools`` does not select tasks: the daemon matches tasks against the tools on the
        agent's card, never against this argument. If given, it is a check made here, once: the
        agent's card must list all of them, else :class:`InvalidArgument`, since a worker
        expecting tasks its card does not qualify it for would wait forever.
        """
        agent_id = agent.agent_id if isinstance(agent, AgentHandle) else cv.check_str("agent", agent)
        if tools is not None:
            cv.check_card_tools(agent_id, cv.check_str_list("tools", tools), self.get_agent(agent_id))
        worker = TaskWorker(
            self,
            agent_id,
            raise_errors=raise_errors,
            keep_alive=keep_alive,
            idle_timeout=None if idle_timeout is None else cv.seconds_of("idle_timeout", idle_timeout),
            max_tasks=None if max_tasks is None else cv.check_uint("max_tasks", max_tasks),
        )
        self._track(worker)
        return worker

    def complete_task(self, task_id: str, agent_id: str, output: bytes = b"", timeout: _Timeout = None) -> None:
        """Mark a task ``agent_id`` claimed COMPLETED with ``output`` (<= 4 MiB); its claim lease
        is released. Another agent, or a task not CLAIMED (any more): :class:`FailedPrecondition`;
        unknown task: :class:`NotFound`."""
        request = pb.CompleteTaskRequest(
            task_id=cv.check_str("task_id", task_id),
            agent_id=cv.check_str("agent_id", agent_id),
            output=cv.check_bytes("output", output),
        )
        self._unary("task", "CompleteTask", request, timeout)

    def fail_task(self, task_id: str, agent_id: str, reason: str = "", timeout: _Timeout = None) -> None:
        """Record a failure of a task ``agent_id`` claimed: ``retry_count`` + 1, then back to
        PENDING while ``retry_count <= max_retries``, else DEAD. ``reason`` (<= 4096 bytes) is
        kept as ``failure_reason``. Errors as for :meth:`complete_task`."""
        request = pb.FailTaskRequest(
            task_id=cv.check_str("task_id", task_id),
            agent_id=cv.check_str("agent_id", agent_id),
            reason=cv.check_str("reason", reason),
        )
        self._unary("task", "FailTask", request, timeout)

    def get_task(self, task_id: str, timeout: _Timeout = None) -> Task:
        """One task, any status, with its input and output. :class:`NotFound` for an unknown id
        (or a COMPLETED/DEAD one past the daemon's ``--task-retention``, 24 h by default)."""
        request = pb.GetTaskRequest(task_id=cv.check_str("task_id", task_id))
        return cv.task_from_pb(self._unary("task", "GetTask", request, timeout).task)

    def list_tasks(
        self,
        status: Optional[Union[TaskStatus, str]] = None,
        page_size: int = 0,
        timeout: _Timeout = None,
    ) -> list[Task]:
        """All tasks in creation order, optionally only those with ``status``, fetched page by page
        (``page_size`` tasks a call, 0: the daemon's 1000; ``timeout`` is per page).

        Pages are read one after the other, not as one snapshot: a task that changes status
        meanwhile may be missed by a ``status`` filter. FAILED is never a resting status (a failed
        task is PENDING again or DEAD at once), so ``status=FAILED`` lists nothing.
        """
        return list(self.iter_tasks(status, page_size, timeout))

    def iter_tasks(
        self,
        status: Optional[Union[TaskStatus, str]] = None,
        page_size: int = 0,
        timeout: _Timeout = None,
    ) -> Iterator[Task]:
        """:meth:`list_tasks` lazily: fetches the next page when the previous one is used up."""
        return _every_page(lambda token: self.list_tasks_page(status, page_size, token, timeout))

    def list_tasks_page(
        self,
        status: Optional[Union[TaskStatus, str]] = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: _Timeout = None,
    ) -> tuple[list[Task], str]:
        """One page of :meth:`list_tasks`: ``(tasks, next_page_token)``; pass the token back for the
        next page; it is ``""`` after the last. A page holds at most ``page_size`` tasks (0:
        1000, at most 10000) and about 3 MiB of input and output."""
        request = pb.ListTasksRequest(
            status=cv.task_status_to_pb(status),
            page_size=cv.check_uint("page_size", page_size),
            page_token=cv.check_str("page_token", page_token),
        )
        response = self._unary("task", "ListTasks", request, timeout)
        return [cv.task_from_pb(t) for t in response.tasks], response.next_page_token

    # ── manual clock ──

    def advance(self, seconds: Union[float, timedelta], timeout: _Timeout = None) -> datetime:
        """Move a ``clock="manual"`` daemon's time forward; timers that fall due fire (agents
        go UNREACHABLE/DEAD, leases expire) before this returns. Returns the new time.
        With the real clock: :class:`FailedPrecondition`."""
        request = pb.AdvanceRequest(duration=cv.duration(cv.seconds_of("seconds", seconds)))
        return cv.ts(self._unary("clock", "Advance", request, timeout).now)

    def now(self, timeout: _Timeout = None) -> datetime:
        """The manual clock's current time (UTC). With the real clock: :class:`FailedPrecondition`."""
        return cv.ts(self._unary("clock", "Now", pb.NowRequest(), timeout).now)

