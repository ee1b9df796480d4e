// The package's public names. Nothing is defined here: each name lives in the module that owns it.
export { AgentKeeperClient } from "./client.js";
export type { AcquireOptions, ClaimOptions, ClientOptions, CreateTaskOptions, PolicyInput, RegisterOptions } from "./client.js";
export type { CallControl, RetryOptions, TlsOptions } from "./connection.js";
export { EmbeddedDaemon, findBinary } from "./embedded.js";
export type { ClockMode, EmbeddedOptions } from "./embedded.js";
export {
  AgentKeeperError,
  Cancelled,
  DeadlineExceeded,
  FailedPrecondition,
  Internal,
  InvalidArgument,
  NotFound,
  OutcomeUnknownDeadlineError,
  OutcomeUnknownError,
  OutOfRange,
  PermissionDenied,
  ResourceExhausted,
  Unauthenticated,
  Unavailable,
  Unimplemented,
} from "./errors.js";
export type { StatusName } from "./errors.js";
export { Agent, Lease } from "./handles.js";
export type { AgentOptions, KeepAliveOptions } from "./handles.js";
export type { ClaimedTask, TaskHandler, WorkerOptions } from "./tasks.js";
export type * from "./types.js";
export { WatchStream } from "./watch.js";
export type { WatchOptions } from "./watch.js";
