"""Chain-of-thought data of the tour: the worked-solution format, its tokenizer, and the step checks."""

from pathlib import Path

import pytest

from plmkit.errors import DataError
from plmkit.prompting import extract_answer
from plmkit.tour.common import (
    EXTRA_EPISODES_SEED,
    REVIEW_TEMPLATE,
    VERBALIZER_SETS,
    Context,
    icl_episodes,
)
from plmkit.tour.cot import EQUATION, problem_tokenizer, step_checks, worked_solution
from plmkit.world import World, make_task


def test_worked_solution_keeps_the_worlds_equations_as_a_chain():
    record = {
        "question": "Quinn has 5 eggs. She loses 2. Ugo gives her 3 more. How many eggs does Quinn have now?",
        "answer": "Quinn starts with 5 eggs.\nShe loses 2: 5 - 2 = 3.\n"
        "Ugo gives her 3 more: 3 + 3 = 6.\n#### 6",
        "steps": 2,
        "result": 6,
    }
    assert worked_solution(record) == "5 - 2 = 3. 3 + 3 = 6.\n#### 6"
    for r in make_task(World(0), "arithmetic", "dev", 200):
        text = worked_solution(r)
        steps = EQUATION.findall(text)
        assert len(steps) == r["steps"] and extract_answer(text) == str(r["result"])
        first_value = r["question"].split(" has ")[1].split()[0]
        assert steps[0][0] == first_value
        for (_, _, _, c), (a, _, _, _) in zip(steps, steps[1:]):
            assert a == c  # each step starts from the previous result


def test_worked_solution_rejects_an_answer_without_steps():
    with pytest.raises(DataError, match="no 'a \\+ b = c' step"):
        worked_solution({"answer": "#### 4", "result": 4})


def test_problem_tokenizer_keeps_every_quantity_one_token(tmp_path):
    ctx = Context(seed=0, work=Path(tmp_path), log=lambda m: None)
    tok = problem_tokenizer(ctx, make_task(ctx.world, "arithmetic", "train", 400))
    assert all(len(tok.encode(f" {n}", add_special_tokens=False)) == 1 for n in range(1, 21))
    assert tok.eos_id is not None


def test_step_checks_count_operands_and_arithmetic_separately():
    record = {"answer": "x: 5 - 2 = 3.\ny: 3 + 3 = 6.\n#### 6", "result": 6}
    # Second step: right operand, wrong sum; the third generated step has no gold step to compare with.
    assert step_checks(record, "5 - 2 = 3. 3 + 3 = 7. 7 + 1 = 8.\n#### 8") == (2, 2, 1)
    # First step: wrong operand, but its arithmetic holds.
    assert step_checks(record, "5 - 1 = 4.\n#### 4") == (1, 0, 1)
    assert step_checks(record, "#### 6") == (0, 0, 0)


def test_icl_episodes_keep_one_label_pair_and_the_reviews_labels():
    assert REVIEW_TEMPLATE == "Review: {sentence}\nSentiment:{label}"
    world = World(0)
    labels = {r["sentence"]: r["label"] for r in make_task(world, "sentiment", "train")}
    shared = icl_episodes(world, 50, seed=0)
    extra = icl_episodes(world, 50, seed=EXTRA_EPISODES_SEED)
    assert shared != extra  # the GPT's own episodes are other draws
    for doc in shared + extra:
        lines = doc.split("\n")
        reviews, verdicts = lines[0::2], lines[1::2]
        assert 1 <= len(reviews) == len(verdicts) <= 8
        assert all(r.startswith("Review: ") for r in reviews)
        assert all(v.startswith("Sentiment:") for v in verdicts)
        words = [v[len("Sentiment:") :] for v in verdicts]
        pairs = [s for s, pair in enumerate(VERBALIZER_SETS) if set(words) <= set(pair)]
        assert len(pairs) == 1  # one label-word pair per episode
        for review, word in zip(reviews, words):
            assert VERBALIZER_SETS[pairs[0]][labels[review[len("Review: ") :]]] == word
