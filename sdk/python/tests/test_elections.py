"""Elections: campaign, resign, failover by death, watch_election."""

from datetime import datetime

import grpc
import pytest

from agentkeeper import ElectionState

from conftest import wait_for


def test_campaign_resign_and_watch_election(client):
    changes: list[ElectionState] = []
    with client.register("orchestrator") as orch, client.register("orchestrator") as standby:
        with client.watch_election("orchestrator:pipeline-A", changes.append) as sub:
            state = client.campaign(group="orchestrator:pipeline-A", agent_id=orch.agent_id)
            assert state.leader_agent_id == orch.agent_id and state.term == 1
            assert isinstance(state.elected_at, datetime)
            assert client.campaign("orchestrator:pipeline-A", standby.agent_id).leader_agent_id == orch.agent_id
            assert client.campaign("orchestrator:pipeline-A", orch.agent_id).term == 1, "campaign again: no-op"
            client.resign(group="orchestrator:pipeline-A", agent_id=orch.agent_id)
            state = client.campaign("orchestrator:pipeline-A", standby.agent_id)
            assert state.leader_agent_id == standby.agent_id and state.term == 2
            client.resign("orchestrator:pipeline-A", orch.agent_id)  # not a candidate: no-op
            wait_for(lambda: [(c.leader_agent_id, c.term) for c in changes]
                     == [("", 0), (orch.agent_id, 1), (standby.agent_id, 2)])
            assert sub.active


def test_leader_death_fails_over_and_watchers_see_it(manual):
    changes = []
    leader = manual.register("leader", ttl=5, heartbeat=False)
    with manual.register("standby", ttl=3600) as standby:
        manual.campaign("g", leader.agent_id)
        manual.campaign("g", standby.agent_id)
        with manual.watch_election("g", changes.append):
            manual.advance(11)
            wait_for(lambda: [c.leader_agent_id for c in changes] == [leader.agent_id, standby.agent_id])
            assert changes[-1].term == 2


def test_watch_election_reconnect_does_not_repeat_the_current_state(client):
    changes = []
    with client.register("a") as a, client.register("b") as b:
        with client.watch_election("g", changes.append) as sub:
            client.campaign("g", a.agent_id)
            wait_for(lambda: len(changes) == 2)
            sub._force_reconnect()
            wait_for(lambda: sub.reconnects == 1)
            client.resign("g", a.agent_id)
            client.campaign("g", b.agent_id)
            wait_for(lambda: [c.leader_agent_id for c in changes] == ["", a.agent_id, "", b.agent_id])
            assert [c.term for c in changes] == [0, 1, 2, 3]


def test_bad_group_and_unknown_agent(client):
    with pytest.raises(grpc.RpcError) as e:
        client.campaign("", "0" * 32)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        client.campaign("g", "0" * 32)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        client.watch_election("", print)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
