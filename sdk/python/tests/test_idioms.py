"""What redis-py, etcd3 and kazoo users expect: a blocking acquire with a wait, a client from an
``agentkeeper://`` URL, a connection-state listener, and ``watch`` as an iterator in both clients."""

import queue
import threading

import pytest

from agentkeeper import AgentKeeperClient, EmbeddedDaemon, InvalidArgument, WatchEvent, aio
from agentkeeper._common import parse_url

from conftest import HANG_GUARD, finishes, port_outside_the_ephemeral_range, wait_for, wait_for_async


# ── acquire_lease(..., wait=) ──


def test_acquire_with_wait_takes_the_lease_once_its_holder_releases_it(client):
    with client.register("holder") as a, client.register("waiter") as b:
        held = client.acquire_lease("job", a.agent_id)
        result: "queue.Queue[object]" = queue.Queue()
        waiter = threading.Thread(target=lambda: result.put(client.acquire_lease("job", b.agent_id, wait=HANG_GUARD)))
        waiter.start()
        held.release()  # before or after the waiter subscribed: either way it gets the lease
        waiter.join(HANG_GUARD)
        won = result.get(timeout=HANG_GUARD)
        assert won is not None and won.agent_id == b.agent_id and won.token > held.token


def test_acquire_with_wait_takes_the_lease_when_it_expires(manual):
    with manual.register("holder", ttl=3600) as a, manual.register("waiter", ttl=3600) as b:
        held = manual.acquire_lease("job", a.agent_id, ttl=10)
        result: "queue.Queue[object]" = queue.Queue()
        waiter = threading.Thread(target=lambda: result.put(manual.acquire_lease("job", b.agent_id, wait=HANG_GUARD)))
        waiter.start()
        manual.advance(11)  # lease.expired
        waiter.join(HANG_GUARD)
        won = result.get(timeout=HANG_GUARD)
        assert won is not None and won.agent_id == b.agent_id and won.token > held.token


def test_acquire_with_wait_gives_none_when_the_wait_runs_out(client):
    with client.register("holder") as a, client.register("waiter") as b:
        held = client.acquire_lease("job", a.agent_id)
        assert finishes(lambda: client.acquire_lease("job", b.agent_id, wait=0.2)) is None
        assert client.list_leases()[0].holder_agent_id == a.agent_id
        held.release()
        with pytest.raises(InvalidArgument):
            client.acquire_lease("job", b.agent_id, wait=-1)


async def test_async_acquire_with_wait_takes_the_released_lease(binary):
    async with aio.AgentKeeperClient.embedded(binary=binary) as ak:
        async with ak.register("holder") as a, ak.register("waiter") as b:
            held = await ak.acquire_lease("job", a.agent_id)
            import asyncio

            waiting = asyncio.ensure_future(ak.acquire_lease("job", b.agent_id, wait=HANG_GUARD))
            await held.release()
            won = await asyncio.wait_for(waiting, HANG_GUARD)
            assert won is not None and won.agent_id == b.agent_id
            assert await ak.acquire_lease("job", a.agent_id, wait=0.1) is None


# ── from_url ──


def test_from_url_connects_to_the_daemon(client):
    with AgentKeeperClient.from_url(f"agentkeeper://{client.address}?timeout=7") as by_url:
        assert by_url.address == client.address and by_url._timeout == 7.0
        with by_url.register("via-url") as agent:
            assert client.get_agent(agent.agent_id).card.name == "via-url"


def test_url_forms():
    assert parse_url("agentkeeper://example.com") == ("example.com", 7070, False, None, 30.0)
    assert parse_url("agentkeepers://:s3cret@10.0.0.1:7443?timeout=none") == ("10.0.0.1", 7443, True, "s3cret", None)
    assert parse_url("agentkeeper://[::1]:7071").host == "[::1]"
    for bad in ["http://x:1", "agentkeeper://x:1/path", "agentkeeper://x:1?retries=3", "agentkeeper://x:99999"]:
        with pytest.raises(InvalidArgument):
            parse_url(bad)


# ── connection-state listener ──


def test_listener_hears_connected_reconnecting_and_connected_again_across_a_restart(binary):
    port = port_outside_the_ephemeral_range()
    first = EmbeddedDaemon(binary=binary, port=port)
    first.start()
    states: list[str] = []
    client = AgentKeeperClient(port=port, host="127.0.0.1", timeout=10)
    try:
        client.add_listener(states.append)
        wait_for(lambda: states == ["connected"], what="connected")
        assert client.connection_state == "connected"
        first.stop()
        wait_for(lambda: states[-1:] == ["reconnecting"], what="reconnecting")
        second = EmbeddedDaemon(binary=binary, port=port)
        second.start()
        try:
            wait_for(lambda: states[-1:] == ["connected"], what="connected again")
            assert states[0] == "connected" and "reconnecting" in states
        finally:
            client.close()
            second.stop()
    finally:
        client.close()
        first.stop()
    assert states[-1] == "lost", "closing the client tells the listeners"


def test_listener_hears_lost_when_the_daemon_stays_away(binary):
    daemon = EmbeddedDaemon(binary=binary)
    daemon.start()
    states: list[str] = []
    with AgentKeeperClient("127.0.0.1", daemon.port, timeout=10, lost_after=0.2) as client:
        client.add_listener(states.append)
        wait_for(lambda: states == ["connected"], what="connected")
        daemon.stop()
        wait_for(lambda: states[-2:] == ["reconnecting", "lost"], what="lost")


async def test_async_listener_hears_connected_and_lost_on_close(binary):
    states: list[str] = []
    async with aio.AgentKeeperClient.embedded(binary=binary) as ak:

        async def listen(state: str) -> None:
            states.append(state)

        ak.add_listener(listen)
        await wait_for_async(lambda: states == ["connected"], what="connected")
    assert states == ["connected", "lost"]


# ── watch: one shape ──


def test_blocking_watch_is_an_iterator_subscribed_before_it_returns(client):
    with client.watch(["agent."]) as events:
        with client.register("iterated"):
            pass
        seen: list[WatchEvent] = []
        for event in events:
            seen.append(event)
            if event.topic == "agent.died":
                break
    assert [e.topic for e in seen] == ["agent.registered", "agent.died"]
    assert not events.active
    with pytest.raises(TypeError):
        iter(client.watch(["agent."], print))
