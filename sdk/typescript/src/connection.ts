// The gRPC side of the client: one HTTP/2 connection per endpoint (TLS, bearer token), typed
// service clients on it, and the retry loop with its idempotency table. It never converts
// messages into the SDK's own values and holds no agent, lease or stream state.
import { setTimeout as sleep } from "node:timers/promises";
import { createClient, type CallOptions, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { SecureClientSessionOptions } from "node:http2";
import * as pb from "./gen/agentkeeper/v1/agentkeeper_pb.js";
import { AgentKeeperError, Unavailable, fromCallError, neverSent } from "./errors.js";

/** TLS for a daemon started with `--tls-cert` (mutual TLS with `cert` and `key`). */
export interface TlsOptions {
  /** PEM of the CA that signed the daemon's certificate; the system's roots when absent. */
  ca?: string | Buffer;
  /** PEM client certificate and key, for a daemon started with `--tls-client-ca`. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** The name to check the daemon's certificate against, when it differs from the host. */
  serverName?: string;
}

/** Backoff for retried calls and for reopening dropped watch streams. */
export interface RetryOptions {
  /** Attempts of a unary call, the first included (1: no retries). Default 5. */
  maxAttempts?: number;
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  multiplier?: number;
}

export interface ConnectionOptions {
  endpoints: string[];
  token?: string;
  tls?: TlsOptions | true;
  retry?: RetryOptions;
}

export interface Services {
  registry: Client<typeof pb.RegistryService>;
  lease: Client<typeof pb.LeaseService>;
  election: Client<typeof pb.ElectionService>;
  entitlements: Client<typeof pb.EntitlementsService>;
  task: Client<typeof pb.TaskService>;
  clock: Client<typeof pb.ClockService>;
}

// Safe to send again when the first attempt may or may not have arrived: Deregister of a DEAD
// agent is OK, AcquireLease is re-entrant for its holder, Campaign of a candidate and Resign of a
// non-candidate are no-ops, SetPolicy is an upsert, the rest only read or refresh a deadline.
// Register, ReleaseLease, DeletePolicy, Advance and the task mutations are not: a second
// Register after a lost reply registers a second agent. (The Python SDK's _rpc.py, the same list.)
const IDEMPOTENT = new Set([
  "Heartbeat", "Deregister", "GetAgent", "Find", "Watch",
  "AcquireLease", "RenewLease", "ListLeases",
  "Campaign", "Resign", "WatchElection", "ListElections",
  "SetPolicy", "ListPolicies", "CheckPolicy",
  "GetTask", "ListTasks", "Now",
]);

/** Whether a failed call of `method` may be sent again: idempotent ones on any UNAVAILABLE, the others only when nothing was sent. */
export function shouldRetry(method: string, error: AgentKeeperError): boolean {
  if (error.code !== "UNAVAILABLE") return false;
  return IDEMPOTENT.has(method) || neverSent(error);
}

// Bounds of one message either way: the daemon's default --message-bytes-max is below this.
const MESSAGE_BYTES_MAX = 16 * 1024 * 1024;

/** One HTTP/2 connection to one daemon address and the typed clients on it. */
export class Endpoint {
  readonly address: string;
  readonly services: Services;
  private readonly session: Http2SessionManager;

  constructor(address: string, options: ConnectionOptions) {
    this.address = address;
    const tls = options.tls;
    const baseUrl = `${tls === undefined ? "http" : "https"}://${address}`;
    const nodeOptions: SecureClientSessionOptions = {};
    if (tls !== undefined && tls !== true) {
      if (tls.ca !== undefined) nodeOptions.ca = tls.ca;
      if (tls.cert !== undefined) nodeOptions.cert = tls.cert;
      if (tls.key !== undefined) nodeOptions.key = tls.key;
      if (tls.serverName !== undefined) nodeOptions.servername = tls.serverName;
    }
    this.session = new Http2SessionManager(baseUrl, { idleConnectionTimeoutMs: 60_000 }, nodeOptions);
    const interceptors: Interceptor[] = [];
    const token = options.token;
    if (token !== undefined) {
      interceptors.push((next) => async (request) => {
        request.header.set("authorization", `Bearer ${token}`);
        return next(request);
      });
    }
    const transport = createGrpcTransport({
      baseUrl,
      sessionManager: this.session,
      interceptors,
      readMaxBytes: MESSAGE_BYTES_MAX,
      writeMaxBytes: MESSAGE_BYTES_MAX,
    });
    this.services = {
      registry: createClient(pb.RegistryService, transport),
      lease: createClient(pb.LeaseService, transport),
      election: createClient(pb.ElectionService, transport),
      entitlements: createClient(pb.EntitlementsService, transport),
      task: createClient(pb.TaskService, transport),
      clock: createClient(pb.ClockService, transport),
    };
  }

  close(): void {
    this.session.abort();
  }
}

/** A call's own options: a timeout in ms (null: none) and a signal that cancels it. */
export interface CallControl {
  timeoutMs?: number | null;
  signal?: AbortSignal;
}

/** The client's connections: the endpoints in turn, the default timeout, retries, and closing. */
export class Connection {
  readonly options: ConnectionOptions;
  readonly defaultTimeoutMs: number | null;
  private readonly endpoints: Endpoint[];
  private current = 0;
  private readonly closing = new AbortController();
  private readonly extra = new Set<Endpoint>();

  constructor(options: ConnectionOptions, defaultTimeoutMs: number | null) {
    if (options.endpoints.length === 0) throw new TypeError("at least one endpoint is needed");
    this.options = options;
    this.defaultTimeoutMs = defaultTimeoutMs;
    this.endpoints = options.endpoints.map((address) => new Endpoint(address, options));
  }

  get closed(): boolean {
    return this.closing.signal.aborted;
  }

  /** Aborted when the client closes: every call and stream listens to it. */
  get closedSignal(): AbortSignal {
    return this.closing.signal;
  }

  get endpoint(): Endpoint {
    return this.endpoints[this.current]!;
  }

  /** The next endpoint in turn (after an UNAVAILABLE from this one). */
  rotate(): void {
    this.current = (this.current + 1) % this.endpoints.length;
  }

  /** A connection of its own to the current endpoint, for a long stream (a slow watcher would
   * otherwise hold the shared connection's flow-control window and stall heartbeats). */
  ownEndpoint(): Endpoint {
    const endpoint = new Endpoint(this.endpoint.address, this.options);
    this.extra.add(endpoint);
    return endpoint;
  }

  release(endpoint: Endpoint): void {
    endpoint.close();
    this.extra.delete(endpoint);
  }

  /** The signal a call listens to: its own and the client's closing. */
  signal(own?: AbortSignal): AbortSignal {
    return own === undefined ? this.closing.signal : AbortSignal.any([own, this.closing.signal]);
  }

  /** Delays between attempts: `maxAttempts - 1` of them, with jitter. */
  *delays(): Generator<number> {
    const retry = this.options.retry ?? {};
    let delay = retry.initialBackoffMs ?? 50;
    for (let i = 1; i < (retry.maxAttempts ?? 5); i++) {
      yield delay * (0.5 + Math.random() / 2);
      delay = Math.min(delay * (retry.multiplier ?? 2), retry.maxBackoffMs ?? 2000);
    }
  }

  /** The stream-reconnect delay after `previousMs` (0 for the first). */
  nextStreamDelay(previousMs: number): number {
    const retry = this.options.retry ?? {};
    if (previousMs <= 0) return retry.initialBackoffMs ?? 50;
    return Math.min(previousMs * (retry.multiplier ?? 2), retry.maxBackoffMs ?? 2000);
  }

  /** One unary call with the retry policy; the timeout covers the retries too. */
  async unary<T>(method: string, call: (services: Services, options: CallOptions) => Promise<T>, control: CallControl = {}): Promise<T> {
    const budget = control.timeoutMs === undefined ? this.defaultTimeoutMs : control.timeoutMs;
    const end = budget === null ? null : Date.now() + budget;
    const signal = this.signal(control.signal);
    const delays = this.delays();
    for (;;) {
      if (this.closed) throw new Unavailable("the client is closed", "UNAVAILABLE");
      const options: CallOptions = { signal };
      if (end !== null) options.timeoutMs = Math.max(1, end - Date.now());
      try {
        return await call(this.endpoint.services, options);
      } catch (thrown) {
        let error = fromCallError(thrown);
        if (error.code === "CANCELLED" && !signal.aborted) {
          // Nobody cancelled it: the connection went away under the call (connect reports the
          // stream's reset as CANCELLED). The call may or may not have arrived.
          error = new Unavailable(`the connection closed during the call (${error.details})`, "UNAVAILABLE", { cause: thrown });
        }
        if (!this.closed && !signal.aborted && shouldRetry(method, error)) {
          const next = delays.next();
          if (!next.done && (end === null || Date.now() + next.value < end)) {
            this.rotate();
            await this.pause(next.value, signal);
            continue;
          }
        }
        throw error;
      }
    }
  }

  /** Wait `ms`; false if `signal` (or the client's closing) fired first. */
  async pause(ms: number, signal?: AbortSignal): Promise<boolean> {
    try {
      await sleep(ms, undefined, { signal: this.signal(signal) });
      return true;
    } catch {
      return false;
    }
  }

  close(): void {
    this.closing.abort();
    for (const endpoint of [...this.endpoints, ...this.extra]) endpoint.close();
    this.extra.clear();
  }
}
