//! The SDK's one error type, and which errors are worth a retry.

import { ErrorCode, type Error as WireError, type Goodbye } from "./gen/pigeon/v1/pigeon_pb.js";

/** What went wrong, broadly. */
export type PigeonErrorKind =
  /** The server answered the request with an `Error` (`code` says which). */
  | "server"
  /** The server closed the connection with a `Goodbye` (`code` says why). */
  | "goodbye"
  /** The connect, the handshake or a request took longer than allowed. */
  | "timeout"
  /** The connection ended (or this side closed it) before an answer came. */
  | "closed"
  /** The WebSocket could not be opened or failed. */
  | "transport"
  /** The server sent something this client cannot use. */
  | "protocol"
  /** The server URL is not `ws://` or `wss://`. */
  | "invalid-url";

/** Codes after which reconnecting cannot help: the client stops on them. */
const FATAL_CODES: ReadonlySet<ErrorCode> = new Set([
  ErrorCode.INVALID_TOKEN,
  ErrorCode.TOKEN_EXPIRED,
  ErrorCode.TOKEN_REVOKED,
  ErrorCode.ACCOUNT_DISABLED,
  ErrorCode.UPGRADE_REQUIRED,
  ErrorCode.UNAUTHENTICATED,
]);

/** Maps a wire number to the enum; numbers a newer server may send become UNSPECIFIED. */
export function codeFromWire(n: number): ErrorCode {
  return ErrorCode[n] === undefined ? ErrorCode.UNSPECIFIED : (n as ErrorCode);
}

/** `"USERNAME_TAKEN"` for `ErrorCode.USERNAME_TAKEN`. */
export function codeName(code: ErrorCode): string {
  return ErrorCode[code] ?? "UNSPECIFIED";
}

export interface PigeonErrorInit {
  code?: ErrorCode;
  retryAfterMs?: number;
  redirectTo?: string[];
  cause?: unknown;
}

/** Why a connection or a request failed. */
export class PigeonError extends Error {
  readonly kind: PigeonErrorKind;
  /** The wire code of a `server` or `goodbye` error (UNSPECIFIED if this build does not know it). */
  readonly code: ErrorCode | undefined;
  /** The code's short name, e.g. `"USERNAME_TAKEN"`. */
  readonly codeName: string | undefined;
  /** With BUSY, or a Goodbye: wait at least this long before retrying (0: no hint). */
  readonly retryAfterMs: number;
  /** A Goodbye's suggested endpoints to reconnect to, best first. */
  readonly redirectTo: string[];

  constructor(kind: PigeonErrorKind, message: string, init: PigeonErrorInit = {}) {
    const label = init.code === undefined ? "" : ` (code ${codeName(init.code)} ${init.code})`;
    super(`${message}${label}`, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "PigeonError";
    this.kind = kind;
    this.code = init.code;
    this.codeName = init.code === undefined ? undefined : codeName(init.code);
    this.retryAfterMs = init.retryAfterMs ?? 0;
    this.redirectTo = init.redirectTo ?? [];
  }

  /** The error for an `Error` answer. */
  static fromWire(e: WireError): PigeonError {
    return new PigeonError("server", e.message || "request failed", {
      code: codeFromWire(e.code),
      retryAfterMs: e.retryAfterMs,
    });
  }

  /** The error for a `Goodbye`. */
  static fromGoodbye(g: Goodbye): PigeonError {
    return new PigeonError("goodbye", `server closed the connection: ${g.message}`, {
      code: codeFromWire(g.code),
      retryAfterMs: g.retryAfterMs,
      redirectTo: [...g.redirectTo],
    });
  }

  /**
   * True for errors after which reconnecting cannot help: the session is
   * gone, the protocol version is refused, or the URL is wrong. The
   * reconnecting client stops on these.
   */
  get isFatal(): boolean {
    if (this.kind === "invalid-url") return true;
    return this.code !== undefined && FATAL_CODES.has(this.code);
  }
}
