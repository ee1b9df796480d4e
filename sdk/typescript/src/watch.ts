// What watch() gives: the event stream as an async iterable that reopens itself where it
// stopped, on a connection of its own to the node the client talks to now (another node of a
// cluster after its own went down), handing out each event exactly once and in order. It
// never drops an event silently: a gap it cannot close ends the stream with OutOfRange.
import type { Connection, Endpoint } from "./connection.js";
import { AgentKeeperError, OutOfRange, Unavailable, callFailure } from "./errors.js";
import type * as pb from "./gen/agentkeeper/v1/agentkeeper_pb.js";
import { eventFromPb, type WatchEvent } from "./types.js";

/** Statuses after which a dropped stream is reopened (the daemon restarting, a reset connection). */
const REOPEN = new Set(["UNAVAILABLE", "CANCELLED", "UNKNOWN", "INTERNAL", "ABORTED", "DEADLINE_EXCEEDED"]);

/** Events read ahead of the consumer; past this the stream stops reading (HTTP/2 flow control
 * then holds the daemon back, which cuts a watcher that stays behind off with RESOURCE_EXHAUSTED). */
const READ_AHEAD_MAX = 1024;

type Identity = string;

/**
 * Where a stream resumes, and the check that the daemon still has the same history (the Python
 * SDK's EventCursor). Sequences identify events only within one history: a daemon restarted
 * without --data-dir numbers from 1 again. So a stream reopens at the last delivered event
 * itself; the daemon must hand that very event back first, and it is skipped. Anything else
 * means events in between cannot be known: OutOfRange.
 */
export class EventCursor {
  lastSequence: bigint;
  private lastIdentity: { sequence: bigint; identity: Identity } | undefined;
  private expect: { sequence: bigint; identity: Identity } | undefined;
  private skipCheckOnce = false;

  constructor(private readonly fromSequence: bigint) {
    this.lastSequence = fromSequence > 0n ? fromSequence - 1n : 0n;
  }

  get hasResumePoint(): boolean {
    return this.lastSequence > 0n;
  }

  requestFrom(): bigint {
    this.expect = undefined;
    if (this.lastIdentity !== undefined && !this.skipCheckOnce) {
      this.expect = this.lastIdentity;
      return this.lastIdentity.sequence;
    }
    this.skipCheckOnce = false;
    return this.lastSequence > 0n ? this.lastSequence + 1n : this.fromSequence;
  }

  /** True for a new event to hand out; false for one handed out before a reconnect. */
  accept(message: pb.Event): boolean {
    const at = message.occurredAt;
    const identity = `${message.topic}|${at?.seconds ?? 0n}|${at?.nanos ?? 0}|${message.payload?.typeUrl ?? ""}`;
    const sequence = message.sequenceNumber;
    if (this.expect !== undefined) {
      const expected = this.expect;
      this.expect = undefined;
      if (expected.sequence === sequence && expected.identity === identity) return false;
      throw new OutOfRange(
        `cannot resume the watch after event #${expected.sequence}: the daemon no longer has that event as it ` +
          `was delivered (first event back: #${sequence} ${message.topic}); it was restarted without --data-dir ` +
          "or is another daemon, so events may have been missed",
        "OUT_OF_RANGE",
      );
    }
    if (sequence <= this.lastSequence) return false;
    this.lastSequence = sequence;
    this.lastIdentity = { sequence, identity };
    return true;
  }

  /** OUT_OF_RANGE while asking for the last delivered event again: it may just have left the
   * daemon's window. Reopen once from the next one, without the check. */
  reopenAfterOutOfRange(): boolean {
    if (this.expect === undefined) return false;
    this.expect = undefined;
    this.skipCheckOnce = true;
    return true;
  }
}

export interface WatchOptions {
  /** Replay retained events from this sequence on, then go live (0: live only). */
  fromSequence?: number | bigint;
  /** Ends the stream (iteration then finishes without an error). */
  signal?: AbortSignal;
}

/**
 * Events whose topic starts with one of the topics, in sequence order. Iterate it with
 * `for await`; `await stream.opened()` returns once the daemon has subscribed it (nothing after
 * that is missed). A dropped stream is reopened with backoff and resumes after the last event
 * handed out. `close()` (or breaking out of the loop, or the signal) ends it.
 */
export class WatchStream implements AsyncIterable<WatchEvent>, AsyncDisposable {
  readonly topics: string[];
  /** How many times the stream was reopened after a drop. */
  reconnects = 0;
  private readonly cursor: EventCursor;
  private readonly stopping = new AbortController();
  private readonly signal: AbortSignal;
  private readonly buffer: WatchEvent[] = [];
  private wake: (() => void) | undefined;
  private pump: Promise<void> | undefined;
  private failure: AgentKeeperError | undefined;
  private finished = false;
  private subscribed: { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void };

