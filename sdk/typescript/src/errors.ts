// Typed errors: one class per gRPC status the daemon answers with, and the translation from
// connect's ConnectError into them. This module owns the mapping only; it never retries or
// decides what a caller should do about an error.
import { Code, ConnectError } from "@connectrpc/connect";

/** gRPC status names, as the daemon's own messages and the other SDKs spell them. */
export type StatusName =
  | "CANCELLED"
  | "UNKNOWN"
  | "INVALID_ARGUMENT"
  | "DEADLINE_EXCEEDED"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "PERMISSION_DENIED"
  | "RESOURCE_EXHAUSTED"
  | "FAILED_PRECONDITION"
  | "ABORTED"
  | "OUT_OF_RANGE"
  | "UNIMPLEMENTED"
  | "INTERNAL"
  | "UNAVAILABLE"
  | "DATA_LOSS"
  | "UNAUTHENTICATED";

const NAMES: Record<Code, StatusName> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

/** A call to the daemon failed. `code` is the gRPC status name, `details` the daemon's sentence. */
export class AgentKeeperError extends Error {
  readonly code: StatusName;
  readonly details: string;

  constructor(details: string, code: StatusName = "UNKNOWN", options?: { cause?: unknown }) {
    super(`${code}: ${details}`, options);
    this.name = new.target.name;
    this.code = code;
    this.details = details;
  }
}

/** The agent, lease, policy or task does not exist (or the agent is DEAD). */
export class NotFound extends AgentKeeperError {}
/** A holder or fencing-token mismatch, or a role that may not make the call. */
export class PermissionDenied extends AgentKeeperError {}
/** No token, or a token the daemon does not know (`--auth-tokens`). */
export class Unauthenticated extends AgentKeeperError {}
/** Bad input; the message names the field. */
export class InvalidArgument extends AgentKeeperError {}
/** The call does not fit the state: an UNREACHABLE agent claiming, a manual-clock call on the real clock. */
export class FailedPrecondition extends AgentKeeperError {}
/** A named limit was reached, or the daemon is overloaded, or a watcher fell too far behind. */
export class ResourceExhausted extends AgentKeeperError {}
/** A watch cannot resume where it stopped: the daemon no longer retains those events. */
export class OutOfRange extends AgentKeeperError {}
/** No connection to the daemon, or it is shutting down. */
export class Unavailable extends AgentKeeperError {}
/** The daemon does not know the call (an older daemon). */
export class Unimplemented extends AgentKeeperError {}
/** The call's timeout passed. */
export class DeadlineExceeded extends AgentKeeperError {}
/** The call was cancelled (an AbortSignal, or the client closed). */
export class Cancelled extends AgentKeeperError {}
/** The daemon failed in a way it did not expect. */
export class Internal extends AgentKeeperError {}

/** True for the two outcome-unknown classes (one is an Unavailable, the other a DeadlineExceeded). */
function isOutcomeUnknown(value: unknown): boolean {
  return value instanceof AgentKeeperError && (value as { outcomeUnknown?: unknown }).outcomeUnknown === true;
}

/**
 * A write that is not safe to repeat (`register`, `createTask`, `release`, ...) failed after it
 * was sent, so it may or may not have taken effect: the node it went through died or lost its
 * leader before the write was committed ("it may yet take effect"), or the connection broke in
 * flight. The client does not send it again (that could act twice); look (`find`, `getTask`,
 * `listLeases`, ...) before you try again. An `Unavailable`, so handlers of that still catch it;
 * `instanceof OutcomeUnknownError` is also true for an `OutcomeUnknownDeadlineError`. `cause` is
 * the failure itself.
 */
export class OutcomeUnknownError extends Unavailable {
  readonly outcomeUnknown = true;

  static [Symbol.hasInstance](value: unknown): boolean {
    return isOutcomeUnknown(value);
  }
}

/** A write that is not safe to repeat ran out of time after it was sent: it may or may not have
 * taken effect. A `DeadlineExceeded` (its code), and `instanceof OutcomeUnknownError` too. */
export class OutcomeUnknownDeadlineError extends DeadlineExceeded {
  readonly outcomeUnknown = true;
}

