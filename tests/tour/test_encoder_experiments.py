"""The encoder experiments (c transfer, d bidirectional, e masking, f compression, g PEFT) on a tiny setting:
they share one context, so the one tour BERT is pretrained once."""

import dataclasses

import pytest
import torch

from plmkit.errors import PlmkitError
from plmkit.objectives.mlm import mask_tokens
from plmkit.tour import bidirectional, common, compression, masking, peft_compare, transfer
from plmkit.tour.common import Context

TINY = common.EncoderSizes(steps=12, d_model=64, batch=8, warmup=2)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    patch = pytest.MonkeyPatch()
    for module in (common, bidirectional, masking, compression):
        patch.setattr(module, "encoder_sizes", lambda ctx: TINY)
    yield Context(seed=0, quick=True, work=tmp_path_factory.mktemp("tour"), log=lambda message: None)
    patch.undo()
    torch.set_num_threads(threads)


def check_result(result, name):
    assert result.name == name and result.error is None
    assert result.supported in (True, False)
    assert result.setup and result.result and result.tables and result.plots
    for png in result.plots.values():
        assert png.startswith(b"\x89PNG")


def test_blanks_hide_one_whole_word_between_context_on_both_sides(ctx):
    tok = ctx.wordpiece()
    blanks = bidirectional.make_blanks(ctx, tok, 30)
    assert len(blanks) == 30
    for b in blanks:
        assert len(b.left) >= 2 and len(b.right) >= 2
        assert b.candidates[0] == b.answer and len(set(b.candidates)) == 5
        word = tok.id_to_token(b.answer)
        assert word.isalpha() and not (tok.id_to_token(b.right[0]) or "").startswith("##")


def test_bidirectional_compares_equal_sized_models(ctx):
    result = bidirectional.run(ctx)
    check_result(result, "bidirectional")
    m = result.metrics
    # Same width, depth and vocabulary: BERT's extras (token types, MLM transform) stay under 10%.
    assert abs(m["bert_params"] - m["gpt_params"]) / m["gpt_params"] < 0.1
    assert set(m["top1"]) < set(m["of5"]) and len(m["of5"]) == 3
    assert all(0.0 <= v <= 1.0 for v in [*m["top1"].values(), *m["of5"].values()])
    assert 0.0 <= m["bert_top1_where_gpt_left_wrong"] <= 1.0
    assert 1.0 < m["gpt_perplexity"] < ctx.wordpiece().vocab_size * 2
    assert "BERT has no left-to-right distribution" in result.result


def test_always_mask_step_never_shows_a_real_token_at_a_target(ctx):
    tok = ctx.wordpiece()
    windows, _ = common.encoder_windows(ctx)
    always_mask = masking.masking(tok, 1.0, 0.0)
    masked, labels = mask_tokens(windows[:8], always_mask, torch.Generator().manual_seed(0))
    targets = labels != -100
    assert targets.any() and (masked[targets] == tok.mask_id).all()
    assert torch.equal(masked[~targets], windows[:8][~targets])


def test_masking_reports_reading_probe_and_downstream_scores(ctx):
    result = masking.run(ctx)
    check_result(result, "masking")
    m = result.metrics
    assert set(m["reading_accuracy"]) == set(m["sentiment_accuracy"]) == set(masking.MODELS)
    assert set(m["sentiment_accuracy_cls"]) == set(masking.CLS_MODELS)
    assert set(m["sentiment_accuracy_by_seed"]) == {"mean", "[CLS]"}
    # The NSP part is judged on the mean-pooled readout ([CLS] is trained by NSP alone).
    accuracy = m["sentiment_accuracy"]
    assert m["nsp_does_not_help"] == (accuracy["80/10/10 + NSP"] <= accuracy["80/10/10"] + 0.02)
    for probes in m["reading_accuracy"].values():
        assert set(probes) == {"[MASK]", "random token", "unchanged"}
    assert 0.0 < m["majority_baseline"] < 1.0
    # The matched model is a checkpoint of the shared BERT's run, at the loss closest to always [MASK]'s.
    losses, curve = m["heldout_mask_loss"], dict(m["matched_curve"])
    assert m["matched_step"] in {step for step, _ in common.bert_snapshots(ctx)}
    assert losses["80/10/10, same loss"] == curve[m["matched_step"]]
    assert all(abs(loss - losses["always [MASK]"]) >= abs(curve[m["matched_step"]] - losses["always [MASK]"])
               for loss in curve.values())
    # --quick, one seed: four backbones on the mean of the states, the NSP pair also on [CLS].
    assert m["finetune_steps"] == 60 * (len(masking.MODELS) + len(masking.CLS_MODELS))
    # The verdict is the conjunction of the claim's parts, each reported, recomputed from the metrics.
    parts = masking.verdict(m["reading_accuracy"], accuracy, losses, m["majority_baseline"])
    assert result.supported == parts["supported"]
    assert all(m[k] == v for k, v in parts.items() if k != "supported")
    assert "Parts of the claim:" in result.result and "same loss" in result.key


