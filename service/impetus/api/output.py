"""One parser over a choice's generated text, shared by every protocol face
(chat completions, Messages, Responses): what the model thought apart from
what it answered, and the tool calls it made apart from its text.

- Reasoning: between the think markers mlx-lm's tokenizer wrapper knows
  (`<think>`/`</think>` and the others in `_infer_thinking`). A template
  that opens the think block itself (Qwen3 with enable_thinking, DeepSeek-R1
  distills, ...) leaves the prompt inside it, so the output starts as
  reasoning (`starts_thinking`, as mlx_lm.server decides it); a model that
  writes `<think>` itself switches to reasoning where it does. Reasoning is
  never mixed into the answer: chat puts it in `reasoning_content` (vLLM's
  and DeepSeek's field), Messages in `thinking` blocks, Responses in a
  `reasoning` item.
- gpt-oss's harmony channels: `api.harmony`'s parser, with this one's
  interface, chosen by `for_prompt`.
- Tool calls (api.tools): with tool_choice "auto" text streams until a call
  marker; from there the output is held and parsed into calls at the end.
  With a forced call all of the output is the (constrained) call.

A possible start of a marker is held back until it is clear, so a marker
never reaches the client as text. `feed` takes each token's text and returns
the parts it makes visible, `finish` the rest and the calls; `parsed_stream`
runs a generation through a parser for the faces that render whole parts
(Messages, Responses; chat streams per token, for its logprobs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from impetus.api import tools
from impetus.engine.request import TokenEvent

REASONING, TEXT = "reasoning", "text"
PING, QUEUED, CALL, END, ERROR = "ping", "queued", "call", "end", "error"


def think_markers(tokenizer) -> tuple[str, str] | None:
    if not getattr(tokenizer, "has_thinking", False):
        return None
    return tokenizer.think_start, tokenizer.think_end


def starts_thinking(tokenizer, prompt: list[int]) -> bool:
    """The prompt ends inside an open think block (the template opened it)."""
    if think_markers(tokenizer) is None:
        return False
    return tokenizer.rfind_think_start(prompt) > tokenizer.rfind_think_end(prompt)


def held_back(text: str, markers) -> int:
    """How many characters at the end of `text` may be the start of a marker."""
    return max((k for marker in markers for k in range(min(len(marker) - 1, len(text)), 0, -1)
                if text.endswith(marker[:k])), default=0)


def add_part(parts: list, kind: str, text: str) -> None:
    """`text` of `kind` after `parts`: one part with the last when of the same kind."""
    if not text:
        return
    if parts and parts[-1][0] == kind:
        parts[-1] = (kind, parts[-1][1] + text)
    else:
        parts.append((kind, text))


@dataclass
class Parsed:
    """A whole choice's output, parsed."""

    reasoning: str = ""
    text: str = ""
    calls: list[dict] = field(default_factory=list)


class WholeOutput:
    """A parser's `whole`: a non-streamed choice's output, parsed at once, from its `feed` and `finish`."""

    def whole(self, text: str) -> Parsed:
        parts = self.feed(text, token=False)
        more, calls = self.finish()
        parsed = Parsed(calls=calls)
        for kind, piece in parts + more:
            if kind == REASONING:
                parsed.reasoning += piece
            else:
                parsed.text += piece
        return parsed


class OutputParser(WholeOutput):
    def __init__(self, tokenizer, tool_mode: str | None = None, tool_list=None, thinking: bool = False):
        self.tokenizer = tokenizer
        self.tool_mode = tool_mode
        self.tool_list = tool_list
        # A forced call is constrained JSON from the first token: no reasoning.
        self.think = think_markers(tokenizer) if tool_mode != "forced" else None
        self.call_open = tools.markers(tokenizer)[0] if tool_mode == "auto" else None
        self.state = REASONING if thinking and self.think else TEXT
        self.pending = ""
        self.call_text = ""  # from a call marker on (auto); all of it (forced)
        self.after_reasoning = False  # the answer's leading blank lines after </think> are dropped
        self.reasoning_tokens = 0

    @classmethod
    def for_prompt(cls, tokenizer, prompt: list[int], tool_mode=None, tool_list=None) -> "OutputParser":
        """The parser for a prompt's output: gpt-oss's channels (api.harmony),
        unless a forced call constrains the output to JSON; else this one."""
        from impetus.api import harmony

        if tool_mode != "forced" and harmony.is_harmony(tokenizer):
            return harmony.HarmonyParser(tokenizer, tool_mode, tool_list)
        return cls(tokenizer, tool_mode, tool_list, thinking=starts_thinking(tokenizer, prompt))

    def feed(self, text: str, token: bool = True) -> list[tuple[str, str]]:
        """The parts (REASONING or TEXT, text) that `text` makes visible."""
        if token and self.state == REASONING:
            self.reasoning_tokens += 1
        if self.tool_mode == "forced" or self.call_text:
            self.call_text += text
            return []
        parts: list[tuple[str, str]] = []
        self.pending += text
        while self.pending:
            if self.state == REASONING:
                markers = [self.think[1]]
            else:
                markers = [m for m in (self.call_open, self.think and self.think[0]) if m]
            found = [(self.pending.find(m), m) for m in markers if m in self.pending]
            if not found:
                keep = held_back(self.pending, markers)
                self._emit(parts, self.pending[:len(self.pending) - keep])
                self.pending = self.pending[len(self.pending) - keep:]
                break
            index, marker = min(found)
            self._emit(parts, self.pending[:index])
            rest = self.pending[index + len(marker):]
            self.pending = ""
            if marker == self.call_open:
                self.call_text = marker + rest
                break
            if self.state == REASONING:
                self.state, self.after_reasoning = TEXT, True
            else:
                self.state = REASONING
            self.pending = rest
        return parts

    def _emit(self, parts: list, text: str) -> None:
        if self.state == TEXT and self.after_reasoning:
            text = text.lstrip()
            self.after_reasoning = not text
        add_part(parts, self.state, text)

    def finish(self, text: str = "") -> tuple[list[tuple[str, str]], list[dict]]:
        """The parts still held (with the generation's last `text`) and the tool calls."""
        parts = self.feed(text, token=False) if text else []
        self._emit(parts, self.pending)
        self.pending = ""
        calls: list[dict] = []
        if self.tool_mode == "forced":
            calls = tools.parse_forced(self.call_text)
            if not calls:  # cut off by max_tokens: what it wrote stays text
                self._emit(parts, self.call_text)
        elif self.call_text:
            calls, leftover = tools.parse_auto(self.call_text, self.tokenizer, self.tool_list)
            self._emit(parts, leftover)
        self.call_text = ""
        return parts, calls


def parsed_stream(gen, parser: OutputParser, heartbeat: float | None = None):
    """A one-choice generation as what a face renders, in order: (REASONING
    or TEXT, text) as it becomes visible, (CALL, call) for each tool call,
    then (END, finish); or (ERROR, finish) when the engine failed,
    (PING, None) after each `heartbeat` seconds of silence, and (QUEUED,
    Queued) while it waits for a batch slot."""
    for index, event in gen.events(heartbeat=heartbeat):
        if event is None:
            yield PING, None
        elif index is None:
            yield QUEUED, event
        elif isinstance(event, TokenEvent):
            yield from parser.feed(event.text)
        elif event.reason == "error":
            yield ERROR, event
            return
        else:
            parts, calls = parser.finish(event.text)
            yield from parts
            for call in calls:
                yield CALL, call
            yield END, event
