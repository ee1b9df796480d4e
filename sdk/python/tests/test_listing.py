"""Listing what the daemon holds: every lease (paged, by key, with a prefix) and every election
group with its candidates, from both clients."""

from agentkeeper import AgentKeeperClient, ElectionGroup, InvalidArgument, Lease, aio


def test_list_leases_follows_every_page_by_key_and_filters_by_prefix(manual: AgentKeeperClient) -> None:
    agent = manual.register("holder", ttl=60, heartbeat=False)
    tokens = {}
    for i in range(25):
        key = f"{'jobs' if i % 5 == 0 else 'locks'}/{i:03d}"
        lease = manual.acquire_lease(key, agent.agent_id, ttl=60)
        assert lease is not None
        tokens[key] = lease.token
    leases = manual.list_leases(page_size=4)
    assert all(isinstance(lease, Lease) for lease in leases)
    assert [(lease.task_id, lease.token) for lease in leases] == sorted(tokens.items())
    assert {lease.holder_agent_id for lease in leases} == {agent.agent_id}
    jobs = manual.list_leases(prefix="jobs/")
    assert [lease.task_id for lease in jobs] == ["jobs/000", "jobs/005", "jobs/010", "jobs/015", "jobs/020"]
    page, token = manual.list_leases_page(page_size=2)
    assert [lease.task_id for lease in page] == ["jobs/000", "jobs/005"] and token == "jobs/005"
    assert manual.list_leases(prefix="none/") == []


def test_list_leases_rejects_an_oversized_prefix(manual: AgentKeeperClient) -> None:
    try:
        manual.list_leases(prefix="k" * 1025)
    except InvalidArgument as e:
        assert "prefix" in str(e)
    else:
        raise AssertionError("a 1025-byte prefix should be refused")


def test_list_elections_shows_leaders_terms_and_candidates_in_line(manual: AgentKeeperClient) -> None:
    a = manual.register("a", ttl=60, heartbeat=False)
    b = manual.register("b", ttl=60, heartbeat=False)
    manual.campaign("writers", a.agent_id)
    manual.campaign("writers", b.agent_id)
    manual.campaign("indexers", b.agent_id)
    manual.resign("writers", a.agent_id)
    groups = manual.list_elections()
    assert all(isinstance(g, ElectionGroup) for g in groups)
    assert [g.state.group for g in groups] == ["indexers", "writers"]
    writers = groups[1]
    assert writers.state.leader_agent_id == b.agent_id
    assert writers.state.term == 2
    assert writers.candidate_agent_ids == [b.agent_id]
    assert writers.candidates_total == 1


async def test_the_asyncio_client_lists_leases_and_elections_too(binary: str) -> None:
    async with aio.AgentKeeperClient.embedded(binary=binary, clock="manual", seed=7, timeout=10) as c:
        agent = await c.register("holder", ttl=60, heartbeat=False)
        for key in ["b", "a", "c"]:
            await c.acquire_lease(key, agent.agent_id, ttl=60)
        assert [lease.task_id for lease in await c.list_leases(page_size=2)] == ["a", "b", "c"]
        await c.campaign("g", agent.agent_id)
        groups = await c.list_elections()
        assert [(g.state.group, g.candidate_agent_ids) for g in groups] == [("g", [agent.agent_id])]
