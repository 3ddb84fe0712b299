"""Data shipped inside the package: offline copies of the built-in tasks' benchmarks.

``benchmarks/`` holds MMLU (medical, math, code and general subject groups; the pre-release snapshot, see
``mmlu/README.md`` for how it differs from the later release), GSM8K and PubMedQA, all MIT-licensed. Each
folder keeps the source's ``LICENSE`` and a ``README.md`` of provenance (repository, commit, conversion
rules, checks); ``sources.json`` lists each folder's source, commit and licence and each file's rows,
bytes and sha256. Built-in evaluation tasks read these files unless ``--data-dir`` or ``$TUNELENS_DATA``
names another folder of the same layout.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any


def benchmarks_dir() -> Path:
    """The folder of the bundled benchmark copies (``mmlu/``, ``gsm8k/``, ``pubmedqa/``)."""
    return Path(str(resources.files("tunelens.data") / "benchmarks"))


def benchmark_sources() -> dict[str, Any]:
    """``benchmarks/sources.json``: per folder, the dataset, repository, commit, licence and files."""
    data: dict[str, Any] = json.loads((benchmarks_dir() / "sources.json").read_text(encoding="utf-8"))
    return data
