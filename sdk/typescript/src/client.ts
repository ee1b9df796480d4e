// AgentKeeperClient: every call of the daemon in TypeScript idiom (registry, leases, elections,
// entitlements, the event bus, tasks, the manual clock, the cluster's status) and embedded mode. It converts between
// the SDK's values and the wire; retries and connections belong to connection.ts, and no
// generated message type appears in its public signatures.
import { create } from "@bufbuild/protobuf";
import { anyUnpack, durationFromMs, timestampDate } from "@bufbuild/protobuf/wkt";
import { KeepAlives } from "./keepalive.js";
import { Connection, type CallControl, type RetryOptions, type TlsOptions } from "./connection.js";
import { EmbeddedDaemon, type EmbeddedOptions } from "./embedded.js";
import { resolveEndpoints } from "./endpoints.js";
import { AgentKeeperError, InvalidArgument } from "./errors.js";
import * as pb from "./gen/agentkeeper/v1/agentkeeper_pb.js";
import { Agent, Lease, type KeepAliveOptions } from "./handles.js";
import { claimedTask, claimLoop, work, type ClaimedTask, type TaskHandler, type WorkerOptions } from "./tasks.js";
import {
  agentFromPb,
  bytesOf,
  clusterStatusFromPb,
  effectToPb,
  electionFromPb,
  electionGroupFromPb,
  leaseFromPb,
  policyFromPb,
  taskFromPb,
  taskStatusToPb,
  type AgentInfo,
  type Capability,
  type CheckResult,
  type ClusterStatus,
  type EffectName,
  type ElectionGroup,
  type ElectionState,
  type LeaseInfo,
  type Policy,
  type Task,
  type TaskStatusName,
} from "./types.js";
import { WatchStream, type WatchOptions } from "./watch.js";

export interface ClientOptions {
  /** `host:port` of the daemon (default `$AGENTKEEPER_ADDRESS`, else `127.0.0.1:7070`). */
  address?: string;
  /**
   * The nodes of a cluster, `["h1:7070", "h2:7070", "h3:7070"]` (instead of `address`; a host
   * alone means port 7070, IPv6 as `"[::1]:7070"`): the client talks to one at a time, the first
   * to begin with, and moves on to the next when that one is down or answers UNAVAILABLE.
   */
  endpoints?: string[];
  /** Sent as `authorization: Bearer TOKEN` (a daemon started with `--auth-tokens`). */
  token?: string;
  /** TLS (a daemon started with `--tls-cert`): `true` for the system's roots, or a CA and client certificate. */
  tls?: TlsOptions | true;
  /** Default per-call timeout in ms, retries included (null: none). Default 30 000. */
  timeoutMs?: number | null;
  retry?: RetryOptions;
}

export interface RegisterOptions {
  name: string;
  description?: string;
  version?: string;
  tools?: string[];
  capabilities?: (Capability | string)[];
  metadata?: Record<string, string>;
  /** Seconds without a heartbeat before the agent is UNREACHABLE (then DEAD after as long again). Default 30. */
  ttlSeconds?: number;
  /** Called once if the daemon declares the agent DEAD. */
  onLost?: (agent: Agent) => void;
  /** false: no background heartbeats. */
  heartbeat?: boolean;
}

export interface AcquireOptions extends CallControl {
  /** The lease's ttl in seconds. Default 60. */
  ttlSeconds?: number;
  /** Wait up to this long for a held lease to be released or expire, then take it (null if the wait runs out). */
  waitMs?: number;
  /** Renew in the background every ttl/3 until released. */
  keepAlive?: boolean;
  onLost?: KeepAliveOptions["onLost"];
}

export interface PolicyInput {
  id: string;
  subject: string;
  action: string;
  resource: string;
  effect: EffectName;
}

