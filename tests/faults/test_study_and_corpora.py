"""Malformed study YAML, ``report`` on a non-study folder, bad corpora and tokenizers: one line, exit 2."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml


def _cfg(base_path: Path, ft_path: Path, **changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "base": "base",
        "models": [{"name": "base", "path": str(base_path)}, {"name": "ft", "path": str(ft_path)}],
        "stages": ["diff"],
    }
    cfg.update(changes)
    return cfg


# name -> (the YAML text, or a function of (base, ft) giving the config mapping; expected error)
STUDY_CASES: dict[str, tuple[Any, str]] = {
    "invalid YAML": ("base: [unclosed\n", "invalid YAML"),
    "empty file": ("", "study must be a mapping"),
    "a list": ("- a\n- b\n", "study must be a mapping"),
    "unknown key": (lambda b, f: _cfg(b, f, foo=1), "unknown key\\(s\\) in study: foo"),
    "models a mapping": (lambda b, f: _cfg(b, f, models={"a": "b"}), "models must be a list"),
    "model without path": (lambda b, f: _cfg(b, f, models=[{"name": "base"}]), "path must be a non-empty string"),
    "model path missing": (
        lambda b, f: _cfg(b, f, models=[{"name": "base", "path": str(b)}, {"name": "ft", "path": "/nope"}]),
        "/nope does not exist",
    ),
    "base not a model": (lambda b, f: _cfg(b, f, base="other"), "base 'other' is not one of the models"),
    "one model": (lambda b, f: _cfg(b, f, models=[{"name": "base", "path": str(b)}]), "at least one fine-tuned"),
    "duplicate names": (
        lambda b, f: _cfg(b, f, models=[{"name": "base", "path": str(b)}, {"name": "base", "path": str(f)}]),
        "names must be unique",
    ),
    "unknown stage": (lambda b, f: _cfg(b, f, stages=["diffs"]), "unknown stage 'diffs'"),
    "stages a string": (lambda b, f: _cfg(b, f, stages="diff"), "stages must be a list"),
    "edit of an unknown model": (lambda b, f: _cfg(b, f, edits=[{"name": "e", "terms": {"x": 1}}]), "names 'x'"),
    "edit λ not a number": (
        lambda b, f: _cfg(b, f, edits=[{"name": "e", "terms": {"ft": "abc"}}]),
        "λ must be a number, got 'abc'",
    ),
    "edit target unknown": (
        lambda b, f: _cfg(b, f, edits=[{"name": "e", "terms": {"ft": 1}, "target": "zz"}]),
        "target must be 'pre' or a tuned model",
    ),
    "sweep of an unknown vector": (lambda b, f: _cfg(b, f, sweep={"vector": "x", "scales": [1]}), "sweep.vector"),
    "sweep scales not a list": (lambda b, f: _cfg(b, f, sweep={"vector": "ft", "scales": 1}), "must be a list"),
    "sweep scale a string": (lambda b, f: _cfg(b, f, sweep={"vector": "ft", "scales": ["a"]}), "must be a number"),
    "corpus missing": (lambda b, f: _cfg(b, f, corpus=["/nope.txt"]), "corpus file /nope.txt does not exist"),
    "tasks a string": (lambda b, f: _cfg(b, f, tasks="t.jsonl"), "tasks must be a list"),
    "unknown stage key": (lambda b, f: _cfg(b, f, subspace={"foo": 1}), "unknown key\\(s\\) in subspace: foo"),
    "energy a scalar": (lambda b, f: _cfg(b, f, subspace={"energy": 0.9}), "subspace.energy must be a list of numbers"),
    "energy out of range": (lambda b, f: _cfg(b, f, subspace={"energy": [1.5]}), "energy values must be in"),
    "seq_len a string": (lambda b, f: _cfg(b, f, activations={"seq_len": "abc"}), "seq_len must be an integer"),
    "max_tokens zero": (lambda b, f: _cfg(b, f, activations={"max_tokens": 0}), "--max-tokens must be positive"),
    "dtype unknown": (lambda b, f: _cfg(b, f, activations={"dtype": "int8"}), "dtype must be one of float32, bfloat16"),
    "limit zero": (lambda b, f: _cfg(b, f, evaluate={"limit": 0}), "evaluate.limit, batch_size .* at least 1"),
    "batch_size a float": (
        lambda b, f: _cfg(b, f, evaluate={"batch_size": 2.5}),
        "evaluate.batch_size must be an integer",
    ),
    "embeddings not a bool": (lambda b, f: _cfg(b, f, diff={"embeddings": "yes"}), "must be true or false"),
    "per_head a number": (lambda b, f: _cfg(b, f, subspace={"per_head": 1}), "must be true or false"),
}


@pytest.mark.parametrize("case", list(STUDY_CASES))
def test_bad_study_yaml(case: str, pair: tuple[Path, Path], tmp_path: Path, fault: Any) -> None:
    base, ft = pair
    source, match = STUDY_CASES[case]
    text = source if isinstance(source, str) else yaml.safe_dump(source(base, ft))
    cfg = tmp_path / "study.yaml"
    cfg.write_text(text)
    out = tmp_path / "run"
    fault(["study", cfg, "-o", out, "-q"], inputs=[base, ft, cfg], match=match, out=out)


def test_missing_study_yaml(tmp_path: Path, fault: Any) -> None:
    fault(["study", tmp_path / "nope.yaml", "-o", tmp_path / "run"], inputs=[], match="nope.yaml: cannot read")


def test_report_on_a_folder_that_is_not_a_study(pair: tuple[Path, Path], tmp_path: Path, fault: Any) -> None:
    base, _ = pair
    fault(["report", tmp_path / "nope"], inputs=[base], match="no such study folder")
    fault(["report", base], inputs=[base], match="no stage outputs found")
    empty = tmp_path / "empty"
    empty.mkdir()
    fault(["report", empty], inputs=[empty], match="no stage outputs found")
    broken = tmp_path / "broken"
    (broken / "diff").mkdir(parents=True)
    (broken / "diff" / "summary.json").write_text("{")
    (broken / "study.json").write_text("[")
    fault(["report", broken], inputs=[broken], match="cannot read")


def test_report_into_a_read_only_folder(pair: tuple[Path, Path], tmp_path: Path, fault: Any) -> None:
    """A study folder on a filesystem remounted read-only: the report cannot be written, one line."""
    import subprocess

    from click.testing import CliRunner

    from tunelens.cli import cli

    base, ft = pair
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"SKIPPED LOUDLY: cannot mount a tmpfs here ({r.stderr.strip()}); needs root or CAP_SYS_ADMIN")
    try:
        res = CliRunner().invoke(cli, ["diff", str(base), str(ft), "-o", str(mnt / "diff"), "-q"])
        assert res.exit_code == 0, res.output
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        fault(["report", mnt], inputs=[mnt], match="cannot write the report there .*Read-only file system")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


CORPUS_CASES: dict[str, tuple[Any, str]] = {
    "missing": (lambda d: d / "nope.txt", "corpus .*nope.txt: no such file or folder"),
    "empty file": (lambda d: (d / "empty.txt").write_text("") and None or d / "empty.txt", "the corpus holds no text"),
    "empty folder": (lambda d: (d / "sub").mkdir() or d / "sub", "holds no .txt / .jsonl files"),
    "binary file": (
        lambda d: (d / "b.txt").write_bytes(bytes(range(256)) * 8) and None or d / "b.txt",
        "not UTF-8 text",
    ),
    "looping folder": (
        lambda d: ((d / "loop").mkdir(), (d / "loop" / "self").symlink_to(d / "loop"))[0] or d / "loop",
        "holds no .txt / .jsonl files",
    ),
    "symlink loop": (lambda d: (d / "l.txt").symlink_to(d / "l.txt") or d / "l.txt", "l.txt: symlink loop"),
    "jsonl without the field": (
        lambda d: (d / "x.jsonl").write_text('{"body": "hello"}\n') and None or d / "x.jsonl",
        "expected an object with a string 'text' field",
    ),
}


@pytest.mark.parametrize("case", list(CORPUS_CASES))
def test_bad_corpus(case: str, pair: tuple[Path, Path], tmp_path: Path, fault: Any) -> None:
    base, _ = pair
    make, match = CORPUS_CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    corpus = make(data)
    out = tmp_path / "out"
    args = ["activations", base, "--corpus", corpus, "--seq-len", "16", "--max-tokens", "64", "-o", out, "-q"]
    fault(args, inputs=[base, data], match=match, out=out)


def test_a_different_tokenizer(pair: tuple[Path, Path], corpus_file: Path, tmp_path: Path, fault: Any) -> None:
    from tunelens.testing import save_tokenizer

    base, ft = pair
    other = shutil.copytree(ft, tmp_path / "other")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (other / f).unlink(missing_ok=True)
    save_tokenizer(other, vocab_size=300)
    out = tmp_path / "out"
    args = ["activations", base, other, "--corpus", corpus_file, "--seq-len", "16", "--max-tokens", "64", "-o", out]
    fault(args, inputs=[base, other, corpus_file], match="tokenizers differ", out=out)


def test_a_corpus_folder_that_links_to_itself_is_read_once(
    pair: tuple[Path, Path], corpus_file: Path, tmp_path: Path
) -> None:
    """A folder holding a link back to itself is walked once (no endless walk), its text counted once."""
    import json

    from click.testing import CliRunner

    from tunelens.cli import cli

    base, _ = pair
    loop = tmp_path / "loop"
    loop.mkdir()
    shutil.copy(corpus_file, loop / "a.txt")
    (loop / "self").symlink_to(loop)
    runs = {}
    for name, corpus in (("loop", loop), ("file", corpus_file)):
        out = tmp_path / f"out-{name}"
        args = ["activations", str(base), "--corpus", str(corpus), "--seq-len", "16", "-o", str(out), "-q"]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        runs[name] = json.loads((out / "activations.json").read_text())["models"][0]["tokens"]
    assert runs["loop"] == runs["file"]


@pytest.mark.parametrize("state", ["{", "[]", '{"stages": 3}'])
def test_resume_with_a_broken_study_state(state: str, pair: tuple[Path, Path], tmp_path: Path, fault: Any) -> None:
    base, ft = pair
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(base, ft)))
    out = tmp_path / "run"
    out.mkdir()
    (out / "study.json").write_text(state)
    args = ["study", cfg, "-o", out, "--resume", "-q"]
    fault(args, inputs=[base, ft, cfg], match="study.json: .*--force to start over", out=out)
