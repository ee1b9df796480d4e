"""The gRPC side of the clients, in two flavours with one shape (see ``_runtime``):
``AsyncTransport`` over ``grpc.aio`` and ``Transport`` over blocking ``grpc``.

A transport owns one channel (TLS credentials, bearer token, options) and makes single calls
through the typed method table (``_rpc``): a unary call, a unary call that can be cancelled from
elsewhere, a server stream, and the channel's connectivity. Every gRPC failure leaves here as an
:class:`~agentkeeper.AgentKeeperError`. Retries, reconnects and everything else the clients do
are written once, in ``agentkeeper/_async/``.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Sequence
from typing import Any, Generic, Optional, TypeVar, Union, cast

import grpc
import grpc.aio
from google.protobuf.message import Message

from agentkeeper._auth import aio_bearer_interceptors, bearer_interceptor
from agentkeeper._errors import AgentKeeperError, Cancelled, DeadlineExceeded, Unavailable, from_rpc_error
from agentkeeper._rpc import Rpc
from agentkeeper._runtime import being_cancelled

__all__ = [
    "AsyncTransport",
    "Transport",
    "AsyncUnaryCall",
    "UnaryCall",
    "AsyncStreamCall",
    "StreamCall",
    "AsyncDuplexCall",
    "DuplexCall",
    "ChannelOption",
    "AsyncChannel",
    "Channel",
]

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
ChannelOption = tuple[str, Union[str, int]]
AsyncChannel = grpc.aio.Channel
Channel = grpc.Channel

# Each watch stream gets its own connection: with HTTP/2 a slow watcher would otherwise hold the
# shared connection's flow-control window and stall every unary call (heartbeats included).
_OWN_CONNECTION: ChannelOption = ("grpc.use_local_subchannel_pool", 1)


# Put on a blocking transport's queue of connectivity changes by wake(): not a state.
_WOKEN = ""


def _serialize(message: Message) -> bytes:
    # Through the instance: ``Message.SerializeToString`` itself is the abstract base's method.
    return message.SerializeToString()


def _name(state: grpc.ChannelConnectivity) -> str:
    """``READY``, ``IDLE``, ``CONNECTING``, ``TRANSIENT_FAILURE`` or ``SHUTDOWN``."""
    return state.name


# ── asyncio ───────────────────────────────────────────────────────────────────────────────────


class AsyncUnaryCall(Generic[Resp]):
    """A unary call in flight that another task may :meth:`cancel`."""

    def __init__(self, call: grpc.aio.UnaryUnaryCall[Message, Resp]) -> None:
        self._call = call

    async def result(self) -> Resp:
        """The response; :class:`Cancelled` if :meth:`cancel` ended the call."""
        try:
            return await self._call
        except asyncio.CancelledError:
            if self._call.cancelled() and not being_cancelled():
                raise Cancelled("the call was cancelled") from None
            raise
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def cancel(self) -> None:
        self._call.cancel()


# What a Watch or WatchElection response's headers carry once the daemon has subscribed us. A
# refusal (OUT_OF_RANGE, say) comes as trailers only, without it: grpc may hand over that
# response's (empty) initial metadata before it has processed the status, so the headers alone
# tell the two apart. A daemon older than the header sends none on success either: such a stream
# counts as open if it has not ended within _UNMARKED_GRACE.
SUBSCRIBED_HEADER = "agentkeeper-subscribed"
_UNMARKED_GRACE = 0.25


def _marked_subscribed(metadata: Any) -> bool:
    """Whether response metadata (grpc's tuples, or grpc.aio's Metadata) carries the header."""
    return any(key == SUBSCRIBED_HEADER for key, _ in metadata or ())


class AsyncStreamCall(Generic[Resp]):
    """A server stream in flight: :meth:`opened`, then :meth:`read` until ``None``."""

    def __init__(self, call: grpc.aio.UnaryStreamCall[Message, Resp], response: type[Resp]) -> None:
        self._call = call
        self._response = response

    async def opened(self) -> bool:
        """Wait for the daemon's response headers (it has subscribed us). False if the stream
        already ended: :meth:`read` then says how."""
        try:
            metadata = await self._call.initial_metadata()
        except grpc.RpcError:
            return False
        if _marked_subscribed(metadata):
            return True
        ended = asyncio.Event()
        self._call.add_done_callback(lambda _call: ended.set())
        try:
            await asyncio.wait_for(ended.wait(), _UNMARKED_GRACE)
        except asyncio.TimeoutError:
            return True
        return False

    async def read(self) -> Optional[Resp]:
        """The next message; ``None`` when the stream ended cleanly. :class:`Cancelled` after
        :meth:`cancel`."""
        try:
            message = await self._call.read()
        except asyncio.CancelledError:
            if self._call.cancelled() and not being_cancelled():
                raise Cancelled("the stream was cancelled") from None
            raise
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return message if isinstance(message, self._response) else None

    def cancel(self) -> None:
        self._call.cancel()


class AsyncDuplexCall(Generic[Req, Resp]):
    """A bidirectional stream in flight: :meth:`write` messages, :meth:`read` the answers."""

    def __init__(self, call: grpc.aio.StreamStreamCall[Message, Resp], response: type[Resp]) -> None:
        self._call = call
        self._response = response

    async def write(self, message: Req) -> None:
        """Send one message; the stream's failure if it has ended."""
        try:
            await self._call.write(message)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        except asyncio.InvalidStateError:
            raise Unavailable("the stream has ended") from None

    async def read(self, timeout: float) -> Optional[Resp]:
        """The next answer; ``None`` when the stream ended cleanly; :class:`DeadlineExceeded`
        when none came within ``timeout`` seconds."""
        try:
            message = await asyncio.wait_for(self._call.read(), timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"no answer on the stream within {timeout:g} s") from None
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return message if isinstance(message, self._response) else None

    def cancel(self) -> None:
        self._call.cancel()


