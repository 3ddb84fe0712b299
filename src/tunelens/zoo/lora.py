"""The zoo's LoRA fine-tunes: PEFT LoRA on every attention and MLP projection of the base, trained on the
same rows, steps and tokens as that domain's full fine-tune, saved as a PEFT adapter folder
(``adapter_config.json`` + ``adapter_model.safetensors``, ``base_model_name_or_path`` = the zoo's base).

τ of such an adapter is ``(lora_alpha / r) · B · A`` per target module and 0 elsewhere; PEFT's default
initialisation (A Kaiming-uniform, B = 0, seeded) makes it start at τ = 0.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from tunelens.zoo import LORA_TARGETS, ZooSpec


def add_lora(model: Any, spec: ZooSpec, seed: int, base: Path) -> Any:
    """``model`` wrapped by PEFT with LoRA adapters (r, alpha of ``spec``) on :data:`LORA_TARGETS`; only the
    adapters train. The initialisation is seeded, and the adapter records ``base`` as its base model."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # PEFT asks transformers 5 a deprecated question; nothing for the user to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = str(Path(base).resolve())
    return peft_model


def lora_recipe(spec: ZooSpec) -> dict[str, Any]:
    """What the LoRA fine-tune's card adds to (and overrides in) the full fine-tune's recipe."""
    return {
        "method": "PEFT LoRA (only the adapters train; the base, embeddings and norms frozen), the same packed rows, "
        "steps and tokens as the full fine-tune of this domain",
        "lr": spec.lora_lr,
        "lora": {
            "r": spec.lora_rank,
            "alpha": spec.lora_alpha,
            "scale": spec.lora_alpha / spec.lora_rank,
            "dropout": 0.0,
            "target_modules": list(LORA_TARGETS),
            "init": "PEFT default: A Kaiming-uniform (seeded), B = 0",
            "tau": "scale * B @ A per target module, 0 elsewhere",
        },
    }