export interface CreateTaskOptions extends CallControl {
  type: string;
  input?: string | Uint8Array;
  requiredTools?: string[];
  maxRetries?: number;
  /** Seconds of the claim lease a claimer gets (0: 60). */
  ttlSeconds?: number;
}

export interface ClaimOptions {
  /** How long to wait for a task (0: only one pending now; default: until one comes). */
  waitMs?: number;
  signal?: AbortSignal;
}

const DEFAULT_ADDRESS = "127.0.0.1:7070";
const DEFAULT_TIMEOUT_MS = 30_000;
/** One long poll of ClaimTask; the daemon answers empty at its --claim-wait-max (60 s) at the latest. */
const CLAIM_POLL_MS = 30_000;
/** How much longer than its wait a claim's deadline is, so the daemon's empty answer comes first. */
const CLAIM_DEADLINE_MARGIN_MS = 5_000;

function u32(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new InvalidArgument(`${name} must be an integer 0..=4294967295, got ${value}`, "INVALID_ARGUMENT");
  }
  return value;
}

/**
 * A client of the AgentKeeper daemon. `new AgentKeeperClient({ address })` connects to a
 * running daemon; `AgentKeeperClient.embedded()` starts a private one. `close()` stops
 * heartbeats and renewals, closes the connections and stops an embedded daemon.
 */
export class AgentKeeperClient implements AsyncDisposable {
  /** The embedded daemon (undefined for a client of a running daemon). */
  daemon: EmbeddedDaemon | undefined;
  private readonly connection: Connection;
  /** @internal every agent's heartbeats and every kept-alive lease's renewals, one stream per kind. */
  readonly _keepalives: KeepAlives;

  constructor(options: ClientOptions = {}) {
    const endpoints = resolveEndpoints(options.address, options.endpoints, process.env["AGENTKEEPER_ADDRESS"] ?? DEFAULT_ADDRESS);
    this.connection = new Connection(
      { endpoints, token: options.token, tls: options.tls, retry: options.retry },
      options.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : options.timeoutMs,
    );
    this._keepalives = new KeepAlives(this.connection);
  }

  /** Start a private daemon (see `EmbeddedOptions` for how the binary is found) and connect to it. */
  static async embedded(options: EmbeddedOptions & Omit<ClientOptions, "address" | "endpoints"> = {}): Promise<AgentKeeperClient> {
    const daemon = new EmbeddedDaemon(options);
    await daemon.start();
    const client = new AgentKeeperClient({ ...options, address: daemon.address });
    client.daemon = daemon;
    return client;
  }

  /** The `host:port` calls go to now (with several endpoints: the node the client talks to now). */
  get address(): string {
    return this.connection.endpoint.address;
  }

  /** Every `host:port` this client may talk to, in order (one unless `endpoints` was given). */
  get endpoints(): string[] {
    return [...this.connection.options.endpoints];
  }

  get closed(): boolean {
    return this.connection.closed;
  }

  /** @internal the backoff after `previousMs` (0 for the first), as for reopening a stream. */
  _nextDelay(previousMs: number): number {
    return this.connection.nextStreamDelay(previousMs);
  }

