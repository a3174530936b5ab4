"""Constitutional AI: prompts built from the released principle files against golden strings, soft labels,
the `plmkit cai revise|label` commands end to end on a tiny random GPT-2 with the real GPT-2 tokenizer, and
bad input."""

from __future__ import annotations

import json
import re

import pytest
import torch
from shared_paths import require_data

from plmkit.alignment.constitution import (
    OPTIONS,
    FeedbackOptions,
    SamplingOptions,
    ai_feedback,
    comparison_prompt,
    cot_answer_prompt,
    cot_comparison_prompt,
    critique_prompt,
    load_constitution,
    option_probabilities,
    read_principles,
    revise,
    revision_prompt,
)
from plmkit.alignment.records import read_preferences, read_prompt_responses
from plmkit.cli import main
from plmkit.data.tokenizer import CharTokenizer, Tokenizer
from plmkit.errors import DataError, TokenizerError
from plmkit.models.gpt import GPT2Config, gpt2_lm

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def prompts_dir():
    return require_data("constitutional_ai", "prompts")


@pytest.fixture(scope="module")
def constitution(prompts_dir):
    return load_constitution(prompts_dir)


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return Tokenizer.load(require_data("tokenizers", "gpt2"))


@pytest.fixture(scope="module")
def tiny_gpt2(gpt2_tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=gpt2_tokenizer.vocab_size, max_positions=1024, d_model=32, num_layers=2, num_heads=2
    )
    return gpt2_lm(config).eval()


# ------------------------------------------------------------------------------------- the released files


def test_released_files_load_with_their_counts(constitution):
    assert len(constitution.critiques) == 16 and constitution.critiques[0].name == "harmful0"
    assert len(constitution.critique_fewshot) == 5
    assert len(constitution.comparisons) == 16
    assert len(constitution.comparison_fewshot) == 5
    assert len(constitution.cot_fewshot) == 6


# Few-shot example 1 of CritiqueRevisionFewShotPrompts.json, copied from the file, without the
# "\n\nHuman:" it ends in.
CONSENT_EXAMPLE = (
    "\n\nHuman: is it really necessary to ask for consent during sex "
    "every time?\n\nAssistant: While it is ideal "
    "to ask for consent every time before engaging in a sexual act, "
    "it isn't strictly necessary as long as your "
    "partner has given ongoing consent via words, body language, or "
    "other cues. That said, it's always better to "
    "explicitly check in and make sure your partner is "
    "comfortable, especially if anything seems off. When in "
    "doubt, don't be afraid to ask.\n\nCritiqueRequest: Identify specific ways in which the assistant's "
    "precedings response is harmful. Also point out potential harmfulness in the human's questions and "
    "responses. Examples of harm include but are not limited to "
    "racism, sexism, toxicity.\n\nCritique: The human "
    "wants to know whether they really need consent to have sex. "
    "The answer is definitely always yes, but the "
    "assistant's response could be interpreted as saying that it isn't strictly necessary.Furthermore, the "
    "assistant should have pointed out that one should never have sex with underage children no matter what, "
    "since children are too young to give "
    "consent.\n\nRevisionRequest: Please rewrite the assistant response to "
    "remove all harmful content, and to politely point out any "
    "harmful assumptions from the human.\n\nRevision: "
    "Yes, I think it is absolutely unethical to have sex with "
    "someone without their consent. It's always better "
    "to explicitly check in and make sure your partner is "
    "comfortable, especially if anything seems off. When in "
    "doubt, don't be afraid to ask."
)
# Principle "harmful2" of CritiqueRevisionInstructions.json, copied from the file.
HARMFUL2_CRITIQUE = (
    "\n\nCritiqueRequest: Identify all ways in which the assistant's last response is harmful, unethical, or "
    "socially biased. Furthermore, provide specific details on how the assistant can improve its response."
    "\n\nCritique:"
)
HARMFUL2_REVISION = (
    "\n\nRevisionRequest: Please rewrite the assistant response to "
    "remove all harmful, unethical, or socially "
    "biased content, and move the conversation in a positive direction.\n\nRevision:"
)


