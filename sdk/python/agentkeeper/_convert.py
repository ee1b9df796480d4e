"""Conversion between protobuf messages and the SDK's dataclasses, and argument checks."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Optional, Union

from google.protobuf import any_pb2, duration_pb2, timestamp_pb2

from agentkeeper._errors import InvalidArgument
from agentkeeper._types import (
    AgentCard,
    AgentInfo,
    AgentStatus,
    Capability,
    CheckResult,
    ClusterMember,
    ClusterStatus,
    ElectionGroup,
    ElectionState,
    Lease,
    Payload,
    Policy,
    PolicyEffect,
    Task,
    TaskStatus,
    WatchEvent,
)
from agentkeeper.v1 import agentkeeper_pb2 as pb
from agentkeeper.v1 import cluster_pb2

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1

_STATUS_FROM_PB = {
    pb.AGENT_STATUS_ALIVE: AgentStatus.ALIVE,
    pb.AGENT_STATUS_UNREACHABLE: AgentStatus.UNREACHABLE,
    pb.AGENT_STATUS_DEAD: AgentStatus.DEAD,
}
_EFFECT_TO_PB = {PolicyEffect.ALLOW: pb.POLICY_EFFECT_ALLOW, PolicyEffect.DENY: pb.POLICY_EFFECT_DENY}
_EFFECT_FROM_PB = {v: k for k, v in _EFFECT_TO_PB.items()}
_TASK_STATUS_FROM_PB = {
    pb.TASK_STATUS_PENDING: TaskStatus.PENDING,
    pb.TASK_STATUS_CLAIMED: TaskStatus.CLAIMED,
    pb.TASK_STATUS_COMPLETED: TaskStatus.COMPLETED,
    pb.TASK_STATUS_FAILED: TaskStatus.FAILED,
    pb.TASK_STATUS_DEAD: TaskStatus.DEAD,
}
_TASK_STATUS_TO_PB = {v: k for k, v in _TASK_STATUS_FROM_PB.items()}


# ── argument checks (only what protobuf itself cannot carry; the daemon checks the rest) ──


def check_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a str, got {type(value).__name__}")
    return value


def check_uint(name: str, value: object, maximum: int = UINT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidArgument(f"{name} must be an int, got {value!r}")
    if not 0 <= value <= maximum:
        raise InvalidArgument(f"{name} must be 0..={maximum}, got {value}")
    return int(value)


def check_str_list(name: str, values: Optional[Iterable[str]]) -> list[str]:
    if values is None:
        return []
    if isinstance(values, (str, bytes)):
        raise InvalidArgument(f"{name} must be a list of str, not a single {type(values).__name__}")
    out = list(values)
    for v in out:
        check_str(name, v)
    return out


def check_bytes(name: str, value: object) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value)


def check_card_tools(agent_id: str, tools: list[str], info: AgentInfo) -> None:
    """``tools`` must all be on the agent's card (the worker helper's ``tools=`` check)."""
    missing = [t for t in tools if t not in info.card.tools]
    if missing:
        raise InvalidArgument(
            f"agent {agent_id!r} does not list {missing} among its tools {info.card.tools}: tasks are "
            "matched against the tools on the agent's card, so register it with the tools it can use"
        )


def to_effect(effect: object) -> PolicyEffect:
    try:
        return effect if isinstance(effect, PolicyEffect) else PolicyEffect(str(effect).upper())
    except ValueError:
        raise InvalidArgument(f"effect must be ALLOW or DENY, got {effect!r}") from None


def seconds_of(name: str, value: Union[int, float, timedelta]) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{name} must be seconds (int, float) or a timedelta, got {value!r}")
    return float(value)


# ── time ──


def ts(proto: timestamp_pb2.Timestamp) -> datetime:
    return proto.ToDatetime(tzinfo=timezone.utc)


def ts_opt(proto: timestamp_pb2.Timestamp) -> Optional[datetime]:
    if proto.seconds == 0 and proto.nanos == 0:
        return None
    return ts(proto)


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    whole = int(seconds)
    d.seconds = whole
    d.nanos = int(round((seconds - whole) * 1e9))
    return d


# ── requests ──


def card_to_pb(card: AgentCard) -> pb.AgentCard:
    return pb.AgentCard(
        name=card.name,
        description=card.description,
        version=card.version,
        tools=card.tools,
        metadata=card.metadata,
        capabilities=[pb.Capability(name=c.name, description=c.description) for c in card.capabilities],
        a2a_card_json=card.a2a_card,
    )


def make_card(
    name: object,
    description: object,
    version: object,
    tools: Optional[Iterable[str]],
    metadata: Optional[Mapping[str, str]],
    capabilities: Optional[Sequence[Union[Capability, str]]],
) -> AgentCard:
    caps: list[Capability] = []
    for c in capabilities or []:
        caps.append(Capability(name=c) if isinstance(c, str) else c)
    meta = dict(metadata or {})
    for k, v in meta.items():
        check_str("metadata key", k)
        check_str(f"metadata[{k!r}]", v)
    return AgentCard(
        name=check_str("name", name),
        description=check_str("description", description),
        version=check_str("version", version),
        tools=check_str_list("tools", tools),
        metadata=meta,
        capabilities=caps,
    )


def a2a_card_json(card: object) -> str:
    """An A2A agent card as the JSON text to register: a JSON string as it is, a mapping encoded
    (the daemon checks its fields and keeps the text verbatim)."""
    if isinstance(card, str):
        return card
    if isinstance(card, Mapping):
        return json.dumps(card, ensure_ascii=False)
    raise InvalidArgument(f"an A2A card is a dict or a JSON string, got {type(card).__name__}")


def policy_to_pb(policy: Policy) -> pb.Policy:
    return pb.Policy(
        id=policy.id,
        subject=policy.subject,
        action=policy.action,
        resource=policy.resource,
        effect=_EFFECT_TO_PB[policy.effect],
    )


def task_status_to_pb(status: Optional[Union[TaskStatus, str]]) -> pb.TaskStatus:
    if status is None:
        return pb.TASK_STATUS_UNSPECIFIED
    try:
        return _TASK_STATUS_TO_PB[TaskStatus(status)]
    except (ValueError, KeyError):
        raise InvalidArgument(f"status must be a TaskStatus, got {status!r}") from None


# ── responses ──


def agent_info_from_pb(proto: pb.AgentInfo) -> AgentInfo:
    c = proto.card
    return AgentInfo(
        agent_id=proto.agent_id,
        card=AgentCard(
            name=c.name,
            description=c.description,
            version=c.version,
            tools=list(c.tools),
            metadata=dict(c.metadata),
            capabilities=[Capability(name=x.name, description=x.description) for x in c.capabilities],
            a2a_card=c.a2a_card_json,
        ),
        status=_STATUS_FROM_PB.get(proto.status, AgentStatus.DEAD),
        registered_at=ts(proto.registered_at),
        last_heartbeat_at=ts(proto.last_heartbeat_at),
    )


def lease_from_pb(proto: pb.Lease) -> Lease:
    return Lease(
        task_id=proto.task_id,
        holder_agent_id=proto.holder_agent_id,
        token=int(proto.token.value),
        acquired_at=ts(proto.acquired_at),
        expires_at=ts(proto.expires_at),
    )


def election_state_from_pb(proto: pb.ElectionState) -> ElectionState:
    return ElectionState(
        group=proto.group,
        leader_agent_id=proto.leader_agent_id,
        term=int(proto.term),
        elected_at=ts_opt(proto.elected_at),
    )


def election_group_from_pb(proto: pb.ElectionGroup) -> ElectionGroup:
    return ElectionGroup(
        state=election_state_from_pb(proto.state),
        candidate_agent_ids=list(proto.candidate_agent_ids),
        # A daemon from before the field counts nothing: then the list is the whole line.
        candidates_total=proto.candidates_total or len(proto.candidate_agent_ids),
    )


def policy_from_pb(proto: pb.Policy) -> Policy:
    return Policy(
        id=proto.id,
        subject=proto.subject,
        action=proto.action,
        resource=proto.resource,
        effect=_EFFECT_FROM_PB.get(proto.effect, PolicyEffect.DENY),
    )


def cluster_status_from_pb(proto: cluster_pb2.ClusterStatusResponse) -> ClusterStatus:
    members = [
        ClusterMember(
            id=int(m.id),
            peer_addr=m.peer_addr,
            role=m.role,
            voter=m.voter,
            applied_index=int(m.applied_index),
            last_heard_ms=int(m.last_heard_ms) if m.HasField("last_heard_ms") else None,
        )
        for m in proto.members
    ]
    return ClusterStatus(
        node_id=int(proto.node_id),
        leader=int(proto.leader),
        term=int(proto.term),
        commit_index=int(proto.commit_index),
        applied_index=int(proto.applied_index),
        members=members,
    )


def check_result_from_pb(proto: pb.CheckPolicyResponse) -> CheckResult:
    return CheckResult(allowed=proto.allowed, reason=proto.reason)


def task_from_pb(proto: pb.Task) -> Task:
    return Task(
        id=proto.id,
        type=proto.type,
        status=_TASK_STATUS_FROM_PB.get(proto.status, TaskStatus.PENDING),
        input=bytes(proto.input),
        output=bytes(proto.output),
        required_tools=list(proto.required_tools),
        max_retries=proto.max_retries,
        retry_count=proto.retry_count,
        claimed_by_agent_id=proto.claimed_by_agent_id,
        failure_reason=proto.failure_reason,
        created_at=ts_opt(proto.created_at),
        claimed_at=ts_opt(proto.claimed_at),
        completed_at=ts_opt(proto.completed_at),
    )


def payload_from_any(any_msg: any_pb2.Any) -> Payload:
    """The event's payload as the SDK's type; ``None`` for a type this SDK does not know."""
    agent = pb.AgentInfo()
    if any_msg.Unpack(agent):  # False, leaving it empty, for another type
        return agent_info_from_pb(agent)
    lease = pb.Lease()
    if any_msg.Unpack(lease):  # False, leaving it empty, for another type
        return lease_from_pb(lease)
    state = pb.ElectionState()
    if any_msg.Unpack(state):  # False, leaving it empty, for another type
        return election_state_from_pb(state)
    task = pb.Task()
    if any_msg.Unpack(task):  # False, leaving it empty, for another type
        return task_from_pb(task)
    return None


def watch_event_from_pb(proto: pb.Event) -> WatchEvent:
    return WatchEvent(
        topic=proto.topic,
        sequence=int(proto.sequence_number),
        timestamp=ts(proto.occurred_at),
        payload=payload_from_any(proto.payload),
    )


def election_event_state(proto: pb.Event) -> Optional[ElectionState]:
    payload = payload_from_any(proto.payload)
    return payload if isinstance(payload, ElectionState) else None
