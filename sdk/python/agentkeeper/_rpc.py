"""The daemon's methods as typed values: path, request and response message types, and whether a
call may be sent again after a failure that may have followed its arrival.

The clients call through these (``channel.unary_unary(rpc.path, ...)``) rather than through the
generated ``*_pb2_grpc`` stubs, which carry no types: here every request and response keeps its
generated message type, end to end. It only describes methods: it never makes a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

from agentkeeper.v1 import agentkeeper_pb2 as pb
from agentkeeper.v1 import cluster_pb2

__all__ = ["Rpc", "RpcName", "IDEMPOTENT_NAMES"]

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


@dataclass(frozen=True)
class RpcName:
    """A method's name, service and retry class, whatever its message types."""

    service: str
    name: str
    idempotent: bool
    """Safe to send again when the first attempt may or may not have arrived."""

    @property
    def path(self) -> str:
        return f"/agentkeeper.v1.{self.service}/{self.name}"


@dataclass(frozen=True)
class Rpc(RpcName, Generic[Req, Resp]):
    """One method of the daemon: ``/agentkeeper.v1.{service}/{name}`` and its message types."""

    request: type[Req]
    response: type[Resp]


def _rpc(service: str, name: str, request: type[Req], response: type[Resp], *, idempotent: bool) -> Rpc[Req, Resp]:
    return Rpc(service, name, idempotent, request, response)


# Idempotent: Deregister of a DEAD agent is OK, AcquireLease is re-entrant for its holder (the
# same token, a fresh expiry), Campaign of a candidate and Resign of a non-candidate are no-ops,
# SetPolicy is an upsert, the rest only read or refresh a deadline. Register, ReleaseLease,
# DeletePolicy, Advance and the task mutations are not: a second Register after a lost reply
# registers a second agent. In a cluster a write that "may yet take effect" commits before any
# later write or never, so repeating an idempotent one after it stays safe.
_R = "RegistryService"
REGISTER = _rpc(_R, "Register", pb.RegisterRequest, pb.RegisterResponse, idempotent=False)
HEARTBEAT = _rpc(_R, "Heartbeat", pb.HeartbeatRequest, pb.HeartbeatResponse, idempotent=True)
DEREGISTER = _rpc(_R, "Deregister", pb.DeregisterRequest, pb.DeregisterResponse, idempotent=True)
GET_AGENT = _rpc(_R, "GetAgent", pb.GetAgentRequest, pb.GetAgentResponse, idempotent=True)
FIND = _rpc(_R, "Find", pb.FindRequest, pb.FindResponse, idempotent=True)
WATCH = _rpc(_R, "Watch", pb.WatchRequest, pb.Event, idempotent=True)
# Streams: a message's items are heartbeats and renewals, idempotent as their unary calls.
KEEP_ALIVE = _rpc(_R, "KeepAlive", pb.KeepAliveRequest, pb.KeepAliveResponse, idempotent=True)

_L = "LeaseService"
ACQUIRE_LEASE = _rpc(_L, "AcquireLease", pb.AcquireLeaseRequest, pb.AcquireLeaseResponse, idempotent=True)
RENEW_LEASE = _rpc(_L, "RenewLease", pb.RenewLeaseRequest, pb.RenewLeaseResponse, idempotent=True)
RELEASE_LEASE = _rpc(_L, "ReleaseLease", pb.ReleaseLeaseRequest, pb.ReleaseLeaseResponse, idempotent=False)
LIST_LEASES = _rpc(_L, "ListLeases", pb.ListLeasesRequest, pb.ListLeasesResponse, idempotent=True)
LEASE_KEEP_ALIVE = _rpc(_L, "KeepAlive", pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse, idempotent=True)

_E = "ElectionService"
CAMPAIGN = _rpc(_E, "Campaign", pb.CampaignRequest, pb.CampaignResponse, idempotent=True)
RESIGN = _rpc(_E, "Resign", pb.ResignRequest, pb.ResignResponse, idempotent=True)
WATCH_ELECTION = _rpc(_E, "WatchElection", pb.WatchElectionRequest, pb.Event, idempotent=True)
LIST_ELECTIONS = _rpc(_E, "ListElections", pb.ListElectionsRequest, pb.ListElectionsResponse, idempotent=True)

_P = "EntitlementsService"
SET_POLICY = _rpc(_P, "SetPolicy", pb.SetPolicyRequest, pb.SetPolicyResponse, idempotent=True)
DELETE_POLICY = _rpc(_P, "DeletePolicy", pb.DeletePolicyRequest, pb.DeletePolicyResponse, idempotent=False)
LIST_POLICIES = _rpc(_P, "ListPolicies", pb.ListPoliciesRequest, pb.ListPoliciesResponse, idempotent=True)
CHECK_POLICY = _rpc(_P, "CheckPolicy", pb.CheckPolicyRequest, pb.CheckPolicyResponse, idempotent=True)

_T = "TaskService"
CREATE_TASK = _rpc(_T, "CreateTask", pb.CreateTaskRequest, pb.CreateTaskResponse, idempotent=False)
CLAIM_TASK = _rpc(_T, "ClaimTask", pb.ClaimTaskRequest, pb.ClaimTaskResponse, idempotent=False)
COMPLETE_TASK = _rpc(_T, "CompleteTask", pb.CompleteTaskRequest, pb.CompleteTaskResponse, idempotent=False)
FAIL_TASK = _rpc(_T, "FailTask", pb.FailTaskRequest, pb.FailTaskResponse, idempotent=False)
GET_TASK = _rpc(_T, "GetTask", pb.GetTaskRequest, pb.GetTaskResponse, idempotent=True)
LIST_TASKS = _rpc(_T, "ListTasks", pb.ListTasksRequest, pb.ListTasksResponse, idempotent=True)

_C = "ClockService"
ADVANCE = _rpc(_C, "Advance", pb.AdvanceRequest, pb.AdvanceResponse, idempotent=False)
NOW = _rpc(_C, "Now", pb.NowRequest, pb.NowResponse, idempotent=True)

CLUSTER_STATUS = _rpc(
    "ClusterService", "Status", cluster_pb2.ClusterStatusRequest, cluster_pb2.ClusterStatusResponse, idempotent=True
)

_ALL: list[RpcName] = [
    REGISTER, HEARTBEAT, DEREGISTER, GET_AGENT, FIND,
    ACQUIRE_LEASE, RENEW_LEASE, RELEASE_LEASE, LIST_LEASES,
    CAMPAIGN, RESIGN, LIST_ELECTIONS,
    SET_POLICY, DELETE_POLICY, LIST_POLICIES, CHECK_POLICY,
    CREATE_TASK, CLAIM_TASK, COMPLETE_TASK, FAIL_TASK, GET_TASK, LIST_TASKS,
    ADVANCE, NOW, CLUSTER_STATUS,
]  # fmt: skip

IDEMPOTENT_NAMES = frozenset(rpc.name for rpc in _ALL if rpc.idempotent)
"""The unary methods that are retried on any UNAVAILABLE (see ``_common.should_retry``)."""
