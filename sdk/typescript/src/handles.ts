// What register() and acquireLease() give: a registered agent that heartbeats in the
// background, and a held lease that can renew itself. Background work here is timers that
// never keep the process alive by themselves; nothing here opens connections of its own.
import type { AgentKeeperClient } from "./client.js";
import { AgentKeeperError, NotFound, PermissionDenied } from "./errors.js";
import type { LeaseInfo } from "./types.js";

/** A repeating background step: `step()` every `intervalMs` until stopped or it returns false. */
class Repeater {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private running: Promise<void> | undefined;

  constructor(
    private readonly intervalMs: () => number,
    private readonly step: () => Promise<boolean>,
  ) {
    this.schedule();
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.step().then(
        (again) => (again ? this.schedule() : void (this.stopped = true)),
        () => this.schedule(),
      );
    }, this.intervalMs());
    this.timer.unref(); // a forgotten agent must not keep the process alive
  }

  get active(): boolean {
    return !this.stopped;
  }

  /** Stop; waits for a step in flight. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }
}

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

/** A registered agent. It heartbeats every ttl/2 in the background until `close()` deregisters it. */
export class Agent implements AsyncDisposable {
  readonly agentId: string;
  readonly ttlSeconds: number;
  private readonly heartbeats: Repeater | undefined;
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
    if (options.heartbeat !== false) {
      this.heartbeats = new Repeater(() => heartbeatIntervalMs(ttlSeconds), () => this.beat());
      client._track(this);
    }
  }

  /** True until the daemon declared it DEAD or it was closed. */
  get alive(): boolean {
    return !this.lost && !this.closed;
  }

  private async beat(): Promise<boolean> {
    try {
      await this.client.heartbeat(this.agentId);
      return true;
    } catch (error) {
      if (error instanceof NotFound) {
        this.lost = true;
        this.options.onLost?.(this);
        return false;
      }
      return true; // UNAVAILABLE and the like: the next beat tries again
    }
  }

  /** One heartbeat now. */
  async heartbeat(): Promise<void> {
    await this.client.heartbeat(this.agentId);
  }

  /** Stop heartbeating and deregister (an agent the daemon already declared DEAD is fine). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.heartbeats?.stop();
    this.client._untrack(this);
    if (this.lost || this.client.closed) return;
    try {
      await this.client.deregister(this.agentId);
    } catch (error) {
      if (!(error instanceof NotFound)) throw error;
    }
  }

  /** @internal the client closes: stop heartbeating, deregister nothing. */
  async _shutdown(): Promise<void> {
    this.closed = true;
    await this.heartbeats?.stop();
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
export class Lease implements AsyncDisposable, LeaseInfo {
  key: string;
  holderAgentId: string;
  token: bigint;
  acquiredAt: Date;
  expiresAt: Date;
  ttlSeconds: number;
  private renewals: Repeater | undefined;
  private released = false;

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
    return this.renewals?.active ?? false;
  }

  /** Reset the lease's ttl (`ttlSeconds`: a new one). PermissionDenied if another agent holds it now. */
  async renew(options: { ttlSeconds?: number } = {}): Promise<void> {
    if (options.ttlSeconds !== undefined) this.ttlSeconds = options.ttlSeconds;
    const renewed = await this.client._renewLease(this.key, this.holderAgentId, this.token, this.ttlSeconds);
    this.expiresAt = renewed.expiresAt;
  }

  /** Renew every ttl/3 in the background until released; `onLost` if a renewal finds it gone. */
  keepAlive(options: KeepAliveOptions = {}): this {
    if (this.renewals?.active || this.released) return this;
    this.renewals = new Repeater(
      () => renewIntervalMs(this.ttlSeconds),
      async () => {
        try {
          await this.renew();
          return true;
        } catch (error) {
          if (error instanceof NotFound || error instanceof PermissionDenied) {
            options.onLost?.(this);
            return false;
          }
          if (!(error instanceof AgentKeeperError)) throw error;
          return true;
        }
      },
    );
    this.client._track(this);
    return this;
  }

  /** Give the lease up (stops renewals). Releasing a lease that has expired meanwhile is fine. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    await this.renewals?.stop();
    this.client._untrack(this);
    try {
      await this.client._releaseLease(this.key, this.holderAgentId, this.token);
    } catch (error) {
      if (!(error instanceof NotFound || error instanceof PermissionDenied)) throw error;
    }
  }

  /** @internal the client closes: stop renewing. */
  async _shutdown(): Promise<void> {
    await this.renewals?.stop();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}
