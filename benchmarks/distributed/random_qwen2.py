"""A random-weight Qwen2 model with SmolLM2-135M's shapes (576 wide, 30
layers, 9 query and 3 KV heads, 49,152 tokens) and SmolLM2's tokenizer:
the default model's architecture (llama) has no pipeline split in mlx-lm,
Qwen2 has one, and pipeline speed depends on shapes, not on the weights.
`python random_qwen2.py SMOLLM2_FOLDER OUT_FOLDER`"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.models import qwen2


def main() -> None:
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    config = {"model_type": "qwen2", "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
              "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "vocab_size": 49152,
              "rope_theta": 100000.0, "max_position_embeddings": 8192, "tie_word_embeddings": True}
    mx.random.seed(0)
    model = qwen2.Model(qwen2.ModelArgs.from_dict(config))
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    # sharded_load's pipeline path reads the index to fetch only a rank's files.
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {name: "model.safetensors" for name in weights}}))
    (out / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, out / name)


if __name__ == "__main__":
    main()
