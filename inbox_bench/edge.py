"""Step edge: decoding one 500-event Titan body at ingest, parse + key + typed row per event.

The slow path (ingest.loads with its Decimal hooks, formats.key_event, formats.titan_row) against
the fast one (inbox/edge.py: msgspec, the same rules), on the benchmark's own events (deletes
included), both from the body's bytes, in one run, best of many rounds taken in turn: noise only
ever slows a round down. No database. The two answers are compared first: a fast path that
declined, or answered otherwise, fails the step instead of being measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from inbox.ingest import ParsedBatch, parse_texts, split_body
from inbox_bench.config import Config
from inbox_bench.events import Stream
from inbox_bench.measure import Measurement

BODY_EVENTS = 500


def edge_decode(stream: Stream, cfg: Config) -> list[Measurement]:
    events = min(BODY_EVENTS, len(stream))
    body = ("[" + ",".join(stream.texts(0, events)) + "]").encode("utf-8")
    paths: dict[str, Callable[[], ParsedBatch]] = {
        "slow": lambda: parse_texts(split_body(body), fast=False),
        "fast": lambda: parse_texts(split_body(body)),
    }
    slow, fast = paths["slow"](), paths["fast"]()
    same = (slow.keys, slow.array_text, slow.rows) == (fast.keys, fast.array_text, fast.rows)
    if not same or not all(str(a) == str(b) for a, b in zip(slow.rows, fast.rows, strict=True)):
        raise RuntimeError("the fast path's answer differs from the slow path's on the benchmark body")
    if len(fast.rows) != events:
        raise RuntimeError(f"the fast path gave {len(fast.rows)} rows for {events} events")
    rounds = 10 if cfg.quick else 200
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(rounds):
        for name, parse in paths.items():
            started = time.perf_counter()
            parse()
            best[name] = min(best[name], time.perf_counter() - started)
    titles = {
        "slow": "edge: parse+key+type, slow path (json + hooks)",
        "fast": "edge: parse+key+type, fast path (msgspec)",
    }
    return [
        Measurement(
            f"edge_{name}",
            titles[name],
            events,
            seconds,
            {
                "us_per_event": round(seconds / events * 1e6, 2),
                "rounds": rounds,
                "speedup": round(best["slow"] / seconds, 2),
            },
        )
        for name, seconds in best.items()
    ]
