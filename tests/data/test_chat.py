# ruff: noqa: E501  (the released chat templates are reproduced verbatim)
"""Chat templates render as transformers' apply_chat_template does, inside the sandbox."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import AutoTokenizer

from plmkit.data.chat import load_chat_template, render_chat
from plmkit.errors import DataError, TokenizerError

# The public templates of the released instruct checkpoints, verbatim.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

FAMILIES = {
    "llama3": (LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>"),
    "qwen": (QWEN25_TEMPLATE, None, "<|im_end|>"),
    "gemma": (GEMMA_TEMPLATE, "<bos>", "<eos>"),
}

CONVERSATION = [
    {"role": "user", "content": "  What is 2 + 2? <b>&</b>"},
    {"role": "assistant", "content": "4 "},
    {"role": "user", "content": "And times 3?"},
]
WITH_SYSTEM = [{"role": "system", "content": "Answer briefly."}, *CONVERSATION]


def write_checkpoint(directory, template, bos, eos, *, as_jinja=False):
    vocab = {"[UNK]": 0, "hello": 1}
    for token in (bos, eos):
        if token is not None:
            vocab[token] = len(vocab)
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "bos_token": bos, "eos_token": eos}
    if as_jinja:
        (directory / "chat_template.jinja").write_text(template, encoding="utf-8")
    else:
        config["chat_template"] = template
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_render_matches_transformers(tmp_path, family, generation_prompt):
    template, bos, eos = FAMILIES[family]
    model_dir = write_checkpoint(tmp_path, template, bos, eos)
    reference = AutoTokenizer.from_pretrained(str(model_dir))
    loaded = load_chat_template(model_dir)
    assert loaded == template
    chats = [CONVERSATION] if family == "gemma" else [CONVERSATION, WITH_SYSTEM]
    for chat in chats:
        expected = reference.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)
        got = render_chat(chat, loaded, add_generation_prompt=generation_prompt, bos_token=bos or "",
                          eos_token=eos or "")
        assert got == expected
        assert got.endswith("\n") != (family == "llama3" and not generation_prompt)


def test_qwen_tools_and_tojson_match_transformers(tmp_path):
    model_dir = write_checkpoint(tmp_path, QWEN25_TEMPLATE, None, "<|im_end|>")
    reference = AutoTokenizer.from_pretrained(str(model_dir))
    tools = [{"type": "function", "function": {"name": "add", "description": "a <b> & c", "parameters": {}}}]
    expected = reference.apply_chat_template(CONVERSATION, tools=tools, tokenize=False, add_generation_prompt=True)
    assert render_chat(CONVERSATION, QWEN25_TEMPLATE, add_generation_prompt=True, tools=tools) == expected
    assert '"a <b> & c"' in expected  # not HTML-escaped


def test_chat_template_jinja_file_wins_and_list_default(tmp_path):
    write_checkpoint(tmp_path, GEMMA_TEMPLATE, "<bos>", "<eos>", as_jinja=True)
    assert load_chat_template(tmp_path) == GEMMA_TEMPLATE
    (tmp_path / "chat_template.jinja").unlink()
    config = {"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "y"}]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_chat_template(tmp_path) == "y"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "a", "template": "x"}]}))
    with pytest.raises(TokenizerError, match="has no 'default' entry"):
        load_chat_template(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    assert load_chat_template(tmp_path) is None


def test_human_assistant_format_without_template():
    text = render_chat(WITH_SYSTEM[:3], add_generation_prompt=False)
    assert text == "Answer briefly.\n\nHuman:   What is 2 + 2? <b>&</b>\n\nAssistant: 4 "
    prompt = render_chat(CONVERSATION[:1], add_generation_prompt=True)
    assert prompt == "\n\nHuman:   What is 2 + 2? <b>&</b>\n\nAssistant:"
    with pytest.raises(DataError, match="role 'tool'"):
        render_chat([{"role": "tool", "content": "x"}])


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__ }}{{ cycler.__init__.__globals__.os.system('true') }}",
        "{% set ns = namespace() %}{% set ns._x = 1 %}",
        "{{ messages.append({'role': 'user', 'content': 'x'}) }}",
    ],
)
def test_sandbox_refuses_python_internals(template):
    with pytest.raises(TokenizerError, match="refused by the sandbox"):
        render_chat(CONVERSATION, template)


def test_raise_exception_is_a_data_error():
    with pytest.raises(DataError, match="System role not supported"):
        render_chat(WITH_SYSTEM, GEMMA_TEMPLATE)


def test_objects_reach_the_template_as_inert_placeholders(tmp_path):
    target = tmp_path / "written.txt"
    messages = [{"role": "user", "content": target}]
    assert render_chat(messages, "{{ messages[0].content }}") == "<PosixPath>"
    with pytest.raises(DataError, match="chat template"):
        render_chat(messages, "{{ messages[0].content.write_text('x') }}")
    with pytest.raises(DataError, match="chat template"):
        render_chat([{"role": "user", "content": "hi"}], "{{ path.write_text('x') }}", path=target)
    assert not target.exists()