def readings(**by_model):
    return {name: dict(zip(("[MASK]", "random token", "unchanged"), by_model[key]))
            for name, key in zip(masking.MODELS, ("ref", "matched", "always", "nsp"))}


def test_masking_verdict_compares_always_mask_with_the_checkpoint_at_its_loss():
    read = readings(ref=(0.68, 0.60, 0.91), matched=(0.55, 0.45, 0.85), always=(0.54, 0.28, 0.11),
                    nsp=(0.40, 0.30, 0.85))
    tuned = {"80/10/10": 0.84, "80/10/10, same loss": 0.80, "always [MASK]": 0.78, "80/10/10 + NSP": 0.83}
    losses = {"80/10/10": 1.15, "80/10/10, same loss": 1.93, "always [MASK]": 1.88, "80/10/10 + NSP": 2.3}
    parts = masking.verdict(read, tuned, losses, 0.5)
    assert parts["supported"] and parts["matched_loss"] and parts["on_plateau"] == []
    # 6 points behind at the same loss: the fine-tuning part fails, whatever the step-matched gap.
    behind = masking.verdict(read, {**tuned, "always [MASK]": 0.74}, losses, 0.5)
    assert not behind["finetune_within_5_points"] and not behind["supported"]
    # A checkpoint 0.12 nats off is no match: both matched parts are untested, so they fail.
    far = masking.verdict(read, tuned, {**losses, "80/10/10, same loss": 2.00}, 0.5)
    assert not (far["matched_loss"] or far["reads_real_tokens_better_with_80_10_10"]
                or far["finetune_within_5_points"] or far["supported"])
    assert far["nsp_does_not_help"]  # judged after the same steps, as RoBERTa did
    # NSP 3 points above no NSP: that part fails.
    assert not masking.verdict(read, {**tuned, "80/10/10 + NSP": 0.87}, losses, 0.5)["supported"]
    # A model under 25% at [MASK] is on the plateau: nothing is compared with it.
    flat = readings(ref=(0.68, 0.60, 0.91), matched=(0.55, 0.45, 0.85), always=(0.12, 0.12, 0.12),
                    nsp=(0.40, 0.30, 0.85))
    assert masking.verdict(flat, tuned, losses, 0.5)["on_plateau"] == ["always [MASK]"]
    assert not masking.verdict(flat, tuned, losses, 0.5)["matched_loss"]


def test_matched_checkpoint_finds_the_closest_loss_with_few_evaluations():
    losses = [5.74, 4.94, 4.78, 4.26, 3.52, 2.71, 2.25, 2.03, 1.81, 1.69, 1.59, 1.49, 1.33, 1.15]
    calls = []

    def loss_at(i):
        calls.append(i)
        return losses[i]

    index, seen = common.matched_checkpoint(len(losses), loss_at, 1.88)
    assert index == 8 and seen[8] == 1.81  # |1.81 - 1.88| < |2.03 - 1.88|
    assert len(set(calls)) == len(calls) <= 7 and set(seen) == set(calls) and list(seen) == sorted(seen)
    assert common.matched_checkpoint(len(losses), losses.__getitem__, 2.2)[0] == 6
    assert common.matched_checkpoint(len(losses), losses.__getitem__, 9.0)[0] == 0  # above the whole run
    assert common.matched_checkpoint(len(losses), losses.__getitem__, 0.5)[0] == 13  # below its end
    # Noise along the run: the first checkpoint at or below the target, or a neighbour; earliest on a tie.
    assert common.matched_checkpoint(4, [3.0, 2.0, 2.1, 1.5].__getitem__, 2.05)[0] == 1
    with pytest.raises(PlmkitError, match="no checkpoints"):
        common.matched_checkpoint(0, losses.__getitem__, 2.0)


