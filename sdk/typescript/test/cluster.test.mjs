// The SDK on a cluster of three real daemons (raft-rs), as the Python SDK's test_cluster.py: a
// client given every node's endpoint keeps reading and writing when its node is killed, and
// clusterStatus() names the leader and the members; a registered agent's heartbeats carry on
// across a leader's death; a watch resumes on another node with no gap and no repeat; the
// worker loop goes on; and a write whose outcome is unknown throws OutcomeUnknownError instead
// of being sent twice.
//
// Each test starts its own cluster (it kills a node). Nothing waits for a fixed time: each
// waits for what it checks, within the suite's hang guard.
import assert from "node:assert/strict";
import { test } from "node:test";
import { AgentKeeperClient, OutcomeUnknownError, Unavailable } from "../dist/index.js";
import { LocalCluster } from "./cluster.mjs";
import { HANG_GUARD_MS, calls, waitFor } from "./helpers.mjs";

// Patient enough for an election (a second or two) however the retries fall.
const PATIENT = { maxAttempts: 50, initialBackoffMs: 50, maxBackoffMs: 500 };

async function startCluster(t) {
  const cluster = await LocalCluster.start();
  t.after(() => cluster.close());
  return cluster;
}

function clientOf(t, cluster, first) {
  const client = new AgentKeeperClient({ endpoints: cluster.endpoints(first), retry: PATIENT, timeoutMs: HANG_GUARD_MS });
  t.after(() => client.close());
  return client;
}

test("a client with every endpoint keeps reading and writing after its node, the leader, is killed; clusterStatus names the leader and the members", async (t) => {
  const cluster = await startCluster(t);
  const leader = await cluster.leader();
  const client = clientOf(t, cluster, leader);
  assert.deepEqual(client.endpoints, cluster.endpoints(leader));
  const status = await client.clusterStatus();
  assert.equal(status.nodeId, BigInt(leader), "the first endpoint is the one used");
  assert.equal(status.leader, BigInt(leader));
  assert.ok(status.term >= 1n && status.appliedIndex >= 1n && status.commitIndex >= status.appliedIndex);
  assert.deepEqual(
    status.members.map((m) => [Number(m.id), m.peerAddr, m.role, m.voter]),
    [...cluster.peers].map(([n, address]) => [n, address, n === leader ? "leader" : "follower", true]),
  );
  assert.equal(status.members.find((m) => m.id === BigInt(leader)).lastHeardMs, 0, "the node asked hears itself now");

  const before = await client.register({ name: "before", heartbeat: false, ttlSeconds: 3600 });
  await client.setPolicy({ id: "p1", subject: "agent:a", action: "read", resource: "docs/*", effect: "ALLOW" });

  cluster.kill(leader);
  // At once, while the others elect a leader: reads and idempotent writes go on through another
  // node (a write the dead leader may have taken is simply sent again).
  assert.equal((await client.getAgent(before.agentId)).card.name, "before");
  assert.equal((await client.checkPolicy("agent:a", "read", "docs/x")).allowed, true);
  await client.setPolicy({ id: "p2", subject: "agent:b", action: "read", resource: "docs/*", effect: "ALLOW" });
  const lease = await client.acquireLease("deploy", before.agentId);
  assert.ok(lease !== null && lease.token > 0n);
  assert.notEqual(client.address, cluster.address(leader));

  // Writes that must not be repeated work too, once the cluster has a leader again (during the
  // election they may throw OutcomeUnknownError: see the last test).
  const newLeader = await cluster.leader();
  assert.notEqual(newLeader, leader);
  const after = await client.register({ name: "after", heartbeat: false, ttlSeconds: 3600 });
  const task = await client.createTask({ type: "build" });
  assert.deepEqual(new Set((await client.find()).map((a) => a.agentId)), new Set([before.agentId, after.agentId]), "each registered once");
  assert.equal((await client.getTask(task.id)).type, "build");
  assert.deepEqual((await client.listPolicies()).map((p) => p.id), ["p1", "p2"]);
  assert.deepEqual((await client.listLeases()).map((held) => held.token), [lease.token]);
  const now = await client.clusterStatus();
  assert.equal(now.leader, BigInt(newLeader));
  assert.equal(now.members.find((m) => m.id === BigInt(leader)).role, "follower", "the dead node no longer leads");
});

