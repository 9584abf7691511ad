//! Starts the real `pigeon` binary on free ports with a generated config in
//! a temporary directory, as crates/server/tests/common/mod.rs does for the
//! Rust tests.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, closeSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (sdk/typescript/test -> ../../..). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** Argon2id at its cheapest: logins in tests should cost nothing. */
const CHEAP_HASHES = "password_hash_memory_kib = 8\npassword_hash_iterations = 1";
/** Tests drive traffic far beyond a person's pace from one address. */
const NO_RATE_LIMITS = "user_requests_per_sec = 0\nip_connections_per_sec = 0\nip_logins_per_sec = 0";
/** How long a server may take to start listening. */
const READY_TIMEOUT_MS = 30_000;

/** `$PIGEON_BIN`, else the workspace's debug build. */
export function pigeonBin(): string {
  return process.env.PIGEON_BIN || join(REPO_ROOT, "target", "debug", "pigeon");
}

/** Builds the binary with cargo when it is missing (not when PIGEON_BIN names one). */
export function ensureBinary(): string {
  const bin = pigeonBin();
  if (existsSync(bin)) return bin;
  if (process.env.PIGEON_BIN) throw new Error(`PIGEON_BIN=${bin} does not exist`);
  const env = { ...process.env };
  delete env.CARGO_TARGET_DIR;
  const r = spawnSync("cargo", ["build", "-p", "pigeon-server", "--bin", "pigeon"], { cwd: REPO_ROOT, stdio: "inherit", env });
  if (r.status !== 0 || !existsSync(bin)) throw new Error(`cargo build of pigeon failed (status ${r.status})`);
  return bin;
}

export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const address = s.address();
      const port = typeof address === "object" && address ? address.port : 0;
      s.close(() => resolvePort(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolveOk) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolveOk(true);
    });
    socket.once("error", () => resolveOk(false));
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A running server process with its own data directory and ports. */
export class TestServer {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();

  private constructor(
    readonly dir: string,
    readonly tcpPort: number,
    readonly httpPort: number,
    private readonly extra: string,
  ) {}

  /** Starts a server with default settings plus `extra` TOML lines. */
  static async start(extra = ""): Promise<TestServer> {
    const dir = mkdtempSync(join(tmpdir(), "pigeon-ts-"));
    const s = new TestServer(dir, await freePort(), await freePort(), extra);
    await s.spawn();
    return s;
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.httpPort}/ws`;
  }

  get running(): boolean {
    return this.child !== undefined;
  }

  /** The server's stderr so far. */
  log(): string {
    try {
      return readFileSync(join(this.dir, "server.log"), "utf8");
    } catch {
      return "";
    }
  }

  private async spawn(): Promise<void> {
    const config = join(this.dir, "pigeon.toml");
    writeFileSync(
      config,
      [
        `listen = "127.0.0.1:${this.tcpPort}"`,
        `http = "127.0.0.1:${this.httpPort}"`,
        `data = "${join(this.dir, "data")}"`,
        CHEAP_HASHES,
        this.extra.includes("_per_sec") ? "" : NO_RATE_LIMITS,
        this.extra,
        "",
      ].join("\n"),
    );
    const log = openSync(join(this.dir, "server.log"), "a");
    const child = spawn(pigeonBin(), ["serve", "--config", config], {
      env: { ...process.env, RUST_LOG: "info" },
      stdio: ["ignore", "ignore", log],
    });
    closeSync(log);
    this.child = child;
    this.exited = new Promise((r) => child.once("exit", () => r()));
    const deadline = Date.now() + READY_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`pigeon exited early with ${child.exitCode}: ${this.log()}`);
      if ((await canConnect(this.tcpPort)) && (await canConnect(this.httpPort))) return;
      await sleep(20);
    }
    throw new Error(`pigeon did not start listening: ${this.log()}`);
  }

  /** Kills the process without warning (SIGKILL). */
  async kill(): Promise<void> {
    await this.signal("SIGKILL");
  }

  /** SIGTERM: the server drains (Goodbye SHUTTING_DOWN to every connection) and exits. */
  async terminate(): Promise<void> {
    await this.signal("SIGTERM");
  }

  private async signal(sig: NodeJS.Signals): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    await this.exited;
  }

  /** Starts the process again on the same ports and data. */
  async restart(): Promise<void> {
    if (this.child) throw new Error("stop the server first");
    await this.spawn();
  }

  /** Stops the process and deletes its directory. */
  async dispose(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
