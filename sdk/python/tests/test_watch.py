"""Event bus: topics, decoded payloads, resume, reconnect exactly once in order, errors to on_error."""

import threading
from datetime import timezone

import grpc
import pytest

from agentkeeper import (
    AgentInfo,
    AgentKeeperClient,
    ElectionState,
    Lease,
    OutOfRange,
    ResourceExhausted,
    WatchEvent,
)

from conftest import HANG_GUARD, metric, wait_for


def test_topics_are_prefixes_and_payloads_are_decoded(client):
    everything: list[WatchEvent] = []
    agents: list[WatchEvent] = []
    with client.watch([], everything.append), client.watch(["agent."], agents.append):
        with client.register("w") as a:
            client.acquire_lease("task:1", a.agent_id).release()
            client.campaign("g", a.agent_id)
        expected = ["agent.registered", "lease.acquired", "lease.released", "leader.changed", "agent.died",
                    "leader.changed"]
        wait_for(lambda: [e.topic for e in everything] == expected)
        wait_for(lambda: [e.topic for e in agents] == ["agent.registered", "agent.died"])
    assert [e.sequence for e in everything] == list(range(1, 7))
    assert all(e.timestamp.tzinfo == timezone.utc for e in everything)
    assert isinstance(everything[0].payload, AgentInfo) and everything[0].payload.card.name == "w"
    assert isinstance(everything[1].payload, Lease) and everything[1].payload.task_id == "task:1"
    assert isinstance(everything[3].payload, ElectionState) and everything[3].payload.leader_agent_id == a.agent_id


def test_watch_returns_once_subscribed_so_nothing_is_missed(client):
    for _ in range(5):
        seen = []
        with client.watch(["agent.registered"], seen.append):
            client.register("quick").deregister()
            wait_for(lambda: len(seen) == 1)


def test_from_sequence_replays_then_goes_live(client):
    for i in range(3):
        client.register(f"old-{i}").deregister()  # sequences 1..6
    seen = []
    with client.watch(["agent.died"], seen.append, from_sequence=3):
        client.register("new").deregister()
        wait_for(lambda: [e.sequence for e in seen] == [4, 6, 8])


def test_reconnecting_watch_delivers_each_event_exactly_once_in_order(client):
    """Drop the stream again and again while events keep coming; compare with an undisturbed watcher."""
    dropped: list[WatchEvent] = []
    steady: list[WatchEvent] = []
    total = 300
    with client.watch([], steady.append), client.watch([], dropped.append) as sub:
        first = client.register("first", ttl=3600)
        wait_for(lambda: sub.last_sequence == 1, what="first event")  # from here on there is a resume point
        first.deregister()
        for i in range(total // 2 - 1):
            client.register(f"p{i}", ttl=3600).deregister()  # two events each
            if i % 10 == 0:
                sub._force_reconnect()
        wait_for(lambda: len(steady) == total and len(dropped) == total, what="all events")
    assert sub.reconnects >= 3
    assert [e.sequence for e in dropped] == list(range(1, total + 1)), "no gap, no duplicate, in order"
    assert [(e.sequence, e.topic) for e in dropped] == [(e.sequence, e.topic) for e in steady]


def test_resume_too_far_back_is_out_of_range(binary):
    with AgentKeeperClient.embedded(binary=binary, extra_args=["--events-retained=4"]) as client:
        for i in range(5):
            client.register(f"a{i}").deregister()
        with pytest.raises(OutOfRange) as e:
            client.watch([], print, from_sequence=1)
        assert isinstance(e.value, grpc.RpcError) and "oldest" in e.value.details()


def test_out_of_range_on_reconnect_goes_to_on_error(binary):
    errors = []
    with AgentKeeperClient.embedded(binary=binary, extra_args=["--events-retained=4"]) as client:
        leases = []
        agent = client.register("holder", ttl=3600)
        sub = client.watch(["lease."], leases.append, on_error=errors.append)
        client.acquire_lease("task:1", agent.agent_id)
        wait_for(lambda: len(leases) == 1)
        for i in range(5):  # events the watcher does not want push its resume point out of the ring
            client.register(f"noise{i}").deregister()
        sub._force_reconnect()
        assert sub.wait(HANG_GUARD), "the subscription must end, not spin"
        assert len(errors) == 1 and isinstance(errors[0], OutOfRange)
        assert sub.error is errors[0] and not sub.active



def test_a_slow_callback_is_cut_off_with_resource_exhausted_to_on_error(binary):
    errors = []
    release = threading.Event()

    def slow(event):
        release.wait(HANG_GUARD)

    # The callback blocks, so the events pile up in HTTP/2 and TCP buffers (the watcher has its
    # own connection, with small windows where the grpcio version honours them) until the
    # daemon's per-watcher buffer (4 events here) overflows and the daemon cuts the stream off.
    # Events are large (~100 KB) and produced until the daemon reports the overflow, so the
    # test does not depend on how much the transport buffers.
    narrow = [("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0),
              ("grpc.http2.lookahead_bytes", 8192)]
    with AgentKeeperClient.embedded(binary=binary, extra_args=["--watch-buffer=4"]) as client, \
            AgentKeeperClient(client.host, client.port, channel_options=narrow) as watcher:
        sub = watcher.watch(["agent.registered"], slow, on_error=errors.append)
        description = "x" * 8000
        metadata = {f"k{i}": "v" * 1000 for i in range(64)}
        tools = [f"tool-{i}-" + "t" * 100 for i in range(256)]
        for i in range(1000):
            client.register(f"a{i}", description=description, tools=tools, metadata=metadata, ttl=3600,
                            heartbeat=False)
            if i % 10 == 9 and metric(client, "agentkeeper_watch_overflows_total") >= 1:
                break
        else:
            raise AssertionError("the daemon never cut the slow watcher off")
        release.set()
        assert sub.wait(HANG_GUARD), "the subscription must end with an error"
        assert len(errors) == 1 and isinstance(errors[0], ResourceExhausted), errors
        assert "last sequence delivered" in errors[0].details()
        assert not sub.active
        assert sub.last_sequence >= 1


def test_callback_exceptions_do_not_stop_the_subscription(client):
    seen = []

    def flaky(event):
        seen.append(event)
        if len(seen) == 1:
            raise RuntimeError("bug in user code")

    with client.watch(["agent.registered"], flaky) as sub:
        client.register("one")
        client.register("two")
        wait_for(lambda: len(seen) == 2)
        assert sub.active


def test_cancel_from_inside_the_callback(client):
    seen = []
    holder = {}

    def once(event):
        seen.append(event)
        holder["sub"].cancel()

    holder["sub"] = client.watch([], once)
    client.register("a")
    client.register("b")
    wait_for(lambda: not holder["sub"].active)
    assert len(seen) == 1


def test_both_watches_return_a_v1_subscription(client):
    """v1 returned one Subscription class from watch() and watch_election(); isinstance still holds."""
    from agentkeeper import ElectionSubscription, EventSubscription, Subscription

    with client.watch([], print) as events, client.watch_election("g", print) as election:
        assert isinstance(events, Subscription) and isinstance(events, EventSubscription)
        assert isinstance(election, Subscription) and isinstance(election, ElectionSubscription)
        assert events.active and election.active
    assert not events.active and not election.active
