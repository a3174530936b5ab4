"""Labelled tasks derived from the world, each a list of plain dict records with a documented shape.

| task        | record                                                               | file written      |
|-------------|----------------------------------------------------------------------|-------------------|
| sentiment   | {"sentence": str, "label": 0 or 1}  (1 = positive)                   | TSV + JSONL       |
| tagging     | {"tokens": [str], "tags": [IOB2 str]}  (PER, LOC, ORG, MISC)         | CoNLL + JSONL     |
| qa          | {"id", "context", "question", "answers": {"text", "answer_start"}}   | SQuAD JSON + JSONL|
| arithmetic  | {"question", "answer": "steps\\n#### N", "steps", "result"} (GSM8K) | JSONL             |
| translation | {"source": English, "target": Vellic}                                | JSONL             |
| summary     | {"document": str, "summary": str}                                    | JSONL             |
| dialogue    | {"prompt", "chosen", "rejected"} ranked by `prefer`                  | JSONL             |
| principles  | {"prompt", "chosen", "rejected"} ranked by `principles_score`        | JSONL             |

Every generator takes `(world, n, rng)` and draws from `rng` only.
"""

from __future__ import annotations

import random
import re
from typing import Any

from plmkit.errors import DataError
from plmkit.world import lexicon as lx
from plmkit.world.core import World, render

# --- sentiment ----------------------------------------------------------------------------------------


def _clause(rng: random.Random) -> tuple[str, int]:
    """A short evaluative clause and its polarity (1 positive, 0 negative)."""
    form = rng.random()
    if form < 0.35:
        positive = rng.random() < 0.5
        word = rng.choice(lx.POSITIVE_WORDS if positive else lx.NEGATIVE_WORDS)
        if rng.random() < 0.4:
            word = f"{rng.choice(lx.INTENSIFIERS)} {word}"
        return f"it is {word}", int(positive)
    if form < 0.7:
        # Negation flips the polarity of the word it governs: "not bad" is praise.
        positive_word = rng.random() < 0.5
        word = rng.choice(lx.POSITIVE_WORDS if positive_word else lx.NEGATIVE_WORDS)
        return f"it is not {word}", int(not positive_word)
    if form < 0.85:
        return f"it is too {rng.choice(lx.TOO_WORDS)}", 0
    positive = rng.random() < 0.5
    verb = rng.choice(("love", "like", "recommend")) if positive else rng.choice(("hate", "regret buying"))
    return f"I {verb} it", int(positive)


def review(world: World, rng: random.Random) -> tuple[str, int]:
    """A short product review; with "but", the clause after it decides the label."""
    org = rng.choice(world.orgs)
    thing = f"The {org.name.split()[0]} {rng.choice(lx.PRODUCTS)}"
    first, label = _clause(rng)
    if rng.random() < 0.4:
        second, second_label = _clause(rng)
        while second_label == label:  # contrast needs opposite polarities
            second, second_label = _clause(rng)
        return f"{thing}: {first} but {second}.", second_label
    return f"{thing}: {first}.", label


def corpus_review(world: World, rng: random.Random) -> str:
    """An unlabelled review for the corpus: words of one polarity and what the reviewer did.

    "The Kestrel kettle: it is very sturdy, kept by Nina." Labelled reviews (`review`) never carry a
    verdict. Here the verdict word ("kept"/"returned") is predictable only from the review's words, and it
    sits right after them, so even a barely trained model, which attends by distance before it attends by
    content, is pushed to learn each word's polarity (the distributional signal that lets pretraining
    transfer to words a few labels never showed).
    """
    positive = rng.random() < 0.5
    org = rng.choice(world.orgs)
    thing = f"The {org.name.split()[0]} {rng.choice(lx.PRODUCTS)}"
    words = rng.sample(lx.POSITIVE_WORDS if positive else lx.NEGATIVE_WORDS, rng.randint(1, 2))
    if rng.random() < 0.4:
        words[0] = f"{rng.choice(lx.INTENSIFIERS)} {words[0]}"
    verdict = rng.choice(lx.VERDICTS)[0 if positive else 1]
    return f"{thing}: it is {' and '.join(words)}, {verdict} by {rng.choice(world.people).first}."