def test_snapshots_leave_the_run_unchanged_and_end_with_the_final_model(ctx):
    tok = ctx.wordpiece()
    rows = list(common.with_cls(tok, common.encoder_windows(ctx)[0]))
    runs = []
    for every in (0, 5):
        torch.manual_seed(0)
        model = common.bert_mlm(common.bert_config(ctx, tok.vocab_size))
        runs.append((model, common.pretrain_encoder(ctx, model, common.make_mlm(tok, 0), rows, "t",
                                                    snapshot_every=every)))
    (plain, plain_rec), (kept, kept_rec) = runs
    assert "snapshots" not in plain_rec and plain_rec["curve"] == kept_rec["curve"]
    assert all(torch.equal(v, kept.state_dict()[k]) for k, v in plain.state_dict().items())
    steps = [step for step, _ in kept_rec["snapshots"]]
    assert steps == [5, 10, TINY.steps]
    assert all(torch.equal(v, kept.state_dict()[k]) for k, v in kept_rec["snapshots"][-1][1].items())
    assert any(not torch.equal(v, kept.state_dict()[k]) for k, v in kept_rec["snapshots"][0][1].items())
    # The shared BERT keeps its run's checkpoints for e and f; its last one is the model itself.
    bert, _ = ctx.pretrained_bert()
    last_step, last = common.bert_snapshots(ctx)[-1]
    assert last_step == TINY.steps and all(torch.equal(v, bert.state_dict()[k]) for k, v in last.items())
    stranger = Context(seed=0, quick=True, work=ctx.work, log=ctx.log, cache={"bert": ctx.cache["bert"]})
    with pytest.raises(PlmkitError, match="without its run's snapshots"):
        common.bert_snapshots(stranger)


def test_compression_student_has_half_the_layers_and_fewer_parameters(ctx):
    result = compression.run(ctx)
    check_result(result, "compression")
    m = result.metrics
    params = m["parameters"]
    assert params["student, distilled"] == params["student, labels only"] < params["BERT teacher"]
    assert params["ALBERT"] < params["BERT teacher"]
    assert m["size_ratio"] == pytest.approx(params["student, distilled"] / params["BERT teacher"])
    assert "| student, distilled | 1 |" in result.tables[0]
    # The verdict is the two parts (and a teacher that learned); the transfer set is extra, unlabelled text.
    parts = compression.verdict(m["accuracy"], params, m["heldout_mask_loss"], m["majority_baseline"])
    assert result.supported == parts["supported"]
    assert all(m[k] == v for k, v in parts.items() if k != "supported")
    assert m["transfer_reviews"] > 0 and m["labelled_reviews"] > 0
    assert "Parts of the claim:" in result.result and f"plus {m['transfer_reviews']} more" in result.setup
    # ALBERT's comparison: a checkpoint of the teacher's own pretraining run at ALBERT's held-out loss.
    assert params["BERT, same loss"] == params["BERT teacher"]
    assert m["matched_step"] in {step for step, _ in common.bert_snapshots(ctx)}
    assert m["heldout_mask_loss"]["BERT, same loss"] == dict(m["matched_curve"])[m["matched_step"]]


def test_compression_verdict_judges_albert_against_the_bert_at_its_loss():
    params = {"BERT teacher": 1000, "student, distilled": 630, "student, labels only": 630, "ALBERT": 480,
              "BERT, same loss": 1000}
    scores = {"BERT teacher": 0.96, "student, distilled": 0.93, "student, labels only": 0.91, "ALBERT": 0.88,
              "BERT, same loss": 0.90}
    losses = {"ALBERT": 1.62, "BERT, same loss": 1.59, "BERT teacher": 1.15}
    parts = compression.verdict(scores, params, losses, 0.5)
    # 8 points behind the teacher after the same steps, 2 behind the BERT at the same loss.
    assert parts["supported"] and parts["albert_holds"] and not parts["albert_holds_after_same_steps"]
    assert parts["score_ratio"] == pytest.approx(0.93 / 0.96)
    assert not compression.verdict({**scores, "ALBERT": 0.84}, params, losses, 0.5)["albert_holds"]
    assert not compression.verdict(scores, params, {**losses, "BERT, same loss": 1.75}, 0.5)["supported"]
    assert not compression.verdict(scores, {**params, "ALBERT": 500}, losses, 0.5)["albert_holds"]
    # The distillation part is unchanged: 95% of the teacher and no worse than labels only.
    assert not compression.verdict({**scores, "student, distilled": 0.90}, params, losses, 0.5)["supported"]


def test_one_bert_pretrained_on_world_paragraphs_without_labelled_episodes(ctx):
    tok = ctx.wordpiece()
    bert, rec = ctx.pretrained_bert()
    assert bert.backbone.config.d_model == TINY.d_model and rec["block"] == TINY.block
    train_windows, _ = common.encoder_windows(ctx)
    assert rec["windows"] == train_windows.shape[0] and train_windows.shape[1] == TINY.block
    text = tok.decode(train_windows[:200].flatten().tolist())
    assert "Sentiment" not in text  # the GPT corpus's formatted, labelled episodes are left out
    assert "Sentiment:" in ctx.corpus_file().read_text()
    assert rec["unigram_loss"] < rec["curve"][0][1]  # the first steps sit above token frequencies


