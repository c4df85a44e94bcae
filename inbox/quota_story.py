"""The story of one quota (`inbox quota show`): why it looks the way it does, from every table, by key.

Six reads, each by key (public.quota and the gate by primary key, the inbox by its primary key's
prefix, the dead letters by their quota index, the outbox archive by the expression index of
migration 013, the repairs by their quota index) but one: the outbox queue has no index by quota
(migration 020: the apply's insert of every message paid for it), so its newest QUEUE_SCAN messages
are searched, by msg_id. Fast on an inbox of any size (tests/integration/test_quota_story.py reads
the plans). Lists are newest first and bounded; the story says when older rows were left out
(`truncated`), and when the queue held more unconsumed messages than it searched ("outbox_queue").

The JSON form (`--json`) is documented in docs/operations.md; its `format` names its version.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from inbox.db.queries import Queries
from inbox.text import printable

FORMAT = "inbox.quota_story/1"
# the newest messages of the outbox queue searched for the quota's (a consumer that keeps up leaves
# the queue far shorter; 100,000 messages are read in about 0.1 s)
QUEUE_SCAN = 100_000


@dataclass
class QuotaStory:
    quota_id: uuid.UUID
    quota: dict[str, Any] | None
    gate: dict[str, Any] | None
    events: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    repairs: list[dict[str, Any]] = field(default_factory=list)
    # sections with older rows left out (more than the limit)
    truncated: list[str] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return any([self.quota, self.gate, self.events, self.dead_letters, self.outbox, self.repairs])

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "quota_id": self.quota_id,
            "verdict": verdict(self),
            "quota": self.quota,
            "gate": self.gate,
            "events": self.events,
            "dead_letters": self.dead_letters,
            "outbox": self.outbox,
            "repairs": self.repairs,
            "truncated": self.truncated,
        }


def read_story(
    queries: Queries, quota_id: uuid.UUID, limit: int = 100, queue_scan: int = QUEUE_SCAN
) -> QuotaStory:
    """Everything the database knows about one quota, in one read-only snapshot."""
    more = limit + 1  # one more than shown: whether older rows were left out
    with queries.conn.transaction():
        queries.read_only_snapshot()
        unsearched = queries.quota_show_queue_bound(queue_scan)
        story = QuotaStory(
            quota_id=quota_id, quota=queries.quota_show_row(quota_id), gate=queries.quota_show_gate(quota_id)
        )
        lists = {
            "events": queries.quota_show_events(quota_id, more),
            "dead_letters": queries.quota_show_dead_letters(quota_id, more),
            "outbox": queries.quota_show_outbox(quota_id, unsearched, more),
            "repairs": queries.quota_show_repairs(quota_id, more),
        }
    for section, rows in lists.items():
        if len(rows) > limit:
            story.truncated.append(section)
            rows = rows[:limit]
        rows.reverse()  # read newest first (bounded); told oldest first
        setattr(story, section, rows)
    if unsearched is not None:
        story.truncated.append("outbox_queue")
    return story


# -- the verdict ----------------------------------------------------------------------------------


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S%z")


def _version(version: int, is_delete: bool) -> str:
    return f"v{version}{' delete' if is_delete else ''}"


def _one_line(text: str, width: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def verdict(story: QuotaStory) -> str:
    """One line: where the quota stands, and every event that did not simply apply."""
    if not story.known:
        return (
            f"unknown quota {story.quota_id}: nothing in public.quota, the version gate, the inbox, "
            "the dead letters, the outbox or the repairs"
        )
    parts = [_standing(story)]
    for event in story.events:
        name = _version(event["version"], event["is_delete"])
        status = event["status"]
        if status == "stale":
            parts.append(f"{name} ({event['source']}) was stale: not above the version applied before it")
        elif status == "pending":
            retry = f", attempt {event['attempts'] + 1}" if event["attempts"] else ""
            error = f", last error: {_one_line(event['last_error'], 80)}" if event["last_error"] else ""
            parts.append(f"{name} is pending{retry}{error}")
    for letter in story.dead_letters:
        if letter["resolved_at"] is None:
            parts.append(
                f"{_version(letter['version'], letter['is_delete'])} is a dead letter "
                f"({letter['error_class']}): {_one_line(letter['error_message'], 100)}"
            )
    if story.repairs:
        last = story.repairs[-1]
        outcome = last["outcome"].replace("_", " ")
        parts.append(f"reconcile {outcome} {last['drift']} on {_when(last['filed_at'])}")
    return "; ".join(parts)


def _standing(story: QuotaStory) -> str:
    gate, row = story.gate, story.quota
    if gate is None:
        if row is not None:
            return f"row at v{row['source_version']} but no version gate: written outside the pipeline"
        return "never applied"
    # the gate knows its feed since migration 013; before, the event may still be in the inbox
    applied = (gate["version"], gate["is_delete"])
    by = gate["source"] or next(
        (e["source"] for e in story.events if (e["version"], e["is_delete"]) == applied), None
    )
    origin = f" from {by}" if by else ""
    if gate["is_delete"]:
        text = f"deleted at v{gate['version']}{origin}, applied {_when(gate['applied_at'])}"
        if row is not None:
            text += f", yet a row exists (v{row['source_version']}): written outside the pipeline"
        return text
    text = f"at v{gate['version']}{origin}, applied {_when(gate['applied_at'])}"
    if row is None:
        text += ", yet the row is missing: deleted outside the pipeline"
    elif row["source_version"] != gate["version"]:
        text += f", yet the row says v{row['source_version']}: edited outside the pipeline"
    return text


# -- text -----------------------------------------------------------------------------------------


def render(story: QuotaStory, out: TextIO) -> None:
    """The story as text. Stored values come from outside (an eventType, an error message): every
    line goes through text.printable, so none can drive the terminal or forge a line."""
    safe: Any = _Printable(out)
    print(f"quota {story.quota_id}: {verdict(story)}", file=safe)
    quota = story.quota
    columns = (
        ["(no row)"] if quota is None else [f"{k:<18} {'NULL' if v is None else v}" for k, v in quota.items()]
    )
    _block("public.quota:", columns, safe)
    _block(
        "version gate (inbox.quota_versions):",
        ["(none)" if story.gate is None else _gate_line(story.gate)],
        safe,
    )
    _section(story, "events", "inbox events, by version", safe, _event_line)
    _section(story, "dead_letters", "dead letters", safe, _dead_letter_line)
    _section(story, "outbox", "outbox messages (quota_changes), by msg_id", safe, _message_line)
    _section(story, "repairs", "reconcile repairs", safe, _repair_line)


class _Printable:
    """A text stream that escapes what a terminal would act on (text.printable) in all it is given."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, text: str) -> int:
        # print() writes its line end on its own; anything else is a value to escape
        return self.out.write(text if text == "\n" else printable(text))

    def flush(self) -> None:
        self.out.flush()


