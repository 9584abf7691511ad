//! Protocol version 2 sends the events of sync answers and pushes packed:
//! what repeats from event to event (conversation ids, senders' usernames,
//! absolute timestamps) is said once per batch in `PackedTables`. This
//! module turns a packed batch back into the events version 1 sends, before
//! anything else sees it (docs/PROTOCOL.md, "Packed events").

import { PigeonError } from "./errors.js";
import type { Event, Frame, PackedTables } from "./gen/pigeon/v1/pigeon_pb.js";

/**
 * Unpacks `events` in place against `tables`. Throws a `protocol` error when
 * the batch breaks the rules (a reference past the table, a message with no
 * conversation, a sender missing from the user table).
 */
export function unpackEvents(events: Event[], tables: PackedTables): void {
  const users = new Map<bigint, string>();
  for (const u of tables.users) users.set(u.id, u.username);
  let previousMs = tables.baseMs;
  let conversation: string | undefined;
  events.forEach((event, index) => {
    const created = BigInt.asIntN(64, previousMs + event.createdDeltaMs);
    event.createdAtMs = created;
    event.createdDeltaMs = 0n;
    previousMs = created;
    const reference = event.conversationRef;
    event.conversationRef = 0;
    if (event.kind.case !== "message") return;
    const m = event.kind.value;
    if (reference === 0) {
      if (conversation === undefined) {
        throw new PigeonError("protocol", `packed event ${index}: a message with no conversation and no earlier message in the batch`);
      }
    } else {
      conversation = tables.conversationIds[reference - 1];
      if (conversation === undefined) {
        throw new PigeonError("protocol", `packed event ${index}: conversation_ref ${reference} is not in the batch's table`);
      }
    }
    m.conversationId = conversation;
    if (m.senderUsername === "") {
      const name = users.get(m.senderId);
      if (name === undefined) {
        throw new PigeonError("protocol", `packed event ${index}: sender ${m.senderId} is not in the batch's user table`);
      }
      m.senderUsername = name;
    }
    if (m.sentAtMs === 0n) m.sentAtMs = created;
  });
}

/** Unpacks the events of a sync answer or push in place, if they came packed. */
export function unpackFrame(frame: Frame): void {
  const body = frame.body;
  if (body.case !== "syncResponse" && body.case !== "eventsPush") return;
  const tables = body.value.packed;
  if (tables === undefined) return;
  body.value.packed = undefined;
  unpackEvents(body.value.events, tables);
}
