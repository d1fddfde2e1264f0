"""Chat templates: the text a role block (`system`/`user`/`assistant`) is wrapped in.

The frontend builds prompts incrementally, so it needs each role's prefix and suffix rather
than a whole-conversation renderer. They come from the model's own Jinja `chat_template`
(rendered on a probe conversation with sentinel contents and cut apart), or from a named
template (chatml, llama-2, llama-3, default) when the model has none or its template cannot
be cut into per-role pieces.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

logger = logging.getLogger("radixrt.lang")


class ChatTemplateStyle(Enum):
    PLAIN = auto()
    LLAMA2 = auto()  # the system block sits inside the first [INST] ... [/INST]


@dataclass
class ChatTemplate:
    name: str
    default_system_prompt: str | None
    role_prefix_and_suffix: dict[str, tuple[str, str]]
    stop_str: tuple[str, ...] = ()
    style: ChatTemplateStyle = ChatTemplateStyle.PLAIN
    image_token: str = "<image>"
    extra: dict[str, Any] = field(default_factory=dict)

    def get_prefix_and_suffix(self, role: str, hist_messages: list[dict]) -> tuple[str, str]:
        prefix, suffix = self.role_prefix_and_suffix.get(role, ("", ""))
        if self.style == ChatTemplateStyle.LLAMA2:
            if role == "system" and not hist_messages:
                user_prefix = self.role_prefix_and_suffix.get("user", ("", ""))[0]
                return user_prefix + prefix, suffix
            if role == "user" and len(hist_messages) == 1 and hist_messages[0]["role"] == "system":
                return "", suffix
        return prefix, suffix

    def get_prompt(self, messages: list[dict]) -> str:
        """A whole conversation as text (each message wrapped in its role's prefix/suffix)."""
        out = []
        for i, m in enumerate(messages):
            content = m["content"]
            if m["role"] == "system" and content is None:
                content = self.default_system_prompt
                if content is None:
                    continue
            prefix, suffix = self.get_prefix_and_suffix(m["role"], messages[:i])
            out.append(f"{prefix}{content}{suffix}")
        return "".join(out)


# ----------------------------------------------------------------------------- named templates
def _plain(name: str, prefix_suffix: dict[str, tuple[str, str]], stop: tuple[str, ...] = (),
           default_system_prompt: str | None = None,
           style: ChatTemplateStyle = ChatTemplateStyle.PLAIN) -> ChatTemplate:
    return ChatTemplate(name, default_system_prompt, prefix_suffix, stop, style)


_CHATML = {r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in ("system", "user", "assistant")}
_LLAMA3 = {r: (f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>")
           for r in ("system", "user", "assistant")}

_REGISTRY: dict[str, ChatTemplate] = {}


def register_chat_template(template: ChatTemplate, *aliases: str) -> None:
    for name in (template.name, *aliases):
        _REGISTRY[name] = template


register_chat_template(_plain("default", {"system": ("SYSTEM:", "\n"), "user": ("USER:", "\n"),
                                          "assistant": ("ASSISTANT:", "\n")}))
register_chat_template(_plain("chatml", _CHATML, ("<|im_end|>",)))
register_chat_template(_plain("llama-3", _LLAMA3, ("<|eot_id|>",)), "llama-3-instruct")
register_chat_template(_plain("llama-2", {"system": ("<<SYS>>\n", "\n<</SYS>>\n\n"),
                                          "user": ("[INST] ", " [/INST]"),
                                          "assistant": ("", " </s><s>")},
                              style=ChatTemplateStyle.LLAMA2), "llama-2-chat")
register_chat_template(_plain("gemma-it", {"system": ("", ""),
                                           "user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
                                           "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n")},
                              ("<end_of_turn>",)))


def get_chat_template(name: str) -> ChatTemplate:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown chat template {name!r}; known: {sorted(_REGISTRY)}") from None


def chat_template_names() -> list[str]:
    return sorted(_REGISTRY)


def get_chat_template_by_model_path(model_path: str | None) -> ChatTemplate:
    """A named template guessed from the model's path or name ("default" if nothing fits)."""
    p = (model_path or "").lower()
    if "llama-3" in p or "llama3" in p:
        return _REGISTRY["llama-3"]
    if ("llama-2" in p and "chat" in p) or (("mistral" in p or "mixtral" in p) and "instruct" in p):
        return _REGISTRY["llama-2"]
    if "gemma" in p and "it" in p.replace("gemma", ""):
        return _REGISTRY["gemma-it"]
    if any(k in p for k in ("qwen", "smollm", "chatml", "hermes", "yi-", "openhermes")):
        return _REGISTRY["chatml"]
    return _REGISTRY["default"]


# ----------------------------------------------------------------------------- from Jinja
_SENTINEL = {"system": "\x02RADIXRT-SYSTEM\x03", "user": "\x02RADIXRT-USER\x03",
             "assistant": "\x02RADIXRT-ASSISTANT\x03"}


def _token_str(tok: Any) -> str:
    if isinstance(tok, dict):  # old tokenizer_config.json: {"content": "<s>", ...}
        return tok.get("content", "")
    return tok or ""


def _jinja_renderer(template: str, eos_token: str):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def strftime_now(fmt: str) -> str:
        import datetime

        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    compiled = env.from_string(template)

    def render(messages: list[dict], add_generation_prompt: bool = False) -> str:
        # bos_token renders empty: the server's tokenizer adds BOS itself where the model
        # wants one, and a literal BOS in the text would be a second one.
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token="", eos_token=eos_token, tools=None, documents=None)

    return render


