"""A chat request's prompt: its tokens, and the points where prompts part.

`render_chat` turns the messages (and tools) into tokens with the model's
chat template. `prefix_points` says where in those tokens other prompts are
likely to part from this one: after the tools (the same for everybody, put
first by `tools.conversation` where Impetus describes them), after the
system prompt (the same for every turn of a session), and before the last
token (the next turn starts with this prompt). The engine keeps the KV cache
at those points in its prefix cache as it computes the prompt
(`SamplingParams.keep_prefixes`): a model whose cache cannot be cut back
(Gemma 3's sliding-window layers) can only share what was kept at a point.
Measured with two people's Claude Code sessions on Gemma 3 270M: the second
person's first request read 0 of its 20,549 prompt tokens from the cache
without them. Each point costs one more rendering of the prompt's start (a
few milliseconds for 20k tokens), so only prompts of at least
`prefix_checkpoint_min_tokens` get them.
"""

from __future__ import annotations

from impetus.api import tools
from impetus.web import bad_request

# Template arguments the server sets itself; chat_template_kwargs may not.
RESERVED_TEMPLATE_ARGUMENTS = {"conversation", "messages", "tools", "add_generation_prompt", "tokenize",
                               "return_dict", "continue_final_message", "documents", "chat_template"}


def added_tokens(tokenizer) -> frozenset[str]:
    """The tokenizer's added tokens (markers such as FIM's and harmony's), read
    once per loaded tokenizer: requests ask on every call (api.fim, api.harmony)."""
    found = getattr(tokenizer, "_impetus_added_tokens", None)
    if found is None:
        try:
            found = frozenset(tokenizer._tokenizer.get_added_vocab())
        except Exception:
            found = frozenset()
        try:
            tokenizer._impetus_added_tokens = found
        except Exception:
            pass
    return found


def render_chat(tokenizer, messages, tool_list=None, template_kwargs: dict | None = None,
                tools_first: bool = True, marker: str | None = None) -> list[int] | str:
    """The prompt's tokens; `template_kwargs` (chat_template_kwargs, e.g.
    {"enable_thinking": false}) go to the template as they are; `tools_first`:
    IMPETUS_TOOLS_BEFORE_SYSTEM. With a vision model's image `marker`: the
    prompt's text, each image as the marker, for the model's processor
    (models.vision.Vision.prepare) to make tokens of."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise bad_request("This model has no chat template (a base model): use /v1/completions, or attach a "
                          "template with `impetus models alias MODEL --chat-template FILE`.", param="model",
                          code="model_has_no_chat_template")
    reserved = RESERVED_TEMPLATE_ARGUMENTS.intersection(template_kwargs or {})
    if reserved:
        raise bad_request(f"chat_template_kwargs may not set {', '.join(sorted(reserved))}; the server does.",
                          param="chat_template_kwargs")
    conversation, extra = tools.conversation(messages, tool_list, tokenizer, tools_first, marker)
    try:
        if marker is not None:
            return tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False,
                                                 **{**(template_kwargs or {}), **extra})
        return _tokens(tokenizer, conversation, True, {**(template_kwargs or {}), **extra})
    except Exception as error:  # the template itself rejects the conversation
        raise bad_request(f"The model's chat template rejected the messages: {error}", param="messages")


def _tokens(tokenizer, conversation: list[dict], generation_prompt: bool, kwargs: dict) -> list[int]:
    tokens = tokenizer.apply_chat_template(conversation, add_generation_prompt=generation_prompt, tokenize=True,
                                           **kwargs)
    if isinstance(tokens, dict):  # some transformers versions return a BatchEncoding
        tokens = tokens["input_ids"]
    return list(tokens)


def prefix_points(tokenizer, messages, tool_list, template_kwargs: dict | None, prompt: list[int],
                  shortest: int, tools_first: bool = True, marker: str | None = None) -> list[int]:
    """Prompt lengths (at least `shortest` tokens) where other prompts are
    likely to part from this one, found as mlx_lm.server finds its system
    prompt's end: the start of the conversation rendered alone, followed by an
    empty user turn, agrees with the prompt up to there."""
    if len(prompt) <= shortest:
        return []
    conversation, extra = tools.conversation(messages, tool_list, tokenizer, tools_first, marker)
    kwargs = {**(template_kwargs or {}), **extra}
    starts = []
    if tool_list and not extra and tools_first:  # the tools, described by us before the system prompt
        described = tools.described(tool_list, tokenizer)
        starts.append([{"role": "system", "content": [{"type": "text", "text": described}]
                        if marker is not None else described}])
    systems = next((i for i, m in enumerate(conversation) if m["role"] != "system"), len(conversation))
    if systems:
        starts.append(conversation[:systems])
    points = {len(prompt) - 1}
    for start in starts:
        try:
            empty = [{"type": "text", "text": ""}] if marker is not None else ""
            alone = _tokens(tokenizer, start + [{"role": "user", "content": empty}], False, kwargs)
        except Exception:  # a template that wants more than a start: no point there
            continue
        points.add(next((i for i, (a, b) in enumerate(zip(alone, prompt)) if a != b), min(len(alone), len(prompt))))
    return sorted(p for p in points if shortest <= p < len(prompt))
