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

    .venv/bin/python bench/rlhf_world.py --out runs/rlhf_world     # ~1 min of CPU (4-6 min wall under load)
    .venv/bin/python bench/rlhf_world.py --quick --out /tmp/rlhf   # a smoke run, ~15 s of CPU
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
PPO_LR, PPO_KL = 1e-4, 0.1
DPO_BETA, DPO_LR = 0.1, 1e-4


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


@dataclass
class Setup:
    """The world's dialogue data in the layout every stage shares, and the tokenizer."""

    seed: int
    world: Any
    tok: Any
    pairs: list  # PreferencePair of the 2,000 training pairs
    dev_pairs: list  # of the 300 dev pairs
    train_prompts: list[str]
    eval_prompts: list[str]
    questions: dict[str, str]  # formatted prompt -> the bare question the judge reads

    def judge(self, prompts: list[str], responses: list[str]) -> list[float]:
        from plmkit.world import judge

        return [judge(self.world, self.questions[p], r.strip()) for p, r in zip(prompts, responses)]

    def train_cfg(self, steps: int, lr: float, **kw: Any) -> Any:
        from plmkit.training import TrainConfig

        return TrainConfig(max_steps=steps, lr=lr, warmup_steps=max(1, steps // 20), seed=self.seed,
                           progress=False, log_every=max(1, steps // 10), weight_decay=0.0, **kw)


def prepare(seed: int, out: Path, eval_prompts: int) -> Setup:
    from plmkit.data.records import PreferencePair
    from plmkit.data.tokenizer import train_tokenizer
    from plmkit.world import World, make_task

    world = World(seed=seed)
    train_rows = make_task(world, "dialogue", "train")
    dev_rows = make_task(world, "dialogue", "dev")
    text_file = out / "dialogue_text.txt"
    text_file.write_text("\n\n".join(
        fmt(r["prompt"]) + " " + r[k] for r in train_rows for k in ("chosen", "rejected")
    ))
    tok = train_tokenizer([text_file], kind="bpe", vocab_size=400)

    def pairs_of(rows: list[dict]) -> list:
        return [PreferencePair(fmt(r["prompt"]), " " + r["chosen"], " " + r["rejected"]) for r in rows]

    return Setup(
        seed, world, tok, pairs_of(train_rows), pairs_of(dev_rows),
        [fmt(r["prompt"]) for r in train_rows], [fmt(r["prompt"]) for r in dev_rows[:eval_prompts]],
        {fmt(r["prompt"]): r["prompt"] for r in train_rows + dev_rows},
    )


def train_sft(s: Setup, steps: int) -> tuple[torch.nn.Module, float]:
    """A GPT from scratch, supervised on the preferred responses; returns it and its last loss."""
    from plmkit.alignment.records import collate_prompt_responses, encode_prompt_responses
    from plmkit.alignment.sft import sft_step
    from plmkit.data.batches import ShuffledBatches
    from plmkit.data.records import PromptCompletion
    from plmkit.models.gpt import GPT2Config, gpt2_lm
    from plmkit.training import train

    torch.manual_seed(s.seed)
    sft = gpt2_lm(GPT2Config(vocab_size=s.tok.vocab_size, max_positions=64, d_model=64, num_layers=2,
                             num_heads=4))
    rows = encode_prompt_responses(s.tok, [PromptCompletion(p.prompt, p.chosen) for p in s.pairs], 48)
    batches = ShuffledBatches(rows, partial(collate_prompt_responses, pad_id=s.tok.eos_id), 32, s.seed)
    result = train(sft, sft_step, batches, s.train_cfg(steps, 3e-3))
    return sft.eval().requires_grad_(False), result.history[-1]["loss"]


def train_reward(s: Setup, sft: torch.nn.Module, steps: int) -> tuple[torch.nn.Module, float]:
    """The SFT backbone with a scalar head, Bradley–Terry on the pairs; returns it and its dev accuracy."""
    from plmkit.alignment.records import collate_preferences
    from plmkit.alignment.reward import encode_reward_pairs, evaluate_pairs, reward_model, reward_step
    from plmkit.data.batches import ShuffledBatches
    from plmkit.training import train

    rm = reward_model(copy.deepcopy(sft).backbone).requires_grad_(True)
    rows = encode_reward_pairs(s.tok, s.pairs, 48, causal=True)
    batches = ShuffledBatches(rows, partial(collate_preferences, pad_id=s.tok.eos_id), 32, s.seed)
    train(rm, reward_step(), batches, s.train_cfg(steps, 1e-3))
    rm.eval().requires_grad_(False)
    dev = evaluate_pairs(rm, encode_reward_pairs(s.tok, s.dev_pairs, 48, causal=True), s.tok.eos_id)
    return rm, dev["accuracy"]


def run_best_of_n(s: Setup, sft: torch.nn.Module, rm: torch.nn.Module, ns: tuple[int, ...]) -> list[dict]:
    from plmkit.alignment.best_of_n import best_of_n, best_of_n_kl

    points = []
    for n in ns:
        picked = best_of_n(sft, rm, s.eval_prompts, n, tokenizer=s.tok, max_new_tokens=MAX_NEW_TOKENS,
                           generator=torch.Generator().manual_seed(s.seed + 2))
        scores = s.judge(s.eval_prompts, picked.responses)
        points.append({"n": n, **judge_parts(scores), "kl": best_of_n_kl(n),
                       "reward": float(picked.scores.mean()), "sample": picked.responses[:3]})
    return points


def run_ppo(s: Setup, sft: torch.nn.Module, rm: torch.nn.Module, sizes: Sizes, **overrides: Any):
    """PPO from the SFT model against the reward model; the judge-vs-KL curve and the per-step log."""
    from plmkit.alignment.ppo import PPOConfig, train_ppo

    policy = copy.deepcopy(sft).requires_grad_(True)
    critic = copy.deepcopy(rm).requires_grad_(True)  # InstructGPT: the value function starts as the RM
    curve = [{"step": 0, **measure(s, sft, sft, rm, s.seed + 3)}]
    log: list[dict[str, float]] = []

    def on_step(row: dict[str, float]) -> None:
        log.append(row)
        if row["step"] % sizes.eval_every == 0 or row["step"] == sizes.ppo_steps:
            curve.append({"step": row["step"], **measure(s, policy, sft, rm, s.seed + 3)})

    settings = dict(
        steps=sizes.ppo_steps, batch_size=sizes.ppo_batch, minibatch_size=sizes.ppo_batch // 2, epochs=4,
        max_new_tokens=MAX_NEW_TOKENS, lr=PPO_LR, kl_coef=PPO_KL, vf_coef=0.1, seed=s.seed,
        missing_eos_penalty=1.0,
    )
    cfg = PPOConfig(**{**settings, **overrides})
    train_ppo(policy, s.train_prompts, rm, cfg, tokenizer=s.tok, critic=critic, reference=sft, log=on_step)
    return curve, log, cfg


def run_dpo(s: Setup, sft: torch.nn.Module, rm: torch.nn.Module, sizes: Sizes, beta: float = DPO_BETA,
            lr: float = DPO_LR) -> list[dict]:
    """DPO (sigmoid loss) from the SFT model on the same pairs; the judge-vs-KL curve."""
    from plmkit.alignment.dpo import PreferenceConfig, preference_step
    from plmkit.alignment.records import collate_preferences, encode_preferences
    from plmkit.data.batches import ShuffledBatches
    from plmkit.training import train

    policy = copy.deepcopy(sft).requires_grad_(True)
    rows = encode_preferences(s.tok, s.pairs, 48)
    batches = ShuffledBatches(rows, partial(collate_preferences, pad_id=s.tok.eos_id), 32, s.seed)
    curve = [{"step": 0, **measure(s, sft, sft, rm, s.seed + 3)}]
    every = sizes.eval_every * 5

    def on_eval(model: torch.nn.Module) -> dict[str, float]:
        point = {"step": len(curve) * every, **measure(s, model, sft, rm, s.seed + 3)}
        curve.append(point)
        return {"judge": point["judge"], "kl": point["kl"]}

    train(policy, preference_step(PreferenceConfig(beta=beta), reference=sft), batches,
          s.train_cfg(sizes.dpo_steps, lr, eval_every=every), eval_fn=on_eval)
    curve[-1]["step"] = sizes.dpo_steps  # the last evaluation runs at the end whatever eval_every says
    return curve


def measure(s: Setup, policy: torch.nn.Module, sft: torch.nn.Module, rm: torch.nn.Module,
            sample_seed: int) -> dict[str, Any]:
    return judge_and_kl(policy, sft, s.eval_prompts, s.tok, s.judge, rm, sample_seed)


def judge_parts(scores: list[float]) -> dict[str, float]:
    """Mean judge score and its two parts: the share of correct answers (2 points) and of polite ones (1)."""
    n = len(scores)
    return {"judge": sum(scores) / n, "correct": sum(x >= 2 for x in scores) / n,
            "polite": sum(int(x) % 2 == 1 for x in scores) / n}


def run(sizes: Sizes, seed: int, out: Path) -> dict[str, Any]:
    t_start, cpu_start = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args, **kw):
        t0 = time.perf_counter()
        value = fn(*args, **kw)
        timings[name] = time.perf_counter() - t0
        return value

    s = prepare(seed, out, sizes.eval_prompts)
    sft, sft_loss = timed("sft", train_sft, s, sizes.sft_steps)
    rm, rm_accuracy = timed("reward", train_reward, s, sft, sizes.reward_steps)
    results: dict[str, Any] = {"reward_model_dev_accuracy": rm_accuracy, "sft_final_loss": sft_loss}
    results["sft"] = measure(s, sft, sft, rm, seed + 1)
    results["best_of_n"] = timed("best_of_n", run_best_of_n, s, sft, rm, sizes.best_of)
    ppo_curve, ppo_log, ppo_cfg = timed("ppo", run_ppo, s, sft, rm, sizes)
    results["ppo"], results["ppo_curve"], results["ppo_log"] = ppo_curve[-1], ppo_curve, ppo_log
    results["ppo_config"] = {k: v for k, v in vars(ppo_cfg).items() if k != "betas"}
    dpo_curve = timed("dpo", run_dpo, s, sft, rm, sizes)
    results["dpo"], results["dpo_curve"] = dpo_curve[-1], dpo_curve
    results["dpo_config"] = {"beta": DPO_BETA, "lr": DPO_LR}
    timings["total"] = time.perf_counter() - t_start
    results["timings_s"] = timings
    results["cpu_s"] = time.process_time() - cpu_start
    results["sizes"] = vars(sizes) | {"best_of": list(sizes.best_of)}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out / "judge_vs_kl.png")
    print_table(results)
    return results


@torch.no_grad()
def judge_and_kl(policy, sft, prompts, tok, judge_fn, rm, sample_seed: int) -> dict[str, float]:
    from plmkit.alignment.policy_eval import sample_with_kl
    from plmkit.alignment.ppo import score_rollout

    batch, kl = sample_with_kl(policy, sft, prompts, tokenizer=tok, max_new_tokens=MAX_NEW_TOKENS,
                               generator=torch.Generator().manual_seed(sample_seed))
    mask = batch.response_mask.float()
    return {
        **judge_parts(judge_fn(prompts, batch.responses)),
        "kl": float(kl.mean()),
        "reward": float(score_rollout(rm, batch, "eval").mean()),
        "length": float(mask.sum(-1).mean()),
        "eos": float(batch.has_eos.float().mean()),
        "sample": batch.responses[:3],
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
    print(f"{'policy':<12} {'judge':>6} {'correct':>8} {'polite':>7} {'KL':>6} {'RM score':>9}")
    for name, r in rows:
        print(f"{name:<12} {r['judge']:6.3f} {r['correct']:8.3f} {r['polite']:7.3f} {r['kl']:6.2f} "
              f"{r['reward']:9.3f}")
    print("wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["timings_s"].items()))
    print(f"CPU time (s, all threads): {results['cpu_s']:.0f}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
