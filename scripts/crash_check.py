#!/usr/bin/env python3
"""Checker of a crash-cycle run (scripts/crash-test).

Independent of the server: it reads only what clients saw, never the data
directory, and shares no code with the server's storage. Its inputs, in
the run directory given as the argument:

- records/<writer>.log: each writer's record (crates/server/examples/
  crash_writer.rs): `start <user> <pid> <next_n>`, `send <id> user:<name>`
  or `send <id> conv:<conversation_id>`, and
  `ack <id> <conversation_id> <conv_seq> [dup]`;
- sync/<user>.jsonl: what `pigeon sync` printed for each user (JSON lines,
  crates/cli/src/format.rs), draining their whole log after the run;
- meta.json: {"cycles": N, "writer_kills": K, "users": {name: user_id},
  "writers": [...], "group": "g:N" or null, "group_members": [...]}.

Checks (each failure is a violation; exit status 1 if any):
- no acknowledged message lost: each is in the log of every participant
  of its conversation, at the acknowledged (conversation_id, conv_seq);
- no message delivered twice: a (sender, client_msg_id) appears at most
  once in each user's log, and at one (conversation_id, conv_seq) only
  (other users' copies carry no client_msg_id in protocol version 2: there
  the text, which the writers make equal to it, stands for it; the sender's
  own copies must carry it);
- each user's log seq strictly increases, and within it each
  conversation's conv_seq strictly increases in delivery order;
- every participant sees the same conversation: the same
  conv_seq -> (sender, client_msg_id) sequence for both sides of a direct
  conversation (the sender's own log holds their messages too) and for
  every member of the group; nobody else sees it;
- every stored message was sent by that writer (a `send` line), to that
  target, with its text equal to its client_msg_id;
- a writer's acknowledged messages in a conversation are stored in the
  order it sent them (it sends the next only after an acknowledgement).

Messages sent but never acknowledged (the writer was killed with them in
flight) may be stored or not; they are counted, not violations.

`crash_check.py --self-test` runs the checker on small made-up runs, clean
and with injected faults, and fails unless it accepts the clean one and
reports each fault.
"""

import json
import os
import re
import shutil
import sys
import tempfile
from collections import defaultdict

SHOW_MAX = 20  # violations printed per kind


class Result:
    def __init__(self):
        self.violations = defaultdict(list)
        self.counts = {}
        self.notes = []

    def bad(self, kind, detail):
        self.violations[kind].append(detail)

    def ok(self):
        return not self.violations


def parse_records(run, res):
    """Returns sends {id: (writer, target)}, acks {id: (conv, seq, dup)}, starts."""
    sends, acks, starts = {}, {}, defaultdict(int)
    rdir = os.path.join(run, "records")
    for name in sorted(os.listdir(rdir)):
        if not name.endswith(".log"):
            continue
        path = os.path.join(rdir, name)
        with open(path, encoding="utf-8") as f:
            data = f.read()
        lines = data.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        elif lines:
            # A line cut short by a kill: not written, so not acknowledged.
            res.notes.append(f"{name}: ignoring an incomplete last line {lines[-1]!r}")
            lines.pop()
        writer = None
        for i, line in enumerate(lines, 1):
            w = line.split()
            where = f"{name}:{i}"
            if not w:
                continue
            if w[0] == "start" and len(w) == 4:
                if writer is not None and w[1] != writer:
                    res.bad("harness", f"{where}: writer {w[1]} in the record of {writer}")
                writer = w[1]
                starts[writer] += 1
            elif writer is None:
                res.bad("harness", f"{where}: line before any start line: {line!r}")
            elif w[0] == "send" and len(w) == 3:
                if w[1] in sends:
                    res.bad("harness", f"{where}: client_msg_id {w[1]} sent twice")
                kind, _, to = w[2].partition(":")
                if kind not in ("user", "conv") or not to:
                    res.bad("harness", f"{where}: bad target {w[2]!r}")
                sends[w[1]] = (writer, (kind, to))
            elif w[0] == "ack" and len(w) in (4, 5) and w[3].isdigit():
                mid, conv, seq = w[1], w[2], int(w[3])
                dup = len(w) == 5 and w[4] == "dup"
                if mid not in sends or sends[mid][0] != writer:
                    res.bad("harness", f"{where}: ack of {mid}, never sent by {writer}")
                    continue
                if mid in acks and acks[mid][:2] != (conv, seq):
                    res.bad(
                        "ack changed",
                        f"{writer} {mid}: acknowledged as {acks[mid][:2]} and later as {(conv, seq)}",
                    )
                acks[mid] = (conv, seq, dup)
            else:
                res.bad("harness", f"{where}: unreadable line {line!r}")
    return sends, acks, starts


