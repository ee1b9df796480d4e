"""AgentKeeper: coordination for AI agents (registry, leases, elections, entitlements, events,
a task queue).

Blocking client: :class:`AgentKeeperClient`; asyncio client: ``agentkeeper.aio.AgentKeeperClient``.
Both are one source: ``agentkeeper/_async/`` is the asyncio client, and ``agentkeeper/_sync/`` is
generated from it by ``scripts/unasync.py``.
"""

from agentkeeper._common import RetryPolicy
from agentkeeper._embedded import EmbeddedDaemon, find_binary
from agentkeeper._sync.client import AgentKeeperClient
from agentkeeper._sync.handles import AgentHandle, LeaseHandle
from agentkeeper._sync.streams import ElectionSubscription, EventSubscription, Subscription
from agentkeeper._sync.tasks import ClaimedTask, TaskWorker
from agentkeeper._errors import (
    AgentKeeperError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    OutcomeUnknownDeadlineError,
    OutcomeUnknownError,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from agentkeeper._types import (
    AgentCard,
    AgentInfo,
    AgentStatus,
    Capability,
    CheckResult,
    ClockMode,
    ClusterMember,
    ClusterStatus,
    ConnectionState,
    EffectName,
    ElectionGroup,
    ElectionState,
    Lease,
    Policy,
    PolicyEffect,
    Task,
    TaskStatus,
    TaskStatusName,
    WatchEvent,
)

__version__ = "0.2.0"

__all__ = [
    "AgentKeeperClient",
    "AgentHandle",
    "LeaseHandle",
    "Subscription",
    "EventSubscription",
    "ElectionSubscription",
    "ClaimedTask",
    "TaskWorker",
    "RetryPolicy",
    "EmbeddedDaemon",
    "find_binary",
    "AgentCard",
    "Capability",
    "AgentInfo",
    "AgentStatus",
    "Lease",
    "ElectionGroup",
    "ElectionState",
    "Policy",
    "PolicyEffect",
    "CheckResult",
    "Task",
    "TaskStatus",
    "WatchEvent",
    "ClusterStatus",
    "ClusterMember",
    "ConnectionState",
    "ClockMode",
    "EffectName",
    "TaskStatusName",
    "AgentKeeperError",
    "NotFound",
    "PermissionDenied",
    "InvalidArgument",
    "FailedPrecondition",
    "ResourceExhausted",
    "OutOfRange",
    "Unavailable",
    "OutcomeUnknownError",
    "OutcomeUnknownDeadlineError",
    "Unimplemented",
    "DeadlineExceeded",
    "Cancelled",
]
