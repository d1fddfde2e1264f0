"""Tool calling for `/v1/chat/completions`: request checks, prompt rendering, the constraint,
and parsing calls out of the output (whole or streamed).

Call format (the one Hermes/Qwen-style chat templates use)::

    <tool_call>
    {"name": "get_weather", "arguments": {"city":"Paris"}}
    </tool_call>

The constraint is a `structural_tag` (radixrt/fsm/structural_tag.py): one structure per
allowed tool, begin = ``<tool_call>\\n{"name": "<name>", "arguments": ``, the tool's
``parameters`` schema, end = ``}\\n</tool_call>``, trigger ``<tool_call>``.

- ``required`` / a named function: the output is calls only (one, or several separated by a
  newline when ``parallel_tool_calls``), each with arguments valid for its tool's schema.
- ``auto``: free text that cannot contain the trigger except as the start of a complete call
  (at most one call unless ``parallel_tool_calls``).
- ``none``: no constraint, no parsing; the tools are not described to the model.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

TRIGGER = "<tool_call>"
END_TAG = "</tool_call>"
CALL_END = "}\n" + END_TAG
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')
_TAIL = re.compile(r"\s*\}\s*" + re.escape(END_TAG))


class ToolCallError(ValueError):
    """Invalid tools, tool_choice or tool messages; the message names the field."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str | None
    parameters: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        fn: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            fn["description"] = self.description
        return {"type": "function", "function": fn}


@dataclass
class ToolPlan:
    """What a request asks of tools: ``choice`` is none, auto, required or named."""

    tools: list[Tool]
    choice: str
    allowed: list[Tool]
    parallel: bool

    @property
    def calls_expected(self) -> bool:
        return self.choice != "none"

    def structural_tag(self) -> str | None:
        """The constraint (JSON text for SamplingParams.structural_tag); None for none."""
        if self.choice == "none":
            return None
        return json.dumps({
            "structures": [{"begin": call_begin(t.name), "schema": t.parameters, "end": CALL_END}
                           for t in self.allowed],
            "triggers": [TRIGGER],
            "at_least_one": self.choice in ("required", "named"),
            "stop_after_first": not self.parallel,
        }, ensure_ascii=False)

    def tool_of_structure(self, i: int) -> int:
        """The index in ``tools`` of the tool behind structure ``i``."""
        return self.tools.index(self.allowed[i])


def call_begin(name: str) -> str:
    return f'{TRIGGER}\n{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": '


def format_call(name: str, arguments: str) -> str:
    return call_begin(name) + arguments + CALL_END


