// The gRPC side of the client: one HTTP/2 connection per endpoint (TLS, bearer token), typed
// service clients on it, the retry loop with its idempotency table, and the rules for which
// failures are sent again and which leave a write's outcome unknown (the Python SDK's
// _common.py, the same rules). It never converts messages into the SDK's own values and holds
// no agent, lease or stream state.
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient, type CallOptions, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { SecureClientSessionOptions } from "node:http2";
import { connect } from "node:net";
import { EndpointRing, unixPath } from "./endpoints.js";
import * as pb from "./gen/agentkeeper/v1/agentkeeper_pb.js";
import { ClusterService } from "./gen/agentkeeper/v1/cluster_pb.js";
import { AgentKeeperError, Unavailable, callFailure, neverSent, outcomeUnknown } from "./errors.js";

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
  cluster: Client<typeof ClusterService>;
}

// Safe to send again when the first attempt may or may not have arrived: Deregister of a DEAD
// agent is OK, AcquireLease is re-entrant for its holder, Campaign of a candidate and Resign of a
// non-candidate are no-ops, SetPolicy is an upsert, the rest only read or refresh a deadline.
// Register, ReleaseLease, DeletePolicy, Advance and the task mutations are not: a second
// Register after a lost reply registers a second agent. In a cluster a write that "may yet take
// effect" commits before any later write or never, so repeating an idempotent one after it stays
// safe. (The Python SDK's _rpc.py, the same list; "Status" is ClusterService.Status.)
const IDEMPOTENT = new Set([
  "Heartbeat", "Deregister", "GetAgent", "Find", "Watch",
  "AcquireLease", "RenewLease", "ListLeases",
  "Campaign", "Resign", "WatchElection", "ListElections",
  "SetPolicy", "ListPolicies", "CheckPolicy",
  "GetTask", "ListTasks", "Now", "Status",
]);

// The daemon's words for a call it answered without carrying it out anywhere. (Its "may yet take
// effect", on a write forwarded to a leader that died or lost its quorum, or taken by a daemon
// that stopped before answering, is the opposite.)
const REFUSED_MARKERS = [
  "has known no leader", // the call waited for an election that did not end in time
  "the cluster refused the write", // the leader could not propose it (a leadership transfer)
  "the write was not sent", // the follower could not reach the leader to hand it the write
  "the daemon is shutting down", // a stopping daemon refused it before taking it
];

/** True when an UNAVAILABLE failure surely left no trace: the request never left this process,
 * or a cluster node refused it before proposing it. */
export function notCarriedOut(error: AgentKeeperError): boolean {
  if (error.code !== "UNAVAILABLE") return false;
  return neverSent(error) || REFUSED_MARKERS.some((marker) => error.details.includes(marker));
}

/** The metadata that numbers a creating write (Register, CreateTask): the daemon applies a
 * request once per (client id, number) and answers a repeat as it answered the first, so such a
 * call is safe to send again. The id is random per client; the number is new per call, kept
 * across its retries. (The Python SDK's _common.py, the same names.) */
export const CLIENT_ID_HEADER = "agentkeeper-client-id";
export const REQUEST_SEQ_HEADER = "agentkeeper-request-seq";

/** Whether a failed call of `method` may be sent again (after a backoff delay, to the next
 * endpoint when there are several): idempotent and numbered ones on any UNAVAILABLE; the others
 * (ReleaseLease, DeletePolicy, Advance, the task mutations) only when surely not carried out, as
 * a second DeletePolicy would answer NOT_FOUND. */
export function shouldRetry(method: string, error: AgentKeeperError, numbered = false): boolean {
  if (error.code !== "UNAVAILABLE") return false;
  return IDEMPOTENT.has(method) || numbered || notCarriedOut(error);
}

/** What a call of `method` that failed with `error`, and is not sent again, throws: an
 * `OutcomeUnknownError` for a call not safe to repeat that may have been carried out
 * (UNAVAILABLE after it may have reached the daemon, or its deadline passed), else `error`. */
export function failedForGood(method: string, error: AgentKeeperError): AgentKeeperError {
  if (IDEMPOTENT.has(method)) return error;
  if (error.code === "DEADLINE_EXCEEDED" || (error.code === "UNAVAILABLE" && !notCarriedOut(error))) {
    return outcomeUnknown(method, error);
  }
  return error;
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
    const socket = unixPath(address);
    // On the daemon's Unix socket the URL only names the HTTP/2 authority; the connection goes to the path.
    const baseUrl = `${tls === undefined ? "http" : "https"}://${socket === undefined ? address : "localhost"}`;
    const nodeOptions: SecureClientSessionOptions = {};
    if (socket !== undefined) nodeOptions.createConnection = () => connect(socket);
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
      cluster: createClient(ClusterService, transport),
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
  private readonly ring: EndpointRing;
  private readonly closing = new AbortController();
  private readonly extra = new Set<Endpoint>();
  /** Numbers this client's creating writes (see `unary`): a random id, a counter. */
  private readonly clientId = randomUUID().replaceAll("-", "");
  private requestSeq = 0;

  constructor(options: ConnectionOptions, defaultTimeoutMs: number | null) {
    this.ring = new EndpointRing(options.endpoints);
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

  /** The endpoint the client talks to now. */
  get endpoint(): Endpoint {
    return this.endpoints[this.ring.current]!;
  }

  /** `address` is down or answered UNAVAILABLE: talk to the next endpoint from now on (nothing
   * happens if the client already moved on, or has one endpoint). */
  moveFrom(address: string): void {
    this.ring.moveFrom(address);
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

  /** One unary call with the retry policy; the timeout covers the retries too. A retry goes to
   * the next endpoint (when there are several). A call not safe to repeat that failed after it
   * may have been carried out throws `OutcomeUnknownError`. `numbered`: the call carries this
   * client's id and a new request number, the same on every retry, so the daemon applies it once
   * and it is retried like an idempotent call. */
  async unary<T>(
    method: string,
    call: (services: Services, options: CallOptions) => Promise<T>,
    control: CallControl = {},
    numbered = false,
  ): Promise<T> {
    const budget = control.timeoutMs === undefined ? this.defaultTimeoutMs : control.timeoutMs;
    const end = budget === null ? null : Date.now() + budget;
    const signal = this.signal(control.signal);
    const delays = this.delays();
    const headers = numbered
      ? { [CLIENT_ID_HEADER]: this.clientId, [REQUEST_SEQ_HEADER]: String(++this.requestSeq) }
      : undefined;
    for (;;) {
      if (this.closed) throw new Unavailable("the client is closed", "UNAVAILABLE");
      const options: CallOptions = { signal };
      if (headers !== undefined) options.headers = headers;
      if (end !== null) options.timeoutMs = Math.max(1, end - Date.now());
      const endpoint = this.endpoint;
      try {
        return await call(endpoint.services, options);
      } catch (thrown) {
        // Nobody cancelled it and it failed without a status from the daemon: the connection
        // went away under the call, which may or may not have arrived.
        const error = callFailure(thrown, signal.aborted);
        if (!this.closed && !signal.aborted && shouldRetry(method, error, numbered)) {
          this.moveFrom(endpoint.address);
          const next = delays.next();
          if (!next.done && (end === null || Date.now() + next.value < end)) {
            await this.pause(next.value, signal);
            continue;
          }
        }
        throw failedForGood(method, error);
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
