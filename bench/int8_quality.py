"""int8 weight-only decoding quality: held-out perplexity of a trained model, fp32 against int8, and greedy
continuations side by side.

Presets (each trained here through `plmkit pretrain`, text split 90/10 into train/held-out):
- shakespeare: configs/gpt-shakespeare-char.yaml (4 x 128 GPT-2, characters, context 64), as
  bench/gpt_shakespeare.py trains it;
- tinystories: a 4 x 128 GPT-2 with GPT-2's BPE tokenizer (shared/data/tokenizers/gpt2, 50257 rows) on
  shared/data/tinystories/tinystories_val.txt (one stream), context 128, batches of 8, 800 steps.

Perplexity is exp(mean next-token loss) over every packed window of the held-out split, for the fp32 model
and for `plmkit.quantize(model, "int8")` of the same weights; the target is |int8 / fp32 - 1| <= 1%.

    python bench/int8_quality.py --preset shakespeare [--steps 2000]
    python bench/int8_quality.py --preset tinystories [--steps 800]
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path

import torch

import plmkit
from plmkit.config import parse
from plmkit.data.store import PackedBatches, TokenStore
from plmkit.recipes import pretrain

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

PRESETS = {
    "shakespeare": {
        "text": DATA / "tiny_shakespeare" / "input.txt",
        "args": ["--config", str(REPO / "configs" / "gpt-shakespeare-char.yaml"),
                 "--data.sampling=random_windows"],
        "steps": 2000,
        "prompts": ["ROMEO:\n", "First Citizen:\nWe are", "KING HENRY:\nMy lord,"],
        "seq_len": 64,
    },
    "tinystories": {
        "text": DATA / "tinystories" / "tinystories_val.txt",
        "args": ["--model.family=gpt2", "--model.d_model=128", "--model.num_layers=4", "--model.num_heads=4",
                 "--model.max_positions=128", f"--data.tokenizer={DATA / 'tokenizers' / 'gpt2'}",
                 "--data.split=file", "--data.seq_len=128", "--data.batch_size=8", "--train.lr=2e-3",
                 "--train.warmup_steps=50", "--train.min_lr_ratio=0.1", "--train.weight_decay=0.1",
                 "--objective=clm", "--seed=0"],
        "steps": 800,
        "prompts": ["Once upon a time, there was a little girl named", "Tom and his dog went to the",
                    "The sun was shining and"],
        "seq_len": 128,
    },
}


def perplexity(model: torch.nn.Module, store: TokenStore, seq_len: int) -> float:
    """exp(mean next-token loss) over every packed window of the store, in order."""
    batches = PackedBatches(store, seq_len, 16, seed=0, shuffle=False)
    stats = pretrain.evaluate_clm(model, batches, batches.batches_per_epoch)
    return math.exp(stats["val_loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="shakespeare")
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: the preset's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    steps = args.steps or preset["steps"]
    text = preset["text"].read_text(encoding="utf-8")
    n = int(0.9 * len(text))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "train.txt").write_text(text[:n], encoding="utf-8")
        (tmp / "val.txt").write_text(text[n:], encoding="utf-8")
        cfg = parse(pretrain.Config, [
            *preset["args"], f"--data.train_files={tmp / 'train.txt'}", f"--data.val_files={tmp / 'val.txt'}",
            f"--train.max_steps={steps}", f"--train.out_dir={tmp / 'run'}", "--train.checkpoint_every=0",
            "--no-train.progress", "--train.log_every=100", "--data.eval_batches=1",
        ])
        start = time.perf_counter()
        summary = pretrain.run(cfg)
        print(f"trained {steps} steps in {time.perf_counter() - start:.0f} s (final train loss "
              f"{summary['final_loss']:.3f})")
        loaded = plmkit.load(summary["hf_export"])
        fp32, tok = loaded.model.eval(), loaded.require_tokenizer()
        int8 = plmkit.quantize(copy.deepcopy(fp32), "int8")
        val = TokenStore(tmp / "run" / "store" / "val")
        ppl = {name: perplexity(m, val, preset["seq_len"]) for name, m in (("fp32", fp32), ("int8", int8))}
        change = ppl["int8"] / ppl["fp32"] - 1
        print(f"held-out perplexity ({val.num_tokens} tokens): fp32 {ppl['fp32']:.4f}, "
              f"int8 {ppl['int8']:.4f}, "
              f"change {100 * change:+.2f}% ({'within' if abs(change) <= 0.01 else 'outside'} 1%)")
        agree = total = 0
        for prompt in preset["prompts"]:
            ids = [tok.encode(prompt, add_special_tokens=False)]
            # Past the context window both continue on the last window of tokens, as `plmkit generate` does.
            a = plmkit.generate(fp32, ids, max_new_tokens=args.new_tokens, sliding_window=True)[0].tolist()
            b = plmkit.generate(int8, ids, max_new_tokens=args.new_tokens, sliding_window=True)[0].tolist()
            same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
            agree, total = agree + same, total + len(a)
            print(f"--- prompt {prompt!r}: identical for the first {same} of {len(a)} tokens")
            print(f"fp32: {tok.decode(a)!r}")
            print(f"int8: {tok.decode(b)!r}")
        print(f"greedy tokens identical before the first difference: {agree}/{total}")


if __name__ == "__main__":
    main()
