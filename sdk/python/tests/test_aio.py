"""The asyncio client: same surface, async context managers, async iteration, reconnects."""

import asyncio

import grpc
import pytest

from agentkeeper import (
    AgentInfo,
    AgentStatus,
    ElectionState,
    FailedPrecondition,
    InvalidArgument,
    Lease,
    NotFound,
    OutOfRange,
    PermissionDenied,
    PolicyEffect,
)
from agentkeeper import aio

from conftest import HANG_GUARD
from conftest import wait_for_async as wait_until


@pytest.fixture
async def aclient(binary):
    async with aio.AgentKeeperClient.embedded(binary=binary, clock="manual", seed=7, timeout=10) as c:
        yield c


async def test_registry_leases_and_async_iteration(aclient):
    async with aclient.watch(["agent.", "lease."]) as events:
        async with aclient.register("worker", "does work", "1.0", tools=["browser"], ttl=30) as agent:
            info = await aclient.get_agent(agent.agent_id)
            assert isinstance(info, AgentInfo) and info.status == AgentStatus.ALIVE
            assert [a.agent_id for a in await aclient.find(query="work", tools=["browser"])] == [agent.agent_id]
            async with aclient.acquire_lease("task:1", agent.agent_id, ttl=10) as lease:
                assert isinstance(lease.token, int) and lease.token > 0
                renewed = await lease.renew(ttl=20)
                assert renewed.token == lease.token
        topics = []
        async for event in events:
            topics.append(event.topic)
            if event.topic == "agent.died":
                break
    assert topics == ["agent.registered", "lease.acquired", "lease.renewed", "lease.released", "agent.died"]


async def test_lease_held_by_another(aclient):
    a = await aclient.register("a")
    b = await aclient.register("b")
    held = await aclient.acquire_lease("task:x", a.agent_id)
    assert held is not None
    assert await aclient.acquire_lease("task:x", b.agent_id) is None
    with pytest.raises(FailedPrecondition, match=a.agent_id):
        async with aclient.acquire_lease("task:x", b.agent_id):
            pass
    await held.release()
    with pytest.raises(NotFound):
        await held.release()
    await a.deregister()
    await b.deregister()


async def test_manual_clock_death_on_lost_and_watch_callback(aclient):
    lost = asyncio.Event()
    died = []

    async def on_event(event):
        if event.topic == "agent.died":
            died.append(event.payload.agent_id)

    async with aclient.watch(["agent.died"], on_event):
        agent = await aclient.register("doomed", ttl=1, on_lost=lambda h: lost.set())
        before = await aclient.now()
        after = await aclient.advance(5)
        assert (after - before).total_seconds() == 5
        await asyncio.wait_for(lost.wait(), HANG_GUARD)
        assert agent.lost
        await wait_until(lambda: died == [agent.agent_id])
        async with agent:
            pass  # deregistering a dead agent on exit is fine


async def test_keep_alive_and_lost_lease(aclient):
    lost = []
    async with aclient.register("holder", ttl=3600) as agent:
        lease = await aclient.acquire_lease("task:ka", agent.agent_id, ttl=1, keep_alive=True,
                                            on_lost=lost.append)
        await aclient.advance(2)
        await wait_until(lambda: lost == [lease])
        assert lease.lost
        with pytest.raises(NotFound):
            await lease.renew()


async def test_elections(aclient):
    states = []
    a = await aclient.register("a", ttl=3600)
    b = await aclient.register("b", ttl=3600)
    async with aclient.watch_election("g", states.append):
        state = await aclient.campaign("g", a.agent_id)
        assert state.leader_agent_id == a.agent_id and state.term == 1
        await aclient.campaign("g", b.agent_id)
        await aclient.resign("g", a.agent_id)
        await wait_until(lambda: [s.leader_agent_id for s in states] == ["", a.agent_id, b.agent_id])
    assert all(isinstance(s, ElectionState) for s in states)
    async with aclient.watch_election("g") as stream:
        first = await stream.__anext__()
        assert first.leader_agent_id == b.agent_id and first.term == 2


