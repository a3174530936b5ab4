"""Constitutional AI (Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback", arXiv:2212.08073).

Written principles replace human harmlessness labels in two places:

- **SL-CAI** (sec. 3): sample a response, then repeat N times: sample a principle, ask the model for a
  critique of its last response under that principle, then for a revision. The final revisions are the
  supervised fine-tuning data (`plmkit sft` reads the prompt/response records `revise_records` yields).
- **RL-CAI / RLAIF** (sec. 4): a feedback model reads a conversation, a comparison principle and two
  responses as a multiple choice "(A) / (B)"; the normalized probabilities of the two option strings are a
  soft preference label, averaged over several sampled principles. With `cot=True` the model first writes
  its reasoning ("Let's think step by step:"), then the label is read after "So the answer is:"; the paper
  clamps those over-confident probabilities to 40-60 % (sec. 4.1), as `cot_clamp` does here.

The principles and few-shot prompts are the files Anthropic released with the paper
(`anthropics/ConstitutionalHarmlessnessPaper`, `prompts/`), or a user's JSON/YAML files of the same shape:

| kind                 | released file                       | shape                                       |
|----------------------|-------------------------------------|---------------------------------------------|
| `critiques`          | CritiqueRevisionInstructions.json   | {name: {"prompt": [..], "edit_request"}}    |
| `critique_fewshot`   | CritiqueRevisionFewShotPrompts.json | [worked critique/revision transcript]       |
| `comparisons`        | RLMadisonInstructions.json          | [comparison principle ("... Options:")]     |
| `comparison_fewshot` | RLMadisonFewShotPrompts.json        | [{"prompt", "corrects", "incorrects"}]      |
| `cot_fewshot`        | RLMadisonPrecogFewShotPrompts.json  | [{"prompt"}], "{}" where the principle goes |

Prompt layouts (the golden tests spell them out character by character):

- critique: few-shot transcripts (each without the trailing "\\n\\nHuman:" the release cut them at) +
  "\\n\\nHuman: {prompt}\\n\\nAssistant: {response}" + critique request
  ("\\n\\nCritiqueRequest: ...\\n\\nCritique:"); revision: that + " {critique}" + revision request
  ("\\n\\nRevisionRequest: ...\\n\\nRevision:"). Each round starts from the few-shot context and the
  latest response, so the context stays bounded for small models.
- comparison: the released HHH comparisons' layout, "\\n\\nConsider the following conversation between a
  human and an assistant:\\n\\n{Human: ...}\\n\\n{principle}\\n (A) [[[{a}]]]\\n (B) [[[{b}]]]\\n\\nThe answer
  is:", options
  " (A)" / " (B)"; each few-shot example is the same layout with its answer, the preferred response at (A)
  for even-numbered examples and at (B) for odd ones.
- chain of thought: the Precog layout ("\\n\\nHuman: Consider the following conversation between a human
  (H) and an assistant (A):\\n\\nH: ...\\n\\n{principle}\\n (A) ...\\n (B) ...\\n\\nAssistant: Let's think
  step by step:"),
  then the reasoning, then "\\n\\nHuman:\\nSo the answer is:" and the options.

Position bias: a small feedback model prefers one letter whatever the content, so by default each pair is
scored in both orders and the two estimates averaged (Lee et al. 2023, "RLAIF", sec. 2.1); then swapping
the two responses gives exactly 1 - p.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.data.chat import ASSISTANT_PROMPT, render_chat
from plmkit.errors import ConfigError, DataError, TokenizerError

# kind -> the file name Anthropic released it under
FILES = {
    "critiques": "CritiqueRevisionInstructions.json",
    "critique_fewshot": "CritiqueRevisionFewShotPrompts.json",
    "comparisons": "RLMadisonInstructions.json",
    "comparison_fewshot": "RLMadisonFewShotPrompts.json",
    "cot_fewshot": "RLMadisonPrecogFewShotPrompts.json",
}
OPTIONS = (" (A)", " (B)")
COMPARISON_HEADER = "\n\nConsider the following conversation between a human and an assistant:\n\n"
COMPARISON_ANSWER = "\n\nThe answer is:"
COT_HEADER = "\n\nHuman: Consider the following conversation between a human (H) and an assistant (A):\n\n"
COT_REASONING = "\n\nAssistant: Let's think step by step:"
COT_ANSWER = "\n\nHuman:\nSo the answer is:"
CRITIQUE_STOPS = ("\n\nRevisionRequest:", "\n\nCritiqueRequest:", "\n\nHuman:")
REVISION_STOPS = ("\n\nCritiqueRequest:", "\n\nRevisionRequest:", "\n\nHuman:")
# A model that has read critique transcripts may run on from its answer into the next request.
RESPONSE_STOPS = ("\n\nHuman:", "\n\nAssistant:", "\n\nCritiqueRequest:")
COT_STOPS = ("\n\nHuman:", "So the answer is")


# ---------------------------------------------------------------------------------------- the principles


@dataclass(frozen=True)
class CritiquePrinciple:
    """One SL-CAI principle: critique requests (one is sampled) and the matching revision request."""

    name: str
    critique_requests: tuple[str, ...]  # "\n\nCritiqueRequest: ...\n\nCritique:"
    revision_request: str  # "\n\nRevisionRequest: ...\n\nRevision:"


@dataclass(frozen=True)
class ComparisonExample:
    """A worked multiple-choice comparison: a transcript ending in "Assistant:", a better and a worse one."""

    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Constitution:
    """The principles and few-shot prompts of both CAI stages (empty where not loaded)."""

    critiques: tuple[CritiquePrinciple, ...] = ()
    critique_fewshot: tuple[str, ...] = ()
    comparisons: tuple[str, ...] = ()
    comparison_fewshot: tuple[ComparisonExample, ...] = ()
    cot_fewshot: tuple[str, ...] = ()

    def require(self, *kinds: str) -> None:
        """A one-line error naming the first of `kinds` that holds nothing."""
        for kind in kinds:
            if not getattr(self, kind):
                raise ConfigError(
                    f"no {kind} principles loaded: pass a folder holding {FILES[kind]} "
                    "or a file of that shape"
                )


def _read_structured(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read principles file ({e})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"{path}: invalid YAML ({first})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from None


def _shape_error(path: Path, kind: str, problem: str) -> DataError:
    return DataError(f"{path}: not a {kind} file ({FILES[kind]} shape): {problem}")


def _strings(value: Any, path: Path, kind: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise _shape_error(path, kind, f"{where} must be a non-empty string or list of non-empty strings")
    return tuple(value)


def _parse_critiques(data: Any, path: Path) -> tuple[CritiquePrinciple, ...]:
    kind = "critiques"
    if not isinstance(data, dict) or not data:
        raise _shape_error(
            path, kind, f"expected an object {{name: {{prompt, edit_request}}}}, got {_kind_of(data)}"
        )
    out = []
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise _shape_error(path, kind, f"principle {name!r} must be an object, got {_kind_of(entry)}")
        for key in ("prompt", "edit_request"):
            if key not in entry:
                raise _shape_error(path, kind, f"principle {name!r} has no {key!r}")
        requests = _strings(entry["prompt"], path, kind, f"principle {name!r} 'prompt'")
        revision = entry["edit_request"]
        if not isinstance(revision, str) or not revision.strip():
            raise _shape_error(path, kind, f"principle {name!r} 'edit_request' must be a non-empty string")
        out.append(CritiquePrinciple(str(name), requests, revision))
    return tuple(out)


def _parse_strings(data: Any, path: Path, kind: str) -> tuple[str, ...]:
    if not isinstance(data, list) or not data:
        raise _shape_error(path, kind, f"expected a non-empty list of strings, got {_kind_of(data)}")
    for i, item in enumerate(data):
        if not isinstance(item, str) or not item.strip():
            raise _shape_error(path, kind, f"entry {i} must be a non-empty string, got {_kind_of(item)}")
    return tuple(data)


def _parse_comparison_fewshot(data: Any, path: Path) -> tuple[ComparisonExample, ...]:
    kind = "comparison_fewshot"
    if not isinstance(data, list) or not data:
        raise _shape_error(
            path, kind, f"expected a non-empty list of {{prompt, corrects, incorrects}}, got {_kind_of(data)}"
        )
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise _shape_error(path, kind, f"entry {i} must be an object, got {_kind_of(item)}")
        for key in ("prompt", "corrects", "incorrects"):
            if key not in item:
                raise _shape_error(path, kind, f"entry {i} has no {key!r}")
        if not isinstance(item["prompt"], str):
            raise _shape_error(path, kind, f"entry {i} 'prompt' must be a string")
        chosen = _strings(item["corrects"], path, kind, f"entry {i} 'corrects'")
        rejected = _strings(item["incorrects"], path, kind, f"entry {i} 'incorrects'")
        out.append(ComparisonExample(item["prompt"], chosen[0], rejected[0]))
    return tuple(out)


def _parse_cot_fewshot(data: Any, path: Path) -> tuple[str, ...]:
    kind = "cot_fewshot"
    if not isinstance(data, list) or not data:
        raise _shape_error(path, kind, f"expected a non-empty list of {{prompt}}, got {_kind_of(data)}")
    out = []
    for i, item in enumerate(data):
        prompt = item.get("prompt") if isinstance(item, dict) else None
        if not isinstance(prompt, str):
            raise _shape_error(path, kind, f"entry {i} must be an object with a string 'prompt'")
        if "{}" not in prompt:
            raise _shape_error(path, kind, f"entry {i} 'prompt' has no '{{}}' where the principle goes")
        out.append(prompt)
    return tuple(out)


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return "null" if value is None else f"a {type(value).__name__}"


_PARSERS = {
    "critiques": _parse_critiques,
    "critique_fewshot": lambda data, path: _parse_strings(data, path, "critique_fewshot"),
    "comparisons": lambda data, path: _parse_strings(data, path, "comparisons"),
    "comparison_fewshot": _parse_comparison_fewshot,
    "cot_fewshot": _parse_cot_fewshot,
}


def read_principles(path: str | Path, kind: str) -> tuple:
    """Read one principles file (JSON, or YAML by suffix) of `kind` (a key of FILES), checking its shape."""
    if kind not in _PARSERS:
        raise ConfigError(f"unknown principles kind {kind!r}; choose one of {', '.join(FILES)}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: principles file not found")
    return _PARSERS[kind](_read_structured(path), path)


def load_constitution(directory: str | Path | None = None, **files: str | Path | None) -> Constitution:
    """The principles in `directory` (the released file names; missing files stay empty), each kind
    replaced by the file given for it as a keyword (`critiques="my_principles.yaml"`, ...)."""
    unknown = sorted(set(files) - set(FILES))
    if unknown:
        raise ConfigError(f"unknown principles kind {unknown[0]!r}; choose one of {', '.join(FILES)}")
    if directory is not None and not Path(directory).is_dir():
        raise DataError(f"{directory}: principles folder not found")
    loaded: dict[str, tuple] = {}
    for kind, name in FILES.items():
        given = files.get(kind)
        if given:
            loaded[kind] = read_principles(given, kind)
        elif directory is not None and (Path(directory) / name).is_file():
            loaded[kind] = read_principles(Path(directory) / name, kind)
    return Constitution(**loaded)


# ----------------------------------------------------------------------------------------------- prompts


def as_transcript(prompt: str) -> str:
    """A prompt as an HH transcript "\\n\\nHuman: ...\\n\\nAssistant:": kept when it already is one (a
    multi-turn HH-RLHF prompt), else the single user turn of plmkit's Human/Assistant chat format."""
    text = prompt.rstrip()
    if text.lstrip().startswith("Human:") and text.endswith("Assistant:"):
        return "\n\n" + text.lstrip()
    return render_chat([{"role": "user", "content": prompt.strip()}], add_generation_prompt=True)


