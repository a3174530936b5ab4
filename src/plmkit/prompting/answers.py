"""Final answers of chain-of-thought solutions, and the self-consistency majority vote."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_HASHES = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS = re.compile(r"answer is[:\s]*([^\n]+?)(?:\.\s|\.?$|\n)", re.IGNORECASE)


def normalize_number(text: str) -> str:
    """'$1,200.00' -> '1200', '-3.50' -> '-3.5': numbers compare equal however they were written."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return text.strip()
    return str(int(value)) if value.is_integer() else repr(value).rstrip("0")


def extract_answer(text: str) -> str | None:
    """The final answer of a solution: after GSM8K's '####', else after the last 'The answer is',
    else the last number in the text; None if there is none. Numbers are normalized."""
    for pattern in (_HASHES, _ANSWER_IS):
        found = pattern.findall(text)
        if found:
            answer = found[-1].strip()
            numbers = _NUMBER.findall(answer)
            # "The answer is 42 apples" -> "42"; "The answer is Dovra" stays a word.
            return normalize_number(numbers[0]) if numbers else answer.rstrip(".").strip() or None
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def self_consistency(answers: Sequence[str | None]) -> str | None:
    """Majority answer over sampled solutions (None votes ignored; ties go to the earliest answer)."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == best)


def vote_share(answers: Sequence[str | None]) -> float:
    """Fraction of all samples that voted for the majority answer (0 when none gave an answer)."""
    winner = self_consistency(answers)
    return 0.0 if winner is None else sum(a == winner for a in answers) / len(answers)
