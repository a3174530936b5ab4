"""Alignment records: file formats, HH-RLHF splitting, chat rendering, token rows, batches and bad input."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from shared_paths import require_data
from tiny_alignment import EOS, PAD, plmkit_tokenizer, rust_tokenizer

from plmkit.alignment.records import (
    collate_preferences,
    collate_prompt_responses,
    encode_preferences,
    read_preferences,
    read_prompt_responses,
    split_hh_transcript,
    tokenize_prompt_response,
)
from plmkit.data.readers import read_records
from plmkit.data.records import PreferencePair, PromptCompletion
from plmkit.data.tokenizer import Tokenizer
from plmkit.errors import DataError, TokenizerError
from plmkit.recipes.sft import chat_template


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_hh_transcripts_split_at_the_last_assistant_turn():
    shared = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Help me?\n\nAssistant:"
    pair = split_hh_transcript(shared + " Sure.", shared + " No.")
    assert pair == PreferencePair(shared, " Sure.", " No.")
    # Transcripts that part before chosen's last turn are cut at the last turn they share.
    early = "\n\nHuman: Hi\n\nAssistant:"
    pair = split_hh_transcript(early + " A\n\nHuman: more\n\nAssistant: B", early + " C")
    assert pair == PreferencePair(early, " A\n\nHuman: more\n\nAssistant: B", " C")


def test_every_real_hh_rlhf_pair_splits_into_prompt_and_two_responses():
    path = require_data("hh_rlhf", "harmless-base", "test.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    assert len(raw) == 2312
    pairs = []
    for i, row in enumerate(raw):
        if row["chosen"] == row["rejected"]:
            continue  # the release holds a few identical pairs; read_preferences refuses them
        pairs.append(split_hh_transcript(row["chosen"], row["rejected"], f"line {i + 1}"))
    for pair, row in zip(pairs, (r for r in raw if r["chosen"] != r["rejected"])):
        assert pair.prompt + pair.chosen == row["chosen"] and pair.prompt + pair.rejected == row["rejected"]
        assert pair.prompt.endswith("\n\nAssistant:") and pair.prompt.startswith("\n\nHuman:")
    assert len(pairs) > 2250


def test_read_preferences_formats(tmp_path):
    path = write(tmp_path / "p.jsonl", [
        {"prompt": "w1", "chosen": " w2", "rejected": " w3"},
        {"prompt": "w1", "chosen": " w2", "rejected": " w4", "p_chosen": 0.75},
        {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "yes"}],
         "rejected": [{"role": "assistant", "content": "no"}]},
    ])
    pairs = read_preferences(path)
    assert pairs[0] == PreferencePair("w1", " w2", " w3")
    assert pairs[1].p_chosen == 0.75
    assert pairs[2] == PreferencePair("\n\nHuman: q\n\nAssistant:", " good", " bad")
    assert pairs[3] == PreferencePair("\n\nHuman: q\n\nAssistant:", " yes", " no")


def test_read_prompt_responses_with_messages_and_a_chat_template(tmp_path):
    path = write(tmp_path / "s.jsonl", [
        {"prompt": "w1", "response": " w2"},
        {"prompt": "w1", "completion": " w3"},
        {"prompt": "w1", "chosen": " w4", "rejected": " w5"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"},
                      {"role": "assistant", "content": "a"}]},
    ])
    records = read_prompt_responses(path)
    assert records[:3] == [PromptCompletion("w1", " w2"), PromptCompletion("w1", " w3"),
                           PromptCompletion("w1", " w4")]
    assert records[3] == PromptCompletion("Be brief.\n\nHuman: q\n\nAssistant:", " a")
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}" \
               "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    templated = read_prompt_responses(path, template=template)
    assert templated[3] == PromptCompletion("<|system|>Be brief.<|user|>q<|assistant|>", "a")


def test_soft_label_field_keeps_the_generic_reader_working(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c", "p_chosen": 0.25},
                                        {"prompt": "a", "chosen": "b", "rejected": "d"}])
    pairs = read_records(path, PreferencePair)
    assert pairs == [PreferencePair("a", "b", "c", 0.25), PreferencePair("a", "b", "d")]
    assert pairs[1].p_chosen == 1.0


def test_token_rows_append_and_supervise_eos_and_cut_long_inputs():
    tok = plmkit_tokenizer()
    row = tokenize_prompt_response(tok, "w1 w2 w3", " w4 w5", max_length=16)
    assert row == {"input_ids": [1, 2, 3, 4, 5, EOS], "response_mask": [0, 0, 0, 1, 1, 1]}
    # A long prompt keeps its end; a response cut at max_length loses its EOS (it did not end there).
    row = tokenize_prompt_response(tok, "w1 w2 w3 w4", " w5 w6 w7", max_length=5, max_prompt_length=2)
    assert row == {"input_ids": [3, 4, 5, 6, 7], "response_mask": [0, 0, 1, 1, 1]}


def test_batches_stack_chosen_over_rejected_with_shifted_labels():
    tok = plmkit_tokenizer()
    rows = encode_preferences(tok, [PreferencePair("w1", " w2 w3", " w4", 0.9),
                                    PreferencePair("w5 w6", " w7", " w8 w9 w10")], max_length=16)
    batch = collate_preferences(rows, PAD)
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, EOS, PAD, PAD], [5, 6, 7, EOS, PAD, PAD], [1, 4, EOS, PAD, PAD, PAD], [5, 6, 8, 9, 10, EOS],
    ]
    assert batch["response_mask"][0].tolist() == [0, 1, 1, 1, 0, 0]
    assert batch["attention_mask"][2].tolist() == [1, 1, 1, 0, 0, 0]
    assert batch["labels"][0].tolist() == [2, 3, EOS, -100, -100, -100]
    assert batch["p_chosen"].tolist() == pytest.approx([0.9, 1.0])
    left = collate_prompt_responses([{"input_ids": [1, 2], "response_mask": [0, 1]},
                                     {"input_ids": [3], "response_mask": [1]}], PAD, padding_side="left")
    assert left["input_ids"].tolist() == [[1, 2], [PAD, 3]]
    assert left["attention_mask"].tolist() == [[1, 1], [0, 1]]
    assert torch.equal(left["labels"], torch.tensor([[2, -100], [-100, -100]]))


def test_bad_input_gets_one_line_errors(tmp_path):
    tok = plmkit_tokenizer()
    same = write(tmp_path / "same.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                           {"prompt": "a", "chosen": "b", "rejected": "b"}])
    with pytest.raises(DataError, match=rf"^{same}:2: chosen and rejected responses are identical$"):
        read_preferences(same)
    with pytest.raises(DataError, match="^pair 0: chosen and rejected responses are identical$"):
        encode_preferences(tok, [PreferencePair("a", "b", "b")], 8)
    room = r"^record: the prompt is 4 tokens, which leaves no room for the response within max_length=4 \("
    with pytest.raises(DataError, match=room):
        tokenize_prompt_response(tok, "w1 w2 w3 w4", " w5", max_length=4)
    with pytest.raises(TokenizerError, match="^the tokenizer has no EOS token: responses must end in one"):
        tokenize_prompt_response(plmkit_tokenizer(eos=False), "w1", " w2", max_length=8)
    soft = write(tmp_path / "soft.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c", "p_chosen": 2}])
    with pytest.raises(DataError, match=rf"^{soft}:1: p_chosen must be in \[0, 1\], got 2.0$"):
        read_preferences(soft)
    no_turn = write(tmp_path / "hh.jsonl", [{"chosen": "just text", "rejected": "other text"}])
    with pytest.raises(DataError, match=rf"^{no_turn}:1: transcript has no 'Assistant:' turn$"):
        read_preferences(no_turn)
    bad_messages = write(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(DataError, match=rf"^{bad_messages}:1: the last message must be the assistant's"):
        read_prompt_responses(bad_messages)


def test_a_checkpoint_chat_template_renders_prompts_with_the_tokenizers_special_tokens(tmp_path):
    """The recipes render `messages` with the checkpoint's template and its BOS/EOS texts; the rendered
    prompt already holds the BOS, so it is encoded without adding special tokens again."""
    (tmp_path / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}w{{ m.content }} {% endfor %}"
        "{% if add_generation_prompt %}w90{% endif %}"
    )
    tok = Tokenizer(rust_tokenizer(), {"bos": "w93", "eos": "<eos>", "pad": "<pad>"})
    template, render = chat_template(str(tmp_path), True, tok)
    assert render == {"bos_token": "w93", "eos_token": "<eos>"}
    path = write(tmp_path / "s.jsonl", [{"messages": [{"role": "user", "content": "1"},
                                                      {"role": "assistant", "content": "w5"}]}])
    records = read_prompt_responses(path, template, **render)
    assert records == [PromptCompletion("w93w1 w90", "w5")]
    row = tokenize_prompt_response(tok, records[0].prompt, records[0].completion, 16, special_tokens=False)
    assert row["input_ids"] == tok.encode("w93w1 w90", add_special_tokens=False) + [5, EOS]
    assert chat_template(str(tmp_path), False, tok)[0] is None