test("a registered agent's heartbeats continue across a leader kill and it stays ALIVE", async (t) => {
  const cluster = await startCluster(t);
  const leader = await cluster.leader();
  const client = clientOf(t, cluster, leader);
  const agent = await client.register({ name: "steady", ttlSeconds: 4 }); // heartbeats every 2 s
  cluster.kill(leader);
  const newLeader = await cluster.leader();
  const observer = new AgentKeeperClient({ address: cluster.address(newLeader), timeoutMs: HANG_GUARD_MS });
  t.after(() => observer.close());
  const sinceElection = (await observer.getAgent(agent.agentId)).lastHeartbeatAt.getTime();
  // A heartbeat committed under the new leader: the background beat found a live node.
  await waitFor(
    async () => (await observer.getAgent(agent.agentId)).lastHeartbeatAt.getTime() > sinceElection,
    "a heartbeat after the election",
  );
  assert.equal(agent.alive, true);
  assert.equal((await observer.getAgent(agent.agentId)).status, "ALIVE");
  // And it never went UNREACHABLE meanwhile: the whole history of its events, up to a marker
  // written now, holds its registration only.
  const marker = await observer.register({ name: "marker", heartbeat: false });
  const topics = [];
  for await (const event of observer.watch(["agent."], { fromSequence: 1 })) {
    if (event.payload.agent.agentId === marker.agentId) break;
    if (event.payload.agent.agentId === agent.agentId) topics.push(event.topic);
  }
  assert.deepEqual(topics, ["agent.registered"]);
});

test("heartbeats on a hung node move to another and the agent stays ALIVE", async (t) => {
  // A hung node (SIGSTOP: its sockets stay open, it answers nothing) never resets the stream;
  // a keep-alive answer that does not come within HUNG_ANSWER_MS moves the beats on at once.
  const cluster = await startCluster(t);
  const leader = await cluster.leader();
  const hung = cluster.running.find((n) => n !== leader);
  const client = clientOf(t, cluster, hung);
  const agent = await client.register({ name: "steady", ttlSeconds: 10 }); // heartbeats every ~3.3 s
  const observer = new AgentKeeperClient({ address: cluster.address(leader), timeoutMs: HANG_GUARD_MS });
  t.after(() => observer.close());
  cluster.stopProcess(hung);
  try {
    const stoppedAt = (await observer.getAgent(agent.agentId)).lastHeartbeatAt.getTime();
    await waitFor(
      async () => (await observer.getAgent(agent.agentId)).lastHeartbeatAt.getTime() > stoppedAt,
      "a heartbeat through another node",
    );
  } finally {
    cluster.resumeProcess(hung);
  }
  assert.equal(agent.alive, true);
  const marker = await observer.register({ name: "marker", heartbeat: false });
  const topics = [];
  for await (const event of observer.watch(["agent."], { fromSequence: 1 })) {
    if (event.payload.agent.agentId === marker.agentId) break;
    if (event.payload.agent.agentId === agent.agentId) topics.push(event.topic);
  }
  assert.deepEqual(topics, ["agent.registered"], "never UNREACHABLE");
});

test("a watch resumes on another node with no gap and no repeat", async (t) => {
  const cluster = await startCluster(t);
  const leader = await cluster.leader();
  const client = clientOf(t, cluster, leader);
  const holder = (await client.register({ name: "holder", heartbeat: false, ttlSeconds: 3600 })).agentId;
  const stream = await client.watch([]).opened(); // every event, so their sequence numbers have no holes
  const events = stream[Symbol.asyncIterator]();
  const seen = [];
  const readUntilAcquired = async (key) => {
    while (!seen.some((e) => e.topic === "lease.acquired" && e.payload.lease.key === key)) {
      const { value, done } = await events.next();
      assert.equal(done, false, `the stream ended before the event of ${key}`);
      seen.push(value);
    }
  };
  for (const key of ["k0", "k1", "k2"]) await client.acquireLease(key, holder);
  await readUntilAcquired("k2");

  cluster.kill(leader); // the node the watch (and the client) was on
  // Written while the watch is down and the others elect a leader (acquireLease is safe to send
  // again, so the client does that through the failover by itself).
  for (const key of ["k3", "k4", "k5"]) await client.acquireLease(key, holder);
  await readUntilAcquired("k5");
  assert.ok(stream.reconnects >= 1, "the stream was reopened");
  assert.notEqual(client.address, cluster.address(leader));
  await stream.close();

  const sequences = seen.map((e) => e.sequence);
  assert.deepEqual(sequences, sequences.map((_, i) => sequences[0] + BigInt(i)), "no gap, no repeat");
  const acquired = seen.filter((e) => e.topic === "lease.acquired").map((e) => e.payload.lease.key);
  assert.deepEqual(acquired, ["k0", "k1", "k2", "k3", "k4", "k5"]);
});

