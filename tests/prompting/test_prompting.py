import json

import pytest
import torch
from shared_paths import require_data

import plmkit
from plmkit.data.tokenizer import train_tokenizer
from plmkit.errors import ConfigError
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.prompting import (
    build_few_shot_prompt,
    continuation_logprobs,
    extract_answer,
    next_token_logprobs,
    predict_labels,
    render,
    score_label_words,
    self_consistency,
    vote_share,
)
from plmkit.world import World, make_task

TEMPLATE = "Review: {sentence}\nSentiment:{label}"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    text = tmp_path_factory.mktemp("tok") / "corpus.txt"
    text.write_text("\n\n".join(World(0).corpus(300)) + "\n\nReview: x\nSentiment: positive negative\n")
    return train_tokenizer([text], kind="bpe", vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=tokenizer.vocab_size, max_positions=64, d_model=32, num_layers=2, num_heads=2)
    return gpt2_lm(cfg).eval()


def test_few_shot_prompt_renders_demos_then_query_up_to_the_answer():
    demos = [{"sentence": f"s{i}", "label": f" l{i}"} for i in range(10)]
    prompt = build_few_shot_prompt(TEMPLATE, demos, {"sentence": "query"}, k=3, seed=1)
    blocks = prompt.split("\n\n")
    assert len(blocks) == 4 and blocks[-1] == "Review: query\nSentiment:"
    for block in blocks[:3]:
        i = block.split("\n")[0].removeprefix("Review: s")
        assert block == f"Review: s{i}\nSentiment: l{i}"
    assert prompt == build_few_shot_prompt(TEMPLATE, demos, {"sentence": "query"}, k=3, seed=1)
    assert prompt != build_few_shot_prompt(TEMPLATE, demos, {"sentence": "query"}, k=3, seed=2)
    assert build_few_shot_prompt(TEMPLATE, demos, {"sentence": "q"}, k=0) == "Review: q\nSentiment:"


def test_few_shot_errors_name_the_problem():
    with pytest.raises(ConfigError, match="k=5 demonstrations requested but only 2 given"):
        build_few_shot_prompt(TEMPLATE, [{"sentence": "a", "label": 1}] * 2, {"sentence": "q"}, k=5)
    with pytest.raises(ConfigError, match="record has no field 'sentence'"):
        render(TEMPLATE, {"text": "a", "label": 1})
    with pytest.raises(ConfigError, match="template has no slot '{answer}'"):
        render(TEMPLATE, {"sentence": "a"}, answer_field="answer")


def test_extract_answer_formats():
    assert extract_answer("5 + 3 = 8.\n8 - 2 = 6.\n#### 6") == "6"
    assert extract_answer("She has 3 apples. The answer is 1,200.") == "1200"
    assert extract_answer("The answer is 4 apples. Wait, the answer is 5.") == "5"
    assert extract_answer("The answer is Dovra.") == "Dovra"
    assert extract_answer("so we get 3 then 7.50 dollars") == "7.5"
    assert extract_answer("#### $18") == "18"
    assert extract_answer("no number here") is None


def test_extract_answer_reads_every_gsm8k_answer():
    lines = require_data("gsm8k", "test.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1319
    for line in lines:
        record = json.loads(line)
        final = record["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert extract_answer(record["answer"]) == str(int(final))
        # Without the "####" line the last number of the worked solution is the answer too.
        assert extract_answer(record["answer"].rsplit("####", 1)[0]) is not None


def test_self_consistency_majority_and_ties():
    assert self_consistency(["6", "7", "6", None]) == "6"
    assert self_consistency(["7", "6", "6", "7"]) == "7"  # tie: earliest
    assert self_consistency([None, None]) is None
    assert vote_share(["6", "7", "6", None]) == 0.5


def test_continuation_logprobs_match_a_manual_forward(model, tokenizer):
    pairs = [("Review: The Falcon lamp: it is good.\nSentiment:", " positive"), ("Mara lives in", " Dovra")]
    got = continuation_logprobs(model, tokenizer, pairs, batch_size=2)
    for (context, cont), value in zip(pairs, got):
        ctx = tokenizer.encode(context, add_special_tokens=False)
        ids = ctx + tokenizer.encode(cont, add_special_tokens=False)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])), dim=-1)[0]
        expected = sum(logp[i - 1, ids[i]] for i in range(len(ctx), len(ids)))
        assert value.item() == pytest.approx(float(expected), abs=1e-4)
    # Batching with padding does not change the scores.
    one_by_one = torch.cat([continuation_logprobs(model, tokenizer, [p], batch_size=1) for p in pairs])
    torch.testing.assert_close(got, one_by_one, atol=1e-4, rtol=0)


def test_label_word_scores_are_logprobs_and_pick_the_argmax(model, tokenizer):
    prompts = [
        build_few_shot_prompt(TEMPLATE, [], r, k=0) for r in make_task(World(0), "sentiment", "dev", 5)
    ]
    verbalizer = {0: " negative", 1: " positive"}
    scores = score_label_words(model, tokenizer, prompts, verbalizer)
    assert scores.shape == (5, 2) and (scores < 0).all()
    assert predict_labels(model, tokenizer, prompts, verbalizer) == scores.argmax(1).tolist()
    # Several words per label: log-sum-exp of each word's probability.
    both = score_label_words(model, tokenizer, prompts, {0: [" negative", " bad"], 1: " positive"})
    bad = score_label_words(model, tokenizer, prompts, {0: " bad"})[:, 0]
    torch.testing.assert_close(both[:, 0], torch.logaddexp(scores[:, 0], bad))


def test_long_prompts_keep_their_most_recent_tokens(model, tokenizer):
    long_context = "Mara lives in Dovra. " * 40
    value = continuation_logprobs(model, tokenizer, [(long_context, " Dovra")])
    assert torch.isfinite(value).all()


def test_scores_with_a_loaded_hugging_face_checkpoint_match_transformers(tmp_path, tokenizer):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2
    )
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    loaded = plmkit.load(tmp_path)
    prompt = "Review: The Falcon lamp: it is not bad.\nSentiment:"
    ours = score_label_words(loaded.model, loaded.tokenizer, [prompt], {0: " negative", 1: " positive"})[0]
    for j, word in enumerate((" negative", " positive")):
        ctx = tokenizer.encode(prompt, add_special_tokens=False)
        ids = ctx + tokenizer.encode(word, add_special_tokens=False)
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([ids])).logits, dim=-1)[0]
        expected = sum(logp[i - 1, ids[i]] for i in range(len(ctx), len(ids)))
        assert ours[j].item() == pytest.approx(float(expected), abs=1e-4)


def test_single_token_words_take_the_one_pass_path_with_the_same_scores(model, tokenizer):
    singles = [
        w
        for w in (" the", " is", " in", ".", " a", " it")
        if len(tokenizer.encode(w, add_special_tokens=False)) == 1
    ]
    assert len(singles) >= 2
    prompts = ["Mara lives in Dovra", "The Falcon lamp: it is not bad"]
    fast = score_label_words(model, tokenizer, prompts, {i: w for i, w in enumerate(singles[:2])})
    slow = continuation_logprobs(model, tokenizer, [(p, w) for p in prompts for w in singles[:2]]).view(2, 2)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=0)
    full = next_token_logprobs(model, tokenizer, prompts)
    assert full.shape == (2, tokenizer.vocab_size)
    torch.testing.assert_close(full.exp().sum(1), torch.ones(2), atol=1e-4, rtol=0)
