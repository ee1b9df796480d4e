// What the tests share: a daemon per test (the real binary, the manual clock where time
// matters), waiting on conditions instead of sleeping, and reading the daemon's metrics.
import { createServer } from "node:net";
import { AgentKeeperClient, EmbeddedDaemon } from "../dist/index.js";

/** The longest any condition may take before a test fails instead of hanging. */
export const HANG_GUARD_MS = 30_000;

/** Polls `predicate` until it is true; fails naming `what` after HANG_GUARD_MS. */
export async function waitFor(predicate, what = "condition") {
  const deadline = Date.now() + HANG_GUARD_MS;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`${what} not met within ${HANG_GUARD_MS} ms`);
    await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** An embedded daemon and its client for one test; closed when the test ends. */
export async function embedded(t, options = {}) {
  const client = await AgentKeeperClient.embedded({ timeoutMs: 10_000, ...options });
  t.after(() => client.close());
  return client;
}

/** A port nobody listens on now (for restarting a daemon on the same address). */
export async function freePort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A counter from the daemon's /metrics, e.g. `agentkeeper_rpc_total{method="Heartbeat"}`. */
export async function metric(daemon, name) {
  const text = await (await fetch(`http://${daemon.host}:${daemon.metricsPort}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line === undefined ? 0 : Number(line.slice(name.length + 1));
}

/** Calls of `method` the daemon has served so far. */
export const calls = (daemon, method) => metric(daemon, `agentkeeper_rpc_total{method="${method}"}`);

/** Heartbeats (`registry`) or renewals (`lease`) the daemon answered OK on keep-alive streams:
 * the SDK's background work goes there. */
export const keptAlive = (daemon, stream) =>
  metric(daemon, `agentkeeper_keepalive_items_total{result="ok",stream="${stream}"}`);

export { AgentKeeperClient, EmbeddedDaemon };
