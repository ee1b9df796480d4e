"""The task queue against a real daemon: create/get/list with paging, long-poll claims, complete,
fail/retry/DEAD, the claim lease, typed errors, the worker helper (blocking and asyncio), and the
manual clock expiring a claim."""

import asyncio
import queue
import threading
import time
from datetime import timedelta

import grpc
import pytest

import agentkeeper._async.client
import agentkeeper._sync.client

from agentkeeper import (
    AgentKeeperClient,
    ClaimedTask,
    FailedPrecondition,
    InvalidArgument,
    Lease,
    LeaseHandle,
    NotFound,
    PermissionDenied,
    Task,
    TaskStatus,
    TaskWorker,
)
from agentkeeper import aio

from conftest import HANG_GUARD, finishes, metric, wait_for, wait_for_async, wait_for_metric


def test_create_get_and_list_across_pages(client):
    created = client.create_task("scrape", input=b'{"url": 1}', required_tools=["browser"], max_retries=2, ttl=30)
    assert isinstance(created, Task) and created.status == TaskStatus.PENDING
    assert len(created.id) == 32 and created.type == "scrape" and created.input == b'{"url": 1}'
    assert created.required_tools == ["browser"] and created.max_retries == 2 and created.retry_count == 0
    assert created.created_at is not None and created.claimed_at is None
    assert client.get_task(created.id) == created

    ids = [created.id] + [client.create_task("bulk", input=bytes([i])).id for i in range(6)]
    tasks, token = client.list_tasks_page(page_size=3)
    assert [t.id for t in tasks] == ids[:3] and token, "a first page of 3 and a token for the next"
    assert [t.id for t in client.list_tasks(page_size=3)] == ids, "every page, in creation order"
    assert [t.id for t in client.iter_tasks(page_size=2)] == ids
    assert [t.id for t in client.list_tasks()] == ids
    assert [t.id for t in client.list_tasks(status=TaskStatus.PENDING, page_size=4)] == ids
    assert client.list_tasks(status="COMPLETED") == []
    with pytest.raises(InvalidArgument):
        client.list_tasks(status="nope")
    with pytest.raises(InvalidArgument):
        client.create_task("")  # type is 1..=256 bytes
    with pytest.raises(NotFound):
        client.get_task("0" * 32)


