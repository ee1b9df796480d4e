// The task queue's worker side: a claimed task with its claim lease, and the loop that claims
// tasks one at a time. It never decides a task's outcome by itself except as documented on
// work(): a handler that returns completes the task, one that throws fails it.
import type { AgentKeeperClient } from "./client.js";
import { FailedPrecondition, NotFound, OutcomeUnknownError, Unavailable } from "./errors.js";
import type { Lease } from "./handles.js";
import type { Task } from "./types.js";

/** A task this agent claimed: finish it with `complete(output)` or `fail(reason)`. */
export interface ClaimedTask extends Task {
  readonly agentId: string;
  /** The claim lease on the task's id (renew it for long work; its token fences writes). */
  readonly lease: Lease;
  /** True once complete() or fail() was called. */
  readonly finished: boolean;
  complete(output?: string | Uint8Array): Promise<void>;
  fail(reason?: string): Promise<void>;
  /** Reset the claim lease's ttl. */
  renew(): Promise<void>;
}

/** @internal */
export function claimedTask(client: AgentKeeperClient, task: Task, agentId: string, lease: Lease): ClaimedTask {
  let finished = false;
  const finish = async (how: () => Promise<void>): Promise<void> => {
    if (finished) throw new Error(`task ${task.id} is already finished`);
    finished = true;
    lease._stopKeepAlive(); // no more renewals; the daemon releases the claim lease itself
    await how();
  };
  return {
    ...task,
    agentId,
    lease,
    get finished() {
      return finished;
    },
    complete: (output) => finish(() => client.completeTask(task.id, agentId, output)),
    fail: (reason = "") => finish(() => client.failTask(task.id, agentId, reason)),
    renew: () => lease.renew(),
  };
}

export interface WorkerOptions {
  /** Stops the loop (a claim in progress is cancelled; a task in hand is finished first). */
  signal?: AbortSignal;
  /** End when no task came for this long (default: never). */
  idleTimeoutMs?: number;
  /** End after this many tasks. */
  maxTasks?: number;
  /** Renew each task's claim lease in the background until it is finished (long work). */
  keepAlive?: boolean;
}

/** Claims tasks for `agentId` one at a time until stopped, idle too long, or `maxTasks` were
 * handed out. A claim that fails UNAVAILABLE (the daemon down, a cluster between leaders; its
 * outcome unknown included) is tried again with backoff: the loop goes on across a failover. */
export async function* claimLoop(client: AgentKeeperClient, agentId: string, options: WorkerOptions): AsyncGenerator<ClaimedTask> {
  let handed = 0;
  let idleSince = 0; // when the wait for the next task began (failed claims do not restart it)
  let backoffMs = 0;
  while (options.maxTasks === undefined || handed < options.maxTasks) {
    if (options.signal?.aborted || client.closed) return;
    if (backoffMs === 0) idleSince = Date.now();
    let waitMs = options.idleTimeoutMs;
    if (waitMs !== undefined && backoffMs > 0) {
      waitMs -= Date.now() - idleSince; // what is left of the wait that failed claims interrupted
      if (waitMs <= 0) return; // idle for idleTimeoutMs
    }
    let task: ClaimedTask | null;
    try {
      task = await client.claimTask(agentId, { waitMs, signal: options.signal });
    } catch (error) {
      if (options.signal?.aborted || client.closed) return;
      if (!(error instanceof Unavailable || error instanceof OutcomeUnknownError)) throw error;
      // A claim that may have taken effect: its lease runs out and the task goes back to PENDING.
      backoffMs = client._nextDelay(backoffMs);
      if (!(await client._pause(backoffMs, options.signal))) return;
      continue;
    }
    backoffMs = 0;
    if (task === null) return; // idle for idleTimeoutMs
    handed++;
    if (options.keepAlive) task.lease.keepAlive();
    try {
      yield task;
    } finally {
      if (!task.finished) {
        // Left the loop (break, an exception) with the task in hand: fail it now, so it is
        // retried at once instead of when its claim lease runs out.
        await task.fail("the worker loop ended before the task was finished").catch(() => undefined);
      }
    }
  }
}

/** What a handler gives: the task's output (or nothing, for an empty one). */
export type TaskHandler = (task: ClaimedTask) => Promise<string | Uint8Array | void> | string | Uint8Array | void;

/** The worker loop: each claimed task goes to `handler`; its return value completes the task, a
 * throw fails it with the error's text (and the loop goes on, as it does when the task turns out
 * no longer to be ours, or when completing it fails UNAVAILABLE or with an unknown outcome).
 * Other errors (the agent is DEAD: NotFound from the claim) end the loop.
 * Resolves with the count handled. */
export async function work(client: AgentKeeperClient, agentId: string, handler: TaskHandler, options: WorkerOptions): Promise<number> {
  let handled = 0;
  for await (const task of claimLoop(client, agentId, options)) {
    handled++;
    let outcome: () => Promise<void>;
    try {
      const output = await handler(task);
      outcome = () => task.complete(output ?? undefined);
    } catch (error) {
      const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
      outcome = () => task.fail(text);
    }
    if (task.finished) continue; // the handler finished it itself
    try {
      await outcome();
    } catch (error) {
      // The task is no longer ours (its claim lease ran out, or it was finished elsewhere): the
      // daemon has put it back or ended it. Or the daemon could not be reached, or the outcome
      // of the call is unknown (a cluster's failover): if it did not take effect, the claim
      // lease runs out and the task goes back to PENDING. Either way the loop goes on.
      const settled = error instanceof FailedPrecondition || error instanceof NotFound;
      if (!(settled || error instanceof Unavailable || error instanceof OutcomeUnknownError)) throw error;
    }
  }
  return handled;
}
