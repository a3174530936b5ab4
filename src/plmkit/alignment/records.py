"""Alignment data: prompt/response and preference files into records, records into token rows and batches.

Files (JSON Lines, one object a line; `.gz` is read too):

| kind        | fields                                                                                    |
|-------------|-------------------------------------------------------------------------------------------|
| SFT         | `prompt`, `response` (or `completion`, or a preference file's `chosen`); or `messages`:   |
|             | [{"role", "content"}, ...] whose last message is the assistant's response                |
| preferences | `prompt`, `chosen`, `rejected`, optional `p_chosen` (soft label, probability that        |
|             | `chosen` is preferred); or Anthropic HH-RLHF's `chosen`/`rejected` transcripts alone,    |
|             | split into the shared dialogue up to the last "\\n\\nAssistant:" and the two responses   |

A `messages` prompt is rendered with the checkpoint's chat template (`plmkit.data.chat.render_chat`,
sandboxed Jinja) or, without one, the plain Human/Assistant format of HH-RLHF, ending in "\\n\\nAssistant:".

Token rows: prompt ids (with the tokenizer's own special tokens, e.g. a BOS) followed by the response ids
and EOS. `response_mask` is 1 on the response and its EOS: the EOS is supervised, so a tuned model learns
to stop. A prompt longer than `max_prompt_length` keeps its end (the part next to the response); a
response that does not fit is cut at `max_length` and then has no EOS (a cut response must not teach the
model to stop there). A prompt that leaves no room for the response is an error, as are a tokenizer
without an EOS token and a pair whose chosen equals its rejected response.

Batches: `input_ids`, `attention_mask`, `response_mask` (B, T) and `labels` (B, T), the next-token targets
of `plmkit.objectives.clm` (labels[t] = input_ids[t + 1] where that token is a response token, else -100).
`pack_prompt_responses` packs several SFT rows into one of at most `max_length` tokens; its batches number
the documents of a row 1, 2, 3, ... in `attention_mask` (0: padding), which plmkit's decoders read as a
block-diagonal causal mask with positions restarting per document: no attention across examples.
A preference batch stacks the B chosen rows over the B rejected rows (2B, T) so that one forward pass
scores both, plus `p_chosen` (B,).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from plmkit.data.chat import ASSISTANT_PROMPT, render_chat
from plmkit.data.readers import _rows
from plmkit.data.records import PreferencePair, PromptCompletion
from plmkit.errors import DataError, TokenizerError

IGNORE = -100


# ---- files -> records ----------------------------------------------------------------------------------


def split_hh_transcript(chosen: str, rejected: str, where: str = "pair") -> PreferencePair:
    """An HH-RLHF pair of full transcripts -> prompt (the shared dialogue up to and including the last
    "\\n\\nAssistant:") and the two final responses (with their leading space, as the data has them)."""
    end = chosen.rfind(ASSISTANT_PROMPT)
    if end < 0:
        raise DataError(f"{where}: transcript has no {ASSISTANT_PROMPT.strip()!r} turn")
    prompt = chosen[: end + len(ASSISTANT_PROMPT)]
    if not rejected.startswith(prompt):
        # The two transcripts part earlier than chosen's last turn: cut at the last turn they share.
        common = 0
        for a, b in zip(chosen, rejected):
            if a != b:
                break
            common += 1
        end = chosen.rfind(ASSISTANT_PROMPT, 0, common)
        if end < 0:
            raise DataError(f"{where}: chosen and rejected share no dialogue up to an Assistant turn")
        prompt = chosen[: end + len(ASSISTANT_PROMPT)]
    return PreferencePair(prompt, chosen[len(prompt):], rejected[len(prompt):])


def _text(row: dict, key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _split_messages(messages: Any, where: str, template: str | None, render: dict) -> PromptCompletion:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's response")
    try:
        prompt = render_chat(messages[:-1], template, add_generation_prompt=True, **render)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    content = str(last.get("content", ""))
    # The Human/Assistant format puts a space after "Assistant:"; it belongs to the response's first token.
    return PromptCompletion(prompt, " " + content if template is None else content)


def read_prompt_responses(
    path: str | Path, template: str | None = None, **render: Any
) -> list[PromptCompletion]:
    """SFT records of a JSONL file (see the module docstring). `render`: extra chat-template variables
    (bos_token, eos_token, ...)."""
    path = Path(path)
    records = []
    for number, row in _rows(path):
        where = f"{path}:{number}"
        if "messages" in row:
            records.append(_split_messages(row["messages"], where, template, render))
        elif "prompt" in row:
            # A preference file trains SFT on its preferred responses (InstructGPT's demonstrations).
            key = next((k for k in ("response", "completion", "chosen") if k in row), None)
            if key is None:
                raise DataError(f"{where}: missing field 'response' (or 'completion' or 'chosen')")
            records.append(PromptCompletion(_text(row, "prompt", where), _text(row, key, where)))
        else:
            raise DataError(f"{where}: expected 'prompt' and 'response', or 'messages'")
    if not records:
        raise DataError(f"data file {path} has no records")
    return records


def _check_pair(pair: PreferencePair, where: str) -> PreferencePair:
    if pair.chosen == pair.rejected:
        raise DataError(f"{where}: chosen and rejected responses are identical")
    return pair


def read_preferences(path: str | Path, template: str | None = None, **render: Any) -> list[PreferencePair]:
    """Preference records of a JSONL file: explicit prompt/chosen/rejected, conversational (lists of
    messages), or HH-RLHF transcripts split automatically (see the module docstring)."""
    path = Path(path)
    pairs = []
    for number, row in _rows(path):
        where = f"{path}:{number}"
        for key in ("chosen", "rejected"):
            if key not in row:
                raise DataError(f"{where}: missing field {key!r}")
        p_chosen = row.get("p_chosen", 1.0)
        try:
            p_chosen = float(p_chosen)
        except (TypeError, ValueError):
            raise DataError(f"{where}: p_chosen must be a number, got {p_chosen!r}") from None
        if not 0.0 <= p_chosen <= 1.0:
            raise DataError(f"{where}: p_chosen must be in [0, 1], got {p_chosen}")
        if "prompt" not in row:
            pair = split_hh_transcript(_text(row, "chosen", where), _text(row, "rejected", where), where)
            pair = PreferencePair(pair.prompt, pair.chosen, pair.rejected, p_chosen)
        elif isinstance(row["prompt"], list):
            prompt = _split_messages([*row["prompt"], {"role": "assistant", "content": ""}], where, template,
                                     render).prompt
            responses = []
            for key in ("chosen", "rejected"):
                value = row[key]
                content = value[-1].get("content", "") if isinstance(value, list) and value else value
                if not isinstance(content, str):
                    raise DataError(f"{where}: {key!r} must be a string or a list of messages")
                responses.append(" " + content if template is None else content)
            pair = PreferencePair(prompt, responses[0], responses[1], p_chosen)
        else:
            pair = PreferencePair(_text(row, "prompt", where), _text(row, "chosen", where),
                                  _text(row, "rejected", where), p_chosen)
        pairs.append(_check_pair(pair, where))
    if not pairs:
        raise DataError(f"data file {path} has no records")
    return pairs


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> Path:
    """Rows as JSON Lines (for examples and tests; recipes write their outputs atomically themselves)."""
    path = Path(path)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ---- records -> token rows ------------------------------------------------------------------------------


def require_eos(tokenizer: Any) -> int:
    """The tokenizer's EOS id, or a one-line error: without it a tuned model cannot learn to stop."""
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None:
        raise TokenizerError(
            "the tokenizer has no EOS token: responses must end in one so the model learns to stop "
            "(add an eos special token to the tokenizer)"
        )
    return int(eos)


