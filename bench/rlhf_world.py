"""RLHF in the synthetic world: SFT -> reward model -> PPO, and DPO, judged by the world's hidden labeller.

The world's dialogue task (`plmkit.world.tasks.make_dialogue`) asks questions about world facts and
arithmetic; each training pair holds a preferred and a rejected answer, ranked by `plmkit.world.prefer`,
whose rule (`plmkit.world.judge`: 2 points for a correct answer, 1 for a polite one) the models never see.
The pipeline, every stage on plmkit's own pieces and a tiny GPT (2 layers, width 64, BPE of 400 tokens):

    SFT            a GPT trained from scratch on the preferred responses (`plmkit.alignment.sft_step`)
    reward model   the SFT backbone with a scalar head, Bradley–Terry on the pairs (`reward_step`)
    best-of-n      n samples of the SFT model, the reward model picks one (n = 1, 2, 4, 8, 16)
    PPO            `train_ppo` against the reward model, critic initialized from it, KL to the SFT model
    DPO            `preference_step` (sigmoid loss) on the same pairs, the SFT model as reference

Each policy answers 200 dev questions (one sample each at temperature 1, so the KL is that of the
distribution the judge scores); the figures are the judge's mean score, the KL to the SFT model (Monte
Carlo over those samples; best-of-n: the bound log n - (n - 1)/n), and the reward model's accuracy on the
300 dev pairs. A PNG plots judge score against KL for all four.

    .venv/bin/python bench/rlhf_world.py --out runs/rlhf_world          # a few minutes on 2 idle cores
    .venv/bin/python bench/rlhf_world.py --quick --out /tmp/rlhf        # under a minute, a smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Sizes:
    sft_steps: int = 500
    reward_steps: int = 200
    dpo_steps: int = 200
    ppo_steps: int = 40
    ppo_batch: int = 32
    eval_prompts: int = 200
    eval_every: int = 10  # PPO steps (DPO: optimizer steps x 5) between points of the curves
    best_of: tuple[int, ...] = (1, 2, 4, 8, 16)


QUICK = Sizes(sft_steps=150, reward_steps=60, dpo_steps=60, ppo_steps=8, ppo_batch=16, eval_prompts=60,
              eval_every=4, best_of=(1, 4))
MAX_NEW_TOKENS = 16


def fmt(question: str) -> str:
    """The prompt layout every stage shares; the judge sees the bare question."""
    return f"Q: {question}\nA:"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/rlhf_world", help="directory for results.json and the plot")
    parser.add_argument("--seed", type=int, default=0, help="world and training seed")
    parser.add_argument("--quick", action="store_true", help="a smoke run with small sizes")
    # One thread: a tiny model's matrices are too small to split, and on a loaded machine torch's
    # intra-op threads wait on each other (measured: 2 threads under load ran PPO 40x slower than 1).
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else Sizes()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return run(sizes, args.seed, out)


def run(sizes: Sizes, seed: int, out: Path) -> dict[str, Any]:
    from plmkit.alignment.best_of_n import best_of_n, best_of_n_kl
    from plmkit.alignment.dpo import PreferenceConfig, preference_step
    from plmkit.alignment.ppo import PPOConfig, train_ppo
    from plmkit.alignment.records import (
        collate_preferences,
        collate_prompt_responses,
        encode_preferences,
        encode_prompt_responses,
    )
    from plmkit.alignment.reward import encode_reward_pairs, evaluate_pairs, reward_model, reward_step
    from plmkit.alignment.sft import sft_step
    from plmkit.data.batches import ShuffledBatches
    from plmkit.data.records import PreferencePair, PromptCompletion
    from plmkit.data.tokenizer import train_tokenizer
    from plmkit.models.gpt import GPT2Config, gpt2_lm
    from plmkit.training import TrainConfig, train
    from plmkit.world import World, judge, make_task

    t_start, cpu_start = time.perf_counter(), time.process_time()
    world = World(seed=seed)
    train_rows = make_task(world, "dialogue", "train")
    dev_rows = make_task(world, "dialogue", "dev")
    text_file = out / "dialogue_text.txt"
    text_file.write_text("\n\n".join(
        fmt(r["prompt"]) + " " + r[k] for r in train_rows for k in ("chosen", "rejected")
    ))
    tok = train_tokenizer([text_file], kind="bpe", vocab_size=400)
    eos = tok.eos_id
    questions = {fmt(r["prompt"]): r["prompt"] for r in train_rows + dev_rows}
    pairs = [PreferencePair(fmt(r["prompt"]), " " + r["chosen"], " " + r["rejected"]) for r in train_rows]
    dev_pairs = [PreferencePair(fmt(r["prompt"]), " " + r["chosen"], " " + r["rejected"]) for r in dev_rows]
    eval_prompts = [fmt(r["prompt"]) for r in dev_rows[: sizes.eval_prompts]]
    train_prompts = [fmt(r["prompt"]) for r in train_rows]
    timings: dict[str, float] = {}

    def judge_fn(prompts: list[str], responses: list[str]) -> list[float]:
        return [judge(world, questions[p], r.strip()) for p, r in zip(prompts, responses)]

    def train_cfg(steps: int, lr: float, **kw: Any) -> TrainConfig:
        return TrainConfig(max_steps=steps, lr=lr, warmup_steps=max(1, steps // 20), seed=seed,
                           progress=False, log_every=max(1, steps // 10), weight_decay=0.0, **kw)

    # ---- SFT ------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=tok.vocab_size, max_positions=64, d_model=64, num_layers=2, num_heads=4)
    sft = gpt2_lm(config)
    sft_rows = encode_prompt_responses(tok, [PromptCompletion(p.prompt, p.chosen) for p in pairs], 48)
    batches = ShuffledBatches(sft_rows, partial(collate_prompt_responses, pad_id=eos), 32, seed)
    sft_result = train(sft, sft_step, batches, train_cfg(sizes.sft_steps, 3e-3))
    sft.eval().requires_grad_(False)
    timings["sft"] = time.perf_counter() - t0

    # ---- reward model -----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    rm = reward_model(copy.deepcopy(sft).backbone)
    rm.requires_grad_(True)
    rm_rows = encode_reward_pairs(tok, pairs, 48, causal=True)
    batches = ShuffledBatches(rm_rows, partial(collate_preferences, pad_id=eos), 32, seed)
    train(rm, reward_step(), batches, train_cfg(sizes.reward_steps, 1e-3))
    rm.eval().requires_grad_(False)
    rm_dev = evaluate_pairs(rm, encode_reward_pairs(tok, dev_pairs, 48, causal=True), eos)
    timings["reward"] = time.perf_counter() - t0

    def measure(policy: torch.nn.Module, sample_seed: int) -> dict[str, float]:
        """Judge score, KL to the SFT model and reward-model score of one sample per eval prompt."""
        return judge_and_kl(policy, sft, eval_prompts, tok, judge_fn, rm, sample_seed)

    results: dict[str, Any] = {"reward_model_dev_accuracy": rm_dev["accuracy"]}
    results["sft"] = measure(sft, seed + 1)

    # ---- best-of-n --------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    bon = []
    for n in sizes.best_of:
        picked = best_of_n(sft, rm, eval_prompts, n, tokenizer=tok, max_new_tokens=MAX_NEW_TOKENS,
                           generator=torch.Generator().manual_seed(seed + 2))
        score = sum(judge_fn(eval_prompts, picked.responses)) / len(eval_prompts)
        bon.append({"n": n, "judge": score, "kl": best_of_n_kl(n), "reward": float(picked.scores.mean())})
    results["best_of_n"] = bon
    timings["best_of_n"] = time.perf_counter() - t0

    # ---- PPO --------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    policy = copy.deepcopy(sft).requires_grad_(True)
    critic = copy.deepcopy(rm).requires_grad_(True)  # InstructGPT: the value function starts as the RM
    ppo_curve = [{"step": 0, **results["sft"]}]
    ppo_log: list[dict[str, float]] = []

    def on_step(row: dict[str, float]) -> None:
        ppo_log.append(row)
        if row["step"] % sizes.eval_every == 0 or row["step"] == sizes.ppo_steps:
            ppo_curve.append({"step": row["step"], **measure(policy, seed + 3)})

    ppo_cfg = PPOConfig(
        steps=sizes.ppo_steps, batch_size=sizes.ppo_batch, minibatch_size=sizes.ppo_batch // 2, epochs=4,
        max_new_tokens=MAX_NEW_TOKENS, lr=3e-4, kl_coef=0.05, vf_coef=0.1, seed=seed, missing_eos_penalty=1.0,
    )
    train_ppo(policy, train_prompts, rm, ppo_cfg, tokenizer=tok, critic=critic, reference=sft, log=on_step)
    results["ppo"] = ppo_curve[-1]
    results["ppo_curve"] = ppo_curve
    timings["ppo"] = time.perf_counter() - t0

    # ---- DPO --------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    dpo_policy = copy.deepcopy(sft).requires_grad_(True)
    dpo_rows = encode_preferences(tok, pairs, 48)
    batches = ShuffledBatches(dpo_rows, partial(collate_preferences, pad_id=eos), 32, seed)
    dpo_curve = [{"step": 0, **results["sft"]}]
    dpo_every = sizes.eval_every * 5

    def dpo_eval(model: torch.nn.Module) -> dict[str, float]:
        point = {"step": len(dpo_curve) * dpo_every, **measure(model, seed + 3)}
        dpo_curve.append(point)
        return {"judge": point["judge"], "kl": point["kl"]}

    train(dpo_policy, preference_step(PreferenceConfig(beta=0.1), reference=sft), batches,
          train_cfg(sizes.dpo_steps, 1e-3, eval_every=dpo_every), eval_fn=dpo_eval)
    dpo_curve[-1]["step"] = sizes.dpo_steps  # the final eval runs at the end whatever eval_every says
    results["dpo"] = dpo_curve[-1]
    results["dpo_curve"] = dpo_curve
    timings["dpo"] = time.perf_counter() - t0

    timings["total"] = time.perf_counter() - t_start
    results["timings_s"] = timings
    results["cpu_s"] = time.process_time() - cpu_start
    results["sft_final_loss"] = sft_result.history[-1]["loss"]
    results["ppo_log"] = ppo_log
    results["sizes"] = vars(sizes) | {"best_of": list(sizes.best_of)}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out / "judge_vs_kl.png")
    print_table(results)
    return results


@torch.no_grad()
def judge_and_kl(policy, sft, prompts, tok, judge_fn, rm, sample_seed: int) -> dict[str, float]:
    from plmkit.alignment.ppo import response_logprobs, rollout, score_rollout

    ids = [tok.encode(p) for p in prompts]
    batch = rollout(policy, prompts, ids, max_new_tokens=MAX_NEW_TOKENS, eos_id=tok.eos_id, pad_id=tok.eos_id,
                    generator=torch.Generator().manual_seed(sample_seed), tokenizer=tok)
    mask = batch.response_mask.float()
    kl = ((response_logprobs(policy, batch) - response_logprobs(sft, batch)) * mask).sum(-1)
    return {
        "judge": sum(judge_fn(prompts, batch.responses)) / len(prompts),
        "kl": float(kl.mean()),
        "reward": float(score_rollout(rm, batch, "eval").mean()),
        "length": float(mask.sum(-1).mean()),
        "eos": float(batch.has_eos.float().mean()),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["kl"] for p in results["ppo_curve"]], [p["judge"] for p in results["ppo_curve"]], "o-",
            label=f"PPO (every {results['sizes']['eval_every']} steps)")
    ax.plot([p["kl"] for p in results["dpo_curve"]], [p["judge"] for p in results["dpo_curve"]], "s-",
            label="DPO")
    bon = results["best_of_n"]
    ns = ", ".join(str(p["n"]) for p in bon)
    ax.plot([p["kl"] for p in bon], [p["judge"] for p in bon], "^-", label=f"best-of-n (n = {ns})")
    ax.plot([0.0], [results["sft"]["judge"]], "k*", markersize=12, label="SFT")
    ax.set_xlabel("KL to the SFT model (nats per response)")
    ax.set_ylabel("mean judge score (max 3)")
    ax.set_title("Synthetic world dialogue: judge score against KL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results: dict[str, Any]) -> None:
    rows = [("SFT", results["sft"])] + [(f"best-of-{p['n']}", p) for p in results["best_of_n"]]
    rows += [("PPO", results["ppo"]), ("DPO", results["dpo"])]
    print(f"reward model dev accuracy: {results['reward_model_dev_accuracy']:.3f}")
    print(f"{'policy':<12} {'judge':>6} {'KL':>6} {'RM score':>9}")
    for name, r in rows:
        print(f"{name:<12} {r['judge']:6.3f} {r['kl']:6.2f} {r.get('reward', float('nan')):9.3f}")
    print("wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["timings_s"].items()))
    print(f"CPU time (s, all threads): {results['cpu_s']:.0f}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
