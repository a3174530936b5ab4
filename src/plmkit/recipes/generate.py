"""Generate text from a causal LM or an encoder-decoder checkpoint (plmkit or Hugging Face format).

Greedy by default; `--do_sample` with temperature / top-k / top-p samples; `--num_beams` > 1 runs beam
search (printed at the end). Generation stops at the tokenizer's EOS, at any `--stop` string, or after
`--max_new_tokens`. A causal LM's continuation is streamed to the terminal; past the model's context
window it keeps generating on the last window of tokens, as nanoGPT's sampler does (`--no-sliding_window`
makes that an error). An encoder-decoder (T5, BART) reads the prompt as its source and prints the
generated target; encoder-only models (BERT and kin) are refused.

With `--chat` each prompt is one user turn, rendered with the checkpoint's chat template (or the plain
Human/Assistant format when it has none, see `plmkit.data.chat`) and an assistant turn opened; only the reply
is printed. Generation also stops at the EOS ids of the checkpoint's generation_config.json.

    plmkit generate --model=runs/gpt/hf --prompt="ROMEO:" --max_new_tokens=200 --do_sample --top_k=40
    plmkit generate --model=Qwen2.5-0.5B-Instruct --chat --system="Be brief." --prompt="Why is the sky blue?"
    plmkit generate --model=runs/gpt/hf --quantize=int8 --prompt="ROMEO:"

`--quantize=int8` decodes with int8 weight-only linear layers (`plmkit.quantize`); a directory written by
`plmkit.save_quantized` loads as it was saved.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from plmkit.errors import ConfigError, DataError


@dataclass
class Config:
    model: str = field(default="", metadata={"help": "checkpoint directory (plmkit or Hugging Face)"})
    prompt: str = field(default="", metadata={"help": "the prompt"})
    prompts_file: str = field(default="", metadata={"help": "one prompt per line, generated as a batch"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens to generate at most"})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_k: int = field(default=0, metadata={"help": "sample among the k most likely tokens (0: off)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1.0: off)"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "CTRL repetition penalty (1.0: off)"})
    num_beams: int = field(default=1, metadata={"help": "beam search width (1: no beam search)"})
    length_penalty: float = field(default=1.0, metadata={"help": "beam score / length ** this"})
    stop: list[str] = field(default_factory=list, metadata={"help": "stop when the text contains one"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    stream: bool = field(default=True, metadata={"help": "print tokens as they come (one prompt only)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the decode step"})
    sliding_window: bool = field(default=True, metadata={
        "help": "past the context window, predict from the last window of tokens (causal LMs)"})
    allow_pickle: bool = field(default=False, metadata={"help": "allow a pickle .bin checkpoint (runs code)"})
    chat: bool = field(default=False, metadata={"help": "each prompt is a user turn of the chat template"})
    system: str = field(default="", metadata={"help": "with --chat: a system message before the user turn"})
    quantize: str = field(default="", metadata={
        "help": "decode with quantized weights: int8 (weight-only, per output channel) or '' (as stored)"})


class _Printer:
    """Prints the decoded continuation incrementally (re-decoding keeps multi-byte tokens whole)."""

    def __init__(self, tokenizer: object, prompt: str):
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.ids: list[int] = []
        self.shown = ""
        self.started = False

    def __call__(self, tokens: torch.Tensor) -> None:
        if not self.started:  # the prompt appears with the first token, never before an early error
            sys.stdout.write(self.prompt)
            self.started = True
        self.ids.append(int(tokens[0]))
        text = self.tokenizer.decode(self.ids)
        if text.startswith(self.shown) and not text.endswith("\ufffd"):
            sys.stdout.write(text[len(self.shown):])
            sys.stdout.flush()
            self.shown = text


def _generate_seq2seq(cfg: Config, model: torch.nn.Module, tokenizer: object, sources: list[str]) -> dict:
    from plmkit.models.seq2seq_generation import generate_texts

    if cfg.stop or cfg.repetition_penalty != 1.0:
        raise ConfigError("--stop and --repetition_penalty apply to causal LMs only, not to encoder-decoders")
    texts = generate_texts(
        model, tokenizer, sources, max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, num_beams=cfg.num_beams,
        length_penalty=cfg.length_penalty, generator=torch.Generator().manual_seed(cfg.seed),
    )
    for text in texts:
        print(text)
    return {"text": texts}


def _as_list(ids: object) -> list[int]:
    return [] if ids is None else [ids] if isinstance(ids, int) else list(ids)


def _chat_prompts(cfg: Config, tokenizer: object, texts: list[str]) -> list[str]:
    """Each text as a user turn (after `--system`) in the checkpoint's chat template, the reply opened."""
    from plmkit.data.chat import load_chat_template, render_chat

    template = load_chat_template(cfg.model)
    special = {}
    for role in ("bos", "eos"):
        token_id = getattr(tokenizer, f"{role}_id")
        special[f"{role}_token"] = (tokenizer.id_to_token(token_id) or "") if token_id is not None else ""
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    turns = [[*system, {"role": "user", "content": text}] for text in texts]
    return [render_chat(chat, template, add_generation_prompt=True, **special) for chat in turns]


