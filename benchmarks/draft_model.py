"""The draft model path, measured with what this machine has: SmolLM2-135M
(float32) with its own first N layers as its draft, against speculation off
and prompt lookup, in process (no server), greedy, 200 tokens.

    .venv/bin/python benchmarks/draft_model.py --layers 6

No pair of one tokenizer and very different sizes is available here, so this
shows the mechanism and its cost, not a gain (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import time

from impetus.system.blas import preload_openblas

preload_openblas()

from impetus.bench.speculative import editing_messages, story_messages  # noqa: E402
from impetus.engine.engine import Engine  # noqa: E402
from impetus.engine.request import SamplingParams  # noqa: E402
from impetus.engine.waiters import ThreadWaiter  # noqa: E402
from impetus.models import store  # noqa: E402
from impetus.models.loader import load  # noqa: E402
from impetus.settings import Settings  # noqa: E402


def measure(engine, tokenizer, kind: str, streams: int) -> tuple[float, list]:
    messages = editing_messages if kind == "editing" else story_messages
    prompts = [tokenizer.apply_chat_template(messages(700 + v), add_generation_prompt=True) for v in range(streams)]
    handles = [engine.submit(p, SamplingParams(temperature=0, max_tokens=200), ThreadWaiter()) for p in prompts]
    first, total, outputs = None, 0, []
    for handle in handles:
        tokens = []
        for event in handle.events(timeout=900):
            if hasattr(event, "token"):
                total += 1
                tokens.append(event.token)
                first = first or time.perf_counter()
        outputs.append(tokens)
    return total / (time.perf_counter() - first), outputs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=6, help="the draft: the model's first N layers")
    args = parser.parse_args()
    settings = Settings()
    folder = store.resolve_model(settings.model, settings.models_dir, progress=print)
    target = load(folder, weights_dtype="float32")
    draft = load(folder, name="draft", weights_dtype="float32")
    draft.model.model.layers = draft.model.model.layers[:args.layers]
    baseline = {}
    for mode in ("off", "ngram", "draft"):
        engine = Engine(target, settings.model_copy(update={"speculative": mode}),
                        draft=draft if mode == "draft" else None)
        engine.start()
        for kind, streams in (("editing", 1), ("open-ended", 1), ("open-ended", 4)):
            before = engine.snapshot()
            rate, outputs = measure(engine, target.tokenizer, kind, streams)
            baseline.setdefault((kind, streams), (rate, outputs))
            off_rate, off_outputs = baseline[(kind, streams)]
            status = {key: engine.snapshot()[key] - before[key]
                      for key in ("spec_accepted_tokens", "spec_proposed_tokens")}
            print(f"{mode:6} {kind:10} c={streams} {rate:5.1f} tok/s ({rate / off_rate:.2f}x off), "
                  f"same tokens as off: {outputs == off_outputs}, "
                  f"guesses taken {status['spec_accepted_tokens']}/{status['spec_proposed_tokens']}", flush=True)
        engine.stop()


if __name__ == "__main__":
    main()