test("the worker loop goes on across a leader kill: a task created after it is claimed and completed", async (t) => {
  const cluster = await startCluster(t);
  const leader = await cluster.leader();
  const client = clientOf(t, cluster, leader);
  const worker = await client.register({ name: "worker", tools: ["build"], ttlSeconds: 10 });
  const stop = new AbortController();
  const done = [];
  const working = client.work(worker, async (task) => {
    done.push(new TextDecoder().decode(task.input));
    return "ok";
  }, { signal: stop.signal });
  await client.createTask({ type: "build", input: "first", requiredTools: ["build"] });
  await waitFor(() => done.includes("first"), "the first task handled");

  cluster.kill(leader); // the worker's claim was waiting on that node
  const producer = new AgentKeeperClient({ address: cluster.address(await cluster.leader()), timeoutMs: HANG_GUARD_MS });
  t.after(() => producer.close());
  const second = await producer.createTask({ type: "build", input: "second", requiredTools: ["build"] });
  await waitFor(async () => (await producer.getTask(second.id)).status === "COMPLETED", "the second task completed");
  assert.ok(done.includes("second"));
  stop.abort();
  assert.ok((await working) >= 2);
});

test("a write whose outcome is unknown throws OutcomeUnknownError and is not sent again", async (t) => {
  const cluster = await startCluster(t);
  const leader = await cluster.leader();
  const follower = cluster.running.find((n) => n !== leader);
  const third = cluster.running.find((n) => n !== leader && n !== follower);
  const client = clientOf(t, cluster, follower);
  // Connected to the follower, which hands writes to the leader we know.
  await client.setPolicy({ id: "p1", subject: "agent:a", action: "read", resource: "docs/*", effect: "ALLOW" });
  assert.equal((await client.clusterStatus()).leader, BigInt(leader));
  // The leader hangs: the follower forwards the write to it, and it is never answered. Once the
  // others elect a new leader (or the follower's 5 s pass), the follower answers UNAVAILABLE
  // "... it may yet take effect". DeletePolicy is not safe to repeat and carries no number.
  cluster.stopProcess(leader);
  let raised;
  try {
    raised = await client.deletePolicy("p1").then(
      () => assert.fail(`delete on a follower of a hung leader succeeded (leader ${leader}, follower ${follower}, the client now on ${client.address} of ${client.endpoints})`),
      (error) => error,
    );
  } finally {
    cluster.resumeProcess(leader);
  }
  assert.ok(raised instanceof OutcomeUnknownError, String(raised));
  assert.ok(raised instanceof Unavailable, "handlers of Unavailable still catch it");
  assert.equal(raised.code, "UNAVAILABLE");
  assert.match(raised.details, /may or may not have taken effect/);
  assert.match(raised.cause.details, /may yet take effect/);
  // Not sent again: a retry would have moved the client on to the next node.
  assert.equal(client.address, cluster.address(follower));
  assert.equal(await calls(cluster.nodes.get(follower), "DeletePolicy"), 1);
  assert.equal(await calls(cluster.nodes.get(third), "DeletePolicy"), 0);
  // Now that the cluster has a leader again, the client goes on.
  await cluster.leader();
  assert.ok((await client.listPolicies()).length <= 1);
});

test("a register whose first attempt may have taken effect is sent again and registers once", async (t) => {
  const cluster = await startCluster(t);
  const leader = await cluster.leader();
  const follower = cluster.running.find((n) => n !== leader);
  const client = clientOf(t, cluster, follower);
  await client.setPolicy({ id: "warm", subject: "agent:a", action: "read", resource: "docs/*", effect: "ALLOW" });
  // As above, the first attempt's outcome is unknown; a Register carries the client's id and a
  // request number, so the client sends it again until a leader answers, and it registers once.
  // The hung node is resumed once the others have a new leader: a retry that went to it (the
  // client takes the endpoints in turn) is answered too, rather than held to its deadline.
  cluster.stopProcess(leader);
  let settled;
  try {
    const pending = client.register({ name: "maybe", heartbeat: false }).then(
      (agent) => ({ agent }),
      (error) => ({ error }),
    );
    await cluster.leader(); // among the two still running
    cluster.resumeProcess(leader);
    settled = await pending;
  } finally {
    cluster.resumeProcess(leader);
  }
  assert.ok(settled.agent, `register failed: ${settled.error}`);
  const agent = settled.agent;
  await cluster.leader();
  const named = (await client.find()).filter((a) => a.card.name === "maybe");
  assert.deepEqual(named.map((a) => a.agentId), [agent.agentId], "registered once, under the id returned");
});
