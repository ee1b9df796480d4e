// One client's background keep-alives: its agents' heartbeats and its kept-alive leases'
// renewals, batched per tick into one message on one keep-alive stream per kind
// (RegistryService.KeepAlive, LeaseService.KeepAlive) to the node the client talks to now.
// Against a daemon without the streams (UNIMPLEMENTED) it falls back to the unary Heartbeat and
// RenewLease calls for the rest of the client's life. Its timer never keeps the process alive;
// it never throws from background work: each item's outcome goes to its handle.
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { CallOptions } from "@connectrpc/connect";
import type { Connection, Endpoint } from "./connection.js";
import { AgentKeeperError, Unavailable, callFailure, errorForCode } from "./errors.js";
import type * as pb from "./gen/agentkeeper/v1/agentkeeper_pb.js";

type HeartbeatMessage = MessageInitShape<typeof pb.KeepAliveRequestSchema>;
type RenewalMessage = MessageInitShape<typeof pb.LeaseKeepAliveRequestSchema>;

/** Milliseconds between two rounds at most; half the shortest interval when that is shorter. */
export const TICK_MAX_MS = 500;
/** Items in one message at most: the daemon's bound. More wait for the next round. */
export const ITEMS_MAX = 10_000;
/** How long to wait for a message's answer when the client has no default timeout. */
const ANSWER_TIMEOUT_MS = 10_000;
/** With several endpoints, how long to wait for a message's answer before the node counts as
 * hung and the message goes to the next one. A node answers at once, or within ~5 s when it
 * knows no leader (UNAVAILABLE): moving on sooner only asks another node. The Python SDK finds a
 * hung node by HTTP/2 pings; connect-node's pings can throw from a timer on a destroyed session
 * (connect-es #1795), so this SDK bounds the wait instead. Unary calls still wait out their
 * deadline on a hung node. */
export const HUNG_ANSWER_MS = 4_000;

/** What the keep-alives need of an agent handle. */
export interface Beating {
  readonly agentId: string;
  readonly _intervalMs: number;
  /** A background heartbeat's outcome (undefined: it went through); false once the agent is lost. */
  _beatAnswered(error: AgentKeeperError | undefined): boolean;
  /** The unary heartbeat (the fallback). */
  heartbeat(): Promise<void>;
}

/** What the keep-alives need of a lease handle. */
export interface Renewing {
  readonly _intervalMs: number;
  _renewal(): { taskId: string; agentId: string; token: { value: bigint }; ttlSeconds: number };
  _renewed(lease: pb.Lease | undefined, sentAt: number): void;
  /** A background renewal failed; false once the lease is lost. */
  _renewalFailed(error: AgentKeeperError): boolean;
  /** The unary renewal (the fallback). */
  renew(): Promise<void>;
}

/** Messages written into a call as they come: the request side of a bidirectional stream. */
class Outbox<T> implements AsyncIterable<T> {
  private readonly queued: T[] = [];
  private wake: (() => void) | undefined;
  private ended = false;

  push(message: T): void {
    this.queued.push(message);
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const next = this.queued.shift();
      if (next !== undefined) {
        yield next;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}

/** One open keep-alive stream: write a message, read its answer. */
class Duplex<Req, Resp extends { batchId: bigint }> {
  private readonly outbox = new Outbox<Req>();
  private readonly abort = new AbortController();
  private readonly answers: AsyncIterator<Resp>;

  constructor(open: (requests: AsyncIterable<Req>, options: CallOptions) => AsyncIterable<Resp>, signal: AbortSignal) {
    const options: CallOptions = { signal: AbortSignal.any([signal, this.abort.signal]) };
    this.answers = open(this.outbox, options)[Symbol.asyncIterator]();
  }

  /** Sends `request` and waits for its answer (checked against `batchId`). */
  async exchange(request: Req, batchId: bigint, timeoutMs: number): Promise<Resp> {
    this.outbox.push(request);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Unavailable(`no answer on the keep-alive stream within ${timeoutMs} ms`, "UNAVAILABLE")), timeoutMs);
    });
    try {
      const next = await Promise.race([this.answers.next(), timeout]);
      if (next.done === true || next.value.batchId !== batchId) {
        throw new Unavailable("the keep-alive stream ended or answered another message", "UNAVAILABLE");
      }
      return next.value;
    } catch (thrown) {
      throw callFailure(thrown, false);
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    this.outbox.end();
    this.abort.abort();
  }
}

