"""A team's documents: files, vector stores and their search (OpenAI's shapes are the api's).

- `extract.py`: the text of an upload (plain text, Markdown, HTML, PDF, DOCX, code).
- `chunking.py`: OpenAI's static chunking, counted in the embedding model's tokens.
- `db.py`: the one SQLite database in the data dir (files, stores, chunks, FTS5).
- `files.py`, `stores.py`: the records, each owned by a key.
- `search.py`, `filters.py`: hybrid search (exact vectors and BM25, fused) and attribute filters.
- `ingest.py`: files into a store in the background, at batch priority.

It sits above `embeddings` and `gateway` and below `api`; it knows no HTTP but
`web.APIError`, which the api renders in OpenAI's shape.
"""