def _section(story: QuotaStory, name: str, title: str, out: Any, line: Any) -> None:
    rows: list[dict[str, Any]] = getattr(story, name)
    older = " (older ones not shown)" if name in story.truncated else ""
    if name == "outbox" and "outbox_queue" in story.truncated:
        older += " (only the queue's newest unconsumed messages were searched: a consumer is behind)"
    _block(f"{title}: {len(rows)}{older}", [line(row) for row in rows], out)


def _block(heading: str, lines: list[str], out: Any) -> None:
    print(file=out)
    print(heading, file=out)
    for line in lines:
        print(f"  {line}", file=out)


def _gate_line(gate: dict[str, Any]) -> str:
    previous = "none" if gate["previous_version"] is None else f"v{gate['previous_version']}"
    return (
        f"{_version(gate['version'], gate['is_delete'])} from {gate['source'] or 'unknown'}, "
        f"previous {previous}, applied {_when(gate['applied_at'])}"
    )


def _event_line(e: dict[str, Any]) -> str:
    text = (
        f"{_version(e['version'], e['is_delete']):<12} {e['op'] or '?':<7} {e['source']:<9} "
        f"{e['status']:<10} received {_when(e['received_at'])}  applied {_when(e['applied_at'])}  "
        f"attempts {e['attempts']}"
    )
    if e["last_error"]:
        text += f"  last error: {_one_line(e['last_error'], 100)}"
    return text


def _dead_letter_line(d: dict[str, Any]) -> str:
    state = (
        "open" if d["resolved_at"] is None else f"resolved {_when(d['resolved_at'])}: {d['resolution_note']}"
    )
    return (
        f"{_version(d['version'], d['is_delete']):<12} {d['error_class']:<18} {state}  "
        f"created {_when(d['created_at'])}  id {d['id']}  {_one_line(d['error_message'], 100)}"
    )


def _message_line(m: dict[str, Any]) -> str:
    message = m["message"]
    previous = message.get("previous_version")
    archived = m["place"] == "archive"
    where = f"archived {_when(m['archived_at'])}" if archived else f"queued (read {m['read_ct']}x)"
    return (
        f"msg {m['msg_id']:<8} {message.get('op', '?'):<6} v{message.get('version')} "
        f"(previous {'none' if previous is None else f'v{previous}'})  "
        f"applied {message.get('applied_at')}  {where}"
    )


def _repair_line(r: dict[str, Any]) -> str:
    filed = "" if r["version"] is None else f" as {_version(r['version'], r['is_delete'])}"
    columns = f" [{', '.join(r['columns'])}]" if r["columns"] else ""
    note = f": {r['note']}" if r["note"] else ""
    return (
        f"{_when(r['filed_at'])}  {r['drift']}{columns} ({r['versions'] or '-'})  "
        f"{r['outcome']}{filed}{note}  run {r['run_id']}"
    )
