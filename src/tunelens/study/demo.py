"""The embedded default study: the demo zoo (a base and its domain fine-tunes) through every stage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelens.study.config import StudyConfig

if TYPE_CHECKING:
    from tunelens.zoo import Zoo


def demo_config(zoo: Zoo, *, limit: int | None = 40, sweep: tuple[float, ...] = (-1.0, 0.0, 0.5, 1.0)) -> StudyConfig:
    """Negation of each domain vector from the base (the paper's "(−)T" as task arithmetic, θ_pre − τ),
    the addition of the first two domains' vectors (paper Fig. 4), and a λ sweep of the first domain."""
    domains = list(zoo.tuned)
    data: dict[str, Any] = {
        "title": f"tunelens demo: {zoo.root.name}",
        "base": "base",
        "models": [{"name": "base", "path": str(zoo.base)}]
        + [{"name": d, "path": str(p), "parent": "base"} for d, p in zoo.tuned.items()],
        "corpus": [str(zoo.corpus[d]) for d in domains[:1] if d in zoo.corpus],
        "tasks": [str(path) for path in zoo.tasks.values()],
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
