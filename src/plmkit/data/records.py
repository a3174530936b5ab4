"""The record types every reader returns and every recipe reads, written down once.

| record            | task                                   | fields                                      |
|-------------------|----------------------------------------|---------------------------------------------|
| `Text`            | pretraining, language modelling        | text                                        |
| `LabeledText`     | classification (single or pair)        | text, label, text_pair                      |
| `TaggedTokens`    | token classification (NER, POS)        | tokens, tags (one per token, IOB2 for NER)  |
| `QAExample`       | extractive question answering          | id, question, context, answers, title       |
| `PromptCompletion`| SFT, text-to-text                      | prompt, completion                          |
| `PreferencePair`  | reward model, DPO                      | prompt, chosen, rejected, p_chosen          |

Labels stay strings as the files write them ("0", "B-PER"); a task maps them to ids with its label list.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class LabeledText:
    text: str
    label: str
    text_pair: str | None = None  # second segment of a sentence-pair task (NLI, paraphrase)


@dataclass(frozen=True)
class TaggedTokens:
    tokens: list[str]
    tags: list[str]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.tags):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.tags)} tags")


@dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset of the answer in the context


@dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    context: str
    answers: list[Answer] = field(default_factory=list)  # several references at evaluation; first trains
    title: str = ""


@dataclass(frozen=True)
class PromptCompletion:
    prompt: str
    completion: str


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    # Probability that `chosen` is preferred: 1.0 is a hard human label, values between soft AI feedback.
    p_chosen: float = 1.0

    def __post_init__(self) -> None:
        p = float(self.p_chosen)  # table readers hand every column over as a string
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p_chosen must be in [0, 1], got {self.p_chosen!r}")
        object.__setattr__(self, "p_chosen", p)
