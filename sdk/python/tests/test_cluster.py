"""The SDK on a cluster of three real daemons (raft-rs): a client given every node's endpoint
keeps reading and writing when its node is killed, a registered agent's heartbeats carry on
across a leader's death, a watch resumes on another node with no gap and no repeat, and a
write whose outcome is unknown raises OutcomeUnknownError instead of being sent twice.

Each test starts its own cluster (it kills a node). Nothing waits for a fixed time: each waits
for what it checks, with the suite's hang guard.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from agentkeeper import AgentKeeperClient, AgentStatus, OutcomeUnknownError, RetryPolicy, WatchEvent

from conftest import HANG_GUARD, finishes, wait_for
from local_cluster import LocalCluster
from test_retry import ObservedRetry

# Patient enough for an election (a second or two) however the retries fall.
PATIENT = RetryPolicy(max_attempts=50, initial_backoff=0.05, max_backoff=0.5)


@pytest.fixture
def cluster(binary: str) -> Iterator[LocalCluster]:
    nodes = LocalCluster(binary)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.close()


def _agent_topics_so_far(observer: AgentKeeperClient, agent_id: str) -> list[str]:
    """The topics of every event of the agent, from the first up to a marker registered now."""
    marker = observer.register("marker", heartbeat=False)
    topics = []
    with observer.watch(["agent."], from_sequence=1) as history:
        for event in history:
            if event.payload.agent_id == marker.agent_id:
                break
            if event.payload.agent_id == agent_id:
                topics.append(event.topic)
    return topics


def test_a_client_with_every_endpoint_keeps_reading_and_writing_after_its_node_is_killed(cluster):
    leader = cluster.leader()
    with AgentKeeperClient(endpoints=cluster.endpoints(first=leader), retry=PATIENT, timeout=HANG_GUARD) as client:
        assert client.cluster_status().node_id == leader, "the first endpoint is the one used"
        before = client.register("before", heartbeat=False, ttl=3600)
        client.set_policy("p1", "agent:a", "read", "docs/*", "ALLOW")
        states: list[str] = []
        client.add_listener(states.append)
        wait_for(lambda: states[-1:] == ["connected"], what="the listener hears the connection")

        cluster.kill(leader)
        wait_for(lambda: "reconnecting" in states, what="the client notices its node went away")

        # At once, while the others elect a leader: reads and idempotent writes go on through
        # another node (a write the dead leader may have taken is simply sent again).
        assert client.get_agent(before.agent_id).card.name == "before"
        assert client.check_policy("agent:a", "read", "docs/x").allowed
        client.set_policy("p2", "agent:b", "read", "docs/*", "ALLOW")
        lease = client.acquire_lease("deploy", before.agent_id)
        assert lease is not None and lease.token > 0
        assert client.address != cluster.address(leader)
        wait_for(lambda: states[-1:] == ["connected"], what="the listener follows the client to the new node")

        # Writes that must not be repeated work too, once the cluster has a leader again (during
        # the election they may raise OutcomeUnknownError: see the last test).
        assert cluster.leader() in cluster.running
        after = client.register("after", heartbeat=False, ttl=3600)
        task = client.create_task("build")
        assert {a.agent_id for a in client.find()} == {before.agent_id, after.agent_id}, "each registered once"
        assert client.get_task(task.id).type == "build"
        assert [p.id for p in client.list_policies()] == ["p1", "p2"]
        assert [held.token for held in client.list_leases()] == [lease.token]
        assert "lost" not in states


def test_a_registered_agents_heartbeats_continue_across_a_leader_kill_and_it_stays_alive(cluster):
    leader = cluster.leader()
    with AgentKeeperClient(endpoints=cluster.endpoints(first=leader), retry=PATIENT, timeout=HANG_GUARD) as client:
        agent = client.register("steady", ttl=4)  # heartbeats every 2 s from a background thread
        cluster.kill(leader)
        new_leader = cluster.leader()
        survivor = cluster.endpoints(first=new_leader)[:1]
        with AgentKeeperClient(endpoints=survivor, timeout=HANG_GUARD) as observer:
            since_election = observer.get_agent(agent.agent_id).last_heartbeat_at
            # A heartbeat committed under the new leader: the background thread found a live node.
            wait_for(
                lambda: observer.get_agent(agent.agent_id).last_heartbeat_at > since_election,
                what="a heartbeat after the election",
            )
            assert agent.heartbeating and not agent.lost
            assert observer.get_agent(agent.agent_id).status == AgentStatus.ALIVE
            # And it never went UNREACHABLE meanwhile: the whole history of its events, up to a
            # marker written now, holds its registration only.
            topics = _agent_topics_so_far(observer, agent.agent_id)
            assert topics == ["agent.registered"]


def test_a_call_to_a_hung_node_moves_on_once_its_connection_stops_answering_pings(cluster):
    # A hung node (SIGSTOP: its sockets stay open, it answers nothing) never resets the
    # connection. The client's HTTP/2 pings find it out: the call on it fails UNAVAILABLE and,
    # being a read, goes to the next node. Without the pings it would wait out its deadline.
    leader = cluster.leader()
    hung = next(n for n in cluster.running if n != leader)
    # The deadline leaves room for the pings (PING_AFTER_MS + PING_TIMEOUT_MS), not for a hang.
    with AgentKeeperClient(endpoints=cluster.endpoints(first=hung), retry=PATIENT, timeout=12.0) as client:
        client.set_policy("seen", "agent:a", "read", "docs/*", "ALLOW")
        assert client.address == cluster.address(hung)
        cluster.stop_process(hung)
        try:
            decision = finishes(lambda: client.check_policy("agent:a", "read", "docs/x"), "a read on a hung node")
        finally:
            cluster.resume_process(hung)
        assert decision.allowed
        assert client.address != cluster.address(hung), "moved to another node"


def test_heartbeats_on_a_hung_node_move_to_another_and_the_agent_stays_alive(cluster):
    leader = cluster.leader()
    hung = next(n for n in cluster.running if n != leader)
    with AgentKeeperClient(endpoints=cluster.endpoints(first=hung), retry=PATIENT, timeout=HANG_GUARD) as client:
        agent = client.register("steady", ttl=10)  # heartbeats every ~3.3 s on the hung node's stream
        with AgentKeeperClient(endpoints=cluster.endpoints(first=leader)[:1], timeout=HANG_GUARD) as observer:
            cluster.stop_process(hung)
            try:
                stopped_at = observer.get_agent(agent.agent_id).last_heartbeat_at
                # The stream on the hung node fails its pings; the heartbeats go on elsewhere.
                wait_for(
                    lambda: observer.get_agent(agent.agent_id).last_heartbeat_at > stopped_at,
                    what="a heartbeat through another node",
                )
                assert client.address != cluster.address(hung)
            finally:
                cluster.resume_process(hung)
            assert agent.heartbeating and not agent.lost
            topics = _agent_topics_so_far(observer, agent.agent_id)
            assert topics == ["agent.registered"], "never UNREACHABLE"


def test_a_watch_resumes_on_another_node_with_no_gap_and_no_repeat(cluster):
    leader = cluster.leader()
    with AgentKeeperClient(endpoints=cluster.endpoints(first=leader), retry=PATIENT, timeout=HANG_GUARD) as client:
        holder = client.register("holder", heartbeat=False, ttl=3600).agent_id
        with client.watch([]) as stream:  # every event, so their sequence numbers have no holes
            events = iter(stream)
            seen: list[WatchEvent] = []

            def read_until_acquired(key: str) -> None:
                while not any(e.topic == "lease.acquired" and e.payload.task_id == key for e in seen):
                    seen.append(finishes(lambda: next(events), f"the event of {key}"))

            for key in ["k0", "k1", "k2"]:
                client.acquire_lease(key, holder)
            read_until_acquired("k2")

            cluster.kill(leader)  # the node the watch (and the client) was on
            # Written while the watch is down and the others elect a leader (acquire_lease is
            # safe to send again, so the client does that through the failover by itself).
            for key in ["k3", "k4", "k5"]:
                client.acquire_lease(key, holder)
            read_until_acquired("k5")

            assert stream.reconnects >= 1, "the stream was reopened"
            assert client.address != cluster.address(leader)
    sequences = [e.sequence for e in seen]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences))), sequences
    acquired = [e.payload.task_id for e in seen if e.topic == "lease.acquired"]
    assert acquired == ["k0", "k1", "k2", "k3", "k4", "k5"]


def test_a_write_whose_outcome_is_unknown_raises_outcome_unknown_and_is_not_sent_again(cluster):
    leader = cluster.leader()
    follower = next(n for n in cluster.running if n != leader)
    policy = ObservedRetry(max_attempts=50, initial_backoff=0.05, max_backoff=0.5)
    with AgentKeeperClient(endpoints=cluster.endpoints(first=follower), retry=policy, timeout=HANG_GUARD) as client:
        client.set_policy("doomed", "agent:a", "read", "docs/*", "ALLOW")  # through the follower
        while not policy.retries.empty():
            policy.retries.get_nowait()
        # The leader hangs: the follower forwards the write to it, and it is never answered. Once
        # the others elect a new leader (or the follower's 5 s pass), the follower answers
        # UNAVAILABLE "... it may yet take effect". DeletePolicy is not safe to repeat (a second
        # one answers NOT_FOUND) and carries no request number.
        cluster.stop_process(leader)
        try:
            with pytest.raises(OutcomeUnknownError, match="may yet take effect") as raised:
                finishes(lambda: client.delete_policy("doomed"), "delete on a follower of a hung leader")
        finally:
            cluster.resume_process(leader)
        assert policy.retries.empty(), "a write that may have taken effect is not sent again"
        assert "may or may not have taken effect" in raised.value.details()
        assert client.address == cluster.address(follower)


def test_a_register_whose_first_attempt_may_have_taken_effect_is_retried_and_registers_once(cluster):
    leader = cluster.leader()
    follower = next(n for n in cluster.running if n != leader)
    policy = ObservedRetry(max_attempts=50, initial_backoff=0.05, max_backoff=0.5)
    with AgentKeeperClient(endpoints=cluster.endpoints(first=follower), retry=policy, timeout=HANG_GUARD) as client:
        client.set_policy("warm", "agent:a", "read", "docs/*", "ALLOW")  # through the follower
        while not policy.retries.empty():
            policy.retries.get_nowait()
        # As above, the first attempt's outcome is unknown; a Register carries this client's id
        # and a request number, so the client sends it again until a leader answers, and the
        # cluster registers it once however many attempts reached it. The hung node is resumed
        # once the others have a new leader: a retry that went to it (the client takes the
        # endpoints in turn) is answered too, rather than held to its deadline.
        cluster.stop_process(leader)
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending = pool.submit(client.register, "maybe", heartbeat=False)
                cluster.leader()  # among the two still running
                cluster.resume_process(leader)
                agent = pending.result(timeout=HANG_GUARD)
        finally:
            cluster.resume_process(leader)
        assert not policy.retries.empty(), "the numbered register was sent again"
        cluster.leader()
        named = [a for a in client.find() if a.card.name == "maybe"]
        assert [a.agent_id for a in named] == [agent.agent_id], "registered once, under the id returned"