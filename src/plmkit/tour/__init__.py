"""The lecture as measured experiments: `plmkit tour` runs EXPERIMENTS in order and writes a report.

Each experiment is one module with NAME, TITLE, CLAIM and `run(ctx) -> Result`; adding one is a new module
and one line in EXPERIMENTS. Experiments share what they can through the Context (the world tokenizer,
the GPT pretrained on world text) and each still runs alone with `plmkit tour --only NAME`.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from types import ModuleType

from plmkit.tour.common import Context, Result

# Run order; later experiments reuse what earlier ones built (the pretrained GPT of "pretraining").
EXPERIMENTS: list[str] = [
    "plmkit.tour.tokenization",
    "plmkit.tour.pretraining",
    "plmkit.tour.transfer",
    "plmkit.tour.bidirectional",
    "plmkit.tour.masking",
    "plmkit.tour.compression",
    "plmkit.tour.peft_compare",
    "plmkit.tour.icl",
    "plmkit.tour.cot",
    "plmkit.tour.real_weights",
    "plmkit.tour.rlhf",
    "plmkit.tour.cai",
    "plmkit.tour.rlvr",
]


def experiment_modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in EXPERIMENTS]


def experiment_names() -> list[str]:
    return [module.NAME for module in experiment_modules()]


def run_experiments(
    ctx: Context, only: Sequence[str] = (), on_result: Callable[[Result], None] | None = None
) -> list[Result]:
    """Run the experiments (all, or those named in `only`) in order; a failing experiment is reported as
    such and the tour goes on."""
    modules = [m for m in experiment_modules() if not only or m.NAME in only]
    results = []
    for i, module in enumerate(modules, 1):
        ctx.log(f"[{i}/{len(modules)}] {module.TITLE} ...")
        start = time.perf_counter()
        try:
            result = module.run(ctx)
        except Exception as e:  # noqa: BLE001 - one broken experiment must not hide the others' results
            traceback.print_exc(file=sys.stderr)
            result = Result(
                module.NAME,
                module.TITLE,
                module.CLAIM,
                setup="",
                result="the experiment failed",
                supported=None,
                error=f"{type(e).__name__}: {e}",
            )
        result.seconds = time.perf_counter() - start
        verdict = {True: "supports the claim", False: "does NOT support the claim", None: "no verdict"}
        ctx.log(f"      {result.result}  [{verdict[result.supported]}; {result.seconds:.0f}s]")
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


__all__ = ["EXPERIMENTS", "Context", "Result", "run_experiments", "experiment_names", "experiment_modules"]