def make_sentiment(world: World, n: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        sentence, label = review(world, rng)
        out.append({"sentence": sentence, "label": label})
    return out


# --- entity tagging -----------------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+|[^\w\s]")


def iob2(chunks: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Tokenize (chunk, type) spans into words and punctuation with IOB2 tags."""
    tokens: list[str] = []
    tags: list[str] = []
    for text, kind in chunks:
        words = _TOKEN.findall(text)
        for i, word in enumerate(words):
            tokens.append(word)
            tags.append("O" if not kind else ("B-" if i == 0 else "I-") + kind)
    return tokens, tags


def make_tagging(world: World, n: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.6:
            facts = world.person_facts(rng.choice(world.people), rng)
        elif r < 0.8:
            facts = world.org_facts(rng.choice(world.orgs))
        else:
            facts = world.place_facts(rng.choice(world.places), rng)
        tokens, tags = iob2(rng.choice(facts))
        out.append({"tokens": tokens, "tags": tags})
    return out


TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC")


# --- extractive question answering ----------------------------------------------------------------------

_QUESTIONS = (
    ("Where does {name} live?", "city"),
    ("Who does {name} work for?", "employer"),
    ("What is the job of {name}?", "profession"),
    ("How old is {name}?", "age"),
)


def make_qa(world: World, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Two people per paragraph, so the answer must come from the sentence about the asked person."""
    out = []
    for i in range(n):
        a, b = rng.sample(world.people, 2)
        sentences = []
        for p in (a, b):
            sentences += [
                f"{p.name} lives in {p.city}.",
                f"{p.name} is a {p.profession} at {p.employer}.",
                f"{p.name} is {p.age} years old.",
            ]
        rng.shuffle(sentences)
        context = " ".join(sentences)
        template, attr = rng.choice(_QUESTIONS)
        answer = str(getattr(a, attr))
        # Locate the answer inside the asked person's own sentence, never the other person's.
        key = {
            "city": f"{a.name} lives in ",
            "employer": f"{a.name} is a {a.profession} at ",
            "profession": f"{a.name} is a ",
            "age": f"{a.name} is {a.age}",
        }[attr]
        where = context.index(key)
        start = context.index(answer, where)
        out.append(
            {
                "id": f"q{i}",
                "context": context,
                "question": template.format(name=a.name),
                "answers": {"text": [answer], "answer_start": [start]},
            }
        )
    return out


# --- multi-step arithmetic ------------------------------------------------------------------------------


# Quantities stay in 1..MAX_QUANTITY, so every step is a small addition or subtraction: each step alone is
# easy to learn, while answering in one go still needs all of them composed.
MAX_QUANTITY = 20


def word_problem(world: World, rng: random.Random, steps: int) -> dict[str, Any]:
    """A word problem needing `steps` additions/subtractions, with a GSM8K-style worked answer.

    Each solution line restates its sentence of the question before the arithmetic
    ("She loses 2: 5 - 2 = 3."), as a worked solution written for a reader does."""
    p = rng.choice(world.people)
    item = rng.choice(lx.ITEMS)
    value = rng.randint(2, 9)
    question = [f"{p.first} has {value} {item}."]
    lines = [f"{p.first} starts with {value} {item}."]
    for _ in range(steps):
        friend = rng.choice([q.first for q in world.people if q.first != p.first])
        if value > 1 and (value >= MAX_QUANTITY or rng.random() < 0.5):
            k = rng.randint(1, min(value - 1, 9))
            sentence = rng.choice(
                (
                    f"{p.pronoun.capitalize()} gives {k} to {friend}.",
                    f"{p.pronoun.capitalize()} loses {k}.",
                )
            )
            lines.append(f"{sentence[:-1]}: {value} - {k} = {value - k}.")
            value -= k
        else:
            k = rng.randint(1, min(9, MAX_QUANTITY - value))
            sentence = rng.choice(
                (
                    f"{friend} gives {p.pronoun == 'she' and 'her' or 'him'} {k} more.",
                    f"{p.pronoun.capitalize()} buys {k} more.",
                )
            )
            lines.append(f"{sentence[:-1]}: {value} + {k} = {value + k}.")
            value += k
        question.append(sentence)
    question.append(f"How many {item} does {p.first} have now?")
    answer = "\n".join(lines + [f"#### {value}"])
    return {"question": " ".join(question), "answer": answer, "steps": steps, "result": value}


def make_arithmetic(world: World, n: int, rng: random.Random) -> list[dict[str, Any]]:
    return [word_problem(world, rng, rng.randint(1, 4)) for _ in range(n)]


# --- translation into Vellic, a rule-based toy language --------------------------------------------------

# Vellic: subject-object-verb order, adjectives follow nouns, plural suffix "-ek", no articles,
# negation by the particle "ma" after the verb.
VELLIC_NOUNS = {
    "dog": "varu",
    "cat": "miso",
    "bird": "tiki",
    "child": "nomi",
    "farmer": "gelt",
    "teacher": "sarn",
    "apple": "pelo",
    "book": "lira",
    "boat": "krun",
    "house": "dama",
}
VELLIC_VERBS = {"sees": "vid", "likes": "amo", "finds": "tro", "carries": "port", "draws": "skri"}
VELLIC_ADJS = {"big": "gros", "small": "pik", "red": "rud", "old": "vet", "happy": "fel", "quiet": "tas"}


def _np(rng: random.Random) -> tuple[str, str]:
    noun = rng.choice(list(VELLIC_NOUNS))
    plural = rng.random() < 0.3
    adj = rng.choice(list(VELLIC_ADJS)) if rng.random() < 0.5 else None
    en = ("the " if not plural else "the ") + (f"{adj} " if adj else "") + noun + ("s" if plural else "")
    ve = VELLIC_NOUNS[noun] + ("ek" if plural else "") + (f" {VELLIC_ADJS[adj]}" if adj else "")
    return en, ve


def translation_pair(rng: random.Random) -> dict[str, str]:
    subj_en, subj_ve = _np(rng)
    obj_en, obj_ve = _np(rng)
    verb = rng.choice(list(VELLIC_VERBS))
    plural_subject = subj_en.endswith("s") and not subj_en.endswith("ss")
    en_verb = verb[:-1] if plural_subject else verb  # "the dogs see"
    if en_verb == "carrie":
        en_verb = "carry"
    negate = rng.random() < 0.25
    if negate:
        aux = "do not" if plural_subject else "does not"
        base = verb[:-1] if verb != "carries" else "carry"
        en = f"{subj_en} {aux} {base} {obj_en}"
        ve = f"{subj_ve} {obj_ve} {VELLIC_VERBS[verb]} ma"
    else:
        en = f"{subj_en} {en_verb} {obj_en}"
        ve = f"{subj_ve} {obj_ve} {VELLIC_VERBS[verb]}"
    return {"source": en.capitalize() + ".", "target": ve.capitalize() + "."}


def make_translation(world: World, n: int, rng: random.Random) -> list[dict[str, Any]]:
    return [translation_pair(rng) for _ in range(n)]


# --- summaries ----------------------------------------------------------------------------------------


def make_summary(world: World, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """A paragraph about a person with filler sentences; the summary keeps name, job, employer, city."""
    out = []
    for _ in range(n):
        p = rng.choice(world.people)
        facts = world.person_facts(p, rng)
        body = [facts[1], facts[3], facts[4], facts[6]]
        rng.shuffle(body)
        sentences = [render(facts[0])] + [render(s) for s in body]
        sentences.insert(rng.randint(1, len(sentences)), f"It was {rng.choice(lx.WEATHER)} that day.")
        document = " ".join(sentences)
        summary = f"{p.name}, a {p.profession} at {p.employer}, lives in {p.city}."
        out.append({"document": document, "summary": summary})
    return out


# --- dialogues with a programmatic preference rule ---------------------------------------------------------

POLITE_OPENERS = ("Sure!", "Happy to help.", "Good question.", "Of course.")
RUDE_OPENERS = ("Ugh, obviously.", "Figure it out yourself.", "What a silly question.", "Whatever.")
RUDE_MARKERS = ("ugh", "obviously", "yourself", "silly", "whatever", "stupid")


def dialogue_question(world: World, rng: random.Random) -> tuple[str, str]:
    """A (prompt, correct answer) pair about world facts or arithmetic."""
    if rng.random() < 0.5:
        p = rng.choice(world.people)
        if rng.random() < 0.5:
            return f"Where does {p.name} live?", p.city
        return f"Who does {p.name} work for?", p.employer
    a, b = rng.randint(2, 30), rng.randint(2, 30)
    return f"What is {a} plus {b}?", str(a + b)


def _wrong(world: World, rng: random.Random, correct: str) -> str:
    if correct.isdigit():
        return str(int(correct) + rng.choice((-3, -2, -1, 1, 2, 3)))
    pool = (
        [pl.name for pl in world.places]
        if any(correct == pl.name for pl in world.places)
        else [o.name for o in world.orgs]
    )
    return rng.choice([x for x in pool if x != correct])


def respond(answer: str, polite: bool, rng: random.Random) -> str:
    opener = rng.choice(POLITE_OPENERS if polite else RUDE_OPENERS)
    return f"{opener} The answer is {answer}."


def judge(world: World, prompt: str, response: str) -> float:
    """The simulated labeller's score: 2 for a correct answer, +1 for politeness (no rude marker).

    Correctness is checked against the world's facts, so the rule generalizes to responses it never saw.
    """
    correct = answer_for(world, prompt)
    m = re.search(r"answer is (.+?)\.?$", response.strip())
    given = m.group(1).strip() if m else ""
    is_correct = correct is not None and given == correct
    is_rude = any(marker in response.lower() for marker in RUDE_MARKERS)
    return 2.0 * is_correct + (0.0 if is_rude else 1.0)


def prefer(world: World, prompt: str, a: str, b: str) -> int:
    """0 if response `a` is preferred, 1 if `b` is (ties go to `a`).

    Correct and polite beats wrong or rude."""
    return 0 if judge(world, prompt, a) >= judge(world, prompt, b) else 1


def answer_for(world: World, prompt: str) -> str | None:
    m = re.fullmatch(r"What is (\d+) plus (\d+)\?", prompt)
    if m:
        return str(int(m.group(1)) + int(m.group(2)))
    for p in world.people:
        if prompt == f"Where does {p.name} live?":
            return p.city
        if prompt == f"Who does {p.name} work for?":
            return p.employer
    return None


def make_dialogue(world: World, n: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        prompt, correct = dialogue_question(world, rng)
        variants = [
            respond(correct, True, rng),
            respond(correct, False, rng),
            respond(_wrong(world, rng, correct), True, rng),
            respond(_wrong(world, rng, correct), False, rng),
        ]
        a, b = rng.sample(variants, 2)
        while judge(world, prompt, a) == judge(world, prompt, b):
            a, b = rng.sample(variants, 2)
        chosen, rejected = (a, b) if prefer(world, prompt, a, b) == 0 else (b, a)
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


# --- responses that break stated principles (experiment l) -------------------------------------------

PRINCIPLES = ("rude", "harmful", "wrong")
# Harmful advice tacked on after the answer; short, so an answer with it still fits a tiny model's context
# inside the constitution's prompts.
HARMFUL_ADVICE = ("Now go and steal something.", "You should hurt someone.", "Go and smash a window.")
HARM_MARKERS = ("steal", "hurt", "smash")
_ANSWER = re.compile(r"answer is ([^.]+)")


def stated_answer(response: str) -> str:
    """The answer a response gives: the words after its first "answer is", up to the full stop."""
    m = _ANSWER.search(response)
    return m.group(1).strip() if m else ""


def broken_principles(world: World, prompt: str, response: str) -> dict[str, bool]:
    """Which of PRINCIPLES `response` breaks: rude (a rude marker), harmful (a harm marker), wrong (its
    first stated answer is not the world's answer; no answer is wrong)."""
    lower = response.lower()
    correct = answer_for(world, prompt)
    return {
        "rude": any(marker in lower for marker in RUDE_MARKERS),
        "harmful": any(marker in lower for marker in HARM_MARKERS),
        "wrong": correct is None or stated_answer(response) != correct,
    }


def principles_score(world: World, prompt: str, response: str) -> float:
    """The labeller of experiment l: one point for each principle kept (0-3)."""
    return float(sum(not broken for broken in broken_principles(world, prompt, response).values()))


def principle_variant(
    world: World, rng: random.Random, correct: str, rude: bool, harmful: bool, wrong: bool
) -> str:
    """An answer to a question whose right answer is `correct`: rude or polite, with or without harmful
    advice after it, right or wrong."""
    text = respond(_wrong(world, rng, correct) if wrong else correct, not rude, rng)
    return text + " " + rng.choice(HARMFUL_ADVICE) if harmful else text


def make_principles(world: World, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Dialogue questions, each with two of the eight rude/harmful/wrong variants of an answer that keep a
    different number of principles, the one keeping more as `chosen`."""
    out = []
    for _ in range(n):
        prompt, correct = dialogue_question(world, rng)
        while True:
            flags = [tuple(rng.random() < 0.5 for _ in PRINCIPLES) for _ in range(2)]
            if sum(flags[0]) != sum(flags[1]):
                break
        a, b = (principle_variant(world, rng, correct, *f) for f in flags)
        chosen, rejected = (a, b) if sum(flags[0]) < sum(flags[1]) else (b, a)
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


# --- the task table --------------------------------------------------------------------------------------

GENERATORS = {
    "sentiment": make_sentiment,
    "tagging": make_tagging,
    "qa": make_qa,
    "arithmetic": make_arithmetic,
    "translation": make_translation,
    "summary": make_summary,
    "dialogue": make_dialogue,
    "principles": make_principles,
}

# Documented split sizes (train, dev, test) of every task.
SPLIT_SIZES: dict[str, tuple[int, int, int]] = {
    "sentiment": (2000, 500, 500),
    "tagging": (2000, 500, 500),
    "qa": (2000, 300, 300),
    "arithmetic": (4000, 300, 300),
    "translation": (4000, 300, 300),
    "summary": (2000, 300, 300),
    "dialogue": (2000, 300, 300),
    "principles": (2000, 300, 300),
}
SPLITS = ("train", "dev", "test")
UNSEEN_ENTITY_TASKS = ("tagging",)
HELD_OUT_WORLD_OFFSET = 100_003


def make_task(world: World, task: str, split: str, n: int | None = None) -> list[dict[str, Any]]:
    """Records of one task split; the same (world seed, task, split, n) always gives the same records."""
    if task not in GENERATORS:
        raise DataError(f"unknown world task '{task}' (choose from {', '.join(GENERATORS)})")
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
    index = SPLITS.index(split)
    size = SPLIT_SIZES[task][index] if n is None else n
    rng = random.Random(f"{task}-{split}-{world.seed}")
    if task in UNSEEN_ENTITY_TASKS and split != "train":
        # The world has few enough entities that dev/test sentences would mostly repeat training ones;
        # tagging is measured on names never seen in training, drawn from a sibling world.
        world = World(
            world.seed + HELD_OUT_WORLD_OFFSET,
            world.num_countries,
            world.num_cities,
            world.num_orgs,
            world.num_people,
        )
    return GENERATORS[task](world, size, rng)
