// The package as a new user gets it: `npm pack`, `npm install` of the tarball into an empty
// folder (from the cache `npm ci` filled, where it can), then the README's quick start compiled with
// the README's TypeScript settings and run against the real daemon.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { findBinary } from "../dist/index.js";

const run = promisify(execFile);
const PACKAGE = fileURLToPath(new URL("..", import.meta.url));
const npm = process.platform === "win32" ? "npm.cmd" : "npm";

test("the packed package installs into an empty folder and runs the README's quick start", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "agentkeeper-user-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const manifest = JSON.parse(readFileSync(join(PACKAGE, "package.json"), "utf8"));
  // dist/ is built by `npm test` already; --ignore-scripts skips prepack's second build.
  const { stdout: packed } = await run(npm, ["pack", "--ignore-scripts", "--silent", "--pack-destination", dir], { cwd: PACKAGE });
  const tarball = join(dir, packed.trim().split("\n").pop());
  const files = (await run("tar", ["tzf", tarball])).stdout.split("\n");
  assert.ok(files.includes("package/dist/index.d.ts") && files.includes("package/README.md"), files.join(" "));
  assert.ok(!files.some((f) => f.includes("node_modules") || f.startsWith("package/src/") || f.startsWith("package/test/")));

  const app = join(dir, "app");
  await run("mkdir", [app]);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  const devTools = [`typescript@${manifest.devDependencies.typescript}`, `@types/node@${manifest.devDependencies["@types/node"]}`];
  // From the cache `npm ci` filled where it can; what it lacks (a package's metadata, which a
  // lockfile install never fetches) from the registry, as a user's install would.
  await run(npm, ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error", tarball, ...devTools], { cwd: app });

  const readme = readFileSync(join(PACKAGE, "README.md"), "utf8");
  writeFileSync(join(app, "quickstart.ts"), /^```ts\n([\s\S]*?)^```$/m.exec(readme)[1]);
  writeFileSync(
    join(app, "tsconfig.json"),
    JSON.stringify({ compilerOptions: { target: "ES2022", lib: ["ES2022", "ESNext.Disposable", "DOM"], module: "NodeNext", moduleResolution: "NodeNext", strict: true, types: ["node"] } }),
  );
  await run(process.execPath, [join(app, "node_modules", "typescript", "bin", "tsc"), "-p", app]);
  const env = { ...process.env, AGENTKEEPER_BIN: findBinary() }; // as a user who has the daemon
  const { stdout } = await run(process.execPath, [join(app, "quickstart.js")], { cwd: app, env, timeout: 30_000 });
  assert.match(stdout, /^scraper-1 ALIVE$/m);
  assert.match(stdout, /^holding task:invoice-42 with token 1$/m);
});
