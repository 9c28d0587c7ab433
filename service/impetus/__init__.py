"""Impetus: a team LLM server on MLX with an OpenAI-compatible API."""

__version__ = "0.1.0"
