"""What a GGUF is, from the first bytes of its header: architecture, name,
main tensor type and whether it carries a chat template. `impetus models
discover` lists every GGUF of Ollama and LM Studio this way: gguf-py parses the
whole file's metadata (a 262k-token vocabulary takes it 8 s), this stops at
the keys it needs and skips the arrays it does not."""

from __future__ import annotations

import struct
from pathlib import Path

from impetus.models.gguf.reader import SOURCE_BITS

_VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_VALUE_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                  12: "<d"}


def gguf_summary(path: Path) -> dict:
    """architecture, name, type (from general.file_type) and whether a chat
    template is there, read from the header's first key/values only."""
    wanted = {"general.architecture", "general.name", "general.file_type", "tokenizer.chat_template"}
    found: dict = {}
    try:
        with Path(path).open("rb") as f:
            magic, version = f.read(4), struct.unpack("<I", f.read(4))[0]
            if magic != b"GGUF" or version < 2:
                return {}
            tensors, count = struct.unpack("<QQ", f.read(16))
            for _ in range(min(count, 10_000)):
                key = _string(f)
                kind = struct.unpack("<I", f.read(4))[0]
                value = _value(f, kind, keep=key in wanted)
                if key in wanted:
                    found[key] = value
            if "general.file_type" not in found:  # the most common type of the 2-D tensors
                types: dict[int, int] = {}
                for _ in range(min(tensors, 100_000)):
                    _string(f)
                    (dims,) = struct.unpack("<I", f.read(4))
                    f.seek(8 * dims, 1)
                    tensor_type, _offset = struct.unpack("<IQ", f.read(12))
                    if dims == 2:
                        types[tensor_type] = types.get(tensor_type, 0) + 1
                if types:
                    found["tensor_type"] = max(types, key=types.get)
    except (OSError, struct.error, UnicodeDecodeError, ValueError):
        pass
    summary = {"architecture": found.get("general.architecture"), "name": found.get("general.name"),
               "chat_template": bool(found.get("tokenizer.chat_template"))}
    if "tensor_type" in found:
        import gguf

        try:
            summary["type"] = gguf.GGMLQuantizationType(found["tensor_type"]).name
        except ValueError:
            summary["type"] = f"type {found['tensor_type']}"
        summary["bits"] = SOURCE_BITS.get(summary["type"])
    file_type = found.get("general.file_type")
    if file_type is not None:
        try:
            import gguf

            summary["type"] = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").replace("ALL_", "")
        except ValueError:
            summary["type"] = f"type {file_type}"
        main = summary["type"].split("_")[0] + ("_" + summary["type"].split("_")[1]
                                                if "_" in summary["type"] else "")
        summary["bits"] = SOURCE_BITS.get(main) or SOURCE_BITS.get(summary["type"])
    return summary


def _string(f) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    if length > 1 << 26:
        raise ValueError("implausible string length")
    return f.read(length).decode("utf-8")


def _value(f, kind: int, keep: bool):
    if kind == 8:
        return _string(f)
    if kind == 9:
        item_kind, count = struct.unpack("<IQ", f.read(12))
        if item_kind in _VALUE_SIZES and not keep:
            f.seek(_VALUE_SIZES[item_kind] * count, 1)
            return None
        return [_value(f, item_kind, keep) for _ in range(count)]
    if kind not in _VALUE_FORMATS:
        raise ValueError(f"unknown GGUF value type {kind}")
    return struct.unpack(_VALUE_FORMATS[kind], f.read(_VALUE_SIZES[kind]))[0]
