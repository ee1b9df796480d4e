// A sidecar on the same host talks to the daemon's Unix socket (`--uds PATH`) with the address
// `unix:PATH`: calls and background heartbeats on the keep-alive stream go through the socket.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { AgentKeeperClient, EmbeddedDaemon, InvalidArgument } from "../dist/index.js";
import { metric, waitFor } from "./helpers.mjs";

test("a unix: address registers, heartbeats on the stream and reads through the socket", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "agentkeeper-uds-"));
  const socket = join(dir, "agentkeeper.sock");
  const daemon = new EmbeddedDaemon({ extraArgs: [`--uds=${socket}`] });
  await daemon.start();
  t.after(async () => {
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const client = new AgentKeeperClient({ address: `unix:${socket}`, timeoutMs: 10_000 });
  t.after(() => client.close());
  assert.equal(client.address, `unix:${socket}`);
  const agent = await client.register({ name: "sidecar", ttlSeconds: 1 });
  await waitFor(
    async () => (await metric(daemon, 'agentkeeper_keepalive_messages_total{stream="registry"}')) >= 4,
    "heartbeats on the keep-alive stream over the socket",
  );
  assert.equal((await client.getAgent(agent.agentId)).status, "ALIVE");
  const overTcp = new AgentKeeperClient({ address: daemon.address, timeoutMs: 10_000 });
  t.after(() => overTcp.close());
  assert.equal((await overTcp.getAgent(agent.agentId)).card.name, "sidecar", "one daemon behind both");
  await agent.close();
});

test("a unix: address without a path is invalid", () => {
  assert.throws(() => new AgentKeeperClient({ address: "unix:" }), InvalidArgument);
  assert.throws(() => new AgentKeeperClient({ endpoints: ["unix:"] }), InvalidArgument);
});
