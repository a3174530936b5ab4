"""DPO, robust/conservative DPO and IPO: parity with trl 1.16's DPOTrainer, invariants, soft labels, errors.

Parity runs trl's own `DPOTrainer.compute_loss` (its `_compute_loss`: the forward passes, the loss and the
logged metrics) on a transformers GPT-2 and plmkit's `preference_step` on the same weights loaded from the
same safetensors file, with the same right-padded batch, and compares the mean loss, the gradients of
several weight matrices, and the implicit-reward metrics.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from tiny_alignment import hf_gpt2, hf_tokenizer, max_grad_difference, pair_batch, plmkit_twin

from plmkit.alignment import (
    PreferenceConfig,
    dpo_loss,
    ipo_loss,
    pair_logprobs,
    preference_loss,
    preference_metrics,
    preference_step,
    robust_dpo_loss,
)
from plmkit.alignment.dpo import reference_logprobs
from plmkit.errors import ConfigError

TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trl_trainer(policy, reference, loss_type: str, beta: float, label_smoothing: float, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), report_to=[], beta=beta, loss_type=[loss_type],
        label_smoothing=label_smoothing, use_cpu=True, bf16=False, per_device_train_batch_size=2,
        disable_dropout=True,
    )
    data = Dataset.from_list([{"prompt": "w1 w2", "chosen": " w3", "rejected": " w4"}] * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data,
                          processing_class=hf_tokenizer())


def run_both(loss_type: str, beta: float, label_smoothing: float, batch: dict, tmp_path, ours_type=None):
    hf_policy, hf_reference = hf_gpt2(0), hf_gpt2(1)
    policy = plmkit_twin(hf_policy, tmp_path / "policy").train()
    reference = plmkit_twin(hf_reference, tmp_path / "reference").eval()
    trainer = trl_trainer(hf_policy, hf_reference, loss_type, beta, label_smoothing, tmp_path)
    hf_policy.train()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": batch["response_mask"]}
    theirs = trainer.compute_loss(hf_policy, inputs)
    theirs.backward()
    cfg = PreferenceConfig(beta=beta, loss_type=ours_type or loss_type, label_smoothing=label_smoothing)
    out = preference_step(cfg, reference)(policy, batch)
    ours = out.loss_sum / out.num_targets
    ours.backward()
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return ours, theirs, policy, hf_policy, out.metrics, logged


@pytest.mark.parametrize(("loss_type", "label_smoothing"), [("sigmoid", 0.0), ("ipo", 0.0), ("robust", 0.2)])
def test_loss_gradients_and_metrics_match_trl(loss_type, label_smoothing, tmp_path):
    batch = pair_batch(batch_size=3)
    ours, theirs, policy, hf_policy, metrics, logged = run_both(
        loss_type, 0.3, label_smoothing, batch, tmp_path
    )
    assert abs(ours.item() - theirs.item()) < TOL
    assert max_grad_difference(policy, hf_policy) < TOL
    for ours_key, trl_key in [
        ("rewards/chosen_reward", "rewards/chosen"), ("rewards/rejected_reward", "rewards/rejected"),
        ("rewards/accuracy", "rewards/accuracies"), ("rewards/margin", "rewards/margins"),
    ]:
        assert metrics[ours_key] == pytest.approx(logged[trl_key], abs=TOL), ours_key


def test_conservative_dpo_matches_trl_on_single_pairs(tmp_path):
    """trl 1.16 dropped label smoothing from its sigmoid loss; its `aot` loss is conservative DPO's formula
    applied after sorting the batch's log-ratios, and on a batch of one pair sorting changes nothing."""
    for seed in (1, 2):
        batch = pair_batch(batch_size=1, seed=seed)
        ours, theirs, policy, hf_policy, _, _ = run_both("aot", 0.5, 0.15, batch, tmp_path / str(seed),
                                                         ours_type="sigmoid")
        assert abs(ours.item() - theirs.item()) < TOL
        assert max_grad_difference(policy, hf_policy) < TOL


def test_policy_equal_to_reference_gives_ln2_and_zero_rewards(tmp_path):
    policy = plmkit_twin(hf_gpt2(0), tmp_path / "p")
    reference = copy.deepcopy(policy).eval()
    batch = pair_batch()
    out = preference_step(PreferenceConfig(beta=0.1), reference)(policy, batch)
    assert out.loss_sum.item() / out.num_targets == pytest.approx(math.log(2), abs=1e-6)
    assert out.metrics["rewards/margin"] == 0.0 and out.metrics["rewards/accuracy"] == 0.0
    # The gradient is not zero: at ln 2 DPO pushes chosen up and rejected down.
    out.loss_sum.backward()
    assert policy.backbone.embed_tokens.weight.grad.abs().sum() > 0