class Msg:
    """A message event as one user received it (compact: runs are large)."""

    __slots__ = ("line", "conv", "cseq", "sender", "sender_id", "mid", "text")

    def __init__(self, line, conv, cseq, sender, sender_id, mid, text):
        self.line, self.conv, self.cseq = line, conv, cseq
        self.sender, self.sender_id, self.mid, self.text = sender, sender_id, mid, text


def parse_logs(run, res):
    """Returns {user: [message dict in delivery order]} and other-event counts."""
    logs, others = {}, 0
    sdir = os.path.join(run, "sync")
    for name in sorted(os.listdir(sdir)):
        if not name.endswith(".jsonl"):
            continue
        user = name[: -len(".jsonl")]
        msgs, last_seq = [], 0
        with open(os.path.join(sdir, name), encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    res.bad("harness", f"sync/{name}:{i}: not JSON: {line[:80]!r}")
                    continue
                seq = ev.get("seq", 0)
                if seq:
                    if seq <= last_seq:
                        res.bad(
                            "log seq not increasing",
                            f"{user}: seq {seq} after {last_seq} (line {i})",
                        )
                    last_seq = max(last_seq, seq)
                if ev.get("type") != "message":
                    others += 1
                    continue
                sender = sys.intern(str(ev.get("from", "")))
                mid = str(ev.get("client_msg_id") or "")
                if not mid:
                    if sender == user:
                        res.bad(
                            "client_msg_id missing",
                            f"{user} line {i}: the sender's own copy has no client_msg_id",
                        )
                    # Protocol version 2 tells other users no client_msg_id;
                    # the writers make the text equal to it.
                    mid = str(ev.get("text") or "")
                msgs.append(
                    Msg(
                        i,
                        sys.intern(str(ev.get("conversation_id", ""))),
                        ev.get("conv_seq", 0),
                        sender,
                        ev.get("from_id"),
                        mid,
                        ev.get("text"),
                    )
                )
        logs[user] = msgs
    return logs, others


def direct_ids(conv):
    m = re.fullmatch(r"d:(\d+):(\d+)", conv)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check(run):
    res = Result()
    with open(os.path.join(run, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    user_ids = meta.get("users", {})
    group = meta.get("group")
    group_members = set(meta.get("group_members") or [])
    sends, acks, starts = parse_records(run, res)
    logs, other_events = parse_logs(run, res)
    for u in user_ids:
        if u not in logs:
            res.bad("harness", f"no sync output for user {u}")

    # Every message as each user saw it: conversation -> user -> [(conv_seq, key)].
    views = defaultdict(lambda: defaultdict(list))
    # (sender, client_msg_id) -> set of (conversation, conv_seq) seen anywhere.
    placed = defaultdict(set)
    delivered = 0
    for user, msgs in logs.items():
        seen = {}
        last_in_conv = {}
        for m in msgs:
            delivered += 1
            conv, cseq = m.conv, m.cseq
            key = (m.sender, m.mid)
            where = f"{user} line {m.line}"
            if key in seen:
                res.bad(
                    "delivered twice",
                    f"{user}: {key[0]} {key[1]} at lines {seen[key]} and {m.line}",
                )
            seen[key] = m.line
            prev = last_in_conv.get(conv)
            if prev is not None and cseq <= prev:
                res.bad(
                    "conv_seq not increasing",
                    f"{where}: {conv} conv_seq {cseq} after {prev}",
                )
            last_in_conv[conv] = cseq if prev is None else max(prev, cseq)
            views[conv][user].append((cseq, key))
            placed[key].add((conv, cseq))
            # Was it sent, by this sender, to this place, with this text?
            sender, mid = key
            sent = sends.get(mid)
            if sent is None or sent[0] != sender:
                res.bad("never sent", f"{where}: {sender} {mid} is in no writer's record")
                continue
            if m.text != mid:
                res.bad("content changed", f"{where}: {mid} has text {m.text!r}")
            if user_ids.get(sender) is not None and m.sender_id != user_ids[sender]:
                res.bad("sender changed", f"{where}: {mid} from_id {m.sender_id}")
            kind, to = sent[1]
            if kind == "conv":
                if conv != to:
                    res.bad("wrong conversation", f"{where}: {mid} sent to {to}, stored in {conv}")
            else:
                ids = direct_ids(conv)
                want = {user_ids.get(sender), user_ids.get(to)}
                if ids is None or (None not in want and set(ids) != want):
                    res.bad(
                        "wrong conversation",
                        f"{where}: {mid} from {sender} to {to} stored in {conv}",
                    )
                if user not in (sender, to):
                    res.bad("wrong participant", f"{where}: {mid} from {sender} to {to}")

    for key, places in placed.items():
        if len(places) > 1:
            res.bad(
                "delivered twice",
                f"{key[0]} {key[1]} stored at {sorted(places)}",
            )

    # Every participant of a conversation sees the same sequence.
    by_conv_seq = {}
    for conv, per_user in views.items():
        union = {}
        for user, seqs in per_user.items():
            for cseq, key in seqs:
                if union.setdefault(cseq, key) != key:
                    res.bad(
                        "participants disagree",
                        f"{conv} conv_seq {cseq}: {union[cseq]} and {key} ({user})",
                    )
        by_conv_seq[conv] = union
        expected = sorted(union.items())
        if conv == group:
            participants = set(group_members)
        else:
            participants = set()
            for _, (sender, mid) in expected:
                if mid in sends and sends[mid][0] == sender and sends[mid][1][0] == "user":
                    participants |= {sender, sends[mid][1][1]}
            participants |= set(per_user)  # a stranger is caught just below
            if len(participants) > 2:
                res.bad(
                    "wrong participant",
                    f"{conv} seen by {sorted(per_user)}, sent between {sorted(participants)}",
                )
        for user in sorted(participants | set(per_user)):
            if user not in participants:
                res.bad("wrong participant", f"{user} sees {conv}")
                continue
            got = per_user.get(user, [])
            if sorted(got) != expected:
                mine = {k for _, k in got}
                missing = [k for _, k in expected if k not in mine]
                res.bad(
                    "participants disagree",
                    f"{conv}: {user} has {len(got)} of {len(expected)} messages"
                    + (f", missing e.g. {missing[:3]}" if missing else ""),
                )

    # Acknowledged means stored, where the acknowledgement said.
    per_writer_conv = defaultdict(list)
    dup_acks = 0
    for mid, (conv, cseq, dup) in acks.items():
        dup_acks += dup
        sender, (kind, to) = sends[mid]
        got = by_conv_seq.get(conv, {}).get(cseq)
        if got != (sender, mid):
            elsewhere = sorted(placed.get((sender, mid), ()))
            if got is None and not elsewhere:
                res.bad("acknowledged but lost", f"{sender} {mid} acked at {conv}#{cseq}")
            else:
                res.bad(
                    "ack mismatch",
                    f"{sender} {mid} acked at {conv}#{cseq}, there: {got}, stored at {elsewhere}",
                )
        if kind == "conv" and conv != to:
            res.bad("wrong conversation", f"{sender} {mid} sent to {to}, acked in {conv}")
        n = int(mid.rsplit("-", 1)[1]) if re.search(r"-\d+$", mid) else None
        if n is not None:
            per_writer_conv[(sender, conv)].append((n, cseq, mid))
    for (sender, conv), items in per_writer_conv.items():
        items.sort()
        for (n1, s1, m1), (n2, s2, m2) in zip(items, items[1:]):
            if s2 <= s1:
                res.bad(
                    "send order",
                    f"{sender} in {conv}: {m2} (conv_seq {s2}) sent after {m1} (conv_seq {s1})",
                )

    unacked = [mid for mid in sends if mid not in acks]
    unacked_stored = sum(1 for mid in unacked if (sends[mid][0], mid) in placed)
    stored = len(placed)
    res.counts = {
        "cycles": meta.get("cycles", 0),
        "writer_kills": meta.get("writer_kills", 0),
        "writers": len(starts),
        "writer_starts": sum(starts.values()),
        "users": len(logs),
        "conversations": len(views),
        "sent": len(sends),
        "acks": len(acks),
        "acks_as_duplicate": dup_acks,
        "stored_messages": stored,
        "delivered_events": delivered,
        "other_events": other_events,
        "unacknowledged": len(unacked),
        "unacknowledged_but_stored": unacked_stored,
        "unacknowledged_not_stored": len(unacked) - unacked_stored,
    }
    if not acks:
        res.bad("harness", "no message was acknowledged: nothing was tested")
    return res


def report(res, out=sys.stdout):
    c = res.counts
    print(
        "crash check: cycles={cycles} writers={writers} (starts {writer_starts}, kills "
        "{writer_kills}) users={users} conversations={conversations}".format(**c)
        if c
        else "crash check: no counts",
        file=out,
    )
    if c:
        print(
            "  sent={sent} acks={acks} (of which answered as duplicate={acks_as_duplicate}) "
            "stored={stored_messages} delivered_events={delivered_events} "
            "other_events={other_events}".format(**c),
            file=out,
        )
        print(
            "  unacknowledged={unacknowledged} (stored {unacknowledged_but_stored}, "
            "not stored {unacknowledged_not_stored}; both allowed)".format(**c),
            file=out,
        )
    for note in res.notes:
        print(f"  note: {note}", file=out)
    total = sum(len(v) for v in res.violations.values())
    print(f"  violations={total}", file=out)
    for kind, items in sorted(res.violations.items()):
        print(f"  VIOLATION {kind}: {len(items)}", file=out)
        for d in items[:SHOW_MAX]:
            print(f"    {d}", file=out)
        if len(items) > SHOW_MAX:
            print(f"    ... and {len(items) - SHOW_MAX} more", file=out)


def self_test():
    """Builds a small clean run, then variants with one fault each."""

    def run_of(records, logs, meta):
        d = tempfile.mkdtemp(prefix="crash-check-selftest.")
        os.makedirs(os.path.join(d, "records"))
        os.makedirs(os.path.join(d, "sync"))
        for w, lines in records.items():
            with open(os.path.join(d, "records", f"{w}.log"), "w") as f:
                f.write("".join(line + "\n" for line in lines))
        for u, evs in logs.items():
            with open(os.path.join(d, "sync", f"{u}.jsonl"), "w") as f:
                f.write("".join(json.dumps(e) + "\n" for e in evs))
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump(meta, f)
        return d

    ids = {"w0": 1, "w1": 2, "r0": 3}
    dconv = "d:1:3"
    grp = "g:1"

    def msg(seq, conv, cseq, frm, mid, text=None):
        return {
            "seq": seq,
            "type": "message",
            "conversation_id": conv,
            "conv_seq": cseq,
            "from": frm,
            "from_id": ids[frm],
            "device_id": 1,
            "client_msg_id": mid,
            "sent_at_ms": 0,
            "text": mid if text is None else text,
        }

    def base():
        records = {
            "w0": [
                "start w0 1 0",
                "send w0-0 user:r0",
                f"ack w0-0 {dconv} 1",
                f"send w0-1 conv:{grp}",
                f"ack w0-1 {grp} 1",
                "send w0-2 user:r0",
                f"ack w0-2 {dconv} 3 dup",
                "send w0-3 user:r0",  # killed in flight, stored
                "start w0 2 4",
                "send w0-4 conv:" + grp,  # killed in flight, not stored
            ],
            "w1": ["start w1 3 0"],
        }
        logs = {
            "w0": [
                msg(1, dconv, 1, "w0", "w0-0"),
                msg(2, grp, 1, "w0", "w0-1"),
                msg(3, dconv, 3, "w0", "w0-2"),
                msg(5, dconv, 4, "w0", "w0-3"),
            ],
            "r0": [
                {"seq": 1, "type": "group_change", "conversation_id": grp},
                msg(2, dconv, 1, "w0", "w0-0"),
                msg(3, grp, 1, "w0", "w0-1"),
                msg(7, dconv, 3, "w0", "w0-2"),
                msg(8, dconv, 4, "w0", "w0-3"),
            ],
            "w1": [msg(1, grp, 1, "w0", "w0-1")],
        }
        # As protocol version 2 tells them: other users' copies carry no
        # client_msg_id (the direct ones of r0 keep it, as version 1 did).
        for e in logs["w1"] + [e for e in logs["r0"] if e.get("conversation_id") == grp]:
            e.pop("client_msg_id", None)
        meta = {
            "cycles": 3,
            "writer_kills": 1,
            "users": ids,
            "writers": ["w0", "w1"],
            "group": grp,
            "group_members": ["w0", "w1", "r0"],
        }
        return records, logs, meta

    def lose(r, l, m):  # an acknowledged message missing everywhere
        for u in l:
            l[u] = [e for e in l[u] if e.get("text") != "w0-2"]

    def lose_one_side(r, l, m):
        l["r0"] = [e for e in l["r0"] if e.get("text") != "w0-0"]

    def twice(r, l, m):
        l["r0"].append(msg(9, dconv, 5, "w0", "w0-0"))

    def reorder(r, l, m):
        l["w1"] = [msg(1, grp, 1, "w0", "w0-1"), msg(2, grp, 1, "w0", "w0-9")]
        r["w0"].insert(1, "send w0-9 conv:" + grp)

    def disagree(r, l, m):
        l["w0"][3] = msg(5, dconv, 5, "w0", "w0-3")

    def wrong_ack(r, l, m):
        r["w0"][2] = f"ack w0-0 {dconv} 2"

    def garbled(r, l, m):
        l["r0"][1]["text"] = "garbage"
        l["w0"][0]["text"] = "garbage"

    def stranger(r, l, m):
        l["w1"].append(msg(2, dconv, 1, "w0", "w0-0"))

    def seq_back(r, l, m):
        l["r0"][4]["seq"] = 6

    def unknown(r, l, m):
        l["w1"].append(msg(2, grp, 7, "w0", "w0-77"))

    def order(r, l, m):  # w0-2 acknowledged before w0-0 in conv order
        r["w0"][2] = f"ack w0-0 {dconv} 3"
        r["w0"][6] = f"ack w0-2 {dconv} 1"
        for u in ("w0", "r0"):
            for e in l[u]:
                if e.get("client_msg_id") == "w0-0":
                    e["client_msg_id"] = e["text"] = "w0-2"
                elif e.get("client_msg_id") == "w0-2":
                    e["client_msg_id"] = e["text"] = "w0-0"
            l[u].sort(key=lambda e: e["seq"])
        # conv order in the logs is now w0-2 (1), w0-0 (3): allowed by logs,
        # refused by the send order (w0-0 acked before w0-2 was sent).

    faults = [
        ("acknowledged but lost", lose),
        ("participants disagree", lose_one_side),
        ("delivered twice", twice),
        ("conv_seq not increasing", reorder),
        ("participants disagree", disagree),
        ("ack mismatch", wrong_ack),
        ("content changed", garbled),
        ("wrong participant", stranger),
        ("log seq not increasing", seq_back),
        ("never sent", unknown),
        ("send order", order),
        ("client_msg_id missing", lambda r, l, m: l["w0"][1].pop("client_msg_id")),
    ]
    def check_once(r, l, m):
        d = run_of(r, l, m)
        try:
            return check(d)
        finally:
            shutil.rmtree(d)

    failures = 0
    r, l, m = base()
    res = check_once(r, l, m)
    if not res.ok():
        print("self-test: the clean run was refused:", file=sys.stderr)
        report(res, sys.stderr)
        failures += 1
    want = {"acks": 3, "unacknowledged_but_stored": 1, "unacknowledged_not_stored": 1}
    for k, v in want.items():
        if res.counts.get(k) != v:
            print(f"self-test: clean run counts {k}={res.counts.get(k)}, want {v}", file=sys.stderr)
            failures += 1
    for kind, fault in faults:
        r, l, m = base()
        fault(r, l, m)
        res = check_once(r, l, m)
        if kind not in res.violations:
            print(f"self-test: fault {fault.__name__} not reported as {kind!r}:", file=sys.stderr)
            report(res, sys.stderr)
            failures += 1
    print(f"crash check self-test: {len(faults)} faults, {failures} failures")
    return 1 if failures else 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) != 2:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        print("usage: crash_check.py RUN_DIR | --self-test", file=sys.stderr)
        return 2
    res = check(argv[1])
    report(res)
    return 0 if res.ok() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
