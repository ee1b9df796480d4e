"""Entitlements: set (upsert), check (DENY wins, default deny), list (sorted, prefix), delete."""

import grpc
import pytest

from agentkeeper import CheckResult, InvalidArgument, NotFound, Policy, PolicyEffect


def test_policies_end_to_end(client):
    p = client.set_policy(id="allow-orch-all", subject="agent:orchestrator", action="call",
                          resource="tool:*", effect=PolicyEffect.ALLOW)
    assert p == Policy("allow-orch-all", "agent:orchestrator", "call", "tool:*", PolicyEffect.ALLOW)
    client.set_policy("allow-scraper", "agent:scraper", "call", "tool:*", PolicyEffect.ALLOW)
    client.set_policy("deny-scraper-write", "agent:scraper", "call", "tool:write_file", "DENY")

    result = client.check_policy(subject="agent:scraper", action="call", resource="tool:write_file")
    assert result == CheckResult(allowed=False, reason='denied by policy "deny-scraper-write"')
    assert client.check_policy("agent:scraper", "call", "tool:read_file") == CheckResult(
        True, 'allowed by policy "allow-scraper"')
    nobody = client.check_policy("agent:nobody", "call", "tool:x")
    assert not nobody.allowed and "default deny" in nobody.reason

    assert [x.id for x in client.list_policies()] == ["allow-orch-all", "allow-scraper", "deny-scraper-write"]
    assert [x.id for x in client.list_policies(subject_prefix="agent:scraper")] == [
        "allow-scraper", "deny-scraper-write"]

    client.set_policy("allow-scraper", "agent:scraper", "call", "tool:*", PolicyEffect.DENY)  # upsert
    assert [x.effect for x in client.list_policies("agent:scraper")] == [PolicyEffect.DENY, PolicyEffect.DENY]

    client.delete_policy("deny-scraper-write")
    assert "deny-scraper-write" not in [x.id for x in client.list_policies()]
    with pytest.raises(NotFound):
        client.delete_policy("deny-scraper-write")


def test_invalid_policies(client):
    with pytest.raises(InvalidArgument):
        client.set_policy("", "s", "a", "r", PolicyEffect.ALLOW)
    with pytest.raises(grpc.RpcError) as e:
        client.set_policy("p", "", "a", "r", PolicyEffect.ALLOW)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
