"""`plmkit generate --chat`: the prompt is a user turn in the checkpoint's chat template."""

from __future__ import annotations

import json

from tiny_decoders import V, hf_decoder
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

import plmkit
from plmkit.data.chat import render_chat
from plmkit.recipes.generate import Config, run

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def chat_checkpoint(path, template: str | None):
    hf = hf_decoder("qwen2")
    hf.generation_config.eos_token_id = [1, 2]
    hf.save_pretrained(path)
    words = ["<unk>", "<|im_start|>", "<|im_end|>"] + [f"w{i}" for i in range(V - 3)]
    words[10:16] = ["hello", "there", "system", "user", "assistant", "Be"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    backend.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "eos_token": "<|im_end|>"}
    if template is not None:
        config["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def test_chat_renders_the_template_and_prints_the_reply(tmp_path, capsys) -> None:
    path = chat_checkpoint(tmp_path, CHATML)
    cfg = Config(model=str(path), prompt="hello there", chat=True, system="Be", max_new_tokens=6)
    cfg.stream = False
    out = run(cfg)
    loaded = plmkit.load(path)
    tokenizer = loaded.tokenizer
    chat = [{"role": "system", "content": "Be"}, {"role": "user", "content": "hello there"}]
    prompt = render_chat(chat, CHATML, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert ids[:3] == [1, 12, 15]  # <|im_start|> system Be: the template's special tokens are real ids
    new = plmkit.generate(loaded.model, [ids], max_new_tokens=6, eos_token_id=[2, 1], pad_token_id=None)
    expected = tokenizer.decode([t for t in new[0].tolist() if t != tokenizer.pad_id])
    assert out["text"] == [expected]
    assert capsys.readouterr().out.strip() == expected.strip()


def test_chat_without_a_template_uses_human_assistant(tmp_path) -> None:
    path = chat_checkpoint(tmp_path, None)
    loaded = plmkit.load(path)
    out = run(Config(model=str(path), prompt="hello", chat=True, max_new_tokens=4, stream=False))
    ids = loaded.tokenizer.encode("\n\nHuman: hello\n\nAssistant:", add_special_tokens=False)
    new = plmkit.generate(loaded.model, [ids], max_new_tokens=4, eos_token_id=[2, 1])
    assert out["text"] == [loaded.tokenizer.decode(new[0].tolist())]
