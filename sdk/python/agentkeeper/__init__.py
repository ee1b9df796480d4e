"""AgentKeeper: coordination for AI agents (registry, leases, elections, entitlements, events,
a task queue).

Blocking client: :class:`AgentKeeperClient`; asyncio client: ``agentkeeper.aio.AgentKeeperClient``.
"""

from agentkeeper._client import (
    AgentHandle,
    AgentKeeperClient,
    ClaimedTask,
    ElectionSubscription,
    EventSubscription,
    LeaseHandle,
    Subscription,
    TaskWorker,
)
from agentkeeper._common import RetryPolicy
from agentkeeper._embedded import EmbeddedDaemon, find_binary
from agentkeeper._errors import (
    AgentKeeperError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
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
    ElectionGroup,
    ElectionState,
    Lease,
    Policy,
    PolicyEffect,
    Task,
    TaskStatus,
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
    "AgentKeeperError",
    "NotFound",
    "PermissionDenied",
    "InvalidArgument",
    "FailedPrecondition",
    "ResourceExhausted",
    "OutOfRange",
    "Unavailable",
    "Unimplemented",
    "DeadlineExceeded",
    "Cancelled",
]