def tokenize_prompt_response(
    tokenizer: Any,
    prompt: str,
    response: str,
    max_length: int,
    max_prompt_length: int | None = None,
    where: str = "record",
    *,
    special_tokens: bool = True,
) -> dict[str, list[int]]:
    """{"input_ids", "response_mask"} of prompt + response + EOS (see the module docstring).

    `special_tokens=False` for a prompt rendered by a chat template, which writes its own BOS (as
    transformers' `apply_chat_template(tokenize=True)` does not add a second one).
    """
    eos = require_eos(tokenizer)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=special_tokens)
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length:]
    if len(prompt_ids) >= max_length:
        raise DataError(
            f"{where}: the prompt is {len(prompt_ids)} tokens, which leaves no room for the response within "
            f"max_length={max_length} (raise max_length or set max_prompt_length)"
        )
    if not prompt_ids:
        raise DataError(f"{where}: empty prompt: the first response token would have nothing to follow")
    response_ids = [*tokenizer.encode(response, add_special_tokens=False), eos]
    response_ids = response_ids[: max_length - len(prompt_ids)]
    return {
        "input_ids": prompt_ids + response_ids,
        "response_mask": [0] * len(prompt_ids) + [1] * len(response_ids),
    }


def encode_prompt_responses(
    tokenizer: Any,
    records: Sequence[PromptCompletion],
    max_length: int,
    max_prompt_length: int | None = None,
    *,
    special_tokens: bool = True,
) -> list[dict[str, list[int]]]:
    """SFT rows {"input_ids", "response_mask"}, one per record."""
    return [
        tokenize_prompt_response(
            tokenizer, r.prompt, r.completion, max_length, max_prompt_length, f"record {i}",
            special_tokens=special_tokens,
        )
        for i, r in enumerate(records)
    ]


