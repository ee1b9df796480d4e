"""Error hierarchy and argument checks that need no daemon."""

import pickle

import grpc
import pytest

import agentkeeper
from agentkeeper import (
    AgentKeeperClient,
    AgentKeeperError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from agentkeeper._errors import error_for, from_rpc_error


@pytest.mark.parametrize(
    "cls, code",
    [
        (NotFound, grpc.StatusCode.NOT_FOUND),
        (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
        (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
        (Unavailable, grpc.StatusCode.UNAVAILABLE),
        (Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
    ],
)
def test_each_error_is_an_rpc_error_with_code_and_details(cls, code):
    error = error_for(code, "agent \"x\" not found")
    assert type(error) is cls
    assert isinstance(error, AgentKeeperError) and isinstance(error, grpc.RpcError)
    assert error.code() == code and error.details() == 'agent "x" not found'
    assert code.name in str(error)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls and again.details() == error.details()


def test_invalid_argument_is_also_a_value_error():
    assert issubclass(InvalidArgument, ValueError)


def test_unknown_codes_keep_their_code():
    error = error_for(grpc.StatusCode.DATA_LOSS, "boom")
    assert type(error) is AgentKeeperError and error.code() == grpc.StatusCode.DATA_LOSS


def test_from_rpc_error_translates_grpc_errors():
    class Fake(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.NOT_FOUND

        def details(self):
            return "gone"

    error = from_rpc_error(Fake())
    assert isinstance(error, NotFound) and error.details() == "gone"


def test_bad_argument_types_fail_before_the_wire_as_invalid_argument():
    client = AgentKeeperClient(host="127.0.0.1", port=1)  # never connects: checked locally
    try:
        with pytest.raises(InvalidArgument, match="ttl"):
            client.register("a", ttl=-1)
        with pytest.raises(InvalidArgument, match="limit"):
            client.find(limit=2**40)
        with pytest.raises(InvalidArgument, match="tools"):
            client.find(tools="browser")
        with pytest.raises(InvalidArgument, match="effect"):
            client.set_policy("p", "s", "a", "r", effect="MAYBE")
        with pytest.raises(grpc.RpcError):
            client.acquire_lease(42, "agent")  # type: ignore[arg-type]
    finally:
        client.close()


def test_public_names():
    for name in [
        "AgentKeeperClient", "AgentCard", "Capability", "AgentInfo", "AgentStatus", "Lease",
        "ElectionState", "Policy", "PolicyEffect", "CheckResult", "WatchEvent", "Task", "TaskStatus",
        "AgentKeeperError", "NotFound", "PermissionDenied", "InvalidArgument", "FailedPrecondition",
        "ResourceExhausted", "OutOfRange", "Unavailable", "Unimplemented",
    ]:
        assert name in agentkeeper.__all__ and hasattr(agentkeeper, name)
    from agentkeeper import aio

    assert aio.AgentKeeperClient


def test_address_defaults_and_environment(monkeypatch):
    monkeypatch.delenv("AGENTKEEPER_ADDRESS", raising=False)
    c = AgentKeeperClient()
    assert c.address == "localhost:7070"
    c.close()
    monkeypatch.setenv("AGENTKEEPER_ADDRESS", "10.0.0.5:7171")
    c = AgentKeeperClient()
    assert (c.host, c.port) == ("10.0.0.5", 7171)
    c.close()
    c = AgentKeeperClient(host="agentkeeper.internal", port=7070)
    assert c.address == "agentkeeper.internal:7070"
    c.close()


def test_event_cursor_resumes_at_the_last_event_and_checks_it():
    from agentkeeper._common import EventCursor

    cursor = EventCursor(0)
    assert cursor.request_from() == 0 and not cursor.has_resume_point  # live, nothing to check
    assert cursor.accept(5, "agent.registered", 100, 0, "t/AgentInfo")
    assert cursor.accept(6, "agent.died", 101, 0, "t/AgentInfo")
    assert not cursor.accept(6, "agent.died", 101, 0, "t/AgentInfo"), "a repeat is dropped"
    assert cursor.request_from() == 6, "reopen at the last delivered event itself"
    assert not cursor.accept(6, "agent.died", 101, 0, "t/AgentInfo"), "handed back: skipped"
    assert cursor.accept(7, "lease.acquired", 102, 0, "t/Lease") and cursor.last_sequence == 7

    assert cursor.request_from() == 7
    with pytest.raises(OutOfRange, match="restarted without --data-dir"):
        cursor.accept(7, "agent.registered", 500, 0, "t/AgentInfo")  # another event under #7

    assert cursor.request_from() == 7
    with pytest.raises(OutOfRange):
        cursor.accept(9, "lease.released", 103, 0, "t/Lease")  # #7 is not there any more

    assert cursor.request_from() == 7
    assert cursor.reopen_after_out_of_range(), "#7 may just have left the window: try #8 once"
    assert cursor.request_from() == 8
    assert not cursor.reopen_after_out_of_range(), "no second fallback"
    assert cursor.accept(8, "lease.released", 103, 0, "t/Lease")
    assert cursor.request_from() == 8, "checked again from then on"


def test_event_cursor_with_a_start_point():
    from agentkeeper._common import EventCursor

    cursor = EventCursor(10)
    assert cursor.last_sequence == 9 and cursor.request_from() == 10
    assert not cursor.accept(9, "x", 1, 0, ""), "before the start point"
    assert cursor.request_from() == 10, "nothing delivered yet: no event to check, start again at 10"
