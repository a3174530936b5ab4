"""PPO rollout + update throughput against trl, on the same tiny GPT-2 and prompts, CPU, interleaved.

trl 1.16 no longer ships a PPO trainer (`PPOTrainer` was removed; neither `trl.trainer` nor
`trl.experimental` has one), so the reference is trl's closest online-RL path, `GRPOTrainer`, set up to do
the same work per rollout batch as plmkit's PPO step:

    rollout    16 responses of up to 24 sampled tokens (temperature 1, full softmax) with the KV cache
               (plmkit.generate / transformers' generate); trl: 8 prompts x 2 generations, plmkit: 16 prompts
    score      a Python reward function on the decoded texts (the share of one letter)
    reference  per-token KL to a frozen reference (trl: beta=0.05, a second model; plmkit: kl_coef=0.05)
    update     2 epochs x 2 minibatches of 8 = 4 optimizer steps (trl: per_device_train_batch_size=8,
               steps_per_generation=2, num_iterations=2), clipped surrogate, AdamW, grad clipping at 1

plmkit also does what GRPO skips: a value head (shared trunk) with its clipped value loss, GAE and
whitening; so its figure is a lower bound on the ratio for equal work. The model is a 2-layer, 64-wide
GPT-2 over a 400-token BPE of the synthetic world's dialogue text; both sides load the same weights.
Throughput is (prompt + response tokens of the rollouts) / (wall time of rollout + update), counted on
both sides from the token ids each library produced. The two libraries alternate, one block of cycles
each per repeat; the first cycle of every block is a warm-up and is not timed. Medians and every run are
printed.

    .venv/bin/python bench/ppo_speed.py [--repeats 5] [--cycles 4] [--threads 1]
    .venv/bin/python bench/run.py ppo_speed
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.result import BenchResult

PROMPTS_PER_ROLLOUT, MINIBATCH, EPOCHS, NEW_TOKENS, BETA = 16, 8, 2, 24, 0.05


def setup(workdir: Path):
    """The world prompts, a BPE tokenizer, a tiny plmkit GPT and its transformers twin (same weights)."""
    import plmkit
    from plmkit.data.tokenizer import train_tokenizer
    from plmkit.models.gpt import GPT2Config, gpt2_lm
    from plmkit.world import World, make_task

    rows = make_task(World(seed=0), "dialogue", "train", n=400)
    text = workdir / "text.txt"
    text.write_text("\n\n".join(f"Q: {r['prompt']}\nA: {r['chosen']}" for r in rows))
    tok = train_tokenizer([text], kind="bpe", vocab_size=400)
    prompts = [f"Q: {r['prompt']}\nA:" for r in rows]
    torch.manual_seed(0)
    ours = gpt2_lm(GPT2Config(vocab_size=tok.vocab_size, max_positions=64, d_model=64, num_layers=2,
                              num_heads=4))
    plmkit.save_hf(ours, workdir / "model", tokenizer=tok)
    return tok, prompts, ours, workdir / "model"


def letter_share(prompts, completions, **kwargs) -> list[float]:
    return [c.count("e") / max(len(c), 1) for c in completions]


def run_plmkit(model, tok, prompts, cycles: int, seed: int) -> tuple[float, float]:
    """(tokens, seconds) of `cycles` timed PPO steps after one warm-up step."""
    from plmkit.alignment.ppo import PPOConfig, train_ppo

    policy = copy.deepcopy(model)
    reference = copy.deepcopy(model)
    marks: list[tuple[float, float]] = []
    cfg = PPOConfig(steps=cycles + 1, batch_size=PROMPTS_PER_ROLLOUT, minibatch_size=MINIBATCH,
                    epochs=EPOCHS, max_new_tokens=NEW_TOKENS, kl_coef=BETA, lr=1e-4, seed=seed)
    train_ppo(policy, prompts, letter_share, cfg, tokenizer=tok, reference=reference,
              log=lambda row: marks.append((time.perf_counter(), row["tokens"])))
    return sum(t for _, t in marks[1:]), marks[-1][0] - marks[0][0]


def run_trl(model_dir: Path, tok, prompts, cycles: int, seed: int, workdir: Path) -> tuple[float, float]:
    """(tokens, seconds) of `cycles` timed GRPO generation cycles after one warm-up cycle."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok.backend, eos_token="<|endoftext|>",
                                     pad_token="<|endoftext|>", padding_side="left")
    counted: list[float] = []

    def reward(prompts, completions, completion_ids, **kwargs) -> list[float]:
        prompt_tokens = sum(len(hf_tok(p)["input_ids"]) for p in prompts)
        counted.append(prompt_tokens + sum(len(c) for c in completion_ids))
        return letter_share(prompts, completions)

    steps_per_cycle = EPOCHS * (PROMPTS_PER_ROLLOUT // MINIBATCH)
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step % steps_per_cycle == 0:
                marks.append(time.perf_counter())

    args = GRPOConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=MINIBATCH, steps_per_generation=2,
        num_generations=2, num_iterations=EPOCHS, max_completion_length=NEW_TOKENS, beta=BETA,
        temperature=1.0, top_k=0, top_p=1.0, learning_rate=1e-4, max_grad_norm=1.0,
        max_steps=steps_per_cycle * (cycles + 1), use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=10_000, disable_tqdm=True, seed=seed, dataloader_num_workers=0, bf16=False,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir), reward_funcs=letter_share_with(reward),
        args=args, train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=hf_tok,
        callbacks=[Clock()],
    )
    trainer.train()
    # The rollout of cycle k runs inside its first optimizer step; marks[i] ends cycle i + 1.
    return sum(counted[1 : cycles + 1]), marks[cycles] - marks[0]