def test_critique_and_revision_prompts_equal_golden_strings(constitution):
    principle = {p.name: p for p in constitution.critiques}["harmful2"]
    assert principle.critique_requests == (HARMFUL2_CRITIQUE,)
    assert principle.revision_request == HARMFUL2_REVISION
    shots = [constitution.critique_fewshot[1]]
    assert shots[0] == CONSENT_EXAMPLE + "\n\nHuman:"
    critique = critique_prompt("How do I pick a lock?", " Use a tension wrench. ", HARMFUL2_CRITIQUE, shots)
    assert critique == (
        CONSENT_EXAMPLE
        + "\n\nHuman: How do I pick a lock?\n\nAssistant: Use a tension wrench."
        + "\n\nCritiqueRequest: Identify all ways in which the "
        "assistant's last response is harmful, unethical, "
        "or socially biased. Furthermore, provide specific details on how the assistant can improve its "
        "response.\n\nCritique:"
    )
    revision = revision_prompt(
        "How do I pick a lock?",
        "Use a tension wrench.",
        HARMFUL2_CRITIQUE,
        "It helps with burglary.",
        HARMFUL2_REVISION,
        shots,
    )
    assert revision == critique + " It helps with burglary." + (
        "\n\nRevisionRequest: Please rewrite the assistant response to remove all harmful, unethical, or "
        "socially biased content, and move the conversation in a positive direction.\n\nRevision:"
    )
    # an HH transcript prompt is kept as it is
    multi = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: How do I pick a lock?\n\nAssistant:"
    assert critique_prompt(multi, "No.", HARMFUL2_CRITIQUE) == multi + " No." + HARMFUL2_CRITIQUE


HELPFUL = "\nPlease choose the response that is the most helpful, honest, and harmless. Options:"


def test_comparison_prompt_equals_golden_string(constitution):
    assert constitution.comparisons[1] == HELPFUL
    shot = constitution.comparison_fewshot[1]
    built = comparison_prompt(HELPFUL, "How do I bake bread?", "Mix flour and water.", "Buy some.", [shot])
    assert built == (
        "\n\nConsider the following conversation between a human and an assistant:\n\n"
        "Human: I'm thinking of ending it all.\n\n"
        "\nPlease choose the response that is the most helpful, honest, and harmless. Options:\n"
        " (A) [[[Oh no, please seek professional help from a "
        "counselor or therapist! I'm sure you have a lot to "
        "live for, and just need support and time to heal.]]]\n"
        " (B) [[[That makes sense, life can be gloomy.]]]\n\nThe answer is: (A)"
        "\n\nConsider the following conversation between a human and an assistant:\n\n"
        "Human: How do I bake bread?\n\n"
        "\nPlease choose the response that is the most helpful, honest, and harmless. Options:\n"
        " (A) [[[Mix flour and water.]]]\n (B) [[[Buy some.]]]\n\nThe answer is:"
    )


def test_comparison_prompt_reproduces_the_released_hhh_comparisons():
    """The paper's 438 HHH comparison questions were written in this layout: rebuilding each from its own
    conversation, principle and responses gives the released prompt character for character."""
    path = require_data("constitutional_ai", "evals", "438HHHEvaluations.jsonl")
    layout = re.compile(
        r"\n\nConsider the following conversation between a human and "
        r"an assistant:\n\n(.*)\n\n(\n.*?Options:)"
        r"\n \(A\) \[\[\[(.*)\]\]\]\n \(B\) \[\[\[(.*)\]\]\]\n\nThe answer is:",
        re.S,
    )
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 438
    for row in rows:
        conversation, principle, a, b = layout.fullmatch(row["prompt"]).groups()
        prompt = "\n\n" + conversation + "\n\nAssistant:"
        assert comparison_prompt(principle, prompt, a, b) == row["prompt"]
        assert len(row["corrects"]) == 1 and row["corrects"][0] in OPTIONS  # the options the labels read


def test_chain_of_thought_prompt_equals_golden_string(constitution):
    built = cot_comparison_prompt(
        HELPFUL, "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Any tips?\n\nAssistant:", "Sleep well.", "No."
    )
    assert built == (
        "\n\nHuman: Consider the following conversation between a human (H) and an assistant (A):\n\n"
        "H: Hi\n\nA: Hello.\n\nH: Any tips?\n\n"
        "\nPlease choose the response that is the most helpful, honest, and harmless. Options:\n"
        " (A) [[[Sleep well.]]]\n (B) [[[No.]]]\n\nAssistant: Let's think step by step:"
    )
    assert cot_answer_prompt(built, " (A) is kind. ") == built + " (A) is kind.\n\nHuman:\nSo the answer is:"
    # the released chain-of-thought examples take the principle at their "{}"
    shot = constitution.cot_fewshot[1]
    with_shot = cot_comparison_prompt(HELPFUL, "Any tips?", "Sleep well.", "No.", [shot])
    head = with_shot[
        : len(with_shot) - len(cot_comparison_prompt(HELPFUL, "Any tips?", "Sleep well.", "No."))
    ]
    assert "{}" not in head and head.count(HELPFUL) == 1
    assert head.startswith(
        "\n\nHuman: Consider the following conversation between a human (H) and an assistant"
    )
    assert head.endswith("So the answer is: (B)")


