"""Ollama's /api/chat and /api/generate: another face over the chat core, as
the Messages API is (api.ollama_schemas turns each request into a chat
request; `chat.prepare` makes its prompt; the output parser splits thinking,
answer and tool calls). Everything a key has elsewhere holds here: its
models, limits, budget, usage, place in the fair queue.

Answers are Ollama's: whole, or (the default) newline-delimited JSON, one
object per piece and a last one with `done`, `done_reason` and the counts
and durations in nanoseconds. Errors are Ollama's `{"error": "..."}`
(api.errors). A model name with a tag (`smollm2-135m-instruct:latest`, as
/api/tags lists it) finds the model it names (`resolve_name`).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from pydantic import ValidationError

from impetus.api import fim
from impetus.api.budget import output_budget, sampling_params, with_defaults
from impetus.api.chat import prepare
from impetus.api.errors import from_validation_error
from impetus.api.generation_resource import GenerationResource, engine_for
from impetus.api.models import model_defaults
from impetus.api.ollama_schemas import OllamaChatRequest, OllamaGenerateRequest, keep_alive_seconds
from impetus.api.output import CALL, END, ERROR, REASONING, TEXT, OutputParser, parsed_stream
from impetus.api.validation import parse
from impetus.web import bad_request

NDJSON = "application/x-ndjson"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def resolve_name(names, model: str) -> str:
    """A model name as an Ollama client sends it: as it is, without ":latest"
    (how /api/tags lists a name without a tag), or with its tag's ":" as "-"
    (how `impetus models import ollama:qwen3:8b` names it)."""
    for candidate in (model, model.removesuffix(":latest"), model.replace(":", "-")):
        if candidate in names:
            return candidate
    return model


def chat_names(host) -> set[str]:
    return {entry.name for entry in host.available()}


def keep_alive(host, name: str, value) -> float | None:
    """Ollama's keep_alive to the loader: how long the model stays loaded
    when idle (negative: pinned); 0 unloads it after this request."""
    try:
        seconds = keep_alive_seconds(value)
    except ValueError as error:
        raise bad_request(str(error), param="keep_alive") from None
    if seconds is not None and seconds != 0:
        host.load(name, pin=True if seconds < 0 else None, keep_alive_s=seconds if seconds > 0 else None)
    return seconds


def counts(gen, finish) -> dict:
    """Ollama's counts and durations (nanoseconds)."""
    total, prompt, decode = gen.durations()
    return {"total_duration": int(total * 1e9), "load_duration": 0, "prompt_eval_count": gen.prompt_tokens,
            "prompt_eval_duration": int(prompt * 1e9), "eval_count": finish.completion_tokens if finish else 0,
            "eval_duration": int(decode * 1e9)}


def ollama_call(call: dict) -> dict:
    return {"function": {"name": call["function"]["name"], "arguments": json.loads(call["function"]["arguments"])}}


def done_reason(finish) -> str:
    """Ollama's: "stop" or "length" (a cancelled or tool-calling answer stopped)."""
    return finish.reason if finish.reason in ("stop", "length") else "stop"


def ndjson(lines):
    for line in lines:
        yield json.dumps(line, separators=(",", ":")).encode() + b"\n"


class _OllamaResource(GenerationResource):
    """What /api/chat and /api/generate share: the answer, whole or as NDJSON."""

    def piece(self, kind: str, value) -> dict:
        """What a piece of the answer is in this route's objects."""
        raise NotImplementedError

    def whole(self, parsed) -> dict:
        """A whole answer (api.output.Parsed) in this route's objects."""
        raise NotImplementedError

    def loaded(self, resp, model: str, engine, seconds, empty: dict) -> None:
        """The answer to a request with nothing to answer: the model is loaded (or, keep_alive 0, unloaded)."""
        if seconds == 0:
            self.host.unload(engine.loaded.name)
        resp.media = {"model": model, "created_at": now_iso(), **empty, "done": True,
                      "done_reason": "unload" if seconds == 0 else "load"}

    def start(self, req, body):
        """The request as a chat request with the model's defaults, the model's
        engine (found by its tagged name), and keep_alive in seconds. The
        answer names the model as the request did, as Ollama's does."""
        name = resolve_name(chat_names(self.host), body.model)
        try:
            chat = body.to_chat().model_copy(update={"model": name})
        except ValidationError as error:
            raise from_validation_error(error) from None
        chat = with_defaults(chat, self.settings, model_defaults(self.host, name))
        engine = engine_for(self.host, name, req.context.account)
        return chat, engine, keep_alive(self.host, engine.loaded.name, body.keep_alive)

    def send(self, req, resp, gen, parser, stream: bool, model: str, unload: bool) -> None:
        head = {"model": model, "created_at": now_iso()}
        if stream:
            resp.content_type = NDJSON
            resp.set_header("X-Accel-Buffering", "no")
            resp.stream = ndjson(self._lines(gen, parser, head, unload))
            return
        [choice] = gen.collect()
        resp.media = {**head, **self.whole(parser.whole(choice.text)), "done": True,
                      "done_reason": done_reason(choice.finish), **counts(gen, choice.finish)}
        self._after(gen, unload)

    def _lines(self, gen, parser, head, unload):
        try:
            for kind, value in parsed_stream(gen, parser):
                if kind == ERROR:
                    yield {"error": "Generation failed inside the engine."}
                    return
                if kind == END:
                    yield {**head, **self.piece(TEXT, ""), "done": True, "done_reason": done_reason(value),
                           **counts(gen, value)}
                elif kind in (TEXT, REASONING, CALL):
                    yield {**head, **self.piece(kind, value), "done": False}
        finally:
            gen.close()
            self._after(gen, unload)

    def _after(self, gen, unload: bool) -> None:
        if unload:  # keep_alive 0: out of memory once answered, as Ollama does
            try:
                self.host.unload(gen.engine.loaded.name)
            except Exception:
                pass


