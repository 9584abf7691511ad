//! What the client tells the application: a discriminated union on `type`,
//! made from sync-log events, ephemeral pushes and the client's own state.

import type { PigeonError } from "./errors.js";
import {
  GroupChangeKind,
  ReceiptKind,
  type BlockChanged,
  type Event,
  type GroupChange,
  type Message,
  type MessageDeleted,
  type MessageEdited,
  type MessageRecalled,
  type Presence,
  type ReadMarker,
  type Receipt,
  type ReceiptSummary,
  type TypingPush,
  type Welcome,
} from "./gen/pigeon/v1/pigeon_pb.js";

/** Where a sync-log event came from, and the raw event. */
export interface EventMeta {
  /** Position in the user's own log (0 for a large group's shared log). Debugging only. */
  seq: bigint;
  /** Position in the shared log (0 for the own log). Debugging only. */
  groupSeq: bigint;
  createdAtMs: bigint;
  /** A sync answer or an events push. */
  source: "sync" | "push";
  raw: Event;
}

export type GroupChangeKindName =
  | "created"
  | "membersAdded"
  | "membersRemoved"
  | "memberLeft"
  | "updated"
  | "roleChanged"
  | "ownershipTransferred"
  | "dissolved"
  | "unknown";

export type ConnectionState = "idle" | "connecting" | "connected" | "disconnected" | "stopped";

/** Events from the user's sync log (apply them idempotently: they may repeat). */
export type LogEvent =
  | { type: "message"; message: Message; meta: EventMeta }
  | { type: "edit"; edit: MessageEdited; meta: EventMeta }
  | { type: "recall"; recall: MessageRecalled; meta: EventMeta }
  | { type: "delete"; deleted: MessageDeleted; meta: EventMeta }
  | { type: "readMarker"; marker: ReadMarker; meta: EventMeta }
  | { type: "receipt"; receipt: Receipt; kind: "delivered" | "read" | "unknown"; meta: EventMeta }
  | { type: "receiptSummary"; summary: ReceiptSummary; meta: EventMeta }
  | { type: "groupChange"; change: GroupChange; kind: GroupChangeKindName; meta: EventMeta }
  | { type: "blockChanged"; change: BlockChanged; meta: EventMeta }
  | { type: "flagsChanged"; enabled: string[]; meta: EventMeta }
  | { type: "unknownEvent"; meta: EventMeta };

/** Everything a `PigeonClient` emits. */
export type PigeonEvent =
  | LogEvent
  | { type: "presence"; presence: Presence }
  | { type: "typing"; typing: TypingPush }
  | {
      type: "connection";
      state: ConnectionState;
      /** With "connected": the server's Welcome. */
      welcome?: Welcome;
      /** With "disconnected" and "stopped": why, for a person. */
      reason?: string;
      /** With "disconnected" and "stopped": the error, when there was one. */
      error?: PigeonError;
      /** With "disconnected": the wait before the next attempt, ms. */
      retryInMs?: number;
    }
  | { type: "resyncRequired" }
  | { type: "synced"; key: Uint8Array };

export type PigeonEventType = PigeonEvent["type"];
export type PigeonEventOf<T extends PigeonEventType> = Extract<PigeonEvent, { type: T }>;
export type Handler<T extends PigeonEventType> = (event: PigeonEventOf<T>) => void | Promise<void>;
export type AnyHandler = (event: PigeonEvent) => void | Promise<void>;

const GROUP_CHANGE_KINDS: Record<number, GroupChangeKindName> = {
  [GroupChangeKind.CREATED]: "created",
  [GroupChangeKind.MEMBERS_ADDED]: "membersAdded",
  [GroupChangeKind.MEMBERS_REMOVED]: "membersRemoved",
  [GroupChangeKind.MEMBER_LEFT]: "memberLeft",
  [GroupChangeKind.UPDATED]: "updated",
  [GroupChangeKind.ROLE_CHANGED]: "roleChanged",
  [GroupChangeKind.OWNERSHIP_TRANSFERRED]: "ownershipTransferred",
  [GroupChangeKind.DISSOLVED]: "dissolved",
};

/** The application's view of one sync-log event. */
export function toLogEvent(raw: Event, source: "sync" | "push"): LogEvent {
  const meta: EventMeta = { seq: raw.seq, groupSeq: raw.groupSeq, createdAtMs: raw.createdAtMs, source, raw };
  const k = raw.kind;
  switch (k.case) {
    case "message":
      return { type: "message", message: k.value, meta };
    case "messageEdited":
      return { type: "edit", edit: k.value, meta };
    case "messageRecalled":
      return { type: "recall", recall: k.value, meta };
    case "messageDeleted":
      return { type: "delete", deleted: k.value, meta };
    case "readMarker":
      return { type: "readMarker", marker: k.value, meta };
    case "receipt": {
      const kind = k.value.kind === ReceiptKind.DELIVERED ? "delivered" : k.value.kind === ReceiptKind.READ ? "read" : "unknown";
      return { type: "receipt", receipt: k.value, kind, meta };
    }
    case "receiptSummary":
      return { type: "receiptSummary", summary: k.value, meta };
    case "groupChange":
      return { type: "groupChange", change: k.value, kind: GROUP_CHANGE_KINDS[k.value.kind] ?? "unknown", meta };
    case "blockChanged":
      return { type: "blockChanged", change: k.value, meta };
    case "flagsChanged":
      return { type: "flagsChanged", enabled: [...k.value.enabled], meta };
    default:
      // A kind from a newer server: skipped, the key still advances (protocol §8.11).
      return { type: "unknownEvent", meta };
  }
}
