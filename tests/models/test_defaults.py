"""What a model folder says of itself, read without loading it: its default
sampling parameters and their sources (models.defaults), and its
capabilities (models.metadata), over small GGUF imports."""

from __future__ import annotations

import json

import pytest

from impetus.models.defaults import resolve
from impetus.models.gguf import import_gguf
from impetus.models.metadata import read_metadata
from impetus.models.registry import AliasError, Registry

from tiny_gguf import THINKING_TEMPLATE, write_tiny

FIM = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
TOOLS_TEMPLATE = ("{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    home = tmp_path_factory.mktemp("defaults")
    made = {
        "plain": write_tiny(home / "plain.gguf", "qwen2", "F32", meta={"general.sampling.top_p": 0.8}),
        "coder": write_tiny(home / "coder.gguf", "qwen2", "F32", extra_tokens=[(t, 3) for t in FIM],
                            template=TOOLS_TEMPLATE),
        "thinker": write_tiny(home / "thinker.gguf", "llama", "F32", thinking=True, template=THINKING_TEMPLATE),
    }
    for name, path in made.items():
        import_gguf(path, home / "models", name=name)
    return home / "models"


def test_generation_config_then_the_gguf_then_an_alias(models):
    folder = models / "plain"
    assert resolve(folder).describe() == {"top_p": {"value": pytest.approx(0.8), "source": "gguf"}}
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({
        **config, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 5.0, "do_sample": True}))
    shown = resolve(folder).describe(server_temperature=1.0)
    # The GGUF's own key is over generation_config.json's; min_p 5 is out of bounds and dropped.
    assert shown == {"temperature": {"value": 0.6, "source": "generation_config"},
                     "top_p": {"value": pytest.approx(0.8), "source": "gguf"},
                     "top_k": {"value": 20, "source": "generation_config"}}
    registry = Registry(models)
    entry = registry.add_alias("plain-cold", "plain", sampling={"temperature": 0.0, "stop": ["END"]})
    assert entry.defaults.describe()["temperature"] == {"value": 0.0, "source": "alias"}
    assert registry.find("plain-cold").defaults.values["stop"] == ["END"]
    assert registry.find("plain-cold").defaults.sources["top_k"] == "generation_config"
    for bad, message in (({"temperature": 2.5}, "out of bounds"), ({"top_q": 1}, "unknown sampling parameter")):
        with pytest.raises(AliasError, match=message):
            registry.add_alias("plain-bad", "plain", sampling=bad)


def test_capabilities_are_read_from_the_folder(models):
    plain, coder, thinker = (read_metadata(models / name).capabilities() for name in ("plain", "coder", "thinker"))
    assert plain == {"context_length": 256, "chat": True, "tools": False, "reasoning": None,
                     "fill_in_middle": False, "vision": False, "embeddings": False}
    assert coder["tools"] and coder["fill_in_middle"] and coder["reasoning"] is None
    assert thinker["reasoning"] == "think" and not thinker["tools"]
