"""Exceptions raised by the SDK.

Every error is an :class:`AgentKeeperError`, which is also a :class:`grpc.RpcError` with
``code()`` and ``details()``, so both ``except grpc.RpcError`` (v1 style) and
``except agentkeeper.NotFound`` work.
"""

from __future__ import annotations

from typing import Optional

import grpc

__all__ = [
    "AgentKeeperError",
    "NotFound",
    "PermissionDenied",
    "InvalidArgument",
    "FailedPrecondition",
    "ResourceExhausted",
    "OutOfRange",
    "Unavailable",
    "Unimplemented",
    "DeadlineExceeded",
    "Cancelled",
    "OutcomeUnknownError",
    "OutcomeUnknownDeadlineError",
    "outcome_unknown",
    "from_rpc_error",
    "error_for",
]


class AgentKeeperError(grpc.RpcError):
    """A call to the daemon failed. ``code()`` is a :class:`grpc.StatusCode`."""

    _code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(details)
        if code is not None:
            self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        """The gRPC status code, e.g. ``grpc.StatusCode.NOT_FOUND``."""
        return self._code

    def details(self) -> str:
        """The daemon's one-sentence explanation."""
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def initial_metadata(self) -> tuple[()]:
        return ()

    def __str__(self) -> str:
        return f"{self._code.name}: {self._details}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._details!r})"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (error_for, (self._code, self._details))


class NotFound(AgentKeeperError):
    """The agent, lease, policy or task does not exist (or the agent is DEAD)."""

    _code = grpc.StatusCode.NOT_FOUND


class PermissionDenied(AgentKeeperError):
    """Holder or fencing-token mismatch."""

    _code = grpc.StatusCode.PERMISSION_DENIED


class InvalidArgument(AgentKeeperError, ValueError):
    """Bad input; the message names the field. Also a ``ValueError``."""

    _code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(AgentKeeperError):
    """The thing is in the wrong state for this call."""

    _code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(AgentKeeperError):
    """A limit was hit (agents, leases, a watch stream that fell too far behind)."""

    _code = grpc.StatusCode.RESOURCE_EXHAUSTED


class OutOfRange(AgentKeeperError):
    """A watch asked to resume from events the daemon no longer retains."""

    _code = grpc.StatusCode.OUT_OF_RANGE


class Unavailable(AgentKeeperError):
    """The daemon cannot be reached or is shutting down."""

    _code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(AgentKeeperError):
    """The daemon does not implement this call (yet)."""

    _code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceeded(AgentKeeperError):
    """The per-call timeout passed before the daemon answered."""

    _code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(AgentKeeperError):
    """The call was cancelled."""

    _code = grpc.StatusCode.CANCELLED


class OutcomeUnknownError(Unavailable):
    """A write that is not safe to repeat (``register``, ``create_task``, ``release``...) failed
    after it was sent, so it may or may not have taken effect: the node it went through died or
    lost its leader before the write was committed ("it may yet take effect"), or the connection
    broke in flight. The client does not send it again (that could act twice); look (``find``,
    ``get_task``, ``list_leases``...) before you try again. An :class:`Unavailable`, so handlers
    of that still catch it."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self._details,))


class OutcomeUnknownDeadlineError(DeadlineExceeded, OutcomeUnknownError):
    """A write that is not safe to repeat ran out of time after it was sent: it may or may not
    have taken effect. Both a :class:`DeadlineExceeded` (its ``code()``) and an
    :class:`OutcomeUnknownError`."""


def outcome_unknown(method: str, error: AgentKeeperError) -> OutcomeUnknownError:
    """The error for a call of ``method`` (not safe to repeat) that failed with ``error`` after
    it was sent."""
    cls = OutcomeUnknownDeadlineError if isinstance(error, DeadlineExceeded) else OutcomeUnknownError
    return cls(
        f"{method} may or may not have taken effect ({error.details()}); it was not sent again, since "
        "a second one could act twice: look before trying again"
    )


_BY_CODE: dict[grpc.StatusCode, type[AgentKeeperError]] = {
    cls._code: cls
    for cls in (
        NotFound,
        PermissionDenied,
        InvalidArgument,
        FailedPrecondition,
        ResourceExhausted,
        OutOfRange,
        Unavailable,
        Unimplemented,
        DeadlineExceeded,
        Cancelled,
    )
}


def error_for(code: grpc.StatusCode, details: str) -> AgentKeeperError:
    """The most specific :class:`AgentKeeperError` subclass for ``code``."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return AgentKeeperError(details, code)
    return cls(details)


def from_rpc_error(error: grpc.RpcError) -> AgentKeeperError:
    """Translate an error raised by grpcio (sync or aio) into an :class:`AgentKeeperError`."""
    if isinstance(error, AgentKeeperError):
        return error
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return error_for(code, details or str(error) or code.name.lower())
