"""The blocking client: :class:`AgentKeeperClient` and the handles it returns."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Callable, Optional, TypeVar, Union

import grpc

from agentkeeper import _convert as cv
from agentkeeper._common import (
    CHANNEL_OPTIONS,
    DEFAULT_TIMEOUT,
    STREAM_RETRYABLE,
    EventCursor,
    RetryPolicy,
    effective_ttl,
    interval_for,
    resolve_address,
    should_retry,
)
from agentkeeper._embedded import EmbeddedDaemon
from agentkeeper._errors import (
    AgentKeeperError,
    NotFound,
    PermissionDenied,
    Unavailable,
    from_rpc_error,
)
from agentkeeper._types import (
    AgentInfo,
    Capability,
    CheckResult,
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
]

log = logging.getLogger("agentkeeper")

_Timeout = Optional[float]
_S = TypeVar("_S", bound="Subscription")


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
    """

    def __init__(
        self,
        host: Optional[str] = None,
        port: Optional[int] = None,
        *,
        timeout: _Timeout = DEFAULT_TIMEOUT,
        retry: Optional[RetryPolicy] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.host, self.port = resolve_address(host, port)
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
        ``target/{release,debug}``, ``./daemon/agentkeeper``). ``port``: gRPC port (default: a
        free one; the HTTP port is always a free one, so daemons run side by side).
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
            return grpc.secure_channel(target, self._credentials, options=options)
        return grpc.insecure_channel(target, options=options)

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
        """Policies sorted by id, optionally only those whose subject starts with ``subject_prefix``."""
        request = pb.ListPoliciesRequest(subject_prefix=cv.check_str("subject_prefix", subject_prefix))
        return [cv.policy_from_pb(p) for p in self._unary("entitlements", "ListPolicies", request, timeout).policies]

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
        """Enqueue a PENDING task."""
        request = pb.CreateTaskRequest(
            type=cv.check_str("type", type),
            input=cv.check_bytes("input", input),
            required_tools=cv.check_str_list("required_tools", required_tools),
            max_retries=cv.check_uint("max_retries", max_retries),
            ttl_seconds=cv.check_uint("ttl", ttl),
        )
        return cv.task_from_pb(self._unary("task", "CreateTask", request, timeout).task)

    def claim_task(self, agent_id: str, timeout: Optional[float] = None) -> Task:
        """Long-poll for the oldest PENDING task this agent has the tools for, and claim it.

        Unlike other calls, ``timeout=None`` waits without a deadline.
        """
        request = pb.ClaimTaskRequest(agent_id=cv.check_str("agent_id", agent_id))
        try:
            response = self._task.ClaimTask(request, timeout=timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return cv.task_from_pb(response.task)

    def complete_task(self, task_id: str, agent_id: str, output: bytes = b"", timeout: _Timeout = None) -> None:
        """Mark a task this agent claimed COMPLETED with ``output``."""
        request = pb.CompleteTaskRequest(
            task_id=cv.check_str("task_id", task_id),
            agent_id=cv.check_str("agent_id", agent_id),
            output=cv.check_bytes("output", output),
        )
        self._unary("task", "CompleteTask", request, timeout)

    def fail_task(self, task_id: str, agent_id: str, reason: str = "", timeout: _Timeout = None) -> None:
        """Record a failure of a claimed task: back to PENDING while retries remain, else DEAD."""
        request = pb.FailTaskRequest(
            task_id=cv.check_str("task_id", task_id),
            agent_id=cv.check_str("agent_id", agent_id),
            reason=cv.check_str("reason", reason),
        )
        self._unary("task", "FailTask", request, timeout)

    def get_task(self, task_id: str, timeout: _Timeout = None) -> Task:
        """One task, any status."""
        request = pb.GetTaskRequest(task_id=cv.check_str("task_id", task_id))
        return cv.task_from_pb(self._unary("task", "GetTask", request, timeout).task)

    def list_tasks(self, status: Optional[Union[TaskStatus, str]] = None, timeout: _Timeout = None) -> list[Task]:
        """Tasks in creation order, optionally only those with ``status``."""
        request = pb.ListTasksRequest(status=cv.task_status_to_pb(status))
        return [cv.task_from_pb(t) for t in self._unary("task", "ListTasks", request, timeout).tasks]

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

