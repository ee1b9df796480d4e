// The SDK's own plain values (agents, leases, elections, policies, tasks, events) and their
// conversion from the generated protobuf messages. Pure functions only: no I/O, no client, and
// no generated message type leaks into what users see.
import { create, createRegistry } from "@bufbuild/protobuf";
import { anyUnpack, timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import * as pb from "./gen/agentkeeper/v1/agentkeeper_pb.js";
import type * as clusterPb from "./gen/agentkeeper/v1/cluster_pb.js";

export type AgentStatusName = "ALIVE" | "UNREACHABLE" | "DEAD";
export type TaskStatusName = "PENDING" | "CLAIMED" | "COMPLETED" | "FAILED" | "DEAD";
export type EffectName = "ALLOW" | "DENY";

export interface Capability {
  name: string;
  description: string;
}

export interface AgentCard {
  name: string;
  description: string;
  version: string;
  tools: string[];
  capabilities: Capability[];
  metadata: Record<string, string>;
}

export interface AgentInfo {
  agentId: string;
  card: AgentCard;
  status: AgentStatusName;
  registeredAt: Date;
  lastHeartbeatAt: Date;
}

export interface LeaseInfo {
  /** The lease's key (`task_id` on the wire). */
  key: string;
  holderAgentId: string;
  /** The fencing token: larger for every new holder of the key. */
  token: bigint;
  acquiredAt: Date;
  expiresAt: Date;
}

export interface ElectionState {
  group: string;
  /** "" when the group has no leader. */
  leaderAgentId: string;
  term: bigint;
  electedAt: Date;
}

export interface ElectionGroup {
  state: ElectionState;
  candidateAgentIds: string[];
  candidatesTotal: number;
}

export interface Policy {
  id: string;
  subject: string;
  action: string;
  resource: string;
  effect: EffectName;
}

export interface CheckResult {
  allowed: boolean;
  reason: string;
}

export interface Task {
  id: string;
  type: string;
  input: Uint8Array;
  output: Uint8Array;
  status: TaskStatusName;
  requiredTools: string[];
  maxRetries: number;
  retryCount: number;
  claimedByAgentId: string;
  failureReason: string;
  createdAt: Date;
  claimedAt: Date | null;
  completedAt: Date | null;
}

/** What an event carries: an agent (`agent.*`), a lease (`lease.*`), an election state (`leader.changed`), a task (`task.*`). */
export type Payload =
  | { kind: "agent"; agent: AgentInfo }
  | { kind: "lease"; lease: LeaseInfo }
  | { kind: "election"; election: ElectionState }
  | { kind: "task"; task: Task }
  | { kind: "none" };

export interface WatchEvent {
  /** Globally increasing; resume a watch after it with `fromSequence: sequence + 1n`. */
  sequence: bigint;
  topic: string;
  occurredAt: Date;
  payload: Payload;
}

const EPOCH = new Date(0);

function date(ts: Timestamp | undefined): Date {
  return ts === undefined ? EPOCH : timestampDate(ts);
}

function optionalDate(ts: Timestamp | undefined): Date | null {
  return ts === undefined ? null : timestampDate(ts);
}

const AGENT_STATUS: Record<number, AgentStatusName> = {
  [pb.AgentStatus.ALIVE]: "ALIVE",
  [pb.AgentStatus.UNREACHABLE]: "UNREACHABLE",
  [pb.AgentStatus.DEAD]: "DEAD",
};

const TASK_STATUS: Record<TaskStatusName, pb.TaskStatus> = {
  PENDING: pb.TaskStatus.PENDING,
  CLAIMED: pb.TaskStatus.CLAIMED,
  COMPLETED: pb.TaskStatus.COMPLETED,
  FAILED: pb.TaskStatus.FAILED,
  DEAD: pb.TaskStatus.DEAD,
};

export function agentFromPb(m: pb.AgentInfo): AgentInfo {
  const card = m.card ?? create(pb.AgentCardSchema);
  return {
    agentId: m.agentId,
    card: {
      name: card.name,
      description: card.description,
      version: card.version,
      tools: [...card.tools],
      capabilities: card.capabilities.map((c) => ({ name: c.name, description: c.description })),
      metadata: { ...card.metadata },
    },
    status: AGENT_STATUS[m.status] ?? "DEAD",
    registeredAt: date(m.registeredAt),
    lastHeartbeatAt: date(m.lastHeartbeatAt),
  };
}

export function leaseFromPb(m: pb.Lease): LeaseInfo {
  return {
    key: m.taskId,
    holderAgentId: m.holderAgentId,
    token: m.token?.value ?? 0n,
    acquiredAt: date(m.acquiredAt),
    expiresAt: date(m.expiresAt),
  };
}

export function electionFromPb(m: pb.ElectionState): ElectionState {
  return { group: m.group, leaderAgentId: m.leaderAgentId, term: m.term, electedAt: date(m.electedAt) };
}

export function electionGroupFromPb(m: pb.ElectionGroup): ElectionGroup {
  return {
    state: electionFromPb(m.state ?? create(pb.ElectionStateSchema)),
    candidateAgentIds: [...m.candidateAgentIds],
    candidatesTotal: m.candidatesTotal,
  };
}

export function policyFromPb(m: pb.Policy): Policy {
  return {
    id: m.id,
    subject: m.subject,
    action: m.action,
    resource: m.resource,
    effect: m.effect === pb.PolicyEffect.DENY ? "DENY" : "ALLOW",
  };
}

export function effectToPb(effect: EffectName): pb.PolicyEffect {
  if (effect !== "ALLOW" && effect !== "DENY") throw new TypeError(`effect must be "ALLOW" or "DENY", got ${String(effect)}`);
  return effect === "DENY" ? pb.PolicyEffect.DENY : pb.PolicyEffect.ALLOW;
}

export function taskStatusToPb(status: TaskStatusName | undefined): pb.TaskStatus {
  if (status === undefined) return pb.TaskStatus.UNSPECIFIED;
  const value = TASK_STATUS[status];
  if (value === undefined) throw new TypeError(`unknown task status ${String(status)}`);
  return value;
}

export function taskFromPb(m: pb.Task): Task {
  const status = (Object.keys(TASK_STATUS) as TaskStatusName[]).find((k) => TASK_STATUS[k] === m.status) ?? "PENDING";
  return {
    id: m.id,
    type: m.type,
    input: m.input,
    output: m.output,
    status,
    requiredTools: [...m.requiredTools],
    maxRetries: m.maxRetries,
    retryCount: m.retryCount,
    claimedByAgentId: m.claimedByAgentId,
    failureReason: m.failureReason,
    createdAt: date(m.createdAt),
    claimedAt: optionalDate(m.claimedAt),
    completedAt: optionalDate(m.completedAt),
  };
}

const PAYLOADS = createRegistry(pb.AgentInfoSchema, pb.LeaseSchema, pb.ElectionStateSchema, pb.TaskSchema);

export function eventFromPb(m: pb.Event): WatchEvent {
  return { sequence: m.sequenceNumber, topic: m.topic, occurredAt: date(m.occurredAt), payload: payloadFromPb(m) };
}

function payloadFromPb(m: pb.Event): Payload {
  const message = m.payload === undefined ? undefined : anyUnpack(m.payload, PAYLOADS);
  if (message === undefined) return { kind: "none" };
  switch (message.$typeName) {
    case "agentkeeper.v1.AgentInfo":
      return { kind: "agent", agent: agentFromPb(message as pb.AgentInfo) };
    case "agentkeeper.v1.Lease":
      return { kind: "lease", lease: leaseFromPb(message as pb.Lease) };
    case "agentkeeper.v1.ElectionState":
      return { kind: "election", election: electionFromPb(message as pb.ElectionState) };
    case "agentkeeper.v1.Task":
      return { kind: "task", task: taskFromPb(message as pb.Task) };
    default:
      return { kind: "none" };
  }
}

/** A string as UTF-8 bytes; bytes as they are. */
export function bytesOf(value: string | Uint8Array | undefined): Uint8Array {
  if (value === undefined) return new Uint8Array();
  return typeof value === "string" ? new TextEncoder().encode(value) : value;
}

/** One member of a cluster as the node asked sees it (`clusterStatus()`). */
export interface ClusterMember {
  id: bigint;
  /** Its address for consensus traffic (`--peer-addr`). */
  peerAddr: string;
  /** "leader", "follower", "candidate" or "learner". */
  role: string;
  voter: boolean;
  /** The last log index it applied, as it last told the node asked (0n: not heard from). */
  appliedIndex: bigint;
  /** How long ago the node asked last heard from it, in ms (0 for itself; null: never). */
  lastHeardMs: number | null;
}

/** A cluster as the node that answered sees it: its own id, the leader it knows (0n: none, an
 * election is under way), the term, its commit and applied log indexes, every member. */
export interface ClusterStatus {
  nodeId: bigint;
  leader: bigint;
  term: bigint;
  commitIndex: bigint;
  appliedIndex: bigint;
  members: ClusterMember[];
}

export function clusterStatusFromPb(m: clusterPb.ClusterStatusResponse): ClusterStatus {
  return {
    nodeId: m.nodeId,
    leader: m.leader,
    term: m.term,
    commitIndex: m.commitIndex,
    appliedIndex: m.appliedIndex,
    members: m.members.map((member) => ({
      id: member.id,
      peerAddr: member.peerAddr,
      role: member.role,
      voter: member.voter,
      appliedIndex: member.appliedIndex,
      lastHeardMs: member.lastHeardMs === undefined ? null : Number(member.lastHeardMs),
    })),
  };
}