# ----------------------------------------------------------------- request checks
def _check_schema(schema: Any, where: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise ToolCallError(f"{where}: must be a JSON schema object")
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as e:
        raise ToolCallError(f"{where}: not a valid JSON schema ({e.message})") from None
    if schema.get("type", "object") != "object":
        raise ToolCallError(f"{where}: must describe an object (type 'object')")
    return schema


def parse_tools(tools: list[dict[str, Any]] | None, tool_choice: Any,
                parallel_tool_calls: bool | None) -> ToolPlan | None:
    """The request's tool plan (None without tools); ToolCallError names the bad field."""
    if not tools:
        if tool_choice is not None:
            raise ToolCallError("tool_choice: only allowed when tools are given")
        return None
    parsed: list[Tool] = []
    for i, t in enumerate(tools):
        where = f"tools[{i}]"
        if t.get("type", "function") != "function":
            raise ToolCallError(f"{where}.type: only 'function' tools are supported")
        if set(t) - {"type", "function"}:
            raise ToolCallError(f"{where}: unknown field(s) {sorted(set(t) - {'type', 'function'})}")
        fn = t.get("function")
        if not isinstance(fn, dict):
            raise ToolCallError(f"{where}.function: required (an object with name and parameters)")
        unknown = sorted(set(fn) - {"name", "description", "parameters", "strict"})
        if unknown:
            raise ToolCallError(f"{where}.function: unknown field(s) {unknown}")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ToolCallError(f"{where}.function.name: must be 1-64 letters, digits, '_' or '-' "
                                f"(got {name!r})")
        if any(p.name == name for p in parsed):
            raise ToolCallError(f"{where}.function.name: duplicate tool name {name!r}")
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise ToolCallError(f"{where}.function.description: must be a string")
        if not isinstance(fn.get("strict", False), (bool, type(None))):
            raise ToolCallError(f"{where}.function.strict: must be a boolean")
        params = fn.get("parameters")
        params = {"type": "object", "properties": {}} if params is None else params
        params = _check_schema(params, f"{where}.function.parameters")
        if "type" not in params:  # arguments are always an object
            params = {**params, "type": "object"}
        parsed.append(Tool(name, desc, params))
    parallel = True if parallel_tool_calls is None else parallel_tool_calls
    choice = "auto" if tool_choice is None else tool_choice
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise ToolCallError("tool_choice: must be 'none', 'auto', 'required' or "
                                f'{{"type": "function", "function": {{"name": ...}}}} (got {choice!r})')
        allowed = [] if choice == "none" else parsed
        return ToolPlan(parsed, choice, allowed, parallel)
    if not isinstance(choice, dict) or choice.get("type") != "function" or \
            not isinstance(choice.get("function"), dict) or set(choice) - {"type", "function"}:
        raise ToolCallError('tool_choice: must be {"type": "function", "function": {"name": ...}}')
    name = choice["function"].get("name")
    match = [t for t in parsed if t.name == name]
    if not match:
        raise ToolCallError(f"tool_choice.function.name: no tool named {name!r} in tools")
    return ToolPlan(parsed, "named", match, parallel)


# ----------------------------------------------------------------- prompt rendering
def _system_block(tools: list[Tool]) -> str:
    lines = "\n".join(json.dumps(t.openai(), ensure_ascii=False) for t in tools)
    example = format_call("function_name", '{"parameter":"value"}')
    return (
        "# Tools\n\nYou can call the functions described below, one JSON object per line:\n"
        f"<tools>\n{lines}\n</tools>\n\n"
        "To call a function, write its name and arguments (a JSON object that matches its "
        f"parameters) between <tool_call> and </tool_call>, like this:\n{example}\n"
        "Function results come back between <tool_response> and </tool_response>."
    )


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return "\n".join(part.text for part in content)
    return content


def _checked_calls(calls: list[dict[str, Any]], where: str) -> list[tuple[str, str, str]]:
    """(id, name, arguments) of an assistant message's tool_calls."""
    out = []
    for j, c in enumerate(calls):
        w = f"{where}.tool_calls[{j}]"
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ToolCallError(f"{w}.function.name: required (a string)")
        args = fn.get("arguments", "{}")
        if isinstance(args, dict):
            args = json.dumps(args, ensure_ascii=False)
        if not isinstance(args, str):
            raise ToolCallError(f"{w}.function.arguments: must be a JSON string")
        cid = c.get("id")
        out.append((cid if isinstance(cid, str) else "", fn["name"], args))
    return out


def render_messages(messages: list, plan: ToolPlan | None, native: bool
                    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Chat messages as dicts for the chat template, and extra template arguments.

    ``native``: the template renders tools itself (``tools=``, assistant ``tool_calls``,
    ``role: "tool"``) in the call format above. Otherwise the tools go into the system prompt
    and calls and results are written as text: an assistant's calls in the call format after
    its content, tool results as a user message of ``<tool_response>`` blocks (consecutive
    results in one message, so user and assistant turns still alternate).
    """
    describe = plan is not None and plan.calls_expected
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        content = _text(m.content)
        if role == "assistant" and m.tool_calls:
            calls = _checked_calls(m.tool_calls, f"messages[{i}]")
            names.update({cid: name for cid, name, _ in calls if cid})
            if native:
                msg = {"role": "assistant", "content": content, "tool_calls": [
                    {"id": cid, "type": "function", "function": {"name": name, "arguments": _loads(args)}}
                    for cid, name, args in calls]}
            else:
                text = "\n".join(format_call(name, args) for _, name, args in calls)
                msg = {"role": "assistant", "content": f"{content}\n{text}" if content else text}
            out.append(msg)
            continue
        if role == "tool":
            if m.tool_call_id is None:
                raise ToolCallError(f"messages[{i}].tool_call_id: required for role 'tool'")
            name = m.name or names.get(m.tool_call_id)
            if native:
                msg = {"role": "tool", "content": content, "tool_call_id": m.tool_call_id}
                if name:
                    msg["name"] = name
                out.append(msg)
                continue
            block = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
            continue
        msg = {"role": role, "content": content}
        if m.name is not None:
            msg["name"] = m.name
        out.append(msg)
    for msg in out:
        msg.pop("_tool_results", None)
    kwargs: dict[str, Any] = {}
    if describe:
        if native:
            kwargs["tools"] = [t.openai() for t in plan.tools]
        else:
            block = _system_block(plan.tools)
            if out and out[0]["role"] == "system":
                out[0]["content"] = f"{out[0]['content']}\n\n{block}" if out[0]["content"] else block
            else:
                out.insert(0, {"role": "system", "content": block})
    return out, kwargs


def _loads(args: str) -> Any:
    try:
        return json.loads(args)
    except ValueError:
        return args


# ----------------------------------------------------------------- parsing the output
def _value_end(text: str, start: int) -> int | None:
    """End index of the JSON object or array starting at ``text[start]``; None while open."""
    depth, in_str, esc = 0, False, False
    for k in range(start, len(text)):
        c = text[k]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return k + 1
    return None


@dataclass
class ParsedCall:
    id: str
    name: str
    arguments: str = ""
    complete: bool = False

    def openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolCallParser:
    """Splits generated text into content and calls, incrementally: ``feed(text, final)``
    takes the whole text so far and returns what became known since the last call, as
    events ``("content", text)``, ``("start", call)``, ``("args", call, fragment)``.

    Content that might be the start of the trigger is held back until it is not; arguments
    stream as they are written (their end is found by bracket depth, strings respected).
    """

    content: list[str] = field(default_factory=list)
    calls: list[ParsedCall] = field(default_factory=list)
    _pos: int = 0
    _mode: str = "text"  # text | head | args | tail
    _args_start: int = 0
    _args_sent: int = 0
    _ws: str = ""  # held-back trailing whitespace of the content

    def feed(self, text: str, final: bool = False) -> list[tuple]:
        events: list[tuple] = []
        while True:
            before = (self._mode, self._pos, self._args_sent)
            self._step(text, final, events)
            if (self._mode, self._pos, self._args_sent) == before:
                return events

    def _emit_content(self, s: str, events: list[tuple]) -> None:
        """Content, but trailing whitespace waits for more text: the whitespace around calls
        is dropped (the same way whole and streamed)."""
        s = self._ws + s
        kept = s.rstrip()
        self._ws = s[len(kept):]
        if kept:
            self.content.append(kept)
            events.append(("content", kept))

    def _step(self, text: str, final: bool, events: list[tuple]) -> None:
        if self._mode == "text":
            k = text.find(TRIGGER, self._pos)
            if k >= 0:
                self._emit_content(text[self._pos:k], events)
                self._ws = ""
                self._pos, self._mode = k + len(TRIGGER), "head"
                return
            end = len(text)
            if not final:  # hold back a possible start of the trigger
                for n in range(min(len(TRIGGER) - 1, end - self._pos), 0, -1):
                    if TRIGGER.startswith(text[end - n:]):
                        end -= n
                        break
            self._emit_content(text[self._pos:end], events)
            self._pos = end
            if final and self._ws and not self.calls:
                self.content.append(self._ws)
                events.append(("content", self._ws))
                self._ws = ""
        elif self._mode == "head":
            m = _HEAD.match(text, self._pos)
            if m is None:
                if final:  # not a call after all: keep it as content
                    self._emit_content(TRIGGER + text[self._pos:], events)
                    self._pos, self._mode = len(text), "text"
                return
            try:
                name = json.loads(f'"{m.group(1)}"')
            except ValueError:
                name = m.group(1)
            call = ParsedCall(f"call_{uuid.uuid4().hex[:24]}", name)
            self.calls.append(call)
            events.append(("start", call))
            self._pos = self._args_start = self._args_sent = m.end()
            self._mode = "args"
        elif self._mode == "args":
            call = self.calls[-1]
            end = _value_end(text, self._args_start)
            stop = len(text) if end is None else end
            if stop > self._args_sent:
                frag = text[self._args_sent:stop]
                call.arguments += frag
                events.append(("args", call, frag))
                self._args_sent = stop
            if end is not None:
                self._pos, self._mode = end, "tail"
        elif self._mode == "tail":
            call = self.calls[-1]
            m = _TAIL.match(text, self._pos)
            if m is not None or final:
                call.complete = _is_json_object(call.arguments)
                self._pos = m.end() if m is not None else len(text)
                self._mode = "text"
                rest = text[self._pos:]
                if final and m is None and not CALL_END.startswith(rest.strip()):
                    self._emit_content(rest, events)

    def result(self) -> tuple[str | None, list[ParsedCall]]:
        """(content, calls) once ``feed(text, final=True)`` has run: the content outside the
        calls (None when empty and there are calls)."""
        content = "".join(self.content)
        return (content or None) if self.calls else content, self.calls

    @property
    def all_complete(self) -> bool:
        return bool(self.calls) and all(c.complete for c in self.calls)


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