  /** @internal wait `ms`; false if `signal` (or the client's closing) fired first. */
  _pause(ms: number, signal?: AbortSignal): Promise<boolean> {
    return this.connection.pause(ms, signal);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this._keepalives.stop();
    this.connection.close();
    const daemon = this.daemon;
    this.daemon = undefined;
    await daemon?.stop();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // ── registry ──

  /** Register an agent; it heartbeats every ttl/2 in the background until `agent.close()` deregisters it. Retried like an idempotent call: it carries this client's id and a request number, and the daemon registers once however often it comes (a retry after a lost reply gets the same agent id). */
  async register(options: RegisterOptions, control: CallControl = {}): Promise<Agent> {
    const ttlSeconds = u32("ttlSeconds", options.ttlSeconds ?? 30);
    const card = create(pb.AgentCardSchema, {
      name: options.name,
      description: options.description ?? "",
      version: options.version ?? "",
      tools: options.tools ?? [],
      capabilities: (options.capabilities ?? []).map((c) => (typeof c === "string" ? { name: c, description: "" } : c)),
      metadata: options.metadata ?? {},
    });
    const response = await this.connection.unary("Register", (s, o) => s.registry.register({ card, ttlSeconds }, o), control, true);
    return new Agent(this, response.agentId, ttlSeconds, { onLost: options.onLost, heartbeat: options.heartbeat });
  }

  async heartbeat(agentId: string, control: CallControl = {}): Promise<void> {
    await this.connection.unary("Heartbeat", (s, o) => s.registry.heartbeat({ agentId }, o), control);
  }

  async deregister(agentId: string, control: CallControl = {}): Promise<void> {
    await this.connection.unary("Deregister", (s, o) => s.registry.deregister({ agentId }, o), control);
  }

  /** Any agent by id, DEAD ones too. NotFound for an unknown id. */
  async getAgent(agentId: string, control: CallControl = {}): Promise<AgentInfo> {
    const response = await this.connection.unary("GetAgent", (s, o) => s.registry.getAgent({ agentId }, o), control);
    return agentFromPb(response.agent ?? create(pb.AgentInfoSchema));
  }

  /** ALIVE agents with every one of `tools`, ranked by relevance to `query` (limit 0: 10). */
  async find(options: { query?: string; tools?: string[]; limit?: number } = {}, control: CallControl = {}): Promise<AgentInfo[]> {
    const request = { query: options.query ?? "", tools: options.tools ?? [], limit: u32("limit", options.limit ?? 0) };
    const response = await this.connection.unary("Find", (s, o) => s.registry.find(request, o), control);
    return response.agents.map(agentFromPb);
  }

  // ── leases ──

  /**
   * Take the exclusive lease on `key` for `holder` (an agent id). Resolves to a `Lease`, or
   * `null` when another agent holds it. With `waitMs` it waits for the lease's release or
   * expiry and takes it then (null if the wait runs out). Acquiring a lease the agent already
   * holds gives the same token with a fresh expiry.
   */
  async acquireLease(key: string, holder: string, options: AcquireOptions = {}): Promise<Lease | null> {
    const ttlSeconds = u32("ttlSeconds", options.ttlSeconds ?? 60);
    const once = async (): Promise<Lease | null> => {
      const request = { taskId: key, agentId: holder, ttlSeconds };
      const response = await this.connection.unary("AcquireLease", (s, o) => s.lease.acquireLease(request, o), options);
      if (!response.acquired) return null;
      const lease = new Lease(this, leaseFromPb(response.lease ?? create(pb.LeaseSchema)), ttlSeconds);
      if (options.keepAlive) lease.keepAlive({ onLost: options.onLost });
      return lease;
    };
    if (options.waitMs === undefined || options.waitMs <= 0) return once();
    return this.acquireWaiting(key, once, options.waitMs, options.signal);
  }

  /** `once()` until it takes the lease, woken by the key's release or expiry; the watch opens before each try, so no release is missed. */
  private async acquireWaiting(key: string, once: () => Promise<Lease | null>, waitMs: number, signal?: AbortSignal): Promise<Lease | null> {
    const end = Date.now() + waitMs;
    const stop = new AbortController();
    const timer = setTimeout(() => stop.abort(), waitMs);
    const signals = signal === undefined ? [stop.signal] : [stop.signal, signal];
    const events = this.watch(["lease.released", "lease.expired"], { signal: AbortSignal.any(signals) });
    try {
      await events.opened();
      const lease = await once();
      if (lease !== null) return lease;
      for await (const event of events) {
        if (event.payload.kind !== "lease" || event.payload.lease.key !== key) continue;
        if (Date.now() >= end) return null;
        const taken = await once();
        if (taken !== null) return taken;
      }
      return null;
    } finally {
      clearTimeout(timer);
      await events.close();
    }
  }

  /** @internal */
  async _renewLease(key: string, holder: string, token: bigint, ttlSeconds: number): Promise<LeaseInfo> {
    const request = { taskId: key, agentId: holder, token: { value: token }, ttlSeconds: u32("ttlSeconds", ttlSeconds) };
    const response = await this.connection.unary("RenewLease", (s, o) => s.lease.renewLease(request, o));
    return leaseFromPb(response.lease ?? create(pb.LeaseSchema));
  }

  /** @internal */
  async _releaseLease(key: string, holder: string, token: bigint): Promise<void> {
    const request = { taskId: key, agentId: holder, token: { value: token } };
    await this.connection.unary("ReleaseLease", (s, o) => s.lease.releaseLease(request, o));
  }

  /** Every lease held whose key starts with `prefix`, by key (all pages). */
  async listLeases(options: { prefix?: string } = {}, control: CallControl = {}): Promise<LeaseInfo[]> {
    const leases: LeaseInfo[] = [];
    let pageToken = "";
    do {
      const request = { prefix: options.prefix ?? "", pageToken };
      const response = await this.connection.unary("ListLeases", (s, o) => s.lease.listLeases(request, o), control);
      leases.push(...response.leases.map(leaseFromPb));
      pageToken = response.nextPageToken;
    } while (pageToken !== "");
    return leases;
  }

  // ── elections ──

  /** Stand for leader of `group`; resolves to the group's state (the leader may be someone else). */
  async campaign(group: string, agentId: string, control: CallControl = {}): Promise<ElectionState> {
    const response = await this.connection.unary("Campaign", (s, o) => s.election.campaign({ group, agentId }, o), control);
    return electionFromPb(response.state ?? create(pb.ElectionStateSchema));
  }

  /** Stop standing; a leader that resigns hands over to the next candidate at once. */
  async resign(group: string, agentId: string, control: CallControl = {}): Promise<void> {
    await this.connection.unary("Resign", (s, o) => s.election.resign({ group, agentId }, o), control);
  }

  /** The group's current state (its first WatchElection message), without campaigning. */
  async leader(group: string, control: CallControl = {}): Promise<ElectionState> {
    return this.connection.unary(
      "WatchElection",
      async (s, o) => {
        // The deadline as a signal: connect's own timer for a stream's timeoutMs outlives a
        // stream left early and would keep the process alive until it fires.
        const stop = new AbortController();
        const signals = [stop.signal];
        if (o.signal !== undefined) signals.push(o.signal);
        if (o.timeoutMs !== undefined) signals.push(AbortSignal.timeout(o.timeoutMs));
        const signal = AbortSignal.any(signals);
        try {
          for await (const event of s.election.watchElection({ group }, { signal })) {
            const state = eventFromPbElection(event);
            if (state !== undefined) return state;
          }
        } finally {
          stop.abort();
        }
        throw new AgentKeeperError(`the election watch of "${group}" ended without a state`, "UNAVAILABLE");
      },
      control,
    );
  }

  /** Every election group with its leader, term and candidates (all pages). */
  async listElections(control: CallControl = {}): Promise<ElectionGroup[]> {
    const groups: ElectionGroup[] = [];
    let pageToken = "";
    do {
      const response = await this.connection.unary("ListElections", (s, o) => s.election.listElections({ pageToken }, o), control);
      groups.push(...response.groups.map(electionGroupFromPb));
      pageToken = response.nextPageToken;
    } while (pageToken !== "");
    return groups;
  }

  // ── entitlements ──

  /** Create or replace a policy (needs the admin role on a daemon with --auth-tokens). */
  async setPolicy(policy: PolicyInput, control: CallControl = {}): Promise<Policy> {
    const request = { policy: { ...policy, effect: effectToPb(policy.effect) } };
    const response = await this.connection.unary("SetPolicy", (s, o) => s.entitlements.setPolicy(request, o), control);
    return policyFromPb(response.policy ?? create(pb.PolicySchema));
  }

  /** Whether `subject` may `action` on `resource`; DENY always wins. */
  async checkPolicy(subject: string, action: string, resource: string, control: CallControl = {}): Promise<CheckResult> {
    const response = await this.connection.unary("CheckPolicy", (s, o) => s.entitlements.checkPolicy({ subject, action, resource }, o), control);
    return { allowed: response.allowed, reason: response.reason };
  }

  /** Every policy whose subject starts with `subjectPrefix` (all pages). */
  async listPolicies(options: { subjectPrefix?: string } = {}, control: CallControl = {}): Promise<Policy[]> {
    const policies: Policy[] = [];
    let pageToken = "";
    do {
      const request = { subjectPrefix: options.subjectPrefix ?? "", pageToken, pageSize: 1000 };
      const response = await this.connection.unary("ListPolicies", (s, o) => s.entitlements.listPolicies(request, o), control);
      policies.push(...response.policies.map(policyFromPb));
      pageToken = response.nextPageToken;
    } while (pageToken !== "");
    return policies;
  }

  /** Delete a policy. NotFound if there is none with that id. */
  async deletePolicy(id: string, control: CallControl = {}): Promise<void> {
    await this.connection.unary("DeletePolicy", (s, o) => s.entitlements.deletePolicy({ id }, o), control);
  }

  // ── event bus ──

  /**
   * Events whose topic starts with one of `topics` (empty: all), in sequence order:
   * `for await (const event of client.watch(["agent."]))`. `fromSequence` first replays
   * retained events from there. A dropped stream reopens and resumes with no gap or duplicate.
   */
  watch(topics: string[] = [], options: WatchOptions = {}): WatchStream {
    return new WatchStream(this.connection, [...topics], options);
  }

  // ── tasks ──

  /** Enqueue a task (PENDING). Retried like an idempotent call: it carries this client's id and a request number, and the daemon enqueues it once however often it comes. */
  async createTask(options: CreateTaskOptions): Promise<Task> {
    const request = {
      type: options.type,
      input: bytesOf(options.input),
      requiredTools: options.requiredTools ?? [],
      maxRetries: u32("maxRetries", options.maxRetries ?? 0),
      ttlSeconds: u32("ttlSeconds", options.ttlSeconds ?? 60),
    };
    const response = await this.connection.unary("CreateTask", (s, o) => s.task.createTask(request, o), options, true);
    return taskFromPb(response.task ?? create(pb.TaskSchema));
  }

  /**
   * Claim the oldest PENDING task `agentId` has the tools for. Waits `waitMs` for one (0: only
   * one pending now; default: until one comes, in long polls); null if none came in time.
   */
  async claimTask(agentId: string, options: ClaimOptions = {}): Promise<ClaimedTask | null> {
    const end = options.waitMs === undefined ? null : Date.now() + options.waitMs;
    for (;;) {
      const waitMs = end === null ? CLAIM_POLL_MS : Math.max(0, Math.min(CLAIM_POLL_MS, end - Date.now()));
      const request = { agentId, waitMs };
      const response = await this.connection.unary("ClaimTask", (s, o) => s.task.claimTask(request, o), {
        timeoutMs: waitMs + CLAIM_DEADLINE_MARGIN_MS,
        signal: options.signal,
      });
      if (response.task !== undefined) {
        const task = taskFromPb(response.task);
        const lease = new Lease(this, leaseFromPb(response.lease ?? create(pb.LeaseSchema)), 0);
        lease.ttlSeconds = Math.max(1, Math.round((lease.expiresAt.getTime() - lease.acquiredAt.getTime()) / 1000));
        return claimedTask(this, task, agentId, lease);
      }
      if (end !== null && Date.now() >= end) return null;
      if (options.signal?.aborted) return null;
    }
  }

  /** Mark a task `agentId` claimed COMPLETED with `output`. */
  async completeTask(taskId: string, agentId: string, output?: string | Uint8Array, control: CallControl = {}): Promise<void> {
    const request = { taskId, agentId, output: bytesOf(output) };
    await this.connection.unary("CompleteTask", (s, o) => s.task.completeTask(request, o), control);
  }

  /** Record a failure: back to PENDING while retries remain, else DEAD. */
  async failTask(taskId: string, agentId: string, reason = "", control: CallControl = {}): Promise<void> {
    await this.connection.unary("FailTask", (s, o) => s.task.failTask({ taskId, agentId, reason }, o), control);
  }

  async getTask(taskId: string, control: CallControl = {}): Promise<Task> {
    const response = await this.connection.unary("GetTask", (s, o) => s.task.getTask({ taskId }, o), control);
    return taskFromPb(response.task ?? create(pb.TaskSchema));
  }

  /** All tasks in creation order, optionally only those with `status` (all pages). */
  async listTasks(options: { status?: TaskStatusName } = {}, control: CallControl = {}): Promise<Task[]> {
    const tasks: Task[] = [];
    let pageToken = "";
    do {
      const request = { status: taskStatusToPb(options.status), pageToken };
      const response = await this.connection.unary("ListTasks", (s, o) => s.task.listTasks(request, o), control);
      tasks.push(...response.tasks.map(taskFromPb));
      pageToken = response.nextPageToken;
    } while (pageToken !== "");
    return tasks;
  }

  /**
   * The worker loop as an iterator: `for await (const task of client.tasks(agent))`, one task
   * at a time; finish each with `task.complete(output)` or `task.fail(reason)`. A task left
   * unfinished when the loop is left is failed at once, so it is retried without waiting for
   * its lease to run out.
   */
  tasks(agent: string | Agent, options: WorkerOptions = {}): AsyncGenerator<ClaimedTask> {
    return claimLoop(this, typeof agent === "string" ? agent : agent.agentId, options);
  }

  /** The worker loop with a handler: its return value completes each task, a throw fails it. Resolves with the count handled. */
  async work(agent: string | Agent, handler: TaskHandler, options: WorkerOptions = {}): Promise<number> {
    return work(this, typeof agent === "string" ? agent : agent.agentId, handler, options);
  }

  // ── cluster ──

  /** The cluster as the node the client talks to now sees it: that node's id, the leader it
   * knows (0n during an election), the term, its commit and applied index, every member.
   * FailedPrecondition from a daemon that is not a cluster node. */
  async clusterStatus(control: CallControl = {}): Promise<ClusterStatus> {
    const response = await this.connection.unary("Status", (s, o) => s.cluster.status({}, o), control);
    return clusterStatusFromPb(response);
  }

  // ── manual clock ──

  /** Move a `clock: "manual"` daemon's time forward; timers that fall due fire before this resolves. Resolves to the new time. */
  async advance(ms: number, control: CallControl = {}): Promise<Date> {
    if (!(ms >= 0)) throw new InvalidArgument(`advance needs ms >= 0, got ${ms}`, "INVALID_ARGUMENT");
    const response = await this.connection.unary("Advance", (s, o) => s.clock.advance({ duration: durationFromMs(ms) }, o), control);
    return response.now === undefined ? new Date(0) : timestampDate(response.now);
  }

  /** The manual clock's time. FailedPrecondition on the real clock. */
  async now(control: CallControl = {}): Promise<Date> {
    const response = await this.connection.unary("Now", (s, o) => s.clock.now({}, o), control);
    return response.now === undefined ? new Date(0) : timestampDate(response.now);
  }
}

function eventFromPbElection(event: pb.Event): ElectionState | undefined {
  const state = event.payload === undefined ? undefined : anyUnpack(event.payload, pb.ElectionStateSchema);
  return state === undefined ? undefined : electionFromPb(state);
}
