"""Search over vector stores: exact vectors and BM25 keywords, fused by rank.

- Vectors: a store's chunk vectors as one float32 matrix in the worker's
  memory, loaded once per store `version` (db.py) and scored exactly (a
  matrix-vector product: 7 ms at 100,000 chunks, recall 1.0 by construction).
  Matrices are kept up to CACHE_BYTES a worker, least recently used out.
- Keywords: SQLite FTS5's BM25 over the chunks' text, the query's words OR'ed.
- Several queries (file_search sends the model's and the user's): each kind's
  rankings merge into one by a chunk's best rank in any of them, so a poor
  query cannot bury what a good one found first.
- Fusion (`ranker` "auto" or "default-2024-11-15"): reciprocal rank fusion
  (k = 60) of the vector ranking and the keyword ranking, the score scaled so
  that first in both is 1.0. `ranker` "none": cosine similarity only.
  `score_threshold` drops results under it.
- Only `completed` files whose attributes pass `filters` are searched, so a
  file being ingested (or re-ingested) is never half-seen.

What it must not do: decide whether the caller may read a store (the api asks
Stores.searchable first) or charge anyone.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict

import numpy as np

from impetus.documents.db import Database
from impetus.documents.filters import matches
from impetus.engine.host import run_off_the_hub

RRF_K = 60
CANDIDATES = 100  # each ranking's depth before fusion
CACHE_BYTES = 512 * 1024 * 1024
MAX_WORDS = 32


# Words too common to tell chunks apart: OR'ed in, they match nearly every chunk, and FTS5
# ranks every match (at 100,000 chunks, 150 ms a query with them).
STOPWORDS = frozenset("""a about an and are as at be but by can could did do does how i is it its me my of on or our
should so than that the their them then there these they this those to was we were what when where which who
why will would you your""".split())


def _match_expression(store_ids: list[str], query: str) -> str | None:
    words = list(dict.fromkeys(re.findall(r"\w+", query.lower())))
    words = ([w for w in words if w not in STOPWORDS and len(w) > 1] or words)[:MAX_WORDS]
    if not words:
        return None
    stores = " OR ".join(f'store_id : "{s}"' for s in store_ids)
    return f"({stores}) AND text : ({' OR '.join(chr(34) + w + chr(34) for w in words)})"


class Search:
    def __init__(self, db: Database, embeddings, model_name: str):
        self.db, self.embeddings, self.model_name = db, embeddings, model_name
        # store -> (version, chunk ids, (file ids, each chunk's file index), matrix)
        self._matrices: OrderedDict[str, tuple] = OrderedDict()

    def _matrix(self, db, store_id: str):
        version = db.execute("select version from stores where id = ?", (store_id,)).fetchone()[0]
        cached = self._matrices.get(store_id)
        if cached is None or cached[0] != version:
            rows = db.execute("select id, file_id, vector from chunks where store_id = ? order by id",
                              (store_id,)).fetchall()
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            names = sorted({r[1] for r in rows})  # the store's files, and each chunk's file as an index
            index = {name: i for i, name in enumerate(names)}
            files = (names, np.array([index[r[1]] for r in rows], dtype=np.int32))
            raw = b"".join(r[2] for r in rows)
            matrix = np.frombuffer(raw, dtype=np.float16).reshape(len(rows), -1).astype(np.float32) if rows else \
                np.zeros((0, 0), np.float32)
            cached = (version, ids, files, matrix)
            self._matrices[store_id] = cached
            while sum(m[3].nbytes for m in self._matrices.values()) > CACHE_BYTES and len(self._matrices) > 1:
                self._matrices.popitem(last=False)
        self._matrices.move_to_end(store_id)
        return cached

    def search(self, store_ids: list[str], queries: list[str], filters: dict | None = None, limit: int = 10,
               ranker: str = "auto", threshold: float = 0.0) -> tuple[list[dict], int]:
        """(the results, best first; the tokens the embedding model read for the queries)."""
        model = self.embeddings.get(self.model_name)
        tokens = model.tokenize(queries)
        query_vectors = self.embeddings.embed(model, tokens)
        return self._search(store_ids, query_vectors, queries, filters, limit, ranker, threshold), \
            sum(len(t) for t in tokens)

    def _search(self, store_ids, query_vectors, queries, filters, limit, ranker, threshold) -> list[dict]:
        with self.db.connect() as db:
            files = {r["file_id"]: r for r in db.execute(
                f"select sf.file_id, sf.attributes, f.filename from store_files sf join files f on f.id = sf.file_id "
                f"where sf.store_id in ({','.join('?' * len(store_ids))}) and sf.status = 'completed'",
                store_ids).fetchall()}
            allowed = {fid for fid, r in files.items() if matches(filters, json.loads(r["attributes"]))}
            if not allowed:
                return []
            cosine: dict[int, float] = {}
            by_vector: list[list[int]] = []
            for store_id in store_ids:
                _, ids, (names, owners), matrix = self._matrix(db, store_id)
                if not len(ids):
                    continue
                mask = np.isin(owners, [i for i, name in enumerate(names) if name in allowed])
                scores = run_off_the_hub(lambda m=matrix: query_vectors @ m.T)  # (queries, chunks)
                for row in scores:
                    row = np.where(mask, row, -np.inf)
                    depth = min(CANDIDATES, int(mask.sum()))
                    top = np.argpartition(-row, depth - 1)[:depth] if depth < len(row) else np.arange(len(row))
                    top = top[np.argsort(-row[top])]
                    top = top[np.isfinite(row[top])]
                    by_vector.append([int(ids[i]) for i in top])
                    for i in top:
                        cosine[int(ids[i])] = max(cosine.get(int(ids[i]), -1.0), float(row[i]))
            rankings = [_merge(by_vector)]
            if ranker != "none":
                rankings.append(_merge(self._keywords(db, store_ids, queries, allowed)))
            ranked = self._fuse([r for r in rankings if r], cosine, ranker)
            ranked = [(cid, score) for cid, score in ranked if score >= threshold][:limit]
            chunks = {r["id"]: r for r in db.execute(
                f"select id, file_id, text from chunks where id in ({','.join('?' * len(ranked))})",
                [cid for cid, _ in ranked]).fetchall()} if ranked else {}
        return [{"file_id": chunks[cid]["file_id"], "filename": files[chunks[cid]["file_id"]]["filename"],
                 "score": round(score, 6), "attributes": json.loads(files[chunks[cid]["file_id"]]["attributes"]),
                 "content": [{"type": "text", "text": chunks[cid]["text"]}]} for cid, score in ranked if cid in chunks]

    @staticmethod
    def _keywords(db, store_ids: list[str], queries: list[str], allowed: set) -> list[list[int]]:
        out = []
        for query in queries:
            expression = _match_expression(store_ids, query)
            if expression is None:
                continue
            rows = db.execute(  # bm25 weights: the store's id 0, the text 1
                "select c.id, c.file_id from chunks_fts join chunks c on c.id = chunks_fts.rowid "
                "where chunks_fts match ? order by bm25(chunks_fts, 0.0, 1.0) limit ?",
                (expression, CANDIDATES * 4)).fetchall()
            out.append([r[0] for r in rows if r[1] in allowed][:CANDIDATES])
        return out

    @staticmethod
    def _fuse(rankings: list[list[int]], cosine: dict[int, float], ranker: str) -> list[tuple[int, float]]:
        if ranker == "none":
            return sorted(((cid, max(0.0, min(1.0, s))) for cid, s in cosine.items()), key=lambda x: -x[1])
        fused: dict[int, float] = {}
        for ranking in rankings:
            for rank, cid in enumerate(ranking):
                fused[cid] = fused.get(cid, 0.0) + 1.0 / (RRF_K + rank + 1)
        best = len(rankings) / (RRF_K + 1) if rankings else 1.0
        return sorted(((cid, s / best) for cid, s in fused.items()), key=lambda x: (-x[1], x[0]))


def _merge(rankings: list[list[int]]) -> list[int]:
    """One ranking from several (one a query): by each chunk's best rank, then how many found it."""
    best: dict[int, tuple[int, int]] = {}
    for ranking in rankings:
        for rank, cid in enumerate(ranking):
            seen = best.get(cid)
            best[cid] = (min(rank, seen[0]), seen[1] - 1) if seen else (rank, -1)
    return sorted(best, key=lambda cid: (*best[cid], cid))
