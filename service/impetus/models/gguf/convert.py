"""Convert a GGUF file into an MLX model folder (config.json, safetensors,
tokenizer.json, tokenizer_config.json), one tensor at a time.

Each tensor is dequantized to float32 by gguf-py, then stored as the user
asked: float32/float16/bfloat16, or MLX affine 2- to 8-bit (`bits`, `group_size`).
The default keeps the file's precision: a float file stays in its float type,
Q8_0 and Q6_K files become 8-bit, Q5 files 5-bit, the rest 4-bit. Tensors the
file kept at higher precision than its main type (a Q4_K_M file's Q8_0
embedding and Q6_K `ffn_down`, a Q4_1 file's Q8_0 embedding) keep theirs, as
llama.cpp's mixes chose them.

MXFP4 (gpt-oss's experts) is MLX's own `mxfp4` mode, block for block: the
same E2M1 codes and E8M0 scale per 32 weights. Stored at 4 bits (the
default), those tensors are repacked as they are, bit-exact; at other bits
or as floats they are dequantized first.

Why 5 bits for Q5 sources: Gemma 3 270M Q4_K_M is mostly Q5_0. Against the
file's own logits over a 69-token text, storing those at 4 bits gave a mean
KL of 0.225 and 80 % top-token agreement; at 5 bits 0.029 and 90 %, for 269
instead of 258 MB (8-bit: 0.0008 and 99 %, 302 MB).

Safety: the output's size is computed before anything is written and checked
against the free disk space; the folder is written under a hidden staging
name and renamed into place at the end, so a failed or killed import leaves
nothing (a staging folder left by `kill -9` is removed by the next import);
importing the same file with the same options again is a no-op.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from impetus.models.defaults import gguf_sampling
from impetus.models.gguf.arch import architecture
from impetus.models.gguf.reader import SOURCE_BITS, GGUFFile, GGUFImportError, Tensor, mlx_bits
from impetus.models.gguf.repack import repack_exact, repack_mxfp4
from impetus.models.gguf.tokenizer import build_tokenizer, build_tokenizer_config

FLOAT_DTYPES = ("float32", "float16", "bfloat16")
SHARD_BYTES = 2 << 30  # safetensors files of at most ~2 GiB
# A float file is not quantized unless asked to (`--bits`): it keeps its precision.
_FLOAT_SOURCES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass
class ImportProgress:
    """What an import is doing; str() is the line the CLI prints."""

    stage: str  # "reading", "converting", "writing", "tokenizer", "done", "skipped"
    message: str
    tensors_done: int = 0
    tensors_total: int = 0
    bytes_written: int = 0
    bytes_total: int = 0

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict:
        return dict(self.__dict__)


Progress = Callable[[object], None]


@dataclass(frozen=True)
class Options:
    bits: int | None = None  # 4 or 8; None: from the source type
    group_size: int = 32
    dtype: str | None = None  # a float dtype instead of quantizing

    def resolve(self, source_type: str) -> "Options":
        if self.dtype is not None:
            if self.dtype not in FLOAT_DTYPES:
                raise GGUFImportError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}")
            return Options(None, self.group_size, self.dtype)
        if self.bits is None and source_type in _FLOAT_SOURCES:
            return Options(None, self.group_size, _FLOAT_SOURCES[source_type])
        bits = self.bits or mlx_bits(source_type)
        if bits not in (2, 3, 4, 5, 6, 8):
            raise GGUFImportError("bits must be 2, 3, 4, 5, 6 or 8")
        if self.group_size not in (32, 64, 128):
            raise GGUFImportError("group size must be 32, 64 or 128")
        return Options(bits, self.group_size, None)

    def as_dict(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size if self.bits else None, "dtype": self.dtype}


@dataclass(frozen=True)
class Planned:
    """How one tensor is stored: under `name`, quantized at `bits` or as `dtype`."""

    tensor: Tensor
    name: str
    bits: int | None
    dtype: str
    mode: str | None = None  # "mxfp4": repacked as MLX's mxfp4 (affine otherwise)

    def output_bytes(self, group_size: int) -> int:
        count = int(np.prod(self.tensor.shape))
        if self.mode == "mxfp4":  # packed weights + a uint8 scale per 32
            return count // 2 + count // 32
        if self.bits:  # packed weights + a float16 scale and bias per group
            return count * self.bits // 8 + count // group_size * 4
        return count * (4 if self.dtype == "float32" else 2)


def plan(f: GGUFFile, options: Options, keep_mxfp4: bool = True) -> list[Planned]:
    """How each tensor is stored. `keep_mxfp4`: MXFP4 tensors stay MXFP4
    (repacked) unless the user asked for floats or other bits."""
    arch = architecture(f)
    main_bits = SOURCE_BITS.get(f.source_type(), 32)
    planned = []
    for tensor in f.tensors.values():
        name = arch.weight_name(tensor.name)
        if name is None:
            continue
        # A MoE router (ffn_gate_inp) stays float32, as llama.cpp keeps it: experts x hidden
        # values, and routing is where a small error picks another expert (tiny qwen3moe
        # from Q8_0, logits off by 1 % of the largest with an 8-bit router, 0.3 % float16).
        quantizable = (options.bits and len(tensor.shape) in (2, 3) and name.endswith(".weight")
                       and "norm" not in name and ".ffn_gate_inp." not in tensor.name
                       and tensor.shape[-1] % options.group_size == 0)
        if keep_mxfp4 and tensor.type == "MXFP4" and len(tensor.shape) in (2, 3) and name.endswith(".weight"):
            planned.append(Planned(tensor, name, 4, "float16", "mxfp4"))
        elif quantizable:
            # A tensor the file kept at higher precision than its main type keeps its own bits.
            natural = mlx_bits(tensor.type) or 8
            higher = SOURCE_BITS.get(tensor.type, 32) > main_bits
            planned.append(Planned(tensor, name, max(options.bits, natural) if higher else options.bits, "float16"))
        else:
            # Norms, biases, sinks and routers are tiny: float32 whatever the rest, as the file keeps them.
            small = len(tensor.shape) == 1 or not name.endswith(".weight") or ".ffn_gate_inp." in tensor.name
            dtype = "float32" if small else (options.dtype or "float16")
            planned.append(Planned(tensor, name, None, dtype))
    return planned


def quantization_config(planned: list[Planned], options: Options) -> dict:
    bits = [p.bits for p in planned if p.bits]
    if not bits:
        return {}
    quant: dict = ({"group_size": options.group_size, "bits": options.bits} if options.bits
                   else {"group_size": 32, "bits": 4, "mode": "mxfp4"})  # a float file with MXFP4 experts
    for p in planned:
        if p.mode:
            quant[p.name.removesuffix(".weight")] = {"group_size": 32, "bits": p.bits, "mode": p.mode}
        elif p.bits and p.bits != options.bits:
            quant[p.name.removesuffix(".weight")] = {"group_size": options.group_size, "bits": p.bits}
    return quant


def _source_stamp(path: Path, options: Options) -> dict:
    """What makes two imports the same: the file (name, size, time) and the options asked for."""
    stat = path.stat()
    return {"file": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "requested": {"bits": options.bits, "group_size": options.group_size, "dtype": options.dtype}}


def already_imported(target: Path, stamp: dict) -> bool:
    try:
        recorded = json.loads((target / "config.json").read_text()).get("impetus", {})
    except (OSError, ValueError):
        return False
    return all(recorded.get(key) == value for key, value in stamp.items())


def _convert(p: Planned, arch, group_size: int) -> dict:
    import mlx.core as mx

    base = p.name.removesuffix(".weight")
    if p.mode == "mxfp4":
        weight, scales = (mx.array(a) for a in repack_mxfp4(p.tensor))
        return {p.name: weight, f"{base}.scales": scales}
    exact = repack_exact(p.tensor, p.bits, group_size) if p.bits else None
    if exact is not None:
        weight, scales, biases = (mx.array(a) for a in exact)
        return {p.name: weight, f"{base}.scales": scales, f"{base}.biases": biases}
    values = arch.transform(p.tensor.name, p.tensor.dequantize())
    if p.bits:
        weight, scales, biases = mx.quantize(mx.array(values), group_size=group_size, bits=p.bits)
        return {p.name: weight, f"{base}.scales": scales.astype(mx.float16),
                f"{base}.biases": biases.astype(mx.float16)}
    return {p.name: mx.array(values).astype(getattr(mx, p.dtype))}


def import_gguf(
    gguf_path: Path | str,
    models_dir: Path | str,
    name: str | None = None,
    progress: Progress = lambda update: None,
    overwrite: bool = False,
    options: Options = Options(),
    display_source: str | None = None,
    sampling: dict | None = None,
) -> Path:
    """Convert `gguf_path` into `models_dir/name` and return that folder.
    `sampling`: default sampling parameters by source (an Ollama manifest's
    params), kept beside the file's own `general.sampling.*` keys."""
    import mlx.core as mx

    gguf_path = Path(gguf_path)
    models_dir = Path(models_dir)
    if not gguf_path.is_file():
        raise GGUFImportError(f"no such file: {gguf_path}")
    name = name or default_model_name(gguf_path)
    target = models_dir / name

    stamp = _source_stamp(gguf_path, options)
    if target.exists() and not overwrite:
        if already_imported(target, stamp):
            progress(ImportProgress("skipped", f"{name} is already imported from this file (--force redoes it)"))
            return target
        raise GGUFImportError(f"a model named {name!r} already exists at {target} (--force replaces it)")
    progress(ImportProgress("reading", f"reading {display_source or gguf_path.name}"))
    f = GGUFFile(gguf_path)
    arch = architecture(f)
    keep_mxfp4 = options.dtype is None and options.bits in (None, 4)  # what the user asked, before resolving
    options = options.resolve(f.source_type())

    planned = plan(f, options, keep_mxfp4)
    config = arch.config(f)
    quant = quantization_config(planned, options)
    if quant:
        config["quantization"] = quant
        config["quantization_config"] = quant
    config["bos_token_id"] = f.meta.get("tokenizer.ggml.bos_token_id")
    eos = [f.meta.get(key) for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                       "tokenizer.ggml.eom_token_id")]
    eos = list(dict.fromkeys(e for e in eos if e is not None))
    if f.architecture == "gpt-oss":
        eos = harmony_ends(f.meta, eos)
    config["eos_token_id"] = eos[0] if len(eos) == 1 else eos or None
    config["impetus"] = {"source": "gguf", "fim": fim_markers(f.meta), "name": f.meta.get("general.name"), "architecture": f.architecture,
                         "source_type": f.source_type(), "stored": options.as_dict(), **stamp,
                         "sampling": {"gguf": gguf_sampling(f.meta), **(sampling or {})}}
    tokenizer = build_tokenizer(f.meta)  # before writing: a bad vocabulary fails fast
    total_bytes = sum(p.output_bytes(options.group_size) for p in planned)
    models_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(models_dir).free
    if total_bytes * 1.05 + (64 << 20) > free:
        raise GGUFImportError(f"not enough disk space in {models_dir}: the model needs about "
                              f"{total_bytes / 2**30:.2f} GiB and {free / 2**30:.2f} GiB is free")
    what = f"{options.bits}-bit (group {options.group_size})" if options.bits else options.dtype
    progress(ImportProgress("converting", f"{len(planned)} tensors of a {f.architecture} model "
                            f"({f.source_type()} source) to {what}, about {total_bytes / 2**20:,.0f} MB",
                            0, len(planned), 0, total_bytes))

    lock = _lock(models_dir, name)  # one import of a name at a time (dashboard and CLI alike)
    for stale in models_dir.glob(f".{name}.*"):  # left by an import that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models_dir))
    try:
        shards, shard, shard_bytes, written = [], {}, 0, 0
        step = max(1, len(planned) // 20)
        for index, p in enumerate(planned, 1):
            arrays = _convert(p, arch, options.group_size)
            mx.eval(list(arrays.values()))
            shard.update(arrays)
            size = sum(a.nbytes for a in arrays.values())
            shard_bytes += size
            written += size
            if shard_bytes >= SHARD_BYTES or index == len(planned):
                shards.append(staging / f"shard-{len(shards):05d}.safetensors")
                mx.save_safetensors(str(shards[-1]), shard, metadata={"format": "mlx"})
                shard, shard_bytes = {}, 0
            if index % step == 0 or index == len(planned):
                progress(ImportProgress("converting", f"tensors {index}/{len(planned)}, "
                                        f"{written / 2**20:,.0f} MB converted", index, len(planned), written,
                                        total_bytes))
        _name_shards(staging, shards)
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        progress(ImportProgress("tokenizer", "writing the tokenizer rebuilt from GGUF metadata",
                                len(planned), len(planned), written, total_bytes))
        tokenizer.save(str(staging / "tokenizer.json"))
        (staging / "tokenizer_config.json").write_text(
            json.dumps(build_tokenizer_config(f.meta, config.get("max_position_embeddings")), indent=2))
        (staging / "generation_config.json").write_text(
            json.dumps({"eos_token_id": config["eos_token_id"], "bos_token_id": config["bos_token_id"]}))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        lock.release()
    progress(ImportProgress("done", f"imported {name} -> {target}", len(planned), len(planned), written,
                            total_bytes))
    return target


_FIM_KEYS = {"prefix": "fim_pre", "suffix": "fim_suf", "middle": "fim_mid", "pad": "fim_pad", "repo": "fim_rep",
             "sep": "fim_sep"}


def fim_markers(meta: dict) -> dict:
    """The fill-in-the-middle tokens the GGUF names (tokenizer.ggml.fim_pre_token_id...), as their
    texts, for api.fim: a file may name markers no family table knows."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    found = {}
    for name, key in _FIM_KEYS.items():
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        if isinstance(index, int) and 0 <= index < len(tokens):
            found[name] = tokens[index]
    return found


def harmony_ends(meta: dict, eos: list[int]) -> list[int]:
    """gpt-oss's end tokens, as its generation_config.json has them: <|return|>
    (the answer is done) and <|call|> (a tool call is), never <|end|>, which
    ends one message (its reasoning) before the next (its answer)."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    ids = {token: i for i, token in enumerate(tokens) if token in ("<|return|>", "<|call|>", "<|end|>")}
    ends = [ids[t] for t in ("<|return|>", "<|call|>") if t in ids]
    return list(dict.fromkeys(ends + [e for e in eos if e != ids.get("<|end|>")]))


def _name_shards(folder: Path, shards: list[Path]) -> None:
    """One file: model.safetensors; several: model-0000k-of-0000n with an index."""
    if len(shards) == 1:
        shards[0].rename(folder / "model.safetensors")
        return
    from impetus.models.metadata import safetensors_header

    weight_map = {}
    for k, shard in enumerate(shards, 1):
        final = folder / f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        shard.rename(final)
        weight_map.update({tensor: final.name for tensor in safetensors_header(final)})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def default_model_name(gguf_path: Path) -> str:
    """'SmolLM2-135M-Instruct.Q4_1.gguf' -> 'smollm2-135m-instruct-q4_1'."""
    stem = gguf_path.name.removesuffix(".gguf")
    return re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-")


class _Lock:
    def __init__(self, file):
        self.file = file

    def release(self) -> None:
        self.file.close()  # closing drops the flock; the empty file stays


def _lock(models_dir: Path, name: str) -> _Lock:
    """An exclusive flock on models/.locks/NAME; a second import of NAME meanwhile is refused."""
    import fcntl

    (models_dir / ".locks").mkdir(exist_ok=True)
    file = (models_dir / ".locks" / name).open("a")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        raise GGUFImportError(f"an import of {name!r} is already running") from None
    return _Lock(file)
