"""`impetus bench --scenario documents`: ingesting a corpus, and searching stores of 10k and 100k chunks.

1. Ingest: CPython's own documentation topics (`pydoc_data.topics`, which ships
   with Python), the first `--documents` of them as Markdown files, uploaded
   through nginx with a key and added as one file batch with OpenAI's default
   chunking (800 tokens, 400 overlapping). Reported: pages (3,000 characters)
   and chunks a second, and the tokens the embedding model read.
2. Search at each `--levels` size: a store filled with that many chunks. The
   embedding model reads ~1,800 tokens a second on this CPU, so 100,000 real
   chunks would take hours: the chunks' vectors are the ingested chunks' real
   vectors, each with Gaussian noise (of norm about NOISE, then normalized:
   near neighbours that are not copies) and their texts numbered windows of the corpus, written to the
   store's database directly. Reported: search latency p50/p95 through the
   API (the query's embedding included), the first search apart (it loads the
   store's matrix), and recall@10 of the store's search (`ranker: none`, and
   the hybrid's overlap) against exact brute force over the same vectors
   computed here with the same model.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np

from impetus.bench import plots
from impetus.bench.stack import gateway_stack
from impetus.bench.traffic import percentile

PAGE_CHARS = 3000
NOISE = 0.3


def corpus(count: int) -> list[tuple[str, str]]:
    import pydoc_data.topics

    topics = sorted(pydoc_data.topics.topics.items())
    return [(f"{name}.md", f"# {name}\n\n{text}") for name, text in topics[:count]]


def _client(url: str, key: str):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)


def ingest(client, documents: list[tuple[str, str]], progress) -> tuple[str, dict]:
    files = [client.files.create(file=(name, text.encode()), purpose="assistants") for name, text in documents]
    store = client.vector_stores.create(name="corpus")
    started = time.perf_counter()
    batch = client.vector_stores.file_batches.create_and_poll(vector_store_id=store.id, file_ids=[f.id for f in files],
                                                              poll_interval_ms=250)
    seconds = time.perf_counter() - started
    chars = sum(len(text) for _, text in documents)
    row = {"documents": len(documents), "characters": chars, "pages": chars / PAGE_CHARS, "seconds": seconds,
           "status": batch.status, "file_counts": batch.file_counts.model_dump()}
    progress(f"  ingested {len(documents)} documents ({row['pages']:.0f} pages) in {seconds:.1f} s: {batch.status}")
    return store.id, row


def _database(work: Path) -> Path:
    return work / "data" / "documents" / "documents.sqlite3"


def fill(database: Path, corpus_id: str, store_id: str, file_id: str, count: int, seed: int = 0) -> np.ndarray:
    """`count` chunks in the store from the corpus store's real vectors plus noise; their vectors."""
    rng = np.random.default_rng(seed)
    with sqlite3.connect(database, timeout=30) as db:
        rows = db.execute("select text, vector from chunks where store_id = ?", (corpus_id,)).fetchall()
        base = np.stack([np.frombuffer(r[1], np.float16).astype(np.float32) for r in rows])
        texts = [r[0] for r in rows]
        picks = rng.integers(0, len(base), count)
        vectors = base[picks] + NOISE / np.sqrt(base.shape[1]) * rng.standard_normal((count, base.shape[1]))
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)
        db.execute("begin immediate")
        db.executemany("insert into chunks (store_id, file_id, seq, text, vector) values (?, ?, ?, ?, ?)",
                       [(store_id, file_id, i, f"chunk {i}: {texts[p][:400]}", vectors[i].tobytes())
                        for i, p in enumerate(picks)])
        db.execute("update store_files set status = 'completed' where store_id = ?", (store_id,))
        db.execute("update stores set version = version + 1 where id = ?", (store_id,))
        db.execute("commit")
    return vectors.astype(np.float32)


