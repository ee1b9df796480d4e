// Embedded mode: find the daemon binary (the Python SDK's order), start it on ports the OS
// picks, learn them from its ready file, stop it on close. It never talks gRPC and never
// leaves a daemon running after close() or the process's exit.
import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

export type ClockMode = "real" | "manual";

export interface EmbeddedOptions {
  /** Path of the daemon; else $AGENTKEEPER_BIN, `agentkeeper` on PATH, this repository's target/{release,debug}, ./daemon/agentkeeper. */
  binary?: string;
  /** gRPC port (default: one the OS picks). */
  port?: number;
  /** Persist state there (`--data-dir`). */
  dataDir?: string;
  /** "manual": time stands still until `client.advance(ms)`. */
  clock?: ClockMode;
  /** Deterministic ids. */
  seed?: number;
  extraArgs?: string[];
  /** Only guards against a daemon that hangs while starting. Default 15 s. */
  startupTimeoutMs?: number;
}

const NAME = process.platform === "win32" ? "agentkeeper.exe" : "agentkeeper";
// dist/embedded.js -> the repository root is three levels up (dist, typescript, sdk).
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const READY_POLL_MS = 10;

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** Where the daemon binary is, in the order documented on `EmbeddedOptions.binary`. */
export function findBinary(explicit?: string): string {
  if (explicit !== undefined) {
    if (!executable(explicit)) throw new Error(`agentkeeper binary "${explicit}" (binary:) is not an executable file`);
    return explicit;
  }
  const env = process.env["AGENTKEEPER_BIN"];
  if (env) {
    if (!executable(env)) throw new Error(`AGENTKEEPER_BIN="${env}" is not an executable file`);
    return env;
  }
  const candidates = (process.env["PATH"] ?? "").split(delimiter).filter(Boolean).map((dir) => join(dir, NAME));
  const roots = [...new Set([REPO, process.cwd()])];
  for (const profile of ["release", "debug"]) for (const root of roots) candidates.push(join(root, "target", profile, NAME));
  for (const root of [process.cwd(), REPO]) candidates.push(join(root, "daemon", NAME));
  const found = candidates.find(executable);
  if (found === undefined) {
    throw new Error(
      "agentkeeper binary not found. Pass binary:, set AGENTKEEPER_BIN, put agentkeeper on PATH, or build it with `cargo build`",
    );
  }
  return found;
}

const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

/** A daemon subprocess owned by a client. */
export class EmbeddedDaemon {
  readonly host = "127.0.0.1";
  readonly binary: string;
  port: number | undefined;
  /** The HTTP port (dashboard, /metrics), known once started. */
  metricsPort: number | undefined;
  private child: ChildProcess | undefined;
  private readyDir: string | undefined;
  private log = "";

  constructor(private readonly options: EmbeddedOptions = {}) {
    if (options.clock !== undefined && options.clock !== "real" && options.clock !== "manual") {
      throw new TypeError(`clock must be "real" or "manual", got ${String(options.clock)}`);
    }
    this.binary = findBinary(options.binary);
    this.port = options.port;
  }

  get address(): string {
    return `${this.host}:${this.port}`;
  }

  /** The daemon's output so far. */
  get logText(): string {
    return this.log;
  }

  command(readyFile: string): string[] {
    const o = this.options;
    const args = [`--addr=${this.host}:${o.port ?? 0}`, `--metrics-addr=${this.host}:0`, `--ready-file=${readyFile}`];
    if (o.clock === "manual") args.push("--clock=manual");
    if (o.seed !== undefined) args.push(`--seed=${Math.trunc(o.seed)}`);
    if (o.dataDir !== undefined) args.push(`--data-dir=${o.dataDir}`);
    args.push(...(o.extraArgs ?? []));
    return args;
  }

  /** Start it and wait until it serves (its ready file appears, after any recovery of dataDir). */
  async start(): Promise<void> {
    this.readyDir = mkdtempSync(join(tmpdir(), "agentkeeper-"));
    const readyFile = join(this.readyDir, "ready.json");
    const child = spawn(this.binary, this.command(readyFile), { stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    live.add(child);
    const keep = (chunk: Buffer): void => {
      if (this.log.length < 1 << 20) this.log += chunk.toString();
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    let exited = false;
    child.once("exit", () => {
      exited = true;
      live.delete(child);
    });
    const deadline = Date.now() + (this.options.startupTimeoutMs ?? 15_000);
    for (;;) {
      const ready = readReady(readyFile);
      if (ready !== undefined) {
        this.port = portOf(ready.grpc);
        this.metricsPort = ready.http === undefined ? undefined : portOf(ready.http);
        return;
      }
      if (exited) {
        const log = this.log;
        await this.stop();
        throw new Error(`agentkeeper daemon failed to start: ${this.binary} ${this.command(readyFile).join(" ")}\n${log}`);
      }
      if (Date.now() > deadline) {
        const log = this.log;
        await this.stop();
        throw new Error(`agentkeeper daemon did not serve within ${this.options.startupTimeoutMs ?? 15_000} ms\n${log}`);
      }
      await sleep(READY_POLL_MS);
    }
  }

  /** SIGTERM, then SIGKILL after `timeoutMs` (the daemon drains calls for up to 5 s). Resolves with the exit code. */
  async stop(timeoutMs = 10_000): Promise<number | null> {
    const child = this.child;
    this.child = undefined;
    let code: number | null = null;
    if (child !== undefined) {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
        await exited;
        clearTimeout(timer);
      }
      code = child.exitCode;
      live.delete(child);
    }
    if (this.readyDir !== undefined) {
      rmSync(this.readyDir, { recursive: true, force: true });
      this.readyDir = undefined;
    }
    return code;
  }

  /** SIGKILL (a crash, for tests). */
  kill(): void {
    this.child?.kill("SIGKILL");
  }

  /** The daemon's process id while it runs (to signal it: SIGSTOP in a test of a hung node). */
  get pid(): number | undefined {
    return this.running ? this.child?.pid : undefined;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }
}

function readReady(path: string): { grpc: string; http?: string } | undefined {
  let text: string;
  try {
    text = readFileSync(path, "utf8"); // the daemon renames the file into place whole
  } catch {
    return undefined;
  }
  const ready = JSON.parse(text) as { grpc?: unknown; http?: unknown };
  if (typeof ready.grpc !== "string") throw new Error(`agentkeeper daemon wrote an unexpected ready file: ${text}`);
  return { grpc: ready.grpc, http: typeof ready.http === "string" ? ready.http : undefined };
}

function portOf(address: string): number {
  return Number(address.slice(address.lastIndexOf(":") + 1));
}
