// Connections and errors: typed errors per status, retries of idempotent calls while the daemon
// is down, several endpoints, cancellation by AbortSignal, TLS with bearer tokens, and embedded
// mode's binary resolution and shutdown.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createServer } from "node:net";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  AgentKeeperClient,
  Cancelled,
  EmbeddedDaemon,
  FailedPrecondition,
  InvalidArgument,
  OutcomeUnknownError,
  PermissionDenied,
  Unauthenticated,
  Unavailable,
  findBinary,
} from "../dist/index.js";
import { embedded, freePort, metric, waitFor } from "./helpers.mjs";

test("a daemon nobody listens for is Unavailable once the retries are spent, and a watch that cannot open within its timeout too", async (t) => {
  const client = new AgentKeeperClient({ address: `127.0.0.1:${await freePort()}`, retry: { maxAttempts: 3 } });
  t.after(() => client.close());
  await assert.rejects(client.getAgent("x"), Unavailable);
  // Never sent (the connection was refused): retried, and no doubt about its outcome.
  await assert.rejects(client.register({ name: "nobody" }), (e) => e instanceof Unavailable && !(e instanceof OutcomeUnknownError));
  await assert.rejects(client.watch(["agent."]).opened({ timeoutMs: 300 }), Unavailable);
});

test("an idempotent call is retried until the daemon comes up", async (t) => {
  const port = await freePort();
  const client = new AgentKeeperClient({ address: `127.0.0.1:${port}`, retry: { maxAttempts: 1000, maxBackoffMs: 20 } });
  const daemon = new EmbeddedDaemon({ port });
  t.after(async () => {
    await client.close();
    await daemon.stop();
  });
  // Something on the port that hangs up on every connection: each attempt fails UNAVAILABLE.
  let attempts = 0;
  const hangUp = createServer((socket) => {
    attempts++;
    socket.destroy();
  });
  await new Promise((resolve) => hangUp.listen(port, "127.0.0.1", resolve));
  t.after(() => hangUp.close());
  let settled = false;
  const finding = client.find().finally(() => (settled = true));
  await waitFor(() => attempts >= 3, "three failed attempts");
  await new Promise((resolve) => hangUp.close(resolve));
  assert.equal(settled, false);
  await daemon.start();
  assert.deepEqual(await finding, []);
});

test("a write not safe to repeat is not retried once the request may have reached the daemon; a numbered Register is", async (t) => {
  let attempts = 0;
  const hangUp = createServer((socket) => {
    attempts++;
    socket.destroy();
  });
  await new Promise((resolve) => hangUp.listen(0, "127.0.0.1", resolve));
  t.after(() => hangUp.close());
  const client = new AgentKeeperClient({ address: `127.0.0.1:${hangUp.address().port}`, retry: { maxAttempts: 5 } });
  t.after(() => client.close());
  // It may have arrived: its outcome is unknown (and it is still an Unavailable).
  await assert.rejects(client.deletePolicy("p"), (e) => e instanceof OutcomeUnknownError && e instanceof Unavailable);
  assert.equal(attempts, 1);
  await assert.rejects(client.heartbeat("x"), Unavailable); // idempotent: all five attempts
  assert.equal(attempts, 6);
  // Numbered (the daemon applies it once): all five attempts, then still outcome-unknown.
  await assert.rejects(client.register({ name: "once" }), (e) => e instanceof OutcomeUnknownError);
  assert.equal(attempts, 11);
});

test("with several endpoints, calls move on from one that does not answer", async (t) => {
  const client = await embedded(t);
  const dead = `127.0.0.1:${await freePort()}`;
  const both = new AgentKeeperClient({ endpoints: [dead, client.address], retry: { maxAttempts: 4 } });
  t.after(() => both.close());
  const agent = await both.register({ name: "via-endpoints" });
  assert.equal(both.address, client.address);
  assert.equal((await client.getAgent(agent.agentId)).card.name, "via-endpoints");
});

