"""Tiny real models for tests and benchmarks, built offline from config objects in seconds.

Every supported family has a tiny config (hidden 32, 2-3 layers, GQA where the family has it). A
byte-level BPE tokenizer is trained on a few lines of text so the models also load, tokenize and
generate through transformers. :func:`perturb` writes a "fine-tune" by adding seeded noise to the
chosen tensors of an existing folder, keeping its sharding.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TINY_VOCAB = 320
_TEXT = (
    "The patient presented with fever and a persistent cough. Blood pressure was normal. "
    "Solve for x: 2x + 3 = 11, so x = 4. def add(a, b): return a + b\n"
    "Question: Which organ filters blood? Answer: the kidney. <think>reasoning</think> Answer: B\n"
    "Abnormality of the heart. Seizures. Hypertension is high blood pressure. 0123456789 +-*/=()[]{}"
)


def tiny_config(family: str, **overrides: Any) -> Any:
    """A tiny ``transformers`` config of ``family`` (llama, llama_tied, mistral, qwen2, qwen3,
    gemma, gemma2, gemma3, phi3, gpt2)."""
    import transformers as tf

    common: dict[str, Any] = {
        "vocab_size": TINY_VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
    }
    makers: dict[str, Callable[[], Any]] = {
        "llama": lambda: tf.LlamaConfig(**common, tie_word_embeddings=False),
        "llama_tied": lambda: tf.LlamaConfig(**common, tie_word_embeddings=True),
        "mistral": lambda: tf.MistralConfig(**common),
        "qwen2": lambda: tf.Qwen2Config(**common),
        "qwen3": lambda: tf.Qwen3Config(**common, head_dim=8),
        "gemma": lambda: tf.GemmaConfig(**common, head_dim=8),
        "gemma2": lambda: tf.Gemma2Config(**common, head_dim=8),
        "gemma3": lambda: tf.Gemma3TextConfig(**common, head_dim=8),
        "phi3": lambda: tf.Phi3Config(**common),
        "gpt2": lambda: tf.GPT2Config(
            vocab_size=TINY_VOCAB,
            n_embd=32,
            n_layer=3,
            n_head=4,
            n_positions=128,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        ),  # fmt: skip
    }
    if family not in makers:
        raise ValueError(f"unknown tiny family {family}; choose from {', '.join(makers)}")
    cfg = makers[family]()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


FAMILIES = ("llama", "llama_tied", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2")


def save_tokenizer(folder: Path, vocab_size: int = TINY_VOCAB) -> None:
    """Train a byte-level BPE tokenizer on a few fixed lines and save it in ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TEXT] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(str(folder))


def make_tiny(
    family: str,
    folder: Path,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | int | None = None,
    tokenizer: bool = True,
    **overrides: Any,
) -> Path:
    """Build a randomly initialised tiny model of ``family`` and save it (optionally sharded)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides))  # type: ignore[no-untyped-call]
    model = model.to(dtype)
    folder = Path(folder)
    kwargs: dict[str, Any] = {}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(str(folder), **kwargs)
    if tokenizer:
        save_tokenizer(folder)
    return folder


def perturb(
    src: Path,
    dst: Path,
    *,
    scale: float = 1e-2,
    seed: int = 1,
    only: Callable[[str], bool] | None = None,
    fn: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> Path:
    """Copy ``src`` to ``dst`` adding ``scale``·N(0,1)·rms(W) to tensors ``only`` selects.

    ``fn(name, tensor)`` replaces the noise with any edit. Sharding, config and tokenizer are kept.
    """
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    for shard in sorted(src.glob("*.safetensors")):
        state = load_file(str(shard))
        for name in sorted(state):
            if only is not None and not only(name):
                continue
            t = state[name]
            if not t.is_floating_point():
                continue
            if fn is not None:
                state[name] = fn(name, t).to(t.dtype).contiguous()
                continue
            w = t.float()
            rms = w.pow(2).mean().sqrt().clamp_min(1e-3)
            noise = torch.randn(w.shape, generator=gen) * scale * rms
            state[name] = (w + noise).to(t.dtype)
        save_file(state, str(dst / shard.name), metadata={"format": "pt"})
    return dst


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder (test reference only: loads everything)."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def write_config(folder: Path, **changes: Any) -> None:
    """Edit keys of ``folder/config.json`` in place (tests of mismatches)."""
    p = Path(folder) / "config.json"
    cfg = json.loads(p.read_text())
    cfg.update(changes)
    p.write_text(json.dumps(cfg, indent=2))


def make_lora(base: Path, dst: Path, *, seed: int = 2, std: float = 0.05, **config: Any) -> Path:
    """Save a PEFT LoRA adapter of the model in ``base`` with random (non-zero) factors.

    ``config`` are ``peft.LoraConfig`` fields (``target_modules``, ``r``, ``lora_alpha``, ``rank_pattern``,
    ``modules_to_save``, ``use_rslora``, ``fan_in_fan_out``...). Every trainable tensor (both factors, saved
    modules, trained biases) gets seeded N(0, std) noise, so the adapter changes the model.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(peft_model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * std)
    peft_model.save_pretrained(str(dst))
    return Path(dst)


def merge_lora(base: Path, adapter: Path, dst: Path) -> Path:
    """PEFT's own ``merge_and_unload`` of ``adapter`` onto ``base``, saved as a model folder (the reference)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(dst))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(base) / name).exists():
            shutil.copy2(Path(base) / name, Path(dst) / name)
    return Path(dst)
