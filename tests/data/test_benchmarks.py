"""The bundled benchmark copies: complete (data, LICENSE, README per folder), described by sources.json
exactly (rows, bytes, sha256, as each README also states), byte for byte the shared copy where that
folder exists, and read by the built-in tasks unless --data-dir / $TUNELENS_DATA say otherwise."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from tunelens.data import benchmark_sources, benchmarks_dir
from tunelens.evaluation.tasks import DATA_ENV, builtin_names, resolve_task

ROOT = benchmarks_dir()


def _shared_data() -> Path | None:
    """``shared/data`` beside the checkout or one of its parents (the copy the bundle was made from)."""
    for parent in Path(__file__).resolve().parents:
        cand = parent / "shared" / "data"
        if (cand / "README.md").is_file():
            return cand
    return None


def test_every_folder_has_data_licence_and_provenance() -> None:
    datasets = benchmark_sources()["datasets"]
    assert sorted(datasets) == ["gsm8k", "mmlu", "pubmedqa"]
    for folder, rec in datasets.items():
        assert (ROOT / rec["license_file"]).read_text().startswith("MIT License") and rec["licence"] == "MIT"
        readme = (ROOT / rec["readme"]).read_text()
        assert rec["repository"] in readme and rec["commit"] in readme
        on_disk = sorted(p.name for p in (ROOT / folder).glob("*.jsonl"))
        assert on_disk == sorted(rec["files"])
        for name, meta in rec["files"].items():
            blob = (ROOT / folder / name).read_bytes()
            assert hashlib.sha256(blob).hexdigest() == meta["sha256"] and len(blob) == meta["bytes"]
            assert sum(1 for line in blob.decode().splitlines() if line.strip()) == meta["rows"]
            assert re.search(rf"`{re.escape(name)}` \| {meta['rows']} \| {meta['bytes']} \| `{meta['sha256']}`", readme)
    assert "release" in (ROOT / "mmlu" / "README.md").read_text()  # the notes on the MMLU release are kept


def test_bundle_is_the_shared_copy_byte_for_byte() -> None:
    shared = _shared_data()
    if shared is None:
        pytest.skip("no shared/data folder beside this checkout to compare with")
    files = sorted(p.relative_to(shared) for p in shared.rglob("*") if p.is_file())
    assert files, shared
    for rel in files:
        assert (ROOT / rel).read_bytes() == (shared / rel).read_bytes(), rel
    extra = {p.relative_to(ROOT) for p in ROOT.rglob("*") if p.is_file()} - set(files)
    assert extra == {Path("sources.json")}


def test_builtin_tasks_read_the_bundle_unless_overridden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    for name in builtin_names():
        task = resolve_task(name)
        assert task.data.is_relative_to(ROOT) and task.data.is_file()
        assert task.fewshot_data is None or task.fewshot_data.is_file()
    (tmp_path / "mmlu").mkdir()
    mine = tmp_path / "mmlu" / "medical.test.jsonl"
    mine.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0}) + "\n")
    assert resolve_task("mmlu_medical", data_dir=tmp_path).data == mine
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert resolve_task("mmlu_medical").data == mine
    monkeypatch.setenv(DATA_ENV, "")
    assert resolve_task("mmlu_medical").data.is_relative_to(ROOT)
