// Every `ts` example of README.md (and of the repository's README.md), as a new user would run it: compiled with tsc against this
// package (imported by its name, "agentkeeper") and run with node against a fresh daemon. A
// `// → text` comment is output the example must print; a block that starts with
// "// Compiled by the tests, not run" is only type-checked.
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { EmbeddedDaemon } from "../dist/index.js";

const PACKAGE = fileURLToPath(new URL("..", import.meta.url));
// Inside the package, so that `import "agentkeeper"` resolves to this package itself (exports).
const WORK = join(PACKAGE, ".readme-test");
const COMPILE_ONLY = "// Compiled by the tests, not run";

// This package's README and the repository's, whose TypeScript quick start uses this package.
const READMES = [join(PACKAGE, "README.md"), join(PACKAGE, "..", "..", "README.md")];
const blocks = READMES.flatMap((path) => [...readFileSync(path, "utf8").matchAll(/^```ts\n([\s\S]*?)^```$/gm)]);
const examples = blocks.map((m, i) => ({
  name: `example${i + 1}`,
  code: m[1],
  runs: !m[1].startsWith(COMPILE_ONLY),
  expected: [...m[1].matchAll(/\/\/ → (.+)$/gm)].map((e) => e[1].trim()),
}));

test("the READMEs have examples, and every one type-checks with tsc --strict", () => {
  assert.ok(examples.length >= 12, `only ${examples.length} examples found`);
  rmSync(WORK, { recursive: true, force: true });
  mkdirSync(WORK, { recursive: true });
  for (const example of examples) writeFileSync(join(WORK, `${example.name}.ts`), example.code);
  writeFileSync(
    join(WORK, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        target: "ES2022",
        lib: ["ES2022", "ESNext.Disposable", "DOM"], // as the README tells users
        module: "NodeNext",
        moduleResolution: "NodeNext",
        strict: true,
        types: ["node"],
        typeRoots: [join(PACKAGE, "node_modules", "@types")],
        outDir: "out",
        rootDir: ".",
        noEmitOnError: true,
        skipLibCheck: false, // a new user's types are checked too
      },
      include: ["*.ts"],
    }),
  );
  const tsc = join(PACKAGE, "node_modules", "typescript", "bin", "tsc");
  try {
    execFileSync(process.execPath, [tsc, "-p", WORK], { stdio: "pipe", encoding: "utf8" });
  } catch (error) {
    assert.fail(`tsc found errors in the README's examples:\n${error.stdout}${error.stderr}`);
  }
});

for (const example of examples.filter((e) => e.runs)) {
  test(`README ${example.name} runs and prints what its comments say (${example.expected.length} lines)`, async (t) => {
    const daemon = new EmbeddedDaemon();
    await daemon.start();
    t.after(() => daemon.stop());
    const env = { ...process.env, AGENTKEEPER_ADDRESS: daemon.address };
    const { stdout } = await promisify(execFile)(process.execPath, [join(WORK, "out", `${example.name}.js`)], { env, timeout: 30_000 });
    for (const line of example.expected) assert.ok(stdout.includes(line), `expected "${line}" in:\n${stdout}`);
  });
}
