// A client's endpoints: `endpoints: ["h1:7070", "h2:7070", ...]` (the nodes of a cluster) or one
// `address`, checked; and which of them the client talks to now. No I/O: it never decides
// whether a failed call is sent again (connection.ts does), only where to. (The Python SDK's
// _endpoints.py, the same rules.)
import { InvalidArgument } from "./errors.js";

const DEFAULT_PORT = 7070;
const PORT_MAX = 65535;

function invalid(message: string): InvalidArgument {
  return new InvalidArgument(message, "INVALID_ARGUMENT");
}

/** An address on the daemon's Unix socket (its `--uds PATH`): `unix:/run/agentkeeper.sock`. */
export const UNIX_PREFIX = "unix:";

/** The socket path of a `unix:PATH` address; undefined for `host:port`. */
export function unixPath(address: string): string | undefined {
  return address.startsWith(UNIX_PREFIX) ? address.slice(UNIX_PREFIX.length) : undefined;
}

/** One `host:port` (`[v6]:port`; a host alone means port 7070), or `unix:PATH`, as the address to dial. */
export function checkEndpoint(endpoint: unknown): string {
  if (typeof endpoint !== "string" || endpoint.trim() === "") {
    throw invalid(`each endpoint must be a "host:port" string, got ${JSON.stringify(endpoint)}`);
  }
  const text = endpoint.trim();
  if (text.startsWith(UNIX_PREFIX)) {
    if (text === UNIX_PREFIX) throw invalid(`endpoint "${endpoint}" names no socket path (unix:PATH)`);
    return text;
  }
  let host: string;
  let port: string;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    const after = close < 0 ? "" : text.slice(close + 1, close + 2);
    if (close < 0 || (after !== "" && after !== ":")) throw invalid(`endpoint "${endpoint}" is not "[ipv6]:port"`);
    host = text.slice(0, close + 1);
    port = text.slice(close + 2);
  } else if (text.split(":").length > 2) {
    throw invalid(`endpoint "${endpoint}": an IPv6 address goes in brackets, "[::1]:7070"`);
  } else {
    const colon = text.indexOf(":");
    host = colon < 0 ? text : text.slice(0, colon);
    port = colon < 0 ? "" : text.slice(colon + 1);
  }
  if (host === "" || host === "[]") throw invalid(`endpoint "${endpoint}" has no host`);
  if (port === "") return `${host}:${DEFAULT_PORT}`;
  if (!/^[0-9]+$/.test(port) || Number(port) < 1 || Number(port) > PORT_MAX) {
    throw invalid(`the port in endpoint "${endpoint}" is not a number 1..=${PORT_MAX}`);
  }
  return `${host}:${Number(port)}`;
}

/** The addresses a client talks to: `endpoints` checked, in order; else the one `address`
 * (`$AGENTKEEPER_ADDRESS`, else 127.0.0.1:7070, when absent). Both at once is an error: which
 * would win is not obvious. */
export function resolveEndpoints(address: string | undefined, endpoints: readonly string[] | undefined, fallback: string): string[] {
  if (endpoints === undefined) {
    const target = address ?? fallback;
    return [target.startsWith(UNIX_PREFIX) ? checkEndpoint(target) : target];
  }
  if (address !== undefined) throw invalid("pass either endpoints or address, not both");
  if (typeof endpoints === "string" || !Array.isArray(endpoints)) {
    throw invalid(`endpoints must be an array of "host:port" strings, got ${JSON.stringify(endpoints)}`);
  }
  const targets = endpoints.map(checkEndpoint);
  if (targets.length === 0) throw invalid("endpoints must name at least one node");
  const repeated = [...new Set(targets.filter((t, i) => targets.indexOf(t) !== i))].sort();
  if (repeated.length > 0) throw invalid(`endpoints name ${repeated.join(", ")} more than once`);
  return targets;
}

/**
 * The endpoints in order and the one the client talks to now: the first, until a call or a
 * stream finds that node down (or answered UNAVAILABLE) and moves the client on to the next,
 * round the ring. Several calls failing on the same node move it once.
 */
export class EndpointRing {
  readonly addresses: readonly string[];
  private index = 0;

  constructor(addresses: readonly string[]) {
    if (addresses.length === 0) throw new TypeError("at least one endpoint is needed");
    this.addresses = [...addresses];
  }

  /** The index of the address the client talks to now. */
  get current(): number {
    return this.index;
  }

  /** After `address` failed: the next address if `address` is still the current one (the
   * client now talks to it), else undefined (already moved on, or the only endpoint). */
  moveFrom(address: string): string | undefined {
    if (this.addresses.length === 1 || this.addresses[this.index] !== address) return undefined;
    this.index = (this.index + 1) % this.addresses.length;
    return this.addresses[this.index];
  }
}