def letter_share_with(counting):
    def letter_share(prompts, completions, completion_ids, **kwargs) -> list[float]:  # trl names the reward
        return counting(prompts, completions, completion_ids)

    return letter_share


def measure(repeats: int, cycles: int, threads: int) -> dict[str, list[float]]:
    torch.set_num_threads(threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    runs: dict[str, list[float]] = {"plmkit": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tok, prompts, ours, model_dir = setup(workdir)
        for r in range(repeats):
            order = ("plmkit", "trl") if r % 2 == 0 else ("trl", "plmkit")
            for name in order:
                if name == "plmkit":
                    tokens, seconds = run_plmkit(ours, tok, prompts, cycles, seed=r)
                else:
                    tokens, seconds = run_trl(model_dir, tok, prompts, cycles, r, workdir / f"r{r}")
                rate = tokens / seconds
                runs[name].append(rate)
                print(f"repeat {r} {name:<6} {tokens:7.0f} tokens in {seconds:6.2f} s: {rate:8.1f} tok/s",
                      flush=True)
    return runs


def case(repeats: int = 3, cycles: int = 3, threads: int = 1) -> list[BenchResult]:
    runs = measure(repeats, cycles, threads)
    ours, theirs = statistics.median(runs["plmkit"]), statistics.median(runs["trl"])
    note = (f"2L/64w GPT-2, 16 x {NEW_TOKENS} new tokens, 2 epochs x 2 minibatches; trl has no PPO: "
            f"GRPOTrainer, same rollout/KL/update shape; {threads} threads, median of {repeats}")
    return [BenchResult("ppo_speed", "rollout + update", ours, theirs, "tokens/s", True, note)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=4, help="timed rollout+update cycles per block")
    # One thread by default: the model's matrices are too small to split, and on the shared machine two
    # intra-op threads under load ran both libraries 20-40x slower than one (measured, see docs/alignment.md).
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    runs = measure(args.repeats, args.cycles, args.threads)
    for name, values in runs.items():
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"{name:<6} median {statistics.median(values):8.1f} tokens/s (runs {spread})")
    ratio = statistics.median(runs["plmkit"]) / statistics.median(runs["trl"])
    print(f"plmkit / trl: {ratio:.2f}x")


if __name__ == "__main__":
    main()
