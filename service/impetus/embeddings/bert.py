"""A BERT encoder in mlx.nn, with parameter names matching Hugging Face's
`BertModel`, so a sentence-transformers folder's model.safetensors loads as it
is (all-MiniLM-L6-v2 and the other BERT-family embedding models)."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn


@dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @classmethod
    def from_dict(cls, config: dict) -> "BertConfig":
        return cls(**{k: config[k] for k in cls.__dataclass_fields__ if k in config})


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, input_ids: mx.array) -> mx.array:
        positions = mx.arange(input_ids.shape[1])[None]
        # One segment: token type 0 everywhere, as sentence-transformers encodes.
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        b, n, d = x.shape

        def split(t):
            return t.reshape(b, n, self.heads, d // self.heads).transpose(0, 2, 1, 3)

        out = mx.fast.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                                   scale=(d // self.heads) ** -0.5, mask=mask)
        return out.transpose(0, 2, 1, 3).reshape(b, n, d)


class DenseNorm(nn.Module):
    """Projection, residual, LayerNorm: BERT's `*.output` blocks."""

    def __init__(self, in_dims: int, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(in_dims, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = SelfAttention(config)
        self.output = DenseNorm(config.hidden_size, config)

    def __call__(self, x, mask):
        return self.output(self.self(x, mask), x)


# erf as a rational function (Eigen's float32 approximation, max error 5e-7 against
# mx.erf): MLX's CPU erf is slow, 73 ms for a 32x64x1536 activation where a
# multiply takes 1.5 ms; this takes 22 ms, and GELU was half of each layer's time.
_ERF_NUMERATOR = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
                  -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_DENOMINATOR = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                    -7.37332916720468e-03, -1.42647390514189e-02)


def erf(x: mx.array) -> mx.array:
    x = mx.clip(x, -4.0, 4.0)  # beyond, erf is ±1 in float32
    x2 = x * x
    p = _ERF_NUMERATOR[0]
    for c in _ERF_NUMERATOR[1:]:
        p = p * x2 + c
    q = _ERF_DENOMINATOR[0]
    for c in _ERF_DENOMINATOR[1:]:
        q = q * x2 + c
    return x * p / q


def gelu(x: mx.array) -> mx.array:
    """The exact (erf) GELU, as Hugging Face's "gelu"."""
    return x * (1 + erf(x * 0.7071067811865476)) * 0.5


class Intermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        # Hugging Face's "gelu" is the exact (erf) form; "gelu_new" the tanh approximation.
        self.act = nn.gelu_approx if config.hidden_act in ("gelu_new", "gelu_pytorch_tanh") else gelu

    def __call__(self, x):
        return self.act(self.dense(x))


class Layer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = DenseNorm(config.intermediate_size, config)

    def __call__(self, x, mask):
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = [Layer(config) for _ in range(config.num_hidden_layers)]

    def __call__(self, x, mask):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class Bert(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array) -> mx.array:
        """Hidden states [batch, tokens, hidden]; padding (mask 0) is never attended to."""
        additive = mx.where(attention_mask[:, None, None, :].astype(mx.bool_), 0.0, -1e9).astype(mx.float32)
        return self.encoder(self.embeddings(input_ids), additive)

    @staticmethod
    def sanitize(weights: dict) -> dict:
        """Hugging Face names, without a `bert.` prefix, without the pooler and
        buffers that the encoder does not use."""
        out = {}
        for name, value in weights.items():
            name = name.removeprefix("bert.")
            if name.startswith(("pooler.", "cls.")) or name.endswith("position_ids"):
                continue
            out[name] = value
        return out
