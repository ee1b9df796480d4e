// The task queue: create, claim (now, waiting, or none in time), complete, fail with retries
// then DEAD, the worker loop as an iterator and with a handler, and the manual clock's claim
// lease expiry putting a task back.
import assert from "node:assert/strict";
import { test } from "node:test";
import { FailedPrecondition } from "../dist/index.js";
import { embedded, metric, waitFor } from "./helpers.mjs";

const text = (bytes) => new TextDecoder().decode(bytes);

test("create, claim and complete a task: its output and status round-trip", async (t) => {
  const client = await embedded(t);
  const worker = await client.register({ name: "summarizer", tools: ["browser"] });
  const created = await client.createTask({ type: "summarize", input: "https://example.com/report", requiredTools: ["browser"], maxRetries: 2 });
  assert.equal(created.status, "PENDING");
  const task = await client.claimTask(worker.agentId, { waitMs: 0 });
  assert.equal(task.id, created.id);
  assert.equal(text(task.input), "https://example.com/report");
  assert.equal(typeof task.lease.token, "bigint");
  await task.complete("a short summary");
  const done = await client.getTask(created.id);
  assert.equal(done.status, "COMPLETED");
  assert.equal(text(done.output), "a short summary");
  assert.deepEqual((await client.listTasks({ status: "COMPLETED" })).map((t) => t.id), [created.id]);
  assert.equal(await client.claimTask(worker.agentId, { waitMs: 0 }), null);
});

test("a waiting claim gets a task created later; a bounded one gives null when none comes", async (t) => {
  const client = await embedded(t);
  const worker = await client.register({ name: "w" });
  assert.equal(await client.claimTask(worker.agentId, { waitMs: 100 }), null);
  const waiting = client.claimTask(worker.agentId); // no waitMs: until a task comes
  await waitFor(async () => (await metric(client.daemon, "agentkeeper_claims_waiting")) === 1, "the claim to be waiting");
  const created = await client.createTask({ type: "later" });
  const task = await waiting;
  assert.equal(task.id, created.id);
  await task.fail("not today");
});

test("fail puts a task back while retries remain, then it is DEAD with the reason", async (t) => {
  const client = await embedded(t);
  const worker = await client.register({ name: "w" });
  const created = await client.createTask({ type: "flaky", maxRetries: 1 });
  await (await client.claimTask(worker.agentId, { waitMs: 0 })).fail("first");
  assert.equal((await client.getTask(created.id)).status, "PENDING");
  await (await client.claimTask(worker.agentId, { waitMs: 0 })).fail("second");
  const dead = await client.getTask(created.id);
  assert.equal(dead.status, "DEAD");
  assert.equal(dead.retryCount, 2);
  assert.equal(dead.failureReason, "second");
});

test("a claim lease that runs out on the manual clock puts the task back; completing it then is FailedPrecondition", async (t) => {
  const client = await embedded(t, { clock: "manual" });
  const worker = await client.register({ name: "w", ttlSeconds: 3600 });
  const created = await client.createTask({ type: "slow", ttlSeconds: 10, maxRetries: 3 });
  const task = await client.claimTask(worker.agentId, { waitMs: 0 });
  await client.advance(11_000);
  const back = await client.getTask(created.id);
  assert.equal(back.status, "PENDING");
  assert.equal(back.retryCount, 1);
  await assert.rejects(task.complete("too late"), FailedPrecondition);
});

test("the worker loop as an iterator hands out tasks one at a time and fails one left unfinished by break", async (t) => {
  const client = await embedded(t);
  const worker = await client.register({ name: "w" });
  const first = await client.createTask({ type: "one" });
  const second = await client.createTask({ type: "two", maxRetries: 1 });
  for await (const task of client.tasks(worker, { idleTimeoutMs: 200 })) {
    if (task.type === "one") {
      await task.complete("1");
      continue;
    }
    break; // with "two" in hand
  }
  assert.equal((await client.getTask(first.id)).status, "COMPLETED");
  const left = await client.getTask(second.id);
  assert.equal(left.status, "PENDING");
  assert.equal(left.failureReason, "the worker loop ended before the task was finished");
});

test("work() completes a task with the handler's value, fails the one whose handler throws, and stops on its signal", async (t) => {
  const client = await embedded(t);
  const worker = await client.register({ name: "w" });
  const ok = await client.createTask({ type: "ok", input: "x" });
  const bad = await client.createTask({ type: "bad" });
  const stop = new AbortController();
  const handled = client.work(
    worker,
    async (task) => {
      if (task.type === "bad") {
        stop.abort(); // the loop ends after this task, while its next claim waits
        throw new RangeError("no such page");
      }
      return text(task.input).toUpperCase();
    },
    { signal: stop.signal },
  );
  assert.equal(await handled, 2);
  assert.equal(text((await client.getTask(ok.id)).output), "X");
  const failed = await client.getTask(bad.id);
  assert.equal(failed.status, "DEAD");
  assert.equal(failed.failureReason, "RangeError: no such page");
});

test("work() goes on when a task turns out no longer to be its own (claim lease ran out), and completes it when it comes back", async (t) => {
  const client = await embedded(t, { clock: "manual" });
  const worker = await client.register({ name: "w", ttlSeconds: 3600 });
  const created = await client.createTask({ type: "slow", ttlSeconds: 10, maxRetries: 1 });
  let attempts = 0;
  const handled = await client.work(
    worker,
    async () => {
      attempts++;
      if (attempts === 1) await client.advance(11_000); // the claim lease runs out mid-work
      return `attempt ${attempts}`;
    },
    { idleTimeoutMs: 200 },
  );
  assert.equal(handled, 2);
  const done = await client.getTask(created.id);
  assert.equal(done.status, "COMPLETED");
  assert.equal(text(done.output), "attempt 2");
  assert.equal(done.retryCount, 1);
});
