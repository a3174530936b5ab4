"""Checkpoints: exact round trip, tied weights, keep-last, and corrupt or truncated files that are reported
by name and never half-loaded or deleted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import TinyLM, collate, make_examples, step_fn  # noqa: E402

from plmkit.data.batches import ShuffledBatches  # noqa: E402
from plmkit.errors import CheckpointError  # noqa: E402
from plmkit.training import TrainConfig, find_latest, load_checkpoint, train  # noqa: E402
from plmkit.training.optim import build_adamw, build_scheduler, default_param_groups  # noqa: E402


def _run(out_dir: Path, steps: int = 3, resume: bool = False, keep_last: int = 0):
    torch.manual_seed(0)
    model = TinyLM(dropout=0.1)
    batches = ShuffledBatches(make_examples(), collate, 8, seed=1)
    cfg = TrainConfig(
        max_steps=steps, lr=1e-2, checkpoint_every=1, keep_last=keep_last, out_dir=str(out_dir),
        resume=resume, progress=False,
    )  # fmt: skip
    return model, batches, train(model, step_fn, batches, cfg)


def _fresh(seed: int = 5):
    torch.manual_seed(seed)
    model = TinyLM(dropout=0.1)
    optimizer = build_adamw(default_param_groups(model, 0.01), 1e-2, (0.9, 0.999), 1e-8)
    scheduler = build_scheduler(optimizer, schedule="cosine", warmup_steps=0, max_steps=3, min_lr_ratio=0.1)
    batches = ShuffledBatches(make_examples(), collate, 8, seed=1)
    return model, optimizer, scheduler, batches


def test_round_trip_restores_weights_optimizer_sampler_and_rng(tmp_path):
    model, batches, result = _run(tmp_path)
    assert result.checkpoint == tmp_path / "step-3" == find_latest(tmp_path)
    expected_rng = torch.get_rng_state()
    with safe_open(str(tmp_path / "step-3" / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
        aliases = json.loads(f.metadata()["aliases"])
    assert "lm_head.weight" not in stored and aliases == {"lm_head.weight": "embed_tokens.weight"}

    fresh, optimizer, scheduler, fresh_batches = _fresh()
    torch.manual_seed(123)
    state = load_checkpoint(tmp_path / "step-3", fresh, optimizer, scheduler, batches=fresh_batches)
    assert state["step"] == 3
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert fresh.lm_head.weight is fresh.embed_tokens.weight
    assert fresh_batches.state_dict() == batches.state_dict()
    assert torch.equal(torch.get_rng_state(), expected_rng)
    assert scheduler.last_epoch == 3
    some = next(iter(optimizer.state.values()))
    assert some["step"].item() == 3.0
    config = json.loads((tmp_path / "step-3" / "config.json").read_text())
    assert config["architecture"] == "TinyLM" and config["train"]["max_steps"] == 3


def test_keep_last_removes_the_oldest_only(tmp_path):
    _run(tmp_path, steps=4, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "step-3", "step-4"]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: _flip_byte(d / "model.safetensors"), r"model\.safetensors: sha256 does not match"),
        (
            lambda d: (d / "optimizer.safetensors").write_bytes(
                (d / "optimizer.safetensors").read_bytes()[:100]
            ),
            r"optimizer\.safetensors: truncated or altered \(100 bytes, manifest says \d+\)",
        ),
        (lambda d: (d / "trainer_state.json").unlink(), r"trainer_state\.json: missing from the checkpoint"),
        (lambda d: (d / "manifest.json").unlink(), r"manifest\.json: missing; the checkpoint is incomplete"),
    ],
)
def test_corrupt_checkpoint_is_named_and_nothing_changes(tmp_path, damage, message):
    _run(tmp_path)
    damage(tmp_path / "step-3")
    fresh, optimizer, scheduler, batches = _fresh()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "step-3", fresh, optimizer, scheduler, batches=batches)
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, before[name])
    assert not optimizer.state and batches.state_dict()["index"] == 0


def test_truncated_safetensors_with_matching_manifest_is_reported(tmp_path):
    _run(tmp_path)
    step = tmp_path / "step-3"
    weights = step / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    manifest = json.loads((step / "manifest.json").read_text())
    import hashlib

    manifest["files"]["model.safetensors"] = {
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "size": weights.stat().st_size,
    }
    (step / "manifest.json").write_text(json.dumps(manifest))
    fresh, optimizer, *_ = _fresh()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read safetensors"):
        load_checkpoint(step, fresh, optimizer)


def test_resume_with_a_corrupt_newest_checkpoint_errors_and_deletes_nothing(tmp_path):
    _run(tmp_path)
    _flip_byte(tmp_path / "step-3" / "model.safetensors")
    listing = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(
        CheckpointError, match=r"step-3/model\.safetensors: sha256 .*move it aside to resume from step-2"
    ):
        _run(tmp_path, steps=5, resume=True)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == listing
    # moved aside as the message says, the run resumes from step-2
    (tmp_path / "step-3").rename(tmp_path / "bad-step-3")
    _, _, result = _run(tmp_path, steps=4, resume=True)
    assert [r["step"] for r in result.history] == [3, 4]


def test_a_different_model_is_refused_by_key(tmp_path):
    _run(tmp_path)
    torch.manual_seed(0)
    other = TinyLM(dim=8)
    with pytest.raises(
        CheckpointError, match=r"weight 'embed_tokens.weight' has shape \(32, 16\), the model expects"
    ):
        load_checkpoint(tmp_path / "step-3", other)


def test_a_step_directory_without_manifest_is_reported_not_skipped(tmp_path):
    _run(tmp_path)
    (tmp_path / "step-3" / "manifest.json").unlink()
    with pytest.raises(
        CheckpointError, match=r"step-3/manifest\.json: missing; .*move it aside to resume from step-2$"
    ):
        find_latest(tmp_path)
    assert (tmp_path / "step-3" / "model.safetensors").is_file()
