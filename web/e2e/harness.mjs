// Test harness: starts the real `pigeon` binary on free ports with a fresh
// data directory, and Debian's Chromium through playwright-core (no
// Playwright browser download). Used by the *.test.mjs files here.

import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(here, "../..");
export const artifacts = join(here, "artifacts");
export const PASSWORD = "correct horse battery";

/** How long one UI expectation may take (the machine is shared and slow). */
export const WAIT_MS = 15_000;

/** The pigeon binary: $PIGEON_BIN, else target/debug/pigeon, built when missing. */
export function pigeonBin() {
  if (process.env.PIGEON_BIN) return process.env.PIGEON_BIN;
  const bin = join(repo, "target/debug/pigeon");
  if (!existsSync(bin)) {
    console.log("# building pigeon (cargo build -p pigeon-server --bin pigeon)");
    const r = spawnSync("cargo", ["build", "-p", "pigeon-server", "--bin", "pigeon"], { cwd: repo, stdio: "inherit" });
    if (r.status !== 0) throw new Error("cargo build failed");
  }
  return bin;
}

async function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** A running server; `stop()` kills it and removes its directory. */
export async function startServer(extra = "") {
  const dir = mkdtempSync(join(tmpdir(), "pigeon-web-e2e-"));
  const tcp = `127.0.0.1:${await freePort()}`;
  const http = `127.0.0.1:${await freePort()}`;
  const config = join(dir, "pigeon.toml");
  writeFileSync(
    config,
    [
      `listen = "${tcp}"`,
      `http = "${http}"`,
      `data = "${join(dir, "data")}"`,
      // Cheap password hashes keep registration quick in tests.
      "password_hash_memory_kib = 8",
      "password_hash_iterations = 1",
      extra,
    ].join("\n"),
  );
  const log = join(dir, "server.log");
  const child = spawn(pigeonBin(), ["serve", "--config", config], {
    stdio: ["ignore", "ignore", openSync(log, "a")],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info" },
  });
  let exited = null;
  child.on("exit", (code) => (exited = code));
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited !== null) throw new Error(`pigeon exited with ${exited}:\n${readFileSync(log, "utf8")}`);
    try {
      const r = await fetch(`http://${http}/healthz`);
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`pigeon did not start:\n${readFileSync(log, "utf8")}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    tcp,
    http,
    base: `http://${http}`,
    dir,
    log: () => readFileSync(log, "utf8"),
    /** Runs a client command of the same binary against this server. */
    cli(args, env = {}) {
      const r = spawnSync(pigeonBin(), [...args], {
        env: {
          ...process.env,
          PIGEON_SERVER: `tcp://${tcp}`,
          PIGEON_PASSWORD: PASSWORD,
          ...env,
        },
        encoding: "utf8",
      });
      if (r.status !== 0) throw new Error(`pigeon ${args.join(" ")} failed: ${r.stderr}`);
      return r.stdout;
    },
    async stop() {
      if (exited === null) {
        child.kill("SIGKILL");
        await new Promise((r) => child.once("exit", r));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Debian's Chromium, installed with apt by scripts/test.sh when missing. */
export function chromiumPath() {
  for (const p of [process.env.CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser"]) {
    if (p && existsSync(p)) return p;
  }
  throw new Error("no Chromium: apt-get install -y chromium (web/scripts/test.sh does it)");
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumPath(),
    args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
}

/** A page in a context of its own (its own localStorage), logging the page's
 * errors so a failure shows what the app said. */
export async function newUser(browser, base, label) {
  const context = await browser.newContext({ baseURL: base, viewport: { width: 1100, height: 720 } });
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  watch(page, label);
  pages.push({ page, label });
  return { context, page, label };
}

/** Every user's page, for the picture of a failure. */
const pages = [];

/** Screenshots of every open page (failure-<label>.png) and their text, to
 * see what the people saw when a step failed. */
export async function dumpPages() {
  for (const { page, label } of pages) {
    if (page.isClosed()) continue;
    try {
      const path = await screenshot(page, `failure-${label}`);
      const text = await page.evaluate(() => `${location.href}\n${document.body.innerText}`);
      console.log(`# [${label}] ${path}\n${text.replace(/^/gm, `# [${label}] `)}`);
    } catch (e) {
      console.log(`# [${label}] no picture: ${e.message}`);
    }
  }
}

/** Uncaught page errors and Content-Security-Policy violations seen so far
 * (a test asserts there are none). Failed WebSocket connects while a test
 * holds a browser offline are expected and only logged. */
export const problems = [];

export function watch(page, label) {
  page.on("pageerror", (e) => {
    console.log(`# [${label}] page error: ${e.message}`);
    problems.push(`[${label}] ${e.message}`);
  });
  page.on("console", (m) => {
    if (m.type() !== "error" && m.type() !== "warning") return;
    if (/ERR_INTERNET_DISCONNECTED/.test(m.text())) return; // a test took the browser offline
    console.log(`# [${label}] console.${m.type()}: ${m.text()}`);
    if (/Content Security Policy/i.test(m.text())) problems.push(`[${label}] ${m.text()}`);
  });
}

export async function screenshot(page, name) {
  mkdirSync(artifacts, { recursive: true });
  const path = join(artifacts, `${name}.png`);
  await page.screenshot({ path });
  return path;
}
