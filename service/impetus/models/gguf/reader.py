"""Read a GGUF file with ggml's own Python reader (gguf-py) and dequantize its
tensors one at a time.

MLX's built-in GGUF reader knows F32/F16/Q4_0/Q4_1/Q8_0 only: a Gemma 3 270M
Q4_K_M file (F32, Q5_0, Q4_K, Q8_0, Q6_K) stops it with `gguf_tensor_to_f16
failed`. gguf-py dequantizes every type llama.cpp writes, the K-quants and IQ
types included, in NumPy (all 236 tensors of that file in 2.8 s here). The
file is memory-mapped, so a tensor is read only when it is converted: a 7B
model never needs its whole float32 copy in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class GGUFImportError(ValueError):
    """The file is not a GGUF this importer can convert; the message says why."""


# Bits per weight of each source type, for choosing what to store.
SOURCE_BITS = {
    "F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8, "Q8_1": 8, "Q8_K": 8, "Q6_K": 6.5625,
    "Q5_0": 5.5, "Q5_1": 6, "Q5_K": 5.5, "Q4_0": 4.5, "Q4_1": 5, "Q4_K": 4.5, "IQ4_NL": 4.5,
    "IQ4_XS": 4.25, "Q3_K": 3.4375, "IQ3_S": 3.4375, "IQ3_XXS": 3.0625, "Q2_K": 2.625,
    "IQ2_S": 2.5, "IQ2_XS": 2.3125, "IQ2_XXS": 2.0625, "IQ1_M": 1.75, "IQ1_S": 1.5625, "MXFP4": 4.25,
}




def mlx_bits(ggml_type: str) -> int | None:
    """The MLX affine bits that hold a source type's values: 8 for Q8_0 and
    Q6_K (MLX's 6-bit is not faster and 8 is exact for Q8_0), 5 for the 5-bit
    types, 4 for the rest; None for float types."""
    if ggml_type in ("F32", "F16", "BF16"):
        return None
    bits = SOURCE_BITS.get(ggml_type, 4.5)
    return 8 if bits >= 6.5 else 5 if ggml_type.startswith("Q5") else 4


@dataclass(frozen=True)
class Tensor:
    name: str
    type: str  # GGML type name: "Q4_K", "F32"...
    shape: tuple[int, ...]  # rows first, as numpy and MLX index it
    nbytes: int
    _raw: object  # gguf-py's ReaderTensor

    def raw_bytes(self) -> np.ndarray:
        """The tensor's bytes as stored (ggml blocks), memory-mapped."""
        return np.asarray(self._raw.data).view(np.uint8)

    def dequantize(self) -> np.ndarray:
        """The tensor's values as float32, in its shape."""
        from gguf.quants import dequantize

        try:
            values = dequantize(self._raw.data, self._raw.tensor_type)
        except NotImplementedError as error:
            raise GGUFImportError(f"tensor {self.name!r} is of type {self.type}, which gguf-py cannot "
                                  f"dequantize ({error})") from None
        return np.asarray(values, dtype=np.float32).reshape(self.shape)


def open_reader(path: Path | str):
    """gguf-py's GGUFReader over the memory-mapped file seen as a plain array.

    The reader slices its `data` once or more for every metadata item; on an
    `np.memmap` each slice builds a memmap subclass (its `__array_finalize__`),
    and Gemma 3's 262,144-piece vocabulary made opening the file take 27 s
    here. A plain `ndarray` view of the same mapping parses it in 10 s; the
    bytes are the same and still read from the page cache only when used."""
    from gguf import GGUFReader

    class Reader(GGUFReader):
        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return Reader(str(path))


class GGUFFile:
    """The metadata (`meta`: key -> Python value) and tensors of one GGUF file."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            reader = open_reader(self.path)
        except Exception as error:  # gguf-py raises ValueError, struct.error, IndexError...
            with self.path.open("rb") as file:
                magic = file.read(4)
            if magic != b"GGUF":
                raise GGUFImportError(f"cannot read {self.path.name} as GGUF: it does not start with "
                                      f"the GGUF signature (starts with {magic!r})") from None
            raise GGUFImportError(f"{self.path.name} is truncated or damaged: gguf-py cannot read it "
                                  f"({type(error).__name__}: {error})") from None
        self.meta = {}
        for key, field in reader.fields.items():
            try:
                self.meta[key] = field.contents()
            except Exception:  # a field gguf-py cannot decode: not one we use
                continue
        size = self.path.stat().st_size
        self.tensors: dict[str, Tensor] = {}
        for raw in reader.tensors:
            end = int(raw.data_offset) + int(raw.n_bytes)
            if end > size:
                raise GGUFImportError(f"{self.path.name} is truncated: tensor {raw.name!r} ends at byte "
                                      f"{end:,} of a {size:,}-byte file")
            shape = tuple(int(d) for d in reversed(raw.shape.tolist()))
            self.tensors[raw.name] = Tensor(raw.name, raw.tensor_type.name, shape, int(raw.n_bytes), raw)
        if not self.tensors:
            raise GGUFImportError(f"{self.path.name} holds no tensors")

    @property
    def architecture(self) -> str | None:
        return self.meta.get("general.architecture")

    def get(self, key: str, default=None):
        """An architecture's hyperparameter: get("context_length") reads
        "<arch>.context_length"."""
        return self.meta.get(f"{self.architecture}.{key}", default)

    def source_type(self) -> str:
        """The file's main tensor type: the most bytes among 2-D weights (and a
        MoE's 3-D experts) but the embedding (a Q4_K_M file: Q4_K and Q5_0
        layers, Q6_K/Q8_0 for a few; gpt-oss: MXFP4 experts)."""
        by_type: dict[str, int] = {}
        for tensor in self.tensors.values():
            if len(tensor.shape) in (2, 3) and not tensor.name.startswith(("token_embd", "output.")):
                by_type[tensor.type] = by_type.get(tensor.type, 0) + tensor.nbytes
        if not by_type:
            return "F32"
        return max(by_type, key=by_type.get)
