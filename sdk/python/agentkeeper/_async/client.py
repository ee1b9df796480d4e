"""The client: every call of the daemon, the retry loop, embedded mode, ``agentkeeper://`` URLs
and the connection-state listener.

This is the one source of both clients. As it is, it is the asyncio client
(``agentkeeper.aio.AgentKeeperClient``); ``scripts/unasync.py`` makes the blocking client
(``agentkeeper.AgentKeeperClient``, ``agentkeeper/_sync/client.py``) from it. So the docstrings
here speak of both: "returns" means "returns" in the blocking client and "the awaited value" in
the asyncio one. It never touches a gRPC channel itself (``_transport`` does) and never imports
asyncio (``_runtime`` does), so that the generated blocking client has neither.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, TypeVar, Union, overload

import grpc
from google.protobuf.message import Message

from agentkeeper import _convert as cv
from agentkeeper import _rpc as rpc
from agentkeeper._async.handles import AgentHandle, LeaseHandle
from agentkeeper._async.keepalive import KeepAlives
from agentkeeper._async.streams import ElectionWatch, WatchStream
from agentkeeper._async.tasks import ClaimedTask, TaskWorker
from agentkeeper._common import (
    channel_options as merged_channel_options,
    CLAIM_POLL_SECONDS,
    CLIENT_ID_HEADER,
    DEFAULT_TIMEOUT,
    EMPTY_POLL_PAUSE,
    ConnectionTracker,
    REQUEST_SEQ_HEADER,
    RetryPolicy,
    failed_for_good,
    keep_claiming,
    parse_url,
    poll_timed_out,
    should_retry,
)
from agentkeeper._embedded import EmbeddedDaemon
from agentkeeper._endpoints import EndpointRing, resolve_endpoints, split_target, target_options
from agentkeeper._errors import (
    AgentKeeperError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from agentkeeper._runtime import (
    ASYNC_REPR_PREFIX,
    AsyncPending,
    AsyncWorker,
    async_opened,
    async_pending,
    async_run_blocking,
    async_sleep,
    async_maybe_await,
)
from agentkeeper._transport import AsyncChannel, AsyncTransport, ChannelOption
from agentkeeper._types import (
    AgentCard,
    AgentInfo,
    Capability,
    CheckResult,
    ClockMode,
    ClusterStatus,
    ConnectionState,
    EffectName,
    ElectionGroup,
    ElectionState,
    Lease,
    Policy,
    PolicyEffect,
    Task,
    TaskStatus,
    TaskStatusName,
    WatchEvent,
)
from agentkeeper.v1 import agentkeeper_pb2 as pb
from agentkeeper.v1 import cluster_pb2

if TYPE_CHECKING:
    from agentkeeper._rpc import Rpc

__all__ = ["AgentKeeperClient"]

log = logging.getLogger("agentkeeper")

_Timeout = Optional[float]
_Item = TypeVar("_Item")
_Req = TypeVar("_Req", bound=Message)
_Resp = TypeVar("_Resp", bound=Message)


class _Background(Protocol):
    """What runs in the background for a client (heartbeats, renewals, watches, worker loops)
    and ends when it closes."""

    async def _shutdown(self) -> None: ...


DEFAULT_LOST_AFTER = 30.0
"""Seconds without a connection before listeners hear ``"lost"``: the default agent ttl, after
which an agent that could not heartbeat is UNREACHABLE."""

# The events that can free a lease (``acquire_lease(..., wait=)`` waits for one on its key).
_LEASE_FREED = ["lease.released", "lease.expired"]


async def _every_page(fetch: Callable[[str], Awaitable[tuple[list[_Item], str]]]) -> AsyncIterator[_Item]:
    """The items of a paged listing, lazily: ``fetch(token)`` gives a page and the next token
    (``""`` first, and after the last page)."""
    token = ""
    while True:
        items, token = await fetch(token)
        for item in items:
            yield item
        if not token:
            return


class AgentKeeperClient:
    """A client of the AgentKeeper daemon: registry, leases, elections, entitlements, the event
    bus, tasks and the manual clock, over one gRPC channel.

    ``AgentKeeperClient()`` connects to ``localhost:7070`` (or ``$AGENTKEEPER_ADDRESS``),
    :meth:`from_url` to an ``agentkeeper://host:port`` URL; :meth:`embedded` starts a private
    daemon. Use it as a context manager to close it on exit. ``host`` may name its port
    (``AgentKeeperClient("10.0.0.5:7070")``, ``"[::1]:7070"``; then without ``port``).
    ``AgentKeeperClient("unix:PATH")``
    (or an endpoint ``"unix:PATH"``) talks to a daemon's Unix socket (its ``--uds PATH``): a
    sidecar on the same host.

    ``endpoints=["h1:7070", "h2:7070", "h3:7070"]`` (instead of ``host``/``port``) names the
    nodes of a cluster: the client talks to one at a time, the first at the start, and moves on
    to the next when that one is down or answers UNAVAILABLE. Heartbeats, lease keep-alives and
    watches carry on across the move (see README, "Clusters").

    ``timeout`` is the default per-call deadline in seconds (``None``: none), retries included;
    every call also takes ``timeout=``. Calls are retried with backoff on UNAVAILABLE per
    ``retry``: idempotent ones always, the others only while surely not carried out (no request
    could be sent, or a cluster node refused it before proposing it); one that may have been
    carried out raises :class:`~agentkeeper.OutcomeUnknownError` (see README, "Errors, timeouts
    and retries"). Failures raise :class:`~agentkeeper.AgentKeeperError` subclasses, which are
    ``grpc.RpcError``.

    ``credentials`` (e.g. ``grpc.ssl_channel_credentials(ca, key, cert)``) connects over TLS to a
    daemon started with ``--tls-cert`` (and mutual TLS with ``--tls-client-ca``); ``token`` sends
    ``authorization: Bearer TOKEN`` on every call, for a daemon started with ``--auth-tokens``.
    """

    def __init__(
        self,
        host: Optional[str] = None,
        port: Optional[int] = None,
        *,
        endpoints: Optional[Sequence[str]] = None,
        timeout: _Timeout = DEFAULT_TIMEOUT,
        retry: Optional[RetryPolicy] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        token: Optional[str] = None,
        channel_options: Sequence[ChannelOption] = (),
        lost_after: float = DEFAULT_LOST_AFTER,
    ) -> None:
        self._ring = EndpointRing(resolve_endpoints(host, port, endpoints))
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        # Numbers this client's creating writes (see ``_unary``): a random id, a counter.
        self._client_id = uuid.uuid4().hex
        self._request_seq = 0
        self._lost_after = lost_after
        options = merged_channel_options(channel_options)
        # One channel per endpoint (a channel connects only once used).
        self._transports = {
            target: AsyncTransport(target, credentials, token, target_options(target, options))
            for target in self._ring.targets
        }
        self._daemon: Optional[EmbeddedDaemon] = None
        self._background: weakref.WeakSet[_Background] = weakref.WeakSet()
        # Every agent's heartbeats and every kept-alive lease's renewals: one stream per kind.
        self._keepalives = KeepAlives(self)
        self._listeners: list[Callable[[ConnectionState], object]] = []
        self._connection: Optional[AsyncWorker] = None
        self._connection_state: Optional[ConnectionState] = None
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        retry: Optional[RetryPolicy] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        channel_options: Sequence[ChannelOption] = (),
        lost_after: float = DEFAULT_LOST_AFTER,
    ) -> AgentKeeperClient:
        """A client for ``agentkeeper://HOST[:PORT]`` (port 7070 by default), as redis-py's
        ``Redis.from_url``: ``agentkeepers://`` connects over TLS (the system's root
        certificates unless ``credentials`` are given), ``agentkeeper://:TOKEN@HOST`` sends a
        bearer token, ``?timeout=SECONDS`` (or ``none``) sets the default per-call timeout."""
        parsed = parse_url(url)
        if parsed.tls and credentials is None:
            credentials = grpc.ssl_channel_credentials()
        return cls(
            parsed.host,
            parsed.port,
            timeout=parsed.timeout,
            retry=retry,
            credentials=credentials if parsed.tls else None,
            token=parsed.token,
            channel_options=channel_options,
            lost_after=lost_after,
        )

    @classmethod
    def embedded(
        cls,
        binary: Optional[Union[str, os.PathLike[str]]] = None,
        port: Optional[int] = None,
        data_dir: Optional[Union[str, os.PathLike[str]]] = None,
        *,
        clock: ClockMode = "real",
        seed: Optional[int] = None,
        extra_args: Sequence[str] = (),
        timeout: _Timeout = DEFAULT_TIMEOUT,
        retry: Optional[RetryPolicy] = None,
        startup_timeout: float = 15.0,
    ) -> AsyncPending[AgentKeeperClient]:
        """Start a private daemon and give a client connected to it; ``close()`` stops it.

        ``binary``: path to the daemon (else ``$AGENTKEEPER_BIN``, ``PATH``, this repo's
        ``target/{release,debug}``, ``./daemon/agentkeeper``, the wheel's own binary). ``port``:
        gRPC port (default: one the OS picks; the HTTP port is always one the OS picks, so
        daemons run side by side).
        ``data_dir``: persist state there (passed as ``--data-dir``). ``clock="manual"``: time
        stands still until :meth:`advance`. ``seed``: deterministic ids. The asyncio client's
        result is awaited, or entered as an asynchronous context manager.
        """

        async def start() -> AgentKeeperClient:
            daemon = EmbeddedDaemon(
                binary=binary, port=port, data_dir=data_dir, clock=clock, seed=seed, extra_args=extra_args
            )
            await async_run_blocking(lambda: daemon.start(timeout=startup_timeout))
            try:
                client = cls(host=daemon.host, port=daemon.port, timeout=timeout, retry=retry)
                client._daemon = daemon
                await client._transport.wait_ready(startup_timeout)
            except BaseException:
                await async_run_blocking(daemon.stop)
                raise
            return client

        return async_pending(start)

    @property
    def daemon(self) -> Optional[EmbeddedDaemon]:
        """The embedded daemon (``None`` in sidecar mode)."""
        return self._daemon

    @property
    def address(self) -> str:
        """``host:port`` this client talks to now (with several endpoints: the current one)."""
        return self._ring.current

    @property
    def host(self) -> str:
        """The host of :attr:`address`."""
        return split_target(self._ring.current)[0]

    @property
    def port(self) -> int:
        """The port of :attr:`address`."""
        return split_target(self._ring.current)[1]

    @property
    def endpoints(self) -> list[str]:
        """Every ``host:port`` this client may talk to, in order (one unless ``endpoints=``)."""
        return list(self._ring.targets)

    @property
    def _transport(self) -> AsyncTransport:
        """The channel to the node the client talks to now."""
        return self._transports[self._ring.current]

    @property
    def _channel(self) -> AsyncChannel:
        """The gRPC channel (v1 code builds raw ``*_pb2_grpc`` stubs on ``client._channel``)."""
        return self._transport.channel

    def _move_on(self, target: str) -> None:
        """``target`` is down or answered UNAVAILABLE: talk to the next endpoint from now on
        (nothing happens if the client already moved, or has one endpoint)."""
        after = self._ring.move_from(target)
        if after is not None:
            log.info("agentkeeper: %s is unavailable; moving to %s", target, after)
            self._transports[target].wake()  # a connection-state listener follows the client

    async def _follow_current(self, transport: AsyncTransport) -> AsyncTransport:
        """``transport`` (a stream's own connection) if it goes to the node the client talks to
        now, else a new own connection to that node (``transport`` is closed)."""
        current = self._transport
        if transport.target == current.target:
            return transport
        await transport.close()
        return current.own_connection()

    def _track(self, obj: _Background) -> None:
        self._background.add(obj)

    async def close(self) -> None:
        """Stop background heartbeats, renewals and watches, close the channel, stop an embedded
        daemon. Connection-state listeners hear ``"lost"``."""
        if self._closed:
            return
        self._closed = True
        for obj in list(self._background):
            await obj._shutdown()
        for transport in self._transports.values():
            await transport.close()
        if self._connection is not None:
            await self._connection.stop()
        if self._connection_state not in (None, "lost"):
            await self._tell_listeners("lost")
        if self._daemon is not None:
            daemon, self._daemon = self._daemon, None
            await async_run_blocking(daemon.stop)

    async def __aenter__(self) -> AgentKeeperClient:
        return self

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        mode = "embedded" if self._daemon is not None else "sidecar"
        more = f" of {len(self._ring.targets)} endpoints" if len(self._ring.targets) > 1 else ""
        return f"{ASYNC_REPR_PREFIX}AgentKeeperClient({self.address!r}{more}, {mode})"

    # ── plumbing ──

    async def _unary(
        self, method: Rpc[_Req, _Resp], request: _Req, timeout: _Timeout, *, numbered: bool = False
    ) -> _Resp:
        """One call with the client's retry policy; ``timeout`` covers the retries too. A retry
        goes to the next endpoint (when there are several). ``numbered``: the call carries this
        client's id and a new request number, the same on every retry, so the daemon applies it
        once and it is retried like an idempotent call."""
        budget = self._timeout if timeout is None else timeout
        end = None if budget is None else time.monotonic() + budget
        delays = self._retry.delays()
        metadata = None
        if numbered:
            self._request_seq += 1
            metadata = ((CLIENT_ID_HEADER, self._client_id), (REQUEST_SEQ_HEADER, str(self._request_seq)))
        while True:
            remaining = None if end is None else max(0.001, end - time.monotonic())
            transport = self._transport
            try:
                return await transport.call(method, request, remaining, metadata)
            except AgentKeeperError as error:
                if not self._closed and should_retry(method.name, error.code(), error.details(), numbered):
                    self._move_on(transport.target)
                    delay = next(delays, None)
                    if delay is not None and (end is None or time.monotonic() + delay < end):
                        await async_sleep(delay)
                        continue
                raise failed_for_good(method.name, error) from None

    # ── connection state ──

    @property
    def connection_state(self) -> Optional[ConnectionState]:
        """``"connected"``, ``"reconnecting"`` or ``"lost"`` as last told to the listeners
        (``None`` before a listener was added and the channel said anything)."""
        return self._connection_state

    def add_listener(self, listener: Callable[[ConnectionState], object]) -> None:
        """Call ``listener(state)`` whenever the connection to the daemon changes, as kazoo's
        ``add_listener``: ``"connected"``; ``"reconnecting"`` when it drops (calls meanwhile fail
        with UNAVAILABLE or are retried); ``"lost"`` when it stayed down for ``lost_after``
        seconds (the client's argument, 30 by default: agents that could not heartbeat may be
        UNREACHABLE or DEAD by then, their leases expired) or the client was closed. The
        listener runs on a background worker (a coroutine function is awaited); the client
        starts connecting when the first listener is added."""
        self._listeners.append(listener)
        if self._connection is None and not self._closed:
            self._connection = AsyncWorker(self._follow_connection, "agentkeeper-connection")

    def remove_listener(self, listener: Callable[[ConnectionState], object]) -> None:
        """Stop calling ``listener``."""
        self._listeners = [known for known in self._listeners if known is not listener]

    async def _follow_connection(self, worker: AsyncWorker) -> None:
        tracker = ConnectionTracker(self._lost_after)
        transport = self._transport
        last = transport.connectivity()
        change: Optional[str] = last
        while not worker.stopping:
            now = time.monotonic()
            state = tracker.observe(last, now) if change is not None else tracker.expire(now)
            if state is not None:
                await self._tell_listeners(state)
            if last == "SHUTDOWN":
                return
            change = await transport.next_connectivity(last, tracker.wait_seconds(time.monotonic()))
            if transport is not self._transport:  # the client moved to another node: follow it
                transport = self._transport
                change = transport.connectivity()
            if change is not None:
                last = change

    async def _tell_listeners(self, state: ConnectionState) -> None:
        self._connection_state = state
        for listener in list(self._listeners):
            try:
                await async_maybe_await(listener(state))
            except Exception:
                log.exception("agentkeeper: connection-state listener raised")

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
        on_lost: Optional[Callable[[AgentHandle], object]] = None,
        heartbeat: bool = True,
        timeout: _Timeout = None,
    ) -> AsyncPending[AgentHandle]:
        """Register an agent and heartbeat it in the background every ``ttl/2`` seconds.

        Gives an :class:`AgentHandle`; used as a context manager it deregisters on exit (the
        asyncio client's result is awaited, or entered as an asynchronous context manager).
        ``on_lost(handle)`` is called if the daemon declares the agent DEAD. ``heartbeat=False``
        leaves heartbeating to you (``agent.heartbeat()``). Retried like an idempotent call: it
        carries this client's id and a request number, and the daemon registers once however
        often it comes (a retry after a lost reply gets the same agent id).
        """
        card = cv.make_card(name, description, version, tools, metadata, capabilities)
        return self._register(card, cv.check_uint("ttl", ttl), on_lost, heartbeat, timeout)

    def register_a2a(
        self,
        card: Union[Mapping[str, Any], str],
        ttl: int = 30,
        *,
        tools: Optional[Iterable[str]] = None,
        metadata: Optional[Mapping[str, str]] = None,
        on_lost: Optional[Callable[[AgentHandle], object]] = None,
        heartbeat: bool = True,
        timeout: _Timeout = None,
    ) -> AsyncPending[AgentHandle]:
        """Register an agent described by an A2A agent card (a dict or a JSON string) and
        heartbeat it, as :meth:`register` does.

        The daemon keeps the card's JSON as given and serves it at
        ``/a2a/agents/{agent_id}/agent-card.json`` while the agent lives; its name, description
        and version fill the plain card, and each skill (name, description, tags, examples)
        becomes a capability, so ``find`` matches the agent by its skills. A card over 64 KiB or
        without name, description, version or skills (each with id, name, description and tags)
        is refused with :class:`InvalidArgument` naming the field. ``tools`` are the tool names
        claim_task and ``find(tools=...)`` match on.
        """
        plain = cv.make_card("", "", "", tools, metadata, None)
        plain.a2a_card = cv.a2a_card_json(card)
        return self._register(plain, cv.check_uint("ttl", ttl), on_lost, heartbeat, timeout)

    def _register(
        self,
        card: AgentCard,
        ttl: int,
        on_lost: Optional[Callable[[AgentHandle], object]],
        heartbeat: bool,
        timeout: _Timeout,
    ) -> AsyncPending[AgentHandle]:
        async def run() -> AgentHandle:
            request = pb.RegisterRequest(card=cv.card_to_pb(card), ttl_seconds=ttl)
            response = await self._unary(rpc.REGISTER, request, timeout, numbered=True)
            return AgentHandle(self, response.agent_id, ttl, on_lost=on_lost, heartbeat=heartbeat)

        return async_pending(run)

    async def heartbeat(self, agent_id: str, timeout: _Timeout = None) -> None:
        """Send one heartbeat for ``agent_id`` (NOT_FOUND if it is DEAD or unknown)."""
        await self._unary(rpc.HEARTBEAT, pb.HeartbeatRequest(agent_id=cv.check_str("agent_id", agent_id)), timeout)

    async def deregister(self, agent_id: str, timeout: _Timeout = None) -> None:
        """Mark ``agent_id`` DEAD now. Already DEAD is fine; unknown raises :class:`NotFound`."""
        await self._unary(rpc.DEREGISTER, pb.DeregisterRequest(agent_id=cv.check_str("agent_id", agent_id)), timeout)

    async def get_agent(self, agent_id: str, timeout: _Timeout = None) -> AgentInfo:
        """Any known agent, DEAD ones included. Raises :class:`NotFound` for an unknown id."""
        request = pb.GetAgentRequest(agent_id=cv.check_str("agent_id", agent_id))
        return cv.agent_info_from_pb((await self._unary(rpc.GET_AGENT, request, timeout)).agent)

    async def find(
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
        return [cv.agent_info_from_pb(a) for a in (await self._unary(rpc.FIND, request, timeout)).agents]

    # ── leases ──

    def acquire_lease(
        self,
        task_id: str,
        agent_id: str,
        ttl: int = 60,
        *,
        wait: Optional[Union[float, timedelta]] = None,
        keep_alive: bool = False,
        on_lost: Optional[Callable[[LeaseHandle], object]] = None,
        timeout: _Timeout = None,
    ) -> AsyncPending[Optional[LeaseHandle]]:
        """Take the exclusive lease on ``task_id`` (any string key) for ``agent_id``.

        Gives a :class:`LeaseHandle` (``.token`` is the fencing token), or ``None`` if another
        agent holds it. With ``wait=SECONDS`` it waits until the lease is free and taken, or the
        wait runs out (then ``None``), as redis-py's ``lock(blocking_timeout=)`` and kazoo's
        ``Lock.acquire(timeout=)`` do: it watches for the lease's release or expiry and tries
        again, so waiting costs nothing. Waiters are not served in any order.

        Acquiring a lease the agent already holds gives the same token with a fresh expiry.
        ``keep_alive=True`` renews every ``ttl/3`` seconds until released; ``on_lost(handle)``
        is called if a renewal finds the lease gone. The asyncio client's result is awaited, or
        entered as an asynchronous context manager, which raises :class:`FailedPrecondition`
        when the lease is held.
        """
        request = pb.AcquireLeaseRequest(
            task_id=cv.check_str("task_id", task_id),
            agent_id=cv.check_str("agent_id", agent_id),
            ttl_seconds=cv.check_uint("ttl", ttl),
        )
        wait_seconds = None if wait is None else cv.seconds_of("wait", wait)
        if wait_seconds is not None and wait_seconds < 0:
            raise InvalidArgument(f"wait must not be negative, got {wait_seconds}")
        holder: list[str] = []

        async def once() -> Optional[LeaseHandle]:
            sent = time.monotonic()
            response = await self._unary(rpc.ACQUIRE_LEASE, request, timeout)
            if not response.acquired:
                holder[:] = [response.lease.holder_agent_id]
                return None
            lease = cv.lease_from_pb(response.lease)
            return LeaseHandle(self, lease, ttl, keep_alive=keep_alive, on_lost=on_lost, requested_at=sent)

        async def run() -> Optional[LeaseHandle]:
            if not wait_seconds:
                return await once()
            return await self._acquire_waiting(task_id, once, wait_seconds)

        def not_acquired() -> Exception:
            who = holder[0] if holder else "another agent"
            return FailedPrecondition(f'lease "{task_id}" is held by agent "{who}"')

        return async_pending(run, not_acquired)

    async def _acquire_waiting(
        self, key: str, once: Callable[[], Awaitable[Optional[LeaseHandle]]], wait: float
    ) -> Optional[LeaseHandle]:
        """``once()`` until it takes the lease, woken by the lease's release or expiry; None when
        ``wait`` seconds ran out. The watch opens before each try, so no release is missed."""
        end = time.monotonic() + wait
        transport = self._transport.own_connection()
        pause = 0.0
        try:
            while True:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return None
                transport = await self._follow_current(transport)
                events = transport.stream(rpc.WATCH, pb.WatchRequest(topics=_LEASE_FREED), timeout=remaining)
                try:
                    await events.opened()
                    handle = await once()
                    if handle is not None:
                        return handle
                    while True:
                        try:
                            message = await events.read()
                        except Unavailable:  # the watch's node went away: on to the next one
                            self._move_on(transport.target)
                            pause = self._retry.next_delay(pause)
                            await async_sleep(min(pause, max(0.0, end - time.monotonic())))
                            break
                        if message is None:
                            break  # the stream ended: try again on a new one
                        freed = cv.payload_from_any(message.payload)
                        if isinstance(freed, Lease) and freed.task_id == key:
                            pause = 0.0
                            break
                except DeadlineExceeded:
                    return None
                finally:
                    events.cancel()
        finally:
            await transport.close()

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
        response = await self._unary(rpc.LIST_LEASES, request, timeout)
        return [cv.lease_from_pb(lease) for lease in response.leases], response.next_page_token

    # ── elections ──

    async def campaign(self, group: str, agent_id: str, timeout: _Timeout = None) -> ElectionState:
        """Stand ``agent_id`` for ``group`` (FIFO; a no-op if already standing). Gives the current
        state: you lead iff ``state.leader_agent_id == agent_id``. Never displaces a leader."""
        request = pb.CampaignRequest(group=cv.check_str("group", group), agent_id=cv.check_str("agent_id", agent_id))
        return cv.election_state_from_pb((await self._unary(rpc.CAMPAIGN, request, timeout)).state)

    async def resign(self, group: str, agent_id: str, timeout: _Timeout = None) -> None:
        """Leave ``group``; if ``agent_id`` led, the next candidate leads (``term`` + 1)."""
        request = pb.ResignRequest(group=cv.check_str("group", group), agent_id=cv.check_str("agent_id", agent_id))
        await self._unary(rpc.RESIGN, request, timeout)

    async def list_elections(self, timeout: _Timeout = None) -> list[ElectionGroup]:
        """Every election group, by name, with the head of its line of candidates (the leader
        first; ``candidates_total`` counts them all), fetched page by page (``timeout`` is per
        page)."""

        async def page(token: str) -> tuple[list[ElectionGroup], str]:
            response = await self._unary(rpc.LIST_ELECTIONS, pb.ListElectionsRequest(page_token=token), timeout)
            return [cv.election_group_from_pb(g) for g in response.groups], response.next_page_token

        return [group async for group in _every_page(page)]

    def watch_election(
        self,
        group: str,
        callback: Optional[Callable[[ElectionState], object]] = None,
        on_error: Optional[Callable[[AgentKeeperError], object]] = None,
        *,
        timeout: _Timeout = None,
    ) -> ElectionWatch:
        """``group``'s current state, then each leader change: iterate over what this returns, or
        pass ``callback(state)`` (called from a background worker; a coroutine function is
        awaited). Opened as :meth:`watch` is; ``cancel()`` or use it as a context manager."""
        stream = ElectionWatch(self, cv.check_str("group", group), callback, on_error, timeout)
        return async_opened(stream)

    # ── entitlements ──

    async def set_policy(
        self,
        id: str,
        subject: str,
        action: str,
        resource: str,
        effect: Union[PolicyEffect, EffectName],
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
        response = await self._unary(rpc.SET_POLICY, pb.SetPolicyRequest(policy=cv.policy_to_pb(policy)), timeout)
        return cv.policy_from_pb(response.policy)

    async def check_policy(self, subject: str, action: str, resource: str, timeout: _Timeout = None) -> CheckResult:
        """May ``subject`` do ``action`` on ``resource``? Any matching DENY wins, else any ALLOW,
        else denied by default; ``reason`` names the deciding policy."""
        request = pb.CheckPolicyRequest(
            subject=cv.check_str("subject", subject),
            action=cv.check_str("action", action),
            resource=cv.check_str("resource", resource),
        )
        return cv.check_result_from_pb(await self._unary(rpc.CHECK_POLICY, request, timeout))

    async def list_policies(self, subject_prefix: str = "", timeout: _Timeout = None) -> list[Policy]:
        """Policies sorted by id, optionally only those whose subject starts with ``subject_prefix``,
        fetched page by page (each as much as fits ~3 MiB; ``timeout`` is per page)."""
        prefix = cv.check_str("subject_prefix", subject_prefix)

        async def page(token: str) -> tuple[list[Policy], str]:
            request = pb.ListPoliciesRequest(subject_prefix=prefix, page_token=token)
            response = await self._unary(rpc.LIST_POLICIES, request, timeout)
            return [cv.policy_from_pb(p) for p in response.policies], response.next_page_token

        return [policy async for policy in _every_page(page)]

    async def delete_policy(self, id: str, timeout: _Timeout = None) -> None:
        """Delete a policy. Raises :class:`NotFound` for an unknown id."""
        await self._unary(rpc.DELETE_POLICY, pb.DeletePolicyRequest(id=cv.check_str("id", id)), timeout)

    # ── event bus ──

    def watch(
        self,
        topics: Iterable[str] = (),
        callback: Optional[Callable[[WatchEvent], object]] = None,
        on_error: Optional[Callable[[AgentKeeperError], object]] = None,
        *,
        from_sequence: int = 0,
        timeout: _Timeout = None,
    ) -> WatchStream:
        """Events whose topic starts with one of ``topics`` (empty: all), in sequence order:
        iterate over what this returns (``for event in client.watch(["agent."])``), or pass
        ``callback(event)`` (the v1 form), called from a background worker.

        The blocking client opens the stream before returning, the asyncio client when the
        stream is awaited, entered or iterated; either way the daemon has subscribed us by
        then, so nothing that happens afterwards is missed. A dropped stream is reopened with
        backoff, resuming at the last event handed out: each event comes exactly once.
        ``from_sequence`` > 0 first replays retained events from there. Errors that end the
        stream (OUT_OF_RANGE: resumed too far back, or another history; RESOURCE_EXHAUSTED: it
        fell too far behind) go to ``on_error(error)``; without one, iterating raises them.
        """
        topic_list = cv.check_str_list("topics", topics)
        start = cv.check_uint("from_sequence", from_sequence, cv.UINT64_MAX)
        return async_opened(WatchStream(self, topic_list, callback, on_error, start, timeout))

    # ── tasks ──

    async def create_task(
        self,
        type: str,
        input: Union[bytes, str] = b"",
        required_tools: Optional[Iterable[str]] = None,
        max_retries: int = 0,
        ttl: int = 60,
        timeout: _Timeout = None,
    ) -> Task:
        """Enqueue a task; gives it PENDING (``task.created`` on the bus).

        ``type``: 1..=256 bytes, free text for your workers. ``input``: <= 4 MiB (a ``str`` is
        UTF-8 encoded). Only agents whose card lists every one of ``required_tools`` can claim
        it. A failure (FailTask, its claim lease running out, its claimer dying) puts it back to
        PENDING while ``retry_count <= max_retries``, else it is DEAD. ``ttl``: seconds of the
        claim lease a claimer gets (0 means 60). Retried like an idempotent call: it carries this
        client's id and a request number, and the daemon enqueues it once however often it comes.
        """
        request = pb.CreateTaskRequest(
            type=cv.check_str("type", type),
            input=cv.check_bytes("input", input),
            required_tools=cv.check_str_list("required_tools", required_tools),
            max_retries=cv.check_uint("max_retries", max_retries),
            ttl_seconds=cv.check_uint("ttl", ttl),
        )
        return cv.task_from_pb((await self._unary(rpc.CREATE_TASK, request, timeout, numbered=True)).task)

    @overload
    async def claim_task(self, agent_id: str, timeout: None = None) -> ClaimedTask: ...

    @overload
    async def claim_task(self, agent_id: str, timeout: Union[float, timedelta]) -> Optional[ClaimedTask]: ...

    async def claim_task(self, agent_id: str, timeout: Union[float, timedelta, None] = None) -> Optional[ClaimedTask]:
        """Claim the oldest PENDING task that ``agent_id`` has the tools for, waiting for one.

        ``timeout`` is how long to wait, in seconds: ``None`` (the default, as in v1) waits until
        a task comes, however long; ``0`` only takes one that is pending now. Gives a
        :class:`ClaimedTask` (``task.complete(output)``, ``task.fail(reason)``, ``task.lease``,
        ``task.renew()``), or ``None`` if no task came within ``timeout``.

        Waiters are served in arrival order. The agent must be ALIVE: UNREACHABLE raises
        :class:`FailedPrecondition`, unknown or DEAD :class:`NotFound`. Matching uses the tools
        on the agent's card, so register the agent with the tools it can use. Cancelling an
        asyncio claim cancels the call (a task handed over meanwhile goes back to PENDING).
        """
        cv.check_str("agent_id", agent_id)
        wait = None if timeout is None else cv.seconds_of("timeout", timeout)
        if wait is not None and wait < 0:
            raise InvalidArgument(f"timeout must not be negative, got {wait}")
        return await self._claim(agent_id, wait)

    async def _claim(self, agent_id: str, wait: Optional[float], *, worker: Optional[TaskWorker] = None) -> Optional[ClaimedTask]:
        """Long-polls ClaimTask until a task is claimed, ``wait`` seconds passed (None: never) or
        ``worker`` is stopped. The deadline of each poll tells the daemon how long to wait
        (wait_ms unset); ``wait == 0`` sends wait_ms=0 instead."""
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
            transport = self._transport
            call = transport.start(rpc.CLAIM_TASK, request, poll)
            if worker is not None:
                worker._set_call(call)
            try:
                response: Optional[pb.ClaimTaskResponse] = await call.result()
            except AgentKeeperError as error:
                if worker is not None and worker.stopped and isinstance(error, Cancelled):
                    return None
                if not self._closed and should_retry(rpc.CLAIM_TASK.name, error.code(), error.details()):
                    self._move_on(transport.target)
                    delay = next(delays, None)
                    if delay is not None and (end is None or time.monotonic() + delay < end):
                        if worker is not None:
                            if not await worker._sleep(delay):
                                return None
                        else:
                            await async_sleep(delay)
                        continue
                if not poll_timed_out(error.code(), poll, sent, self._closed):
                    raise failed_for_good(rpc.CLAIM_TASK.name, error) from None
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
                if worker is not None:
                    await worker._sleep(pause)
                else:
                    await async_sleep(pause)

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
        registered, with the tools on its card) one at a time and hand out each as a
        :class:`ClaimedTask`::

            for task in client.tasks(worker.agent_id):
                with task:                    # raises: the task fails with the error's text
                    task.complete(do(task.input))

        (The asyncio client's loop is iterated, entered and awaited asynchronously.) The loop
        long-polls, so it costs nothing while the queue is empty. It ends after ``max_tasks`` tasks, when no
        task came for ``idle_timeout`` seconds (``None``: never), or on ``worker.stop()``.
        UNAVAILABLE (daemon restarting) is retried with backoff; other errors (the agent is
        DEAD: :class:`NotFound`, UNREACHABLE: :class:`FailedPrecondition`) end the loop.

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
        agent's card, never against this argument. If given, it is a check made once, before
        the first claim: the agent's card must list all of them, else :class:`InvalidArgument`,
        since a worker expecting tasks its card does not qualify it for would wait forever.
        """
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
        return async_opened(worker)

    async def complete_task(
        self, task_id: str, agent_id: str, output: Union[bytes, str] = b"", timeout: _Timeout = None
    ) -> None:
        """Mark a task ``agent_id`` claimed COMPLETED with ``output`` (<= 4 MiB); its claim lease
        is released. Another agent, or a task not CLAIMED (any more): :class:`FailedPrecondition`;
        unknown task: :class:`NotFound`."""
        request = pb.CompleteTaskRequest(
            task_id=cv.check_str("task_id", task_id),
            agent_id=cv.check_str("agent_id", agent_id),
            output=cv.check_bytes("output", output),
        )
        await self._unary(rpc.COMPLETE_TASK, request, timeout)

    async def fail_task(self, task_id: str, agent_id: str, reason: str = "", timeout: _Timeout = None) -> None:
        """Record a failure of a task ``agent_id`` claimed: ``retry_count`` + 1, then back to
        PENDING while ``retry_count <= max_retries``, else DEAD. ``reason`` (<= 4096 bytes) is
        kept as ``failure_reason``. Errors as for :meth:`complete_task`."""
        request = pb.FailTaskRequest(
            task_id=cv.check_str("task_id", task_id),
            agent_id=cv.check_str("agent_id", agent_id),
            reason=cv.check_str("reason", reason),
        )
        await self._unary(rpc.FAIL_TASK, request, timeout)

    async def get_task(self, task_id: str, timeout: _Timeout = None) -> Task:
        """One task, any status, with its input and output. :class:`NotFound` for an unknown id
        (or a COMPLETED/DEAD one past the daemon's ``--task-retention``, 24 h by default)."""
        request = pb.GetTaskRequest(task_id=cv.check_str("task_id", task_id))
        return cv.task_from_pb((await self._unary(rpc.GET_TASK, request, timeout)).task)

    async def list_tasks(
        self,
        status: Optional[Union[TaskStatus, TaskStatusName]] = None,
        page_size: int = 0,
        timeout: _Timeout = None,
    ) -> list[Task]:
        """All tasks in creation order, optionally only those with ``status``, fetched page by page
        (``page_size`` tasks a call, 0: the daemon's 1000; ``timeout`` is per page).

        Pages are read one after the other, not as one snapshot: a task that changes status
        meanwhile may be missed by a ``status`` filter. FAILED is never a resting status (a failed
        task is PENDING again or DEAD at once), so ``status=FAILED`` lists nothing.
        """
        return [task async for task in self.iter_tasks(status, page_size, timeout)]

    async def iter_tasks(
        self,
        status: Optional[Union[TaskStatus, TaskStatusName]] = None,
        page_size: int = 0,
        timeout: _Timeout = None,
    ) -> AsyncIterator[Task]:
        """:meth:`list_tasks` lazily: fetches the next page when the previous one is used up."""
        async for task in _every_page(lambda token: self.list_tasks_page(status, page_size, token, timeout)):
            yield task

    async def list_tasks_page(
        self,
        status: Optional[Union[TaskStatus, TaskStatusName]] = None,
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
        response = await self._unary(rpc.LIST_TASKS, request, timeout)
        return [cv.task_from_pb(t) for t in response.tasks], response.next_page_token

    # ── cluster ──

    async def cluster_status(self, timeout: _Timeout = None) -> ClusterStatus:
        """The cluster as the node the client talks to sees it: that node's id, the leader it
        knows (0 during an election), the term, every member. A daemon that is not a cluster
        node raises :class:`FailedPrecondition`."""
        response = await self._unary(rpc.CLUSTER_STATUS, cluster_pb2.ClusterStatusRequest(), timeout)
        return cv.cluster_status_from_pb(response)

    # ── manual clock ──

    async def advance(self, seconds: Union[float, timedelta], timeout: _Timeout = None) -> datetime:
        """Move a ``clock="manual"`` daemon's time forward; timers that fall due fire (agents
        go UNREACHABLE/DEAD, leases expire) before this returns. Gives the new time.
        With the real clock: :class:`FailedPrecondition`."""
        request = pb.AdvanceRequest(duration=cv.duration(cv.seconds_of("seconds", seconds)))
        return cv.ts((await self._unary(rpc.ADVANCE, request, timeout)).now)

    async def now(self, timeout: _Timeout = None) -> datetime:
        """The manual clock's current time (UTC). With the real clock: :class:`FailedPrecondition`."""
        return cv.ts((await self._unary(rpc.NOW, pb.NowRequest(), timeout)).now)
