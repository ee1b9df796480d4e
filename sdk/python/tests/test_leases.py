"""Leases: exclusive acquire, re-entrant, renew, release, context manager, keep_alive, on_lost."""

import threading
from datetime import timedelta

import grpc
import pytest

from agentkeeper import Lease, LeaseHandle, NotFound, PermissionDenied

from conftest import HANG_GUARD, wait_for


def test_acquire_is_exclusive_reentrant_and_tokens_increase(client):
    with client.register("a") as a, client.register("b") as b:
        lease = client.acquire_lease(task_id="task:42", agent_id=a.agent_id, ttl=120)
        assert isinstance(lease, LeaseHandle) and isinstance(lease.lease, Lease)
        assert isinstance(lease.token, int) and lease.token == lease.lease.token > 0
        assert lease.task_id == "task:42" and lease.agent_id == a.agent_id
        assert client.acquire_lease("task:42", b.agent_id) is None
        again = client.acquire_lease("task:42", a.agent_id, ttl=120)
        assert again is not None and again.token == lease.token, "re-entrant: same token"
        lease.release()
        second = client.acquire_lease("task:42", b.agent_id)
        assert second is not None and second.token > lease.token
        second.release()


def test_renew_moves_expiry_and_mismatch_is_permission_denied(manual):
    with manual.register("a") as a:
        lease = manual.acquire_lease("task:renew", a.agent_id, ttl=10)
        manual.advance(5)
        renewed = lease.renew(ttl=60)
        assert renewed.token == lease.token and renewed is lease.lease
        assert (renewed.expires_at - manual.now()).total_seconds() == pytest.approx(60, abs=0.01)
        lease.renew()  # default: the lease's own ttl
        stale = LeaseHandle(manual, Lease(**{**vars(lease.lease), "token": lease.token + 1000}), 10)
        with pytest.raises(PermissionDenied) as e:
            stale.renew()
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and stale.lost
        with pytest.raises(grpc.RpcError):
            stale.release()
        lease.release()
        with pytest.raises(NotFound):
            lease.renew()
        with pytest.raises(NotFound):
            lease.release()


def test_context_manager_releases_even_on_exception(client):
    events = []
    with client.watch(["lease."], events.append), client.register("a") as a:
        with pytest.raises(RuntimeError):
            with client.acquire_lease("task:cm", a.agent_id) as lease:
                raise RuntimeError("work failed")
        wait_for(lambda: [e.topic for e in events] == ["lease.acquired", "lease.released"])
        assert client.acquire_lease("task:cm", a.agent_id).token > lease.token


def test_exit_after_the_lease_expired_does_not_raise(manual):
    with manual.register("a", ttl=3600) as a:
        with manual.acquire_lease("task:late", a.agent_id, ttl=5) as lease:
            manual.advance(6)
        assert lease.lost


def test_keep_alive_renews_in_the_background(manual):
    events = []
    with manual.watch(["lease.renewed"], events.append), manual.register("a", ttl=3600) as a:
        with manual.acquire_lease("task:ka", a.agent_id, ttl=1, keep_alive=True) as lease:
            # Time moves only when the test moves it, each step shorter than the 1 s ttl, and
            # each next step waits for a background renewal at the new time: three steps take
            # the lease well past its ttl, which it would not outlive without the renewals.
            for _ in range(3):
                renewed_to = manual.advance(0.6) + timedelta(seconds=1)
                wait_for(lambda: lease.lease.expires_at == renewed_to, what="a renewal at the new time")
            assert manual.acquire_lease("task:ka", a.agent_id).token == lease.token
            assert not lease.lost
        wait_for(lambda: len(events) >= 3, what="three lease.renewed events")
        assert all(e.payload.token == lease.token for e in events)


def test_keep_alive_on_lost_when_the_lease_expires(manual):
    lost = threading.Event()
    with manual.register("a", ttl=3600) as a:
        with manual.acquire_lease("task:lost", a.agent_id, ttl=1, keep_alive=True, on_lost=lambda h: lost.set()) as lease:
            manual.advance(2)  # the manual clock jumps past the expiry between two renewals
            assert lost.wait(HANG_GUARD), "on_lost not called"
            assert lease.lost
        b = manual.register("b", ttl=3600)
        assert manual.acquire_lease("task:lost", b.agent_id) is not None


def test_acquire_for_unknown_agent_is_not_found_and_bad_input_invalid(client):
    with pytest.raises(NotFound):
        client.acquire_lease("task:x", "0" * 32)
    with client.register("a") as a:
        with pytest.raises(grpc.RpcError) as e:
            client.acquire_lease("", a.agent_id)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as e:
            client.acquire_lease("task:x", a.agent_id, ttl=86401)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
