"""GGUF files (llama.cpp, Ollama, LM Studio) into MLX model folders: `reader`
(gguf-py, every tensor type), `arch` (architectures onto mlx-lm), `tokenizer`
(BPE and SentencePiece from metadata), `repack` (ggml blocks MLX holds as
they are), `summary` (a header's first keys), `convert` (the import itself)."""

from impetus.models.gguf.convert import ImportProgress, Options, Progress, default_model_name, import_gguf
from impetus.models.gguf.reader import GGUFFile, GGUFImportError

__all__ = ["GGUFFile", "GGUFImportError", "ImportProgress", "Options", "Progress", "default_model_name",
           "import_gguf"]
