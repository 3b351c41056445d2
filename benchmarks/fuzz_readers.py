"""Fuzz the annotation readers with the strategies of tests/fuzz_cases.py, many more cases than the tests run.

    python benchmarks/fuzz_readers.py [--cases 10000] [--readers coco yolo ...] [--seed 0]

Prints per reader: cases, cases read, UserErrors, escapes (any other exception), and each escape's exception type
and the place it was raised, with the first case that raised it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from fuzz_cases import READERS, Case, read  # noqa: E402


def _site(error: BaseException) -> str:
    frame = traceback.extract_tb(error.__traceback__)[-1]
    return f"{type(error).__name__} at {Path(frame.filename).name}:{frame.lineno} ({frame.name})"


def _gist(message: str) -> str:
    """A UserError's message without its file names and values, to tally the kinds of refusal."""
    return re.sub(r"DATA\S*|'[^']*'|\d+(\.\d+)?", "…", message)[:110]


def fuzz(reader: str, cases: int, random_seed: int) -> dict[str, object]:
    """Run `cases` generated cases of `reader`; outcome counts and escapes by site."""
    counts: Counter[str] = Counter()
    escapes: Counter[str] = Counter()
    first: dict[str, Case] = {}
    messages: Counter[str] = Counter()

    @seed(random_seed)
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(READERS[reader]())
    def run(case: Case) -> None:
        counts["cases"] += 1
        try:
            message = read(case)
            counts["ok" if message is None else "user_error"] += 1
            if message is not None:
                messages[_gist(message)] += 1
        except Exception as error:  # noqa: BLE001 - counting every escape is the point
            site = _site(error)
            escapes[site] += 1
            first.setdefault(site, case)

    start = time.perf_counter()
    run()
    return {
        "counts": counts,
        "escapes": escapes,
        "first": first,
        "messages": messages,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases per reader (default 10000)")
    parser.add_argument("--readers", nargs="*", default=sorted(READERS), choices=sorted(READERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--messages", type=int, default=0, help="also print the N commonest UserErrors per reader")
    args = parser.parse_args()
    print(f"{'reader':<10} {'cases':>7} {'read':>7} {'UserError':>10} {'escapes':>8} {'seconds':>8}")
    found = {}
    for reader in args.readers:
        result = fuzz(reader, args.cases, args.seed)
        counts, escapes = result["counts"], result["escapes"]
        print(
            f"{reader:<10} {counts['cases']:>7} {counts['ok']:>7} {counts['user_error']:>10} "
            f"{sum(escapes.values()):>8} {result['seconds']:>8.0f}",
            flush=True,
        )
        found[reader] = result
    for reader, result in found.items():
        for gist, n in result["messages"].most_common(args.messages):
            print(f"{reader}: {n} × {gist}")
        for site, n in result["escapes"].most_common():
            print(f"\n{reader}: {n} × {site}\n  first: {result['first'][site]!r:.2000}")


if __name__ == "__main__":
    main()