export class KeepAlives {
  private readonly agents = new Map<Beating, number>();
  private readonly leases = new Map<Renewing, number>();
  private timer: NodeJS.Timeout | undefined;
  private round: Promise<void> | undefined;
  private stopped = false;
  private heartbeats: Duplex<HeartbeatMessage, pb.KeepAliveResponse> | undefined;
  private renewals: Duplex<RenewalMessage, pb.LeaseKeepAliveResponse> | undefined;
  private endpoint: Endpoint | undefined;
  private batchId = 0n;
  /** True once the daemon answered UNIMPLEMENTED: background work uses the unary calls. */
  unaryOnly = false;

  constructor(private readonly connection: Connection) {}

  addAgent(agent: Beating): void {
    this.agents.set(agent, Date.now() + agent._intervalMs);
    this.start();
  }

  removeAgent(agent: Beating): void {
    this.agents.delete(agent);
  }

  addLease(lease: Renewing): void {
    this.leases.set(lease, Date.now() + lease._intervalMs);
    this.start();
  }

  removeLease(lease: Renewing): void {
    this.leases.delete(lease);
  }

  has(handle: Beating | Renewing): boolean {
    return this.agents.has(handle as Beating) || this.leases.has(handle as Renewing);
  }

  /** Stops the rounds and closes the streams; waits for a round in flight. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.closeStreams();
    await this.round;
  }

  private start(): void {
    if (this.timer === undefined && !this.stopped) this.schedule();
  }

  private tickMs(): number {
    let tick = TICK_MAX_MS;
    for (const handle of [...this.agents.keys(), ...this.leases.keys()]) tick = Math.min(tick, handle._intervalMs / 2);
    return tick;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.round = this.runRound().finally(() => this.schedule());
    }, this.tickMs());
    this.timer.unref(); // forgotten agents must not keep the process alive
  }

  private async runRound(): Promise<void> {
    const now = Date.now();
    // Whatever falls due before the next round goes now: a little early, never late; the next
    // due time counts from this one, so the period stays the interval on average.
    const horizon = now + this.tickMs();
    const agents = due(this.agents, horizon, now);
    const leases = due(this.leases, horizon, now);
    if (agents.length > 0) await this.beat(agents);
    if (leases.length > 0) await this.renew(leases);
  }

  private async beat(agents: Beating[]): Promise<void> {
    if (!this.unaryOnly) {
      try {
        const answer = await this.onStream(() => {
          this.follow();
          this.heartbeats ??= new Duplex((requests, options) => this.endpoint!.services.registry.keepAlive(requests, options), this.connection.closedSignal);
          const batchId = ++this.batchId;
          const request: HeartbeatMessage = { agentIds: agents.map((a) => a.agentId), batchId };
          return this.heartbeats.exchange(request, batchId, this.answerTimeoutMs());
        });
        agents.forEach((agent, i) => this.settleAgent(agent, agent._beatAnswered(itemError(answer.results[i]))));
        return;
      } catch (thrown) {
        const error = thrown as AgentKeeperError;
        if (error.code !== "UNIMPLEMENTED") {
          for (const agent of agents) this.settleAgent(agent, agent._beatAnswered(error));
          return;
        }
        this.fallBack();
      }
    }
    for (const agent of agents) {
      try {
        await agent.heartbeat();
        this.settleAgent(agent, agent._beatAnswered(undefined));
      } catch (error) {
        if (!(error instanceof AgentKeeperError)) throw error;
        this.settleAgent(agent, agent._beatAnswered(error));
      }
    }
  }

  private async renew(leases: Renewing[]): Promise<void> {
    if (!this.unaryOnly) {
      const sentAt = Date.now();
      try {
        const answer = await this.onStream(() => {
          this.follow();
          this.renewals ??= new Duplex((requests, options) => this.endpoint!.services.lease.keepAlive(requests, options), this.connection.closedSignal);
          const batchId = ++this.batchId;
          const request: RenewalMessage = { renewals: leases.map((l) => l._renewal()), batchId };
          return this.renewals.exchange(request, batchId, this.answerTimeoutMs());
        });
        leases.forEach((lease, i) => {
          const result = answer.results[i];
          const failure = itemError(result);
          if (failure === undefined) lease._renewed(result?.lease, sentAt);
          else this.settleLease(lease, lease._renewalFailed(failure));
        });
        return;
      } catch (thrown) {
        const error = thrown as AgentKeeperError;
        if (error.code !== "UNIMPLEMENTED") {
          for (const lease of leases) this.settleLease(lease, lease._renewalFailed(error));
          return;
        }
        this.fallBack();
      }
    }
    for (const lease of leases) {
      try {
        await lease.renew();
      } catch (error) {
        if (!(error instanceof AgentKeeperError)) throw error;
        this.settleLease(lease, lease._renewalFailed(error));
      }
    }
  }

  private settleAgent(agent: Beating, keep: boolean): void {
    if (!keep) this.agents.delete(agent);
  }

  private settleLease(lease: Renewing, keep: boolean): void {
    if (!keep) this.leases.delete(lease);
  }

  private answerTimeoutMs(): number {
    const timeout = this.connection.defaultTimeoutMs ?? ANSWER_TIMEOUT_MS;
    return this.connection.options.endpoints.length > 1 ? Math.min(timeout, HUNG_ANSWER_MS) : timeout;
  }

  /** Streams go to the node the client talks to now: reopened there when it moved. */
  private follow(): void {
    const endpoint = this.connection.endpoint;
    if (endpoint !== this.endpoint) {
      this.closeStreams();
      this.endpoint = endpoint;
    }
  }