def test_longer_bert_continues_a_copy_of_the_shared_bert(ctx, monkeypatch):
    assert ctx.longer_bert()[0] is ctx.pretrained_bert()[0]  # --quick: no extra steps
    bert, rec = ctx.pretrained_bert()
    before = {k: v.clone() for k, v in bert.state_dict().items()}
    monkeypatch.setattr(common, "LONGER_BERT_STEPS", 6)
    cache = {k: v for k, v in ctx.cache.items() if k != "longer_bert"}
    full = dataclasses.replace(ctx, quick=False, cache=cache)  # the tiny context's world, tokenizer, BERT
    longer, longer_rec = full.longer_bert()
    assert longer is not bert and full.longer_bert()[0] is longer  # built once
    assert all(torch.equal(v, bert.state_dict()[k]) for k, v in before.items())  # b's BERT untouched
    assert any(not torch.equal(v, longer.state_dict()[k]) for k, v in before.items())
    assert longer_rec["steps"] == rec["steps"] + 6 and rec["steps"] == TINY.steps
    steps = [step for step, _ in longer_rec["curve"]]
    assert steps == sorted(steps) and steps[-1] > rec["curve"][-1][0]
    assert longer_rec["dev_loss"] != rec["dev_loss"]


def test_transfer_compares_the_same_heads_from_both_starting_points(ctx):
    result = transfer.run(ctx)
    check_result(result, "transfer")
    m = result.metrics
    for task in ("sentiment", "tagging"):
        for n in transfer.LABELS:
            pre, rnd = m["scores"][task]["pretrained"][n], m["scores"][task]["random init"][n]
            assert m["gap"][task][n] == pytest.approx(pre - rnd)
            runs = m["per_seed"][task]["pretrained"][n]
            assert len(runs) == len(m["finetune_seeds"]) and pre == pytest.approx(sum(runs) / len(runs))
    assert m["finetune_seeds"] == [0]  # --quick: one fine-tuning seed; the full tour averages three
    gaps = m["gap"]
    expected = all(g[32] >= 0.05 and sum(g.values()) / 3 >= 0.05 for g in gaps.values())
    assert result.supported == expected


def test_peft_reports_the_real_trainable_share(ctx):
    result = peft_compare.run(ctx)
    check_result(result, "peft")
    m = result.metrics
    d = TINY.d_model
    lora = 2 * 2 * 8 * d * TINY.num_layers  # r=8: A (r x d) and B (d x r) on q and v in every layer
    head = d * 2 + 2  # the linear classifier every method trains
    backbone = sum(p.numel() for p in ctx.pretrained_bert()[0].backbone.parameters())
    world, minilm = list(m["bases"])  # the package is a test dependency: both bases run
    assert world.startswith("world BERT") and minilm.startswith("MiniLM") and m["judged_on"] == minilm
    tiny = m["bases"][world]
    assert tiny["full"]["trainable_pct"] == pytest.approx(100.0)
    assert tiny["lora r=8"]["trainable_pct"] == pytest.approx(100 * (lora + head) / (backbone + lora + head))
    # --quick runs only full and LoRA on MiniLM; at d=384 and 6 layers LoRA r=8 on q,v is 0.33%.
    real = m["bases"][minilm]
    assert set(real) == set(peft_compare.QUICK_MINILM)
    lora_real = 2 * 2 * 8 * 384 * 6 + 384 * 2 + 2
    assert real["lora r=8"]["trainable"] == lora_real and real["lora r=8"]["trainable_pct"] < 0.4
    expected, _ = peft_compare.verdict(real, m["majority_baseline"][minilm])
    assert result.supported == expected and "The verdict rests on MiniLM" in result.result


def test_peft_verdict_needs_lora_close_under_one_percent_and_a_real_gain():
    def metrics(full, lora, share):
        return {"full": {"accuracy": full, "trainable_pct": 100.0},
                "lora r=8": {"accuracy": lora, "trainable_pct": share}}

    assert peft_compare.verdict(metrics(0.90, 0.88, 0.3), 0.5) == (True, pytest.approx(0.02))
    assert not peft_compare.verdict(metrics(0.90, 0.86, 0.3), 0.5)[0]  # 4 points behind
    assert not peft_compare.verdict(metrics(0.90, 0.89, 1.5), 0.5)[0]  # not under 1%
    assert not peft_compare.verdict(metrics(0.55, 0.55, 0.3), 0.5)[0]  # full barely above majority


def test_peft_without_minilm_judges_the_world_bert(ctx, monkeypatch):
    monkeypatch.setattr(peft_compare, "minilm_dir", lambda: None)
    monkeypatch.setattr(peft_compare, "WORLD_METHODS", {k: peft_compare.WORLD_METHODS[k] for k in
                                                        ("full", "lora r=8")})
    result = peft_compare.run(ctx)
    assert list(result.metrics["bases"]) == [result.metrics["judged_on"]]
    assert "MiniLM is not installed" in result.result and result.supported is False  # 1.5%+ trained