def fewshot_block(examples: Sequence[str]) -> str:
    """Critique/revision few-shot transcripts joined; the release cut most at a trailing "\\n\\nHuman:"."""
    return "".join(e[: -len("\n\nHuman:")] if e.endswith("\n\nHuman:") else e for e in examples)


def critique_prompt(prompt: str, response: str, critique_request: str, fewshot: Sequence[str] = ()) -> str:
    """The text a model continues with its critique of `response` (see the module docstring)."""
    return fewshot_block(fewshot) + as_transcript(prompt) + " " + response.strip() + critique_request


def revision_prompt(
    prompt: str,
    response: str,
    critique_request: str,
    critique: str,
    revision_request: str,
    fewshot: Sequence[str] = (),
) -> str:
    """The critique prompt, the critique, then the revision request: the model continues with its revision."""
    return (
        critique_prompt(prompt, response, critique_request, fewshot)
        + " "
        + critique.strip()
        + revision_request
    )


def _conversation(prompt: str) -> str:
    """The transcript without its leading blank line and trailing "Assistant:" cue: "Human: ..."."""
    text = as_transcript(prompt)
    return text[2 : -len(ASSISTANT_PROMPT)]


def _options(response_a: str, response_b: str) -> str:
    return f"\n (A) [[[{response_a.strip()}]]]\n (B) [[[{response_b.strip()}]]]"


