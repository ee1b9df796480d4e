"""Plain-Python data types returned by the SDK (never protobuf objects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Literal, Optional, Union

__all__ = [
    "AgentStatus",
    "PolicyEffect",
    "TaskStatus",
    "Capability",
    "AgentCard",
    "AgentInfo",
    "Lease",
    "ElectionState",
    "Policy",
    "CheckResult",
    "Task",
    "WatchEvent",
    "ClusterMember",
    "ClusterStatus",
    "Payload",
    "EffectName",
    "TaskStatusName",
    "ClockMode",
    "ConnectionState",
]

EffectName = Literal["ALLOW", "DENY"]
"""A :class:`PolicyEffect` by name."""

TaskStatusName = Literal["PENDING", "CLAIMED", "COMPLETED", "FAILED", "DEAD"]
"""A :class:`TaskStatus` by name."""

ClockMode = Literal["real", "manual"]
"""An embedded daemon's clock: the real one, or one that moves only with ``advance()``."""

ConnectionState = Literal["connected", "reconnecting", "lost"]
"""What a connection-state listener is told (see ``AgentKeeperClient.add_listener``)."""


class AgentStatus(str, Enum):
    """Liveness of an agent: ``ALIVE -> UNREACHABLE -> DEAD``."""

    ALIVE = "ALIVE"
    UNREACHABLE = "UNREACHABLE"
    DEAD = "DEAD"


class PolicyEffect(str, Enum):
    """What a matching policy does. DENY always wins over ALLOW."""

    ALLOW = "ALLOW"
    DENY = "DENY"


class TaskStatus(str, Enum):
    """Lifecycle of a task: ``PENDING -> CLAIMED -> COMPLETED``, or on a failure back to PENDING
    (while retries remain) or DEAD. FAILED is a wire value only: a failed task never rests in it."""

    PENDING = "PENDING"
    CLAIMED = "CLAIMED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    DEAD = "DEAD"


@dataclass
class Capability:
    """A named capability an agent advertises (free text, used by ``find`` ranking)."""

    name: str
    description: str = ""


@dataclass
class AgentCard:
    """What an agent says about itself when it registers."""

    name: str
    description: str = ""
    version: str = ""
    tools: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    capabilities: list[Capability] = field(default_factory=list)
    #: The A2A agent card (JSON text) the agent registered with ``register_a2a``, as registered;
    #: ``""`` for a plain card.
    a2a_card: str = ""


@dataclass
class AgentInfo:
    """An agent as the daemon sees it. Timestamps are timezone-aware UTC datetimes."""

    agent_id: str
    card: AgentCard
    status: AgentStatus
    registered_at: datetime
    last_heartbeat_at: datetime


@dataclass
class Lease:
    """An exclusive, expiring claim on ``task_id`` with a fencing ``token``."""

    task_id: str
    holder_agent_id: str
    token: int
    acquired_at: datetime
    expires_at: datetime


@dataclass
class ElectionState:
    """A group's leader (``""`` when nobody leads), its ``term`` and when it was elected."""

    group: str
    leader_agent_id: str
    term: int
    elected_at: Optional[datetime]


@dataclass
class ElectionGroup:
    """An election group as ``list_elections`` shows it: its state and the head of its line of
    candidates (the leader first when there is one; the daemon lists the first 100), and how
    many stand in line in all."""

    state: ElectionState
    candidate_agent_ids: list[str]
    candidates_total: int = 0


@dataclass
class Policy:
    """An entitlement rule; ``subject``, ``action`` and ``resource`` may contain ``*``."""

    id: str
    subject: str
    action: str
    resource: str
    effect: PolicyEffect


@dataclass
class CheckResult:
    """The answer of ``check_policy``: whether it is allowed and which policy decided."""

    allowed: bool
    reason: str


@dataclass
class Task:
    """A unit of work in the task queue.

    ``retry_count`` counts failures (FailTask, an expired or released claim lease, the claimer's
    death); ``failure_reason`` is the last one's. ``claimed_by_agent_id`` is set while CLAIMED.
    Tasks in events (``task.*``) come without ``input`` and ``output``.
    """

    id: str
    type: str
    status: TaskStatus
    input: bytes = b""
    output: bytes = b""
    required_tools: list[str] = field(default_factory=list)
    max_retries: int = 0
    retry_count: int = 0
    claimed_by_agent_id: str = ""
    failure_reason: str = ""
    created_at: Optional[datetime] = None
    claimed_at: Optional[datetime] = None
    completed_at: Optional[datetime] = None


Payload = Union[AgentInfo, Lease, ElectionState, Task, None]


@dataclass
class WatchEvent:
    """One event from the bus.

    ``sequence`` is global and strictly increasing; ``timestamp`` is a UTC datetime;
    ``payload`` is decoded: ``AgentInfo`` for ``agent.*``, ``Lease`` for ``lease.*``,
    ``ElectionState`` for ``leader.changed``, ``Task`` for ``task.*``.
    """

    topic: str
    sequence: int
    timestamp: datetime
    payload: Payload


@dataclass
class ClusterMember:
    """One member of a cluster as the node asked sees it (``cluster_status``).

    ``role`` is ``"leader"``, ``"follower"``, ``"candidate"`` or ``"learner"``;
    ``last_heard_ms`` is how long ago the node asked last heard from it (``None``: never).
    """

    id: int
    peer_addr: str
    role: str
    voter: bool
    applied_index: int
    last_heard_ms: Optional[int]


@dataclass
class ClusterStatus:
    """A cluster as the node that answered sees it: its own id, the leader it knows (0: none,
    an election is under way), the term, its commit and applied log indexes, every member."""

    node_id: int
    leader: int
    term: int
    commit_index: int
    applied_index: int
    members: list[ClusterMember]