/** The error for a call of `method` (not safe to repeat) that failed with `error` after it may have been sent. */
export function outcomeUnknown(method: string, error: AgentKeeperError): AgentKeeperError {
  const details =
    `${method} may or may not have taken effect (${error.details}); it was not sent again, since ` +
    "a second one could act twice: look before trying again";
  return error.code === "DEADLINE_EXCEEDED"
    ? new OutcomeUnknownDeadlineError(details, "DEADLINE_EXCEEDED", { cause: error })
    : new OutcomeUnknownError(details, "UNAVAILABLE", { cause: error });
}

const CLASSES: Partial<Record<StatusName, new (details: string, code?: StatusName, options?: { cause?: unknown }) => AgentKeeperError>> = {
  NOT_FOUND: NotFound,
  PERMISSION_DENIED: PermissionDenied,
  UNAUTHENTICATED: Unauthenticated,
  INVALID_ARGUMENT: InvalidArgument,
  FAILED_PRECONDITION: FailedPrecondition,
  RESOURCE_EXHAUSTED: ResourceExhausted,
  OUT_OF_RANGE: OutOfRange,
  UNAVAILABLE: Unavailable,
  UNIMPLEMENTED: Unimplemented,
  DEADLINE_EXCEEDED: DeadlineExceeded,
  CANCELLED: Cancelled,
  INTERNAL: Internal,
};

/** The most specific error class for a status. */
export function errorFor(code: StatusName, details: string, cause?: unknown): AgentKeeperError {
  const Class = CLASSES[code] ?? AgentKeeperError;
  return new Class(details, code, { cause });
}

/** The error a numeric gRPC status code stands for (a keep-alive item's result); undefined for 0 (OK). */
export function errorForCode(code: number, details: string): AgentKeeperError | undefined {
  if (code === 0) return undefined;
  return errorFor(NAMES[code as Code] ?? "UNKNOWN", details);
}

/** Any error a call threw, as an AgentKeeperError (an AbortError from a signal is CANCELLED). */
export function fromCallError(error: unknown): AgentKeeperError {
  if (error instanceof AgentKeeperError) return error;
  const connect = ConnectError.from(error);
  return errorFor(NAMES[connect.code] ?? "UNKNOWN", connect.rawMessage, error);
}

// Codes connect gives a failure of the connection itself (a reset, a destroyed stream, a session
// gone away) when it reports it as a status rather than a refused connection.
const BROKEN_CONNECTION = new Set<StatusName>(["CANCELLED", "ABORTED", "INTERNAL", "UNKNOWN"]);

/** True when a call failed because its connection broke (read ECONNRESET, a stream destroyed)
 * rather than with a status the daemon sent. A caller's own cancellation is one too: tell them
 * apart by the call's signal. */
export function connectionBroke(error: AgentKeeperError): boolean {
  const cause = error.cause;
  return cause instanceof ConnectError && !cause.isWireError && BROKEN_CONNECTION.has(error.code);
}

/** A failure of a call that nobody cancelled, as the SDK reports it: a broken connection is
 * UNAVAILABLE (connect says ABORTED, CANCELLED or INTERNAL), as gRPC's own clients say. */
export function callFailure(thrown: unknown, cancelled: boolean): AgentKeeperError {
  const error = fromCallError(thrown);
  if (cancelled || !connectionBroke(error)) return error;
  return new Unavailable(`the connection broke during the call (${error.details})`, "UNAVAILABLE", { cause: thrown });
}

// Errors that mean the connection could not be made: the request never left this process.
const NOT_CONNECTED = new Set(["ECONNREFUSED", "ENOENT", "EHOSTUNREACH", "ENETUNREACH", "EADDRNOTAVAIL", "ENOTFOUND"]);

/** True when a failure happened before the request was sent (so even a non-idempotent call may be sent again). */
export function neverSent(error: AgentKeeperError): boolean {
  if (error.code !== "UNAVAILABLE") return false;
  let cause: unknown = error.cause;
  for (let depth = 0; cause !== undefined && cause !== null && depth < 5; depth++) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === "string" && NOT_CONNECTED.has(code)) return true;
    cause = (cause as { cause?: unknown }).cause;
  }
  return false;
}
