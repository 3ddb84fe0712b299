"""Hugging Face cache ids (org/name[@revision]) resolve offline to the cached snapshot folder."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunelens.checkpoints.hub import hub_cache_dir, resolve_hub_id
from tunelens.checkpoints.index import open_checkpoint
from tunelens.cli import cli
from tunelens.errors import TunelensError


def _snapshot(repo: Path, commit: str, src: Path) -> None:
    """Store ``src``'s files as huggingface_hub does: content-addressed blobs, symlinked snapshot."""
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)


def _ref(repo: Path, ref: str, commit: str) -> None:
    p = repo / "refs" / ref
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(commit)


COMMIT_MAIN = "a" * 8 + "1" * 32
COMMIT_TAG = "b" * 8 + "2" * 32


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, tiny, tuned) -> Path:
    """A hub cache with org/base (main → base weights, tag v1.0 → other weights) and org/ft."""
    root = tmp_path_factory.mktemp("hf") / "hub"
    base = tiny("llama")
    repo = root / "models--org--base"
    _snapshot(repo, COMMIT_MAIN, base)
    _snapshot(repo, COMMIT_TAG, tuned(base, seed=7))
    _ref(repo, "main", COMMIT_MAIN)
    _ref(repo, "v1.0", COMMIT_TAG)
    _ref(repo, "refs/pr/1", COMMIT_TAG)
    ft = root / "models--org--ft"
    _snapshot(ft, COMMIT_MAIN, tuned(base, seed=1))
    _ref(ft, "main", COMMIT_MAIN)
    return root


@pytest.fixture
def hub_env(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize(
    ("spec", "commit"),
    [
        ("org/base", COMMIT_MAIN),
        ("org/base@main", COMMIT_MAIN),
        ("org/base@v1.0", COMMIT_TAG),
        ("org/base@refs/pr/1", COMMIT_TAG),
        (f"org/base@{COMMIT_TAG}", COMMIT_TAG),
        (f"org/base@{COMMIT_TAG[:9]}", COMMIT_TAG),
    ],
)
def test_resolves_revisions(hub_env: Path, spec: str, commit: str) -> None:
    from huggingface_hub import try_to_load_from_cache

    ck = open_checkpoint(spec)
    assert ck.path == hub_env / "models--org--base" / "snapshots" / commit
    assert ck.name == "base"
    d = ck.describe()
    assert d["hub_id"] == "org/base" and d["revision"] == commit
    # huggingface_hub's own cache lookup finds the same file (it takes refs and full commits)
    rev = spec.partition("@")[2] or None
    if rev is None or len(rev) != 9:
        ref = try_to_load_from_cache("org/base", "config.json", cache_dir=str(hub_env), revision=rev)
        assert isinstance(ref, str) and Path(ref) == ck.path / "config.json"
    # symlinked snapshot files are followed: tensors read like the folder's
    assert set(ck.tensors) == set(open_checkpoint(ck.path.resolve()).tensors)


def test_name_prefix_and_hf_home(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    assert hub_cache_dir() == cache
    ck = open_checkpoint("med=org/ft@main")
    assert ck.name == "med" and ck.describe()["revision"] == COMMIT_MAIN
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(cache))
    assert open_checkpoint("org/ft").path.parent.parent.name == "models--org--ft"


def test_local_path_wins(hub_env: Path, tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "org" / "base"
    local.parent.mkdir()
    os.symlink(tiny("qwen2"), local)
    monkeypatch.chdir(tmp_path)
    ck = open_checkpoint("org/base")
    assert ck.arch.model_type == "qwen2" and "hub_id" not in ck.describe()


def test_uncached_id_names_cache_and_nearest(hub_env: Path) -> None:
    with pytest.raises(TunelensError) as err:
        open_checkpoint("org/bsae")
    msg = str(err.value)
    assert "\n" not in msg and str(hub_env) in msg and "nearest cached: org/base" in msg


def test_missing_revision_lists_refs(hub_env: Path) -> None:
    with pytest.raises(TunelensError) as err:
        resolve_hub_id("org/base@v2.0")
    msg = str(err.value)
    assert "v2.0" in msg and "main, refs/pr/1, v1.0" in msg and "\n" not in msg


def test_missing_snapshot(hub_env: Path) -> None:
    _ref(hub_env / "models--org--ft", "dangling", "c" * 40)
    with pytest.raises(TunelensError, match="whose snapshot is not in the cache"):
        open_checkpoint("org/ft@dangling")


def test_cli_uncached_id_exits_2(hub_env: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["diff", "org/nothere", "org/ft", "-o", str(tmp_path / "o"), "-q"])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: org/nothere") and str(hub_env) in lines[0]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_diff_on_ids_equals_diff_on_folders(hub_env: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["diff", "org/base", "org/ft", "-o", str(tmp_path / "ids"), "-q"])
    assert r.exit_code == 0, r.output
    base = hub_env / "models--org--base" / "snapshots" / COMMIT_MAIN
    ft = hub_env / "models--org--ft" / "snapshots" / COMMIT_MAIN
    r = runner.invoke(cli, ["diff", str(base), f"ft={ft}", "-o", str(tmp_path / "dirs"), "-q"])
    assert r.exit_code == 0, r.output
    by_ids, by_dirs = _rows(tmp_path / "ids" / "tensors.csv"), _rows(tmp_path / "dirs" / "tensors.csv")
    assert by_ids == by_dirs and len(by_ids) > 10
    import json

    meta = json.loads((tmp_path / "ids" / "summary.json").read_text())
    assert [i.get("hub_id") for i in meta["inputs"]] == ["org/base", "org/ft"]
    assert all(i["revision"] == COMMIT_MAIN for i in meta["inputs"])


def test_apply_with_ids_equals_apply_with_folders(hub_env: Path, tmp_path: Path) -> None:
    from tunelens.testing import read_state

    runner = CliRunner()
    r = runner.invoke(cli, ["apply", "org/base@main", "-v", "org/ft@main:0.5", "-o", str(tmp_path / "ids"), "-q"])
    assert r.exit_code == 0, r.output
    base = hub_env / "models--org--base" / "snapshots" / COMMIT_MAIN
    ft = hub_env / "models--org--ft" / "snapshots" / COMMIT_MAIN
    r = runner.invoke(cli, ["apply", str(base), "-v", f"{ft}:0.5", "-o", str(tmp_path / "dirs"), "-q"])
    assert r.exit_code == 0, r.output
    a, b = read_state(tmp_path / "ids"), read_state(tmp_path / "dirs")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_evaluate_loader_takes_an_id(hub_env: Path) -> None:
    """evaluate/activations load with from_pretrained(ck.path): the snapshot folder."""
    from tunelens.evaluation.model import load_model

    loaded = load_model("org/base")
    assert loaded.model.config.model_type == "llama"
    assert loaded.describe()["hub_id"] == "org/base" and loaded.tokenizer is not None


def test_inspect_shows_id_and_commit(hub_env: Path) -> None:
    r = CliRunner().invoke(cli, ["inspect", "org/base@v1.0"])
    assert r.exit_code == 0, r.output
    assert f"hub id: org/base @ v1.0 = commit {COMMIT_TAG}" in r.output