def _split(text: str, sentinel: str) -> tuple[str, str] | None:
    if text.count(sentinel) != 1:
        return None
    before, after = text.split(sentinel)
    return before, after


def chat_template_from_jinja(template: str, eos_token: Any = "", name: str = "jinja") -> ChatTemplate | None:
    """Per-role prefixes and suffixes cut out of a Jinja chat template, or None when the
    template does not render as independent role blocks (then use a named template)."""
    eos = _token_str(eos_token)
    try:
        render = _jinja_renderer(template, eos)
    except Exception as e:  # a template jinja2 cannot even parse
        logger.warning("chat template %r does not parse (%s); using a named template", name, e)
        return None
    s, u, a = (_SENTINEL[r] for r in ("system", "user", "assistant"))

    def msgs(*pairs: tuple[str, str]) -> list[dict]:
        return [{"role": r, "content": c} for r, c in pairs]

    try:
        try:
            head = msgs(("system", s))
            r_sys = render(head)
            sys_pair = _split(r_sys, s)
        except Exception:  # the template refuses a system role
            head, r_sys, sys_pair = [], "", ("", "")
        r_u = render(head + msgs(("user", u)))
        r_ua = render(head + msgs(("user", u), ("assistant", a)))
        r_gen = render(head + msgs(("user", u)), add_generation_prompt=True)
        r_u_alone = render(msgs(("user", u)))
    except Exception as e:
        logger.warning("chat template %r failed on a probe conversation (%s); using a named "
                       "template", name, e)
        return None
    if sys_pair is None or not r_u.startswith(r_sys) or not r_ua.startswith(r_u):
        return None
    user_pair = _split(r_u[len(r_sys):], u)
    asst_pair = _split(r_ua[len(r_u):], a)
    if user_pair is None or asst_pair is None:
        return None
    asst_prefix, asst_suffix = asst_pair
    if r_gen.startswith(r_u) and len(r_gen) > len(r_u):
        asst_prefix = r_gen[len(r_u):]  # what the model sees right before it answers
    default_system = None
    user_block = user_pair[0] + u + user_pair[1]
    if head and r_u_alone.endswith(user_block):
        lead = r_u_alone[: len(r_u_alone) - len(user_block)]
        sp, ss = sys_pair
        if lead and lead.startswith(sp) and lead.endswith(ss) and len(lead) >= len(sp) + len(ss):
            default_system = lead[len(sp): len(lead) - len(ss)]
    stop = asst_suffix.strip()
    return ChatTemplate(
        name=name, default_system_prompt=default_system,
        role_prefix_and_suffix={"system": sys_pair, "user": user_pair,
                                "assistant": (asst_prefix, asst_suffix)},
        stop_str=(stop,) if stop else (),
    )


def guess_named_template(jinja_template: str) -> ChatTemplate | None:
    """A named template recognised from the markers a Jinja template emits."""
    for marker, name in (("<|im_start|>", "chatml"), ("<|start_header_id|>", "llama-3"),
                         ("[INST]", "llama-2"), ("<start_of_turn>", "gemma-it")):
        if marker in jinja_template:
            return _REGISTRY[name]
    return None


def _read_jinja_from_dir(path: str) -> tuple[str | None, Any]:
    if not path or not os.path.isdir(path):
        return None, ""
    config: dict[str, Any] = {}
    cfg_path = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            config = json.load(f)
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if not template:
        jinja_path = os.path.join(path, "chat_template.jinja")
        json_path = os.path.join(path, "chat_template.json")
        if os.path.isfile(jinja_path):
            with open(jinja_path, encoding="utf-8") as f:
                template = f.read()
        elif os.path.isfile(json_path):
            with open(json_path, encoding="utf-8") as f:
                template = json.load(f).get("chat_template")
    return template or None, config.get("eos_token", "")


def load_chat_template_from_dir(path: str) -> ChatTemplate | None:
    """The template of a local Hugging Face tokenizer directory (tokenizer_config.json's
    `chat_template`, or a chat_template.jinja / chat_template.json file), or None."""
    template, eos = _read_jinja_from_dir(path)
    if not template:
        return None
    return (chat_template_from_jinja(template, eos, os.path.basename(path.rstrip("/")))
            or guess_named_template(template))


def resolve_chat_template(name: str | None = None, tokenizer_dir: str | None = None,
                          jinja_template: str | None = None, eos_token: Any = "",
                          model_path: str | None = None) -> ChatTemplate:
    """A backend's template: an explicit name wins, then the model's own Jinja template,
    then a named template matched on the model path."""
    if name:
        return get_chat_template(name)
    template = None
    if jinja_template:
        template = (chat_template_from_jinja(jinja_template, eos_token, os.path.basename(model_path or "jinja"))
                    or guess_named_template(jinja_template))
    if template is None and tokenizer_dir:
        template = load_chat_template_from_dir(tokenizer_dir)
    return template or get_chat_template_by_model_path(model_path or tokenizer_dir)
