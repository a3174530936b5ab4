"""Chat templates: a checkpoint's own Jinja template, rendered as transformers renders it.

A chat checkpoint ships the text layout it was tuned on as a Jinja template, either in
`tokenizer_config.json` (`"chat_template"`: a string, or a list of `{"name", "template"}` of which
"default" is used) or in `chat_template.jinja`. `render_chat` renders it exactly as transformers'
`apply_chat_template(..., tokenize=False)` does: an `ImmutableSandboxedEnvironment` with `trim_blocks`,
`lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter that does not escape HTML, and the
`raise_exception` / `strftime_now` globals. The template is untrusted input (anyone can publish a
checkpoint), so it only ever runs in the sandbox: attribute access to Python internals is refused.

Without a template, `render_chat` writes the plain Human/Assistant transcript of Anthropic's HH-RLHF data:

    {system}\\n\\nHuman: {user}\\n\\nAssistant: {assistant}\\n\\nHuman: ...

(the system message, if any, is the first text; with `add_generation_prompt` the text ends in
"\\n\\nAssistant:", which is exactly where an HH-RLHF completion starts).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from plmkit.errors import DataError, TokenizerError

HUMAN_PREFIX = "\n\nHuman: "
ASSISTANT_PREFIX = "\n\nAssistant: "
ASSISTANT_PROMPT = "\n\nAssistant:"


def load_chat_template(model_dir: str | Path) -> str | None:
    """The checkpoint's chat template, or None when it ships none.

    `chat_template.jinja` wins over `tokenizer_config.json`'s `chat_template`, as in transformers. The
    template is returned as text; it only ever runs inside `render_chat`'s sandbox.
    """
    model_dir = Path(model_dir)
    jinja_path = model_dir / "chat_template.jinja"
    if jinja_path.is_file():
        try:
            return jinja_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise TokenizerError(f"{jinja_path}: cannot read chat template ({err})") from None
    config_path = model_dir / "tokenizer_config.json"
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenizerError(f"{config_path}: cannot read tokenizer config ({err})") from None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {
            item.get("name"): item.get("template")
            for item in template
            if isinstance(item, dict) and isinstance(item.get("template"), str)
        }
        if "default" not in named:
            names = sorted(map(str, named))
            raise TokenizerError(f"{config_path}: chat_template list has no 'default' entry (names: {names})")
        return named["default"]
    raise TokenizerError(f"{config_path}: chat_template must be a string or a list of {{name, template}}")


def render_chat(
    messages: list[dict[str, str]],
    template: str | None = None,
    *,
    add_generation_prompt: bool = False,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render `messages` ({"role": "system"|"user"|"assistant", "content": ...}) into one prompt string.

    With a `template`, the result equals transformers' `apply_chat_template(messages, tokenize=False,
    add_generation_prompt=...)` given the same special tokens (pass the tokenizer's `bos_token`/`eos_token`
    and any other variable the template reads as keywords). Without one, the Human/Assistant format above.
    """
    messages = [_plain_message(message, index) for index, message in enumerate(messages)]
    if template is None:
        return _render_human_assistant(messages, add_generation_prompt)
    import jinja2

    compiled = _compile(template)
    variables = {"tools": None, "documents": None, "bos_token": bos_token, "eos_token": eos_token, **extra}
    variables = {key: _plain(value) for key, value in variables.items()}
    try:
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.exceptions.SecurityError as err:
        raise TokenizerError(f"chat template refused by the sandbox: {err}") from None
    except jinja2.exceptions.TemplateError as err:
        # raise_exception() in a template (e.g. "roles must alternate") lands here: the data breaks its rules
        raise DataError(f"chat template: {err}") from None


def _plain_message(message: Any, index: int) -> dict[str, Any]:
    if not isinstance(message, dict) or "role" not in message:
        raise DataError(f"chat message {index}: expected a dict with 'role' and 'content'")
    return {str(key): _plain(value) for key, value in message.items() if value is not None}


def _plain(value: Any) -> Any:
    """JSON-like data only: the sandbox still lets a template call an object's public methods (a Path's
    write_text, say), so anything else becomes an inert "<TypeName>" placeholder, as in transformers."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return f"<{type(value).__name__}>"


def _render_human_assistant(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    parts: list[str] = []
    for index, message in enumerate(messages):
        role, content = message["role"], str(message.get("content", ""))
        if role == "system":
            if index != 0:
                raise DataError(f"chat message {index}: a system message must come first")
            parts.append(content)
        elif role == "user":
            parts.append(HUMAN_PREFIX + content)
        elif role == "assistant":
            parts.append(ASSISTANT_PREFIX + content)
        else:
            raise DataError(f"chat message {index}: role {role!r} is not one of system, user, assistant")
    if add_generation_prompt:
        parts.append(ASSISTANT_PROMPT)
    return "".join(parts)


@lru_cache(maxsize=32)
def _compile(template: str) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        # Jinja's own tojson escapes <, >, & for HTML; chat templates expect plain JSON (as in transformers)
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    class GenerationTag(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text; render the body as-is
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    class TemplateNamespace(jinja2.utils.Namespace):
        # No underscore names on a namespace: they are the way into CPython internals
        def __init__(*args: Any, **kwargs: Any) -> None:
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"underscore attribute {name!r} on a namespace")

    class TemplateDict:
        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise TokenizerError(f"chat template line {err.lineno}: {err.message}") from None
