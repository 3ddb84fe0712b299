"""The start-up prefetch: which byte ranges it advises, and that it never touches anything else."""

from __future__ import annotations

from pathlib import Path

from tunelens.checkpoints.prefetch import CHUNK, plan


def _file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.truncate(size)
    return path


def test_round_robin_over_inputs_within_the_budget(tmp_path: Path) -> None:
    a1 = _file(tmp_path / "a" / "model-00001-of-00002.safetensors", CHUNK + 10)
    a2 = _file(tmp_path / "a" / "model-00002-of-00002.safetensors", 5)
    b = _file(tmp_path / "b" / "model.safetensors", 3 * CHUNK)
    (tmp_path / "b" / "config.json").write_text("{}")
    got = plan([str(tmp_path / "a"), f"med={tmp_path / 'b'}:-1"], budget=10 * CHUNK)
    assert got == [(a1, 0, CHUNK), (b, 0, CHUNK), (a1, CHUNK, 10), (b, CHUNK, CHUNK), (a2, 0, 5), (b, 2 * CHUNK, CHUNK)]
    small = plan([str(tmp_path / "a"), str(tmp_path / "b")], budget=CHUNK + 7)
    assert small == [(a1, 0, CHUNK), (b, 0, 7)] and sum(n for *_, n in small) == CHUNK + 7


def test_unreadable_or_remote_inputs_are_left_to_the_opener(tmp_path: Path) -> None:
    gguf = _file(tmp_path / "m.Q8_0.gguf", 100)
    assert plan(["org/model@main", str(tmp_path / "missing"), str(tmp_path)], budget=CHUNK) == [(gguf, 0, 100)]
    assert plan([], budget=CHUNK) == []
