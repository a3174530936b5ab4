"""The tour's experiment l (Constitutional AI in the world): its forum, principles and verdict."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from plmkit.alignment.constitution import OPTIONS, as_transcript, comparison_prompt, revision_prompt
from plmkit.tour import cai
from plmkit.tour.common import Context
from plmkit.world import World
from plmkit.world.tasks import broken_principles


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_world_constitution_round_trips_through_the_user_file_reader(tmp_path):
    constitution = cai.world_constitution(tmp_path)
    assert [c.name for c in constitution.critiques] == ["rude", "harmful", "wrong"]
    assert constitution.critiques[0].critique_requests == (
        "\n\nCritiqueRequest: Is the response rude?\n\nCritique:",
    )
    assert constitution.comparisons == tuple(cai.COMPARISONS.values())


def test_a_revision_fixes_the_principle_it_was_asked_about_and_nothing_else():
    w = World(0)
    p = w.people[0]
    prompt = f"Where does {p.name} live?"
    wrong = next(pl.name for pl in w.places if pl.name != p.city)
    response = f"Whatever. The answer is {wrong}. Now go and steal something."
    rng = random.Random(0)
    expected = {
        "rude": {"rude": False, "harmful": True, "wrong": True},
        "harmful": {"rude": True, "harmful": False, "wrong": True},
        "wrong": {"rude": True, "harmful": True, "wrong": False},
    }
    for principle, broken in expected.items():
        revised = cai.revision_of(w, rng, prompt, response, principle)
        assert broken_principles(w, prompt, revised) == broken, (principle, revised)
    assert cai.revision_of(w, rng, prompt, f"Sure! The answer is {p.city}.", "wrong") == (
        f"Sure! The answer is {p.city}."
    )
    assert cai.critique_of(w, prompt, response, "wrong") == f"The answer is wrong: it is {p.city}."
    assert cai.critique_of(w, prompt, response, "harmful") == "The response is harmful."
    assert cai.critique_of(w, prompt, f"Sure! The answer is {p.city}.", "rude") == "The response is polite."


def test_the_forum_is_written_in_the_constitution_layouts(tmp_path):
    w = World(0)
    constitution = cai.world_constitution(tmp_path)
    docs = cai.forum_threads(w, constitution, 300, seed=1)
    assert docs == cai.forum_threads(w, constitution, 300, seed=1)
    comparisons = [d for d in docs if d.startswith("\n\nConsider the following conversation")]
    revisions = [d for d in docs if "\n\nRevision:" in d]
    answers = [d for d in docs if d not in comparisons and d not in revisions]
    assert min(len(comparisons), len(revisions), len(answers)) > 30
    for doc in comparisons:
        text, answer = doc[: -len(OPTIONS[0])], doc[-len(OPTIONS[0]) :]
        question = text.split("Human: ", 1)[1].split("\n\n", 1)[0]
        principle = next(k for k, v in cai.COMPARISONS.items() if v in text)
        a, b = (text.split(tag, 1)[1].split("]]]", 1)[0] for tag in (" (A) [[[", " (B) [[["))
        assert text == comparison_prompt(cai.COMPARISONS[principle], question, a, b)
        # the answer names the response that keeps the principle
        keeps_a = not broken_principles(w, question, a)[principle]
        assert keeps_a != (not broken_principles(w, question, b)[principle])
        assert answer == (OPTIONS[0] if keeps_a else OPTIONS[1])
    doc = revisions[0]
    question = doc.split("Human: ", 1)[1].split("\n\n", 1)[0]
    response = doc.split("Assistant: ", 1)[1].split("\n\nCritiqueRequest", 1)[0]
    critique = doc.split("Critique: ", 1)[1].split("\n\n", 1)[0]
    principle = next(c for c in constitution.critiques if c.critique_requests[0] in doc)
    assert doc.startswith(revision_prompt(question, response, principle.critique_requests[0], critique,
                                          principle.revision_request))
    assert answers[0].startswith(as_transcript(answers[0].split("Human: ", 1)[1].split("\n\n")[0]))


def test_principle_agreement_reads_each_principles_own_label():
    w = World(0)
    p = w.people[0]
    prompt = f"Where does {p.name} live?"
    good, rude = f"Sure! The answer is {p.city}.", f"Whatever. The answer is {p.city}."
    harmful = f"Sure! The answer is {p.city}. Go and smash a window."
    names = list(cai.COMPARISONS.values())
    label = {"principles": names, "p_per_principle": [0.9, 0.5, 0.5], "p_first": 0.63}
    wrong_way = {"principles": names[::-1], "p_per_principle": [0.5, 0.5, 0.2], "p_first": 0.4}
    out = cai.principle_agreement(w, [prompt, prompt, prompt], [(good, rude), (rude, good), (good, harmful)],
                                  [label, wrong_way, label])
    # pair 1: rude label 0.9 for the polite first answer (right); pair 2: rude label read from the third
    # slot, 0.2 for the rude first answer (right); pair 3 differs in harm only, its harm label 0.5 (a miss).
    assert out["rude"] == {"pairs": 2, "agreement": 1.0}
    assert out["harmful"] == {"pairs": 1, "agreement": 0.0}
    assert out["wrong"]["pairs"] == 0


def _points(sl=1.5, rl_cai=1.8, rlhf=1.85):
    return {"SL-CAI": {"judge": sl}, "RL-CAI": {"judge": rl_cai}, "RLHF": {"judge": rlhf}}


def test_l_verdict_checks_every_sentence_of_the_claim():
    ok = (0.9, {"ai": 0.8, "labeller": 0.82}, 1.5, 2.0, _points())
    assert list(cai.verdict_parts(*ok)) == [
        "feedback_agrees_with_labeller", "ai_reward_model_close", "revisions_improve", "rl_cai_improves",
        "rl_cai_matches_rlhf",
    ]
    assert all(cai.verdict_parts(*ok).values())
    cases = {
        "feedback_agrees_with_labeller": (cai.AGREEMENT_MIN - 0.01, *ok[1:]),
        "ai_reward_model_close": (0.9, {"ai": 0.7, "labeller": 0.7 + cai.RM_BEHIND_MAX + 0.01}, *ok[2:]),
        "revisions_improve": (*ok[:2], 1.5, 1.5 + cai.REVISION_GAIN - 0.01, ok[4]),
        "rl_cai_improves": (*ok[:4], _points(rl_cai=1.5 + cai.RL_GAIN, rlhf=1.6)),
        "rl_cai_matches_rlhf": (*ok[:4], _points(rl_cai=1.8, rlhf=1.8 + cai.RL_BEHIND_MAX + 0.01)),
    }
    for name, args in cases.items():
        failed = [k for k, holds in cai.verdict_parts(*args).items() if not holds]
        assert failed == [name], (name, failed)


def test_l_runs_on_a_tiny_pretrained_model(tmp_path):
    from plmkit.models.gpt import GPT2Config, gpt2_lm

    ctx = Context(seed=0, quick=True, work=Path(tmp_path), log=lambda m: None)
    tok = ctx.bpe()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tok.vocab_size, max_positions=192, d_model=32, num_layers=1, num_heads=2)
    ctx.cache["gpt"] = (gpt2_lm(config).eval(), {})
    result = cai.run(ctx)
    m = result.metrics
    assert result.supported == all(m["parts"].values())
    assert ctx.cache["gpt"][0].config.max_positions == 192  # b's GPT is left as it was
    assert set(m["policies"]) == {"pretrained (read the forum)", "SL-CAI", "RL-CAI", "RLHF"}
    assert m["policies"]["SL-CAI"]["kl"] == 0.0  # the KL reference
    for point in m["policies"].values():
        assert 0.0 <= point["judge"] <= 3.0
    assert set(m["per_principle"]) == {"rude", "harmful", "wrong"}
    assert 0.0 <= m["feedback_agreement"] <= 1.0 and set(m["reward_model_accuracy"]) == {"ai", "labeller"}
    chain = m["chain_example"]
    assert chain["prompt"].endswith("Assistant:") and len(chain["revisions"]) == cai.QUICK.rounds
    assert result.plots["cai"].startswith(b"\x89PNG") and result.key
