#!/usr/bin/env python3
"""Checker of a crash-cycle run (scripts/crash-test).

Independent of the server: it reads only what clients saw, never the data
directory, and shares no code with the server's storage. Its inputs, in
the run directory given as the argument:

- records/<writer>.log: each writer's record (crates/server/examples/
  crash_writer.rs): `start <user> <pid> <next_n>`, `send <id> user:<name>`
  or `send <id> conv:<conversation_id>`, and
  `ack <id> <conversation_id> <conv_seq> [dup]`;
- sync/<user>.jsonl: what each `pigeon sync` of a user printed (JSON lines,
  crates/cli/src/format.rs), during the run and the last one draining
  their log after it, each after a `# pigeon sync` line, with the CLI's
  note where it was told to resync;
- live/<user>.jsonl: what `pigeon listen` printed on the user's second
  device all through the run (events, its connects and reconnects, any
  resync note), when meta.json says "live";
- history/<user>/<conversation_id>.jsonl, with a log retention only: what
  `pigeon history --conversation ID --all` printed after the run;
- meta.json: {"cycles": N, "writer_kills": K, "users": {name: user_id},
  "writers": [...], "group": "g:N" or null, "group_members": [...],
  "retain": the servers' sync_log_retain_events}.

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
  order it sent them (it sends the next only after an acknowledgement);
- with every event kept (retain 0), no sync is told to resync;
- each user's live device printed exactly the messages the syncs read, in
  order, and was not told to resync (with a retention: the same checks as
  the syncs, against history).

With a retention the logs hold only their newest events: every check above
on messages runs on the users' histories instead, and each user's log must
agree with their history, have no gap between two resyncs, and reach each
conversation's newest message at the end (check_logs_against_history).

Messages sent but never acknowledged (the writer was killed with them in
flight) may be stored or not; they are counted, not violations.

`crash_check.py --self-test` runs the checker on small made-up runs, clean
and with injected faults, and fails unless it accepts the clean one and
reports each fault, with and without a retention.
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


# What `pigeon sync` prints on stderr (merged into its output by the crash
# test) when the stored key is no longer valid and it starts over from the
# oldest retained event.
RESYNC_NOTE = "note: the stored sync key is no longer valid"
# The line the crash test writes before each `pigeon sync`'s output.
SYNC_MARK = "# pigeon sync"
# What `pigeon listen` prints on stderr when it connects and reconnects.
LISTEN_NOTES = ("connected to ", "disconnected: ")


def to_msg(user, ev, where, res):
    """A message event or history line as a Msg."""
    sender = sys.intern(str(ev.get("from", "")))
    mid = str(ev.get("client_msg_id") or "")
    if not mid:
        if sender == user:
            res.bad(
                "client_msg_id missing",
                f"{where}: the sender's own copy has no client_msg_id",
            )
        # Protocol version 2 tells other users no client_msg_id;
        # the writers make the text equal to it.
        mid = str(ev.get("text") or "")
    return Msg(
        where,
        sys.intern(str(ev.get("conversation_id", ""))),
        ev.get("conv_seq", 0),
        sender,
        ev.get("from_id"),
        mid,
        ev.get("text"),
    )


def parse_logs(run, res, sub="sync"):
    """Returns {user: [segment]}, each segment the messages in delivery
    order between two resyncs, and the counts of other events, syncs and resyncs.

    sync/<user>.jsonl holds the output of every `pigeon sync` of the user,
    one after another (each continues from the key the previous one
    stored), with the resync note where the key had to be dropped;
    live/<user>.jsonl what `pigeon listen` printed all through the run."""
    logs, others, syncs, resyncs = {}, 0, 0, 0
    sdir = os.path.join(run, sub)
    for name in sorted(os.listdir(sdir)):
        if not name.endswith(".jsonl"):
            continue
        user = name[: -len(".jsonl")]
        segments, last_seq = [[]], 0
        with open(os.path.join(sdir, name), encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if line.rstrip("\n") == SYNC_MARK:
                    syncs += 1
                    continue
                if line.startswith(LISTEN_NOTES):
                    continue
                if line.startswith(RESYNC_NOTE):
                    resyncs += 1
                    segments.append([])
                    last_seq = 0  # the log is read again from its oldest event
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    res.bad("harness", f"{sub}/{name}:{i}: not JSON: {line[:80]!r}")
                    continue
                seq = ev.get("seq", 0)
                if seq:
                    if seq <= last_seq:
                        res.bad(
                            "log seq not increasing",
                            f"{sub}/{user}: seq {seq} after {last_seq} (line {i})",
                        )
                    last_seq = max(last_seq, seq)
                if ev.get("type") in ("presence", "typing"):
                    continue  # pushes `pigeon listen` prints, not stored
                if ev.get("type") != "message":
                    others += 1
                    continue
                label = user if sub == "sync" else f"{user} ({sub})"
                segments[-1].append(to_msg(user, ev, f"{label} line {i}", res))
        logs[user] = segments
    return logs, others, syncs, resyncs


def parse_history(run, res):
    """Returns {user: {conversation: [Msg, oldest first]}} from
    history/<user>/<conversation>.jsonl (`pigeon history --all`)."""
    hist = {}
    hdir = os.path.join(run, "history")
    for user in sorted(os.listdir(hdir)):
        convs = hist[user] = {}
        for name in sorted(os.listdir(os.path.join(hdir, user))):
            if not name.endswith(".jsonl"):
                continue
            conv = sys.intern(name[: -len(".jsonl")])
            msgs = convs[conv] = []
            with open(os.path.join(hdir, user, name), encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    where = f"{user} history {conv}:{i}"
                    try:
                        m = to_msg(user, json.loads(line), where, res)
                    except ValueError:
                        res.bad("harness", f"{where}: not JSON: {line[:80]!r}")
                        continue
                    if m.conv != conv:
                        res.bad("wrong conversation", f"{where}: a message of {m.conv}")
                    msgs.append(m)
    return hist


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
    retain = meta.get("retain", 0)
    sends, acks, starts = parse_records(run, res)
    logs, other_events, syncs, resyncs = parse_logs(run, res)
    for u in user_ids:
        if u not in logs:
            res.bad("harness", f"no sync output for user {u}")
    if retain:
        # Logs keep only their newest events: history is the record of
        # every message, and each log must agree with it (below).
        history = parse_history(run, res)
        truth = {u: [m for ms in convs.values() for m in ms] for u, convs in history.items()}
        for u in user_ids:
            if u not in history:
                res.bad("harness", f"no history for user {u}")
    else:
        # Every event is kept, so the logs hold every message.
        if resyncs:
            res.bad("unexpected resync", f"{resyncs} syncs were told to resync")
        truth = {u: [m for seg in segs for m in seg] for u, segs in logs.items()}

    # Every message as each user saw it: conversation -> user -> [(conv_seq, key)].
    views = defaultdict(lambda: defaultdict(list))
    # (sender, client_msg_id) -> set of (conversation, conv_seq) seen anywhere.
    placed = defaultdict(set)
    for user, msgs in truth.items():
        seen = {}
        last_in_conv = {}
        for m in msgs:
            conv, cseq = m.conv, m.cseq
            key = (m.sender, m.mid)
            where = m.line
            if key in seen:
                res.bad("delivered twice", f"{key[0]} {key[1]} at {seen[key]} and {m.line}")
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

    delivered = sum(len(seg) for segs in logs.values() for seg in segs)
    if retain:
        check_logs_against_history(logs, history, res)

    # What each user's live device printed: with a retention, checked
    # against history like the syncs; without, exactly the log they read.
    live_messages, live_resyncs = 0, 0
    if meta.get("live"):
        live, _, _, live_resyncs = parse_logs(run, res, "live")
        live_messages = sum(len(seg) for segs in live.values() for seg in segs)
        for u in user_ids:
            if u not in live:
                res.bad("harness", f"no live output for user {u}")
        if retain:
            check_logs_against_history(live, history, res)
        else:
            if live_resyncs:
                res.bad("unexpected resync", f"{live_resyncs} live devices were told to resync")
            def ident(m):
                return (m.conv, m.cseq, m.sender, m.mid)

            for user, segs in sorted(live.items()):
                got = [m for seg in segs for m in seg]
                want = [m for seg in logs.get(user, []) for m in seg]
                i = next(
                    (k for k, (a, b) in enumerate(zip(got, want)) if ident(a) != ident(b)),
                    min(len(got), len(want)),
                )
                if len(got) != len(want) or i < len(want):
                    res.bad(
                        "live log differs",
                        f"{user}: live {len(got)} messages, synced {len(want)}; first difference "
                        f"at message {i}: {got[i].line if i < len(got) else 'end'} against "
                        f"{want[i].line if i < len(want) else 'end'}",
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
        "retain": retain,
        "syncs": syncs,
        "resyncs": resyncs,
        "live_messages": live_messages,
        "live_resyncs": live_resyncs,
        "unacknowledged": len(unacked),
        "unacknowledged_but_stored": unacked_stored,
        "unacknowledged_not_stored": len(unacked) - unacked_stored,
    }
    if not acks:
        res.bad("harness", "no message was acknowledged: nothing was tested")
    return res


def check_logs_against_history(logs, history, res):
    """With retention on, each stretch of a user's log between resyncs must
    be an unbroken run of their history: every message where history has it,
    none skipped within a conversation (a key that was not refused resumes
    exactly after what it had), none twice; and the last stretch, read to
    the end, must reach each conversation's newest message."""
    for user, segments in logs.items():
        convs = history.get(user, {})
        # conversation -> conv_seq -> (position in the user's history, message)
        index = {
            c: {m.cseq: (i, (m.sender, m.mid)) for i, m in enumerate(ms)}
            for c, ms in convs.items()
        }
        for n, seg in enumerate(segments):
            last = {}  # conversation -> (history index, where) of the previous message
            seen = set()
            for m in seg:
                key = (m.sender, m.mid)
                if key in seen:
                    res.bad(
                        "delivered twice",
                        f"{m.line}: {key[0]} {key[1]} again since the last resync",
                    )
                seen.add(key)
                at = index.get(m.conv, {}).get(m.cseq)
                if at is None or at[1] != key:
                    res.bad(
                        "log disagrees with history",
                        f"{m.line}: {key} at {m.conv}#{m.cseq}, history has {at and at[1]}",
                    )
                    continue
                prev = last.get(m.conv)
                if prev is not None and at[0] != prev[0] + 1:
                    res.bad(
                        "gap in sync",
                        f"{m.line}: {m.conv}#{m.cseq} follows {prev[1]} with "
                        f"{at[0] - prev[0] - 1} of its history between",
                    )
                last[m.conv] = (at[0], m.line)
            if n == len(segments) - 1:
                for conv, (i, where) in sorted(last.items()):
                    if i != len(convs[conv]) - 1:
                        res.bad(
                            "sync stopped short",
                            f"{user}: the last sync ends {conv} at {where}, "
                            f"{len(convs[conv]) - 1 - i} messages before its newest",
                        )


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
            "other_events={other_events} syncs={syncs} (told to resync {resyncs})".format(**c)
            + (
                " (log retention {retain}: messages checked in history)".format(**c)
                if c["retain"]
                else ""
            ),
            file=out,
        )
        print(
            "  live devices: messages={live_messages} (told to resync {live_resyncs})".format(**c),
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

    def line_of(e):  # a resync note is written as it is
        return (e if isinstance(e, str) else json.dumps(e)) + "\n"

    def run_of(records, logs, meta):
        d = tempfile.mkdtemp(prefix="crash-check-selftest.")
        os.makedirs(os.path.join(d, "records"))
        os.makedirs(os.path.join(d, "sync"))
        for w, lines in records.items():
            with open(os.path.join(d, "records", f"{w}.log"), "w") as f:
                f.write("".join(line + "\n" for line in lines))
        for u, evs in logs.items():
            with open(os.path.join(d, "sync", f"{u}.jsonl"), "w") as f:
                f.write("".join(map(line_of, evs)))
        os.makedirs(os.path.join(d, "live"))
        for u, evs in meta.get("live_logs", {}).items():
            with open(os.path.join(d, "live", f"{u}.jsonl"), "w") as f:
                f.write("".join(map(line_of, evs)))
        for u, convs in meta.get("history", {}).items():
            os.makedirs(os.path.join(d, "history", u))
            for conv, evs in convs.items():
                with open(os.path.join(d, "history", u, f"{conv}.jsonl"), "w") as f:
                    f.write("".join(map(line_of, evs)))
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump({k: v for k, v in meta.items() if k not in ("history", "live_logs")}, f)
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
            # What each user's live device printed: the same log, with
            # `pigeon listen`'s notes and pushes that are not stored.
            "live": True,
            "live_logs": {
                u: ["connected to tcp://x as u (device 2)"]
                + json.loads(json.dumps(evs))
                + [{"type": "presence", "user": "w0", "state": "online"}]
                for u, evs in logs.items()
            },
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
    def retained():
        """The base run with a log retention: history holds every message
        (from the base logs), and r0's sync output reads three events, is
        told to resync, and reads its log again from the oldest retained
        (its first event trimmed)."""
        r, l, m = base()
        m["retain"] = 2
        m["history"] = history = {}
        for u, evs in l.items():
            for e in evs:
                if e.get("type") == "message":
                    h = {k: v for k, v in e.items() if k not in ("seq", "type")}
                    history.setdefault(u, {}).setdefault(e["conversation_id"], []).append(h)
        r0, note = l["r0"], RESYNC_NOTE + "; syncing from the oldest retained event"
        l["r0"] = [SYNC_MARK] + r0[:3] + [SYNC_MARK, note] + r0[1:]
        return r, l, m

    def skip(r, l, m):  # a stretch without a resync misses w0-2 (dconv 3)
        del l["r0"][8]

    def stop_short(r, l, m):  # the last stretch ends before w0-3 (dconv 4)
        l["r0"].pop()

    def log_differs(r, l, m):
        l["w0"][3]["client_msg_id"] = l["w0"][3]["text"] = "w0-0"

    def again(r, l, m):  # w0-0 twice in one stretch
        l["r0"].insert(7, msg(2, dconv, 1, "w0", "w0-0"))

    def lost_in_history(r, l, m):
        for convs in m["history"].values():
            for evs in convs.values():
                evs[:] = [e for e in evs if e.get("text") != "w0-2"]

    retained_faults = [
        ("gap in sync", skip),
        ("sync stopped short", stop_short),
        ("log disagrees with history", log_differs),
        ("delivered twice", again),
        ("acknowledged but lost", lost_in_history),
    ]
    faults.append(("unexpected resync", lambda r, l, m: l["w1"].append(RESYNC_NOTE)))
    faults.append(("live log differs", lambda r, l, m: m["live_logs"]["r0"].pop(3)))
    faults.append(
        ("unexpected resync", lambda r, l, m: m["live_logs"]["w0"].insert(2, RESYNC_NOTE))
    )
    retained_faults.append(("gap in sync", lambda r, l, m: m["live_logs"]["r0"].pop(4)))

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
    r, l, m = retained()
    res = check_once(r, l, m)
    if not res.ok() or (res.counts.get("syncs"), res.counts.get("resyncs")) != (2, 1):
        print("self-test: the clean run with retention was refused:", file=sys.stderr)
        report(res, sys.stderr)
        failures += 1
    for kind, fault, start in [(k, f, base) for k, f in faults] + [
        (k, f, retained) for k, f in retained_faults
    ]:
        r, l, m = start()
        fault(r, l, m)
        res = check_once(r, l, m)
        if kind not in res.violations:
            print(f"self-test: fault {fault.__name__} not reported as {kind!r}:", file=sys.stderr)
            report(res, sys.stderr)
            failures += 1
    total = len(faults) + len(retained_faults)
    print(f"crash check self-test: {total} faults, {failures} failures")
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
