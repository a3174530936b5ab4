"""SFT: the same token rows, loss and gradients as trl 1.16's SFTTrainer with completion-only loss.

trl's own dataset preparation and collator tokenize a prompt/completion dataset (EOS appended to each
completion and supervised); plmkit's `encode_prompt_responses` + `collate_prompt_responses` must give the
same ids and the same supervised positions. Then trl's `SFTTrainer.compute_loss` on a transformers GPT-2 and
plmkit's `sft_step` on the same weights give the same loss and gradients.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_alignment import EOS, PAD, hf_gpt2, hf_tokenizer, max_grad_difference, plmkit_tokenizer, plmkit_twin

from plmkit.alignment.records import collate_prompt_responses, encode_prompt_responses, pack_prompt_responses
from plmkit.alignment.sft import sft_loss, sft_step
from plmkit.data.records import PromptCompletion
from plmkit.errors import DataError
from plmkit.models.gpt import GPT2Config, gpt2_lm

TOL = 1e-5
ROWS = [
    {"prompt": "w1 w2 w3", "completion": " w4 w5"},
    {"prompt": "w7", "completion": " w8 w9 w10 w11"},
    {"prompt": "w12 w13", "completion": " w14"},
]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_rows_loss_and_gradients_match_trl_completion_only(tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    hf = hf_gpt2(0)
    ours_model = plmkit_twin(hf, tmp_path / "m").train()
    args = SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False,
                     completion_only_loss=True, per_device_train_batch_size=3, max_length=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(model=hf, args=args, train_dataset=Dataset.from_list(ROWS),
                             processing_class=hf_tokenizer())
    theirs_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])

    records = [PromptCompletion(r["prompt"], r["completion"]) for r in ROWS]
    batch = collate_prompt_responses(encode_prompt_responses(plmkit_tokenizer(), records, 32), PAD)
    assert torch.equal(batch["input_ids"], theirs_batch["input_ids"])
    assert torch.equal(batch["attention_mask"], theirs_batch["attention_mask"])
    # trl's labels are unshifted (-100 off the completion); plmkit's are the next-token targets.
    supervised = theirs_batch["labels"] != -100
    assert torch.equal(batch["response_mask"].bool(), supervised)
    assert torch.equal(batch["labels"][:, :-1], theirs_batch["labels"][:, 1:])
    assert bool((batch["input_ids"][supervised] == EOS).sum() == len(ROWS))  # every EOS is a target

    hf.train()
    theirs = trainer.compute_loss(hf, dict(theirs_batch))
    theirs.backward()
    out = sft_step(ours_model, batch)
    (out.loss_sum / out.num_targets).backward()
    assert abs((out.loss_sum / out.num_targets).item() - theirs.item()) < TOL
    assert max_grad_difference(ours_model, hf) < TOL


def test_loss_ignores_prompt_and_padding_tokens():
    torch.manual_seed(0)
    model = gpt2_lm(GPT2Config(vocab_size=97, max_positions=32, d_model=16, num_layers=1, num_heads=2)).eval()
    records = [PromptCompletion("w1 w2 w3", " w4 w5"), PromptCompletion("w7", " w8")]
    batch = collate_prompt_responses(encode_prompt_responses(plmkit_tokenizer(), records, 32), PAD)
    loss_sum, n = sft_loss(model, batch)
    assert int(n) == 3 + 2  # " w4 w5 <eos>" and " w8 <eos>"
    changed = dict(batch)
    changed["input_ids"] = batch["input_ids"].clone()
    changed["input_ids"][1, 3:] = 5  # padding of the second row
    assert torch.equal(sft_loss(model, changed)[0], loss_sum)
    logits = model(batch["input_ids"], batch["attention_mask"]).log_softmax(-1)
    targets = batch["labels"]
    picked = logits.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)[targets != -100]
    assert torch.allclose(loss_sum, -picked.sum(), atol=1e-5)


def test_a_tiny_model_learns_to_answer_and_stop():
    """A few full fine-tuning steps on one prompt/response: the greedy continuation is the response + EOS."""
    from plmkit.models.generation import generate

    torch.manual_seed(0)
    model = gpt2_lm(GPT2Config(vocab_size=97, max_positions=32, d_model=32, num_layers=2, num_heads=2))
    tok = plmkit_tokenizer()
    records = [PromptCompletion("w1 w2", " w40 w41 w42")]
    batch = collate_prompt_responses(encode_prompt_responses(tok, records, 32), PAD)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        out = sft_step(model, batch)
        opt.zero_grad()
        (out.loss_sum / out.num_targets).backward()
        opt.step()
    model.eval()
    new = generate(model, [tok.encode("w1 w2")], max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD)
    assert new[0].tolist()[:4] == [40, 41, 42, EOS]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_packed_rows_give_the_loss_and_gradients_of_separate_rows(family):
    """Packed examples see only themselves: a block-diagonal causal mask, positions restarting at 0."""
    from plmkit.models.llama import LlamaConfig, llama_lm

    torch.manual_seed(0)
    if family == "gpt2":
        model = gpt2_lm(GPT2Config(vocab_size=97, max_positions=32, d_model=16, num_layers=2, num_heads=2))
    else:
        model = llama_lm(LlamaConfig(vocab_size=97, max_positions=32, d_model=16, num_layers=2, num_heads=2,
                                     d_ff=32))
    records = [PromptCompletion(r["prompt"], r["completion"]) for r in ROWS]
    records.append(PromptCompletion("w20 w21", " w22 w23"))
    rows = encode_prompt_responses(plmkit_tokenizer(), records, 32)
    packed = pack_prompt_responses(rows, 12)
    assert len(packed) == 2 and packed[0]["document_ids"] == [1] * 6 + [2] * 6
    grads = []
    for batch in (collate_prompt_responses(rows, PAD), collate_prompt_responses(packed, PAD)):
        model.zero_grad()
        loss_sum, n = sft_loss(model, batch)
        loss_sum.backward()
        grads.append((loss_sum.detach(), int(n), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5) and grads[0][1] == grads[1][1] == 13
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0][2], grads[1][2]))


def test_a_batch_without_response_tokens_is_an_error():
    torch.manual_seed(0)
    model = gpt2_lm(GPT2Config(vocab_size=97, max_positions=32, d_model=16, num_layers=1, num_heads=2))
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4),
             "response_mask": torch.zeros(2, 4)}
    with pytest.raises(DataError, match="^SFT batch has no response tokens to learn from$"):
        sft_loss(model, batch)
