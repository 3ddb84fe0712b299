"""The non-weight files of an edited checkpoint: config, tokenizer and generation config copied from
the target, and a short model card (``README.md``) that states the recipe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunelens.arithmetic.combine import ApplyPlan

#: files copied from the target folder when present (never code: tunelens never trusts remote code)
SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def copy_side_files(src: Path, dst: Path, *, dtype: str | None = None) -> list[str]:
    """Copy ``config.json`` (its dtype updated when ``dtype`` is set) and :data:`SIDE_FILES`."""
    config = json.loads((src / "config.json").read_text())
    if dtype is not None:
        for key in ("torch_dtype", "dtype"):
            if key in config:
                config[key] = dtype
        if "torch_dtype" not in config and "dtype" not in config:
            config["dtype"] = dtype
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    copied = ["config.json"]
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def write_card(path: Path, plan: ApplyPlan, meta: dict[str, Any]) -> None:
    """A short model card: front matter (base_model, tags) and the recipe in words."""
    recipe = plan.recipe
    terms = []
    for term in recipe.terms:
        sel = term.selection
        extra = []
        if sel.components is not None:
            extra.append(f"components {','.join(sel.components)}")
        if sel.layers is not None:
            extra.append(f"layers {','.join(str(x) for x in sel.layers)}")
        if not sel.embeddings:
            extra.append("no embeddings")
        if term.component_scales:
            extra.append("factors " + ", ".join(f"{c}×{f:g}" for c, f in term.component_scales))
        tail = f" ({'; '.join(extra)})" if extra else ""
        terms.append(f"- `{term.spec.name}` = `{term.spec.path}`, λ = {term.spec.scale:g}{tail}")
    method: str = recipe.method
    if method != "sum":
        method += f" (density {recipe.density:g}" + (f", seed {recipe.seed})" if method.startswith("dare") else ")")
    lines = [
        "---",
        f"base_model: {plan.base.name}",
        "library_name: transformers",
        "tags:",
        "- tunelens",
        "- task-arithmetic",
        "- merge",
        "---",
        "",
        f"# {path.parent.name.lstrip('.').split('.tmp-')[0]}",
        "",
        "Written by `tunelens apply`: θ = θ_target + Σᵢ λᵢ τᵢ with τᵢ = θ_ft,i − θ_base, per tensor, "
        "computed in float32.",
        "",
        f"- base: `{plan.base.name}` ({plan.base.path}), target: `{plan.target.name}` ({recipe.target})",
        f"- method: {method}",
        f"- output dtype: {meta['output_dtype']}; tensors edited: {meta['tensors']['edited']} of "
        f"{meta['tensors']['written']}",
        "",
        "Vectors:",
        "",
        *terms,
        "",
        "The full recipe, the inputs' sha256 and every skipped or cropped tensor are in `tunelens.json`.",
        "",
    ]
    path.write_text("\n".join(lines))
