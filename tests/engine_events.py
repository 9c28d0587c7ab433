"""Reading a request's answer from the engine without HTTP (the engine tests)."""

from __future__ import annotations

from impetus.engine.request import FinishEvent, TokenEvent


def tokens_of(handle, timeout: float = 300) -> tuple[list[int], FinishEvent]:
    """The tokens a request generated, and how it ended."""
    tokens = []
    for event in handle.events(timeout=timeout):
        if isinstance(event, TokenEvent):
            tokens.append(event.token)
        else:
            return tokens, event
    raise AssertionError("no finish event")
