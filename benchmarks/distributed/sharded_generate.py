"""Generation with mlx-lm split over processes on MLX's ring backend, one
process per rank: `mlx.launch -n N --python PYTHON
benchmarks/distributed/sharded_generate.py MODEL_FOLDER [TOKENS] [tensor|pipeline]`
(on one machine over loopback, or across Macs with --hosts / --hostfile).
- tensor: each rank keeps 1/N of every attention and MLP matrix (mlx-lm's
  `model.shard(group)`); the ranks all-reduce twice per layer per token;
- pipeline: each rank keeps 1/N of the layers (`model.model.pipeline(group)`)
  and passes the hidden state on once per token per boundary.
Rank 0 prints the text and the tokens/s as one JSON line; with N=1 it is the
single-process baseline on the same code path.

Used by docs/distributed.md; not part of the server.
"""

from __future__ import annotations

import json
import sys
import time

import mlx.core as mx
from mlx_lm.generate import stream_generate
from mlx_lm.utils import load_model, load_tokenizer

from impetus.models.loader import cast_model
from impetus.system.blas import preload_openblas


def main() -> None:
    path = sys.argv[1]
    max_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    mode = sys.argv[3] if len(sys.argv) > 3 else "tensor"
    preload_openblas()
    group = mx.distributed.init()
    model, _ = load_model(__import__("pathlib").Path(path), lazy=True)
    cast_model(model, "float32")  # on a CPU the server serves float32 too
    if group.size() > 1 and mode == "tensor":
        model.shard(group)
    elif group.size() > 1:
        model.model.pipeline(group)
    mx.eval(model.parameters())
    tokenizer = load_tokenizer(__import__("pathlib").Path(path))
    messages = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    for _ in stream_generate(model, tokenizer, prompt, max_tokens=4):  # warm-up
        pass
    text, last = "", None
    started = time.perf_counter()
    for last in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens):
        text += last.text
    wall = time.perf_counter() - started
    if group.rank() == 0:
        print(json.dumps({"ranks": group.size(), "mode": mode, "generation_tokens": last.generation_tokens,
                          "generation_tps": round(last.generation_tps, 1), "prompt_tps": round(last.prompt_tps, 1),
                          "wall_s": round(wall, 2), "text": text}), flush=True)


if __name__ == "__main__":
    main()
