"""The benchmark harness still works: `python -m bench --quick` measures every section.

This is not a performance test: sizes are tiny and no figure is compared with a goal. It fails
when a section breaks, a row refers to a baseline nobody measured, or nothing is saved.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import SECTIONS
from carebus.runtime.config import PROJECT_ROOT

pytestmark = pytest.mark.integration


# Every section starts its own broker and database (the baseline two: secured and plaintext);
# on a loaded 2-core box the whole quick run can take longer than the default 300 s.
@pytest.mark.timeout(900)
def test_quick_bench_measures_every_section_and_saves_the_table(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--results", str(tmp_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    saved = sorted(tmp_path.glob("*-quick.json"))
    assert len(saved) == 1, list(tmp_path.iterdir())
    document = json.loads(saved[0].read_text())
    assert {"cpu", "cores", "memory", "kafka"} <= set(document["machine"])

    rows = document["rows"]
    assert {row["section"] for row in rows} == set(SECTIONS)
    keys = {row["key"] for row in rows if row["key"]}
    assert {"kafka.produce", "kafka.consume", "kafka.loop", "kafka.latency_p99_ms"} <= keys
    # TLS and SASL are measured against a plaintext broker in the same run.
    assert {
        "kafka.produce_plaintext",
        "kafka.consume_plaintext",
        "kafka.loop_plaintext",
        "kafka.latency_p99_ms_plaintext",
    } <= keys
    for row in rows:
        assert math.isfinite(row["value"]), row
        if row["baseline"] is not None:
            assert row["baseline"] in keys, row
            assert row["ratio"], row
            assert "missing" not in row["ratio"], row
        if row["goal"] is not None:
            assert row["met"] in (True, False), row
    # The printed table is the saved one.
    table = saved[0].with_suffix(".md").read_text()
    assert all(row["name"] in table for row in rows)
    assert "| section | figure | value | goal | vs baseline | note |" in run.stdout
