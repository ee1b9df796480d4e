// Several endpoints without a cluster, as the Python SDK's test_failover.py: which failures are
// sent again (to the next endpoint) and which throw OutcomeUnknownError, checked against the
// daemon's exact messages; endpoints checked as the Python SDK checks them; and several calls
// failing on one node move the client on once.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  AgentKeeperClient,
  DeadlineExceeded,
  InvalidArgument,
  OutcomeUnknownDeadlineError,
  OutcomeUnknownError,
  Unavailable,
} from "../dist/index.js";
import { failedForGood, shouldRetry } from "../dist/connection.js";
import { EndpointRing, resolveEndpoints } from "../dist/endpoints.js";
import { errorFor } from "../dist/errors.js";
import { embedded, freePort } from "./helpers.mjs";

// The daemon's words (src/cluster/mod.rs, src/server), as a client receives them.
const NO_LEADER = "node 2 has known no leader for 5000 ms (no quorum reachable?): retry";
const REFUSED = "the cluster refused the write (raft: proposal dropped): retry";
const LEADER_CHANGED = "the leader changed (node 1 to node 3) before the write was committed; it may yet take effect";
const NOT_COMMITTED = "the write was not committed in time (no quorum?); it may yet take effect";
const SHUTTING_DOWN = "the daemon is shutting down";
const STOPPED = "the daemon stopped before answering: the call may yet take effect";
const NOT_SENT_TO_LEADER = "node 2 could not reach the leader (node 1): the write was not sent; retry";
const RESET = "the connection broke during the call (read ECONNRESET)";

/** An UNAVAILABLE as connect reports a refused connection: the request never left this process. */
function notSent() {
  const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" });
  return errorFor("UNAVAILABLE", "connect ECONNREFUSED 127.0.0.1:1", refused);
}

const CASES = [
  ["the connection was refused", notSent, true], // never left this process
  ["no leader", () => errorFor("UNAVAILABLE", NO_LEADER), true], // waited for an election, never proposed
  ["refused by the cluster", () => errorFor("UNAVAILABLE", REFUSED), true], // the leader could not propose it
  ["the leader changed", () => errorFor("UNAVAILABLE", LEADER_CHANGED), false], // forwarded to a leader that went away
  ["not committed", () => errorFor("UNAVAILABLE", NOT_COMMITTED), false], // proposed, not committed in time
  ["shutting down", () => errorFor("UNAVAILABLE", SHUTTING_DOWN), true], // refused before it was taken
  ["stopped before answering", () => errorFor("UNAVAILABLE", STOPPED), false], // taken, then the daemon stopped
  ["not sent to the leader", () => errorFor("UNAVAILABLE", NOT_SENT_TO_LEADER), true], // the follower could not hand it on
  ["a reset in flight", () => errorFor("UNAVAILABLE", RESET), false], // the connection broke after it was sent
];

for (const [what, make, writeRetried] of CASES) {
  test(`UNAVAILABLE (${what}): a write is ${writeRetried ? "" : "not "}sent again, a read always is`, () => {
    const error = make();
    assert.equal(shouldRetry("DeletePolicy", error), writeRetried);
    assert.equal(shouldRetry("Register", error, true), true, "a numbered Register is applied once: always sent again");
    assert.equal(shouldRetry("Find", error), true, "a read is always sent again");
    assert.equal(shouldRetry("RenewLease", error), true, "RenewLease is idempotent given its token");
    assert.equal(shouldRetry("Status", error), true, "clusterStatus is a read");
    const final = failedForGood("DeletePolicy", error);
    if (writeRetried) {
      assert.equal(final, error, "not carried out: nothing unknown");
      assert.ok(!(final instanceof OutcomeUnknownError));
    } else {
      assert.ok(final instanceof OutcomeUnknownError && final instanceof Unavailable, String(final));
      assert.equal(final.code, "UNAVAILABLE");
      assert.ok(final.details.includes(error.details) && final.details.includes("may or may not have taken effect"), final.details);
      assert.equal(final.cause, error);
    }
    assert.equal(failedForGood("Find", error), error, "a read's outcome is never in doubt");
  });
}

