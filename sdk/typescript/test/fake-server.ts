//! A scripted WebSocket server in the test process, for client behaviour a
//! real server cannot be made to show on demand (mismatched pushes,
//! RESYNC_REQUIRED, redirects, BUSY).

import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { WebSocketServer, type WebSocket as WsSocket } from "ws";
import { ErrorCode, FrameSchema, type Frame } from "../src/index.js";

type FrameInit = MessageInitShape<typeof FrameSchema>;

export class FakePeer {
  private readonly inbox: Frame[] = [];
  private waiter: (() => void) | undefined;
  closed = false;

  constructor(readonly socket: WsSocket) {
    socket.on("message", (data: Buffer) => {
      this.inbox.push(fromBinary(FrameSchema, new Uint8Array(data)));
      this.waiter?.();
    });
    socket.on("close", () => {
      this.closed = true;
      this.waiter?.();
    });
  }

  /** The next frame from the client; undefined once it closed. */
  async recv(timeoutMs = 5_000): Promise<Frame | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const f = this.inbox.shift();
      if (f) return f;
      if (this.closed) return undefined;
      if (Date.now() > deadline) throw new Error("fake server: no frame from the client in time");
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 50);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  /** The next frame that is not a Ping (pings are answered). */
  async recvRequest(): Promise<Frame> {
    for (;;) {
      const f = await this.recv();
      if (!f) throw new Error("fake server: the client went away");
      if (f.body.case === "ping") {
        this.send({ requestId: f.requestId, body: { case: "pong", value: { nonce: f.body.value.nonce } } });
        continue;
      }
      return f;
    }
  }

  send(frame: FrameInit): void {
    this.socket.send(toBinary(FrameSchema, create(FrameSchema, frame)));
  }

  /** Waits for a SyncRequest and returns its id and key as text. */
  async expectSync(): Promise<{ id: bigint; key: string }> {
    const f = await this.recvRequest();
    if (f.body.case !== "syncRequest") throw new Error(`expected a sync request, got ${f.body.case}`);
    return { id: f.requestId, key: new TextDecoder().decode(f.body.value.key) };
  }

  sendSync(id: bigint, seqs: number[], key: string, hasMore: boolean): void {
    this.send({
      requestId: id,
      body: { case: "syncResponse", value: { events: seqs.map(event), key: bytes(key), hasMore } },
    });
  }

  pushEvents(prevKey: string, seqs: number[], key: string): void {
    this.send({ body: { case: "eventsPush", value: { prevKey: bytes(prevKey), events: seqs.map(event), key: bytes(key) } } });
  }

  goodbye(code: ErrorCode, message: string, extra: { redirectTo?: string[]; retryAfterMs?: number } = {}): void {
    this.send({ body: { case: "goodbye", value: { code, message, ...extra } } });
  }

  error(id: bigint, code: ErrorCode, message: string, retryAfterMs = 0): void {
    this.send({ requestId: id, body: { case: "error", value: { code, message, retryAfterMs } } });
  }
}

export function bytes(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

/** A message event whose text is its seq. */
function event(seq: number) {
  return {
    seq: BigInt(seq),
    kind: { case: "message" as const, value: { conversationId: "d:1:2", convSeq: BigInt(seq), senderId: 2n, content: { text: String(seq) } } },
  };
}

export class FakeServer {
  private readonly peers: FakePeer[] = [];
  private waiter: (() => void) | undefined;
  readonly hellos: Frame[] = [];

  private constructor(
    private readonly wss: WebSocketServer,
    readonly url: string,
  ) {
    wss.on("connection", (socket) => {
      this.peers.push(new FakePeer(socket));
      this.waiter?.();
    });
  }

  static start(): Promise<FakeServer> {
    return new Promise((resolve) => {
      const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 }, () => {
        const addr = wss.address();
        const port = typeof addr === "object" && addr !== null ? addr.port : 0;
        resolve(new FakeServer(wss, `ws://127.0.0.1:${port}/ws`));
      });
    });
  }

  /** The next connection, with its Hello answered by a Welcome. */
  async acceptHello(welcome: { userId?: bigint; heartbeatIntervalMs?: number } = {}): Promise<FakePeer> {
    const deadline = Date.now() + 5_000;
    while (this.peers.length === 0) {
      if (Date.now() > deadline) throw new Error("fake server: nobody connected");
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 50);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    const peer = this.peers.shift()!;
    const hello = await peer.recv();
    if (!hello || hello.body.case !== "hello") throw new Error("fake server: expected a Hello");
    this.hellos.push(hello);
    peer.send({
      requestId: hello.requestId,
      body: {
        case: "welcome",
        value: {
          version: 1,
          serverMinVersion: 1,
          serverMaxVersion: 1,
          userId: welcome.userId ?? 7n,
          username: "alice",
          deviceId: 1n,
          heartbeatIntervalMs: welcome.heartbeatIntervalMs ?? 30_000,
          idleTimeoutMs: 90_000,
          limits: { frameBytesMax: 1 << 20, inflightRequestsMax: 64 },
          serverName: "fake",
        },
      },
    });
    return peer;
  }

  close(): Promise<void> {
    for (const c of this.wss.clients) c.terminate();
    return new Promise((resolve) => this.wss.close(() => resolve()));
  }
}
