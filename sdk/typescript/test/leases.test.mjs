// Leases: exclusive acquisition with a bigint fencing token, renew, release, keepAlive with
// onLost, acquireLease with waitMs; elections (campaign, leader, resign) and policies.
import assert from "node:assert/strict";
import { test } from "node:test";
import { InvalidArgument, NotFound, PermissionDenied } from "../dist/index.js";
import { calls, embedded, keptAlive, waitFor } from "./helpers.mjs";

test("a lease is exclusive: the second holder gets null until the first releases, then a larger token", async (t) => {
  const client = await embedded(t);
  const a = await client.register({ name: "a" });
  const b = await client.register({ name: "b" });
  const lease = await client.acquireLease("task:42", a.agentId, { ttlSeconds: 30 });
  assert.equal(typeof lease.token, "bigint");
  assert.equal(lease.key, "task:42");
  assert.equal(lease.holderAgentId, a.agentId);
  assert.equal(await client.acquireLease("task:42", b.agentId), null);
  const again = await client.acquireLease("task:42", a.agentId); // re-entrant for its holder
  assert.equal(again.token, lease.token);
  await lease.renew({ ttlSeconds: 60 });
  assert.ok(lease.expiresAt.getTime() - Date.now() > 45_000);
  await lease.release();
  const taken = await client.acquireLease("task:42", b.agentId);
  assert.ok(taken.token > lease.token);
  const stale = await client._renewLease("task:42", a.agentId, lease.token, 30).catch((e) => e);
  assert.ok(stale instanceof PermissionDenied || stale instanceof NotFound, String(stale));
  assert.deepEqual((await client.listLeases({ prefix: "task:" })).map((l) => [l.key, l.holderAgentId]), [["task:42", b.agentId]]);
  await taken[Symbol.asyncDispose]();
  assert.deepEqual(await client.listLeases(), []);
});

test("keepAlive renews in the background across more than the ttl of manual time", async (t) => {
  const client = await embedded(t, { clock: "manual" });
  const agent = await client.register({ name: "holder", ttlSeconds: 3600 });
  const lease = (await client.acquireLease("job", agent.agentId, { ttlSeconds: 1 })).keepAlive(); // every 333 ms
  for (let round = 0; round < 3; round++) {
    const before = await keptAlive(client.daemon, "lease");
    await waitFor(async () => (await keptAlive(client.daemon, "lease")) > before, "a background renewal");
    await client.advance(900);
  }
  assert.deepEqual((await client.listLeases()).map((l) => l.token), [lease.token]);
  await lease.release();
  assert.equal(lease.keepingAlive, false);
});

test("keepAlive calls onLost once when a renewal finds the lease expired", async (t) => {
  const client = await embedded(t, { clock: "manual" });
  const agent = await client.register({ name: "holder", ttlSeconds: 3600 });
  const lost = [];
  const lease = await client.acquireLease("job", agent.agentId, { ttlSeconds: 1, keepAlive: true, onLost: (l) => lost.push(l.key) });
  await client.advance(5_000); // expires before the first renewal (due after 333 ms of real time)
  await waitFor(() => lost.length > 0, "onLost");
  assert.deepEqual(lost, ["job"]);
  assert.equal(lease.keepingAlive, false);
});

test("acquireLease with waitMs takes the lease when its holder releases it, or gives null when the wait runs out", async (t) => {
  const client = await embedded(t);
  const a = await client.register({ name: "a" });
  const b = await client.register({ name: "b" });
  const held = await client.acquireLease("job", a.agentId);
  assert.equal(await client.acquireLease("job", b.agentId, { waitMs: 200 }), null);
  // Counted before the waiter starts: its first try may land before a count read after it.
  const before = await calls(client.daemon, "AcquireLease");
  const waiting = client.acquireLease("job", b.agentId, { waitMs: 20_000 });
  await waitFor(async () => (await calls(client.daemon, "AcquireLease")) > before, "the waiter's first try");
  await held.release();
  const won = await waiting;
  assert.equal(won.holderAgentId, b.agentId);
  assert.ok(won.token > held.token);
});

test("acquireLease with waitMs takes a lease that expires on the manual clock", async (t) => {
  const client = await embedded(t, { clock: "manual" });
  const a = await client.register({ name: "a", ttlSeconds: 3600 });
  const b = await client.register({ name: "b", ttlSeconds: 3600 });
  await client.acquireLease("job", a.agentId, { ttlSeconds: 10 });
  const before = await calls(client.daemon, "AcquireLease");
  const waiting = client.acquireLease("job", b.agentId, { waitMs: 20_000 });
  await waitFor(async () => (await calls(client.daemon, "AcquireLease")) > before, "the waiter's first try");
  await client.advance(11_000); // lease.expired
  assert.equal((await waiting).holderAgentId, b.agentId);
});

test("elections: the first candidate leads, leader() reads it, resign hands over with a new term", async (t) => {
  const client = await embedded(t);
  const a = await client.register({ name: "a" });
  const b = await client.register({ name: "b" });
  const first = await client.campaign("orchestrator:pipeline-A", a.agentId);
  assert.equal(first.leaderAgentId, a.agentId);
  assert.equal(typeof first.term, "bigint");
  const standby = await client.campaign("orchestrator:pipeline-A", b.agentId);
  assert.equal(standby.leaderAgentId, a.agentId); // a new candidate never displaces the leader
  assert.equal((await client.leader("orchestrator:pipeline-A")).leaderAgentId, a.agentId);
  await client.resign("orchestrator:pipeline-A", a.agentId);
  const after = await client.leader("orchestrator:pipeline-A");
  assert.equal(after.leaderAgentId, b.agentId);
  assert.ok(after.term > first.term);
  const groups = await client.listElections();
  assert.deepEqual(groups.map((g) => [g.state.group, g.candidateAgentIds]), [["orchestrator:pipeline-A", [b.agentId]]]);
});

test("policies: set, check (DENY wins), list by subject prefix, delete", async (t) => {
  const client = await embedded(t);
  await client.setPolicy({ id: "allow-all", subject: "agent:*", action: "call", resource: "tool:*", effect: "ALLOW" });
  const deny = await client.setPolicy({ id: "deny-write", subject: "agent:scraper", action: "call", resource: "tool:write_file", effect: "DENY" });
  assert.equal(deny.effect, "DENY");
  assert.deepEqual(await client.checkPolicy("agent:scraper", "call", "tool:write_file"), { allowed: false, reason: 'denied by policy "deny-write"' });
  assert.equal((await client.checkPolicy("agent:scraper", "call", "tool:browser")).allowed, true);
  assert.deepEqual((await client.listPolicies({ subjectPrefix: "agent:scraper" })).map((p) => p.id), ["deny-write"]);
  assert.equal((await client.listPolicies()).length, 2);
  await client.deletePolicy("deny-write");
  assert.equal((await client.checkPolicy("agent:scraper", "call", "tool:write_file")).allowed, true);
  await assert.rejects(client.deletePolicy("deny-write"), NotFound);
  await assert.rejects(client.setPolicy({ id: "", subject: "s", action: "a", resource: "r", effect: "ALLOW" }), InvalidArgument);
});