test("errors are typed per status: InvalidArgument, FailedPrecondition (manual clock call on the real clock)", async (t) => {
  const client = await embedded(t);
  const bad = await client.register({ name: "" }).catch((e) => e);
  assert.ok(bad instanceof InvalidArgument, String(bad));
  assert.equal(bad.code, "INVALID_ARGUMENT");
  await assert.rejects(client.advance(1000), FailedPrecondition);
  await assert.rejects(client.now(), FailedPrecondition);
});

test("an AbortSignal cancels a waiting claim: Cancelled, and the daemon stops waiting for it", async (t) => {
  const client = await embedded(t);
  const worker = await client.register({ name: "w" });
  const stop = new AbortController();
  const claim = client.claimTask(worker.agentId, { signal: stop.signal });
  await waitFor(async () => (await metric(client.daemon, "agentkeeper_claims_waiting")) === 1, "the claim to wait");
  stop.abort();
  await assert.rejects(claim, Cancelled);
  await waitFor(async () => (await metric(client.daemon, "agentkeeper_claims_waiting")) === 0, "the daemon to drop the claim");
});

test("the manual clock: advance(ms) moves now() by exactly ms and gives the new time", async (t) => {
  const client = await embedded(t, { clock: "manual", seed: 7 });
  const start = await client.now();
  const moved = await client.advance(90_000);
  assert.equal(moved.getTime() - start.getTime(), 90_000);
  assert.equal((await client.now()).getTime(), moved.getTime());
});

test("TLS with bearer tokens: an agent token registers, is refused the admin's calls; no token is Unauthenticated", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "agentkeeper-tls-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const openssl = (...args) => execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
  openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test ca");
  openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost");
  writeFileSync(join(dir, "san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
  openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext");
  const ADMIN = "admin-token-0123456789";
  const AGENT = "agent-token-0123456789";
  writeFileSync(join(dir, "tokens"), `admin ${ADMIN}\nagent ${AGENT}\n`);
  const daemon = new EmbeddedDaemon({
    extraArgs: [`--tls-cert=${join(dir, "server.pem")}`, `--tls-key=${join(dir, "server.key")}`, `--auth-tokens=${join(dir, "tokens")}`],
  });
  await daemon.start();
  t.after(() => daemon.stop());
  const tls = { ca: readFileSync(join(dir, "ca.pem")) };
  const agent = new AgentKeeperClient({ address: daemon.address, tls, token: AGENT });
  const admin = new AgentKeeperClient({ address: daemon.address, tls, token: ADMIN });
  const anonymous = new AgentKeeperClient({ address: daemon.address, tls });
  t.after(() => Promise.all([agent.close(), admin.close(), anonymous.close()]));
  const me = await agent.register({ name: "tls-agent", heartbeat: false });
  await me.heartbeat();
  assert.ok((await agent.acquireLease("job-1", me.agentId)).token > 0n);
  await assert.rejects(agent.setPolicy({ id: "p", subject: "s", action: "a", resource: "r", effect: "ALLOW" }), PermissionDenied);
  await admin.setPolicy({ id: "p", subject: "s", action: "a", resource: "r", effect: "ALLOW" });
  await assert.rejects(anonymous.getAgent(me.agentId), Unauthenticated);
});

test("embedded mode finds the binary (explicit, then AGENTKEEPER_BIN), refuses a wrong one, and close() stops the daemon", async (t) => {
  const bin = findBinary();
  assert.equal(findBinary(bin), bin);
  assert.throws(() => findBinary("/nonexistent/agentkeeper"), /not an executable file/);
  const saved = process.env.AGENTKEEPER_BIN;
  process.env.AGENTKEEPER_BIN = "/nonexistent/agentkeeper";
  t.after(() => (saved === undefined ? delete process.env.AGENTKEEPER_BIN : (process.env.AGENTKEEPER_BIN = saved)));
  assert.throws(() => findBinary(), /AGENTKEEPER_BIN/);
  const client = await AgentKeeperClient.embedded({ binary: bin });
  const daemon = client.daemon;
  assert.equal(daemon.running, true);
  await client.register({ name: "x" });
  await client.close();
  assert.equal(daemon.running, false);
  const after = new AgentKeeperClient({ address: daemon.address, retry: { maxAttempts: 1 } });
  t.after(() => after.close());
  await assert.rejects(after.find(), Unavailable);
});
