"""Reward models: parity with trl 1.16's RewardTrainer, loading the saved model in transformers, soft labels.

Parity calls trl's own `RewardTrainer.compute_loss` (the forward pass, Bradley–Terry loss with margin and
reward centering, and its logged accuracy and margin) on a transformers `...ForSequenceClassification` and
plmkit's `reward_step` on the same weights loaded from the same safetensors file, on the same batch.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers
from tiny_alignment import EOS, PAD, VOCAB, hf_tokenizer, pair_batch, plmkit_tokenizer

from plmkit.alignment import bradley_terry_loss, evaluate_pairs, reward_model, reward_scores, reward_step
from plmkit.alignment.records import encode_preferences
from plmkit.alignment.reward import save_reward_model
from plmkit.data.records import PreferencePair
from plmkit.errors import DataError
from plmkit.interop.hf import load
from plmkit.models.gpt import GPT2Config, GPT2Model

TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hf_gpt2_scorer() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, num_labels=1, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=EOS,
    )
    model = transformers.GPT2ForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.normal_(std=0.3)  # transformers' init leaves rewards near zero
    return model


def hf_bert_scorer() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=1,
        pad_token_id=PAD,
    )
    model = transformers.BertForSequenceClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.normal_(std=0.3)
    return model


def tiny_decoder() -> GPT2Model:
    return GPT2Model(GPT2Config(vocab_size=VOCAB, max_positions=64, d_model=32, num_layers=2, num_heads=4))


def trl_reward_trainer(model, tmp_path, center: float | None):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False,
                        center_rewards_coefficient=center, per_device_train_batch_size=2)
    data = Dataset.from_list([{"chosen": "w1 w2", "rejected": "w1 w3"}] * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RewardTrainer(model=model, args=args, train_dataset=data, processing_class=hf_tokenizer())


def grads_match(ours: torch.nn.Module, hf: transformers.PreTrainedModel, pairs: dict[str, str]) -> float:
    params, theirs = dict(ours.named_parameters()), dict(hf.named_parameters())
    return max((params[a].grad - theirs[b].grad).abs().max().item() for a, b in pairs.items())


@pytest.mark.parametrize(("family", "margin", "center"), [
    ("gpt2", False, None), ("gpt2", True, 0.01), ("bert", False, 0.05),
])
def test_loss_gradients_and_metrics_match_trl(family, margin, center, tmp_path):
    hf = hf_gpt2_scorer() if family == "gpt2" else hf_bert_scorer()
    hf.save_pretrained(tmp_path / "rm", safe_serialization=True)
    ours = load(tmp_path / "rm").model.train()
    trainer = trl_reward_trainer(hf, tmp_path, center)
    hf.train()
    batch = pair_batch(batch_size=4, seed=3)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if margin:
        inputs["margin"] = torch.tensor([0.5, 0.0, 1.0, 0.25])
    theirs = trainer.compute_loss(hf, dict(inputs))
    theirs.backward()
    out = reward_step(center_coef=center or 0.0)(ours, {**batch, **inputs})
    (out.loss_sum / out.num_targets).backward()
    assert abs((out.loss_sum / out.num_targets).item() - theirs.item()) < TOL
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert out.metrics["accuracy"] == pytest.approx(logged["accuracy"], abs=TOL)
    assert out.metrics["margin"] == pytest.approx(logged["margin"], abs=TOL)
    if family == "gpt2":
        pairs = {"head.score.weight": "score.weight", "backbone.norm.weight": "transformer.ln_f.weight",
                 "backbone.embed_tokens.weight": "transformer.wte.weight"}
    else:
        pairs = {"head.classifier.weight": "classifier.weight",
                 "head.dense.weight": "bert.pooler.dense.weight",
                 "backbone.embed_tokens.weight": "bert.embeddings.word_embeddings.weight"}
    assert grads_match(ours, hf, pairs) < TOL


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_saved_reward_model_loads_in_transformers_with_the_same_scores(family, tmp_path):
    if family == "gpt2":
        backbone = tiny_decoder()
    elif family == "llama":
        from plmkit.models.llama import LlamaConfig, LlamaModel

        torch.manual_seed(0)
        backbone = LlamaModel(LlamaConfig(vocab_size=VOCAB, max_positions=64, d_model=32, num_layers=2,
                                          num_heads=4, num_kv_heads=2, d_ff=48))
    else:
        backbone = load_bert_backbone(tmp_path)
    model = reward_model(backbone, dropout=0.0).eval()
    path = save_reward_model(model, tmp_path / "saved", tokenizer=plmkit_tokenizer())
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert hf.config.num_labels == 1 and type(hf).__name__.endswith("ForSequenceClassification")
    batch = pair_batch(batch_size=3, seed=5)
    with torch.no_grad():
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        ours = reward_scores(model, batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(ours, theirs, atol=1e-5)
    # ... and plmkit reads it back as the same reward model.
    again = load(path).model.eval()
    with torch.no_grad():
        again_scores = reward_scores(again, batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(again_scores, ours, atol=1e-6)


def load_bert_backbone(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                  pad_token_id=PAD)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert", safe_serialization=True)
    return load(tmp_path / "bert").model


def test_decoder_reward_reads_the_last_real_token_on_either_padding_side():
    torch.manual_seed(0)
    backbone = tiny_decoder()
    model = reward_model(backbone).eval()
    ids = torch.tensor([[5, 6, 7, EOS], [8, 9, EOS, PAD]])
    right = reward_scores(model, ids, (ids != PAD).long())
    left_ids = torch.tensor([[5, 6, 7, EOS], [PAD, 8, 9, EOS]])
    left = reward_scores(model, left_ids, (left_ids != PAD).long())
    assert torch.allclose(right, left, atol=1e-5)


def test_bradley_terry_golden_values_and_soft_labels():
    chosen, rejected = torch.tensor([1.0, -0.5]), torch.tensor([0.0, 0.5])
    # −log σ(1) = 0.313262, −log σ(−1) = 1.313262
    assert torch.allclose(bradley_terry_loss(chosen, rejected), torch.tensor([0.313262, 1.313262]), atol=1e-6)
    with_margin = bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0]))
    assert with_margin[0].item() == pytest.approx(0.693147, abs=1e-6)
    centered = bradley_terry_loss(chosen, rejected, center_coef=0.1)
    assert torch.allclose(centered - bradley_terry_loss(chosen, rejected), torch.tensor([0.1, 0.0]))
    hard = bradley_terry_loss(chosen, rejected)
    assert torch.allclose(bradley_terry_loss(chosen, rejected, p_chosen=1.0), hard)
    assert torch.allclose(bradley_terry_loss(chosen, rejected, p_chosen=torch.zeros(2)),
                          bradley_terry_loss(rejected, chosen))


def test_held_out_accuracy_counts_pairs_ranked_right():
    torch.manual_seed(0)
    backbone = tiny_decoder()
    model = reward_model(backbone).eval()
    tok = plmkit_tokenizer()
    pairs = [PreferencePair("w1 w2", f" w{i}", f" w{i + 10}") for i in range(3, 13)]
    rows = encode_preferences(tok, pairs, max_length=16)
    result = evaluate_pairs(model, rows, PAD, batch_size=4)
    swapped = evaluate_pairs(model, encode_preferences(tok, [PreferencePair(p.prompt, p.rejected, p.chosen)
                                                             for p in pairs], 16), PAD)
    assert result["accuracy"] + swapped["accuracy"] == pytest.approx(1.0)
    assert result["margin"] == pytest.approx(-swapped["margin"], abs=1e-6)


def test_a_nan_reward_is_an_error_naming_the_row():
    class Broken(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return torch.tensor([0.0, float("nan"), 1.0])

    with pytest.raises(DataError, match=r"^reward model returned a non-finite score \(row 1 of the batch\)$"):
        reward_scores(Broken(), torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2))
