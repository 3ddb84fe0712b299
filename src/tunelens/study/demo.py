"""The embedded default study: the demo zoo (a base and its domain fine-tunes) through every stage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tunelens.checkpoints.output import write_text_atomic
from tunelens.study.config import StudyConfig

if TYPE_CHECKING:
    from tunelens.zoo import Zoo


# Tasks the demo evaluates: champ_step is built into the zoo but left out here, because on the first
# run no model moved on it (0.5 for base, every fine-tune and every edit at 40 items) while it was the
# slowest multiple-choice task (~37 s per model).
DEMO_TASKS = ("hpo_term", "format_hpo", "champ_answer", "code_line")

#: Whether the demo studies the zoo's LoRA adapters: every stage reads PEFT adapter folders (the one tau
#: source), so the demo adds ``<domain>-lora`` (the zoo's LoRA fine-tune of that domain, same rows, steps and
#: tokens as the full one) right after ``<domain>``, comparing LoRA and full fine-tuning on every measure.
STUDY_READS_ADAPTERS = True


def heldout_tasks(zoo: Zoo) -> list[Path]:
    """``kind: perplexity`` tasks on each domain's held-out corpus, with the zoo's own held-out loss settings
    (``seq_len``, ``eval_tokens``), so the base's and fine-tunes' values equal zoo.json's; written next to
    the zoo's tasks (deterministic files, rewritten only when their content changes)."""
    spec = zoo.info()["spec"]
    out = []
    for domain, corpus in zoo.corpus.items():
        task = {
            "name": f"heldout_{domain}",
            "kind": "perplexity",
            "data": str(corpus),
            "prompt": "{{ text }}",
            "seq_len": int(spec["seq_len"]),
            "max_tokens": int(spec["eval_tokens"]),
            "description": f"held-out {domain} documents of the zoo (never trained on): loss and perplexity",
        }
        path = zoo.root / "tasks" / f"heldout_{domain}.yaml"
        text = yaml.safe_dump(task, sort_keys=False)
        if not path.exists() or path.read_text() != text:
            write_text_atomic(path, text)
        out.append(path)
    return out


def demo_config(
    zoo: Zoo, *, limit: int | None = 40, sweep: tuple[float, ...] = (0.5, 1.5), lora: bool | None = None
) -> StudyConfig:
    """Negation of each domain vector from the base (the paper's "(−)T" as task arithmetic, θ_pre − τ),
    the addition of the first two domains' vectors (paper Fig. 4), and a λ sweep of the first domain.

    The sweep's default scales are the ones no other entry evaluates: λ = 0 is the base, λ = 1 the
    fine-tune and λ = −1 its negation, all already in the study. ``lora`` (default
    :data:`STUDY_READS_ADAPTERS`) adds the zoo's LoRA adapters as models, each after its domain's full one."""
    lora = STUDY_READS_ADAPTERS if lora is None else lora
    domains = list(zoo.tuned)
    tasks = [str(path) for name, path in zoo.tasks.items() if name in DEMO_TASKS]
    tasks += [str(path) for path in heldout_tasks(zoo)]
    data: dict[str, Any] = {
        "title": f"tunelens demo: {zoo.root.name}",
        "base": "base",
        "models": [{"name": "base", "path": str(zoo.base)}] + _tuned_models(zoo, lora),
        "corpus": [str(zoo.corpus[d]) for d in domains[:1] if d in zoo.corpus],
        "tasks": tasks or [str(path) for path in zoo.tasks.values()],  # a zoo without them: all of its tasks
        "edits": [{"name": f"{d}-negated", "target": "pre", "terms": {d: -1.0}} for d in domains]
        + (
            [{"name": f"{domains[0]}+{domains[1]}", "target": "pre", "terms": {domains[0]: 1.0, domains[1]: 1.0}}]
            if len(domains) > 1
            else []
        ),  # fmt: skip
        "sweep": {"vector": domains[0], "scales": list(sweep)} if sweep else None,
        "evaluate": {"limit": limit},
    }
    return StudyConfig.from_dict(data, root=zoo.root)


def _tuned_models(zoo: Zoo, lora: bool) -> list[dict[str, str]]:
    """Each domain's full fine-tune, then (with ``lora``) its LoRA adapter: LoRA next to full in every table."""
    out = []
    for d, p in zoo.tuned.items():
        out.append({"name": d, "path": str(p), "parent": "base"})
        if lora and d in zoo.adapters:
            out.append({"name": f"{d}-lora", "path": str(zoo.adapters[d]), "parent": "base"})
    return out
