// Registry: register with a card, heartbeats in the background, find and getAgent, close and
// Symbol.asyncDispose deregister, onLost when the daemon declares the agent DEAD.
import assert from "node:assert/strict";
import { test } from "node:test";
import { NotFound } from "../dist/index.js";
import { embedded, keptAlive, waitFor } from "./helpers.mjs";

test("register sends the whole card and find and getAgent give it back", async (t) => {
  const client = await embedded(t);
  const agent = await client.register({
    name: "scraper-1",
    description: "Fetches and parses web pages",
    version: "1.0.0",
    tools: ["browser", "http_client"],
    capabilities: [{ name: "scrape", description: "HTML to records" }, "summarise"],
    metadata: { team: "data" },
    ttlSeconds: 30,
  });
  await client.register({ name: "writer", tools: ["pen"] });
  assert.match(agent.agentId, /^[0-9a-f]{32}$/);
  const found = await client.find({ query: "parse web pages", tools: ["browser"], limit: 5 });
  assert.deepEqual(found.map((a) => a.agentId), [agent.agentId]);
  const info = await client.getAgent(agent.agentId);
  assert.equal(info.status, "ALIVE");
  assert.deepEqual(info.card, {
    name: "scraper-1",
    description: "Fetches and parses web pages",
    version: "1.0.0",
    tools: ["browser", "http_client"],
    capabilities: [
      { name: "scrape", description: "HTML to records" },
      { name: "summarise", description: "" },
    ],
    metadata: { team: "data" },
  });
  assert.ok(info.registeredAt instanceof Date && info.registeredAt.getTime() > 0);
  await agent.close();
});

test("background heartbeats keep an agent alive across more than its ttl of manual time", async (t) => {
  const client = await embedded(t, { clock: "manual" });
  const agent = await client.register({ name: "beating", ttlSeconds: 1 }); // a heartbeat every 500 ms
  for (let round = 0; round < 3; round++) {
    const before = await keptAlive(client.daemon, "registry");
    await waitFor(async () => (await keptAlive(client.daemon, "registry")) > before, "a background heartbeat");
    await client.advance(900); // 2.7 s in all: DEAD by now without the heartbeats in between
  }
  assert.equal((await client.getAgent(agent.agentId)).status, "ALIVE");
  await agent.close();
});

test("an agent without heartbeats goes UNREACHABLE then DEAD, and onLost is called once", async (t) => {
  const client = await embedded(t, { clock: "manual" });
  const quiet = await client.register({ name: "quiet", ttlSeconds: 10, heartbeat: false });
  await client.advance(11_000);
  assert.equal((await client.getAgent(quiet.agentId)).status, "UNREACHABLE");
  await client.advance(10_000);
  assert.equal((await client.getAgent(quiet.agentId)).status, "DEAD");

  const lost = [];
  const beating = await client.register({ name: "beating", ttlSeconds: 1, onLost: (a) => lost.push(a.agentId) });
  await client.advance(5_000); // DEAD before its first heartbeat (due after 500 ms of real time)
  await waitFor(() => lost.length > 0, "onLost");
  assert.deepEqual(lost, [beating.agentId]);
  assert.equal(beating.alive, false);
  await beating.close(); // a DEAD agent closes without an error
});

test("close() and Symbol.asyncDispose deregister: the agent is DEAD at once", async (t) => {
  const client = await embedded(t);
  const closed = await client.register({ name: "closed" });
  await closed.close();
  assert.equal((await client.getAgent(closed.agentId)).status, "DEAD");
  let disposedId;
  {
    const disposed = await client.register({ name: "disposed" });
    disposedId = disposed.agentId;
    await disposed[Symbol.asyncDispose](); // what `await using` calls at the end of the block
  }
  assert.equal((await client.getAgent(disposedId)).status, "DEAD");
  assert.deepEqual(await client.find(), []);
});

test("getAgent of an unknown id is NotFound, with the daemon's code and sentence", async (t) => {
  const client = await embedded(t);
  const error = await client.getAgent("0".repeat(32)).catch((e) => e);
  assert.ok(error instanceof NotFound);
  assert.equal(error.code, "NOT_FOUND");
  assert.match(error.details, /not found/);
});