class AsyncTransport:
    """One ``grpc.aio`` channel to the daemon."""

    def __init__(
        self,
        target: str,
        credentials: Optional[grpc.ChannelCredentials],
        token: Optional[str],
        options: Sequence[ChannelOption],
    ) -> None:
        self.target = target
        self._credentials = credentials
        self._token = token
        self._options = list(options)
        interceptors = aio_bearer_interceptors(token) if token is not None else None
        if credentials is not None:
            self._channel = grpc.aio.secure_channel(target, credentials, self._options, interceptors=interceptors)
        else:
            self._channel = grpc.aio.insecure_channel(target, self._options, interceptors=interceptors)
        self._wake = asyncio.Event()

    @property
    def channel(self) -> AsyncChannel:
        """The channel itself (for raw ``*_pb2_grpc`` stubs)."""
        return self._channel

    def own_connection(self) -> AsyncTransport:
        """A new transport with the same settings on a connection of its own (for a stream)."""
        return AsyncTransport(self.target, self._credentials, self._token, [*self._options, _OWN_CONNECTION])

    async def call(
        self,
        rpc: Rpc[Req, Resp],
        request: Req,
        timeout: Optional[float],
        metadata: Optional[tuple[tuple[str, str], ...]] = None,
    ) -> Resp:
        """One attempt of a unary call (``metadata``: extra headers, such as a request's number)."""
        method = self._channel.unary_unary(rpc.path, _serialize, rpc.response.FromString)
        try:
            response: Resp = await method(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return response

    def start(self, rpc: Rpc[Req, Resp], request: Req, timeout: Optional[float]) -> AsyncUnaryCall[Resp]:
        """A unary call that runs while the caller waits for :meth:`AsyncUnaryCall.result`."""
        method = self._channel.unary_unary(rpc.path, _serialize, rpc.response.FromString)
        return AsyncUnaryCall(method(request, timeout=timeout))

    def stream(self, rpc: Rpc[Req, Resp], request: Req, timeout: Optional[float] = None) -> AsyncStreamCall[Resp]:
        """Open a server stream (``timeout``: a deadline for the whole stream)."""
        method = self._channel.unary_stream(rpc.path, _serialize, rpc.response.FromString)
        return AsyncStreamCall(method(request, timeout=timeout), rpc.response)

    def duplex(self, rpc: Rpc[Req, Resp]) -> AsyncDuplexCall[Req, Resp]:
        """Open a bidirectional stream (no deadline: it lives until cancelled or it fails)."""
        method = self._channel.stream_stream(rpc.path, _serialize, rpc.response.FromString)
        return AsyncDuplexCall(method(), rpc.response)

    async def wait_ready(self, timeout: float) -> None:
        """Until the channel is connected (embedded mode, right after the daemon started)."""
        await asyncio.wait_for(self._channel.channel_ready(), timeout)

    def connectivity(self) -> str:
        """The channel's state now; asks it to connect when idle."""
        return _name(self._channel.get_state(try_to_connect=True))

    async def next_connectivity(self, last: str, timeout: Optional[float]) -> Optional[str]:
        """The channel's state once it differs from ``last``; ``None`` if ``timeout`` passed first
        or :meth:`wake` was called (since the last time this returned)."""
        state = self._channel.get_state(try_to_connect=True)
        if _name(state) != last:
            return _name(state)
        if self._take_wake():
            return None
        changed = asyncio.ensure_future(self._channel.wait_for_state_change(state))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            done, _ = await asyncio.wait({changed, woken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            woken.cancel()
        if self._take_wake() or changed not in done:
            return None
        return self.connectivity()

    def wake(self) -> None:
        """Make a :meth:`next_connectivity` under way (or the next one) return ``None`` now: the
        client moved to another endpoint, and its listener should follow."""
        self._wake.set()

    def _take_wake(self) -> bool:
        woken = self._wake.is_set()
        self._wake.clear()
        return woken

    async def close(self) -> None:
        await self._channel.close()


# ── blocking ──────────────────────────────────────────────────────────────────────────────────


class UnaryCall(Generic[Resp]):
    """A unary call in flight that another thread may :meth:`cancel`."""

    # grpc._CallFuture and grpc._CallIterator are the stubs' names for what blocking calls return
    # (annotations only: they do not exist at run time).
    def __init__(self, future: grpc._CallFuture[Resp]) -> None:
        self._future = future

    def result(self) -> Resp:
        """The response; :class:`Cancelled` if :meth:`cancel` ended the call."""
        try:
            response: Resp = self._future.result()
        except grpc.FutureCancelledError:
            raise Cancelled("the call was cancelled") from None
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return response

    def cancel(self) -> None:
        self._future.cancel()


class StreamCall(Generic[Resp]):
    """A server stream in flight: :meth:`opened`, then :meth:`read` until ``None``."""

    def __init__(self, call: grpc._CallIterator[Resp], response: type[Resp]) -> None:
        self._call = call
        self._response = response

    def opened(self) -> bool:
        """Wait for the daemon's response headers (it has subscribed us). False if the stream
        already ended: :meth:`read` then says how."""
        try:
            metadata = self._call.initial_metadata()
        except grpc.RpcError:
            return False
        if _marked_subscribed(metadata):
            return True
        ended = threading.Event()
        # The call is a grpc.Future too (its stubs do not say so).
        cast(Any, self._call).add_done_callback(lambda _call: ended.set())
        return not ended.wait(_UNMARKED_GRACE)

    def read(self) -> Optional[Resp]:
        """The next message; ``None`` when the stream ended cleanly. :class:`Cancelled` after
        :meth:`cancel`."""
        try:
            message: Resp = next(self._call)
            return message
        except StopIteration:
            return None
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def cancel(self) -> None:
        self._call.cancel()


class DuplexCall(Generic[Req, Resp]):
    """A bidirectional stream in flight: :meth:`write` messages, :meth:`read` the answers."""

    def __init__(self, method: grpc.StreamStreamMultiCallable[Message, Resp], response: type[Resp]) -> None:
        # The call reads its requests from this queue on grpc's own thread; None ends them. A
        # daemon thread moves its answers (then None, or the error it ended with) to another,
        # so that a read can give up after a timeout.
        self._requests: queue.SimpleQueue[Optional[Req]] = queue.SimpleQueue()
        self._call: grpc._CallIterator[Resp] = method(iter(self._requests.get, None))
        self._answers: queue.SimpleQueue[Union[Resp, AgentKeeperError, None]] = queue.SimpleQueue()
        self._response = response
        threading.Thread(target=self._pump, name="agentkeeper-stream-reader", daemon=True).start()

    def _pump(self) -> None:
        try:
            for message in self._call:
                self._answers.put(message)
            self._answers.put(None)
        except grpc.RpcError as e:
            self._answers.put(from_rpc_error(e))

    def write(self, message: Req) -> None:
        """Send one message (queued for the call; a failure shows in :meth:`read`)."""
        self._requests.put(message)

    def read(self, timeout: float) -> Optional[Resp]:
        """The next answer; ``None`` when the stream ended cleanly; :class:`DeadlineExceeded`
        when none came within ``timeout`` seconds."""
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise DeadlineExceeded(f"no answer on the stream within {timeout:g} s") from None
        if answer is None or isinstance(answer, AgentKeeperError):
            self._answers.put(answer)  # the end stays the end for every later read
        if isinstance(answer, AgentKeeperError):
            raise answer
        return answer

    def cancel(self) -> None:
        self._requests.put(None)
        self._call.cancel()


class Transport:
    """One blocking ``grpc`` channel to the daemon."""

    def __init__(
        self,
        target: str,
        credentials: Optional[grpc.ChannelCredentials],
        token: Optional[str],
        options: Sequence[ChannelOption],
    ) -> None:
        self.target = target
        self._credentials = credentials
        self._token = token
        self._options = list(options)
        if credentials is not None:
            channel = grpc.secure_channel(target, credentials, self._options)
        else:
            channel = grpc.insecure_channel(target, self._options)
        if token is not None:
            channel = grpc.intercept_channel(channel, bearer_interceptor(token))
        self._channel = channel
        self._connectivity: list[queue.SimpleQueue[str]] = []
        self._latest = "IDLE"

    @property
    def channel(self) -> Channel:
        """The channel itself (for raw ``*_pb2_grpc`` stubs)."""
        return self._channel

    def own_connection(self) -> Transport:
        """A new transport with the same settings on a connection of its own (for a stream)."""
        return Transport(self.target, self._credentials, self._token, [*self._options, _OWN_CONNECTION])

    def call(
        self,
        rpc: Rpc[Req, Resp],
        request: Req,
        timeout: Optional[float],
        metadata: Optional[tuple[tuple[str, str], ...]] = None,
    ) -> Resp:
        """One attempt of a unary call (``metadata``: extra headers, such as a request's number)."""
        method = self._channel.unary_unary(rpc.path, _serialize, rpc.response.FromString)
        try:
            return method(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def start(self, rpc: Rpc[Req, Resp], request: Req, timeout: Optional[float]) -> UnaryCall[Resp]:
        """A unary call that runs while the caller waits for :meth:`UnaryCall.result`."""
        method = self._channel.unary_unary(rpc.path, _serialize, rpc.response.FromString)
        return UnaryCall(method.future(request, timeout=timeout))

    def stream(self, rpc: Rpc[Req, Resp], request: Req, timeout: Optional[float] = None) -> StreamCall[Resp]:
        """Open a server stream (``timeout``: a deadline for the whole stream)."""
        method = self._channel.unary_stream(rpc.path, _serialize, rpc.response.FromString)
        return StreamCall(method(request, timeout=timeout), rpc.response)

    def duplex(self, rpc: Rpc[Req, Resp]) -> DuplexCall[Req, Resp]:
        """Open a bidirectional stream (no deadline: it lives until cancelled or it fails)."""
        method = self._channel.stream_stream(rpc.path, _serialize, rpc.response.FromString)
        return DuplexCall(method, rpc.response)

    def wait_ready(self, timeout: float) -> None:
        """Until the channel is connected (embedded mode, right after the daemon started)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def connectivity(self) -> str:
        """The channel's state now; asks it to connect when idle (the first call subscribes to
        its changes, which :meth:`next_connectivity` then reports)."""
        if not self._connectivity:
            changes: queue.SimpleQueue[str] = queue.SimpleQueue()
            self._connectivity.append(changes)
            self._channel.subscribe(lambda state: changes.put(_name(state)), try_to_connect=True)
            self._latest = changes.get()
            return self._latest
        while True:  # followed before: the newest of the changes queued since
            try:
                state = self._connectivity[0].get_nowait()
            except queue.Empty:
                break
            if state != _WOKEN:
                self._latest = state
        if self._latest == "IDLE":
            self._ask_to_connect()
        return self._latest

    def next_connectivity(self, last: str, timeout: Optional[float]) -> Optional[str]:
        """The channel's state once it differs from ``last``; ``None`` if ``timeout`` passed first
        or :meth:`wake` was called."""
        changes = self._connectivity[0]
        if last == "IDLE":
            self._ask_to_connect()
        while True:
            try:
                state = changes.get(timeout=timeout)
            except queue.Empty:
                return None
            if state == _WOKEN:
                return None
            self._latest = state
            if state != last:
                return state

    def wake(self) -> None:
        """Make a :meth:`next_connectivity` under way (or the next one) return ``None`` now: the
        client moved to another endpoint, and its listener should follow."""
        for changes in self._connectivity:
            changes.put(_WOKEN)

    def _ask_to_connect(self) -> None:
        # A channel whose connection went away rests IDLE and reconnects only when asked (the
        # asyncio flavour asks with get_state(try_to_connect=True)); a subscription that tries
        # to connect is the blocking API's way to ask.
        def ignore(state: grpc.ChannelConnectivity) -> None:
            pass

        self._channel.subscribe(ignore, try_to_connect=True)
        self._channel.unsubscribe(ignore)

    def close(self) -> None:
        for changes in self._connectivity:
            changes.put("SHUTDOWN")  # wakes a listener thread waiting for the next change
        self._channel.close()
