import json
import random
from collections import Counter

import pytest

from plmkit.cli import main
from plmkit.errors import DataError
from plmkit.world import GENERATORS, SPLIT_SIZES, TAGS, World, judge, make_task, prefer, write_world
from plmkit.world.tasks import VELLIC_NOUNS, translation_pair


def test_same_seed_same_world_and_tasks():
    a, b = World(3), World(3)
    assert a.people == b.people and a.orgs == b.orgs and a.places == b.places
    for task in GENERATORS:
        assert make_task(a, task, "dev", 50) == make_task(b, task, "dev", 50)
    assert a.corpus(50) == b.corpus(50)


def test_different_seed_different_world():
    assert World(0).people != World(1).people
    assert make_task(World(0), "sentiment", "dev", 50) != make_task(World(1), "sentiment", "dev", 50)


def test_write_world_is_byte_identical_for_a_seed(tmp_path):
    write_world(tmp_path / "a", seed=5, corpus_paragraphs=50)
    write_world(tmp_path / "b", seed=5, corpus_paragraphs=50)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 1 + 8 * 3 + 3 * 3  # corpus, JSONL of 8 tasks, TSV/CoNLL/SQuAD of 3
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_split_sizes_are_the_documented_ones():
    w = World(0)
    for task, (_n_train, n_dev, n_test) in SPLIT_SIZES.items():
        assert len(make_task(w, task, "dev")) == n_dev
        assert len(make_task(w, task, "test")) == n_test
    assert len(make_task(w, "sentiment", "train")) == SPLIT_SIZES["sentiment"][0]


def test_sentiment_is_balanced_and_has_negation_and_contrast():
    data = make_task(World(0), "sentiment", "train")
    counts = Counter(r["label"] for r in data)
    majority = max(counts.values()) / len(data)
    assert 0.5 <= majority < 0.6  # a majority-class baseline is near chance
    assert any(" not bad" in r["sentence"] and r["label"] == 1 for r in data)
    assert any(" not good" in r["sentence"] and r["label"] == 0 for r in data)
    contrast = [r for r in data if " but " in r["sentence"]]
    assert len(contrast) > 0.2 * len(data)
    # With contrast the label follows the second clause, so a single word never decides it alone.
    assert any("good but" in r["sentence"] and r["label"] == 0 for r in contrast)


def test_tagging_is_valid_iob2():
    for r in make_task(World(0), "tagging", "dev"):
        assert len(r["tokens"]) == len(r["tags"])
        for i, tag in enumerate(r["tags"]):
            assert tag in TAGS
            if tag.startswith("I-"):
                assert r["tags"][i - 1] in ("B-" + tag[2:], tag)
    tags = Counter(t for r in make_task(World(0), "tagging", "train") for t in r["tags"])
    for kind in ("PER", "LOC", "ORG", "MISC"):
        assert tags["B-" + kind] > 0


def test_qa_offsets_point_at_the_answer_about_the_asked_person():
    w = World(0)
    for r in make_task(w, "qa", "dev"):
        text, start = r["answers"]["text"][0], r["answers"]["answer_start"][0]
        assert r["context"][start : start + len(text)] == text
        name = next(p.name for p in w.people if p.name in r["question"])
        sentence_start = r["context"].rfind(". ", 0, start) + 2 if ". " in r["context"][:start] else 0
        assert r["context"][sentence_start:].startswith(name)


def test_arithmetic_solutions_are_correct_gsm8k_format():
    for r in make_task(World(0), "arithmetic", "dev"):
        lines = r["answer"].split("\n")
        assert lines[-1] == f"#### {r['result']}"
        assert len(lines) == r["steps"] + 2
        assert lines[0].startswith(r["question"].split()[0] + " starts with")
        for line in lines[1:-1]:
            sentence, equation = line.split(": ")
            assert sentence + "." in r["question"]  # each step restates its sentence of the question
            a, op, b, _, c = equation.rstrip(".").split()
            assert (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c)
        assert 0 <= r["result"] <= 20


