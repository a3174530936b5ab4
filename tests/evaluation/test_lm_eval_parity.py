"""Parity with lm-evaluation-harness 0.4 on the same checkpoints and the same local files.

A tiny GPT-2 and a tiny Llama (trained a few steps, written with plmkit.save_hf) are scored by plmkit and
by lm-eval's Hugging Face model class (`pretrained=DIR`, CPU) on a multiple-choice, a log-likelihood,
a generate-until and a rolling-perplexity task. lm-eval reads the JSONL files through the task YAMLs that
`lm_eval_config` writes from plmkit's task specs.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from toy_world import toy_lines

import plmkit
from plmkit.evaluation import parse_spec, run_task
from plmkit.evaluation.lm import MIN_SHARED_PREFIX, encode_pair
from plmkit.evaluation.spec import lm_eval_config

TASKS = {
    "toy_mc": {
        "kind": "multiple_choice", "eval_file": "test.jsonl", "fewshot_file": "train.jsonl",
        "prompt": "{sentence}\nColor:", "target": "{pair}", "choices": "options", "num_fewshot": 3,
        "description": "Name the color.\n\n", "metrics": ["acc", "acc_norm"],
    },
    "toy_ll": {
        "kind": "loglikelihood", "eval_file": "test.jsonl", "prompt": "Question: {question}\nAnswer:",
        "target": " {answer}", "num_fewshot": 2,
    },
    "toy_gen": {
        "kind": "generate_until", "eval_file": "test.jsonl", "fewshot_file": "train.jsonl",
        "prompt": "Question: {question}\nAnswer:", "target": " {answer}", "num_fewshot": 2,
        "generation": {"until": ["\n"], "max_new_tokens": 6},
    },
    "toy_ppl": {"kind": "perplexity", "eval_file": "pages.jsonl", "prompt": "{page}"},
    # Fixed demonstrations: every context starts with the same tokens, which run once for all examples.
    "toy_fixed": {
        "kind": "multiple_choice", "eval_file": "test.jsonl", "prompt": "{sentence}\nColor:",
        "target": "{pair}", "choices": "options", "num_fewshot": 3,
        "description": "Name the color of each animal.\n\n",
        "fewshot_samples": [
            {k: r[k] for k in ("sentence", "pair", "options")} for r in toy_lines(3, seed=5)
        ],
    },
}


@pytest.fixture(scope="module")
def both(checkpoint, toy_data, tmp_path_factory):
    """(plmkit results, lm-eval results) of every task on one checkpoint."""
    torch.set_num_threads(1)
    specs = [parse_spec({"task": name, **raw}) for name, raw in TASKS.items()]
    yaml_dir = tmp_path_factory.mktemp("lm_eval_tasks")
    for spec in specs:
        (yaml_dir / f"{spec.task}.yaml").write_text(yaml.safe_dump(lm_eval_config(spec, toy_data)))
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    ref = simple_evaluate(
        model="hf", model_args=f"pretrained={checkpoint},device=cpu,dtype=float32",
        tasks=[s.task for s in specs], task_manager=TaskManager(include_path=str(yaml_dir)),
        batch_size=4, log_samples=True, bootstrap_iters=10, fewshot_random_seed=1234,
    )
    pre = plmkit.load(checkpoint)
    ours = {
        s.task: run_task(pre.model, pre.require_tokenizer(), s, toy_data, batch_size=4, log_samples=True)
        for s in specs
    }
    return ours, ref


def ref_samples(ref: dict, task: str) -> list[dict]:
    return sorted(ref["samples"][task], key=lambda s: s["doc_id"])


def ref_context(sample: dict) -> str:
    args = sample["arguments"]
    first = args[0] if isinstance(args, list) else args["gen_args_0"]
    return first["arg_0"] if isinstance(first, dict) else first[0]


def test_multiple_choice_matches_lm_eval(both):
    ours, ref = both
    mine, theirs = ours["toy_mc"], ref_samples(ref, "toy_mc")
    assert len(mine["samples"]) == len(theirs) == 12
    for a, b in zip(mine["samples"], theirs):
        assert a["context"] == ref_context(b), (a["context"], b["arguments"])
        expected = [r[0][0] for r in b["resps"]]
        assert a["logprobs"] == pytest.approx(expected, abs=1e-4)
        assert a["is_greedy"] == [r[0][1] for r in b["resps"]]
    for metric in ("acc", "acc_norm"):
        assert mine[metric] == ref["results"]["toy_mc"][f"{metric},none"]
        assert mine[f"{metric}_stderr"] == pytest.approx(ref["results"]["toy_mc"][f"{metric}_stderr,none"])


def test_fixed_shots_share_their_prefix_and_match_lm_eval(both, checkpoint):
    ours, ref = both
    mine, theirs = ours["toy_fixed"], ref_samples(ref, "toy_fixed")
    for a, b in zip(mine["samples"], theirs):
        assert a["context"] == ref_context(b)
        assert a["logprobs"] == pytest.approx([r[0][0] for r in b["resps"]], abs=1e-4)
    assert mine["acc"] == ref["results"]["toy_fixed"]["acc,none"]
    tok = plmkit.load(checkpoint).require_tokenizer()
    first, second = (encode_pair(tok, s["context"], " x")[0] for s in mine["samples"][:2])
    shared = next(i for i, (x, y) in enumerate(zip(first, second)) if x != y)
    assert shared >= MIN_SHARED_PREFIX  # the shared-prefix path ran


def test_loglikelihood_matches_lm_eval(both):
    ours, ref = both
    mine, theirs = ours["toy_ll"], ref_samples(ref, "toy_ll")
    for a, b in zip(mine["samples"], theirs):
        assert a["context"] == ref_context(b), (a["context"], b["arguments"])
        assert a["logprob"] == pytest.approx(b["resps"][0][0][0], abs=1e-4)
        assert a["is_greedy"] == b["resps"][0][0][1]
    r = ref["results"]["toy_ll"]
    assert mine["perplexity"] == pytest.approx(r["perplexity,none"], rel=1e-4)
    assert mine["acc"] == r["acc,none"]


def test_generate_until_matches_lm_eval(both):
    ours, ref = both
    mine, theirs = ours["toy_gen"], ref_samples(ref, "toy_gen")
    for a, b in zip(mine["samples"], theirs):
        assert a["context"] == ref_context(b), (a["context"], b["arguments"])
        assert a["generations"] == [b["resps"][0][0]]
    assert mine["exact_match"] == ref["results"]["toy_gen"]["exact_match,none"]


def test_rolling_perplexity_matches_lm_eval(both, checkpoint):
    ours, ref = both
    mine, theirs = ours["toy_ppl"], ref_samples(ref, "toy_ppl")
    for a, b in zip(mine["samples"], theirs):
        assert a["logprob"] == pytest.approx(b["resps"][0][0], abs=1e-4)
    r = ref["results"]["toy_ppl"]
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert mine[metric] == pytest.approx(r[f"{metric},none"], rel=1e-5)
    tok = plmkit.load(checkpoint).require_tokenizer()
    assert len(tok.encode(theirs[-1]["doc"]["page"])) > 2 * 128  # three windows or more


def test_the_checkpoints_give_the_comparison_something_to_compare(both, checkpoint):
    ours, _ = both
    # Trained a few steps: the models answer some questions, and choices span several tokens, so the
    # continuation pass over the shared context's cache is exercised.
    assert ours["toy_gen"]["exact_match"] > 0
    assert len({s["generations"][0] for s in ours["toy_gen"]["samples"]}) > 1
    assert len({tuple(s["logprobs"]) for s in ours["toy_mc"]["samples"]}) > 1
    tok = plmkit.load(checkpoint).require_tokenizer()
    assert len(tok.encode(" red cat", add_special_tokens=False)) > 1
