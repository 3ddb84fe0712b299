"""Outputs never touch inputs; --force replaces only what tunelens wrote; failures mid-write leave nothing.

Issue 14's reproductions (``apply base_copy ... -o base_copy --force`` replaced the base;
``diff base ft_copy -o ft_copy --force`` deleted the fine-tune) for every command that writes, plus
read-only and full filesystems, Ctrl-C mid-write and two runs onto one output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tunelens.checkpoints.output import MARKER
from tunelens.cli import cli

MCQA = [{"question": f"Item {i}?", "choices": ["a", "b", "c", "d"], "answer": i % 4} for i in range(4)]


def _task(folder: Path) -> Path:
    p = folder / "task.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in MCQA))
    return p


def _study(folder: Path, base: Path, ft: Path) -> Path:
    cfg = {"base": "base", "models": [{"name": "base", "path": str(base)}, {"name": "ft", "path": str(ft)}],
           "stages": ["diff"]}  # fmt: skip
    p = folder / "study.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


# every command that writes: its arguments before ``-o OUT`` (BASE, FT, TMP, CORPUS stand for paths)
COMMANDS: dict[str, list[str]] = {
    "diff": ["diff", "BASE", "FT", "-q"],
    "vector": ["vector", "BASE", "FT", "-q"],
    "vector --lora": ["vector", "BASE", "FT", "--lora", "--rank", "2", "-q"],
    "lora": ["lora", "BASE", "FT", "--rank", "2", "-q"],
    "apply": ["apply", "BASE", "-v", "FT:-1", "-q"],
    "subspace": ["subspace", "BASE", "FT", "--no-cache", "-q"],
    "spectrum": ["spectrum", "BASE", "FT", "--no-cache", "-q"],
    "activations": ["activations", "BASE", "FT", "--corpus", "CORPUS", "--seq-len", "16", "--max-tokens", "32", "-q"],
    "evaluate": ["evaluate", "BASE", "-t", "TASK", "-q"],
    "study": ["study", "STUDY", "-q"],
}


def _args(cmd: str, base: Path, ft: Path, corpus: Path, tmp: Path) -> list[str]:
    paths = {"BASE": base, "FT": ft, "CORPUS": corpus}
    if cmd == "evaluate":
        paths["TASK"] = _task(tmp)
    if cmd == "study":
        paths["STUDY"] = _study(tmp, base, ft)
    out = []
    for a in COMMANDS[cmd]:
        for k, v in paths.items():
            a = a.replace(k, str(v)) if a.startswith(k) else a
        out.append(a)
    return out


RELATIONS: dict[str, tuple[Callable[[Path, Path, Path], Path], str]] = {
    "is the fine-tune": (lambda base, ft, tmp: ft, "is the input"),
    "is the base": (lambda base, ft, tmp: base, "is the input"),
    "contains the inputs": (lambda base, ft, tmp: tmp, "contains the input"),
    "inside the fine-tune": (lambda base, ft, tmp: ft / "out", "lies inside the input"),
    "a symlink to the fine-tune": (
        lambda base, ft, tmp: (tmp / "link").symlink_to(ft, target_is_directory=True) or tmp / "link",
        "is the input",
    ),
}


@pytest.mark.parametrize("relation", list(RELATIONS))
@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_output_never_touches_an_input(
    cmd: str, relation: str, copies: tuple[Path, Path], corpus_file: Path, tmp_path: Path, fault: Any
) -> None:
    base, ft = copies
    where, match = RELATIONS[relation]
    out = where(base, base if cmd == "evaluate" else ft, tmp_path)  # evaluate reads one model (and a task)
    args = _args(cmd, base, ft, corpus_file, tmp_path)
    inputs = [base, ft, *(p for p in tmp_path.iterdir() if p.is_file())]
    fault([*args, "-o", out, "--force"], inputs=inputs, match=match)
    fault([*args, "-o", out], inputs=inputs, match=match)  # without --force too


@pytest.mark.parametrize(("where", "match"), [("run", "is the input"), ("run/cmp", "lies inside the input")])
def test_compare_never_writes_into_a_run_it_reads(
    where: str, match: str, copies: tuple[Path, Path], tmp_path: Path, fault: Any
) -> None:
    from tunelens.cli import cli

    base, _ = copies
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["evaluate", str(base), "-t", str(_task(tmp_path)), "-o", str(run), "-q"])
    assert res.exit_code == 0, res.output
    inputs = [base, *(p for p in run.rglob("*") if p.is_file())]
    fault(["compare", str(run), str(run), "-o", str(tmp_path / where), "--force"], inputs=inputs, match=match)


def test_the_issue_reproductions(copies: tuple[Path, Path], tmp_path: Path, fault: Any) -> None:
    base, ft = copies
    base_copy = shutil.copytree(base, tmp_path / "base_copy")
    ft_copy = shutil.copytree(ft, tmp_path / "ft_copy")
    fault(["apply", base_copy, "-v", f"{ft}:-1", "-o", base_copy, "--force"], inputs=[base_copy, ft], match="is the")
    fault(["diff", base, ft_copy, "-o", ft_copy, "--force"], inputs=[base, ft_copy], match="is the input")
    fault(["diff", base, ft_copy, "-o", tmp_path, "--force"], inputs=[base, ft_copy], match="contains the input")


@pytest.mark.parametrize("cmd", ["diff", "apply", "study"])
def test_force_replaces_only_what_tunelens_wrote(
    cmd: str, copies: tuple[Path, Path], corpus_file: Path, tmp_path: Path, fault: Any
) -> None:
    base, ft = copies
    args = _args(cmd, base, ft, corpus_file, tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my only copy")
    fault([*args, "-o", mine, "--force"], inputs=[base, ft], match=f"not written by tunelens.*{MARKER}", out=mine)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(cli, [*args, "-o", str(empty), "--force"])  # an empty folder holds nothing to lose
    assert r.exit_code == 0, r.output
    assert (empty / MARKER).is_file()
    r = CliRunner().invoke(cli, [*args, "-o", str(empty), "--force"])  # and a tunelens output may be replaced
    assert r.exit_code == 0, r.output
    fault([*args, "-o", empty], inputs=[base, ft], match="already exists", out=empty)


def test_a_study_written_before_markers_is_recognised(copies: tuple[Path, Path], tmp_path: Path) -> None:
    base, ft = copies
    cfg = _study(tmp_path, base, ft)
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, ["study", str(cfg), "-o", str(out), "-q"]).exit_code == 0
    (out / MARKER).unlink()
    (out / "diff" / MARKER).unlink()
    r = CliRunner().invoke(cli, ["study", str(cfg), "-o", str(out), "-q", "--force"])
    assert r.exit_code == 0, r.output
    assert (out / MARKER).is_file() and (out / "diff" / MARKER).is_file()


def test_output_under_a_file(copies: tuple[Path, Path], tmp_path: Path, fault: Any) -> None:
    base, ft = copies
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fault(["diff", base, ft, "-o", blocker / "out"], inputs=[base, ft, blocker], match="cannot write in")
    fault(["diff", base, ft, "-o", blocker, "--force"], inputs=[base, ft, blocker], match="not a folder")


@contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"SKIPPED LOUDLY: cannot mount a tmpfs here ({r.stderr.strip()}); needs root or CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


@pytest.mark.parametrize("cmd", ["diff", "vector", "apply"])
def test_read_only_filesystem(
    cmd: str, copies: tuple[Path, Path], corpus_file: Path, tmp_path: Path, fault: Any
) -> None:
    base, ft = copies
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        args = _args(cmd, base, ft, corpus_file, tmp_path)
        fault([*args, "-o", mnt / "out"], inputs=[base, ft], match="Read-only file system")


@pytest.mark.parametrize("cmd", ["vector", "apply", "diff"])
def test_full_disk(cmd: str, copies: tuple[Path, Path], corpus_file: Path, tmp_path: Path, fault: Any) -> None:
    """A 16 KiB tmpfs fills up mid-write (the tiny model is ~200 KB; diff's tensors.csv ~ 8 KB per model):
    one line, nothing left behind."""
    base, ft = copies
    args = _args(cmd, base, ft, corpus_file, tmp_path)
    if cmd == "diff":
        args = ["diff", str(base), *[f"m{i}={ft}" for i in range(4)], "-q"]
    with _tmpfs(tmp_path / "small", "size=16k") as mnt:
        fault([*args, "-o", mnt / "out"], inputs=[base, ft], match="no space left on device")
        assert list(mnt.iterdir()) == []


CTRL_C = """
import os, signal, time
import tunelens.records as _tables
_real = _tables.write_json
def _interrupted(path, data):
    _real(path, data)
    os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, mid-write
    time.sleep(30)
_tables.write_json = _interrupted
import tunelens.api
tunelens.api.write_json = _interrupted
"""


def test_ctrl_c_mid_write(copies: tuple[Path, Path], tmp_path: Path, subprocess_cli: Any, snap: Any) -> None:
    """SIGINT while summary.json is being written: exit 130, one line, no output and no temporary folder."""
    base, ft = copies
    out = tmp_path / "out"
    before = snap([base, ft])
    r = subprocess_cli(["diff", str(base), str(ft), "-o", str(out), "-q"], prelude=CTRL_C)
    assert r.returncode == 130, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines() == ["interrupted: nothing was written"]
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    assert snap([base, ft]) == before


def test_two_runs_onto_one_output(copies: tuple[Path, Path], tmp_path: Path, snap: Any) -> None:
    """Started together: one writes the output, the other stops with one line (whichever the timing),
    and the output is complete."""
    import os
    import sys

    import tunelens

    base, ft = copies
    out = tmp_path / "out"
    before = snap([base, ft])
    src = str(Path(tunelens.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [sys.executable, "-m", "tunelens", "vector", str(base), str(ft), "-o", str(out), "-q"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    err = next(e for code, _, e in results if code == 2)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "already exists" in err or "appeared while this run was writing" in err, err
    assert (out / MARKER).is_file() and (out / "tunelens.json").is_file()
    assert not list(tmp_path.glob(".out.*"))
    assert snap([base, ft]) == before
