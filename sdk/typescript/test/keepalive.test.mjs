// Background heartbeats and lease renewals ride the daemon's keep-alive streams: one stream per
// kind and client, one message per tick for every agent (or lease) due; against a daemon without
// the streams (UNIMPLEMENTED) they fall back to the unary calls.
import assert from "node:assert/strict";
import { createServer } from "node:http2";
import { test } from "node:test";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { AgentKeeperClient } from "../dist/index.js";
import { LeaseService, RegistryService } from "../dist/gen/agentkeeper/v1/agentkeeper_pb.js";
import { calls, embedded, metric, waitFor } from "./helpers.mjs";

const REGISTRY_MESSAGES = 'agentkeeper_keepalive_messages_total{stream="registry"}';
const REGISTRY_ITEMS = 'agentkeeper_keepalive_items_total{result="ok",stream="registry"}';
const LEASE_MESSAGES = 'agentkeeper_keepalive_messages_total{stream="lease"}';

test("agents and a lease stay alive on the keep-alive streams while the keep-alive metric moves", async (t) => {
  const client = await embedded(t);
  const agents = [];
  for (let i = 0; i < 20; i++) agents.push(await client.register({ name: `worker-${i}`, ttlSeconds: 1 }));
  const lease = (await client.acquireLease("job", agents[0].agentId, { ttlSeconds: 1 })).keepAlive();
  const firstExpiry = lease.expiresAt.getTime();
  // Several seconds of 1 s ttls: alive only if the streams carry every agent's heartbeats.
  await waitFor(async () => (await metric(client.daemon, REGISTRY_MESSAGES)) >= 8, "eight heartbeat messages");
  await waitFor(async () => (await metric(client.daemon, LEASE_MESSAGES)) >= 8, "eight renewal messages");
  for (const agent of agents) {
    assert.ok(agent.heartbeating && agent.alive);
    assert.equal((await client.getAgent(agent.agentId)).status, "ALIVE");
  }
  assert.equal(await metric(client.daemon, 'agentkeeper_agents{status="unreachable"}'), 0);
  assert.ok(lease.keepingAlive);
  assert.ok(lease.expiresAt.getTime() > firstExpiry, "renewals on the stream update the handle");
  assert.equal(await calls(client.daemon, "Heartbeat"), 0);
  assert.equal(await calls(client.daemon, "RenewLease"), 0);
  // 20 agents due within every 0.5 s, rounds every 0.25 s: some message carried several.
  assert.ok((await metric(client.daemon, REGISTRY_ITEMS)) > (await metric(client.daemon, REGISTRY_MESSAGES)));
  await lease.release();
  for (const agent of agents) await agent.close();
  assert.ok(!agents[0].heartbeating && !lease.keepingAlive);
});

test("an agent declared dead is reported lost from its stream answer", async (t) => {
  const client = await embedded(t, { clock: "manual", seed: 7 });
  let lost;
  const gone = new Promise((resolve) => (lost = resolve));
  const agent = await client.register({ name: "doomed", ttlSeconds: 1, onLost: lost });
  await client.advance(5_000); // past 2 x ttl before a heartbeat could be sent: DEAD
  assert.equal(await gone, agent);
  assert.ok(!agent.alive && !agent.heartbeating);
  assert.ok((await metric(client.daemon, 'agentkeeper_keepalive_items_total{result="error",stream="registry"}')) >= 1);
  assert.equal(await calls(client.daemon, "Heartbeat"), 0);
});

test("against a daemon without the streams, heartbeats and renewals fall back to unary calls", async (t) => {
  const seen = { heartbeats: 0, renewals: 0 };
  const lease = (request) => ({ taskId: request.taskId, holderAgentId: request.agentId, token: { value: 7n } });
  const adapter = connectNodeAdapter({
    grpc: true,
    connect: false,
    grpcWeb: false,
    routes: (router) => {
      router.service(RegistryService, {
        register: () => ({ agentId: "a".repeat(32) }),
        heartbeat: () => (seen.heartbeats++, {}),
        deregister: () => ({}),
      });
      router.service(LeaseService, {
        acquireLease: (request) => ({ acquired: true, lease: lease(request) }),
        renewLease: (request) => (seen.renewals++, { lease: lease(request) }),
        releaseLease: () => ({}),
      });
    },
  });
  const server = createServer(adapter);
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const client = new AgentKeeperClient({ address: `127.0.0.1:${server.address().port}`, timeoutMs: 5_000 });
  t.after(async () => {
    await client.close(); // first: the server's close waits for its connections
    await new Promise((resolve) => server.close(resolve));
  });
  const agent = await client.register({ name: "old", ttlSeconds: 1 });
  const held = (await client.acquireLease("k", agent.agentId, { ttlSeconds: 1 })).keepAlive();
  await waitFor(() => seen.heartbeats >= 4 && seen.renewals >= 4, "unary heartbeats and renewals");
  assert.ok(agent.heartbeating && agent.alive && held.keepingAlive);
  await held.release();
  await agent.close();
});