class OllamaChatResource(_OllamaResource):
    route, id_prefix = "ollama-chat", "ollama"

    def piece(self, kind: str, value) -> dict:
        message = {"role": "assistant", "content": value if kind == TEXT else ""}
        if kind == REASONING:
            message["thinking"] = value
        if kind == CALL:
            message["tool_calls"] = [ollama_call(value)]
        return {"message": message}

    def whole(self, parsed) -> dict:
        message = {"role": "assistant", "content": parsed.text}
        if parsed.reasoning:
            message["thinking"] = parsed.reasoning
        if parsed.calls:
            message["tool_calls"] = [ollama_call(call) for call in parsed.calls]
        return {"message": message}

    def on_post(self, req, resp):
        body = parse(OllamaChatRequest, req.context.json)
        chat, engine, seconds = self.start(req, body)
        if not body.messages:  # Ollama's load (or unload) request
            self.loaded(resp, body.model, engine, seconds, {"message": {"role": "assistant", "content": ""}})
            return
        self.admit(req, resp, chat, engine)
        prompt, params, tool_mode, media = prepare(resp, engine, self.settings, chat, chat.max_tokens, "messages",
                                                   "options.num_predict", overflow="clamp")
        gen = self.generation(req, resp, engine, [prompt], [params], prompt_tokens=len(prompt), media=media)
        parser = OutputParser.for_prompt(engine.tokenizer, prompt, tool_mode, chat.tools)
        self.send(req, resp, gen, parser, body.stream, body.model, seconds == 0)


class OllamaGenerateResource(_OllamaResource):
    route, id_prefix = "ollama-generate", "ollama"

    def piece(self, kind: str, value) -> dict:
        if kind == REASONING:
            return {"response": "", "thinking": value}
        return {"response": value if kind == TEXT else ""}

    def whole(self, parsed) -> dict:
        return {"response": parsed.text, **({"thinking": parsed.reasoning} if parsed.reasoning else {})}

    def on_post(self, req, resp):
        body = parse(OllamaGenerateRequest, req.context.json)
        if body.template:
            raise bad_request("template is an Ollama Go template, which is not run here: the model's own chat "
                              "template is used (or send raw: true with the whole prompt).", param="template")
        chat, engine, seconds = self.start(req, body)
        if not body.prompt and body.suffix is None and not body.images:  # Ollama's load (or unload) request
            self.loaded(resp, body.model, engine, seconds, {"response": ""})
            return
        self.admit(req, resp, chat, engine)
        tokenizer = engine.tokenizer
        media = None
        if body.suffix is not None or body.raw:
            prompt, params = self._plain(resp, engine, body, chat)
            parser = OutputParser(tokenizer)
        else:
            prompt, params, tool_mode, media = prepare(resp, engine, self.settings, chat, chat.max_tokens, "prompt",
                                                       "options.num_predict", overflow="clamp")
            parser = OutputParser.for_prompt(tokenizer, prompt, tool_mode, None)
        gen = self.generation(req, resp, engine, [prompt], [params], prompt_tokens=len(prompt), media=media,
                              autocomplete=body.suffix is not None)
        self.send(req, resp, gen, parser, body.stream, body.model, seconds == 0)

    def _plain(self, resp, engine, body, chat):
        """A raw prompt's tokens as they are, or fill-in-the-middle's with `suffix`."""
        tokenizer = engine.tokenizer
        stops: list[str] = []
        points: list[int] = []
        if body.suffix is not None:
            fmt = fim.require(tokenizer, engine.loaded.config, engine.loaded.name, param="suffix")
            room = fim.room(engine, chat.max_tokens or self.settings.default_max_tokens)
            prompt, points = fim.fim_prompt(tokenizer, fmt, fim.Infill(body.prompt, body.suffix), room)
            stops = fim.stop_markers(fmt)
        else:
            prompt = list(tokenizer.encode(body.prompt))
        max_tokens = output_budget(resp, engine, self.settings, len(prompt), chat.max_tokens, "prompt",
                                   "options.num_predict", overflow="clamp")
        params = sampling_params(chat, max_tokens, engine, logprobs=False, top_logprobs=0)
        params.stop = list(params.stop) + stops
        params.keep_prefixes = points
        return prompt, params

