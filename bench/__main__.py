"""`python -m bench [--quick] [--only SECTION ...]`: every benchmark, one table, saved results.

Sections run in this order, each on its own private broker and database, so one section's data
never slows another. The baseline section runs first: every other row is shown as a ratio to a
baseline measured in this same run on this same machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time
import traceback
from pathlib import Path
from typing import Final

from bench.harness import FULL, QUICK, RESULTS_DIR, Bench

SECTIONS: Final = (
    "baseline",
    "cpu",
    "adapters",
    "gateway",
    "router",
    "latency",
    "sla",
    "sinks",
    "replay",
    "memory",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: checks the harness, not the figures"
    )
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument(
        "--results", type=Path, default=RESULTS_DIR, help="where to save the table (JSON, Markdown)"
    )
    parser.add_argument(
        "--replay-events",
        type=int,
        help="events the replay section rebuilds state from (default: the scale's, 1,000,000)",
    )
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    if args.replay_events is not None:
        scale = dataclasses.replace(scale, replay_events=args.replay_events)
    bench = Bench(scale)
    chosen = [s for s in SECTIONS if args.only is None or s in args.only or s == "baseline"]
    failed: list[str] = []
    for section in chosen:
        print(f"\n== {section} ==", flush=True)
        started = time.perf_counter()
        try:
            importlib.import_module(f"bench.{section}").run(bench)
        except Exception:  # one broken section must not lose the others' figures
            failed.append(section)
            traceback.print_exc()
        print(f"   ({section}: {time.perf_counter() - started:.0f} s)", flush=True)
    print("\n" + bench.table())
    saved = bench.save(args.results)
    print(f"\nsaved {saved} and {saved.with_suffix('.md')}")
    if failed:
        print(f"sections that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
