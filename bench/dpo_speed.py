"""DPO training-step speed on the CPU: plmkit's `preference_step` against trl's `DPOTrainer`, same model.

Model: a small GPT-2 (2 layers, 128 wide, GPT-2's 50,257-token vocabulary, fp32) as the policy and a
frozen copy as the reference; batch: `--pairs` preference pairs, prompts of `--prompt` tokens and
responses of `--response` tokens (chosen and rejected padded to one length, right padding, as both
libraries collate them). One step = policy forward over chosen + rejected in one batch, the reference's
log-probs, sigmoid DPO loss, backward, and a fused AdamW step (the same optimizer on both sides).

Two cases: the reference run every step (trl's default) and the reference log-probs precomputed once
(`precompute_ref_log_probs=True` in trl, `--dpo.precompute_reference` in plmkit, its default). trl runs
its own `DPOTrainer.training_step` (its `_compute_loss` with the fused LM head, bf16 off); plmkit runs
the training loop's `accumulate_gradients` with `preference_step`. Where plmkit gains: only the response
positions go through the 50,257-row output matrix (trl projects every position on the CPU, where its
compact Triton path is unavailable, and also computes entropy, mean logits and top-1 hits for its logs).

The two libraries alternate step by step; the median and every run are printed (tokens/s counts the real
tokens of the chosen and rejected rows).

    python bench/dpo_speed.py [--pairs 4] [--prompt 96] [--response 32] [--steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plmkit.alignment.dpo import PreferenceConfig, pair_logprobs, preference_step
from plmkit.interop.hf import load
from plmkit.training.loop import accumulate_gradients

VOCAB, WIDTH, LAYERS, HEADS = 50257, 128, 2, 4


def hf_model(seed: int):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=512, n_embd=WIDTH, n_layer=LAYERS,
                                  n_head=HEADS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  pad_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def make_batch(args: argparse.Namespace, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, length = args.pairs, args.prompt + args.response
    ids = torch.randint(1, VOCAB, (2 * b, length), generator=g)
    # Responses of varying length; the prompt is shared by each pair's two rows.
    ids[b:, : args.prompt] = ids[:b, : args.prompt]
    ends = args.prompt + torch.randint(args.response // 2, args.response + 1, (2 * b,), generator=g)
    positions = torch.arange(length)[None]
    attention_mask = (positions < ends[:, None]).long()
    response_mask = ((positions >= args.prompt) & (positions < ends[:, None])).long()
    return {"input_ids": ids.masked_fill(attention_mask == 0, 0), "attention_mask": attention_mask,
            "response_mask": response_mask}


def trl_trainer(policy, reference, tmp: str, precompute: bool):
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "a": 2}, unk_token="a")),
        pad_token="<pad>", eos_token="<eos>",
    )
    args = DPOConfig(output_dir=tmp, report_to=[], use_cpu=True, bf16=False, beta=0.1, loss_type=["sigmoid"],
                     per_device_train_batch_size=2, precompute_ref_log_probs=False)
    data = Dataset.from_list([{"prompt": "a", "chosen": " a", "rejected": " a a"}] * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data,
                             processing_class=tok)
    trainer.precompute_ref_logps = precompute  # read by _compute_loss: take the batch's ref log-probs
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); training_step divides by it
    return trainer


def measure(args: argparse.Namespace, precompute: bool) -> tuple[list[float], list[float], int]:
    hf_policy, hf_reference = hf_model(0), hf_model(1)
    with tempfile.TemporaryDirectory() as tmp:
        hf_policy.save_pretrained(Path(tmp) / "p", safe_serialization=True)
        hf_reference.save_pretrained(Path(tmp) / "r", safe_serialization=True)
        policy, reference = load(Path(tmp) / "p").model.train(), load(Path(tmp) / "r").model.eval()
        trainer = trl_trainer(hf_policy, hf_reference, tmp, precompute)
    reference.requires_grad_(False)
    hf_policy.train()
    step = preference_step(PreferenceConfig(beta=0.1), None if precompute else reference)
    params = [p for p in policy.parameters() if p.requires_grad]
    ours_opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    theirs_opt = torch.optim.AdamW(hf_policy.parameters(), lr=1e-5, fused=True)
    ours_t, theirs_t = [], []
    tokens = 0
    for i in range(args.steps + 1):
        batch = make_batch(args, seed=i)
        tokens = int(batch["attention_mask"].sum())
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                  "completion_mask": batch["response_mask"]}
        if precompute:
            with torch.no_grad():
                ref_chosen, ref_rejected = pair_logprobs(reference, batch)
            batch = {**batch, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
            inputs = {**inputs, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
        for who in ((0, 1) if i % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            if who == 0:
                accumulate_gradients(policy, step, [batch], params)
                ours_opt.step()
                ours_opt.zero_grad(set_to_none=True)
            else:
                trainer.training_step(hf_policy, dict(inputs))
                theirs_opt.step()
                theirs_opt.zero_grad(set_to_none=True)
            if i > 0:  # the first round warms both up
                (ours_t if who == 0 else theirs_t).append(time.perf_counter() - start)
    return ours_t, theirs_t, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=96)
    parser.add_argument("--response", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"GPT-2 {LAYERS} layers x {WIDTH}, vocab {VOCAB}; {args.pairs} pairs, prompt {args.prompt}, "
          f"responses {args.response // 2}-{args.response} tokens; {args.steps} alternated steps, "
          f"{args.threads} threads")
    print(f"{'case':<26}{'plmkit tok/s':>14}{'trl tok/s':>12}{'ratio':>8}")
    for precompute in (False, True):
        ours, theirs, tokens = measure(args, precompute)
        a, b = tokens / statistics.median(ours), tokens / statistics.median(theirs)
        name = "precomputed reference" if precompute else "reference every step"
        print(f"{name:<26}{a:>14,.0f}{b:>12,.0f}{a / b:>7.2f}x")
        print(f"  plmkit s/step: {' '.join(f'{t:.3f}' for t in ours)}")
        print(f"  trl s/step:    {' '.join(f'{t:.3f}' for t in theirs)}")


if __name__ == "__main__":
    main()