def comparison_prompt(
    principle: str,
    prompt: str,
    response_a: str,
    response_b: str,
    fewshot: Sequence[ComparisonExample] = (),
) -> str:
    """The multiple-choice question the feedback model answers with " (A)" or " (B)"."""
    shots = []
    for i, example in enumerate(fewshot):
        a, b = (example.chosen, example.rejected) if i % 2 == 0 else (example.rejected, example.chosen)
        answer = OPTIONS[i % 2]
        shots.append(
            COMPARISON_HEADER
            + _conversation(example.prompt)
            + "\n\n"
            + principle
            + _options(a, b)
            + COMPARISON_ANSWER
            + answer
        )
    query = COMPARISON_HEADER + _conversation(prompt) + "\n\n" + principle + _options(response_a, response_b)
    return "".join(shots) + query + COMPARISON_ANSWER


def _hh_to_h_a(conversation: str) -> str:
    return conversation.replace("Human:", "H:").replace("Assistant:", "A:")


def cot_comparison_prompt(
    principle: str, prompt: str, response_a: str, response_b: str, fewshot: Sequence[str] = ()
) -> str:
    """The chain-of-thought comparison: the model continues with its reasoning."""
    shots = "".join(example.replace("{}", principle, 1) for example in fewshot)
    query = (
        COT_HEADER + _hh_to_h_a(_conversation(prompt)) + "\n\n" + principle + _options(response_a, response_b)
    )
    return shots + query + COT_REASONING


