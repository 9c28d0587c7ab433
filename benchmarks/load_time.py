"""Load time of a model, cold (page cache dropped, where this process may) and
warm, for the stored and the float32 weights, each in a fresh process; and the
first request's time to first token with and without the warm-up.

    .venv/bin/python benchmarks/load_time.py [MODEL] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from impetus.system.blas import preload_openblas
preload_openblas()
started = time.perf_counter()
import mlx.core as mx
from impetus.models import loader
from impetus.settings import Settings
from impetus.models.registry import Registry
entry = Registry(Settings().models_dir).find(sys.argv[1])
imported = time.perf_counter()
loaded = loader.load(entry.path, weights_dtype=sys.argv[2])
load_s = time.perf_counter() - imported
warm_s = None
if sys.argv[3] == "warm":
    t = time.perf_counter(); loader.warm_up(loaded); warm_s = time.perf_counter() - t
from mlx_lm.models.cache import make_prompt_cache
tokens = loaded.tokenizer.encode("What is the capital of France?")
t = time.perf_counter()
mx.eval(loaded.model(mx.array([tokens]), cache=make_prompt_cache(loaded.model)))
first = time.perf_counter() - t
t = time.perf_counter()
mx.eval(loaded.model(mx.array([tokens]), cache=make_prompt_cache(loaded.model)))
second = time.perf_counter() - t
print(json.dumps({"load_s": load_s, "warm_up_s": warm_s, "first_prefill_s": first, "second_prefill_s": second,
                  "imports_s": imported - started}))
"""


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def run(model: str, dtype: str, warm: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, model, dtype, warm], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="smollm2-135m-instruct")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {"model": args.model, "machine": platform.node(), "platform": platform.platform(),
               "date": time.strftime("%Y-%m-%d"), "runs": []}
    for dtype in ("stored", "float32"):
        cold = drop_page_cache()
        results["runs"].append({"weights": dtype, "cache": "cold" if cold else "unknown (cannot drop)",
                                **run(args.model, dtype, "warm")})
        for _ in range(2):
            results["runs"].append({"weights": dtype, "cache": "warm", **run(args.model, dtype, "warm")})
        results["runs"].append({"weights": dtype, "cache": "warm", "no_warm_up": True,
                                **run(args.model, dtype, "none")})
    for r in results["runs"]:
        print(f"{r['weights']:8} {r['cache']:8} load {r['load_s']:.2f}s  warm-up {r['warm_up_s'] or 0:.2f}s  "
              f"first prefill {r['first_prefill_s'] * 1000:.0f} ms  second {r['second_prefill_s'] * 1000:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
