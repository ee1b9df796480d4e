"""Task calls exist with v1's signatures; this daemon answers UNIMPLEMENTED for now."""

import grpc
import pytest

from agentkeeper import TaskStatus, Unimplemented


def test_task_calls_raise_unimplemented(client):
    calls = [
        lambda: client.create_task("scrape", input=b"{}", required_tools=["browser"], max_retries=2, ttl=60),
        lambda: client.claim_task("0" * 32, timeout=5),
        lambda: client.complete_task("t", "0" * 32, output=b"ok"),
        lambda: client.fail_task("t", "0" * 32, reason="boom"),
        lambda: client.get_task("t"),
        lambda: client.list_tasks(),
        lambda: client.list_tasks(status=TaskStatus.PENDING),
    ]
    for call in calls:
        with pytest.raises(Unimplemented) as e:
            call()
        assert isinstance(e.value, grpc.RpcError) and e.value.code() == grpc.StatusCode.UNIMPLEMENTED
