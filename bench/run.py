"""Run named benchmark cases and print plmkit's figure, the reference's figure and their ratio.

    python bench/run.py --list
    python bench/run.py                         # every case
    python bench/run.py tokenizer_encode --json results.json
    python -m bench.run tokenizer_encode

A case is a function `() -> list[BenchResult]` that measures plmkit and the reference side by side in the
same process (alternating runs, so machine noise hits both alike). Add a case with one line in CASES:
`"name": "bench.<module>:<function>"`; modules are imported only when their case runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import json
import math
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`: let `import bench.x` work as under `python -m`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.result import BenchResult  # noqa: E402 - after the path fix above

__all__ = ["BenchResult", "CASES", "main", "run_cases", "table"]


CASES: dict[str, str] = {
    "tokenizer_encode": "bench.data_tokenizer:encode_throughput",
    "tokenizer_train": "bench.data_tokenizer:train_throughput",
    "gpt_train": "bench.gpt_speed:train_case",
    "gpt_generate": "bench.gpt_speed:generate_case",
    "training_loop": "bench.training_loop:loop_throughput",
    "ppo_speed": "bench.ppo_speed:case",
    "decoder_families": "bench.decoder_families:case",
}


def resolve(name: str) -> Callable[[], list[BenchResult]]:
    module_name, _, function = CASES[name].partition(":")
    return getattr(importlib.import_module(module_name), function)


def _format(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value == 0 or 0.01 <= abs(value) < 1e6:
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.1f}"
    return f"{value:.3e}"


def table(results: Sequence[BenchResult]) -> str:
    header = ("case", "metric", "plmkit", "reference", "ratio", "unit", "better", "note")
    rows = [
        (r.case, r.metric, _format(r.plmkit), _format(r.reference),
         "n/a" if math.isnan(r.ratio) else f"{r.ratio:.2f}x", r.unit,
         "higher" if r.higher_is_better else "lower", r.note)
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    numeric = {2, 3, 4}
    lines = []
    for row in [header, *rows]:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_cases(names: Sequence[str]) -> tuple[list[BenchResult], dict[str, str]]:
    """Run cases in order; a failing case is reported and the others still run."""
    results: list[BenchResult] = []
    failures: dict[str, str] = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            case_results = list(resolve(name)())
        except Exception as e:  # a benchmark's failure must not hide the other cases' figures
            traceback.print_exc()
            failures[name] = f"{type(e).__name__}: {e}"
            continue
        for r in case_results:
            if not isinstance(r, BenchResult):
                failures[name] = f"returned {type(r).__name__}, not BenchResult"
                break
        else:
            results.extend(case_results)
        print(f"  {name} took {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    return results, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="cases to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    if args.list:
        width = max(map(len, CASES))
        for name, target in CASES.items():
            print(f"{name:<{width}}  {target}")
        return 0
    for name in args.names:
        if name not in CASES:
            hint = difflib.get_close_matches(name, list(CASES), n=1)
            tail = f" (did you mean '{hint[0]}'?)" if hint else ""
            print(f"error: unknown benchmark '{name}'{tail}; --list shows them", file=sys.stderr)
            return 2
    names = args.names or list(CASES)
    results, failures = run_cases(names)
    print(table(results))
    for name, message in failures.items():
        print(f"FAILED {name}: {message}")
    if args.json:
        payload = {
            "machine": {"python": platform.python_version(), "platform": platform.platform(),
                        "processor": platform.processor()},
            "results": [{**dataclasses.asdict(r), "ratio": r.ratio} for r in results],
            "failures": failures,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
