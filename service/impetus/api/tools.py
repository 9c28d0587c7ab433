"""Tool calling for chat completions: the tools go into the prompt, the model's
output comes back as OpenAI `tool_calls`.

The model's chat template decides the format where it knows tools: mlx-lm
reads the template's tool-call markers and parser (Qwen's `<tool_call>` JSON,
Mistral's, ...) and the tools are handed to the template. A template that
knows no tools (SmolLM2's) gets them described in the system message, before
the system prompt (shared by everybody), in the common Hermes form, with
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` as the way to call one; earlier calls and their results are written back into
the conversation the same way.

- tool_choice "auto" (the default with tools): the model writes freely; text
  is streamed as it comes, and from a call marker on the output is held and
  parsed into tool calls at the end (api.output, for every protocol).
- "required" or a named function: the output is constrained (llguidance) to
  a JSON call of one of the allowed functions with arguments valid against
  its parameters schema, so even the 135M default model calls correctly.
- "none": the tools are described, but the output is only text.
"""

from __future__ import annotations

import json
import uuid

from impetus.web import bad_request

DEFAULT_MARKERS = ("<tool_call>", "</tool_call>")
NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


def mode(body) -> str | None:
    """None (no tools, or "none"), "auto" or "forced"."""
    if not body.tools or body.tool_choice == "none":
        return None
    return "auto" if body.tool_choice in (None, "auto") else "forced"


def template_knows_tools(tokenizer) -> bool:
    """The template renders tools and calls itself: mlx-lm found its call
    markers, or it is gpt-oss's (harmony: calls are messages to functions.NAME)."""
    from impetus.api.harmony import is_harmony

    return bool(getattr(tokenizer, "has_tool_calling", False)) or is_harmony(tokenizer)


def markers(tokenizer) -> tuple[str, str]:
    if template_knows_tools(tokenizer):
        return tokenizer.tool_call_start, tokenizer.tool_call_end
    return DEFAULT_MARKERS


def _tool_json(tool) -> dict:
    function = tool.function
    return {"type": "function", "function": {"name": function.name, "description": function.description or "",
                                             "parameters": function.parameters or NO_ARGUMENTS}}


def _arguments(call) -> dict:
    try:
        value = json.loads(call.function.arguments or "{}")
    except ValueError:
        raise bad_request(f"tool call '{call.id}' has arguments that are not JSON.", param="messages") from None
    return value if isinstance(value, dict) else {"value": value}


def conversation(messages, tools, tokenizer, tools_first: bool = True, marker: str | None = None
                 ) -> tuple[list[dict], dict]:
    """The messages as the chat template takes them, and extra template
    arguments (`tools=` for a template that knows tools). `tools_first`:
    described tools before the system prompt (else after it). `marker`: a
    vision model's image text (models.vision): each image becomes it, and
    every content is a list of parts, as VLM templates take it (SmolVLM's
    cannot read a string)."""
    out, extra = _conversation(messages, tools, tokenizer, tools_first, marker or "")
    if marker is not None:
        out = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in out]
    return out, extra


def _conversation(messages, tools, tokenizer, tools_first: bool, marker: str) -> tuple[list[dict], dict]:
    native = template_knows_tools(tokenizer)
    open_, close = markers(tokenizer)
    out: list[dict] = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role  # few templates know "developer"
        if m.role == "assistant" and m.tool_calls:
            if native:
                out.append({"role": "assistant", "content": m.text(marker), "tool_calls": [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.function.name, "arguments": _arguments(c)}} for c in m.tool_calls]})
            else:
                calls = "".join(f"{open_}{json.dumps({'name': c.function.name, 'arguments': _arguments(c)})}{close}"
                                for c in m.tool_calls)
                out.append({"role": "assistant", "content": m.text(marker) + calls})
        elif m.role == "tool" and not native:
            out.append({"role": "user", "content": f"<tool_response>\n{m.text(marker)}\n</tool_response>"})
        elif m.role == "tool":
            out.append({"role": "tool", "content": m.text(marker), "tool_call_id": m.tool_call_id})
        else:
            out.append({"role": role, "content": m.text(marker)})
    if not tools:
        return out, {}
    if native:
        return out, {"tools": [_tool_json(t) for t in tools]}
    # The tools first, then the system prompt: the tools are the same for
    # everybody, the instructions after them are not (Claude Code's name the
    # user's memory folder 3,562 characters in, before its 61,512 characters
    # of tool definitions), so this order lets one person's session start
    # from another's tools in the prefix cache.
    instructions = described(tools, tokenizer)
    if out and out[0]["role"] == "system":
        parts = [instructions, out[0]["content"]] if tools_first else [out[0]["content"], instructions]
        out[0] = {**out[0], "content": "\n\n".join(parts)}
    else:
        out.insert(0, {"role": "system", "content": instructions})
    return out, {}


def described(tools, tokenizer) -> str:
    """The tools as a template without tools of its own is told of them (Hermes' form)."""
    open_, close = markers(tokenizer)
    listed = "\n".join(json.dumps(_tool_json(t)) for t in tools)
    return ("You can call these functions:\n<tools>\n" + listed + "\n</tools>\n"
            f"To call a function, reply with only {open_}{{\"name\": <function name>, "
            f"\"arguments\": <arguments as a JSON object>}}{close}. Otherwise answer normally.")


def closed(parameters: dict | None) -> dict:
    """A function's parameters schema, with no arguments beyond the declared
    ones unless it says otherwise: a function called with an extra keyword
    fails, and a small model invents them (LangChain's schemas leave
    additionalProperties out)."""
    if not parameters:
        return NO_ARGUMENTS
    if "properties" in parameters and "additionalProperties" not in parameters:
        return {**parameters, "additionalProperties": False}
    return parameters


def call_schema(tools, tool_choice) -> dict:
    """The JSON schema of one allowed call: {"name": ..., "arguments": {...}}."""
    if not isinstance(tool_choice, str):  # a named function
        tools = [t for t in tools if t.function.name == tool_choice.function.name]
    options = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                "properties": {"name": {"const": t.function.name},
                               "arguments": closed(t.function.parameters)}} for t in tools]
    return options[0] if len(options) == 1 else {"anyOf": options}


def new_call(name: str, arguments) -> dict:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": text}}


def parse_forced(text: str) -> list[dict]:
    """The constrained output: one JSON call (nothing when cut off by max_tokens)."""
    try:
        call = json.loads(text)
    except ValueError:
        return []
    return [new_call(call["name"], call["arguments"])]


def parse_auto(call_text: str, tokenizer, tools) -> tuple[list[dict], str]:
    """Tool calls between markers; anything that does not parse as a call of a
    known function stays text (returned second)."""
    open_, close = markers(tokenizer)
    parser = getattr(tokenizer, "tool_parser", None) if template_knows_tools(tokenizer) else None
    known = {t.function.name for t in tools}
    calls, leftover = [], ""
    rest = call_text
    while open_ in rest:
        before, _, after = rest.partition(open_)
        leftover += before
        inside, found_close, rest = after.partition(close)
        try:
            parsed = parser(inside, [_tool_json(t) for t in tools]) if parser else json.loads(inside.strip())
            name, arguments = parsed["name"], parsed.get("arguments", {})
        except Exception:
            name = None
        if name not in known:  # not a call of a known function: keep what the model wrote
            leftover += open_ + inside + (close if found_close else "")
            continue
        calls.append(new_call(name, arguments))
    return calls, leftover + rest