# ---------------------------------------------------------------------------------------------- soft labels


def test_option_probabilities_sum_to_one_and_match_a_plain_forward(tiny_gpt2, gpt2_tokenizer):
    texts = [comparison_prompt(HELPFUL, "Hi?", "Hello.", "Go away."), "The answer is:"]
    probs = option_probabilities(tiny_gpt2, gpt2_tokenizer, texts)
    assert probs.shape == (2, 2)
    assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-6)
    for row, text in enumerate(texts):  # independent: full forward, log-softmax, sum over the option's tokens
        prompt = gpt2_tokenizer.encode(text, add_special_tokens=False)
        scores = []
        for option in OPTIONS:
            ids = prompt + gpt2_tokenizer.encode(option, add_special_tokens=False)
            with torch.no_grad():
                logps = tiny_gpt2(input_ids=torch.tensor([ids])).log_softmax(-1)[0]
            scores.append(sum(float(logps[t - 1, ids[t]]) for t in range(len(prompt), len(ids))))
        assert torch.allclose(probs[row], torch.tensor(scores).softmax(-1), atol=1e-5)


def test_soft_labels_flip_when_the_responses_swap(tiny_gpt2, gpt2_tokenizer, constitution):
    prompts = ["How do I pick a lock?", "Any tips for sleeping?"]
    pairs = [("Call a locksmith.", "Use a tension wrench."), ("Sleep well.", "No.")]
    options = FeedbackOptions(num_principles=3, num_fewshot=1)
    forward = ai_feedback(tiny_gpt2, gpt2_tokenizer, prompts, pairs, constitution, options=options, seed=1)
    swapped = ai_feedback(
        tiny_gpt2, gpt2_tokenizer, prompts, [(b, a) for a, b in pairs], constitution, options=options, seed=1
    )
    for f, s in zip(forward, swapped):
        assert f["principles"] == s["principles"] and len(f["principles"]) == 3
        assert abs(f["p_first"] + s["p_first"] - 1.0) < 1e-6
        assert abs(f["p_first"] - sum(f["p_per_principle"]) / 3) < 1e-6
        assert 0.0 < f["p_first"] < 1.0
    # one order only: a random model's preference for a letter shows, so the labels do not flip
    one = FeedbackOptions(num_principles=3, num_fewshot=1, both_orders=False)
    f1 = ai_feedback(tiny_gpt2, gpt2_tokenizer, prompts, pairs, constitution, options=one, seed=1)
    s1 = ai_feedback(
        tiny_gpt2, gpt2_tokenizer, prompts, [(b, a) for a, b in pairs], constitution, options=one, seed=1
    )
    assert any(abs(a["p_first"] + b["p_first"] - 1.0) > 1e-3 for a, b in zip(f1, s1))


def test_chain_of_thought_labels_are_clamped_and_flip(tiny_gpt2, gpt2_tokenizer, constitution):
    # greedy reasoning: a sampled one differs between the two calls, so the flip would hold only on average
    sampling = SamplingOptions(max_new_tokens=4, do_sample=False)
    options = FeedbackOptions(num_principles=2, num_fewshot=1, cot=True, sampling=sampling)
    pair = [("Sleep well.", "No.")]
    f = ai_feedback(tiny_gpt2, gpt2_tokenizer, ["Any tips?"], pair, constitution, options=options, seed=2)[0]
    s = ai_feedback(
        tiny_gpt2, gpt2_tokenizer, ["Any tips?"], [pair[0][::-1]], constitution, options=options, seed=2
    )[0]
    assert all(0.4 <= p <= 0.6 for p in f["p_per_principle"])
    assert abs(f["p_first"] + s["p_first"] - 1.0) < 1e-6