def cot_answer_prompt(cot_prompt: str, reasoning: str) -> str:
    """After the reasoning, the cue the option is read from."""
    return cot_prompt + " " + reasoning.strip() + COT_ANSWER


# -------------------------------------------------------------------------------------------- generation


@dataclass
class SamplingOptions:
    """How responses, critiques, revisions and reasonings are sampled."""

    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


def _max_positions(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "max_positions", None)


def _encode(
    tokenizer: Any, texts: Sequence[str], model: nn.Module, new_tokens: int, what: str
) -> list[list[int]]:
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    context = _max_positions(model)
    if context is not None:
        for i, row in enumerate(ids):
            if len(row) + new_tokens > context:
                raise DataError(
                    f"{what} {i}: {len(row)} tokens + {new_tokens} new exceed the model's context of "
                    f"{context} tokens; use fewer few-shot examples or shorter prompts"
                )
    return ids


def seeded_generator(model: nn.Module, seed: int) -> torch.Generator:
    """A generator on the model's device (sampling on a GPU needs one there), seeded."""
    return torch.Generator(device=next(model.parameters()).device).manual_seed(seed)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first stop string, stripped."""
    cut = len(text)
    for stop in stops:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    return text[:cut].strip()


def complete(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    sampling: SamplingOptions,
    stops: Sequence[str],
    generator: torch.Generator | None = None,
    what: str = "prompt",
) -> list[str]:
    """Continue each text with `plmkit.generate`; each continuation is cut at its first stop string."""
    from plmkit.models.generation import generate

    out: list[str] = []
    eos = tokenizer.eos_id
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else eos
    # All texts are checked before anything is generated, so a prompt that cannot fit fails at once.
    encoded = _encode(tokenizer, texts, model, sampling.max_new_tokens, what)
    for start in range(0, len(texts), sampling.batch_size):
        new = generate(
            model,
            encoded[start : start + sampling.batch_size],
            max_new_tokens=sampling.max_new_tokens,
            do_sample=sampling.do_sample,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            eos_token_id=eos,
            pad_token_id=pad,
            stop_strings=tuple(stops),
            tokenizer=tokenizer,
            generator=generator,
        )
        for row in new.tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            out.append(cut_at_stops(tokenizer.decode(row), stops))
    return out


# ------------------------------------------------------------------------------------------------ SL-CAI


@dataclass
class RevisionStep:
    """One round of critique and revision, as the JSONL records keep it."""

    principle: str
    critique_request: str
    critique: str
    revision_request: str
    revision: str


def revise(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    constitution: Constitution,
    *,
    rounds: int = 1,
    num_fewshot: int = 1,
    sampling: SamplingOptions | None = None,
    seed: int = 0,
    responses: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """SL-CAI: sample a response per prompt (unless `responses` are given), then `rounds` of critique and
    revision under principles sampled with `random.Random(seed)`. An empty revision keeps the response it
    was asked to revise.

    Returns one record per prompt in the prompt/response format `plmkit sft` reads: {"prompt" (the HH
    transcript, ending in "Assistant:"), "response" (" " + the final revision, HH-RLHF's leading space),
    "initial_response", "revisions": [{principle, critique_request, critique, revision_request, revision}]}.
    """
    constitution.require("critiques")
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    if not 0 <= num_fewshot <= len(constitution.critique_fewshot):
        raise ConfigError(
            f"num_fewshot={num_fewshot}: the critique few-shot file holds "
            f"{len(constitution.critique_fewshot)} examples"
        )
    sampling = sampling or SamplingOptions()
    rng = random.Random(seed)
    generator = seeded_generator(model, seed)
    if responses is None:
        responses = complete(
            model,
            tokenizer,
            [as_transcript(p) for p in prompts],
            sampling,
            RESPONSE_STOPS,
            generator,
            "prompt",
        )
    elif len(responses) != len(prompts):
        raise ConfigError(f"{len(responses)} responses for {len(prompts)} prompts")
    current = list(responses)
    chains: list[list[RevisionStep]] = [[] for _ in prompts]
    for _ in range(rounds):
        # One principle and few-shot draw per prompt and round, drawn in prompt order: the same seed gives
        # the same draws however the prompts are batched.
        draws = []
        for _ in prompts:
            principle = rng.choice(constitution.critiques)
            request = rng.choice(principle.critique_requests)
            shots = rng.sample(constitution.critique_fewshot, num_fewshot)
            draws.append((principle, request, shots))
        texts = [
            critique_prompt(p, r, request, shots)
            for p, r, (_, request, shots) in zip(prompts, current, draws)
        ]
        critiques = complete(model, tokenizer, texts, sampling, CRITIQUE_STOPS, generator, "critique prompt")
        texts = [
            revision_prompt(p, r, request, c, principle.revision_request, shots)
            for p, r, c, (principle, request, shots) in zip(prompts, current, critiques, draws)
        ]
        revisions = complete(model, tokenizer, texts, sampling, REVISION_STOPS, generator, "revision prompt")
        for i, (principle, request, _) in enumerate(draws):
            chains[i].append(
                RevisionStep(principle.name, request, critiques[i], principle.revision_request, revisions[i])
            )
        # An empty revision (the model stopped at once) revises nothing: the response it was given stands.
        current = [revision if revision.strip() else before for revision, before in zip(revisions, current)]
    return [
        {
            "prompt": as_transcript(prompt),
            "response": " " + final,
            "initial_response": first,
            "revisions": [vars(step) for step in chain],
        }
        for prompt, final, first, chain in zip(prompts, current, responses, chains)
    ]


# ------------------------------------------------------------------------------------------------ RL-CAI


def option_ids(tokenizer: Any, options: Sequence[str] = OPTIONS) -> list[list[int]]:
    """Token ids of each option string; a one-line error when the tokenizer cannot write them apart."""
    ids = []
    for option in options:
        try:
            encoded = tokenizer.encode(option, add_special_tokens=False)
        except TokenizerError as e:
            raise TokenizerError(
                f"the feedback model's tokenizer lacks the option tokens {option!r}: {e}"
            ) from None
        unk = getattr(tokenizer, "unk_id", None)
        decoded = tokenizer.decode(encoded)
        # A lower-casing or unknown-token tokenizer gives back other text: it has no tokens for the letters.
        if not encoded or unk in encoded or decoded.replace(" ", "") != option.replace(" ", ""):
            raise TokenizerError(
                f"the feedback model's tokenizer lacks the option tokens for {option!r} (it encodes to "
                f"{encoded} and decodes to {decoded!r})"
            )
        ids.append(encoded)
    if len({tuple(i) for i in ids}) != len(ids):
        raise TokenizerError(
            f"the feedback model's tokenizer encodes the options {list(options)} identically"
        )
    return ids


@torch.no_grad()
def option_probabilities(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    options: Sequence[str] = OPTIONS,
    batch_size: int = 8,
) -> torch.Tensor:
    """(B, K) probabilities of the K option strings continuing each text, normalized over the options.

    Each option's log-probability is the sum over its tokens (`sequence_logprobs`), so options of several
    tokens (" (A)" is " (", "A", ")" for GPT-2) are scored whole.
    """
    from plmkit.alignment.logprobs import sequence_logprobs

    opts = option_ids(tokenizer, options)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
    longest = max(len(o) for o in opts)
    prompts = _encode(tokenizer, texts, model, longest, "comparison prompt")
    scores = torch.empty(len(texts), len(opts))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            rows = [(p + o, len(p)) for p in chunk for o in opts]
            t = max(len(r) for r, _ in rows)
            ids = torch.full((len(rows), t), pad, dtype=torch.long)
            mask = torch.zeros(len(rows), t, dtype=torch.long)
            response = torch.zeros(len(rows), t, dtype=torch.long)
            for j, (row, prompt_len) in enumerate(rows):  # right padding: positions start at 0 for every row
                ids[j, : len(row)] = torch.tensor(row)
                mask[j, : len(row)] = 1
                response[j, prompt_len : len(row)] = 1
            logps = sequence_logprobs(model, ids.to(device), mask.to(device), response.to(device))
            scores[start : start + len(chunk)] = logps.float().cpu().view(len(chunk), len(opts))
    finally:
        model.train(was_training)
    return scores.softmax(-1)


@dataclass
class FeedbackOptions:
    """How the feedback model labels a pair."""

    num_principles: int = 4
    num_fewshot: int = 2
    cot: bool = False
    cot_clamp: tuple[float, float] | None = (0.4, 0.6)  # Bai et al. sec. 4.1; None: no clamp
    both_orders: bool = True
    sampling: SamplingOptions = field(default_factory=SamplingOptions)


def _clamp(p: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    return p if bounds is None else p.clamp(bounds[0], bounds[1])


def _first_option_probability(
    model: nn.Module,
    tokenizer: Any,
    items: list[tuple[str, str, str, str, list]],
    options: FeedbackOptions,
    generator: torch.Generator,
) -> torch.Tensor:
    """P((A) is better) for each (principle, prompt, A, B, few-shot) item: (N,)."""
    if options.cot:
        texts = [cot_comparison_prompt(pr, p, a, b, shots) for pr, p, a, b, shots in items]
        reasons = complete(
            model, tokenizer, texts, options.sampling, COT_STOPS, generator, "comparison prompt"
        )
        texts = [cot_answer_prompt(t, r) for t, r in zip(texts, reasons)]
        probs = option_probabilities(model, tokenizer, texts, batch_size=options.sampling.batch_size)[:, 0]
        return _clamp(probs, options.cot_clamp)
    texts = [comparison_prompt(pr, p, a, b, shots) for pr, p, a, b, shots in items]
    return option_probabilities(model, tokenizer, texts, batch_size=options.sampling.batch_size)[:, 0]


def ai_feedback(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    constitution: Constitution,
    *,
    options: FeedbackOptions | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """RL-CAI labels: for each prompt and (first, second) response pair, P(first is better) averaged over
    `num_principles` comparison principles sampled without replacement (`random.Random(seed)`).

    Returns per pair {"p_first", "principles", "p_per_principle"}; with `both_orders` each principle's
    estimate is the mean of P(A) with the first response at (A) and 1 - P(A) with it at (B), so swapping the
    responses gives exactly 1 - p (with `cot` and sampled reasoning, only on average: each order reads
    its own sampled reasoning).
    """
    options = options or FeedbackOptions()
    constitution.require("comparisons")
    shots_pool = constitution.cot_fewshot if options.cot else constitution.comparison_fewshot
    if options.num_fewshot:
        constitution.require("cot_fewshot" if options.cot else "comparison_fewshot")
    if not 0 <= options.num_fewshot <= len(shots_pool):
        raise ConfigError(
            f"num_fewshot={options.num_fewshot}: the few-shot file holds {len(shots_pool)} examples"
        )
    if not 1 <= options.num_principles <= len(constitution.comparisons):
        raise ConfigError(
            f"num_principles={options.num_principles}: the comparison file holds "
            f"{len(constitution.comparisons)} principles"
        )
    if len(pairs) != len(prompts):
        raise ConfigError(f"{len(pairs)} response pairs for {len(prompts)} prompts")
    option_ids(tokenizer)  # fail before any generation when the options cannot be written
    rng = random.Random(seed)
    generator = seeded_generator(model, seed)
    drawn = []
    forward, backward = [], []
    for prompt, (first, second) in zip(prompts, pairs):
        principles = rng.sample(constitution.comparisons, options.num_principles)
        for principle in principles:
            shots = rng.sample(list(shots_pool), options.num_fewshot)
            forward.append((principle, prompt, first, second, shots))
            backward.append((principle, prompt, second, first, shots))
        drawn.append(principles)
    p = _first_option_probability(model, tokenizer, forward, options, generator)
    if options.both_orders:
        p = 0.5 * (p + 1 - _first_option_probability(model, tokenizer, backward, options, generator))
    p = p.view(len(prompts), options.num_principles)
    return [
        {"p_first": float(row.mean()), "principles": principles, "p_per_principle": [float(x) for x in row]}
        for row, principles in zip(p, drawn)
    ]


def preference_records(
    prompts: Sequence[str], pairs: Sequence[tuple[str, str]], feedback: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Preference JSONL records with soft labels, in the format `plmkit reward` / `plmkit dpo` read: the
    prompt as its HH transcript, the response the feedback favours as `chosen` (with HH-RLHF's leading
    space) and `p_chosen` (>= 0.5) the probability that it is the better one."""
    records = []
    for prompt, (first, second), label in zip(prompts, pairs, feedback):
        p = label["p_first"]
        chosen, rejected, p_chosen = (first, second, p) if p >= 0.5 else (second, first, 1.0 - p)
        if math.isnan(p_chosen):
            raise DataError(f"prompt {prompt[:40]!r}: the feedback model gave a NaN probability")
        records.append(
            {
                "prompt": as_transcript(prompt),
                "chosen": " " + chosen.strip(),
                "rejected": " " + rejected.strip(),
                "p_chosen": p_chosen,
                "principles": label["principles"],
                "p_per_principle": label["p_per_principle"],
            }
        )
    return records


# ------------------------------------------------------------------------------------------------ inputs


@dataclass
class CaiInput:
    """The prompts of a CAI run, and for labelling the response pairs (None: sample them) and any earlier
    labels (1.0 where the file's `chosen` was preferred, for the agreement of AI and earlier feedback)."""

    prompts: list[str]
    pairs: list[tuple[str, str]] | None = None
    labels: list[float] | None = None


def read_cai_input(path: str | Path) -> CaiInput:
    """Prompts (and pairs) of a JSONL file: `prompt` (text, an HH transcript or a list of chat messages)
    with optional `responses: [a, b]`; or preference rows (`prompt`/`chosen`/`rejected`, or HH-RLHF's
    transcripts alone), whose pairs are relabelled; a `.txt` file holds one prompt a line."""
    from plmkit.alignment.records import read_preferences
    from plmkit.data.readers import _rows

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompts file not found")
    if path.suffix == ".txt":
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise DataError(f"{path}: no prompts")
        return CaiInput(prompts)
    rows = list(_rows(path))
    if not rows:
        raise DataError(f"{path}: no records")
    if all("chosen" in row and "rejected" in row for _, row in rows):
        pairs = read_preferences(path)
        return CaiInput(
            [p.prompt for p in pairs], [(p.chosen, p.rejected) for p in pairs], [p.p_chosen for p in pairs]
        )
    prompts: list[str] = []
    pairs_or_none: list[tuple[str, str] | None] = []
    for number, row in rows:
        where = f"{path}:{number}"
        prompt = row.get("prompt", row.get("messages"))
        if isinstance(prompt, list):
            try:
                prompt = render_chat(prompt, add_generation_prompt=True)
            except DataError as err:
                raise DataError(f"{where}: {err}") from None
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: expected a non-empty 'prompt' (or 'messages', or chosen/rejected)")
        responses = row.get("responses")
        if responses is not None and (
            not isinstance(responses, list)
            or len(responses) != 2
            or not all(isinstance(r, str) for r in responses)
        ):
            raise DataError(f"{where}: 'responses' must be a list of two strings")
        prompts.append(prompt)
        pairs_or_none.append(None if responses is None else (responses[0], responses[1]))
    if all(p is None for p in pairs_or_none):
        return CaiInput(prompts)
    if any(p is None for p in pairs_or_none):
        missing = next(number for (number, _), p in zip(rows, pairs_or_none) if p is None)
        raise DataError(f"{path}:{missing}: has no 'responses' while other rows have them")
    return CaiInput(prompts, [p for p in pairs_or_none if p is not None])
