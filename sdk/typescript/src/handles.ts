// What register() and acquireLease() give: a registered agent that heartbeats in the
// background, and a held lease that can renew itself, both through the client's keep-alives
// (keepalive.ts), which batch them; nothing here opens connections or timers of its own.
import type { AgentKeeperClient } from "./client.js";
import { AgentKeeperError, NotFound, PermissionDenied } from "./errors.js";
import type * as pb from "./gen/agentkeeper/v1/agentkeeper_pb.js";
import type { Beating, Renewing } from "./keepalive.js";
import { leaseFromPb, type LeaseInfo } from "./types.js";

/** Half the ttl, as the Python SDK: two heartbeats per ttl. */
const heartbeatIntervalMs = (ttlSeconds: number): number => Math.max(50, (ttlSeconds * 1000) / 2);
/** A third of the lease's ttl, so one lost renewal still leaves time for the next. */
const renewIntervalMs = (ttlSeconds: number): number => Math.max(50, (ttlSeconds * 1000) / 3);

export interface AgentOptions {
  /** Called once if the daemon declares the agent DEAD (a heartbeat answers NOT_FOUND). */
  onLost?: (agent: Agent) => void;
  /** `false`: no background heartbeats; call `agent.heartbeat()` yourself. */
  heartbeat?: boolean;
}

/** A registered agent. It heartbeats every ttl/2 in the background until `close()` deregisters
 * it: the client's keep-alives send every agent due in one message on one keep-alive stream
 * (unary calls against a daemon without it). */
export class Agent implements AsyncDisposable, Beating {
  readonly agentId: string;
  readonly ttlSeconds: number;
  /** @internal */
  readonly _intervalMs: number;
  private lost = false;
  private closed = false;

  /** @internal */
  constructor(
    private readonly client: AgentKeeperClient,
    agentId: string,
    ttlSeconds: number,
    private readonly options: AgentOptions,
  ) {
    this.agentId = agentId;
    this.ttlSeconds = ttlSeconds;
    this._intervalMs = heartbeatIntervalMs(ttlSeconds);
    if (options.heartbeat !== false) client._keepalives.addAgent(this);
  }

  /** True until the daemon declared it DEAD or it was closed. */
  get alive(): boolean {
    return !this.lost && !this.closed;
  }

  /** True while the background heartbeats run. */
  get heartbeating(): boolean {
    return this.client._keepalives.has(this);
  }

  /** @internal a background heartbeat's outcome; false once the agent is lost. */
  _beatAnswered(error: AgentKeeperError | undefined): boolean {
    if (!(error instanceof NotFound)) return true; // UNAVAILABLE and the like: the next beat tries again
    if (this.closed) return false;
    this.lost = true;
    this.client._keepalives.removeAgent(this);
    this.options.onLost?.(this);
    return false;
  }

  /** One heartbeat now. */
  async heartbeat(): Promise<void> {
    await this.client.heartbeat(this.agentId);
  }

  /** Stop heartbeating and deregister (an agent the daemon already declared DEAD is fine). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.client._keepalives.removeAgent(this);
    if (this.lost || this.client.closed) return;
    try {
      await this.client.deregister(this.agentId);
    } catch (error) {
      if (!(error instanceof NotFound)) throw error;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

export interface KeepAliveOptions {
  /** Called once if a renewal finds the lease gone (expired, or taken by another holder). */
  onLost?: (lease: Lease) => void;
}

/** A held lease. `token` is its fencing token; `release()` gives it up. */
export class Lease implements AsyncDisposable, LeaseInfo, Renewing {
  key: string;
  holderAgentId: string;
  token: bigint;
  acquiredAt: Date;
  expiresAt: Date;
  ttlSeconds: number;
  private released = false;
  /** Renewals stopped on purpose (released, or its task finished): a late failure is no loss. */
  private stopped = false;
  private onLost: ((lease: Lease) => void) | undefined;

  /** @internal */
  constructor(
    private readonly client: AgentKeeperClient,
    info: LeaseInfo,
    ttlSeconds: number,
  ) {
    this.key = info.key;
    this.holderAgentId = info.holderAgentId;
    this.token = info.token;
    this.acquiredAt = info.acquiredAt;
    this.expiresAt = info.expiresAt;
    this.ttlSeconds = ttlSeconds;
  }

  /** True while renewals run in the background. */
  get keepingAlive(): boolean {
    return this.client._keepalives.has(this);
  }

  /** @internal */
  get _intervalMs(): number {
    return renewIntervalMs(this.ttlSeconds);
  }

  /** @internal the background renewal's request: for the lease's own ttl. */
  _renewal(): { taskId: string; agentId: string; token: { value: bigint }; ttlSeconds: number } {
    return { taskId: this.key, agentId: this.holderAgentId, token: { value: this.token }, ttlSeconds: this.ttlSeconds };
  }

  /** @internal a background renewal went through. */
  _renewed(lease: pb.Lease | undefined): void {
    if (lease !== undefined) this.expiresAt = leaseFromPb(lease).expiresAt;
  }

  /** @internal a background renewal failed; false once the lease is lost. */
  _renewalFailed(error: AgentKeeperError): boolean {
    if (!(error instanceof NotFound || error instanceof PermissionDenied)) return true;
    this.client._keepalives.removeLease(this);
    if (!this.stopped) this.onLost?.(this);
    return false;
  }

  /** @internal no more background renewals (its task is finished: the daemon releases it). */
  _stopKeepAlive(): void {
    this.stopped = true;
    this.client._keepalives.removeLease(this);
  }

  /** Reset the lease's ttl (`ttlSeconds`: a new one). PermissionDenied if another agent holds it now. */
  async renew(options: { ttlSeconds?: number } = {}): Promise<void> {
    if (options.ttlSeconds !== undefined) this.ttlSeconds = options.ttlSeconds;
    const renewed = await this.client._renewLease(this.key, this.holderAgentId, this.token, this.ttlSeconds);
    this.expiresAt = renewed.expiresAt;
  }

  /** Renew every ttl/3 in the background until released; `onLost` if a renewal finds it gone.
   * The client's keep-alives send every lease due in one message on one keep-alive stream
   * (unary calls against a daemon without it). */
  keepAlive(options: KeepAliveOptions = {}): this {
    if (this.keepingAlive || this.released) return this;
    this.stopped = false;
    this.onLost = options.onLost;
    this.client._keepalives.addLease(this);
    return this;
  }

  /** Give the lease up (stops renewals). Releasing a lease that has expired meanwhile is fine. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this._stopKeepAlive();
    try {
      await this.client._releaseLease(this.key, this.holderAgentId, this.token);
    } catch (error) {
      if (!(error instanceof NotFound || error instanceof PermissionDenied)) throw error;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}