test("a write past its deadline is outcome-unknown and still a DeadlineExceeded; other failures stay as they were", () => {
  const late = errorFor("DEADLINE_EXCEEDED", "the operation timed out");
  const final = failedForGood("CreateTask", late);
  assert.ok(final instanceof OutcomeUnknownDeadlineError && final instanceof DeadlineExceeded && final instanceof OutcomeUnknownError);
  assert.equal(final.code, "DEADLINE_EXCEEDED");
  assert.equal(failedForGood("GetTask", late), late);
  const missing = errorFor("NOT_FOUND", 'policy "p" not found');
  assert.equal(failedForGood("DeletePolicy", missing), missing);
  assert.equal(shouldRetry("DeletePolicy", missing), false);
  assert.ok(!(new Unavailable("x", "UNAVAILABLE") instanceof OutcomeUnknownError));
});

test("endpoints are checked: host:port, a host alone is port 7070, IPv6 in brackets; none, repeats, bad ports and address with endpoints are refused", () => {
  assert.deepEqual(resolveEndpoints(undefined, ["h1:7071", "h2", "[::1]:7072", " h3:0070 "], "x:1"), ["h1:7071", "h2:7070", "[::1]:7072", "h3:70"]);
  assert.deepEqual(resolveEndpoints("a:1", undefined, "x:1"), ["a:1"]);
  assert.deepEqual(resolveEndpoints(undefined, undefined, "x:1"), ["x:1"]);
  const refused = [
    [["a:1"], "a:1", /either endpoints or address/],
    [[], undefined, /at least one node/],
    [["a:1", "a:1"], undefined, /a:1 more than once/],
    [["a:0"], undefined, /not a number 1..=65535/],
    [["a:70000"], undefined, /not a number 1..=65535/],
    [["::1:7070"], undefined, /in brackets/],
    [[":7070"], undefined, /has no host/],
    [[""], undefined, /"host:port" string/],
    ["a:1", undefined, /an array/],
  ];
  for (const [endpoints, address, message] of refused) {
    assert.throws(() => resolveEndpoints(address, endpoints, "x:1"), (e) => e instanceof InvalidArgument && message.test(e.message), String(endpoints));
  }
  assert.throws(() => new AgentKeeperClient({ endpoints: ["a:1", "a:1"] }), InvalidArgument);
});

test("several failures on one node move the client on once, round the ring", () => {
  const ring = new EndpointRing(["a:1", "b:1", "c:1"]);
  assert.equal(ring.moveFrom("a:1"), "b:1");
  assert.equal(ring.moveFrom("a:1"), undefined, "a second call that failed on a:1 does not skip b:1");
  assert.equal(ring.moveFrom("b:1"), "c:1");
  assert.equal(ring.moveFrom("c:1"), "a:1");
  assert.equal(new EndpointRing(["a:1"]).moveFrom("a:1"), undefined);
});

test("a write to a node that refuses connections goes to the next endpoint; clusterStatus of a single node is FailedPrecondition", async (t) => {
  const client = await embedded(t);
  const down = `127.0.0.1:${await freePort()}`;
  const both = new AgentKeeperClient({ endpoints: [down, client.address], retry: { maxAttempts: 4 } });
  t.after(() => both.close());
  await both.setPolicy({ id: "tmp", subject: "agent:x", action: "read", resource: "docs/*", effect: "ALLOW" });
  assert.equal(both.address, client.address);
  await both.deletePolicy("tmp"); // not safe to repeat, but this node takes it: no doubt
  assert.deepEqual(await client.listPolicies(), []);
  await assert.rejects(both.clusterStatus(), (e) => e.code === "FAILED_PRECONDITION" && /single node/.test(e.details));
});