def measure_search(client, store_id: str, vectors: np.ndarray, queries: list[str], model) -> dict:
    exact_query = model.embed(model.tokenize(queries))
    embedding = []
    for query in queries:  # what the query's embedding alone takes here (the server does the same first)
        started = time.perf_counter()
        model.embed(model.tokenize([query]))
        embedding.append(time.perf_counter() - started)
    cold = time.perf_counter()
    client.vector_stores.search(store_id, query=queries[0], max_num_results=10)
    cold = time.perf_counter() - cold
    seconds, recall, hybrid = [], [], []
    for query, q in zip(queries, exact_query):
        truth = {int(i) for i in np.argsort(-(vectors @ q))[:10]}
        started = time.perf_counter()
        found = client.vector_stores.search(store_id, query=query, max_num_results=10,
                                            ranking_options={"ranker": "none"})
        seconds.append(time.perf_counter() - started)
        recall.append(len(truth & _numbers(found)) / 10)
        fused = client.vector_stores.search(store_id, query=query, max_num_results=10)
        hybrid.append(len(truth & _numbers(fused)) / 10)
    return {"chunks": len(vectors), "first_search_s": cold, "search_p50_s": percentile(seconds, 50),
            "search_p95_s": percentile(seconds, 95), "recall_at_10": float(np.mean(recall)),
            "hybrid_overlap_at_10": float(np.mean(hybrid)), "queries": len(queries),
            "query_embedding_p50_s": percentile(embedding, 50)}


def _numbers(page) -> set[int]:
    return {int(r.content[0].text.split(":", 1)[0].removeprefix("chunk ")) for r in page.data}


def run(settings, documents: int, levels: list[int], queries: int, work: Path, progress) -> dict:
    import os

    from impetus.embeddings.model import EmbeddingModel, packaged_default_folder

    data = work / "data"
    (data / "models").mkdir(parents=True, exist_ok=True)
    default = settings.models_dir / settings.model
    if default.exists():
        os.symlink(default, data / "models" / settings.model)
    env = {"IMPETUS_DATA_DIR": str(data), "IMPETUS_MODEL": settings.model}
    texts = corpus(documents)
    questions = [f"How does {name.removesuffix('.md')} work in Python?" for name, _ in corpus(queries * 4)][::4][:queries]
    model = EmbeddingModel.load(packaged_default_folder())
    rows = []
    with gateway_stack(work / "impetus", env) as stack:
        key, _ = stack.keys.create("librarian", rpm=1_000_000, tpm=1_000_000_000)
        client = _client(stack.url, key)
        store_id, ingested = ingest(client, texts, progress)
        with sqlite3.connect(_database(work), timeout=30) as db:
            chunks, file_id = db.execute("select count(*), min(file_id) from chunks where store_id = ?",
                                         (store_id,)).fetchone()
        ingested.update(chunks=chunks, chunks_per_s=chunks / ingested["seconds"],
                        pages_per_s=ingested["pages"] / ingested["seconds"])
        progress(f"  {chunks} chunks: {ingested['chunks_per_s']:.2f} chunks/s, {ingested['pages_per_s']:.2f} pages/s")
        for level in levels:
            store = client.vector_stores.create(name=f"synthetic-{level}")
            client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=file_id,
                                                       poll_interval_ms=250)
            with sqlite3.connect(_database(work), timeout=30) as db:
                db.execute("delete from chunks where store_id = ?", (store.id,))
            vectors = fill(_database(work), store_id, store.id, file_id, level)
            row = measure_search(client, store.id, vectors, questions, model)
            rows.append(row)
            progress(f"  {level} chunks: search p50 {row['search_p50_s'] * 1000:.1f} ms (query embedding "
                     f"{row['query_embedding_p50_s'] * 1000:.1f} ms), p95 "
                     f"{row['search_p95_s'] * 1000:.1f} ms (first {row['first_search_s'] * 1000:.0f} ms), "
                     f"recall@10 {row['recall_at_10']:.3f}, hybrid overlap {row['hybrid_overlap_at_10']:.2f}")
    return {"scenario": "documents", "ingest": ingested, "search": rows}


def plot(result: dict, out: Path) -> list[Path]:
    fig, (ax,) = plots.figure(1)
    sizes = [r["chunks"] for r in result["search"]]
    ax.plot(sizes, [r["search_p50_s"] * 1000 for r in result["search"]], "o-", label="p50")
    ax.plot(sizes, [r["search_p95_s"] * 1000 for r in result["search"]], "s--", label="p95")
    ax.set(xlabel="chunks in the store", ylabel="search latency through the API (ms)", xscale="log",
           title=f"documents: {result['ingest']['chunks_per_s']:.2f} chunks/s ingested")
    ax.grid(alpha=0.3)
    ax.legend()
    return plots.save(fig, out)