def test_a_4_mib_input_round_trips(client):
    big = bytes(range(256)) * (4 * 1024 * 1024 // 256)  # the daemon's limit, past grpc's default 4 MiB receive
    task = client.create_task("big", input=big)
    assert client.get_task(task.id).input == big
    with client.register("w") as worker:
        claimed = client.claim_task(worker.agent_id, timeout=0)
        assert claimed.input == big
        claimed.complete(big)
    assert client.get_task(task.id).output == big


def test_claim_complete_with_output_and_events(client):
    events = queue.Queue()
    with client.watch(["task."], events.put), client.register("scraper", tools=["browser", "http"]) as worker:
        created = client.create_task("scrape", input=b"in", required_tools=["browser"], ttl=45)
        claimed = client.claim_task(worker.agent_id, timeout=5)
        assert isinstance(claimed, ClaimedTask) and isinstance(claimed, Task)
        assert claimed.id == created.id and claimed.input == b"in" and claimed.status == TaskStatus.CLAIMED
        assert claimed.claimed_by_agent_id == worker.agent_id == claimed.agent_id
        assert isinstance(claimed.lease, Lease) and claimed.lease.task_id == created.id
        assert claimed.lease.holder_agent_id == worker.agent_id and claimed.token == claimed.lease.token > 0
        assert claimed.ttl == 45
        assert client.get_task(created.id).status == TaskStatus.CLAIMED

        claimed.complete(b"out")
        assert claimed.finished
        done = client.get_task(created.id)
        assert done.status == TaskStatus.COMPLETED and done.output == b"out" and done.completed_at is not None
        with pytest.raises(FailedPrecondition):
            claimed.complete(b"again")  # no longer claimed

        topics = [events.get(timeout=HANG_GUARD) for _ in range(3)]
    assert [e.topic for e in topics] == ["task.created", "task.claimed", "task.completed"]
    first = topics[0].payload
    assert isinstance(first, Task) and first.id == created.id and first.status == TaskStatus.PENDING
    assert first.type == "scrape" and first.required_tools == ["browser"]
    assert first.input == b"", "events carry tasks without their bytes"
    assert topics[2].payload.status == TaskStatus.COMPLETED


def test_fail_retries_then_dead(client):
    events = queue.Queue()
    with client.watch(["task.failed", "task.dead"], events.put), client.register("w") as worker:
        task = client.create_task("flaky", max_retries=1)
        first = client.claim_task(worker.agent_id, timeout=0)
        first.fail("boom 1")
        again = client.get_task(task.id)
        assert again.status == TaskStatus.PENDING and again.retry_count == 1 and again.failure_reason == "boom 1"
        second = client.claim_task(worker.agent_id, timeout=0)
        assert second.id == task.id and second.token > first.token
        client.fail_task(task.id, worker.agent_id, reason="boom 2")
        dead = client.get_task(task.id)
        assert dead.status == TaskStatus.DEAD and dead.retry_count == 2 and dead.failure_reason == "boom 2"
        assert client.claim_task(worker.agent_id, timeout=0) is None, "a DEAD task is not handed out"
        assert [t.id for t in client.list_tasks(status=TaskStatus.DEAD)] == [task.id]
        assert [events.get(timeout=HANG_GUARD).topic for _ in range(2)] == ["task.failed", "task.dead"]


def test_claim_returns_none_after_its_timeout(client):
    with client.register("idle", tools=["gpu"]) as worker:
        client.create_task("needs-other-tools", required_tools=["browser"])  # not for this agent
        start = time.monotonic()
        assert finishes(lambda: client.claim_task(worker.agent_id, timeout=0.6), "claim_task(timeout=0.6)") is None
        elapsed = time.monotonic() - start
        # A lower bound only: a slow machine makes the wait longer, never shorter.
        assert elapsed >= 0.45, f"waited {elapsed:.2f}s for a 0.6s timeout"
        # timeout=0 answers at once. Sent by a client without a default deadline: a claim that
        # waited at all would wait for the daemon's --claim-wait-max (24 h), far past the guard.
        with AgentKeeperClient(client.daemon.host, client.port, timeout=None) as unhurried:
            assert finishes(lambda: unhurried.claim_task(worker.agent_id, timeout=0), "claim_task(timeout=0)") is None
        with pytest.raises(InvalidArgument):
            client.claim_task(worker.agent_id, timeout=-1)


def test_a_waiting_claim_gets_a_task_created_later(client):
    with client.register("waiter", tools=["browser"]) as worker:
        got = []
        claimer = threading.Thread(target=lambda: got.append(client.claim_task(worker.agent_id, timeout=HANG_GUARD)))
        claimer.start()
        wait_for_metric(client, "agentkeeper_claims_waiting", 1)  # the claim is waiting in the daemon
        task = client.create_task("late", input=b"x", required_tools=["browser"])
        claimer.join(HANG_GUARD)
        # Answered when the task came: else it would have waited out its whole timeout, empty.
        assert got and got[0] is not None and got[0].id == task.id
        got[0].complete()

        # No timeout (v1's claim_task(agent_id)) waits as long as it takes, too.
        def create_once_waiting():
            wait_for_metric(client, "agentkeeper_claims_waiting", 1)
            client.create_task("later", required_tools=["browser"])

        creator = threading.Thread(target=create_once_waiting)
        creator.start()
        assert finishes(lambda: client.claim_task(worker.agent_id), "claim_task() with no timeout").type == "later"
        creator.join(HANG_GUARD)


def test_strangers_get_typed_errors(manual):
    with manual.register("owner") as owner, manual.register("stranger") as stranger:
        task = manual.create_task("t")
        claimed = manual.claim_task(owner.agent_id, timeout=0)
        with pytest.raises(FailedPrecondition) as e:
            manual.complete_task(task.id, stranger.agent_id, b"mine now")
        assert isinstance(e.value, grpc.RpcError) and e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(FailedPrecondition):
            manual.fail_task(task.id, stranger.agent_id, "not yours")
        with pytest.raises(NotFound):
            manual.complete_task("0" * 32, owner.agent_id)
        with pytest.raises(NotFound):
            manual.claim_task("0" * 32, timeout=0)  # unknown agent
        claimed.complete(b"ok")

        silent = manual.register("silent", ttl=10, heartbeat=False)
        manual.create_task("t2")
        manual.advance(11)  # silent for one ttl: UNREACHABLE
        with pytest.raises(FailedPrecondition):
            manual.claim_task(silent.agent_id, timeout=0)
        # The claim lease is the task's: a stranger can neither take nor renew it.
        mine = manual.claim_task(owner.agent_id, timeout=0)
        assert manual.acquire_lease(mine.id, stranger.agent_id) is None
        forged = Lease(**{**vars(mine.lease), "holder_agent_id": stranger.agent_id})
        with pytest.raises(PermissionDenied):
            LeaseHandle(manual, forged, 10).renew()
        mine.complete()


def test_manual_clock_claim_lease_expiry_and_renewal(manual):
    with manual.register("slow", ttl=3600) as worker:
        task = manual.create_task("slow", ttl=10, max_retries=1)
        claimed = manual.claim_task(worker.agent_id, timeout=0)
        manual.advance(6)
        renewed = claimed.renew()  # expiry = now + 10
        assert renewed == claimed.lease and renewed.token == claimed.token and claimed.ttl == 10
        manual.advance(6)  # 12 s after the claim, 6 after the renewal
        assert manual.get_task(task.id).status == TaskStatus.CLAIMED, "renewed: still claimed"
        manual.advance(5)
        back = manual.get_task(task.id)
        assert back.status == TaskStatus.PENDING and back.failure_reason == "lease expired"
        assert back.retry_count == 1 and back.claimed_by_agent_id == ""
        with pytest.raises(FailedPrecondition):
            claimed.complete(b"too late")
        with pytest.raises(NotFound):
            claimed.renew()

        # On a manual clock a waiting claim never times out by itself; a short one still
        # comes back empty instead of raising.
        again = manual.claim_task(worker.agent_id, timeout=0)
        assert again.id == task.id
        assert manual.claim_task(worker.agent_id, timeout=0.3) is None
        again.fail("agent gave up")
        assert manual.get_task(task.id).status == TaskStatus.DEAD

    # The claimer dying fails its task too.
    doomed = manual.register("doomed")
    orphan = manual.create_task("orphan", max_retries=1)
    assert manual.claim_task(doomed.agent_id, timeout=0).id == orphan.id
    doomed.deregister()
    back = manual.get_task(orphan.id)
    assert back.status == TaskStatus.PENDING and back.failure_reason == "agent died"


def test_keep_alive_renews_a_claim_in_the_background(manual):
    with manual.register("long-worker", ttl=3600) as worker:
        task = manual.create_task("long", ttl=1)
        claimed = manual.claim_task(worker.agent_id, timeout=0).keep_alive()
        # Time moves only when the test moves it, each step shorter than the claim's 1 s ttl, and
        # each next step waits for a background renewal at the new time. Three steps take the
        # claim well past its ttl; without the renewals it would have expired in the second.
        for _ in range(3):
            now = manual.advance(0.6)
            renewed_to = now + timedelta(seconds=1)
            wait_for(lambda: claimed.lease.expires_at == renewed_to, what="a renewal at the new time")
        assert manual.get_task(task.id).status == TaskStatus.CLAIMED
        claimed.complete(b"done")
        assert manual.get_task(task.id).status == TaskStatus.COMPLETED


def test_worker_helper_processes_tasks_and_fails_the_one_that_raises(client):
    with client.register("worker", tools=["browser"]) as agent:
        ids = [client.create_task("job", input=str(i).encode(), required_tools=["browser"]).id for i in range(4)]
        bad = client.create_task("job", input=b"bad", required_tools=["browser"]).id
        plain = client.create_task("job", input=b"plain").id
        seen = []
        worker = client.tasks(agent, tools=["browser"], idle_timeout=0.5)
        assert isinstance(worker, TaskWorker)
        for task in worker:
            assert isinstance(task, ClaimedTask) and task.agent_id == agent.agent_id
            seen.append(task.id)
            if task.input == b"plain":
                continue  # left unfinished: completed with empty output
            with task:
                if task.input == b"bad":
                    raise ValueError("bad input")
                task.complete(task.input * 2)
        assert seen == ids + [bad, plain] and worker.claimed == 6
        for i, task_id in enumerate(ids):
            done = client.get_task(task_id)
            assert done.status == TaskStatus.COMPLETED and done.output == str(i).encode() * 2
        failed = client.get_task(bad)
        assert failed.status == TaskStatus.DEAD and failed.failure_reason == "ValueError: bad input"
        assert client.get_task(plain).status == TaskStatus.COMPLETED

        # raise_errors=True: the task is failed, then the error ends the loop.
        boom = client.create_task("job", input=b"boom", max_retries=3).id
        with pytest.raises(RuntimeError, match="stop here"):
            for task in client.tasks(agent.agent_id, raise_errors=True):
                with task:
                    raise RuntimeError("stop here")
        after = client.get_task(boom)
        assert after.status == TaskStatus.PENDING and after.failure_reason == "RuntimeError: stop here"

        # Leaving the loop with a task unfinished fails it at once (no wait for the lease).
        for task in client.tasks(agent.agent_id, max_tasks=5):
            break
        after = client.get_task(boom)
        assert after.retry_count == 2 and after.failure_reason == "the worker loop ended before the task was finished"

        # ... and with the worker as a context manager, with the exception's text.
        with pytest.raises(KeyError):
            with client.tasks(agent.agent_id) as worker:
                for task in worker:
                    raise KeyError("lost")
        assert client.get_task(boom).failure_reason == "KeyError: 'lost'"

        with pytest.raises(InvalidArgument, match="gpu"):
            client.tasks(agent, tools=["browser", "gpu"])  # not on the agent's card


def test_worker_stop_from_another_thread_ends_a_waiting_loop(client, monkeypatch):
    # Polls longer than the guard: a stop() that did not cancel the waiting claim would leave
    # the loop waiting the poll out, and the guard would fail the test.
    monkeypatch.setattr(agentkeeper._sync.client, "CLAIM_POLL_SECONDS", 3 * HANG_GUARD)
    with client.register("worker") as agent:
        worker = client.tasks(agent)

        def stop_once_waiting():
            wait_for_metric(client, "agentkeeper_claims_waiting", 1)
            worker.stop()

        stopper = threading.Thread(target=stop_once_waiting)
        stopper.start()
        assert finishes(lambda: list(worker), "the worker loop after stop()") == []
        stopper.join(HANG_GUARD)
        task = client.create_task("after-stop")
        claimed = client.claim_task(agent.agent_id, timeout=0)
        assert claimed is not None and claimed.id == task.id, "the cancelled claim took nothing"


async def test_aio_claim_complete_and_worker(binary, monkeypatch):
    # As in the blocking test: a stop() that did not cancel the claim would outlast the guard.
    monkeypatch.setattr(agentkeeper._async.client, "CLAIM_POLL_SECONDS", 3 * HANG_GUARD)
    async with aio.AgentKeeperClient.embedded(binary=binary, timeout=10) as ak:
        async with ak.register("async-worker", tools=["browser"]) as agent:
            assert await ak.claim_task(agent.agent_id, timeout=0.3) is None
            task = await ak.create_task("scrape", input=b"a", required_tools=["browser"], max_retries=0)
            claimed = await ak.claim_task(agent.agent_id, timeout=5)
            assert isinstance(claimed, aio.ClaimedTask) and claimed.id == task.id and claimed.token > 0
            await claimed.renew()
            await claimed.complete(b"A")
            done = await ak.get_task(task.id)
            assert done.status == TaskStatus.COMPLETED and done.output == b"A"
            with pytest.raises(FailedPrecondition):
                await ak.fail_task(task.id, agent.agent_id, "too late")

            ids = [(await ak.create_task("job", input=bytes([65 + i]))).id for i in range(3)]
            bad = (await ak.create_task("job", input=b"bad")).id
            async for job in ak.tasks(agent, tools=["browser"], max_tasks=4):
                async with job:
                    if job.input == b"bad":
                        raise ValueError("bad input")
                    await job.complete(job.input.lower())
            outputs = [(await ak.get_task(i)).output for i in ids]
            assert outputs == [b"a", b"b", b"c"]
            failed = await ak.get_task(bad)
            assert failed.status == TaskStatus.DEAD and failed.failure_reason == "ValueError: bad input"
            assert [t.id async for t in ak.iter_tasks(page_size=2)] == [task.id] + ids + [bad]
            assert len(await ak.list_tasks(status=TaskStatus.COMPLETED, page_size=1)) == 4

            # A waiting claim gets a task created afterwards; stop() ends a waiting loop.
            waiting = asyncio.ensure_future(ak.claim_task(agent.agent_id, timeout=HANG_GUARD))
            await wait_for_async(lambda: metric(ak, "agentkeeper_claims_waiting") == 1, "a waiting claim")
            late = await ak.create_task("late")
            assert (await waiting).id == late.id
            worker = ak.tasks(agent)

            async def stop_once_waiting():
                await wait_for_async(lambda: metric(ak, "agentkeeper_claims_waiting") == 1, "the worker's claim")
                worker.stop()

            stopper = asyncio.ensure_future(stop_once_waiting())
            assert await asyncio.wait_for(_collect(worker), HANG_GUARD) == []
            await stopper


async def _collect(worker):
    return [t async for t in worker]