async def test_policies(aclient):
    await aclient.set_policy("deny-w", "agent:s", "call", "tool:write", PolicyEffect.DENY)
    await aclient.set_policy("allow-all", "agent:*", "call", "tool:*", PolicyEffect.ALLOW)
    assert not (await aclient.check_policy("agent:s", "call", "tool:write")).allowed
    assert (await aclient.check_policy("agent:t", "call", "tool:write")).allowed
    assert [p.id for p in await aclient.list_policies()] == ["allow-all", "deny-w"]
    assert [p.id for p in await aclient.list_policies("agent:s")] == ["deny-w"]
    await aclient.delete_policy("deny-w")
    with pytest.raises(NotFound):
        await aclient.delete_policy("deny-w")


async def test_reconnecting_async_watch_is_exactly_once_in_order(aclient):
    total = 80
    async with aclient.watch([]) as stream:
        # Resume points exist once an event was delivered (see README: "Exactly once").
        first = await aclient.register("first", heartbeat=False)
        sequences = [(await stream.__anext__()).sequence]

        async def produce():
            await first.deregister()
            for i in range(total // 2 - 1):
                agent = await aclient.register(f"p{i}", heartbeat=False)
                await agent.deregister()
                if i % 6 == 0:
                    stream._force_reconnect()
                await asyncio.sleep(0)

        producer = asyncio.ensure_future(produce())
        async for event in stream:
            sequences.append(event.sequence)
            if len(sequences) == total:
                break
        await producer
    assert sequences == list(range(1, total + 1))
    assert stream.reconnects >= 5


async def test_out_of_range_raises_from_async_for_or_goes_to_on_error(binary):
    async with aio.AgentKeeperClient.embedded(binary=binary, extra_args=["--events-retained=4"]) as c:
        for i in range(5):
            await (await c.register(f"a{i}", heartbeat=False)).deregister()
        with pytest.raises(OutOfRange):
            await c.watch([], from_sequence=1)
        errors = []
        holder = await c.register("holder", heartbeat=False)
        stream = await c.watch(["lease."], on_error=errors.append)
        await c.acquire_lease("task:1", holder.agent_id)
        assert (await stream.__anext__()).topic == "lease.acquired"
        for i in range(5):
            await (await c.register(f"n{i}", heartbeat=False)).deregister()
        stream._force_reconnect()
        assert [e async for e in stream] == []
        assert len(errors) == 1 and isinstance(errors[0], OutOfRange)


async def test_errors_and_tasks(aclient):
    with pytest.raises(NotFound) as e:
        await aclient.get_agent("0" * 32)
    assert isinstance(e.value, grpc.RpcError)
    with pytest.raises(InvalidArgument):
        await aclient.register("")
    with pytest.raises(PermissionDenied):
        async with aclient.register("a", ttl=3600) as agent:
            lease = await aclient.acquire_lease("t", agent.agent_id)
            from agentkeeper.aio import LeaseHandle

            await LeaseHandle(aclient, Lease(**{**vars(lease.lease), "token": lease.token + 1}), 60).renew()
    # The task calls map the daemon's answers to the same typed errors.
    for call, error in [
        (aclient.create_task(""), InvalidArgument),
        (aclient.claim_task("0" * 32, timeout=5), NotFound),
        (aclient.complete_task("t", "a"), NotFound),
        (aclient.fail_task("t", "a", reason="x"), NotFound),
        (aclient.get_task("t"), NotFound),
    ]:
        with pytest.raises(error):
            await call
    assert await aclient.list_tasks() == []


async def test_embedded_can_be_awaited(binary):
    client = await aio.AgentKeeperClient.embedded(binary=binary)
    try:
        assert await client.find() == []
        with pytest.raises(FailedPrecondition):
            await client.advance(1)
        process = client.daemon.process
    finally:
        await client.close()
    assert process.poll() is not None
