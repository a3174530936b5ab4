"""The training loop: accumulation, schedules, weight-decay groups, NaN policy, precision, config errors."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import TinyLM, collate, make_examples, step_fn  # noqa: E402

from plmkit.data.batches import ShuffledBatches  # noqa: E402
from plmkit.errors import ConfigError, TrainingError  # noqa: E402
from plmkit.training import StepOutput, TrainConfig, accumulate_gradients, lr_factor, train  # noqa: E402
from plmkit.training.optim import default_param_groups  # noqa: E402


def _model(seed: int = 0, dropout: float = 0.0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(dropout=dropout)


def _grads(model: TinyLM) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_four_micro_batches_give_the_gradient_of_one_batch():
    examples = make_examples(8, seed=3)
    full = collate(examples)
    micro = [collate(examples[i : i + 2]) for i in range(0, 8, 2)]
    assert len({m["input_ids"].shape[1] for m in micro}) > 1  # padding differs between micro-batches

    one = _model()
    params = list(one.parameters())
    window = accumulate_gradients(one, step_fn, [full], params)
    four = _model()
    window4 = accumulate_gradients(four, step_fn, micro, list(four.parameters()))

    assert window.num_targets == window4.num_targets == sum(len(e) - 1 for e in examples)
    assert window4.loss == pytest.approx(window.loss, rel=1e-6)
    g1, g4 = _grads(one), _grads(four)
    for name in g1:
        torch.testing.assert_close(g4[name], g1[name], atol=1e-6, rtol=0)
    # and it is the gradient of the mean loss per target over the whole batch
    reference = _model()
    out = step_fn(reference, full)
    (out.loss_sum / out.num_targets).backward()
    for name, grad in _grads(reference).items():
        torch.testing.assert_close(g1[name], grad, atol=1e-6, rtol=0)


def _cfg(**overrides) -> TrainConfig:
    base = dict(max_steps=4, lr=1e-2, warmup_steps=1, progress=False)
    return TrainConfig(**{**base, **overrides})


def _batches(batch_size: int) -> ShuffledBatches:
    return ShuffledBatches(make_examples(), collate, batch_size, seed=1)


def test_train_with_accumulation_matches_the_big_batch():
    big = train(_model(), step_fn, _batches(8), _cfg())
    accum = train(_model(), step_fn, _batches(2), _cfg(grad_accum=4))
    for a, b in zip(big.history, accum.history):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
    assert big.history[-1]["loss"] < big.history[0]["loss"]


def test_schedule_golden_values():
    kw = dict(warmup_steps=2, max_steps=6, min_lr_ratio=0.1)
    cosine = [lr_factor(s, schedule="cosine", **kw) for s in range(6)]
    linear = [lr_factor(s, schedule="linear", **kw) for s in range(6)]
    constant = [lr_factor(s, schedule="constant", **kw) for s in range(6)]
    assert cosine == pytest.approx([0.5, 1.0, 1.0, 0.775, 0.325, 0.1])
    assert linear == pytest.approx([0.5, 1.0, 1.0, 0.7, 0.4, 0.1])
    assert constant == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0])
    result = train(_model(), step_fn, _batches(8), _cfg(max_steps=6, warmup_steps=2, lr=0.02))
    assert [row["lr"] for row in result.history] == pytest.approx([0.02 * f for f in cosine])


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    kw = dict(warmup_steps=2, max_steps=12, min_lr_ratio=0.0, decay_fraction=0.3)
    wsd = [lr_factor(s, schedule="wsd", **kw) for s in range(12)]
    # 10 steps after warmup, 3 of them decaying: the last step reaches min_lr_ratio.
    assert wsd == pytest.approx([0.5] + [1.0] * 8 + [2 / 3, 1 / 3, 0.0])
    floor = [lr_factor(s, schedule="wsd", **{**kw, "min_lr_ratio": 0.1}) for s in range(12)]
    assert floor[-1] == pytest.approx(0.1) and floor[8] == 1.0
    result = train(
        _model(), step_fn, _batches(8),
        _cfg(max_steps=12, warmup_steps=2, lr=0.02, schedule="wsd", decay_fraction=0.3, min_lr_ratio=0.0),
    )
    assert [row["lr"] for row in result.history] == pytest.approx([0.02 * f for f in wsd])
    with pytest.raises(ConfigError, match="decay_fraction"):
        TrainConfig(schedule="wsd", decay_fraction=0.0)


def test_no_weight_decay_on_norms_biases_embeddings_and_frozen_params_left_out():
    model = _model()
    model.layers[1].up_proj.weight.requires_grad_(False)
    decay, no_decay = default_param_groups(model, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed == [
        "layers.0.down_proj.weight",
        "layers.0.up_proj.weight",
        "layers.0.v_proj.weight",
        "layers.1.down_proj.weight",
        "layers.1.v_proj.weight",
    ]
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert "embed_tokens.weight" in undecayed  # also the tied lm_head
    assert "layers.0.attn_norm.weight" in undecayed and "layers.0.up_proj.bias" in undecayed
    assert "layers.1.up_proj.weight" not in undecayed


def _nan_at(step: int):
    calls = {"n": 0}

    def fn(model, batch):
        calls["n"] += 1
        out = step_fn(model, batch)
        if calls["n"] == step:
            return StepOutput(out.loss_sum * float("nan"), out.num_targets, {})
        return out

    return fn


def test_nan_loss_stops_with_the_step():
    with pytest.raises(TrainingError, match=r"^loss is nan at step 3 "):
        train(_model(), _nan_at(3), _batches(8), _cfg())


def test_nan_loss_skip_policy_counts_and_leaves_weights():
    seen = []

    def fn(model, batch):
        seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        out = step_fn(model, batch)
        return StepOutput(out.loss_sum * float("inf"), out.num_targets, {}) if len(seen) == 2 else out

    result = train(_model(), fn, _batches(8), _cfg(nan_policy="skip"))
    assert result.skipped_steps == 1 and result.step == 4
    assert result.history[1]["skipped"] is True and math.isinf(result.history[1]["loss"])
    for name, before in seen[1].items():  # the skipped step changed nothing
        assert torch.equal(seen[2][name], before)
    assert not torch.equal(seen[1]["layers.0.v_proj.weight"], seen[0]["layers.0.v_proj.weight"])
    assert all(math.isfinite(r["loss"]) for i, r in enumerate(result.history) if i != 1)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(precision):
    result = train(_model(), step_fn, _batches(8), _cfg(precision=precision, max_steps=6, clip_norm=0.0))
    losses = [r["loss"] for r in result.history]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_activation_checkpointing_keeps_losses_and_names():
    plain = train(_model(), step_fn, _batches(8), _cfg())
    model = _model()
    names = list(model.state_dict())
    recomputed = train(model, step_fn, _batches(8), _cfg(activation_checkpointing=True))
    assert list(model.state_dict()) == names
    assert [r["loss"] for r in recomputed.history] == [r["loss"] for r in plain.history]


def test_eval_and_metrics_file(tmp_path):
    calls = []

    def eval_fn(model):
        calls.append(model.training)
        return {"loss": 1.5}

    result = train(_model(), step_fn, _batches(8), _cfg(eval_every=2, out_dir=str(tmp_path)), eval_fn=eval_fn)
    assert calls == [False, False] and result.final_eval == {"loss": 1.5}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in rows] == [
        (1, "train"),
        (2, "train"),
        (2, "eval"),
        (3, "train"),
        (4, "train"),
        (4, "eval"),
    ]
    assert {"loss", "lr", "tokens_per_s", "grad_norm"} <= set(rows[0])
    assert (tmp_path / "step-4" / "manifest.json").is_file()


def test_fresh_run_refuses_an_out_dir_that_holds_a_run(tmp_path):
    train(_model(), step_fn, _batches(8), _cfg(max_steps=1, out_dir=str(tmp_path)))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError, match="already holds a run; set resume=True"):
        train(_model(), step_fn, _batches(8), _cfg(max_steps=1, out_dir=str(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"schedule": "cos"}, "TrainConfig.schedule='cos': must be one of cosine, linear, constant, wsd"),
        ({"precision": "fp8"}, "TrainConfig.precision='fp8': must be one of fp32, bf16, fp16"),
        ({"grad_accum": 0}, "TrainConfig.grad_accum=0: must be >= 1"),
        ({"nan_policy": "ignore"}, "TrainConfig.nan_policy='ignore': must be one of stop, skip"),
        ({"resume": True}, "TrainConfig.resume=True: needs out_dir to find checkpoints in"),
        ({"betas": (0.9, 1.0)}, r"TrainConfig.betas=\(0.9, 1.0\): must be two values in \[0, 1\)"),
    ],
)
def test_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        TrainConfig(**overrides)


def test_every_config_field_has_help():
    import dataclasses

    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f.name


def test_decay_embeddings_moves_only_the_embedding_matrix_into_the_decayed_group():
    model = _model()
    names = {id(p): n for n, p in model.named_parameters()}
    plain, _ = default_param_groups(model, weight_decay=0.1)
    decay, no_decay = default_param_groups(model, weight_decay=0.1, decay_embeddings=True)
    added = {names[id(p)] for p in decay["params"]} - {names[id(p)] for p in plain["params"]}
    assert added == {"embed_tokens.weight"}
    assert all(p.ndim < 2 or "norm" in names[id(p)] for p in no_decay["params"])
