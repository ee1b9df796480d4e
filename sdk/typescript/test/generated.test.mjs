// The checked-in generated code (src/gen/) is what protoc-gen-es makes of the public API
// (proto/agentkeeper/v1; the cluster's internal peer protocol is not a client's) now: a change
// to the proto without `npm run generate` fails here.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const PACKAGE = fileURLToPath(new URL("..", import.meta.url));

function files(dir) {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath ?? entry.path, entry.name)))
    .sort();
}

test("src/gen is what `npm run generate` makes of proto/ (not stale)", (t) => {
  const out = mkdtempSync(join(tmpdir(), "agentkeeper-gen-"));
  t.after(() => rmSync(out, { recursive: true, force: true }));
  const bin = join(PACKAGE, "node_modules", ".bin");
  const env = { ...process.env, PATH: `${bin}:${process.env.PATH}` }; // buf finds protoc-gen-es there
  execFileSync(join(bin, "buf"), ["generate", "../../proto", "--template", "buf.gen.yaml", "--path", "../../proto/agentkeeper/v1", "-o", out], { cwd: PACKAGE, env });
  const fresh = join(out, "src", "gen");
  const current = join(PACKAGE, "src", "gen");
  assert.deepEqual(files(current), files(fresh));
  for (const name of files(fresh)) {
    assert.equal(readFileSync(join(current, name), "utf8"), readFileSync(join(fresh, name), "utf8"), `src/gen/${name} is stale: run npm run generate`);
  }
});
