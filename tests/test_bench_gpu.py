"""`bench/gpu.py --smoke`: every case of the GPU suite runs its real code paths (both libraries, eager and
compiled training, eager and static-cache compiled decoding) on the CPU with tiny shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shared_paths import REPO

EXPECTED = {
    case: {f"{lib} {mode}" for lib in ("plmkit", "transformers") for mode in modes}
    for case, modes in {
        "gpt2_train": ("eager", "compiled"),
        "bert_mlm": ("eager", "compiled"),
        "decode_b1": ("eager", "static+compiled"),
        "decode_b16": ("eager", "static+compiled"),
    }.items()
}


def test_gpu_suite_smoke_runs_every_case_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    script = str(REPO / "bench" / "gpu.py")
    command = [sys.executable, script, "--smoke", "--peak-tflops", "1", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SMOKE: tiny shapes, figures meaningless" in done.stdout
    report = json.loads(out.read_text())
    assert report["smoke"] and report["card"] == "cpu"
    found: dict[str, set[str]] = {}
    for row in report["rows"]:
        found.setdefault(row["case"], set()).add(row["candidate"])
        assert row["median"] > 0 and row["low"] <= row["median"] <= row["high"]
        if row["case"].endswith("_train") or row["case"] == "bert_mlm":
            assert row["metric"] == "tokens/s" and 0 < row["mfu"] < 1  # against the stated 1 TFLOPS
        else:
            # greedy decoding of the same weights: the same tokens, compiled or not, in either library
            assert row["note"] == "tokens identical to transformers eager", row
    assert found == EXPECTED
    ratios = {(r["case"], r["candidate"]): r["ratio"] for r in report["rows"]}
    assert all(ratios[(case, "transformers eager")] == 1.0 for case in EXPECTED)


def test_flops_per_token_counts_six_n_plus_attention() -> None:
    sys.path.insert(0, str(REPO))
    from bench.gpu import train_flops_per_token

    # GPT-2 124M at T = 1024: N = 124,439,808 - 1024 * 768 position rows; nanoGPT's estimate_mfu formula
    n = 124_439_808 - 1024 * 768
    assert train_flops_per_token(n, 12, 12, 64, 1024) == 6 * n + 12 * 12 * 12 * 64 * 1024
