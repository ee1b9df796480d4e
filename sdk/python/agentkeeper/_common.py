"""Pieces shared by the sync and asyncio clients that involve no I/O: the retry policy and which
calls may be retried, address defaults and ``agentkeeper://`` URLs, the watch cursor, the
connection-state rules, and the task queue's small rules."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union
from urllib.parse import parse_qs, unquote, urlsplit

import grpc

from agentkeeper._errors import AgentKeeperError, InvalidArgument, OutOfRange, outcome_unknown
from agentkeeper._rpc import IDEMPOTENT_NAMES
from agentkeeper._types import ConnectionState, Lease

__all__ = [
    "RetryPolicy",
    "IDEMPOTENT",
    "CLIENT_ID_HEADER",
    "REQUEST_SEQ_HEADER",
    "STREAM_RETRYABLE",
    "DEFAULT_TIMEOUT",
    "resolve_address",
    "CHANNEL_OPTIONS",
    "channel_options",
    "should_retry",
    "not_carried_out",
    "failed_for_good",
    "EventCursor",
    "CLAIM_POLL_SECONDS",
    "EMPTY_POLL_PAUSE",
    "claim_margin",
    "keep_claiming",
    "failure_reason",
    "poll_timed_out",
    "lease_ttl",
    "parse_url",
    "ConnectionTracker",
]

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 7070
DEFAULT_TIMEOUT = 30.0
"""Seconds a unary call may take before it fails with ``DeadlineExceeded`` (``None``: no limit)."""

# Calls that are safe to send again when the first attempt may or may not have arrived (the
# method table in _rpc says which, and why).
IDEMPOTENT = IDEMPOTENT_NAMES

# The metadata that numbers a creating write (Register, CreateTask): the daemon applies a request
# once per (client id, number), and answers a repeat as it answered the first, so such a call is
# safe to send again. The id is random per client; the number is new per call, kept across its
# retries.
CLIENT_ID_HEADER = "agentkeeper-client-id"
REQUEST_SEQ_HEADER = "agentkeeper-request-seq"

# gRPC's own message when the channel had no connection to send the call on (the daemon is down
# or restarting): the request never left this process, so even a non-idempotent call may be sent
# again. An UNAVAILABLE that came back over a connection (the daemon shutting down, a reset in
# flight) may follow a call the daemon already carried out.
_NOT_SENT_MARKER = "failed to connect to all addresses"

# The daemon's words for a call it answered without carrying it out anywhere. (Its "may yet take
# effect", on a write forwarded to a leader that died or lost its quorum, or taken by a daemon that
# stopped before answering, is the opposite.)
_REFUSED_MARKERS = (
    "has known no leader",  # the call waited for an election that did not end in time
    "the cluster refused the write",  # the leader could not propose it (a leadership transfer)
    "the write was not sent",  # the follower could not reach the leader to hand it the write
    "the daemon is shutting down",  # a stopping daemon refused it before taking it
)

# A watch stream that ends with one of these (or ends cleanly) is reopened from where it left off;
# anything else (OUT_OF_RANGE, RESOURCE_EXHAUSTED, INVALID_ARGUMENT, ...) goes to on_error.
STREAM_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)

PING_AFTER_MS = 2000
"""Milliseconds without a byte from the node after which a client with a call open pings it."""
PING_TIMEOUT_MS = 3000
"""Milliseconds the client waits for a ping's answer before it gives the connection up."""

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    # Reconnect quickly after a daemon restart instead of grpc's default 1 s+ first backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    # A hung node (a paused process, a partition that drops packets) never resets the
    # connection: without pings, a call on it waits out its deadline and a stream (heartbeats,
    # a watch) waits for good. After PING_AFTER_MS without a byte from the node the client pings
    # it, and gives the connection up PING_TIMEOUT_MS later without the answer: its calls fail
    # UNAVAILABLE ("ping timeout") and go to the next endpoint as after a reset. (gRPC waits
    # `grpc.http2.ping_timeout_ms` for the answer in recent releases, `keepalive_timeout_ms` in
    # older ones: both are set.)
    ("grpc.keepalive_time_ms", PING_AFTER_MS),
    ("grpc.keepalive_timeout_ms", PING_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", PING_TIMEOUT_MS),
    # A watch the client has sent nothing on since it opened still pings (gRPC's default stops
    # after two pings without a data frame from the client).
    ("grpc.http2.max_pings_without_data", 0),
]


