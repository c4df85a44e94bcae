"""`inbox reconcile` of a large CSLA against a large source with bounded memory.

CI compares 50,000 quotas; INBOX_SOAK=1 compares 1,000,000 (the README's figure). The command runs
as a subprocess that reports its own peak RSS; memory is flat when ten times the quotas cost no
more than a few MB more (keeping the rows it reads, 50,000 of them cost about 40 MB). Times are
printed (run with -s), never asserted.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from inbox.db.connect import DictConnection
from tests.acceptance.test_cli_ops import REPO

SOAK = os.environ.get("INBOX_SOAK") == "1"
QUOTAS = 1_000_000 if SOAK else 50_000
EXTRA = 10
# the command's growth in peak RSS from a tenth of the quotas to all of them
FLAT_MB = 25

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600 if SOAK else 600)]

# The command's own peak: VmHWM belongs to the address space exec gave it. ru_maxrss would not do:
# Linux carries it over exec from the forking parent (pytest, however large it is at that moment).
MEASURED = """
import os, re, resource, sys
from inbox.commands import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    peak_kb = re.search(r"VmHWM:\\s+(\\d+) kB", status.read())[1]
usage = resource.getrusage(resource.RUSAGE_SELF)
with open(os.environ["RSS_FILE"], "w") as out:
    out.write(f"{peak_kb} {usage.ru_utime + usage.ru_stime}")
sys.exit(code)
"""


def quota_id(i: int) -> str:
    """md5('q' || i)::uuid, as the SQL below builds CSLA's ids."""
    return str(uuid.UUID(hashlib.md5(f"q{i}".encode()).hexdigest()))  # noqa: S324 -- an id, not a secret


def write_source(path: Path, quotas: int) -> None:
    """Titan's truth for quotas 1..n: every 1000th differs in qty_t from what CSLA holds."""
    with path.open("w") as out:
        for i in range(1, quotas + 1):
            qty = f"{i}.126" if i % 1000 == 0 else f"{i}.125"
            out.write(
                f'{{"eventType":"UPDATE","data":{{"quota_id":"{quota_id(i)}","counterparty_id":"CP-{i % 50}",'
                f'"direction":"{"BUY" if i % 2 == 0 else "SELL"}","period_month":"2026-03-15","qty_t":{qty},'
                '"tolerance_pct":5,"incoterm_code":"CIF","metal_code":"CU","updated_at":"2026-03-01T10:00:00Z"},'
                f'"metadata":{{"version":{i % 7 + 1},"source":"titan"}}}}\n'
            )


def fill_csla(db: DictConnection, first: int, last: int, extra: int = 0) -> None:
    """Quotas first..last in CSLA with their gate, every 1000th + 1 deleted by hand (missing), and
    `extra` rows Titan lacks."""
    params = {"first": first, "last": last, "extra": extra}
    db.execute(
        """
        INSERT INTO public.quota (quota_id, counterparty_id, direction, period_month, qty_t, tolerance_pct,
                                  incoterm_code, metal_code, source_version, source_updated_at)
        SELECT md5('q' || i)::uuid, 'CP-' || (i %% 50), CASE WHEN i %% 2 = 0 THEN 'BUY' ELSE 'SELL' END,
               date '2026-03-01', (i || '.125')::numeric, 5, 'CIF', 'CU', i %% 7 + 1,
               timestamptz '2026-03-01 10:00:00+00'
        FROM generate_series(%(first)s::integer, %(last)s::integer) i
        UNION ALL
        SELECT md5('x' || i)::uuid, 'CP-X', 'BUY', date '2026-03-01', 1, NULL, NULL, 'CU', 1, NULL
        FROM generate_series(1, %(extra)s::integer) i;
        """,
        params,
    )
    db.execute(
        "INSERT INTO inbox.quota_versions (quota_id, version, is_delete)"
        " SELECT quota_id, source_version, false FROM public.quota"
        " ON CONFLICT (quota_id) DO NOTHING"
    )
    db.execute(
        "DELETE FROM public.quota WHERE quota_id IN (SELECT md5('q' || i)::uuid"
        " FROM generate_series(%(first)s::integer, %(last)s::integer) i WHERE i %% 1000 = 1)",
        params,
    )
    db.execute("VACUUM ANALYZE public.quota")
    db.execute("VACUUM ANALYZE inbox.quota_versions")


def reconcile(dsn: str, source: Path, workdir: Path) -> tuple[int, float, Counter[str], str]:
    """Exit code, peak RSS (MB), drifting quotas by kind and the time taken (wall, CPU of the
    command) of one `inbox reconcile SOURCE`; the report goes to a file, never into this process."""
    rss_file = workdir / f"rss-{source.stem}"
    report = workdir / f"report-{source.stem}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INBOX_")}
    env = {**clean, "INBOX_DATABASE_URL": dsn, "RSS_FILE": str(rss_file)}
    started = time.monotonic()
    with report.open("w") as out:
        result = subprocess.run(
            [sys.executable, "-c", MEASURED, "reconcile", str(source)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            timeout=3600,
            check=False,
        )
    seconds = time.monotonic() - started
    assert "Traceback" not in result.stderr, result.stderr
    rss_kb, cpu = rss_file.read_text().split()
    timing = f"{seconds:.1f} s ({float(cpu):.1f} s CPU in the command)"
    with report.open() as lines:
        kinds = Counter(line.split(maxsplit=1)[0] for line in lines if line.strip())
    return result.returncode, int(rss_kb) / 1024, kinds, timing


def test_a_million_quotas_reconcile_in_flat_memory(db: DictConnection, dsn: str, tmp_path: Path) -> None:
    """A tenth first, then all of it, each with the same share of drift: the second run must not
    need more memory for ten times the quotas."""
    small, full = tmp_path / "tenth.ndjson", tmp_path / "all.ndjson"
    write_source(small, QUOTAS // 10)
    write_source(full, QUOTAS)
    fill_csla(db, 1, QUOTAS // 10, extra=EXTRA)
    code, small_rss, small_kinds, small_time = reconcile(dsn, small, tmp_path)
    assert code == 1 and small_kinds["differs"] == QUOTAS // 10_000
    fill_csla(db, QUOTAS // 10 + 1, QUOTAS)

    code, rss, kinds, timing = reconcile(dsn, full, tmp_path)

    assert code == 1
    assert kinds["differs"] == QUOTAS // 1000
    assert kinds["missing"] == len(range(1, QUOTAS + 1, 1000))
    assert kinds["extra"] == EXTRA
    print(
        f"\nreconcile of {QUOTAS:,} quotas: {timing}, peak RSS {rss:.0f} MB "
        f"({QUOTAS // 10:,}: {small_time}, {small_rss:.0f} MB)"
    )
    assert rss - small_rss < FLAT_MB, (small_rss, rss)
