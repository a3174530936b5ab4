"""The toy question/colour corpus the evaluation parity tests score (plain functions, importable by tests)."""

from __future__ import annotations

import random

COLORS = ["red", "blue", "green", "black", "white"]
ANIMALS = ["cat", "dog", "fox", "owl", "cow"]


def toy_lines(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        color, animal = rng.choice(COLORS), rng.choice(ANIMALS)
        rows.append({
            "question": f"What is {a} plus {b}?", "answer": str(a + b),
            "sentence": f"The {color} {animal} sat down.", "color": color,
            "pair": f"{color} {animal}",
            "options": [f"{c} {animal}" for c in [c for c in COLORS if c != color][:2] + [color]],
        })
    return rows


def corpus(rows: list[dict]) -> str:
    return "\n\n".join(
        f"Question: {r['question']}\nAnswer: {r['answer']}\n\n{r['sentence']} Color: {r['color']}"
        for r in rows
    )
