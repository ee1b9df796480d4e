// The event bus: for await over watch() with topic prefixes and decoded payloads, replay with
// fromSequence, OutOfRange past the retained window, and a stream that survives a daemon
// restart and resumes with no gap and no duplicate.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { AgentKeeperClient, EmbeddedDaemon, OutOfRange } from "../dist/index.js";
import { embedded, freePort, waitFor } from "./helpers.mjs";

/** The next `n` events of an open stream's iterator. */
async function take(iterator, n) {
  const out = [];
  while (out.length < n) {
    const { value, done } = await iterator.next();
    if (done) break;
    out.push(value);
  }
  return out;
}

test("watch gives the events of its topic prefixes in order, with sequence, topic and payload", async (t) => {
  const client = await embedded(t);
  const events = await client.watch(["agent.", "lease."]).opened(); // subscribed: nothing after this is missed
  const agent = await client.register({ name: "w" });
  const lease = await client.acquireLease("job:1", agent.agentId);
  await client.campaign("g", agent.agentId); // leader.changed: not among the prefixes
  await lease.release();
  await agent.close();
  const got = await take(events[Symbol.asyncIterator](), 4);
  assert.deepEqual(got.map((e) => e.topic), ["agent.registered", "lease.acquired", "lease.released", "agent.died"]);
  assert.ok(got.every((e, i) => i === 0 || e.sequence > got[i - 1].sequence));
  assert.equal(typeof got[0].sequence, "bigint");
  assert.equal(got[0].payload.kind, "agent");
  assert.equal(got[0].payload.agent.card.name, "w");
  assert.equal(got[1].payload.kind, "lease");
  assert.equal(got[1].payload.lease.token, lease.token);
  assert.ok(got[0].occurredAt instanceof Date);
  await events.close();
});

test("for await ends when the loop breaks, and fromSequence replays retained events before going live", async (t) => {
  const client = await embedded(t);
  for (const name of ["a", "b", "c"]) await client.register({ name, heartbeat: false });
  const seen = [];
  for await (const event of client.watch(["agent."], { fromSequence: 2 })) {
    seen.push(event.payload.agent.card.name);
    if (seen.length === 2) break;
  }
  assert.deepEqual(seen, ["b", "c"]);
  const live = client.watch(["agent."], { fromSequence: 3 });
  const iterator = live[Symbol.asyncIterator]();
  assert.equal((await iterator.next()).value.payload.agent.card.name, "c");
  await client.register({ name: "d", heartbeat: false });
  assert.equal((await iterator.next()).value.payload.agent.card.name, "d");
  await live.close();
  assert.deepEqual(await iterator.next(), { value: undefined, done: true });
});

test("a fromSequence the daemon no longer retains is OutOfRange, from opened() and from iteration", async (t) => {
  const client = await embedded(t, { extraArgs: ["--events-retained=4"] });
  for (let i = 0; i < 6; i++) await client.register({ name: `a${i}`, heartbeat: false });
  await assert.rejects(client.watch([], { fromSequence: 1 }).opened(), OutOfRange);
  await assert.rejects(async () => {
    for await (const _ of client.watch([], { fromSequence: 1 })) assert.fail("no event expected");
  }, OutOfRange);
});

test("a watch survives a daemon restart (same data dir and port) with no gap and no duplicate", async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), "agentkeeper-ts-"));
  t.after(() => rmSync(dataDir, { recursive: true, force: true }));
  const port = await freePort();
  let daemon = new EmbeddedDaemon({ port, dataDir });
  await daemon.start();
  const client = new AgentKeeperClient({ address: daemon.address, timeoutMs: 10_000, retry: { maxBackoffMs: 100 } });
  t.after(async () => {
    await client.close();
    await daemon.stop();
  });
  const stream = await client.watch(["agent."]).opened();
  const iterator = stream[Symbol.asyncIterator]();
  await client.register({ name: "before", heartbeat: false });
  assert.deepEqual((await take(iterator, 1)).map((e) => e.payload.agent.card.name), ["before"]);
  await client.register({ name: "unread", heartbeat: false }); // published, not yet handed out

  await daemon.stop();
  daemon = new EmbeddedDaemon({ port, dataDir });
  await daemon.start();
  await client.register({ name: "after", heartbeat: false }); // retried until the daemon serves again

  const rest = await take(iterator, 2);
  assert.deepEqual(rest.map((e) => e.payload.agent.card.name), ["unread", "after"]);
  assert.ok(stream.reconnects >= 1, "the stream was reopened");
  const sequences = [1n, ...rest.map((e) => e.sequence)];
  assert.deepEqual(sequences, [1n, 2n, 3n]);
  await waitFor(() => stream.lastSequence === 3n, "lastSequence");
  await stream.close();
});
