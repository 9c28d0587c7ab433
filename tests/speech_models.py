"""A tiny random Whisper, made with mlx-audio's own classes.

No trained Whisper ships in a package here, so the tests build an MLX folder
as mlx-community converts Whisper (config.json with Whisper's dimensions,
safetensors, a tokenizer with Whisper's special tokens, the feature
extractor's config) and check Impetus's transcription against mlx-audio's
own `generate` on the same waveform. English-only (a vocabulary under
Whisper's multilingual 51,865), so no language detection runs.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS_BEFORE = ["<|endoftext|>", "<|startoftranscript|>"]
SPECIALS_AFTER = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                  "<|notimestamps|>"]
CORPUS = ["hello world this is a test of the speech server", "the quick brown fox jumps over the lazy dog",
          "one two three four five six seven eight nine ten"] * 20


def whisper(folder: Path, seed: int = 5, scale: float = 0.05) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_audio.stt.models.whisper.whisper import Model, ModelDimensions
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True, exist_ok=True)
    languages = ["<|en|>"]
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(SPECIALS_BEFORE + languages + SPECIALS_AFTER + timestamps)
    tok.save(str(folder / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "WhisperTokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "model_max_length": 1024,
        "errors": "replace"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80, "sampling_rate": 16000,
        "hop_length": 160, "chunk_length": 30, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000,
        "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False,
        "processor_class": "WhisperProcessor"}))
    dims = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 32, "n_audio_head": 2, "n_audio_layer": 2,
            "n_vocab": vocab, "n_text_ctx": 448, "n_text_state": 32, "n_text_head": 2, "n_text_layer": 2}
    (folder / "config.json").write_text(json.dumps({"model_type": "whisper", **dims}))
    mx.random.seed(seed)
    model = Model(ModelDimensions.from_dict(dims), mx.float32)
    flat = tree_flatten(model.parameters())
    keys = mx.random.split(mx.random.key(seed), len(flat))
    new = [(n, v if ("ln" in n or "positional" in n) else scale * mx.random.normal(v.shape, key=k))
           for (n, v), k in zip(flat, keys)]
    model.update(tree_unflatten(new))
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    return folder
