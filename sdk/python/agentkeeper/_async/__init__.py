"""The one source of both clients, as the asyncio client; ``agentkeeper/_sync`` is made from it
by ``scripts/unasync.py`` (see ``agentkeeper.aio`` and ``agentkeeper`` for the public names)."""
