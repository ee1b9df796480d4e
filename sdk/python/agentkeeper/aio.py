"""The asyncio client: the same calls as :class:`agentkeeper.AgentKeeperClient`, awaitable.

::

    from agentkeeper import aio

    async with aio.AgentKeeperClient.embedded() as client:
        async with client.register("worker", tools=["browser"]) as agent:
            async with client.watch(["agent."]) as events:
                ...
                async for event in events:
                    print(event.topic)
            async for task in client.tasks(agent):   # the task queue's worker loop
                async with task:
                    await task.complete(b"done")

``register``, ``acquire_lease`` and ``embedded`` return objects that can be awaited *or* used
directly with ``async with``; ``watch`` and ``watch_election`` return streams that are awaited,
entered or iterated. This module only names them: the code is ``agentkeeper/_async/``, which is
also the source of the blocking client.
"""

from agentkeeper._async.client import AgentKeeperClient
from agentkeeper._async.handles import AgentHandle, LeaseHandle
from agentkeeper._async.streams import ElectionWatch, Subscription, WatchStream
from agentkeeper._async.tasks import ClaimedTask, TaskWorker

__all__ = [
    "AgentKeeperClient",
    "AgentHandle",
    "LeaseHandle",
    "Subscription",
    "WatchStream",
    "ElectionWatch",
    "ClaimedTask",
    "TaskWorker",
]