  private fallBack(): void {
    this.unaryOnly = true;
    this.closeStreams();
  }

  /** One message on its stream and its answer. When the stream failed UNAVAILABLE and the client
   * moved to another node (its node went away or hung), the message goes there at once rather
   * than at the next tick: a beat lost on a hung node must not cost an agent its TTL. */
  private async onStream<A>(send: () => Promise<A>): Promise<A> {
    try {
      return await send();
    } catch (thrown) {
      if (!this.failedAndMoved(thrown as AgentKeeperError)) throw thrown;
    }
    try {
      return await send();
    } catch (thrown) {
      this.failedAndMoved(thrown as AgentKeeperError);
      throw thrown;
    }
  }

  /** Closes the streams after a failed round (not on UNIMPLEMENTED: the caller falls back to
   * unary calls); true when the client moved to another node. */
  private failedAndMoved(error: AgentKeeperError): boolean {
    if (error.code === "UNIMPLEMENTED") return false;
    this.streamFailed(error);
    return error.code === "UNAVAILABLE" && this.connection.endpoint !== this.endpoint;
  }

  private streamFailed(error: AgentKeeperError): void {
    this.closeStreams();
    if (error.code === "UNAVAILABLE" && this.endpoint !== undefined) this.connection.moveFrom(this.endpoint.address);
  }

  private closeStreams(): void {
    this.heartbeats?.close();
    this.renewals?.close();
    this.heartbeats = undefined;
    this.renewals = undefined;
  }
}

/** The handles due by `horizon`, at most ITEMS_MAX, with their next due times set. */
function due<T extends { readonly _intervalMs: number }>(handles: Map<T, number>, horizon: number, now: number): T[] {
  const chosen: T[] = [];
  for (const [handle, at] of handles) {
    if (chosen.length >= ITEMS_MAX) break;
    if (at > horizon) continue;
    chosen.push(handle);
    const next = at + handle._intervalMs;
    handles.set(handle, next > now ? next : now + handle._intervalMs);
  }
  return chosen;
}

function itemError(result: { code: number; message: string } | undefined): AgentKeeperError | undefined {
  if (result === undefined) return new Unavailable("the keep-alive answer has fewer results than items", "UNAVAILABLE");
  return errorForCode(result.code, result.message);
}
