"""One worker's documents: the database and the rooms over it, wired once.

`create_app` makes one `Documents` a worker and hands it to the api's
resources; its ingest loop starts with it, so a file left `in_progress` by a
worker that died is taken up again by the next one to start.
"""

from __future__ import annotations

from impetus.documents.db import Database
from impetus.documents.files import Files
from impetus.documents.ingest import Ingest
from impetus.documents.search import Search
from impetus.documents.store_files import StoreFiles
from impetus.documents.stores import Stores
from impetus.embeddings.model import DEFAULT_EMBEDDING_MODEL
from impetus.metrics import Metrics


class Documents:
    def __init__(self, settings, embeddings, busy=lambda: False, metrics=None, start: bool = True):
        root = settings.data_dir / "documents"
        self.model_name = settings.documents_embedding_model or DEFAULT_EMBEDDING_MODEL
        self.db = Database(root / "documents.sqlite3")
        self.files = Files(self.db, root / "files", settings.file_max_bytes, settings.file_quota_bytes)
        self.stores = Stores(self.db)
        self.store_files = StoreFiles(self.db, self.files, self.stores)
        self.search = Search(self.db, embeddings, self.model_name)
        self.ingest = Ingest(self.db, self.files, embeddings, self.model_name, busy, metrics or Metrics.null())
        if start:
            self.ingest.start()