def run(cfg: Config) -> dict:
    from plmkit.interop.hf import load
    from plmkit.interop.quantized import is_quantized_dir, load_quantized
    from plmkit.models.generation import generate, lm_kind
    from plmkit.models.quantize import quantize

    if not cfg.model:
        raise ConfigError("--model is required: a checkpoint directory")
    if is_quantized_dir(cfg.model):  # a `plmkit.save_quantized` export
        loaded = load_quantized(cfg.model)
    else:
        loaded = load(cfg.model, allow_pickle=cfg.allow_pickle)
    kind = lm_kind(loaded.model)
    if kind == "encoder":
        model_type = loaded.hf_config.get("model_type", type(loaded.model).__name__)
        raise ConfigError(
            f"{cfg.model}: a {model_type} model without a generating LM head cannot generate; "
            "generate needs a causal LM (GPT-2, Llama) or an encoder-decoder (T5, BART)"
        )
    if cfg.quantize:
        quantize(loaded.model, cfg.quantize)
    tokenizer = loaded.require_tokenizer()
    if cfg.prompts_file:
        try:
            texts_in = Path(cfg.prompts_file).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise DataError(f"{cfg.prompts_file}: cannot read prompts ({e.strerror})") from None
    else:
        texts_in = [cfg.prompt]
    if kind == "seq2seq":
        return _generate_seq2seq(cfg, loaded.model, tokenizer, texts_in)
    # Instruct checkpoints end a turn with an id their generation_config.json lists beside the tokenizer's EOS
    eos_ids = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    eos_ids += [i for i in _as_list(loaded.generation_config.get("eos_token_id")) if i not in eos_ids]
    if cfg.chat:
        texts_in = _chat_prompts(cfg, tokenizer, texts_in)
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in texts_in]
    if any(not p for p in prompts):
        bos = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        if bos is None:
            raise ConfigError("an empty --prompt needs a tokenizer with a BOS or EOS token to start from")
        prompts = [p or [bos] for p in prompts]
    stream = cfg.stream and len(prompts) == 1 and cfg.num_beams == 1
    printer = _Printer(tokenizer, "" if cfg.chat else texts_in[0]) if stream else None
    try:
        new = generate(
            loaded.model, prompts, max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
            temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
            repetition_penalty=cfg.repetition_penalty, num_beams=cfg.num_beams,
            length_penalty=cfg.length_penalty, eos_token_id=eos_ids or None, pad_token_id=tokenizer.pad_id,
            stop_strings=cfg.stop, tokenizer=tokenizer, streamer=printer,
            generator=torch.Generator().manual_seed(cfg.seed), compile=cfg.compile,
            sliding_window=cfg.sliding_window,
        )
    except BaseException:
        if printer is not None and printer.started:  # an error (or Ctrl-C) starts on its own line
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    texts = []
    for prompt_text, row in zip(texts_in, new.tolist()):
        ids = [t for t in row if t != pad] if pad is not None else row
        texts.append(("" if cfg.chat else prompt_text) + tokenizer.decode(ids))
    if stream:
        sys.stdout.write("\n")
    else:
        for text in texts:
            print(text)
    return {"text": texts}