def test_lora_reference_is_the_base_with_adapters_disabled(tmp_path):
    from plmkit.peft import LoRAConfig, apply_peft

    base = plmkit_twin(hf_gpt2(0), tmp_path / "p").eval()
    frozen = copy.deepcopy(base)
    policy = apply_peft(base, "lora", LoRAConfig(r=4, targets="q_proj,v_proj,up_proj"))
    batch = pair_batch()
    # Zero-initialized LoRA: the policy is its reference, the loss ln 2.
    out = preference_step(PreferenceConfig(beta=0.1))(policy, batch)
    assert out.loss_sum.item() / out.num_targets == pytest.approx(math.log(2), abs=1e-6)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    ref_from_adapters = reference_logprobs(policy, batch, None)
    ref_from_copy = pair_logprobs(frozen, batch)
    for a, b in zip(ref_from_adapters, ref_from_copy):
        assert torch.equal(a, b)
    assert not torch.equal(pair_logprobs(policy, batch)[0], ref_from_copy[0])


def test_precomputed_reference_gives_the_same_loss(tmp_path):
    policy = plmkit_twin(hf_gpt2(0), tmp_path / "p")
    reference = plmkit_twin(hf_gpt2(1), tmp_path / "r")
    batch = pair_batch()
    with torch.no_grad():
        chosen, rejected = pair_logprobs(reference, batch)
    step = preference_step(PreferenceConfig(beta=0.2))
    live = preference_step(PreferenceConfig(beta=0.2), reference)(policy, batch).loss_sum
    pre = step(policy, {**batch, "ref_chosen_logps": chosen, "ref_rejected_logps": rejected}).loss_sum
    assert torch.equal(live, pre)


def logps(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(-torch.rand(5, generator=g) * 20 for _ in range(4))


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust", "ipo"])
def test_soft_labels_reduce_to_hard_labels(loss_type):
    pc, pr, rc, rr = logps()
    lengths = torch.tensor([3, 4, 5, 6, 7]), torch.tensor([2, 5, 5, 1, 9])
    kw = {"label_smoothing": 0.1 if loss_type == "robust" else 0.0, "chosen_lengths": lengths[0],
          "rejected_lengths": lengths[1]}
    hard = preference_loss(loss_type, pc, pr, rc, rr, 0.2, **kw)
    swapped = preference_loss(loss_type, pr, pc, rr, rc, 0.2, **{**kw, "chosen_lengths": lengths[1],
                                                                "rejected_lengths": lengths[0]})
    soft_one = preference_loss(loss_type, pc, pr, rc, rr, 0.2, p_chosen=1.0, **kw)
    assert torch.allclose(soft_one, hard, atol=1e-6)
    assert torch.allclose(preference_loss(loss_type, pc, pr, rc, rr, 0.2, p_chosen=torch.zeros(5), **kw),
                          swapped, atol=1e-6)


def test_golden_values():
    # h = (−1 − −2) − (−3 − −1) = 3, β = 0.5: −log σ(1.5) = 0.2014, conservative ε = 0.1 adds 0.1·1.5.
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-1.0]), 0.5)
    assert dpo_loss(*args).item() == pytest.approx(0.201413, abs=1e-6)
    assert dpo_loss(*args, label_smoothing=0.1).item() == pytest.approx(0.201413 + 0.1 * 1.5, abs=1e-6)
    assert dpo_loss(*args, p_chosen=0.5).item() == pytest.approx(0.201413 + 0.5 * 1.5, abs=1e-6)
    # IPO: (3 − 1/(2·0.5))² = 4; per token with 2 and 4 tokens: (1/2 + 2/4 − 1)² = 0.
    assert ipo_loss(*args).item() == pytest.approx(4.0)
    assert ipo_loss(*args, chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([4])).item() == 0.0
    # Robust DPO with ε = 0 is plain DPO.
    assert robust_dpo_loss(*args).item() == pytest.approx(0.201413, abs=1e-6)
    m = preference_metrics(*args)
    assert (m.chosen_reward, m.rejected_reward, m.accuracy, m.margin) == (0.5, -1.0, 1.0, 1.5)


def test_bad_options_are_one_line_errors(tmp_path):
    pc, pr, rc, rr = logps()
    with pytest.raises(ConfigError, match=r"^label_smoothing must be in \[0, 0.5\), got 0.5$"):
        dpo_loss(pc, pr, rc, rr, 0.1, label_smoothing=0.5)
    with pytest.raises(ConfigError, match=r"^loss_type 'hinge' is not one of sigmoid, robust, ipo$"):
        PreferenceConfig(loss_type="hinge")
    with pytest.raises(ConfigError, match=r"^p_chosen must be in \[0, 1\]"):
        dpo_loss(pc, pr, rc, rr, 0.1, p_chosen=1.5)
    with pytest.raises(ConfigError, match="^label_smoothing is for the sigmoid loss"):
        preference_loss("ipo", pc, pr, rc, rr, 0.1, label_smoothing=0.1)
    policy = plmkit_twin(hf_gpt2(0), tmp_path / "p")
    with pytest.raises(ConfigError, match="^the policy has no adapters, so it cannot serve as its own"):
        preference_step(PreferenceConfig())(policy, pair_batch())
