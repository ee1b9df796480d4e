// A cluster of real daemons on this host for the SDK's tests (the Python SDK's local_cluster.py,
// the same way): three `agentkeeper` processes on raft-rs, each with its own data dir, serving
// clients on 127.0.0.1 (ports the OS picks) and talking to each other on loopback addresses of
// their own.
//
// Peer addresses must be known before the nodes start (each names the others), so a cluster's
// nodes listen for peers on 127.P.Q.N (P.Q from this process's id, N the node id) at one port
// that is free on all of them and below the ephemeral range (no bind to port 0 can take it);
// the clients' ports come from each node's ready file.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AgentKeeperClient, EmbeddedDaemon } from "../dist/index.js";
import { waitFor } from "./helpers.mjs";

// A node waits for a quorum of the others before it serves: starting three takes an election.
const START_TIMEOUT_MS = 60_000;

function peerHosts(size) {
  const pid = process.pid;
  return Array.from({ length: size }, (_, i) => `127.${(pid >> 8) & 0xff}.${pid & 0xff}.${i + 1}`);
}

async function canBind(host, port) {
  const server = createServer();
  const bound = await new Promise((resolve) => {
    server.once("error", () => resolve(false));
    server.listen(port, host, () => resolve(true));
  });
  if (bound) await new Promise((resolve) => server.close(resolve));
  return bound;
}

function ephemeralLow() {
  try {
    return Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
  } catch {
    return 32768;
  }
}

async function portFreeOn(hosts) {
  const low = ephemeralLow();
  const [from, to] = low > 20_000 ? [20_000, low] : [1024, low];
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = from + Math.floor(Math.random() * (to - from));
    let free = true;
    for (const host of hosts) if (!(await canBind(host, port))) free = false;
    if (free) return port;
  }
  throw new Error(`no port free on every one of ${hosts.join(", ")}`);
}

/** Nodes 1..size, started together; `kill`, `stopProcess`/`resumeProcess` one. */
export class LocalCluster {
  static async start(size = 3) {
    const hosts = peerHosts(size);
    const port = await portFreeOn(hosts);
    const cluster = new LocalCluster(hosts.map((host) => `${host}:${port}`));
    await Promise.all([...cluster.nodes.values()].map((node) => node.start()));
    return cluster;
  }

  constructor(peerAddresses) {
    /** Node id -> its peer address. */
    this.peers = new Map(peerAddresses.map((address, i) => [i + 1, address]));
    const members = [...this.peers].map(([n, address]) => `${n}=${address}`).join(",");
    this.dir = mkdtempSync(join(tmpdir(), "agentkeeper-cluster-"));
    this.nodes = new Map(
      [...this.peers].map(([n, address]) => [
        n,
        new EmbeddedDaemon({
          dataDir: join(this.dir, `node-${n}`),
          extraArgs: [`--node-id=${n}`, `--peer-addr=${address}`, `--initial-cluster=${members}`],
          startupTimeoutMs: START_TIMEOUT_MS,
        }),
      ]),
    );
    this.stopped = new Set();
  }

  /** Kills every node: a graceful stop of a node whose peers still run waits out the daemon's
   * 5 s drain (their consensus streams are calls that never end). */
  async close() {
    for (const n of [...this.stopped]) this.resumeProcess(n);
    for (const node of this.nodes.values()) node.kill();
    await Promise.all([...this.nodes.values()].map((node) => node.stop()));
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Node `n`'s client (gRPC) address. */
  address(n) {
    return this.nodes.get(n).address;
  }

  get running() {
    return [...this.nodes].filter(([n, node]) => node.running && !this.stopped.has(n)).map(([n]) => n);
  }

  /** Every node's client address, node `first`'s first. */
  endpoints(first) {
    const order = [...this.nodes.keys()].sort((a, b) => (a === first ? -1 : b === first ? 1 : a - b));
    return order.map((n) => this.address(n));
  }

  /** SIGKILL node `n` (a crash). */
  kill(n) {
    this.nodes.get(n).kill();
  }

  /** SIGSTOP node `n`: its sockets stay open, it answers nothing (a hung node). */
  stopProcess(n) {
    process.kill(this.nodes.get(n).pid, "SIGSTOP");
    this.stopped.add(n);
  }

  resumeProcess(n) {
    const pid = this.nodes.get(n).pid;
    if (pid !== undefined) process.kill(pid, "SIGCONT");
    this.stopped.delete(n);
  }

  /** Waits until every running node names the same running leader, and gives it. */
  async leader() {
    let found = 0;
    await waitFor(async () => {
      const seen = [];
      for (const n of this.running) {
        const probe = new AgentKeeperClient({ address: this.address(n), timeoutMs: 5_000, retry: { maxAttempts: 1 } });
        try {
          seen.push(Number((await probe.clusterStatus()).leader));
        } catch {
          return false;
        } finally {
          await probe.close();
        }
      }
      if (seen.length > 0 && this.running.includes(seen[0]) && seen.every((leader) => leader === seen[0])) {
        found = seen[0];
        return true;
      }
      return false;
    }, "every running node names the same running leader");
    return found;
  }
}
