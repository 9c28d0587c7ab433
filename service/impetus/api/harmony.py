"""gpt-oss's output (OpenAI's harmony format) parsed for every face, as
`api.output.OutputParser` parses `<think>` blocks and tool-call markers.

gpt-oss answers in messages on channels, after a prompt that ends with
`<|start|>assistant`:

    <|channel|>analysis<|message|>The user asks...<|end|>
    <|start|>assistant<|channel|>final<|message|>Paris.<|return|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Oslo"}<|call|>

`analysis` is reasoning (chat `reasoning_content`, Messages `thinking`,
Responses `reasoning`); `final` is the answer; `commentary` addressed to
`functions.NAME` is a tool call of NAME with the message as its JSON
arguments, and `commentary` to nobody is text for the user (harmony's
preambles). The recipient may come before the channel (`<|start|>assistant
to=functions.x<|channel|>commentary json<|message|>`). `<|return|>` and
`<|call|>` end the generation (they are end tokens, not text); `<|end|>`
ends one message and the next follows.

Headers are never shown: text is held from `<|start|>` or `<|channel|>` to
`<|message|>`, and a possible start of a marker is held until it is clear,
so a marker cut across tokens never reaches the client. Output that is not
harmony at all (no header where one should be) is passed on as text.
"""

from __future__ import annotations

import json
import re

from impetus.api import tools
from impetus.api.output import REASONING, TEXT, WholeOutput, add_part, held_back
from impetus.api.prompt import added_tokens

START, END, MESSAGE, CHANNEL = "<|start|>", "<|end|>", "<|message|>", "<|channel|>"
RETURN, CALL = "<|return|>", "<|call|>"
_BODY_ENDS = (END, RETURN, CALL, START)
_HEADER_LIMIT = 512  # characters of header without <|message|>: not harmony after all
_RECIPIENT = re.compile(r"to=(\S+?)(?=\s|<\||$)")


def is_harmony(tokenizer) -> bool:
    """Whether the tokenizer has harmony's header tokens (gpt-oss's)."""
    added = added_tokens(tokenizer)
    return all(marker in added for marker in (START, END, MESSAGE, CHANNEL))


class HarmonyParser(WholeOutput):
    """OutputParser's interface (feed, finish, whole, reasoning_tokens) over harmony."""

    def __init__(self, tokenizer, tool_mode: str | None = None, tool_list=None):
        self.tokenizer = tokenizer
        self.known = {t.function.name for t in tool_list or []} if tool_mode == "auto" else set()
        self.state = "header"  # "header" (to <|message|>), "body", "between" (after <|end|>, to <|start|>)
        self.header = ""
        self.kind = TEXT  # the current body's: REASONING, TEXT, or a call's recipient
        self.recipient: str | None = None
        self.pending = ""
        self.call_body = ""
        self.calls: list[dict] = []
        self.leftover = ""  # calls that were not calls: text at the end
        self.opened = False  # a message header was read: this is harmony
        self.reasoning_tokens = 0

    def feed(self, text: str, token: bool = True) -> list[tuple[str, str]]:
        if token and self.state == "body" and self.kind == REASONING:
            self.reasoning_tokens += 1
        parts: list[tuple[str, str]] = []
        self.pending += text
        while self.pending:
            if not getattr(self, f"_{self.state}")(parts):
                break
        return parts

    # Each state's step: True when it moved on (more of `pending` to read), False to wait for more text.

    def _header(self, parts) -> bool:
        self.header, self.pending = self.header + self.pending, ""
        index = self.header.find(MESSAGE)
        if index < 0:
            if len(self.header) > _HEADER_LIMIT:  # not harmony: what it wrote is text
                add_part(parts, TEXT, self.header)
                self.header, self.state = "", "plain"
            return False
        self._open(self.header[:index])
        self.header, self.pending, self.state = "", self.header[index + len(MESSAGE):], "body"
        return True

    def _open(self, header: str) -> None:
        """A message's header: its channel and recipient decide where its body goes."""
        self.opened = True
        channel = header.partition(CHANNEL)[2].split("<|")[0].split()
        channel = channel[0] if channel else ""
        found = _RECIPIENT.search(header)
        self.recipient = found.group(1) if found else None
        if self.recipient and self.recipient.startswith("functions."):
            self.kind, self.call_body = "call", ""
        else:
            self.kind = REASONING if channel == "analysis" else TEXT

    def _body(self, parts) -> bool:
        found = [(self.pending.find(m), m) for m in _BODY_ENDS if m in self.pending]
        if not found:
            keep = held_back(self.pending, _BODY_ENDS)
            self._deliver(parts, self.pending[:len(self.pending) - keep])
            self.pending = self.pending[len(self.pending) - keep:]
            return False
        index, marker = min(found)
        self._deliver(parts, self.pending[:index])
        self._close()
        self.pending = self.pending[index + len(marker):]
        self.state = "header" if marker == START else "between"
        return True

    def _between(self, parts) -> bool:
        index = self.pending.find(START)
        if index < 0:
            keep = held_back(self.pending, [START])
            self.pending = self.pending[len(self.pending) - keep:]
            return False
        self.pending, self.state = self.pending[index + len(START):], "header"
        return True

    def _plain(self, parts) -> bool:
        add_part(parts, TEXT, self.pending)
        self.pending = ""
        return False

    def _deliver(self, parts, text: str) -> None:
        if self.kind == "call":
            self.call_body += text
        else:
            add_part(parts, self.kind, text)

    def _close(self) -> None:
        """A message ended: a call's body becomes the call."""
        if self.kind != "call":
            return
        name = self.recipient.removeprefix("functions.")
        body, self.call_body = self.call_body.strip(), ""
        try:
            arguments = json.loads(body) if body else {}
        except ValueError:
            arguments = None
        if name in self.known and isinstance(arguments, dict):
            self.calls.append(tools.new_call(name, arguments))
        else:  # a call of no known function, or arguments that are not JSON: what it wrote stays text
            self.leftover += body
        self.kind = TEXT

    def finish(self, text: str = "") -> tuple[list[tuple[str, str]], list[dict]]:
        """What is still held (with the generation's last `text`) and the tool calls.
        The generation ended on <|return|> or <|call|> (end tokens), or ran out."""
        parts = self.feed(text, token=False) if text else []
        if self.state == "body":
            self._deliver(parts, self.pending)
            self._close()
        elif self.state == "plain" or (self.state == "header" and not self.opened):
            add_part(parts, TEXT, self.header + self.pending)  # never harmony: all of it is text
        self.pending = self.header = ""  # a header cut off by the token limit says nothing
        add_part(parts, TEXT, self.leftover)
        self.leftover = ""
        calls, self.calls = self.calls, []
        return parts, calls
