"""One source for both clients: the checked-in blocking client (agentkeeper/_sync) is exactly what
scripts/unasync.py makes of the asyncio client (agentkeeper/_async), and the two offer the same
calls with the same parameters."""

import importlib.util
import inspect
import sys
from pathlib import Path

import agentkeeper
from agentkeeper import aio

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "unasync.py"
SYNC_DIR = Path(agentkeeper.__file__).resolve().parent / "_sync"


def _unasync():
    spec = importlib.util.spec_from_file_location("unasync_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["unasync_script"] = module
    spec.loader.exec_module(module)
    return module


def test_the_blocking_client_is_generated_from_the_asyncio_source_and_not_stale():
    stale = _unasync().stale()
    assert not stale, "agentkeeper/_sync is stale; run python sdk/python/scripts/unasync.py\n" + "\n".join(stale)


def test_the_generated_blocking_client_has_no_async_left():
    for path in SYNC_DIR.glob("*.py"):
        text = path.read_text()
        for word in ("async def", "await ", "async with", "async for", "__aenter__", "import asyncio", "asyncio."):
            assert word not in text, f"{path.name} still says {word!r}"


def test_the_generated_docstrings_still_read_as_sentences():
    # A docstring saying "await it or use it with ``async with``" would come out as "it or use
    # it with ``with``": the source words the asyncio forms so that stripping leaves sense.
    for path in SYNC_DIR.glob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert "``with``" not in line and "``for``" not in line, f"{path.name}:{number}: {line.strip()}"
            assert not line.strip().startswith("it "), f"{path.name}:{number}: {line.strip()}"


def test_the_substitutions_turn_async_idioms_into_blocking_ones():
    unasync = _unasync()
    assert unasync.unasync_line("    async def f(self) -> AsyncIterator[Task]:\n") == "    def f(self) -> Iterator[Task]:\n"
    assert unasync.unasync_line("        ) -> AsyncPending[Optional[LeaseHandle]]:\n") == "        ) -> Optional[LeaseHandle]:\n"
    assert unasync.unasync_line("        return async_pending(run, not_acquired)\n") == "        return pending(run, not_acquired)\n"
    assert unasync.unasync_line("        async with self._lock:\n") == "        with self._lock:\n"
    assert unasync.unasync_line("x = [t async for t in self.iter_tasks()]\n") == "x = [t for t in self.iter_tasks()]\n"
    assert unasync.unasync_line("from agentkeeper._async.streams import WatchStream\n") == (
        "from agentkeeper._sync.streams import EventSubscription\n"
    )
    assert unasync.unasync_line("    AsyncPending,\n") == ""


def _public_signatures(cls):
    out = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name not in ("__enter__", "__aenter__"):
            continue
        if callable(member):
            out[name] = [p for p in inspect.signature(member).parameters]
    return out


def test_both_clients_offer_the_same_calls_with_the_same_parameters():
    blocking = _public_signatures(agentkeeper.AgentKeeperClient)
    asyncio_ = _public_signatures(aio.AgentKeeperClient)
    blocking.pop("__enter__")
    asyncio_.pop("__aenter__")
    assert blocking == asyncio_
    for sync_cls, async_cls in [
        (agentkeeper.AgentHandle, aio.AgentHandle),
        (agentkeeper.LeaseHandle, aio.LeaseHandle),
        (agentkeeper.EventSubscription, aio.WatchStream),
        (agentkeeper.ElectionSubscription, aio.ElectionWatch),
        (agentkeeper.ClaimedTask, aio.ClaimedTask),
        (agentkeeper.TaskWorker, aio.TaskWorker),
    ]:
        s, a = _public_signatures(sync_cls), _public_signatures(async_cls)
        s.pop("__enter__", None)
        a.pop("__aenter__", None)
        if "aclose" in a:  # an async generator's close() is aclose(): unasync renames it
            a["close"] = a.pop("aclose")
        assert s == a, sync_cls.__name__
