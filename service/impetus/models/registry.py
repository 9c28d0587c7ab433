"""The models this server can serve: the folders under <data dir>/models (MLX
folders and imported GGUFs) and aliases, kept in <data dir>/models/aliases.json.

An alias names another model, optionally served with other weights
(`impetus models alias small-q4 smollm2-135m-instruct --weights stored` serves
the stored 4-bit weights beside the float32 default): each alias is a model of
its own to the API, loaded, listed and unloaded on its own. An alias, or a
model folder of this data dir (`impetus models import --kv-bits 8`, kept in
its config.json's "impetus" section), may also hold its running requests'
KV caches in 8 or 4 bits, over the server's IMPETUS_KV_BITS. An alias may
set default sampling parameters (`--temperature 0.2`), over the folder's own
(`models.defaults`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from impetus.models import defaults as sampling_defaults
from impetus.models import store
from impetus.models.metadata import ModelMetadata, read_metadata

ALIASES_FILE = "aliases.json"
WEIGHTS_CHOICES = ("auto", "stored", "float32", "float16", "bfloat16")
KV_BITS_CHOICES, KV_GROUP_CHOICES = (4, 8), (32, 64, 128)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"  # a model name, here and in the admin API
_NAME = re.compile(NAME_PATTERN)


class AliasError(ValueError):
    pass


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    created: int
    alias_of: str | None = None
    weights_dtype: str | None = None  # None: the server's setting
    chat_template: str | None = None  # an alias's own template (Jinja), over the folder's
    kv_bits: int | None = None  # None: the server's setting (IMPETUS_KV_BITS)
    kv_group_size: int | None = None
    sampling: dict | None = None  # an alias's own default sampling parameters

    @property
    def defaults(self) -> sampling_defaults.Defaults:
        """Its default sampling parameters and their sources."""
        return sampling_defaults.resolve(self.path, self.sampling)

    @property
    def metadata(self) -> ModelMetadata:
        meta = read_metadata(self.path)
        if self.chat_template and not meta.chat_template:
            meta = dataclasses.replace(meta, chat_template=True)
        return meta


class Registry:
    def __init__(self, models_dir: Path):
        self.models_dir = models_dir

    # -- aliases ---------------------------------------------------------------

    def aliases(self) -> dict[str, dict]:
        try:
            return json.loads((self.models_dir / ALIASES_FILE).read_text())
        except FileNotFoundError:
            return {}

    def add_alias(self, name: str, target: str, weights_dtype: str | None = None,
                  chat_template: str | None = None, replace: bool = False, kv_bits: int | None = None,
                  kv_group_size: int | None = None, sampling: dict | None = None) -> ModelEntry:
        """`sampling`: default sampling parameters (models.defaults.KEYS) for the alias."""
        if not _NAME.match(name):
            raise AliasError(f"{name!r} is not a usable model name (letters, digits, . _ : -)")
        if store.is_model_folder(self.models_dir / name):
            raise AliasError(f"{name!r} is already a model folder in {self.models_dir}")
        if target in self.aliases():
            raise AliasError(f"{target!r} is itself an alias: point {name!r} at a model")
        if name in self.aliases() and not replace:
            raise AliasError(f"{name!r} is already an alias (of {self.aliases()[name]['target']!r})")
        if weights_dtype is not None and weights_dtype not in WEIGHTS_CHOICES:
            raise AliasError(f"weights must be one of {', '.join(WEIGHTS_CHOICES)}")
        kv = _kv_options(kv_bits, kv_group_size)
        sampling = _sampling(sampling)
        path = store.resolve_model(target, self.models_dir, progress=lambda m: None)
        aliases = self.aliases()
        aliases[name] = {"target": target if "/" not in target else str(path), "weights_dtype": weights_dtype, **kv}
        if chat_template is not None:
            aliases[name]["chat_template"] = check_template(chat_template)
        if sampling:
            aliases[name]["sampling"] = sampling
        self._write(aliases)
        return self.find(name)

    def set_chat_template(self, name: str, template: str) -> ModelEntry:
        """Give a model a chat template: an alias keeps it in aliases.json; a
        model folder of this data dir gets chat_template.jinja (transformers
        reads it from there); a folder served in place is not written to."""
        check_template(template)
        aliases = self.aliases()
        if name in aliases:
            aliases[name]["chat_template"] = template
            self._write(aliases)
            return self.find(name)
        entry = self.find(name)
        if entry.path.parent != self.models_dir:
            raise AliasError(f"{entry.path} is not a folder of this data dir: make an alias with the template "
                             f"(impetus models alias NEW-NAME {name} --chat-template FILE)")
        (entry.path / "chat_template.jinja").write_text(template)
        return self.find(name)

    def remove_alias(self, name: str) -> None:
        aliases = self.aliases()
        if name not in aliases:
            raise AliasError(f"{name!r} is not an alias")
        del aliases[name]
        self._write(aliases)

    def _write(self, aliases: dict) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        staging = self.models_dir / f".{ALIASES_FILE}.{os.getpid()}"
        staging.write_text(json.dumps(aliases, indent=2, sort_keys=True))
        staging.replace(self.models_dir / ALIASES_FILE)  # atomic: readers see old or new

    # -- lookups ---------------------------------------------------------------

    def entries(self) -> list[ModelEntry]:
        """Every model by name: folders, then the aliases whose target exists."""
        found = {m.name: ModelEntry(m.name, m.path, m.created) for m in store.list_models(self.models_dir)}
        for name in self.aliases():
            try:
                found[name] = self.find(name)
            except store.ModelNotFound:
                continue  # its target was removed; `impetus models list` shows it as broken
        return sorted(found.values(), key=lambda e: e.name)

    def find(self, reference: str, progress=lambda m: None) -> ModelEntry:
        """A name, an alias or a path to an MLX folder; ModelNotFound otherwise."""
        alias = self.aliases().get(reference)
        if alias is not None:
            path = store.resolve_model(alias["target"], self.models_dir, progress=progress)
            kv = {k: alias.get(k) for k in ("kv_bits", "kv_group_size")} if "kv_bits" in alias else _folder_kv(path)
            return ModelEntry(reference, path, _created(path), alias_of=alias["target"],
                              weights_dtype=alias.get("weights_dtype"), chat_template=alias.get("chat_template"),
                              sampling=alias.get("sampling"), **kv)
        path = store.resolve_model(reference, self.models_dir, progress=progress)
        name = reference if "/" not in reference else path.name
        return ModelEntry(name, path, _created(path), **_folder_kv(path))

    def set_kv_bits(self, name: str, kv_bits: int, kv_group_size: int | None = None) -> ModelEntry:
        """A model folder of this data dir serves its KV caches in `kv_bits`
        (its config.json's "impetus" section); a folder served in place is not
        written to."""
        kv = _kv_options(kv_bits, kv_group_size)
        entry = self.find(name)
        if entry.alias_of or entry.path.parent != self.models_dir or entry.path.is_symlink():
            raise AliasError(f"{entry.path} is not a model folder of this data dir: make an alias with it "
                             f"(impetus models alias NEW-NAME {name} --kv-bits {kv_bits})")
        config_path = entry.path / "config.json"
        config = json.loads(config_path.read_text())
        config["impetus"] = {**(config.get("impetus") or {}), **kv}
        config_path.write_text(json.dumps(config, indent=1))
        return self.find(name)


def _kv_options(kv_bits: int | None, kv_group_size: int | None) -> dict:
    if kv_bits is None:
        if kv_group_size is not None:
            raise AliasError("kv_group_size needs kv_bits")
        return {}
    if kv_bits not in KV_BITS_CHOICES:
        raise AliasError(f"kv_bits must be one of {', '.join(map(str, KV_BITS_CHOICES))}")
    if kv_group_size is not None and kv_group_size not in KV_GROUP_CHOICES:
        raise AliasError(f"kv_group_size must be one of {', '.join(map(str, KV_GROUP_CHOICES))}")
    return {"kv_bits": kv_bits, "kv_group_size": kv_group_size}


def _sampling(values: dict | None) -> dict:
    """An alias's default sampling parameters, each within the API's bounds."""
    values = {k: v for k, v in (values or {}).items() if v is not None}
    unknown = sorted(set(values) - set(sampling_defaults.KEYS))
    if unknown:
        raise AliasError(f"unknown sampling parameter {unknown[0]!r} (known: {', '.join(sampling_defaults.KEYS)})")
    usable = sampling_defaults.clean(values)
    for key in values:
        if key not in usable:
            raise AliasError(f"{key} {values[key]!r} is out of bounds")
    return usable


def _folder_kv(path: Path) -> dict:
    """A folder's own KV precision (`set_kv_bits`), none when unreadable."""
    try:
        section = json.loads((path / "config.json").read_text()).get("impetus") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: section[k] for k in ("kv_bits", "kv_group_size") if section.get(k) is not None}


def check_template(template: str) -> str:
    """The template, if it renders a two-turn conversation; AliasError otherwise."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template).render(
            messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            add_generation_prompt=True, bos_token="", eos_token="")
    except TemplateError as error:
        raise AliasError(f"the chat template does not render: {error}") from None
    return template


def _created(path: Path) -> int:
    return int((path / "config.json").stat().st_mtime)
