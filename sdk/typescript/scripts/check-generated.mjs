// Regenerates the protobuf-es types into a temporary directory and fails if
// they differ from the committed src/gen/ (run `npm run generate` to update).

import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tmp = mkdtempSync(join(tmpdir(), "pigeon-gen-"));

function files(dir) {
  const out = [];
  const walk = (d) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.push(relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

try {
  const buf = join(root, "node_modules", ".bin", "buf");
  const r = spawnSync(buf, ["generate", "--template", "buf.gen.yaml", "-o", tmp], { cwd: root, stdio: "inherit" });
  if (r.status !== 0) {
    console.error("check-generated: buf generate failed");
    process.exit(1);
  }
  const committed = join(root, "src", "gen");
  const fresh = join(tmp, "src", "gen");
  const a = files(committed);
  const b = files(fresh);
  const problems = [];
  for (const f of new Set([...a, ...b])) {
    if (!a.includes(f)) problems.push(`missing from src/gen: ${f}`);
    else if (!b.includes(f)) problems.push(`not generated any more: src/gen/${f}`);
    else if (!readFileSync(join(committed, f)).equals(readFileSync(join(fresh, f)))) problems.push(`differs: src/gen/${f}`);
  }
  if (problems.length > 0) {
    console.error(`check-generated: src/gen/ is out of date with proto/ (run npm run generate):\n  ${problems.join("\n  ")}`);
    process.exit(1);
  }
  console.log(`check-generated: src/gen/ matches proto/ (${a.length} file${a.length === 1 ? "" : "s"})`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
