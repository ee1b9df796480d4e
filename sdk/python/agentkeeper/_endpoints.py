"""A client's endpoints: ``endpoints=["h1:7070", "h2:7070", ...]`` (the nodes of a cluster) or
one ``host``/``port``, checked; and which of them the client talks to now.

No I/O: the clients keep one transport per endpoint and ask the ring which one to use. It never
decides whether a failed call is sent again (``_common.should_retry`` does), only where to.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Optional, Union

from agentkeeper._common import DEFAULT_PORT, resolve_address
from agentkeeper._errors import InvalidArgument

__all__ = ["resolve_endpoints", "EndpointRing", "split_target", "target_options", "UNIX_PREFIX"]

_PORT_MAX = 65535


UNIX_PREFIX = "unix:"
"""A target on the daemon's Unix socket (its ``--uds PATH``): ``unix:/run/agentkeeper.sock``."""


def split_target(target: str) -> tuple[str, int]:
    """``host:port`` -> ``(host, port)``; an IPv6 host keeps its brackets (``[::1]``). A
    ``unix:PATH`` target is its own host, with port 0."""
    if target.startswith(UNIX_PREFIX):
        return target, 0
    host, _, port = target.rpartition(":")
    return host, int(port)


def target_options(target: str, options: Sequence[tuple[str, Union[str, int]]]) -> list[tuple[str, Union[str, int]]]:
    """The channel options for ``target``: on a Unix socket the HTTP/2 authority is
    ``localhost``, as gRPC's default there (the socket's path, percent-encoded) is no valid
    authority to the daemon's HTTP/2 server, which resets such streams."""
    if target.startswith(UNIX_PREFIX):
        return [*options, ("grpc.default_authority", "localhost")]
    return list(options)


def _unix_target(text: str) -> str:
    if not text[len(UNIX_PREFIX) :]:
        raise InvalidArgument(f"endpoint {text!r} names no socket path (unix:PATH)")
    return text


def _check_endpoint(endpoint: object) -> str:
    """One ``host:port`` (``[v6]:port``; a host alone means port 7070), as a gRPC target."""
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise InvalidArgument(f'each endpoint must be a "host:port" string, got {endpoint!r}')
    text = endpoint.strip()
    if text.startswith(UNIX_PREFIX):
        return _unix_target(text)
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] not in ("", ":"):
            raise InvalidArgument(f'endpoint {endpoint!r} is not "[ipv6]:port"')
        host, port_text = text[: close + 1], text[close + 2 :]
    elif text.count(":") > 1:
        raise InvalidArgument(f'endpoint {endpoint!r}: an IPv6 address goes in brackets, "[::1]:7070"')
    else:
        host, _, port_text = text.partition(":")
    if not host or host == "[]":
        raise InvalidArgument(f"endpoint {endpoint!r} has no host")
    if not port_text:
        return f"{host}:{DEFAULT_PORT}"
    if not port_text.isdigit() or not 1 <= int(port_text) <= _PORT_MAX:
        raise InvalidArgument(f"the port in endpoint {endpoint!r} is not a number 1..={_PORT_MAX}")
    return f"{host}:{int(port_text)}"


def _names_a_port(host: str) -> bool:
    """``name:PORT`` or ``[v6]:PORT`` (a bare IPv6 address such as ``::1`` is a host alone)."""
    if host.startswith("["):
        return "]:" in host
    name, sep, port = host.rpartition(":")
    return bool(sep) and ":" not in name and port.isdigit()


def resolve_endpoints(host: Optional[str], port: Optional[int], endpoints: Optional[Sequence[str]]) -> list[str]:
    """The targets a client talks to: ``endpoints`` checked, in order; else the one of
    ``host``/``port`` (their defaults and ``$AGENTKEEPER_ADDRESS`` as before). Both at once is an
    error: which would win is not obvious."""
    if endpoints is None:
        if host is not None and host.startswith(UNIX_PREFIX):
            if port is not None:
                raise InvalidArgument(f"a unix: target has no port: {host!r}, port={port}")
            return [_unix_target(host)]
        if host is not None and _names_a_port(host):
            # "127.0.0.1:7070" or "[::1]:7070" as host: the address in one string, as endpoints.
            if port is not None:
                raise InvalidArgument(f"host {host!r} already names a port; port={port} as well is ambiguous")
            return [_check_endpoint(host)]
        h, p = resolve_address(host, port)
        if h.startswith(UNIX_PREFIX):  # $AGENTKEEPER_ADDRESS=unix:PATH
            return [_unix_target(h)]
        if ":" in h and not h.startswith("["):
            h = f"[{h}]"  # a bare IPv6 address: gRPC's target puts it in brackets
        return [f"{h}:{p}"]
    if host is not None or port is not None:
        raise InvalidArgument("pass either endpoints= or host/port, not both")
    if isinstance(endpoints, (str, bytes)):
        raise InvalidArgument(f'endpoints must be a list of "host:port" strings, not one string: {endpoints!r}')
    targets = [_check_endpoint(endpoint) for endpoint in endpoints]
    if not targets:
        raise InvalidArgument("endpoints must name at least one node")
    repeated = sorted({t for t in targets if targets.count(t) > 1})
    if repeated:
        raise InvalidArgument(f"endpoints name {', '.join(repeated)} more than once")
    return targets


class EndpointRing:
    """The endpoints in order and the one the client talks to now: the first, until a call or a
    stream finds that node down (or answered UNAVAILABLE) and moves the client on to the next,
    round the ring. Several calls failing on the same node move it once."""

    def __init__(self, targets: Sequence[str]) -> None:
        assert targets, "at least one endpoint"
        self.targets = list(targets)
        self._current = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        """The target the client talks to now."""
        return self.targets[self._current]

    def move_from(self, target: str) -> Optional[str]:
        """After ``target`` failed: the next target if ``target`` is still the current one (the
        client now talks to it), else None (already moved on, or the only endpoint)."""
        with self._lock:
            if len(self.targets) == 1 or self.targets[self._current] != target:
                return None
            self._current = (self._current + 1) % len(self.targets)
            return self.targets[self._current]