def channel_options(overrides: Sequence[tuple[str, Union[str, int]]]) -> list[tuple[str, Union[str, int]]]:
    """The client's channel options: CHANNEL_OPTIONS with the caller's ``overrides`` in place of
    the defaults they name (gRPC reads the first of two options with one name), then the rest
    of the caller's options."""
    given = {name for name, _ in overrides}
    return [*overrides, *((name, value) for name, value in CHANNEL_OPTIONS if name not in given)]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for idempotent calls that fail with UNAVAILABLE,
    and for reopening dropped watch streams.

    ``max_attempts`` counts the first try (1 disables retries). Watch streams retry forever
    with the same backoff until cancelled.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        """Sleeps between attempts: ``max_attempts - 1`` of them."""
        delay = self.initial_backoff
        for _ in range(max(0, self.max_attempts - 1)):
            yield delay * random.uniform(0.5, 1.0)
            delay = min(delay * self.multiplier, self.max_backoff)

    def next_delay(self, previous: float) -> float:
        """The stream-reconnect delay after ``previous`` (0 for the first)."""
        if previous <= 0:
            return self.initial_backoff
        return min(previous * self.multiplier, self.max_backoff)


def not_carried_out(code: grpc.StatusCode, details: str) -> bool:
    """True when an UNAVAILABLE failure surely left no trace: the request never left this
    process, or a cluster node refused it before proposing it."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return False
    text = details or ""
    return _NOT_SENT_MARKER in text or any(marker in text for marker in _REFUSED_MARKERS)


def should_retry(method: str, code: grpc.StatusCode, details: str, numbered: bool = False) -> bool:
    """Whether a failed call of ``method`` may be sent again (after a backoff delay, to the next
    endpoint when there are several).

    Idempotent calls, and numbered ones (a Register or CreateTask carrying this client's id and
    the request's number, which the daemon applies once however often it comes): on any
    UNAVAILABLE. The others (ReleaseLease, DeletePolicy, Advance, task mutations): only when the
    request surely was not carried out (see :func:`not_carried_out`), as a second DeletePolicy
    would answer NOT_FOUND.
    """
    if code != grpc.StatusCode.UNAVAILABLE:
        return False
    return method in IDEMPOTENT or numbered or not_carried_out(code, details)


def failed_for_good(method: str, error: AgentKeeperError) -> AgentKeeperError:
    """What a call of ``method`` that failed with ``error``, and is not sent again, raises: an
    :class:`~agentkeeper.OutcomeUnknownError` for a call not safe to repeat that may have been
    carried out (UNAVAILABLE after it may have reached the daemon, or its deadline passed),
    else ``error`` itself."""
    if method in IDEMPOTENT:
        return error
    code = error.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or (
        code == grpc.StatusCode.UNAVAILABLE and not not_carried_out(code, error.details())
    ):
        return outcome_unknown(method, error)
    return error


def resolve_address(host: Optional[str], port: Optional[int]) -> tuple[str, int]:
    """``host``/``port`` as given, else from ``$AGENTKEEPER_ADDRESS`` (``host:port``), else localhost:7070."""
    env = os.environ.get("AGENTKEEPER_ADDRESS", "").strip()
    env_host, env_port = DEFAULT_HOST, DEFAULT_PORT
    if env:
        h, sep, p = env.rpartition(":")
        if sep and p.isdigit():
            env_host, env_port = (h or DEFAULT_HOST), int(p)
        else:
            env_host = env
    if host is None and port is None:
        return env_host, env_port
    return (host if host is not None else DEFAULT_HOST), (port if port is not None else DEFAULT_PORT)


class ParsedUrl(NamedTuple):
    host: str
    port: int
    tls: bool
    token: Optional[str]
    timeout: Optional[float]


URL_SCHEMES = {"agentkeeper": False, "agentkeepers": True}
"""URL scheme -> TLS: ``agentkeeper://`` plain, ``agentkeepers://`` over TLS (as redis/rediss)."""


def parse_url(url: str) -> ParsedUrl:
    """``agentkeeper://[:TOKEN@]HOST[:PORT][?timeout=SECONDS]`` (``agentkeepers://`` for TLS).

    The port defaults to 7070. A bearer token goes where redis URLs put the password; the query
    may set the default per-call ``timeout`` (seconds; ``none`` for no deadline).
    """
    parts = urlsplit(url)
    if parts.scheme not in URL_SCHEMES:
        raise InvalidArgument(f"URL scheme must be agentkeeper:// or agentkeepers://, got {url!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise InvalidArgument(f"the port in {url!r} is not a number 1..=65535") from None
    host = parts.hostname or DEFAULT_HOST
    if ":" in host:
        host = f"[{host}]"  # IPv6, bracketed again for the host:port target
    if parts.path not in ("", "/"):
        raise InvalidArgument(f"an agentkeeper URL has no path, got {parts.path!r} in {url!r}")
    token = unquote(parts.password) if parts.password else (unquote(parts.username) if parts.username else None)
    timeout: Optional[float] = DEFAULT_TIMEOUT
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        if key != "timeout":
            raise InvalidArgument(f"unknown URL parameter {key!r} in {url!r} (known: timeout)")
        text = values[-1]
        if text.lower() == "none":
            timeout = None
        else:
            try:
                timeout = float(text)
            except ValueError:
                raise InvalidArgument(f"timeout must be seconds or none, got {text!r}") from None
    return ParsedUrl(host, port, URL_SCHEMES[parts.scheme], token, timeout)


class ConnectionTracker:
    """Turns the channel's connectivity into what a connection-state listener is told:

    - ``"connected"``: the channel is READY;
    - ``"reconnecting"``: it was connected and is not any more (or the first connection fails),
      and gRPC is trying again; calls meanwhile fail with UNAVAILABLE or are retried;
    - ``"lost"``: no connection for ``lost_after`` seconds since it was last connected (or since
      it started trying), or the client was closed. Agents whose ttl is shorter may have been
      declared UNREACHABLE or DEAD meanwhile, and their leases may have expired.

    ``"connected"`` follows ``"lost"`` when the connection comes back. Only changes are reported.
    """

    def __init__(self, lost_after: float) -> None:
        self.lost_after = lost_after
        self.state: Optional[ConnectionState] = None
        self._down_since: Optional[float] = None

    def observe(self, connectivity: str, now: float) -> Optional[ConnectionState]:
        """The state to report for the channel's ``connectivity`` (a ``grpc.ChannelConnectivity``
        name), or None when nothing changed."""
        if connectivity == "READY":
            self._down_since = None
            return self._change("connected")
        if connectivity == "SHUTDOWN":
            self._down_since = None
            return self._change("lost")
        if connectivity == "TRANSIENT_FAILURE" or self.state == "connected":
            if self._down_since is None:
                self._down_since = now
            if self.state == "lost":
                return None
            return self._change("reconnecting")
        return None  # IDLE or CONNECTING before any connection: nothing to say yet

    def wait_seconds(self, now: float) -> Optional[float]:
        """How long until the connection counts as lost (None: no such deadline now)."""
        if self._down_since is None or self.state == "lost":
            return None
        return max(0.0, self._down_since + self.lost_after - now)

    def expire(self, now: float) -> Optional[ConnectionState]:
        """``"lost"`` once the connection has been down for ``lost_after`` seconds."""
        remaining = self.wait_seconds(now)
        if remaining is None or remaining > 0:
            return None
        return self._change("lost")

    def _change(self, state: ConnectionState) -> Optional[ConnectionState]:
        if state == self.state:
            return None
        self.state = state
        return state


# A claim that waits without a time limit (``claim_task(agent_id)``, the worker helper) is a series
# of long polls of this many seconds each: the daemon answers empty just before each poll's
# deadline (or after its --claim-wait-max, 60 s by default) and the SDK asks again. A bounded poll
# also notices a connection that died silently.
CLAIM_POLL_SECONDS = 30.0

# The shortest time between two claim polls, so that a daemon answering empty at once (started
# with --claim-wait-max 0) is not polled in a tight loop.
EMPTY_POLL_PAUSE = 0.1

# FailTask's reason is at most this many bytes (UTF-8).
FAILURE_REASON_BYTES_MAX = 4096


def claim_margin(deadline: float) -> float:
    """How long before a ClaimTask call's deadline the daemon gives up waiting and answers empty:
    a tenth of the deadline, at least 20 ms, at most 1 s (the daemon's own rule)."""
    return min(1.0, max(0.02, deadline / 10))


def keep_claiming(remaining: float, poll: float) -> bool:
    """After an empty claim answer to a poll with deadline ``poll``: whether ``remaining`` seconds
    of the caller's timeout are worth another poll. The daemon answers empty ``claim_margin(poll)``
    before the deadline; more time left than about that means it stopped early (its
    --claim-wait-max is shorter than the poll), so the caller's wait is not over."""
    return remaining > 2 * claim_margin(poll)


def failure_reason(error: BaseException) -> str:
    """The FailTask reason for a task whose work raised ``error``: ``"Type: message"``, cut to the
    daemon's 4096 bytes."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    data = text.encode("utf-8")
    if len(data) <= FAILURE_REASON_BYTES_MAX:
        return text
    return data[: FAILURE_REASON_BYTES_MAX - 3].decode("utf-8", "ignore") + "..."


def poll_timed_out(code: grpc.StatusCode, poll: Optional[float], sent: float, closed: bool) -> bool:
    """Whether a ClaimTask poll that failed with ``code`` just ran out of time: "no task yet".

    The daemon normally answers empty before the deadline. A manual-clock daemon does not always:
    its wait runs on the manual clock, so a poll under about 2.5 s ends with DEADLINE_EXCEEDED,
    or with CANCELLED ("Timeout expired") when the daemon's own deadline check ends it first.
    Either is a claim that did not happen (the daemon puts back a task it could not deliver).
    """
    if closed or poll is None:
        return False
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return True
    return code == grpc.StatusCode.CANCELLED and time.monotonic() >= sent + poll - 0.05


def lease_ttl(lease: Lease) -> int:
    """A freshly granted lease's ttl in whole seconds: its expiry minus its acquire time."""
    return max(1, round((lease.expires_at - lease.acquired_at).total_seconds()))


def effective_ttl(ttl: Optional[int], default_ttl: int) -> int:
    """The ttl the daemon applies: ``ttl``, or its default when 0/None."""
    return ttl if ttl else default_ttl


def interval_for(ttl: int, default_ttl: int, fraction: float) -> float:
    """Background refresh period: ``fraction`` of the effective ttl, at least 50 ms."""
    return max(0.05, effective_ttl(ttl, default_ttl) * fraction)


class EventCursor:
    """Where a watch stream resumes, and the check that the daemon still has the same history.

    Sequences identify events only within one history: a daemon restarted without ``--data-dir``
    (or another daemon behind the same address) numbers its events from 1 again. So a stream is
    reopened at the last delivered event itself, not the one after it; the daemon must hand
    that very event back first (same sequence, topic, time and payload type), and it is then
    skipped. Anything else means the events in between cannot be known: the stream ends with
    :class:`~agentkeeper.OutOfRange`, as when the daemon no longer retains them.
    """

    def __init__(self, from_sequence: int) -> None:
        self.from_sequence = from_sequence
        self.last_sequence = from_sequence - 1 if from_sequence > 0 else 0
        self._last_identity: Optional[tuple[int, str, int, int, str]] = None
        self._expect: Optional[tuple[int, str, int, int, str]] = None
        self._skip_check_once = False

    @property
    def has_resume_point(self) -> bool:
        """Whether a reopened stream can continue exactly where this one stopped."""
        return self.last_sequence > 0

    def request_from(self) -> int:
        """The ``from_sequence`` for the next (re)opened stream."""
        self._expect = None
        if self._last_identity is not None and not self._skip_check_once:
            self._expect = self._last_identity
            return self._last_identity[0]
        self._skip_check_once = False
        return self.last_sequence + 1 if self.last_sequence > 0 else self.from_sequence

    def accept(self, sequence: int, topic: str, seconds: int, nanos: int, type_url: str) -> bool:
        """True if the event is new and must be delivered; False for one already delivered.

        Raises :class:`~agentkeeper.OutOfRange` when the reopened stream shows another history.
        """
        identity = (sequence, topic, seconds, nanos, type_url)
        if self._expect is not None:
            expected, self._expect = self._expect, None
            if identity == expected:
                return False  # the event delivered last, handed back: same history, go on after it
            raise OutOfRange(
                f"cannot resume the watch after event #{expected[0]}: the daemon no longer has that "
                f"event as it was delivered (first event back: #{sequence} {topic}); it was restarted "
                "without --data-dir or is another daemon, so events may have been missed"
            )
        if sequence <= self.last_sequence:
            return False
        self.last_sequence = sequence
        self._last_identity = identity
        return True

    def reopen_after_out_of_range(self) -> bool:
        """OUT_OF_RANGE while asking for the last delivered event again: that event may just have
        left the daemon's window. Reopen once from the next one (without the check)."""
        if self._expect is None:
            return False
        self._expect = None
        self._skip_check_once = True
        return True
