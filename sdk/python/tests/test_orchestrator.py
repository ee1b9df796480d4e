"""The v1 README's orchestrator pattern, end to end, on a manual clock: no sleeps for ttls."""

import threading
import uuid

from agentkeeper import AgentInfo, AgentStatus, Lease, WatchEvent

from conftest import HANG_GUARD, wait_for


def test_dead_agent_is_seen_by_the_orchestrator_and_its_lease_released(manual):
    client = manual
    active_tasks: dict[str, str] = {}  # task_id -> agent_id
    reassigned: list[str] = []
    events: list[WatchEvent] = []
    done = threading.Event()

    def on_event(event: WatchEvent) -> None:
        events.append(event)
        if event.topic == "agent.died":
            dead: AgentInfo = event.payload
            for task_id, holder in list(active_tasks.items()):
                if holder == dead.agent_id:
                    reassigned.append(task_id)
                    del active_tasks[task_id]
            done.set()

    with client.watch(["agent.died", "lease."], on_event), \
            client.register("orchestrator", "assigns work", "1.0.0", ttl=3600):
        # A worker that will crash: registered, then its process "dies" (no more heartbeats).
        worker = client.register("scraper-1", "Fetches and parses web pages", "1.0.0",
                                 tools=["browser"], ttl=5)
        task_id = f"task:{uuid.uuid4()}"
        for agent in client.find(query="fetch and parse web pages", tools=["browser"]):
            lease = client.acquire_lease(task_id, agent.agent_id, ttl=120)
            if lease:
                active_tasks[task_id] = agent.agent_id
                break
        assert active_tasks == {task_id: worker.agent_id}

        worker.stop_heartbeat()  # the crash
        client.advance(5.5)
        assert client.get_agent(worker.agent_id).status == AgentStatus.UNREACHABLE
        client.advance(5)  # 2 x ttl since the last heartbeat: DEAD
        assert done.wait(HANG_GUARD), "the orchestrator never saw agent.died"

        assert reassigned == [task_id] and active_tasks == {}
        wait_for(lambda: [e.topic for e in events] == ["lease.acquired", "agent.died", "lease.released"])
        released: Lease = events[2].payload
        assert released.task_id == task_id and released.holder_agent_id == worker.agent_id
        assert [e.sequence for e in events] == sorted(e.sequence for e in events)
        assert client.get_agent(worker.agent_id).status == AgentStatus.DEAD

        # The task is free again: a new worker can take it with a higher fencing token.
        with client.register("scraper-2", tools=["browser"], ttl=3600) as replacement:
            again = client.acquire_lease(task_id, replacement.agent_id)
            assert again is not None and again.token > lease.token


def test_the_same_seed_gives_the_same_ids(binary):
    from agentkeeper import AgentKeeperClient

    ids = []
    for _ in range(2):
        with AgentKeeperClient.embedded(binary=binary, clock="manual", seed=42) as c:
            ids.append([c.register(f"a{i}").agent_id for i in range(3)])
    assert ids[0] == ids[1]


def test_the_same_pattern_on_the_real_clock(client):
    """As above with real time: ttl 1 s, the heartbeat stops, the daemon's own timers kill the agent."""
    import time

    seen: list[WatchEvent] = []
    with client.watch(["agent.", "lease."], seen.append):
        worker = client.register("scraper-1", "Fetches and parses web pages", "1.0.0", tools=["browser"], ttl=1)
        lease = client.acquire_lease("task:real", worker.agent_id, ttl=60)
        assert lease is not None
        wait_for(lambda: len(seen) == 2)
        crashed = time.monotonic()
        worker.stop_heartbeat()  # the crash
        wait_for(lambda: "agent.died" in [e.topic for e in seen], what="agent.died")
        died_after = time.monotonic() - crashed
        wait_for(lambda: len(seen) == 5)
        assert [e.topic for e in seen] == [
            "agent.registered", "lease.acquired", "agent.unreachable", "agent.died", "lease.released"]
        assert all(isinstance(e.payload, AgentInfo) for e in seen if e.topic.startswith("agent."))
        assert seen[4].payload.task_id == "task:real" and seen[4].payload.holder_agent_id == worker.agent_id
        # Never early: 2 x ttl after the last heartbeat, by the daemon's clock; that was at most
        # ttl/2 before the crash. (No upper bound: a loaded machine may deliver the death late;
        # the manual-clock test above pins its moment.)
        died = seen[3]
        assert (died.timestamp - died.payload.last_heartbeat_at).total_seconds() >= 2.0
        assert died_after > 0.9, died_after
        assert client.get_agent(worker.agent_id).status == AgentStatus.DEAD
        assert client.find(tools=["browser"]) == []
        with client.register("scraper-2", tools=["browser"]) as replacement:
            assert client.acquire_lease("task:real", replacement.agent_id).token > lease.token