def encode_preferences(
    tokenizer: Any, pairs: Sequence[PreferencePair], max_length: int, max_prompt_length: int | None = None,
    *, special_tokens: bool = True,
) -> list[dict[str, Any]]:
    """Preference rows {"chosen_input_ids", "chosen_response_mask", "rejected_...", "p_chosen"} per pair."""
    rows = []
    for i, pair in enumerate(pairs):
        where = f"pair {i}"
        _check_pair(pair, where)
        chosen, rejected = (
            tokenize_prompt_response(tokenizer, pair.prompt, response, max_length, max_prompt_length, where,
                                     special_tokens=special_tokens)
            for response in (pair.chosen, pair.rejected)
        )
        rows.append({
            "chosen_input_ids": chosen["input_ids"], "chosen_response_mask": chosen["response_mask"],
            "rejected_input_ids": rejected["input_ids"], "rejected_response_mask": rejected["response_mask"],
            "p_chosen": pair.p_chosen,
        })
    return rows


# ---- token rows -> batches ------------------------------------------------------------------------------


def pad_rows(rows: Sequence[Sequence[int]], value: int, side: str = "right") -> Tensor:
    """Lists of ids -> (B, T) long tensor padded with `value` on the right or the left."""
    if side not in ("right", "left"):
        raise ValueError(f"padding side {side!r} is not 'right' or 'left'")
    length = max(len(r) for r in rows)
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if side == "right":
                out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
            else:
                out[i, length - len(r):] = torch.as_tensor(r, dtype=torch.long)
    return out


def response_labels(input_ids: Tensor, response_mask: Tensor) -> Tensor:
    """Shifted next-token targets restricted to the response: labels[t] = input_ids[t + 1] where
    response_mask[t + 1] is 1, else -100 (the convention of `plmkit.objectives.clm`)."""
    labels = F.pad(input_ids[:, 1:], (0, 1), value=IGNORE)
    keep = F.pad(response_mask[:, 1:], (0, 1), value=0).bool()
    return labels.masked_fill(~keep, IGNORE)


def pack_prompt_responses(
    rows: Sequence[dict[str, list[int]]], max_length: int
) -> list[dict[str, list[int]]]:
    """SFT rows packed first-fit, longest first, into rows of at most `max_length` tokens, each with its
    `document_ids` (1, 2, ... per packed row). Deterministic: the same rows always pack the same way."""
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]["input_ids"]), i))
    bins: list[dict[str, list[int]]] = []
    for i in order:
        row = rows[i]
        n = len(row["input_ids"])
        if n > max_length:
            raise DataError(f"record {i}: {n} tokens do not fit a packed row of max_length={max_length}")
        target = next((b for b in bins if len(b["input_ids"]) + n <= max_length), None)
        if target is None:
            target = {"input_ids": [], "response_mask": [], "document_ids": []}
            bins.append(target)
        document = (target["document_ids"][-1] if target["document_ids"] else 0) + 1
        target["input_ids"] += row["input_ids"]
        target["response_mask"] += row["response_mask"]
        target["document_ids"] += [document] * n
    return bins


def _batch(
    ids: list, masks: list, pad_id: int, side: str, documents: list | None = None
) -> dict[str, Tensor]:
    input_ids = pad_rows(ids, pad_id, side)
    response_mask = pad_rows(masks, 0, side)
    attention_mask = pad_rows(documents if documents is not None else [[1] * len(r) for r in ids], 0, side)
    if documents is not None:
        # The last token of a document does not predict the first of the next one.
        response_mask = response_mask.masked_fill(
            F.pad(attention_mask[:, 1:] != attention_mask[:, :-1], (1, 0), value=False), 0
        )
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
        # A padding position predicts nothing, even the first token of a left-padded row.
        "labels": response_labels(input_ids, response_mask).masked_fill(attention_mask == 0, IGNORE),
    }


def collate_prompt_responses(
    rows: Sequence[dict[str, Any]], pad_id: int, padding_side: str = "right"
) -> dict[str, Tensor]:
    """SFT rows (or packed rows) -> input_ids, attention_mask, response_mask, labels (B, T)."""
    documents = [r["document_ids"] for r in rows] if "document_ids" in rows[0] else None
    return _batch([r["input_ids"] for r in rows], [r["response_mask"] for r in rows], pad_id, padding_side,
                  documents)


def collate_preferences(
    rows: Sequence[dict[str, Any]], pad_id: int, padding_side: str = "right"
) -> dict[str, Tensor]:
    """Preference rows -> the B chosen rows over the B rejected rows (2B, T), `p_chosen` (B,), and
    `ref_chosen_logps`/`ref_rejected_logps` (B,) when the rows carry precomputed reference log-probs."""
    ids = [r["chosen_input_ids"] for r in rows] + [r["rejected_input_ids"] for r in rows]
    masks = [r["chosen_response_mask"] for r in rows] + [r["rejected_response_mask"] for r in rows]
    batch = _batch(ids, masks, pad_id, padding_side)
    batch["p_chosen"] = torch.tensor([float(r.get("p_chosen", 1.0)) for r in rows])
    if "ref_chosen_logps" in rows[0]:
        batch["ref_chosen_logps"] = torch.tensor([float(r["ref_chosen_logps"]) for r in rows])
        batch["ref_rejected_logps"] = torch.tensor([float(r["ref_rejected_logps"]) for r in rows])
    return batch