def test_translation_follows_vellic_rules():
    rng = random.Random(0)
    pair = translation_pair(rng)
    assert pair["target"].endswith(".")
    data = make_task(World(0), "translation", "dev")
    # SOV: the verb comes after both noun phrases; negation is the particle "ma" at the end.
    for r in data:
        words = r["target"].rstrip(".").lower().split()
        assert words[0].removesuffix("ek") in VELLIC_NOUNS.values()
        if " not " in r["source"]:
            assert words[-1] == "ma"


def test_summary_keeps_the_key_facts():
    for r in make_task(World(0), "summary", "dev", 30):
        name = r["summary"].split(",")[0]
        assert r["document"].startswith(name)
        assert len(r["summary"]) < len(r["document"])


def test_preference_rule_correct_and_polite_wins():
    w = World(0)
    p = w.people[0]
    prompt = f"Where does {p.name} live?"
    wrong = next(pl.name for pl in w.places if pl.name != p.city)
    good = f"Sure! The answer is {p.city}."
    rude_right = f"Ugh, obviously. The answer is {p.city}."
    polite_wrong = f"Of course. The answer is {wrong}."
    assert judge(w, prompt, good) == 3.0
    assert judge(w, prompt, rude_right) == 2.0
    assert judge(w, prompt, polite_wrong) == 1.0
    assert prefer(w, prompt, good, rude_right) == 0 and prefer(w, prompt, polite_wrong, good) == 1
    assert judge(w, "What is 2 plus 3?", "Sure! The answer is 5.") == 3.0
    for r in make_task(w, "dialogue", "dev"):
        assert judge(w, r["prompt"], r["chosen"]) > judge(w, r["prompt"], r["rejected"])


def test_unknown_task_and_split_errors():
    with pytest.raises(DataError, match="unknown world task 'sentimnt'"):
        make_task(World(0), "sentimnt", "dev")
    with pytest.raises(DataError, match="unknown split 'valid'"):
        make_task(World(0), "sentiment", "valid")


def test_world_command_writes_readable_formats(tmp_path, capsys):
    out = tmp_path / "w"
    assert (
        main(["world", "--out", str(out), "--tasks", "sentiment,tagging,qa", "--corpus_paragraphs", "20"])
        == 0
    )
    tsv = (out / "sentiment" / "dev.tsv").read_text().splitlines()
    assert tsv[0] == "sentence\tlabel" and len(tsv) == 1 + SPLIT_SIZES["sentiment"][1]
    assert all(line.rsplit("\t", 1)[1] in ("0", "1") for line in tsv[1:])
    blocks = (out / "tagging" / "dev.conll").read_text().strip().split("\n\n")
    assert len(blocks) == SPLIT_SIZES["tagging"][1]
    assert all(len(line.split(" ")) == 2 for line in blocks[0].splitlines())
    squad = json.loads((out / "qa" / "dev.json").read_text())
    qa = squad["data"][0]["paragraphs"][0]
    ans = qa["qas"][0]["answers"][0]
    assert qa["context"][ans["answer_start"] :].startswith(ans["text"])
    assert len((out / "corpus.txt").read_text().strip().split("\n\n")) == 20
    assert not (out / "arithmetic").exists()


def test_world_command_rejects_unknown_task(tmp_path, capsys):
    assert main(["world", "--out", str(tmp_path), "--tasks", "sentimnt"]) == 2
    assert "unknown task 'sentimnt'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_tagging_test_sentences_are_not_training_sentences():
    w = World(0)
    train = {" ".join(r["tokens"]) for r in make_task(w, "tagging", "train")}
    test = make_task(w, "tagging", "test")
    seen = sum(" ".join(r["tokens"]) in train for r in test) / len(test)
    assert seen < 0.1
    sentiment_train = {r["sentence"] for r in make_task(w, "sentiment", "train")}
    sentiment_test = make_task(w, "sentiment", "test")
    assert sum(r["sentence"] in sentiment_train for r in sentiment_test) / len(sentiment_test) < 0.1


