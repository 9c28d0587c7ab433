"""Write small random-weight llama GGUF files with gguf-py (ggml's own writer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A reasoning template, as Qwen3's: the answer opens a think block, or an
# empty one when enable_thinking is false.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)


def byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return [chr(c) for c in chars]


def write_tiny_llama(path: Path, weight_type: str, tied: bool = True, seed: int = 0,
                     thinking: bool = False) -> Path:
    """`thinking`: with <think> and </think> tokens and THINKING_TEMPLATE."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    qtype = Q[weight_type]
    rng = np.random.default_rng(seed)
    hidden, heads, kv_heads, ffn, layers = 64, 4, 2, 128, 2
    head_dim = hidden // heads
    merges = ["Ġ t", "h e", "Ġt he", "l l", "e ll"]
    tokens = byte_level_alphabet() + ["Ġt", "he", "Ġthe", "ll", "ell", "<|im_start|>", "<|im_end|>"]
    token_types = [1] * (len(tokens) - 2) + [3, 3]
    if thinking:
        tokens += ["<think>", "</think>"]
        token_types += [4, 4]  # user-defined: added tokens that decode as their text
    vocab = len(tokens)
    while vocab % 32:  # quantized rows need whole blocks of 32
        tokens.append(f"<pad{vocab}>")
        token_types.append(3)
        vocab += 1

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(THINKING_TEMPLATE if thinking else CHAT_TEMPLATE)

    def add(name, shape, scale=0.5, kind=None):
        array = (rng.standard_normal(shape) * scale).astype(np.float32)
        kind = qtype if kind is None else kind
        if kind == Q.F32:
            writer.add_tensor(name, array)
        elif kind == Q.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)

    add("token_embd.weight", (vocab, hidden), scale=1.0)
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", (hidden,), kind=Q.F32)
        add(f"blk.{i}.ffn_norm.weight", (hidden,), kind=Q.F32)
        add(f"blk.{i}.attn_q.weight", (heads * head_dim, hidden))
        add(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden))
        add(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden))
        add(f"blk.{i}.attn_output.weight", (hidden, heads * head_dim))
        add(f"blk.{i}.ffn_gate.weight", (ffn, hidden))
        add(f"blk.{i}.ffn_up.weight", (ffn, hidden))
        add(f"blk.{i}.ffn_down.weight", (hidden, ffn))
    add("output_norm.weight", (hidden,), kind=Q.F32)
    if not tied:
        add("output.weight", (vocab, hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
