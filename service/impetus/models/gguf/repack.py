"""ggml blocks that MLX holds as they are, repacked without loss: gguf-py
gives floats only, and quantizing those again moves values off their grid.
Q4_0, Q4_1 and Q8_0 are MLX affine groups of 32; MXFP4 is MLX's own mxfp4.
Both read the block layouts of ggml-common.h from the file's bytes."""

from __future__ import annotations

import numpy as np

from impetus.models.gguf.reader import Tensor

# Legacy ggml blocks of 32 that are MLX affine groups as they are: (bits, bytes
# per block, has a stored minimum). Q4_0 is d * (q - 8), Q4_1 d * q + m, Q8_0
# d * q with q signed: scale d and bias -8d, m or -128d, all exact in float16.
_EXACT = {"Q4_0": (4, 18, False), "Q4_1": (4, 20, True), "Q8_0": (8, 34, False)}


def repack_exact(tensor: Tensor, bits: int, group_size: int):
    """A Q4_0/Q4_1/Q8_0 tensor as MLX (weight, scales, biases) without loss,
    when the target is the same bits in groups of 32; None otherwise.

    gguf-py gives floats only, and quantizing those again moves values off
    their grid (a Q4_0 block rarely spans all 16 levels): this reads the block
    layout (ggml-common.h) and repacks the same integers into MLX's uint32s.
    """
    if tensor.type not in _EXACT or group_size != 32 or _EXACT[tensor.type][0] != bits:
        return None
    _, block_bytes, has_min = _EXACT[tensor.type]
    rows = int(np.prod(tensor.shape[:-1]))  # experts' 3-D tensors: every expert's rows
    blocks = tensor.raw_bytes().reshape(rows, -1, block_bytes)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    if bits == 4:
        start = 4 if has_min else 2
        qs = blocks[..., start:start + 16]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.uint32)  # (rows, blocks, 32)
        bias = blocks[..., 2:4].copy().view(np.float16)[..., 0] if has_min else d * np.float16(-8)
    else:
        q = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint32)
        bias = d * np.float16(-128)
    shape = tensor.shape[:-1] + (-1,)
    return _pack(q, bits).reshape(shape), d.reshape(shape), bias.astype(np.float16).reshape(shape)


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Codes (rows, ..., values) into MLX's uint32 words, the first value in the lowest bits."""
    per_word = 32 // bits
    q = q.reshape(q.shape[0], -1, per_word)
    packed = np.zeros(q.shape[:2], dtype=np.uint32)
    for j in range(per_word):
        packed |= q[..., j] << np.uint32(bits * j)
    return packed


def repack_mxfp4(tensor: Tensor):
    """An MXFP4 tensor as MLX mxfp4 (weight, scales), without loss. A ggml
    block (ggml-common.h `block_mxfp4`) is one E8M0 exponent and 16 bytes of
    E2M1 codes, values 0-15 in the low nibbles and 16-31 in the high ones;
    MLX keeps the same codes eight to a uint32 and the exponent as its scale."""
    rows = int(np.prod(tensor.shape[:-1]))
    blocks = tensor.raw_bytes().reshape(rows, -1, 17)
    qs = blocks[..., 1:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.uint32)  # (rows, blocks, 32)
    shape = tensor.shape[:-1] + (-1,)
    return _pack(q, 4).reshape(shape), blocks[..., 0].copy().reshape(shape)