  /** @internal */
  constructor(
    private readonly connection: Connection,
    topics: string[],
    options: WatchOptions,
  ) {
    this.topics = topics;
    this.cursor = new EventCursor(BigInt(options.fromSequence ?? 0));
    const signals = [this.stopping.signal, connection.closedSignal];
    if (options.signal !== undefined) signals.push(options.signal);
    this.signal = AbortSignal.any(signals);
    let resolve!: () => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
    promise.catch(() => undefined); // an error nobody asked opened() about surfaces from iteration
    this.subscribed = { promise, resolve, reject };
  }

  /** Sequence of the last event handed out (0n: none yet). */
  get lastSequence(): bigint {
    return this.cursor.lastSequence;
  }

  /** Starts the stream if needed; resolves once the daemon has subscribed it, rejects with the
   * error that ended it first (OutOfRange for a `fromSequence` no longer retained), or with
   * Unavailable (and closes the stream) if it did not open within `timeoutMs` (default: the
   * client's timeout) while the daemon could not be reached. */
  async opened(options: { timeoutMs?: number | null } = {}): Promise<this> {
    this.start();
    const timeoutMs = options.timeoutMs === undefined ? this.connection.defaultTimeoutMs : options.timeoutMs;
    if (timeoutMs === null) {
      await this.subscribed.promise;
      return this;
    }
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<"late">((resolve) => {
      timer = setTimeout(() => resolve("late"), timeoutMs);
      timer.unref();
    });
    try {
      if ((await Promise.race([this.subscribed.promise, late])) === "late") {
        await this.close();
        throw new Unavailable(`the watch stream did not open within ${timeoutMs} ms`, "UNAVAILABLE");
      }
    } finally {
      clearTimeout(timer);
    }
    return this;
  }

  private start(): void {
    this.pump ??= this.run().finally(() => {
      this.finished = true;
      this.subscribed.reject(this.failure ?? new AgentKeeperError("the watch ended before it opened", "CANCELLED"));
      this.wake?.();
    });
  }

  private async run(): Promise<void> {
    let delayMs = 0;
    while (!this.signal.aborted) {
      const endpoint = this.connection.ownEndpoint();
      try {
        await this.readOnce(endpoint);
        delayMs = 0; // a clean end (the daemon draining): reopen at once
      } catch (thrown) {
        if (this.signal.aborted) return;
        const error = callFailure(thrown, false);
        if (error.code === "OUT_OF_RANGE" && this.cursor.reopenAfterOutOfRange()) continue;
        if (!REOPEN.has(error.code)) {
          this.failure = error;
          return;
        }
        // Its node is down or answered UNAVAILABLE: the client moves on, and the stream is
        // reopened there (every node numbers events alike, so the cursor holds across nodes).
        if (error.code === "UNAVAILABLE") this.connection.moveFrom(endpoint.address);
        delayMs = this.connection.nextStreamDelay(delayMs);
      } finally {
        this.connection.release(endpoint);
      }
      if (this.signal.aborted) return;
      this.reconnects++;
      if (delayMs > 0 && !(await this.connection.pause(delayMs, this.signal))) return;
    }
  }

  private async readOnce(endpoint: Endpoint): Promise<void> {
    const request = { topics: this.topics, fromSequence: this.cursor.requestFrom() };
    const stream = endpoint.services.registry.watch(request, {
      signal: this.signal,
      onHeader: () => this.subscribed.resolve(),
    });
    for await (const message of stream) {
      if (!this.cursor.accept(message)) continue;
      this.buffer.push(eventFromPb(message));
      this.wake?.();
      while (this.buffer.length >= READ_AHEAD_MAX && !this.signal.aborted) {
        await new Promise<void>((resolve) => (this.wake = resolve));
      }
    }
  }

  async *[Symbol.asyncIterator](): AsyncIterator<WatchEvent> {
    this.start();
    try {
      for (;;) {
        const event = this.buffer.shift();
        if (event !== undefined) {
          this.wake?.(); // room again for a pump held at READ_AHEAD_MAX
          yield event;
          continue;
        }
        if (this.finished) {
          if (this.failure !== undefined) throw this.failure;
          return;
        }
        await new Promise<void>((resolve) => (this.wake = resolve));
      }
    } finally {
      if (!this.finished) await this.close();
    }
  }

  /** Stop the stream and wait until its connection is closed. Safe to call more than once. */
  async close(): Promise<void> {
    this.stopping.abort();
    this.wake?.();
    await this.pump;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