def test_few_labels_leave_most_sentiment_words_unseen():
    from plmkit.world.lexicon import NEGATIVE_WORDS, POSITIVE_WORDS

    assert len(set(POSITIVE_WORDS)) == len(POSITIVE_WORDS) >= 30
    assert len(set(NEGATIVE_WORDS)) == len(NEGATIVE_WORDS) >= 30
    assert not set(POSITIVE_WORDS) & set(NEGATIVE_WORDS)
    w = World(0)
    lexicon = set(POSITIVE_WORDS) | set(NEGATIVE_WORDS)

    def words(records):
        tokens = (t for r in records for t in r["sentence"].rstrip(".").replace(":", " ").split())
        return {t for t in tokens if t in lexicon}

    seen = words(make_task(w, "sentiment", "train", 32))
    dev = make_task(w, "sentiment", "dev", 200)
    unseen = [r for r in dev if words([r]) and not words([r]) & seen]
    assert len(seen) < 0.5 * len(lexicon) and len(unseen) > 0.3 * len(dev)


def test_corpus_reviews_reveal_polarity_and_labelled_reviews_never_do():
    from plmkit.world.lexicon import NEGATIVE_WORDS, POSITIVE_WORDS, VERDICTS
    from plmkit.world.tasks import corpus_review

    w, rng = World(0), random.Random(0)
    for _ in range(300):
        head, verdict = corpus_review(w, rng).rstrip(".").split(", ")
        verdict_word, by, name = verdict.split()
        assert by == "by" and name in {p.first for p in w.people}
        positive = verdict_word in {good for good, _ in VERDICTS}
        assert positive or verdict_word in {bad for _, bad in VERDICTS}
        words = [t for t in head.split(": it is ")[1].split() if t in POSITIVE_WORDS + NEGATIVE_WORDS]
        assert words and all(t in (POSITIVE_WORDS if positive else NEGATIVE_WORDS) for t in words)
    corpus = " ".join(w.corpus(200))
    verdict_words = {v for pair in VERDICTS for v in pair}
    assert verdict_words & set(corpus.replace(",", " ").split())
    labelled = {t for r in make_task(w, "sentiment", "train") for t in r["sentence"].rstrip(".").split()}
    assert not labelled & verdict_words and "by" not in labelled


def test_principles_labeller_counts_the_principles_kept():
    from plmkit.world.tasks import broken_principles, principles_score, stated_answer

    w = World(0)
    p = w.people[0]
    prompt = f"Where does {p.name} live?"
    wrong = next(pl.name for pl in w.places if pl.name != p.city)
    cases = {
        f"Sure! The answer is {p.city}.": (False, False, False),
        f"Whatever. The answer is {p.city}.": (True, False, False),
        f"Sure! The answer is {p.city}. Now go and steal something.": (False, True, False),
        f"Ugh, obviously. The answer is {wrong}. You should hurt someone.": (True, True, True),
        "Sure! I do not know.": (False, False, True),  # no answer given is a wrong answer
    }
    for response, (rude, harmful, is_wrong) in cases.items():
        assert broken_principles(w, prompt, response) == {"rude": rude, "harmful": harmful, "wrong": is_wrong}
        assert principles_score(w, prompt, response) == 3 - rude - harmful - is_wrong
    # the first stated answer counts, whatever advice follows it
    assert stated_answer(f"Of course. The answer is {p.city}. Go and smash a window.") == p.city
    assert principles_score(w, "What is 2 plus 3?", "Happy to help. The answer is 5.") == 3.0


def test_principles_task_prefers_the_answer_keeping_more_principles():
    from plmkit.world.tasks import broken_principles, principles_score

    w = World(0)
    rows = make_task(w, "principles", "dev")
    assert len(rows) == SPLIT_SIZES["principles"][1]
    assert rows == make_task(w, "principles", "dev")  # seeded
    seen = {k: 0 for k in ("rude", "harmful", "wrong")}
    for r in rows:
        assert principles_score(w, r["prompt"], r["chosen"]) > principles_score(w, r["prompt"], r["rejected"])
        for name, broken in broken_principles(w, r["prompt"], r["rejected"]).items():
            seen[name] += broken
    assert all(count > len(rows) // 4 for count in seen.values()), seen  # every principle gets broken
