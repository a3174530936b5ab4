"""Run the lecture's claims as measured experiments on the synthetic world and write a report.

    plmkit tour                          # every experiment (target: 10 minutes on 2 idle CPU cores)
    plmkit tour --quick                  # smaller models and fewer steps (target: 90 s on 2 cores)
    plmkit tour --only pretraining,icl --seed 1 --out tour_out
    plmkit tour --threads 1              # torch CPU threads (default: min(2, CPUs))

Writes report.md (plots beside it in plots/), a self-contained report.html and metrics.json to --out.
"""

from __future__ import annotations

import difflib
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from plmkit import __version__
from plmkit.errors import ConfigError
from plmkit.tour import Context, experiment_names, run_experiments
from plmkit.tour.report import write_report


@dataclass
class Config:
    out: str = field(default="tour_out", metadata={"help": "directory for report.md/html and metrics.json"})
    only: list[str] = field(
        default_factory=list, metadata={"help": "comma-separated experiments to run (all)"}
    )
    quick: bool = field(default=False, metadata={"help": "smaller runs: the whole tour in about a minute"})
    seed: int = field(default=0, metadata={"help": "seed of the world, the models and the sampling"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    threads: int = field(
        default=0, metadata={"help": "CPU threads for torch (0: min(2, number of CPUs), the 2-core target)"}
    )

    def __post_init__(self) -> None:
        names = experiment_names()
        for name in self.only:
            if name not in names:
                hint = difflib.get_close_matches(name, names, n=1)
                tail = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise ConfigError(
                    f"--only: unknown experiment '{name}'{tail}; experiments: {', '.join(names)}"
                )
        if self.threads < 0:
            raise ConfigError(f"--threads must be >= 0, got {self.threads}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device must be cpu or cuda, got '{self.device}'")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(cfg: Config) -> dict:
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    # The tour's budgets are set for 2 CPU cores; more threads than cores only slow tiny models down.
    torch.set_num_threads(cfg.threads or min(2, os.cpu_count() or 1))
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    ctx = Context(seed=cfg.seed, quick=cfg.quick, device=cfg.device, work=out / "work", log=_log)
    start = time.perf_counter()
    results = run_experiments(ctx, cfg.only)
    meta = {
        "seed": cfg.seed,
        "quick": cfg.quick,
        "device": cfg.device,
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - start,
        "version": __version__,
    }
    paths = write_report(results, out, meta)
    _log(f"report: {paths['html']}")
    return {
        "report": str(paths["md"]),
        "html": str(paths["html"]),
        "supported": {r.name: r.supported for r in results},
        "seconds": round(meta["seconds"], 1),
    }