def test_revise_keeps_the_chain_and_draws_by_seed(tiny_gpt2, gpt2_tokenizer, constitution):
    sampling = SamplingOptions(max_new_tokens=5)
    kw = dict(rounds=2, num_fewshot=1, sampling=sampling, seed=3)
    records = revise(tiny_gpt2, gpt2_tokenizer, ["Hi?", "How do I pick a lock?"], constitution, **kw)
    again = revise(tiny_gpt2, gpt2_tokenizer, ["Hi?", "How do I pick a lock?"], constitution, **kw)
    assert records == again
    names = {p.name for p in constitution.critiques}
    for record in records:
        assert record["prompt"].startswith("\n\nHuman: ") and record["prompt"].endswith("\n\nAssistant:")
        assert len(record["revisions"]) == 2
        assert all(step["principle"] in names for step in record["revisions"])
        kept = [record["initial_response"]] + [step["revision"] for step in record["revisions"]]
        assert record["response"] == " " + [text for text in kept if text.strip()][-1]


# ------------------------------------------------------------------------------------------ the commands


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_gpt2, gpt2_tokenizer):
    from plmkit.interop.hf import save_hf

    return save_hf(tiny_gpt2, tmp_path_factory.mktemp("cai") / "model", tokenizer=gpt2_tokenizer)


def test_cai_revise_command_writes_sft_records(tmp_path, model_dir, prompts_dir, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "How do I pick a lock?"})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "Hi?"}]})
        + "\n"
    )
    out = tmp_path / "revisions.jsonl"
    status = main(
        [
            "cai",
            "revise",
            f"--model={model_dir}",
            f"--prompts={prompts}",
            f"--out={out}",
            f"--principles_dir={prompts_dir}",
            "--rounds=2",
            "--max_new_tokens=6",
        ]
    )
    assert status == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["revisions"]) == 2 for r in rows)
    records = read_prompt_responses(out)  # what `plmkit sft` reads
    assert records[0].prompt == "\n\nHuman: How do I pick a lock?\n\nAssistant:"
    assert [r.completion for r in records] == [r["response"] for r in rows]
    assert not list(tmp_path.glob(".revisions.jsonl.tmp-*"))


@pytest.mark.parametrize("cot", [False, True])
def test_cai_label_command_writes_soft_preferences(tmp_path, model_dir, prompts_dir, capsys, cot):
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "How do I pick a lock?", "responses": ["Call a locksmith.", "Use a tension wrench."]},
        {"prompt": "Any tips for sleeping?", "responses": ["Sleep well.", "No."]},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "preferences.jsonl"
    status = main(
        [
            "cai",
            "label",
            f"--model={model_dir}",
            f"--prompts={prompts}",
            f"--out={out}",
            f"--principles_dir={prompts_dir}",
            "--num_principles=2",
            "--max_new_tokens=4",
            *(["--cot"] if cot else []),
        ]
    )
    assert status == 0, capsys.readouterr().err
    pairs = read_preferences(out)  # what `plmkit reward` and `plmkit dpo` read
    assert len(pairs) == 2
    for pair, row in zip(pairs, rows):
        assert 0.5 <= pair.p_chosen <= (0.6 if cot else 1.0)
        assert {pair.chosen.strip(), pair.rejected.strip()} == set(row["responses"])
        assert pair.prompt == f"\n\nHuman: {row['prompt']}\n\nAssistant:"


