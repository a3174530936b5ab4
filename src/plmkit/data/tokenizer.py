"""Tokenizers: a thin wrapper over the Rust `tokenizers` library, plus a character-level tokenizer.

Three trainable kinds, each set up as the model family that made it famous:

- `bpe`: byte-level BPE as GPT-2 (Radford et al. 2019, sec. 2.2): a ByteLevel pre-tokenizer over the
  256-byte alphabet, so no input is ever unknown; no prefix space, no special tokens added by encode.
- `wordpiece`: as BERT (Devlin et al. 2019): BertNormalizer, BertPreTokenizer, `##` continuation
  pieces, `[CLS] a [SEP]` / `[CLS] a [SEP] b [SEP]` added by encode. Its vocabulary is learned by
  `plmkit.data.wordpiece` (the same merges as the library's trainer, but the same ids on every run).
- `unigram`: the SentencePiece unigram model (Kudo 2018) with a Metaspace (`▁`) pre-tokenizer, as T5;
  encode appends `</s>`.

`Tokenizer.save(dir)` writes `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` in the
format transformers' `PreTrainedTokenizerFast` / `AutoTokenizer` read. `Tokenizer.load` also builds a
tokenizer from GPT-2 style `vocab.json` + `merges.txt` or a BERT `vocab.txt`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as RustTokenizer

from plmkit.data.readers_text import Split, read_documents
from plmkit.data.wordpiece import learn_wordpiece_vocab
from plmkit.errors import DataError, TokenizerError

__all__ = ["Tokenizer", "CharTokenizer", "train_tokenizer", "check_vocab", "load_tokenizer", "ROLES"]

ROLES = ("bos", "eos", "unk", "pad", "mask", "cls", "sep")
Kind = Literal["bpe", "wordpiece", "unigram"]

# The roles a well-known special token plays when no config says otherwise.
_KNOWN_ROLES: dict[str, tuple[str, ...]] = {
    "<|endoftext|>": ("bos", "eos", "unk"),
    "<s>": ("bos", "cls"),
    "</s>": ("eos", "sep"),
    "<unk>": ("unk",),
    "<pad>": ("pad",),
    "<mask>": ("mask",),
    "[UNK]": ("unk",),
    "[PAD]": ("pad",),
    "[CLS]": ("cls",),
    "[SEP]": ("sep",),
    "[MASK]": ("mask",),
    "[BOS]": ("bos",),
    "[EOS]": ("eos",),
}

DEFAULT_SPECIAL_TOKENS: dict[str, list[str]] = {
    "bpe": ["<|endoftext|>"],
    "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "unigram": ["<pad>", "</s>", "<unk>"],
}


def infer_roles(tokens: Iterable[str]) -> dict[str, str]:
    """Map roles (bos, eos, ...) to the first listed token known to play them."""
    roles: dict[str, str] = {}
    for token in tokens:
        for role in _KNOWN_ROLES.get(token, ()):
            roles.setdefault(role, token)
    return roles


def _token_text(value: Any) -> str | None:
    # transformers writes special tokens either as strings or as AddedToken dicts.
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path} line {e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object")
    return data


class Tokenizer:
    """A `tokenizers.Tokenizer` with named special tokens (`eos_id`, `pad_id`, ...; None where absent)."""

    def __init__(self, backend: RustTokenizer, special_tokens: dict[str, str] | None = None,
                 model_max_length: int | None = None) -> None:
        # Batch shapes are the collator's business: a checkpoint's tokenizer.json may carry padding or
        # truncation settings (MiniLM pads to 128), which transformers also switches off on load.
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        roles = dict(special_tokens) if special_tokens is not None else {}
        for role, token in roles.items():
            if role not in ROLES:
                raise TokenizerError(f"unknown special-token role '{role}' (roles: {', '.join(ROLES)})")
            if backend.token_to_id(token) is None:
                raise TokenizerError(f"special token {token!r} ({role}) is not in the vocabulary")
        self.special_tokens = roles
        self.model_max_length = model_max_length

    # ---- ids of the special tokens -------------------------------------------------------------
    def _role_id(self, role: str) -> int | None:
        token = self.special_tokens.get(role)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._role_id("bos")

    @property
    def eos_id(self) -> int | None:
        return self._role_id("eos")

    @property
    def unk_id(self) -> int | None:
        return self._role_id("unk")

    @property
    def pad_id(self) -> int | None:
        return self._role_id("pad")

    @property
    def mask_id(self) -> int | None:
        return self._role_id("mask")

    @property
    def cls_id(self) -> int | None:
        return self._role_id("cls")

    @property
    def sep_id(self) -> int | None:
        return self._role_id("sep")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    # ---- encode / decode -----------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True, *, pair: str | None = None) -> list[int]:
        """Ids of `text` (and of a second segment `pair`, joined by the tokenizer's template)."""
        return self.backend.encode(text, pair, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        lists = [list(ids) for ids in batch]
        return self.backend.decode_batch(lists, skip_special_tokens=skip_special_tokens)

    def fingerprint(self) -> str:
        """sha256 of the serialized tokenizer: a token store records it to catch a swapped tokenizer."""
        # Canonical JSON: key order, and the last digit of unigram scores, can differ between a trained
        # copy and its saved-and-reloaded twin; neither changes a single token id.
        data = json.loads(self.backend.to_str(), parse_float=lambda x: f"{float(x):.10g}")
        canonical = json.dumps(data, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    # ---- files ---------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        tokens = {f"{role}_token": token for role, token in self.special_tokens.items()}
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            # Leave decoding spaces to the tokenizer's own decoder, so decode matches plmkit's exactly.
            "clean_up_tokenization_spaces": False,
            **tokens,
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        for name, data in (("tokenizer_config.json", config), ("special_tokens_map.json", tokens)):
            (directory / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read `tokenizer.json` (a file or a directory holding it, with its configs), or build from
        `vocab.json` + `merges.txt` (byte-level BPE) or `vocab.txt` (WordPiece)."""
        path = Path(path)
        if not path.exists():
            raise TokenizerError(f"tokenizer path {path} does not exist")
        directory = path.parent if path.is_file() else path
        config_path = directory / "tokenizer_config.json"
        config = _read_json(config_path) if config_path.is_file() else {}
        special_map_path = directory / "special_tokens_map.json"
        special_map = _read_json(special_map_path) if special_map_path.is_file() else {}
        if path.is_file():
            backend = _backend_from_file(path)
        elif (directory / "tokenizer.json").is_file():
            backend = _backend_from_file(directory / "tokenizer.json")
        elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            backend = _byte_level_bpe(directory / "vocab.json", directory / "merges.txt")
        elif (directory / "vocab.txt").is_file():
            lowercase = bool(config.get("do_lower_case", True))
            backend = _bert_wordpiece(directory / "vocab.txt", lowercase)
        else:
            raise TokenizerError(
                f"no tokenizer in {directory}: expected tokenizer.json, vocab.json + merges.txt, or vocab.txt"
            )
        roles: dict[str, str] = {}
        for source in (special_map, config):  # tokenizer_config.json wins where both name a role
            for role in ROLES:
                token = _token_text(source.get(f"{role}_token"))
                if token is not None and backend.token_to_id(token) is not None:
                    roles[role] = token
        if not roles:
            specials = [t.content for t in backend.get_added_tokens_decoder().values() if t.special]
            roles = infer_roles(specials or [t for t in _KNOWN_ROLES if backend.token_to_id(t) is not None])
        max_length = config.get("model_max_length")
        max_length = max_length if isinstance(max_length, int) and max_length < 10**9 else None
        return cls(backend, roles, model_max_length=max_length)


def _backend_from_file(path: Path) -> RustTokenizer:
    try:
        return RustTokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises a bare Exception with its serde message
        raise TokenizerError(f"cannot read tokenizer {path}: {str(e).splitlines()[0]}") from None


def _add_specials(backend: RustTokenizer, tokens: Iterable[str]) -> None:
    present = [t for t in tokens if backend.token_to_id(t) is not None]
    backend.add_special_tokens(present)


def _byte_level_bpe(vocab: Path, merges: Path) -> RustTokenizer:
    try:
        model = models.BPE.from_file(str(vocab), str(merges))
    except Exception as e:
        raise TokenizerError(f"cannot read BPE files {vocab}, {merges}: {str(e).splitlines()[0]}") from None
    backend = RustTokenizer(model)
    _set_byte_level(backend)
    _add_specials(backend, _KNOWN_ROLES)
    cls_id, sep_id = backend.token_to_id("<s>"), backend.token_to_id("</s>")
    if cls_id is not None and sep_id is not None:
        # A byte-level vocab.json with <s> and </s> is RoBERTa's: <s> a </s> and <s> a </s></s> b </s>.
        backend.post_processor = processors.RobertaProcessing(
            ("</s>", sep_id), ("<s>", cls_id), trim_offsets=True, add_prefix_space=False
        )
    return backend


def _set_byte_level(backend: RustTokenizer) -> None:
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)


def _bert_wordpiece(vocab: Path, lowercase: bool) -> RustTokenizer:
    try:
        model = models.WordPiece.from_file(str(vocab), unk_token="[UNK]")
    except Exception as e:
        raise TokenizerError(f"cannot read WordPiece vocabulary {vocab}: {str(e).splitlines()[0]}") from None
    backend = RustTokenizer(model)
    _set_bert(backend, lowercase)
    _add_specials(backend, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return backend


def _set_bert(backend: RustTokenizer, lowercase: bool) -> None:
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    if cls_id is not None and sep_id is not None:
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )


def _iter_training_texts(files: Sequence[str | Path], text_field: str, split: Split) -> Iterator[str]:
    for path in files:
        yield from read_documents(path, text_field=text_field, split=split)


def _train_wordpiece(texts: Iterable[str], vocab_size: int, tokens: list[str], min_frequency: int,
                     lowercase: bool, unk: str) -> RustTokenizer:
    # Words are cut exactly as encoding will cut them: BERT's normalizer, then its pre-tokenizer.
    probe = RustTokenizer(models.WordPiece(unk_token=unk))
    _set_bert(probe, lowercase)
    counts: Counter[str] = Counter()
    for text in texts:
        normalized = probe.normalizer.normalize_str(text)
        counts.update(word for word, _ in probe.pre_tokenizer.pre_tokenize_str(normalized))
    pieces = learn_wordpiece_vocab(counts, vocab_size, tokens, min_frequency, prefix="##")
    backend = RustTokenizer(models.WordPiece(
        {p: i for i, p in enumerate(pieces)}, unk_token=unk, continuing_subword_prefix="##",
    ))
    _set_bert(backend, lowercase)
    backend.add_special_tokens(tokens)
    return backend


def train_tokenizer(
    files: Sequence[str | Path],
    kind: Kind = "bpe",
    vocab_size: int = 8000,
    special_tokens: Sequence[str] | dict[str, str] | None = None,
    min_frequency: int = 2,
    lowercase: bool = False,
    text_field: str = "text",
    split: Split = "blank_line",
    model_max_length: int | None = None,
) -> Tokenizer:
    """Train a tokenizer on text or JSONL files.

    `special_tokens` is a list (roles inferred from the usual names: `<|endoftext|>`, `[CLS]`, `</s>`, ...)
    or a dict from role (`bos`, `eos`, `unk`, `pad`, `mask`, `cls`, `sep`) to token. Special tokens take
    the first ids, in the order given. `min_frequency` does not apply to unigram.
    """
    if kind not in DEFAULT_SPECIAL_TOKENS:
        raise TokenizerError(f"unknown tokenizer kind '{kind}' (choose bpe, wordpiece or unigram)")
    if not files:
        raise DataError("train_tokenizer got no files")
    if special_tokens is None:
        special_tokens = DEFAULT_SPECIAL_TOKENS[kind]
    if isinstance(special_tokens, dict):
        roles = dict(special_tokens)
        tokens = list(dict.fromkeys(special_tokens.values()))
    else:
        tokens = list(dict.fromkeys(special_tokens))
        roles = infer_roles(tokens)
    if vocab_size <= len(tokens):
        raise TokenizerError(f"vocab_size {vocab_size} leaves no room beside {len(tokens)} special tokens")

    if kind == "bpe":
        backend = RustTokenizer(models.BPE())
        if lowercase:
            backend.normalizer = normalizers.Lowercase()
        _set_byte_level(backend)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
    elif kind == "wordpiece":
        unk = roles.get("unk")
        if unk is None:
            raise TokenizerError("a wordpiece tokenizer needs an unk token (for example [UNK])")
        texts = _iter_training_texts(files, text_field, split)
        backend = _train_wordpiece(texts, vocab_size, tokens, min_frequency, lowercase, unk)
    else:
        backend = RustTokenizer(models.Unigram())
        steps: list[normalizers.Normalizer] = [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
        if lowercase:
            steps.append(normalizers.Lowercase())
        backend.normalizer = normalizers.Sequence(steps)
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=tokens, unk_token=roles.get("unk"), show_progress=False,
        )

    if kind != "wordpiece":
        backend.train_from_iterator(_iter_training_texts(files, text_field, split), trainer=trainer)

    if kind == "wordpiece":
        # The template is set after training: it needs the ids [CLS]/[SEP] received.
        cls_tok, sep_tok = roles.get("cls"), roles.get("sep")
        if cls_tok and sep_tok:
            backend.post_processor = processors.TemplateProcessing(
                single=f"{cls_tok} $A {sep_tok}",
                pair=f"{cls_tok} $A {sep_tok} $B:1 {sep_tok}:1",
                special_tokens=[(t, backend.token_to_id(t)) for t in (cls_tok, sep_tok)],
            )
    elif kind == "unigram" and roles.get("eos"):
        eos = roles["eos"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B:1 {eos}:1",
            special_tokens=[(eos, backend.token_to_id(eos))],
        )
    return Tokenizer(backend, roles, model_max_length=model_max_length)


class CharTokenizer:
    """One id per character, as nanoGPT's Shakespeare-char experiments; special tokens follow the characters.

    Saved as `char_tokenizer.json` ({"type": "char", "chars": [...], "special_tokens": {role: token}}).
    Encoding a character outside the vocabulary raises TokenizerError (there is no unknown token unless
    one is given, in which case it is used).
    """

    FILE = "char_tokenizer.json"

    def __init__(self, chars: Sequence[str], special_tokens: dict[str, str] | None = None) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise TokenizerError("CharTokenizer chars must be distinct single characters")
        self.chars = list(chars)
        self.special_tokens = dict(special_tokens or {})
        for role in self.special_tokens:
            if role not in ROLES:
                raise TokenizerError(f"unknown special-token role '{role}' (roles: {', '.join(ROLES)})")
        specials = list(dict.fromkeys(self.special_tokens.values()))
        self.itos = self.chars + specials
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self._special_ids = {self.stoi[t] for t in specials}
        self.model_max_length: int | None = None

    @classmethod
    def from_text(cls, text: str, special_tokens: dict[str, str] | None = None) -> CharTokenizer:
        if not text:
            raise DataError("CharTokenizer.from_text got an empty text")
        return cls(sorted(set(text)), special_tokens)

    @classmethod
    def from_files(cls, files: Sequence[str | Path], special_tokens: dict[str, str] | None = None,
                   text_field: str = "text") -> CharTokenizer:
        chars: set[str] = set()
        for path in files:
            for doc in read_documents(path, text_field=text_field, split="file"):
                chars.update(doc)
        return cls(sorted(chars), special_tokens)

    def _role_id(self, role: str) -> int | None:
        token = self.special_tokens.get(role)
        return None if token is None else self.stoi[token]

    bos_id = property(lambda self: self._role_id("bos"))
    eos_id = property(lambda self: self._role_id("eos"))
    unk_id = property(lambda self: self._role_id("unk"))
    pad_id = property(lambda self: self._role_id("pad"))
    mask_id = property(lambda self: self._role_id("mask"))
    cls_id = property(lambda self: self._role_id("cls"))
    sep_id = property(lambda self: self._role_id("sep"))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.stoi.get(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.itos[token_id] if 0 <= token_id < len(self.itos) else None

    def encode(self, text: str, add_special_tokens: bool = True, *, pair: str | None = None) -> list[int]:
        unk = self.unk_id
        ids: list[int] = []
        for ch in text if pair is None else text + pair:
            i = self.stoi.get(ch)
            if i is None or i in self._special_ids:
                if unk is None:
                    raise TokenizerError(f"character {ch!r} is not in the character vocabulary")
                i = unk
            ids.append(i)
        return ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        n = len(self.itos)
        return "".join(
            self.itos[i] for i in ids
            if 0 <= i < n and not (skip_special_tokens and i in self._special_ids)
        )

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def _payload(self) -> dict[str, Any]:
        return {"type": "char", "chars": self.chars, "special_tokens": self.special_tokens}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self._payload(), sort_keys=True).encode("utf-8")).hexdigest()

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self._payload(), ensure_ascii=False, indent=1) + "\n"
        (directory / self.FILE).write_text(text, encoding="utf-8")
        return directory

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        path = Path(path)
        file = path / cls.FILE if path.is_dir() else path
        data = _read_json(file) if file.is_file() else None
        if data is None or data.get("type") != "char" or not isinstance(data.get("chars"), list):
            raise TokenizerError(f"{file} is not a character tokenizer file")
        return cls(data["chars"], data.get("special_tokens") or {})


def load_tokenizer(path: str | Path) -> Tokenizer | CharTokenizer:
    """Load whichever tokenizer `path` holds: a character tokenizer, or anything `Tokenizer.load` reads."""
    path = Path(path)
    if (path.is_dir() and (path / CharTokenizer.FILE).is_file()) or path.name == CharTokenizer.FILE:
        return CharTokenizer.load(path)
    return Tokenizer.load(path)


def check_vocab(tokenizer: Tokenizer | CharTokenizer, model_vocab_size: int, where: str | Path) -> None:
    """Raise if the tokenizer can produce ids the model has no embedding for.

    A model vocabulary larger than the tokenizer's is fine (GPT-2 is often padded to 50304 for speed,
    T5 has 32128 rows for 32100 tokens); a smaller one would index out of range.
    """
    n = tokenizer.vocab_size
    if n > model_vocab_size:
        raise TokenizerError(
            f"tokenizer at {where} has {n} tokens but the model's vocabulary has {model_vocab_size}"
        )
