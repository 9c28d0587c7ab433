"""A tiny gpt-oss that answers in harmony's channels, by construction.

Random weights never write `<|channel|>analysis<|message|>...`, so the
model is built to: every block's output projections are zero (attention's
`attn_output` and the experts' `ffn_down_exps`), which leaves each
position's last hidden state its token's embedding, and the output matrix
maps each token of a script to the next one (a bigram table over random,
nearly orthogonal embeddings: the right logit is 30, the others about 0 ±
4). Greedy decoding then writes the script after the prompt's last token
(the "t" of `<|start|>assistant`), whatever came before, and ends on the
script's end token. The script's pieces cut harmony's markers mid-way
("<|chan" + "nel|>analysis<|mess" + "age|>"), as tokens may.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tiny_gguf import byte_to_char, write_tiny

MARKERS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>"]
HEADER = ["<|chan", "nel|>analysis<|mess", "age|>"]
THINK = HEADER + ["Thinking", " hard.", "<|end|><|start|>assistant<|channel|>final<|message|>", "Par", "is."]
TOOL = HEADER + ["Need", " weather.",
                 "<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>",
                 '{"city":', ' "Oslo"}']
SCRIPTS = {"oss-think": (THINK, "<|return|>"), "oss-tools": (TOOL, "<|call|>")}

# gpt-oss's template, cut down to what the tests use (its own is 300 lines of Jinja).
TEMPLATE = """{%- set ns = namespace(last="") -%}
<|start|>system<|message|>You are a tiny test of harmony.
Reasoning: {{ reasoning_effort | default("medium") }}

# Valid channels: analysis, commentary, final.<|end|>
{%- if tools %}<|start|>developer<|message|># Tools

namespace functions {
{%- for t in tools %}
type {{ t.function.name }} = (_: {{ t.function.parameters | tojson }}) => any;
{%- endfor %}
} // namespace functions<|end|>
{%- endif %}
{%- for m in messages %}
{%- if m.role in ("system", "developer") %}<|start|>developer<|message|># Instructions

{{ m.content }}<|end|>
{%- elif m.role == "user" %}<|start|>user<|message|>{{ m.content }}<|end|>
{%- elif m.role == "assistant" and m.tool_calls %}
{%- for c in m.tool_calls %}{% set ns.last = c.function.name %}<|start|>assistant<|channel|>commentary \
to=functions.{{ c.function.name }} <|constrain|>json<|message|>{{ c.function.arguments | tojson }}<|call|>{% endfor %}
{%- elif m.role == "assistant" %}<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>
{%- elif m.role == "tool" %}<|start|>functions.{{ ns.last }} to=assistant<|channel|>commentary<|message|>\
{{ m.content }}<|end|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start|>assistant{% endif %}"""


def byte_level(text: str) -> str:
    """A piece of text as a byte-level BPE vocabulary writes it (" " is "Ġ")."""
    alphabet = byte_to_char()
    return "".join(alphabet[b] for b in text.encode())


def write_harmony(path: Path, script: list[str], end: str) -> Path:
    """A tiny gpt-oss whose greedy answer to any chat prompt is `script`, then `end`."""
    pieces = sorted({byte_level(p) for s, _ in SCRIPTS.values() for p in s})  # the same vocabulary for all
    extra = [(m, 3) for m in MARKERS] + [(p, 1) for p in pieces]
    embedding = {}

    def weights(name: str, array: np.ndarray, tokens: list[str]) -> np.ndarray:
        if name == "token_embd.weight":
            embedding["e"] = array
        if name.endswith(("attn_output.weight", "attn_output.bias", "ffn_down_exps.weight", "ffn_down_exps.bias")):
            return np.zeros_like(array)
        if name == "output_norm.weight":
            return np.ones_like(array)
        if name == "output.weight":
            e = embedding["e"]
            unit = e / np.sqrt((e * e).mean(-1, keepdims=True) + 1e-5)  # what the final norm makes of it
            chain = [byte_level("t")] + [byte_level(p) for p in script] + [end]
            table = np.zeros_like(array)
            for before, after in zip(chain, chain[1:]):
                table[tokens.index(after)] += 30.0 * unit[tokens.index(before)] / e.shape[1]
            return table
        return array

    return write_tiny(path, "gpt-oss", "F32", extra_tokens=extra, template=TEMPLATE, weights=weights, context=2048)