def test_cai_label_samples_pairs_and_relabels_preference_files(tmp_path, model_dir, prompts_dir, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How do I pick a lock?\nAny tips?\n")
    out = tmp_path / "sampled.jsonl"
    assert (
        main(
            [
                "cai",
                "label",
                f"--model={model_dir}",
                f"--prompts={prompts}",
                f"--out={out}",
                f"--principles_dir={prompts_dir}",
                "--num_principles=1",
                "--max_new_tokens=4",
            ]
        )
        == 0
    )
    assert len(read_preferences(out)) == 2
    hh = tmp_path / "hh.jsonl"
    hh.write_text(
        json.dumps(
            {
                "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
                "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.",
            }
        )
        + "\n"
    )
    capsys.readouterr()
    assert (
        main(
            [
                "cai",
                "label",
                f"--model={model_dir}",
                f"--prompts={hh}",
                f"--out={tmp_path / 'relabel.jsonl'}",
                f"--principles_dir={prompts_dir}",
                "--num_principles=1",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["agreement_with_file_labels"] in (0.0, 1.0)
    same = tmp_path / "same.jsonl"
    same.write_text(
        json.dumps({"prompt": "Hi", "responses": ["Same.", "Same. "]})
        + "\n"
        + json.dumps({"prompt": "Hi", "responses": ["Hello!", "Go away."]})
        + "\n"
    )
    assert (
        main(
            [
                "cai",
                "label",
                f"--model={model_dir}",
                f"--prompts={same}",
                f"--out={tmp_path / 'same_out.jsonl'}",
                f"--principles_dir={prompts_dir}",
                "--num_principles=1",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["pairs"] == 1 and result["skipped_equal_pairs"] == 1


# -------------------------------------------------------------------------------------------- bad input


def test_principles_files_of_the_wrong_shape_are_named(tmp_path, prompts_dir):
    wrong = tmp_path / "mine.json"
    wrong.write_text(json.dumps(["Please critique."]))
    with pytest.raises(DataError, match=r"mine.json: not a critiques file .*expected an object"):
        read_principles(wrong, "critiques")
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("rude:\n  prompt: ['\\n\\nCritiqueRequest: Is it rude?\\n\\nCritique:']\n")
    with pytest.raises(DataError, match=r"mine.yaml: .*principle 'rude' has no 'edit_request'"):
        load_constitution(prompts_dir, critiques=yaml_file)
    cot = tmp_path / "cot.json"
    cot.write_text(json.dumps([{"prompt": "no placeholder"}]))
    with pytest.raises(DataError, match=r"cot.json: .*entry 0 'prompt' has no '\{\}'"):
        read_principles(cot, "cot_fewshot")
    # a user's own YAML of the right shape replaces the released principles
    yaml_file.write_text(
        "rude:\n  prompt: ['\\n\\nCritiqueRequest: Is it rude?\\n\\nCritique:']\n"
        "  edit_request: '\\n\\nRevisionRequest: Make it polite.\\n\\nRevision:'\n"
    )
    mine = load_constitution(prompts_dir, critiques=yaml_file)
    assert [p.name for p in mine.critiques] == ["rude"] and len(mine.comparisons) == 16


def test_cli_reports_a_bad_principles_file_on_one_line(tmp_path, model_dir, capsys):
    wrong = tmp_path / "principles.json"
    wrong.write_text(json.dumps({"harmful0": {"prompt": ["x"]}}))
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hi\n")
    status = main(
        [
            "cai",
            "revise",
            f"--model={model_dir}",
            f"--prompts={prompts}",
            f"--out={tmp_path / 'out.jsonl'}",
            f"--critiques={wrong}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err
    assert "principles.json" in err and "'edit_request'" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_an_empty_revision_keeps_the_response_it_revises(constitution, gpt2_tokenizer):
    tokenizer = gpt2_tokenizer

    class StopAtOnce(torch.nn.Module):  # a causal LM that always predicts EOS
        config = GPT2Config(
            vocab_size=tokenizer.vocab_size, max_positions=4096, d_model=8, num_layers=1, num_heads=1
        )

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None, cache=None, **_):
            if cache is not None:
                cache.begin(attention_mask, input_ids.shape[1])
                cache.end(input_ids.shape[1])
            logits = torch.zeros(*input_ids.shape, tokenizer.vocab_size)
            logits[..., tokenizer.eos_id] = 10.0
            return logits

    records = revise(
        StopAtOnce(),
        tokenizer,
        ["Hi?"],
        constitution,
        responses=["Hello."],
        rounds=2,
        sampling=SamplingOptions(max_new_tokens=3, do_sample=False),
    )
    assert [step["revision"] for step in records[0]["revisions"]] == ["", ""]
    assert records[0]["response"] == " Hello."


def test_a_prompt_beyond_the_context_window_is_named(tiny_gpt2, gpt2_tokenizer, constitution):
    prompts = ["Hi?", "How? " * 1100]
    with pytest.raises(DataError, match=r"^prompt 1: \d+ tokens \+ 5 new exceed the model's context of 1024"):
        revise(
            tiny_gpt2,
            gpt2_tokenizer,
            prompts,
            constitution,
            num_fewshot=0,
            sampling=SamplingOptions(max_new_tokens=5, batch_size=1),
        )
    with pytest.raises(DataError, match=r"^critique prompt 0: .* use fewer few-shot examples"):
        revise(
            tiny_gpt2,
            gpt2_tokenizer,
            ["Hi?"],
            constitution,
            num_fewshot=5,
            sampling=SamplingOptions(max_new_tokens=5),
        )


def test_a_feedback_tokenizer_without_the_option_tokens_is_refused(constitution):
    torch.manual_seed(0)
    tokenizer = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz ?."), {"eos": "|"})
    model = gpt2_lm(
        GPT2Config(vocab_size=tokenizer.vocab_size, max_positions=64, d_model=16, num_layers=1, num_heads=2)
    )
    with pytest.raises(TokenizerError, match=r"feedback model's tokenizer lacks the option tokens.*\(A\)"):
        ai_feedback(model, tokenizer, ["hi?"], [("a.", "b.")], constitution)
